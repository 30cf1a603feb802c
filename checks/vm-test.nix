# The one wrapper every VM test goes through: three nodes — `internet` (a
# fake upstream: DNS, HTTPS with a test CA, SSH, a UDP listener; it logs all
# it receives), `firewall` (nixosModules.firewall) and `agent`
# (nixosModules.agent) — the agent's only link is to the firewall, the
# firewall's uplink is the internet's network. A scenario file gives its
# policy, extra node modules (`firewall`, `agent`, `internet`) and the Python
# test script; it must check the
# allowed and the denied path.
#
# pkgs.testers.runNixOSTest already marks the test derivation
# requiredSystemFeatures = [ "nixos-test" "kvm" ] on Linux.
{ pkgs, self }:
scenario:
let
  inherit (pkgs) lib;
  name = lib.removeSuffix ".nix" (baseNameOf scenario);
  t = import scenario { inherit lib pkgs; };

  # The fake internet's names, all served by the internet node.
  names = [
    "api.allowed.test"
    "denied.test"
    "git.allowed.test"
    "late.test"
  ];
  internetAddress = "192.168.1.3"; # vlan 1, node number 3 (agent, firewall, internet)

  # A test CA and one certificate for all names; built, never fetched.
  pki = pkgs.runCommand "cell-test-pki" { nativeBuildInputs = [ pkgs.openssl ]; } ''
    mkdir $out && cd $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj /CN=cell-test-internet-ca -keyout ca.key -out ca.crt
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj /CN=api.allowed.test -keyout server.key -out server.csr
    printf 'subjectAltName=${lib.concatMapStringsSep "," (n: "DNS:${n}") names}\n' > ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile ext -out server.crt
  '';
in
pkgs.testers.runNixOSTest {
  name = "cell-${name}";

  nodes.internet = {
    imports = [ (t.internet or { }) ];
    virtualisation.interfaces.eth1 = {
      vlan = 1;
      assignIP = true;
    };
    networking.firewall.enable = false;
    services.dnsmasq = {
      enable = true;
      resolveLocalQueries = false;
      settings = {
        no-resolv = true;
        log-queries = true;
        address = map (n: "/${n}/${internetAddress}") names;
      };
    };
    services.nginx = {
      enable = true;
      virtualHosts = lib.genAttrs names (_: {
        onlySSL = true;
        sslCertificate = "${pki}/server.crt";
        sslCertificateKey = "${pki}/server.key";
        locations."/".return = "200 \"hello from $host $request_method $uri\\n\"";
      });
    };
    services.openssh.enable = true;
    # Anything arriving over UDP (QUIC included) is written down.
    systemd.services.udp-recorder = {
      wantedBy = [ "multi-user.target" ];
      serviceConfig.ExecStart = "${lib.getExe pkgs.socat} -u UDP-RECVFROM:443,fork OPEN:/tmp/udp.log,creat,append";
    };
  };

  nodes.firewall = {
    imports = [
      self.nixosModules.firewall
      (t.policy or { })
      (t.firewall or { })
    ];
    virtualisation.interfaces.uplink0 = {
      vlan = 1;
      assignIP = true;
    };
    virtualisation.interfaces.agent0 = {
      vlan = 2;
      assignIP = false;
    };
    cell.firewall.uplinkDhcp = false;
    cell.firewall.upstreamCaFiles = [ "${pki}/ca.crt" ];
    networking.nameservers = [ internetAddress ];
  };

  nodes.agent =
    { pkgs, ... }:
    {
      imports = [
        self.nixosModules.agent
        (t.policy or { })
        (t.agent or { })
      ];
      virtualisation.interfaces.cell0 = {
        vlan = 2;
        assignIP = false;
      };
      cell.agent.extraPackages = [
        pkgs.dnsutils
        pkgs.netcat
        pkgs.openssh
      ];
    };

  # The prologue (the nodes are up; nothing_reached_internet) and the
  # scenario's script; `scripts/dev test` lints both as the driver will.
  testScript = builtins.readFile ./vm-test-prologue.py + t.testScript;
}
