# Options of the firewall VM (`cell.firewall.*`).
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  port = types.port;
in
{
  # The event log was rotated by logrotate, which nixpkgs' hardened unit
  # cannot run as the log's owner; cell-proxy now rotates it itself.
  imports = [
    (lib.mkRenamedOptionModule [ "cell" "firewall" "eventLog" "rotate" ] [ "cell" "firewall" "eventLog" "keep" ])
    (lib.mkRemovedOptionModule [ "cell" "firewall" "eventLog" "maxSize" ] "Use cell.firewall.eventLog.maxBytes, a number of bytes (cell-proxy rotates the event log itself).")
  ];

  options.cell.firewall = {
    enable = lib.mkEnableOption "the cell firewall: cell-proxy owning the agent link (DNS, nftables, TLS proxy)";

    package = mkOption {
      type = types.package;
      default = (pkgs.callPackage ../../pkgs { }).cell-proxy;
      defaultText = lib.literalExpression "cell's own cell-proxy package";
      description = "The cell-proxy package.";
    };

    agentInterface = mkOption {
      type = types.strMatching "[a-zA-Z0-9_.-]{1,15}";
      default = "agent0";
      description = "Name given to the interface on the private link (matched by `cell.link.firewallMac`). The only interface cell-proxy's rules restrict.";
    };

    uplinkInterface = mkOption {
      type = types.strMatching "[a-zA-Z0-9_.-]{1,15}";
      default = "uplink0";
      description = "Name given to the uplink interface (matched by `cell.firewall.uplinkMac`); DHCP from the hypervisor's user-mode NAT.";
    };

    uplinkDhcp = mkOption {
      type = types.bool;
      default = true;
      description = "Configure the uplink by DHCP (the hypervisor's user-mode NAT). Turn off to address it yourself (the VM tests do).";
    };

    uplinkMac = mkOption {
      type = types.strMatching "[0-9a-f]{2}(:[0-9a-f]{2}){5}";
      default = "02:ce:11:00:01:01";
      description = "MAC address of the uplink interface.";
    };

    ports = {
      dns = mkOption {
        type = port;
        default = 53;
        description = "DNS port on the link address (`--dns-port`).";
      };
      transparent = mkOption {
        type = port;
        default = 15001;
        description = "Where redirected agent TCP arrives (`--transparent-port`); never reachable directly.";
      };
    };

    nflogGroup = mkOption {
      type = types.ints.between 0 65535;
      default = 7;
      description = "NFLOG group rejected packets are logged to (`--nflog-group`); they become `reject` events.";
    };

    upstreamCaFiles = mkOption {
      type = types.listOf types.path;
      default = [ ];
      description = "Extra CA certificates (public, PEM) trusted for upstream servers besides the system roots (`--upstream-ca`). For a corporate TLS proxy or a test CA.";
    };

    eventLog = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Write cell-proxy's JSON-lines events (DNS answers, connections, rejects, reloads) to `/var/log/cell-proxy/events.jsonl`, bounded and rotated by cell-proxy itself. Off: events go to the journal.";
      };
      maxBytes = mkOption {
        type = types.ints.unsigned;
        default = 16777216;
        defaultText = lib.literalExpression "16777216 # 16 MiB";
        example = 67108864;
        description = "cell-proxy rotates the event log before it would grow past this many bytes (`--events-max-bytes`); 0 never rotates.";
      };
      keep = mkOption {
        type = types.ints.between 0 100;
        default = 4;
        description = "Rotated event logs kept beside the live one, `events.jsonl.1` (newest) … `events.jsonl.N` (`--events-keep`); 0 keeps none.";
      };
    };

    spy = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Keep a spy store for `cell spy`: every exchange with a host whose
          policy entry has `spy = true`, one JSON line in
          `/var/lib/cell-proxy/spy.jsonl` (mode 0700 directory, firewall VM
          only), secret values replaced by their placeholders, header values
          only for a safe list, bodies capped at `bodyMaxBytes`. Streams are
          teed, never delayed.
        '';
      };
      maxBytes = mkOption {
        type = types.ints.unsigned;
        default = 67108864;
        defaultText = lib.literalExpression "67108864 # 64 MiB";
        description = "cell-proxy rotates the spy store before it would grow past this many bytes (`--spy-max-bytes`); 0 never rotates.";
      };
      keep = mkOption {
        type = types.ints.between 0 100;
        default = 4;
        description = "Rotated spy stores kept, `spy.jsonl.1` … `spy.jsonl.N` (`--spy-keep`).";
      };
      bodyMaxBytes = mkOption {
        type = types.ints.positive;
        default = 1048576;
        defaultText = lib.literalExpression "1048576 # 1 MiB";
        description = "The most kept of each request or response body; the rest is counted and the body marked `cut` (`--spy-body-max`).";
      };
    };

    controlSocket = mkOption {
      type = types.str;
      default = "/run/cell-proxy/control";
      readOnly = true;
      description = "cell-proxy's control socket (JSON lines: `{\"op\":\"reload\"}`, `{\"op\":\"status\"}`), mode 0600. Read-only.";
    };

    overlayFile = mkOption {
      type = types.str;
      default = "/var/lib/cell-proxy/overlay.json";
      readOnly = true;
      description = "The live overlay (written by `cell allow`), merged over the Nix baseline and reloaded without a restart. Read-only.";
    };

    ssh.authorizedKeys = mkOption {
      type = types.listOf types.singleLineStr;
      default = [ ];
      description = "Public keys allowed to log in as root over the uplink (the host CLI's control channel). Never reachable from the agent link.";
    };

    checkedPolicy = mkOption {
      type = types.package;
      readOnly = true;
      description = "The compiled policy document after `cell-proxy --check` accepted it at build time; installed as /etc/cell/policy.json. Read-only.";
    };
  };
}
