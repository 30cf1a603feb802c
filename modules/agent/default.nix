# The agent VM: one interface (the private link to the firewall), the cell CA
# trusted at runtime, the chosen harnesses, and nothing secret. Imports and
# wiring only; options in ./options.nix, checks in ./asserts.nix.
{ config
, lib
, pkgs
, ...
}:
let
  cfg = config.cell.agent;
  link = config.cell.link;

  harnessPackages = map (name: pkgs.${cfg.harnessPackages.${name}}) (
    lib.filter (name: pkgs ? ${cfg.harnessPackages.${name}}) cfg.harnesses
  );

  # The environment variables TLS clients read, all pointing at the bundle
  # that includes the cell CA (Node adds NODE_EXTRA_CA_CERTS to its own).
  caEnvironment = {
    SSL_CERT_FILE = cfg.caBundle;
    NIX_SSL_CERT_FILE = cfg.caBundle;
    CURL_CA_BUNDLE = cfg.caBundle;
    REQUESTS_CA_BUNDLE = cfg.caBundle;
    GIT_SSL_CAINFO = cfg.caBundle;
    NODE_EXTRA_CA_CERTS = "/run/cell/ca.crt";
  };

  # The roots NixOS would have installed (security/ca.nix builds the same
  # bundle from the same options); the runtime bundle adds the cell CA.
  systemBundle = "${
    pkgs.cacert.override {
      blacklist = config.security.pki.caCertificateBlacklist;
      extraCertificateFiles = config.security.pki.certificateFiles;
      extraCertificateStrings = config.security.pki.certificates;
    }
  }/etc/ssl/certs/ca-bundle.crt";

  fetchCa = pkgs.writeShellApplication {
    name = "cell-fetch-ca";
    runtimeInputs = [
      pkgs.curl
      pkgs.openssl
      pkgs.coreutils
    ];
    text = ''
      # The CA certificate is public; the key never leaves the firewall.
      # Plain HTTP is enough: the private link joins exactly these two VMs.
      umask 022
      mkdir -p /run/cell
      tmp=$(mktemp /run/cell/ca.XXXXXX)
      trap 'rm -f "$tmp"' EXIT
      echo "fetching the cell CA from ${cfg.caUrl}"
      curl --fail --silent --show-error --noproxy '*' \
        --retry 60 --retry-delay 1 --retry-connrefused --retry-all-errors \
        --connect-timeout 2 --max-time 5 --max-filesize 65536 \
        --output "$tmp" "${cfg.caUrl}"
      if ! openssl x509 -noout -in "$tmp" 2>/dev/null; then
        echo "cell-fetch-ca: ${cfg.caUrl} did not return a PEM certificate; is cell-proxy running on the firewall VM?" >&2
        exit 1
      fi
      if openssl x509 -noout -ext basicConstraints -in "$tmp" | grep -q 'CA:TRUE'; then :; else
        echo "cell-fetch-ca: the certificate from ${cfg.caUrl} is not a CA certificate" >&2
        exit 1
      fi
      openssl x509 -noout -subject -fingerprint -sha256 -in "$tmp"
      mv "$tmp" /run/cell/ca.crt
      cat ${systemBundle} /run/cell/ca.crt > /run/cell/ca-bundle.crt.new
      mv /run/cell/ca-bundle.crt.new ${cfg.caBundle}
      trap - EXIT
    '';
  };
in
{
  imports = [
    ../options.nix
    ./asserts.nix
  ];

  config = lib.mkIf cfg.enable {
    cell.agent.caUrl = "http://${link.firewallAddress}:${toString link.proxyPort}/cell/ca.crt";

    networking.useNetworkd = true;
    networking.useDHCP = false;
    networking.nameservers = [ link.firewallAddress ];
    services.resolved.enable = false;
    # The firewall VM decides what leaves; this one only keeps other
    # listeners off the link. SSH comes in from the host via the firewall.
    networking.firewall.enable = true;
    networking.firewall.allowedTCPPorts = [ 22 ];

    systemd.network.links."10-cell" = {
      matchConfig.MACAddress = link.agentMac;
      linkConfig.Name = "cell0";
    };
    systemd.network.networks."10-cell" = {
      matchConfig.Name = "cell0";
      address = [
        "${link.agentAddress}/${toString link.prefixLength}"
        "${link.agentAddress6}/64"
      ];
      gateway = [
        link.firewallAddress
        link.firewallAddress6
      ];
      networkConfig = {
        IPv6AcceptRA = false;
        LinkLocalAddressing = "ipv6";
      };
    };

    # Trust the cell CA system-wide, at runtime: /etc/ssl/certs points at a
    # bundle built at boot from the system roots plus the CA fetched from the
    # firewall. The firewall mints a new CA when its state is wiped; this
    # VM picks it up on its next boot.
    environment.etc."ssl/certs/ca-certificates.crt".source = lib.mkForce cfg.caBundle;
    environment.etc."ssl/certs/ca-bundle.crt".source = lib.mkForce cfg.caBundle;
    environment.etc."pki/tls/certs/ca-bundle.crt".source = lib.mkForce cfg.caBundle;
    environment.variables = caEnvironment // (import ../../lib/secrets.nix).agentEnvironment config.cell.secrets;

    systemd.services.cell-ca = {
      description = "Fetch the cell CA certificate from the firewall VM and trust it";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      before = [ "sshd.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = lib.getExe fetchCa;
      };
    };

    users.users.${cfg.user} = {
      isNormalUser = true;
      extraGroups = [ "wheel" ];
      openssh.authorizedKeys.keys = cfg.ssh.authorizedKeys;
    };
    security.sudo.wheelNeedsPassword = false;

    services.openssh = {
      enable = true;
      hostKeys = [
        {
          path = cfg.ssh.hostKeyPath;
          type = "ed25519";
        }
      ];
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "no";
      };
    };

    # No nixpkgs.config here: whoever creates `pkgs` owns its config. Under
    # `pkgs.testers.runNixOSTest` or with `nixpkgs.pkgs` set, nixpkgs.config
    # is read-only (nixos/modules/misc/nixpkgs/read-only.nix) or must stay
    # empty (nixos/modules/misc/nixpkgs.nix asserts it), so any definition
    # here, even an empty one, breaks those users. claude-code is unfree:
    # ./asserts.nix says exactly what to allow when it is chosen and the
    # user's nixpkgs refuses it.

    environment.systemPackages = harnessPackages ++ cfg.extraPackages ++ [ pkgs.git pkgs.curl ];

    # `cell agent` without a name starts the first of these.
    environment.etc."cell/harnesses".text = lib.concatMapStrings
      (name: "${cfg.harnessBinaries.${name}}\n")
      (lib.filter (name: pkgs ? ${cfg.harnessPackages.${name}}) cfg.harnesses);

    # The agent's own SSH key (for git over SSH), made on first boot and kept
    # on /var; `cell pubkey` prints the public half to add as a deploy key.
    systemd.services.cell-agent-key = {
      description = "Create the agent user's SSH key";
      wantedBy = [ "multi-user.target" ];
      unitConfig.ConditionPathExists = "!${cfg.ssh.userKeyPath}";
      serviceConfig = {
        Type = "oneshot";
        User = cfg.user;
        StateDirectory = "cell-agent";
        StateDirectoryMode = "0700";
        ExecStart = "${pkgs.openssh}/bin/ssh-keygen -q -t ed25519 -N '' -C ${cfg.user}@cell -f ${cfg.ssh.userKeyPath}";
      };
    };
    programs.ssh.extraConfig = ''
      IdentityFile ${cfg.ssh.userKeyPath}
    '';
  };
}
