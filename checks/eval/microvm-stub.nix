# The part of microvm.nix's guest module that modules/vm sets or reads,
# used when no microvm.nix checkout is at hand (CELL_MICROVM unset; with it,
# checks/eval/modules.nix evaluates microvm.nix's own modules instead).
# Mirrors microvm.nix 71beea0, paths under nixos-modules/microvm/:
#   options.nix      the declarations below (name, type, default) and the
#                    qemu.machine default by system
#   system.nix       microvm.kernelParams = boot.kernelParams ++ [ init= ]
#   store-disk.nix   microvm.storeDisk (a path) and storeDiskType
#   mounts.nix       a fileSystems entry per share, at normal priority
# Not mirrored: asserts.nix and the runners (the host CLI builds the qemu /
# vfkit command line from cell.vm.spec).
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.microvm;
  opt = type: default: mkOption { inherit type default; };
  req = type: mkOption { inherit type; };
  # lib/default.nix `hypervisors`
  hypervisors = [
    "qemu"
    "cloud-hypervisor"
    "firecracker"
    "crosvm"
    "kvmtool"
    "stratovirt"
    "alioth"
    "vfkit"
  ];
  hostName = config.networking.hostName;
in
{
  options.microvm = {
    guest.enable = opt types.bool true;
    cpu = opt (types.nullOr types.str) null;
    hypervisor = opt (types.enum hypervisors) "qemu";
    vcpu = opt types.ints.positive 1;
    mem = opt types.ints.positive 512;
    kernel = opt types.package config.boot.kernelPackages.kernel;
    initrdPath = opt types.path "${config.system.build.initialRamdisk}/${config.system.boot.loader.initrdFile}";
    kernelParams = req (types.listOf types.str);
    storeOnDisk = opt types.bool (!lib.any ({ source, ... }: source == "/nix/store") cfg.shares);
    storeDisk = req types.path;
    storeDiskType = req (types.enum [ "squashfs" "erofs" ]);
    writableStoreOverlay = opt (types.nullOr types.str) null;
    vmHostPackages = opt types.pkgs pkgs;
    graphics.enable = opt types.bool false;
    vsock.cid = opt (types.nullOr types.int) null;

    interfaces = opt
      (types.listOf (types.submodule {
        options = {
          type = req (types.enum [ "user" "tap" "macvtap" "bridge" ]);
          id = req types.str;
          bridge = opt (types.nullOr types.str) null;
          mac = req types.str;
          tap.vhost = opt types.bool false;
        };
      }))
      [ ];
    forwardPorts = opt
      (types.listOf (types.submodule {
        options = {
          from = opt (types.enum [ "host" "guest" ]) "host";
          proto = opt (types.enum [ "tcp" "udp" ]) "tcp";
          host.address = opt types.str "";
          host.port = req types.port;
          guest.address = opt types.str "";
          guest.port = req types.port;
        };
      }))
      [ ];
    volumes = opt
      (types.listOf (types.submodule {
        options = {
          image = req types.str;
          serial = opt (types.nullOr types.str) null;
          direct = opt types.bool false;
          readOnly = opt types.bool false;
          label = opt (types.nullOr types.str) null;
          mountPoint = req (types.nullOr types.path);
          size = req types.int;
          autoCreate = opt types.bool true;
          mkfsExtraArgs = opt (types.listOf types.str) [ ];
          fsType = opt types.str "ext4";
          imageType = opt (types.enum [ "raw" "qcow2" "vhd" "vhdx" ]) "raw";
        };
      }))
      [ ];
    shares = opt
      (types.listOf (types.submodule ({ config, ... }: {
        options = {
          tag = req types.str;
          socket = opt (types.nullOr types.str) (if config.proto == "virtiofs" then "${hostName}-virtiofs-${config.tag}.sock" else null);
          source = req types.nonEmptyStr;
          securityModel = opt (types.enum [ "passthrough" "none" "mapped" "mapped-file" ]) "none";
          mountPoint = req types.path;
          proto = opt (types.enum [ "9p" "virtiofs" ]) "9p";
          readOnly = opt types.bool false;
          cache = opt (types.enum [ "auto" "always" "metadata" "never" ]) "auto";
          posixAcl = opt types.bool true;
          extraArgs = opt (types.listOf types.str) [ ];
        };
      })))
      [ ];
    devices = opt
      (types.listOf (types.submodule {
        options = {
          bus = req (types.enum [ "pci" "usb" ]);
          path = req types.str;
        };
      }))
      [ ];
    qemu.machine = req types.str;
    qemu.extraArgs = opt (types.listOf types.str) [ ];
    vfkit.extraArgs = opt (types.listOf types.str) [ ];
  };

  config = lib.mkMerge [
    # options.nix: the machine model follows the guest system.
    {
      microvm.qemu.machine = lib.mkIf (pkgs.stdenv.hostPlatform.system == "x86_64-linux") (lib.mkDefault "microvm");
    }
    {
      microvm.qemu.machine = lib.mkIf (lib.elem pkgs.stdenv.hostPlatform.system [ "aarch64-linux" "aarch64-darwin" ]) (lib.mkDefault "virt");
    }
    (lib.mkIf cfg.guest.enable {
      # system.nix
      microvm.kernelParams = config.boot.kernelParams ++ [ "init=${config.system.build.toplevel}/init" ];
      # store-disk.nix
      microvm.storeDiskType = lib.mkIf cfg.storeOnDisk (lib.mkDefault "erofs");
      microvm.storeDisk = lib.mkIf cfg.storeOnDisk (pkgs.runCommandLocal "microvm-store-disk.${cfg.storeDiskType}" { } "");
      # mounts.nix: every share is mounted, with these options, at normal
      # priority (volumes too; the store disk is left out here).
      fileSystems = lib.mkMerge (
        map
          (s: {
            ${s.mountPoint} = {
              device = s.tag;
              fsType = s.proto;
              options =
                {
                  "virtiofs" = [ "defaults" "x-systemd.after=systemd-modules-load.service" ];
                  "9p" = [ "trans=virtio" "version=9p2000.L" "msize=65536" "x-systemd.after=systemd-modules-load.service" ];
                }.${s.proto};
            };
          })
          cfg.shares
        ++ map
          (v: {
            ${v.mountPoint} = {
              inherit (v) fsType;
              device = if v.label != null then "/dev/disk/by-label/${v.label}" else "/dev/vd?";
            };
          })
          (lib.filter (v: v.mountPoint != null) cfg.volumes)
      );
    })
  ];
}
