# The firewall VM: two interfaces (the private agent link, the uplink) and
# cell-proxy owning everything the agent sends. Imports and wiring only;
# options in ./options.nix, checks in ./asserts.nix.
{ config
, lib
, pkgs
, ...
}:
let
  cfg = config.cell.firewall;
  link = config.cell.link;

  policyJson = pkgs.writeText "cell-policy.json" (builtins.toJSON config.cell.policy.document);

  # The same binary validates the document at build time that reads it at
  # run time: a policy cell-proxy would refuse never reaches a VM.
  checkedPolicy = pkgs.runCommand "cell-policy-checked.json" { } ''
    ${lib.getExe cfg.package} --check --policy ${policyJson}
    cp ${policyJson} $out
  '';

  secretsJson = pkgs.writeText "cell-secrets.json" (builtins.toJSON config.cell.secretsDocument);

  # The secrets document, checked the same way and against the policy: a
  # secret scoped to a host the policy does not intercept (not allowed over
  # HTTPS on 443, passthrough, denied) could never be put in, so the build
  # fails with the daemon's message and the line that fixes it.
  checkedSecrets = pkgs.runCommand "cell-secrets-checked.json" { } ''
    ${lib.getExe cfg.package} --check --policy ${policyJson} --secrets ${secretsJson}
    cp ${secretsJson} $out
  '';

  eventLog = "/var/log/cell-proxy/events.jsonl";

  # What `cell allow` runs over SSH: the new overlay on stdin, validated over
  # the installed policy, written by rename, reloaded, the daemon's answer out.
  overlayInstall = pkgs.writeShellScriptBin "cell-overlay-install" ''
    exec ${lib.getExe cfg.package} --policy /etc/cell/policy.json \
      --overlay ${lib.escapeShellArg cfg.overlayFile} \
      --control ${lib.escapeShellArg cfg.controlSocket} \
      --install-overlay -
  '';

  # What the host CLI runs over SSH when a cell boots or on `cell secrets
  # reload`: the values, one JSON object {"NAME": "VALUE", …}, on stdin only
  # (never argv, never a file), handed to the daemon's memory; it prints
  # which were loaded or refused, never a value.
  secretsLoad = pkgs.writeShellScriptBin "cell-secrets-load" ''
    exec ${lib.getExe cfg.package} --control ${lib.escapeShellArg cfg.controlSocket} \
      --load-secrets -
  '';

  # What `cell secrets` runs over SSH: name, scope, loaded, last used (JSON).
  secretsStatus = pkgs.writeShellScriptBin "cell-secrets-status" ''
    exec ${lib.getExe cfg.package} --control ${lib.escapeShellArg cfg.controlSocket} \
      --secrets-status
  '';

  # What `cell status` and `cell doctor` run over SSH: does the daemon answer,
  # and what has it in force (JSON; exit 1 when it does not answer).
  proxyStatus = pkgs.writeShellScriptBin "cell-proxy-status" ''
    exec ${lib.getExe cfg.package} --control ${lib.escapeShellArg cfg.controlSocket} \
      --status
  '';

  args = [
    "--policy"
    "/etc/cell/policy.json"
    "--secrets"
    "/etc/cell/secrets.json"
    "--overlay"
    cfg.overlayFile
    "--agent-iface"
    cfg.agentInterface
    "--listen"
    link.firewallAddress
    # The only sources the ruleset accepts from the agent link.
    "--agent-addr"
    link.agentAddress
    "--agent-addr"
    link.agentAddress6
    "--dns-port"
    (toString cfg.ports.dns)
    "--transparent-port"
    (toString cfg.ports.transparent)
    "--explicit-port"
    (toString link.proxyPort)
    "--nflog-group"
    (toString cfg.nflogGroup)
    "--nft"
    (lib.getExe pkgs.nftables)
    "--state-dir"
    "/var/lib/cell-proxy"
    "--control"
    cfg.controlSocket
    "--events"
    (if cfg.eventLog.enable then eventLog else "-")
  ]
  # cell-proxy bounds and rotates its own event log (FILE.1 … FILE.N): the
  # hardened logrotate.service of nixpkgs cannot `su` to the log's owner.
  ++ lib.optionals cfg.eventLog.enable [
    "--events-max-bytes"
    (toString cfg.eventLog.maxBytes)
    "--events-keep"
    (toString cfg.eventLog.keep)
  ]
  # The spy store holds prompts and answers: in the 0700 state directory,
  # not the group-readable log directory.
  ++ lib.optionals cfg.spy.enable [
    "--spy"
    "/var/lib/cell-proxy/spy.jsonl"
    "--spy-max-bytes"
    (toString cfg.spy.maxBytes)
    "--spy-keep"
    (toString cfg.spy.keep)
    "--spy-body-max"
    (toString cfg.spy.bodyMaxBytes)
  ]
  ++ lib.concatMap
    (ca: [
      "--upstream-ca"
      "${ca}"
    ])
    cfg.upstreamCaFiles;
in
{
  imports = [
    ../options.nix
    ./asserts.nix
  ];

  config = lib.mkIf cfg.enable {
    cell.firewall.checkedPolicy = checkedPolicy;

    environment.etc."cell/policy.json".source = checkedPolicy;
    # Names, scopes and sources only, never a value: cell-proxy reads it
    # (--secrets), receives the values over its control socket
    # (cell-secrets-load) and keeps them in memory; it puts them in itself.
    environment.etc."cell/secrets.json".source = checkedSecrets;

    # Rejected UDP and ICMP must fail fast for the agent, every time: the
    # kernel's ICMP rate limits (per destination, and the global token bucket
    # with its random cost) would turn some of them into timeouts. The rate
    # masks are the defaults less destination-unreachable (IPv4 type 3,
    # IPv6 type 1), the type of every reject. Forwarding only when a cidr
    # rule needs it.
    boot.kernel.sysctl = {
      "net.ipv4.icmp_ratemask" = 6160;
      "net.ipv6.icmp.ratemask" = "0,3-127";
      "net.ipv4.ip_forward" = if config.cell.policy.cidr != [ ] then 1 else 0;
      "net.ipv6.conf.all.forwarding" = 0;
      "net.ipv6.conf.${cfg.agentInterface}.accept_ra" = 0;
    };

    networking.useNetworkd = true;
    networking.useDHCP = false;
    # The agent link is cell-proxy's: its own table (inet cell) is the only
    # gate there, so the NixOS firewall trusts it and guards the uplink,
    # where only SSH from the host is open. NixOS must not flush the whole
    # ruleset on reload, or it would remove cell-proxy's table.
    networking.nftables.enable = true;
    networking.nftables.flushRuleset = false;
    networking.firewall.enable = true;
    networking.firewall.trustedInterfaces = [ cfg.agentInterface ];
    networking.firewall.interfaces.${cfg.uplinkInterface}.allowedTCPPorts = [ 22 ];

    systemd.network.links."10-cell-agent" = {
      matchConfig.MACAddress = link.firewallMac;
      linkConfig.Name = cfg.agentInterface;
    };
    systemd.network.links."10-cell-uplink" = {
      matchConfig.MACAddress = cfg.uplinkMac;
      linkConfig.Name = cfg.uplinkInterface;
    };
    systemd.network.networks."10-cell-agent" = {
      matchConfig.Name = cfg.agentInterface;
      address = [
        "${link.firewallAddress}/${toString link.prefixLength}"
        "${link.firewallAddress6}/64"
      ];
      networkConfig = {
        IPv6AcceptRA = false;
        LinkLocalAddressing = "ipv6";
        ConfigureWithoutCarrier = true;
      };
      # cell-proxy binds the link address; the interface is up before it starts.
      linkConfig.RequiredForOnline = "no";
    };
    systemd.network.networks."10-cell-uplink" = lib.mkIf cfg.uplinkDhcp {
      matchConfig.Name = cfg.uplinkInterface;
      networkConfig.DHCP = "ipv4";
      linkConfig.RequiredForOnline = "routable";
    };

    services.openssh = {
      enable = true;
      openFirewall = false;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "prohibit-password";
      };
    };
    users.users.root.openssh.authorizedKeys.keys = cfg.ssh.authorizedKeys;

    systemd.services.cell-proxy = {
      description = "cell firewall: DNS, nftables and TLS proxy for the agent link";
      documentation = [ "https://github.com/cell-sandbox/cell/blob/main/docs/policy.md" ];
      wantedBy = [ "multi-user.target" ];
      # The listeners bind the link address, which networkd assigns.
      after = [
        "systemd-networkd.service"
        "nftables.service"
        "sys-subsystem-net-devices-${cfg.agentInterface}.device"
      ];
      bindsTo = [ "sys-subsystem-net-devices-${cfg.agentInterface}.device" ];
      # A policy change switches in by reload (SIGHUP), never by a restart
      # that would drop the agent's connections. cell-proxy also notices the
      # changed file by itself within ~50 ms.
      reloadTriggers = [ checkedPolicy ];
      # The secrets document is read at start only. A changed one restarts
      # the daemon, which forgets the values; the host CLI pushes them again
      # (it asks which are loaded before every session). Its content, not the
      # checked copy: that one changes with every policy change too.
      restartTriggers = [
        cfg.package
        secretsJson
      ];
      environment.RUST_LOG = lib.mkDefault "info";
      serviceConfig = {
        ExecStart = lib.escapeShellArgs ([ (lib.getExe cfg.package) ] ++ args);
        ExecReload = "${lib.getExe' pkgs.coreutils "kill"} -HUP $MAINPID";
        Restart = "on-failure";
        RestartSec = "1s";

        # A fixed system user rather than DynamicUser: its state, overlay and
        # event log keep one owner across restarts and rebuilds.
        User = "cell-proxy";
        Group = "cell-proxy";
        StateDirectory = "cell-proxy";
        StateDirectoryMode = "0700";
        RuntimeDirectory = "cell-proxy";
        RuntimeDirectoryMode = "0700";
        LogsDirectory = "cell-proxy";
        LogsDirectoryMode = "0750";
        UMask = "0077";

        # nftables and NFLOG need NET_ADMIN; DNS on port 53 needs
        # NET_BIND_SERVICE. Nothing else.
        AmbientCapabilities = [
          "CAP_NET_ADMIN"
          "CAP_NET_BIND_SERVICE"
        ];
        CapabilityBoundingSet = [
          "CAP_NET_ADMIN"
          "CAP_NET_BIND_SERVICE"
        ];
        NoNewPrivileges = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
          "AF_NETLINK"
        ];
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          "~@resources"
        ];
        SystemCallErrorNumber = "EPERM";
        LimitNOFILE = 65536;
      };
    };

    users.users.cell-proxy = {
      isSystemUser = true;
      group = "cell-proxy";
      description = "cell firewall daemon";
    };
    users.groups.cell-proxy = { };

    environment.systemPackages = [
      cfg.package
      pkgs.nftables
      overlayInstall
      secretsLoad
      secretsStatus
      proxyStatus
    ];
  };
}
