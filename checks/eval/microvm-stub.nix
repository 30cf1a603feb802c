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
