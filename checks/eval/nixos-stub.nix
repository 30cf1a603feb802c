# The NixOS options the cell modules set, declared with the names and types
# nixpkgs uses (checked against nixos/modules: networkd.nix, firewall.nix,
# nftables.nix, sshd.nix, logrotate.nix, sysctl.nix, ca.nix, etc.nix,
# systemd-unit-options.nix), so the modules evaluate with nixpkgs' `lib`
# alone. A misspelt option or networkd section fails here as it would in
# NixOS. It does not prove what NixOS does with the values: the VM tests in
# checks/vm do, on a machine with Nix and KVM.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  any = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
  section = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
  list = t: mkOption {
    type = types.listOf t;
    default = [ ];
  };
  bool = mkOption {
    type = types.bool;
    default = false;
  };
  str = mkOption {
    type = types.nullOr types.str;
    default = null;
  };
  ports = list types.port;
in
{
  options = {
    assertions = list types.anything;
    warnings = list types.str;
    boot.kernel.sysctl = mkOption {
      type = types.attrsOf (types.nullOr (types.oneOf [ types.bool types.str types.int ]));
      default = { };
    };
    networking = {
      useNetworkd = bool;
      useDHCP = bool;
      nameservers = list types.str;
      hostName = str;
      nftables = {
        enable = bool;
        flushRuleset = bool;
      };
      firewall = {
        enable = bool;
        trustedInterfaces = list types.str;
        allowedTCPPorts = ports;
        interfaces = mkOption {
          type = types.attrsOf (types.submodule { options.allowedTCPPorts = ports; });
          default = { };
        };
      };
    };
    systemd.network.links = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          matchConfig = section;
          linkConfig = section;
        };
      });
      default = { };
    };
    systemd.network.networks = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          matchConfig = section;
          networkConfig = section;
          linkConfig = section;
          address = list types.str;
          gateway = list types.str;
          dns = list types.str;
        };
      });
      default = { };
    };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          description = str;
          documentation = list types.str;
          wantedBy = list types.str;
          wants = list types.str;
          after = list types.str;
          before = list types.str;
          bindsTo = list types.str;
          unitConfig = any;
          reloadTriggers = list types.anything;
          restartTriggers = list types.anything;
          environment = any;
          serviceConfig = any;
        };
      });
      default = { };
    };
    systemd.sockets = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          description = str;
          wantedBy = list types.str;
          socketConfig = any;
        };
      });
      default = { };
    };
    services.resolved.enable = bool;
    services.openssh = {
      enable = bool;
      openFirewall = bool;
      hostKeys = list types.attrs;
      settings = any;
      authorizedKeysFiles = list types.str;
      package = mkOption {
        type = types.package;
        default = (import ./pkgs-stub.nix { }).openssh;
      };
    };
    programs.ssh.extraConfig = mkOption {
      type = types.lines;
      default = "";
    };
    services.logrotate = {
      enable = bool;
      settings = mkOption {
        type = types.attrsOf (types.attrsOf types.anything);
        default = { };
      };
    };
    users.users = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          isNormalUser = bool;
          isSystemUser = bool;
          group = str;
          description = str;
          extraGroups = list types.str;
          openssh.authorizedKeys.keys = list types.singleLineStr;
        };
      });
      default = { };
    };
    users.groups = any;
    security.sudo.wheelNeedsPassword = bool;
    security.pki = {
      certificateFiles = list types.path;
      certificates = list types.str;
      caCertificateBlacklist = list types.str;
    };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule {
        options.source = mkOption {
          type = types.nullOr types.path;
          default = null;
        };
        options.text = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
      });
      default = { };
    };
    environment.variables = mkOption {
      type = types.attrsOf types.str;
      default = { };
    };
    environment.systemPackages = list types.package;
    fileSystems = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          device = str;
          fsType = str;
          options = list types.str;
          autoFormat = bool;
        };
      });
      default = { };
    };
    nixpkgs.config = any;
  };
}
