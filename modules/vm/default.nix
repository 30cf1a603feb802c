# The VM side of a cell on top of microvm.nix: memory, CPUs, the private
# link, the firewall's uplink, the agent's volume and workspace share.
# Imported by lib.mkCell next to microvm.nix's own module; the firewall and
# agent modules do not depend on it (they work in any NixOS VM, e.g. the
# `nix flake check` tests).
#
# The private link is a point-to-point Ethernet between exactly the two VMs,
# rootless on the host: qemu `-netdev stream` over a unix socket in the
# instance directory (Linux), vfkit unixgram devices joined by the cell relay
# (macOS). microvm.nix's interface types (user, tap, macvtap, bridge) cannot
# express that, so the link is added through `microvm.<hypervisor>.extraArgs`;
# the uplink is a plain microvm.nix user-mode interface. Socket and image
# paths are relative: the host CLI starts each runner in the instance
# directory, so one build serves every instance.
{ config
, lib
, pkgs
, ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.cell.vm;
  link = config.cell.link;
  isFirewall = config.cell.firewall.enable;
  isAgent = config.cell.agent.enable;
  mac = if isFirewall then link.firewallMac else link.agentMac;
  mvm = config.microvm;
  workspace = config.cell.agent.workspace;
  # vfkit shares only over virtio-fs (lib/runners/vfkit.nix); qemu uses 9p,
  # which needs no virtiofsd on the host.
  workspaceProto = if mvm.hypervisor == "vfkit" then "virtiofs" else "9p";

  # microvm.nix attaches virtio devices over PCI or MMIO by the same rule
  # (lib/runners/qemu.nix); the link device must use the same bus.
  requirePci =
    mvm.graphics.enable
    || !(lib.hasPrefix "microvm" mvm.qemu.machine)
    || mvm.shares != [ ]
    || lib.any (d: d.bus == "pci") mvm.devices;
  devType = if requirePci then "pci" else "device";
  # ... and gives virtio-net an empty `romfile=` by the same file's rule: on
  # PCI, or whenever no CPU is emulated on a guest other than x86_64-linux
  # (aarch64's `virt` machine). Without it qemu looks for an iPXE option ROM
  # it may not have.
  romfile = requirePci || (mvm.cpu == null && pkgs.stdenv.hostPlatform.system != "x86_64-linux");

  qemuLink = [
    "-netdev"
    (lib.concatStringsSep "," (
      [
        "stream"
        "id=cell-link"
        "addr.type=unix"
        "addr.path=${cfg.linkSocket}"
      ]
      # The firewall listens; the agent connects and reconnects after a
      # firewall restart.
      ++ (if isFirewall then [ "server=on" ] else [ "server=off" "reconnect-ms=1000" ])
    ))
    "-device"
    "virtio-net-${devType},netdev=cell-link,mac=${mac}${lib.optionalString romfile ",romfile="}"
  ];

  # The host CLI's key arrives on the kernel command line (base64url, so it
  # is one word); sshd reads it from /run, never from the store.
  keyUser = if isFirewall then "root" else config.cell.agent.user;
  installKey = pkgs.writeShellScript "cell-boot-key" ''
    set -eu
    for word in $(cat /proc/cmdline); do
      case "$word" in
        cell.ssh_key=*)
          key=''${word#cell.ssh_key=}
          key=$(printf '%s' "$key" | tr '_-' '/+')
          while [ $(( ''${#key} % 4 )) -ne 0 ]; do key="$key="; done
          install -d -m 0755 /run/cell/authorized_keys.d
          printf '%s' "$key" | ${pkgs.coreutils}/bin/base64 -d > /run/cell/authorized_keys.d/${keyUser}.tmp
          printf '\n' >> /run/cell/authorized_keys.d/${keyUser}.tmp
          chmod 0644 /run/cell/authorized_keys.d/${keyUser}.tmp
          mv /run/cell/authorized_keys.d/${keyUser}.tmp /run/cell/authorized_keys.d/${keyUser}
          ;;
      esac
    done
  '';

  vfkitLink = [
    "--device"
    "virtio-net,unixSocketPath=${if isFirewall then "link-firewall.sock" else "link-agent.sock"},mac=${mac}"
  ];
in
{
  options.cell.vm = {
    vcpu = mkOption {
      type = types.ints.positive;
      default = if isAgent then 2 else 1;
      defaultText = lib.literalExpression "2 for the agent, 1 for the firewall";
      description = "Virtual CPUs.";
    };
    mem = mkOption {
      type = types.ints.positive;
      default = if isAgent then 4096 else 512;
      defaultText = lib.literalExpression "4096 for the agent, 512 for the firewall";
      description = "Memory in MiB.";
    };
    varSize = mkOption {
      type = types.ints.positive;
      default = 16384;
      description = "Size in MiB of the agent's persistent /var volume (home directory, SSH host key, caches); created on first start.";
    };
    sshPort = mkOption {
      type = types.port;
      default = 2222;
      description = "Host loopback port forwarded to the firewall VM's SSH (qemu). The host CLI's control channel; bound to 127.0.0.1 only.";
    };
    linkSocket = mkOption {
      type = types.str;
      default = "link.sock";
      description = "The private link's unix socket, relative to the instance directory (qemu).";
    };
    spec = mkOption {
      type = types.attrs;
      readOnly = true;
      description = ''
        What the host CLI boots (kernel, initrd, kernel parameters, store
        image, sizes, MACs, volumes, shares): lib.mkCell writes it to
        `firewall.json` / `agent.json`, and `cell` generates the qemu or vfkit
        command line from it. Read-only.
      '';
    };
    workspaceSource = mkOption {
      type = types.str;
      default = "workspace";
      description = "Host directory shared as the agent's workspace, relative to the instance directory (the host CLI links it to the project).";
    };
  };

  config = lib.mkMerge [
    {
      cell.vm.spec = {
        version = 1;
        role = if isFirewall then "firewall" else "agent";
        inherit (pkgs.stdenv.hostPlatform) system;
        # Uncompressed on aarch64 (Image), which vfkit requires.
        kernel = "${mvm.kernel.out}/${pkgs.stdenv.hostPlatform.linux-kernel.target}";
        initrd = "${mvm.initrdPath}";
        cmdline = mvm.kernelParams;
        storeDisk = if mvm.storeOnDisk then "${mvm.storeDisk}" else null;
        inherit (cfg) vcpu mem;
        linkMac = mac;
        uplinkMac = if isFirewall then config.cell.firewall.uplinkMac else null;
        volumes = lib.optional isAgent {
          image = "agent-var.img";
          sizeMib = cfg.varSize;
        };
        shares = lib.optional (isAgent && config.cell.agent.workspace.enable) {
          inherit (config.cell.agent.workspace) tag;
          source = "workspace";
        };
      };

      # systemd-ssh-generator (systemd >= 256) binds an sshd to AF_VSOCK port
      # 22 and to AF_UNIX sockets by itself whenever it finds a vsock device
      # (kernel command line `systemd.ssh_auto=`, systemd-ssh-generator(8)).
      # cell declares its own listeners: on a vfkit firewall
      # cell-sshd-vsock.socket owns vsock port 22, which the generated
      # sshd-vsock.socket would claim too; on the agent a vsock sshd would be
      # a way in that bypasses the firewall. Off on every cell VM.
      boot.kernelParams = [ "systemd.ssh_auto=no" ];

      # The host CLI's key, from the kernel command line, before sshd starts.
      systemd.services.cell-boot-key = {
        description = "Install the host CLI's SSH key from the kernel command line";
        wantedBy = [ "multi-user.target" ];
        before = [ "sshd.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = installKey;
        };
      };
      services.openssh.authorizedKeysFiles = [ "/run/cell/authorized_keys.d/%u" ];
      # The guest formats its /var volume on first boot (the CLI creates it sparse).
      fileSystems = lib.mkIf isAgent { "/var".autoFormat = true; };

      microvm.vcpu = cfg.vcpu;
      microvm.mem = cfg.mem;
      microvm.qemu.extraArgs = qemuLink;
      microvm.vfkit.extraArgs = vfkitLink;
      # An image of the closure, not a share of the host's store: the agent
      # sees only its own closure, and no store daemon runs on the host.
      microvm.storeOnDisk = true;
    }
    (lib.mkIf isFirewall {
      microvm.interfaces = [
        {
          type = "user";
          id = "uplink";
          mac = config.cell.firewall.uplinkMac;
        }
      ];
      microvm.forwardPorts = lib.mkIf (mvm.hypervisor == "qemu") [
        {
          from = "host";
          host.address = "127.0.0.1";
          host.port = cfg.sshPort;
          guest.port = 22;
        }
      ];
    })
    # vfkit has no port forwarding: the host reaches the firewall's sshd
    # over vsock port 22, which vfkit exposes as ssh.sock.
    (lib.mkIf (isFirewall && mvm.hypervisor == "vfkit") {
      systemd.sockets.cell-sshd-vsock = {
        description = "SSH over vsock for the host CLI (vfkit)";
        wantedBy = [ "sockets.target" ];
        socketConfig = {
          ListenStream = "vsock::22";
          Accept = true;
        };
      };
      systemd.services."cell-sshd-vsock@" = {
        description = "SSH over vsock for the host CLI";
        serviceConfig = {
          ExecStart = "${config.services.openssh.package}/bin/sshd -i -f /etc/ssh/sshd_config";
          StandardInput = "socket";
          StandardError = "journal";
        };
      };
    })
    (lib.mkIf isAgent {
      microvm.volumes = [
        {
          image = "agent-var.img";
          mountPoint = "/var";
          size = cfg.varSize;
        }
      ];
      microvm.shares = lib.mkIf workspace.enable [
        {
          proto = workspaceProto;
          inherit (workspace) tag mountPoint;
          source = cfg.workspaceSource;
        }
      ];
      # microvm.nix mounts every share itself (nixos-modules/microvm/mounts.nix)
      # at normal priority, with msize=65536 for 9p and without nofail; a
      # lower-priority definition would be dropped, and an equal one would be
      # concatenated (two msize=). The share options have no mount options,
      # so the whole list is forced here, keeping microvm.nix's ordering
      # after module loading. A missing workspace must not stop the boot.
      fileSystems.${workspace.mountPoint} = lib.mkIf workspace.enable {
        options = lib.mkForce (
          (
            if workspaceProto == "9p" then
              [
                "trans=virtio"
                "version=9p2000.L"
                # 1 MiB messages: 16x fewer round trips than microvm.nix's 64 KiB.
                "msize=1048576"
              ]
            else
              [ "defaults" ]
          )
          ++ [
            "x-systemd.after=systemd-modules-load.service"
            "nofail"
          ]
        );
      };
    })
  ];
}
