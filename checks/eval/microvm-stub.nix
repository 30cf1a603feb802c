# The microvm.nix options modules/vm sets or reads, with the names and types
# of microvm.nix's nixos-modules/microvm/options.nix, so the wiring evaluates
# without fetching microvm.nix.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  list = mkOption {
    type = types.listOf types.anything;
    default = [ ];
  };
in
{
  options.microvm = {
    hypervisor = mkOption {
      type = types.enum [
        "qemu"
        "vfkit"
        "cloud-hypervisor"
      ];
      default = "qemu";
    };
    vcpu = mkOption { type = types.ints.positive; };
    mem = mkOption { type = types.ints.positive; };
    storeOnDisk = mkOption { type = types.bool; };
    kernel = mkOption {
      type = types.package;
      default = (import ./pkgs-stub.nix { }).coreutils // { name = "linux"; out = "/nix/store/00000000000000000000000000000000-linux"; };
    };
    initrdPath = mkOption {
      type = types.str;
      default = "/nix/store/00000000000000000000000000000000-initrd/initrd";
    };
    kernelParams = mkOption {
      type = types.listOf types.str;
      default = [ "init=/nix/store/00000000000000000000000000000000-nixos-system/init" ];
    };
    storeDisk = mkOption {
      type = types.anything;
      default = "/nix/store/00000000000000000000000000000000-store-disk.erofs";
    };
    interfaces = list;
    forwardPorts = list;
    volumes = list;
    shares = list;
    devices = list;
    graphics.enable = mkOption {
      type = types.bool;
      default = false;
    };
    qemu.machine = mkOption {
      type = types.str;
      default = "microvm";
    };
    qemu.extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    vfkit.extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
  };
}
