# Module evaluation tests: the firewall, agent and VM modules evaluated with
# nixpkgs' `lib.evalModules` against NixOS options declared as nixpkgs
# declares them (./nixos-stub.nix, ./nixpkgs-*-stub.nix, each naming the
# file it mirrors) and, for modules/vm, microvm.nix's own guest modules when
# a checkout is given (else ./microvm-stub.nix). Checks the options, the
# assertions and what the modules set, the way each consumer evaluates
# them: pkgs.testers.runNixOSTest (read-only nixpkgs.config, node.pkgs),
# lib.mkCell / lib.nixosSystem (pkgs made from nixpkgs.config), and each host
# system (x86_64-linux and aarch64-linux with qemu, aarch64-darwin with
# vfkit). Run:
#   nix-instantiate --eval --strict --json checks/eval/modules.nix \
#     --arg lib 'import /path/to/nixpkgs.lib/lib' [--argstr microvm /path/to/microvm.nix]
# Evaluates to { cases; failures = [ ]; microvm = "stub" | "<path>"; }.
{ lib
, microvm ? null
}:
let
  inherit (import ../../lib/tests/harness.nix) eq run;

  # microvm.nix's guest modules that evaluate with nixpkgs.lib and the NixOS
  # stub (the others build runners and need all of nixpkgs).
  microvmModules =
    if microvm == null then
      [ ./microvm-stub.nix ]
    else
      map (f: /. + "${microvm}/nixos-modules/microvm/${f}") [
        "options.nix"
        "system.nix"
        "store-disk.nix"
        "mounts.nix"
        "asserts.nix"
      ];

  stubPkgs = args: import ./pkgs-stub.nix args;

  # nixpkgs = "read-only": as pkgs.testers.runNixOSTest evaluates a node
  #   (node.pkgs given; nixpkgs.config read-only), pkgs made with `config`.
  # nixpkgs = "writable": as lib.nixosSystem / lib.mkCell do (pkgs made from
  #   nixpkgs.config and nixpkgs.hostPlatform).
  # vm: add microvm.nix (real or stub) and modules/vm, as lib.mkCell does.
  eval =
    { modules
    , without ? [ ]
    , system ? "x86_64-linux"
    , nixpkgs ? "read-only"
    , config ? { }
    , vm ? false
    }:
    (lib.evalModules {
      modules = [ ./nixos-stub.nix ]
        ++ (
        if nixpkgs == "read-only" then
          [
            ./nixpkgs-read-only-stub.nix
            { nixpkgs.pkgs = stubPkgs { inherit without system config; }; }
          ]
        else
          [
            (import ./nixpkgs-stub.nix { inherit without; })
            { nixpkgs.hostPlatform = system; }
          ]
      )
        ++ lib.optionals vm (microvmModules ++ [ ../../modules/vm ])
        ++ modules;
    }).config;

  firewall = extra: eval { modules = [ ../../modules/firewall { cell.firewall.enable = true; } ] ++ extra; };
  agent =
    extra:
    eval {
      modules = [
        ../../modules/agent
        { cell.agent.enable = true; }
      ]
      ++ extra;
    };

  # A VM of lib.mkCell for one host: role "firewall" or "agent"; host
  # "x86_64-linux", "aarch64-linux" (qemu) or "aarch64-darwin" (vfkit,
  # aarch64-linux guests).
  cellVm =
    role: host: extra:
    let
      system = if host == "aarch64-darwin" then "aarch64-linux" else host;
    in
    eval {
      inherit system;
      nixpkgs = "writable";
      vm = true;
      modules = [
        ../../modules/${role}
        {
          cell.${role}.enable = true;
          networking.hostName = "cell-${role}";
          microvm.hypervisor = if host == "aarch64-darwin" then "vfkit" else "qemu";
          microvm.vmHostPackages = stubPkgs { system = host; };
        }
      ]
      ++ extra;
    };

  # Messages of the assertions that fail.
  failing = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # Does evaluating (deeply) throw?
  throws = value: !(builtins.tryEval (builtins.deepSeq value value)).success;
  evaluates = value: !(throws value);
  # The value, or "throws" (so that a case compares instead of aborting);
  # a missing attribute is not caught, hence `or "absent"` where one may be.
  attempt = value: let r = builtins.tryEval (builtins.deepSeq value value); in if r.success then r.value else "throws";

  fw = firewall [
    {
      cell.policy.https."api.example.com" = { };
      cell.secrets.example = {
        env = "EXAMPLE_KEY";
        hosts = [ "api.example.com" ];
        source.env = "EXAMPLE_KEY";
      };
    }
  ];
  svc = fw.systemd.services.cell-proxy;
  exec = svc.serviceConfig.ExecStart;
  has = needle: lib.hasInfix needle exec;

  ag = agent [
    {
      cell.secrets.example = {
        env = "EXAMPLE_KEY";
        hosts = [ "api.example.com" ];
        source.command = [
          "pass"
          "show"
          "example"
        ];
      };
      cell.agent.harnesses = [
        "codex"
        "pi"
      ];
      cell.agent.workspace.enable = true;
    }
  ];
  # The microvm.nix wiring of each VM (modules/vm), per host system.
  vmFw = cellVm "firewall" "x86_64-linux" [ ];
  vmAg = cellVm "agent" "x86_64-linux" [{ cell.agent.workspace.enable = true; }];
  vmAgNoShare = cellVm "agent" "x86_64-linux" [ ];
  vmFwArm = cellVm "firewall" "aarch64-linux" [ ];
  vmAgArm = cellVm "agent" "aarch64-linux" [{ cell.agent.workspace.enable = true; }];
  vmAgDarwin = cellVm "agent" "aarch64-darwin" [{ cell.agent.workspace.enable = true; }];
  vmFwDarwin = cellVm "firewall" "aarch64-darwin" [ ];

  # The link device's qemu arguments.
  linkDevice = c: lib.elemAt c.microvm.qemu.extraArgs 3;

  claudeAllowed = { allowUnfreePredicate = p: lib.getName p == "claude-code"; };
in
(run [
  # --- firewall -----------------------------------------------------------
  (eq "firewall: no failing assertions" (failing fw) [ ])
  (eq "firewall: destination-unreachable exempt from ICMP rate limits so rejects fail fast, no forwarding without cidr"
    {
      inherit (fw.boot.kernel.sysctl) "net.ipv4.icmp_ratemask" "net.ipv6.icmp.ratemask" "net.ipv4.ip_forward";
    }
    {
      "net.ipv4.icmp_ratemask" = 6160;
      "net.ipv6.icmp.ratemask" = "0,3-127";
      "net.ipv4.ip_forward" = 0;
    })
  (eq "firewall: a cidr rule turns forwarding on"
    (firewall [
      {
        cell.policy.cidr = [
          {
            cidr = "192.0.2.0/24";
            protocol = "udp";
            ports = [ 123 ];
          }
        ];
      }
    ]).boot.kernel.sysctl."net.ipv4.ip_forward" 1)
  (eq "firewall: cell-proxy gets the link, ports, control socket and event log"
    (map has [
      "--agent-iface agent0"
      "--listen 10.89.0.1"
      "--agent-addr 10.89.0.2 --agent-addr fd89::2"
      "--dns-port 53"
      "--transparent-port 15001"
      "--explicit-port 3128"
      "--policy /etc/cell/policy.json"
      "--overlay /var/lib/cell-proxy/overlay.json"
      "--control /run/cell-proxy/control"
      "--events /var/log/cell-proxy/events.jsonl"
      "--state-dir /var/lib/cell-proxy"
    ])
    (lib.genList (_: true) 11))
  (eq "firewall: two capabilities, granted one by one, nothing else"
    {
      inherit (svc.serviceConfig) AmbientCapabilities CapabilityBoundingSet NoNewPrivileges ProtectSystem;
    }
    {
      AmbientCapabilities = [
        "CAP_NET_ADMIN"
        "CAP_NET_BIND_SERVICE"
      ];
      CapabilityBoundingSet = [
        "CAP_NET_ADMIN"
        "CAP_NET_BIND_SERVICE"
      ];
      NoNewPrivileges = true;
      ProtectSystem = "strict";
    })
  (eq "firewall: a policy change reloads, never restarts"
    (
      svc.reloadTriggers == [ fw.cell.firewall.checkedPolicy ]
      && lib.hasInfix "-HUP" svc.serviceConfig.ExecReload
    )
    true)
  (eq "firewall: the installed policy is the document cell-proxy --check ran on"
    (
      let
        checked = fw.environment.etc."cell/policy.json".source;
      in
      [
        (checked == fw.cell.firewall.checkedPolicy)
        (lib.hasInfix "--check --policy /nix/store/" checked.script)
        (lib.hasInfix "cell-policy.json $out" checked.script)
        fw.cell.policy.document.https
      ]
    ) [
    true
    true
    true
    [{ host = "api.example.com"; }]
  ])
  (eq "firewall: the agent link is trusted by the NixOS firewall (cell-proxy's table guards it); SSH only on the uplink"
    {
      inherit (fw.networking.firewall) trustedInterfaces;
      uplink = fw.networking.firewall.interfaces.uplink0.allowedTCPPorts;
      global = fw.networking.firewall.allowedTCPPorts;
      sshOpensFirewall = fw.services.openssh.openFirewall;
      flush = fw.networking.nftables.flushRuleset;
    }
    {
      trustedInterfaces = [ "agent0" ];
      uplink = [ 22 ];
      global = [ ];
      sshOpensFirewall = false;
      flush = false;
    })
  (eq "firewall: the link interface is named by MAC and addressed"
    {
      link = { inherit (fw.systemd.network.links."10-cell-agent") matchConfig linkConfig; };
      inherit (fw.systemd.network.networks."10-cell-agent") address;
    }
    {
      link = {
        matchConfig.MACAddress = "02:ce:11:00:00:01";
        linkConfig.Name = "agent0";
      };
      address = [
        "10.89.0.1/24"
        "fd89::1/64"
      ];
    })
  (eq "firewall: the secrets document names sources, never values" (builtins.fromJSON (builtins.toJSON fw.cell.secretsDocument)) {
    version = 1;
    secrets = [
      {
        name = "example";
        env = "EXAMPLE_KEY";
        placeholder = "cell-placeholder-example";
        hosts = [ "api.example.com" ];
        kind = "token";
        locations = [ "header" ];
        source.env = "EXAMPLE_KEY";
      }
    ];
  })
  (eq "firewall: the installed secrets document is that one, after cell-proxy --check ran on it against the policy"
    (
      let
        checked = fw.environment.etc."cell/secrets.json".source;
        # The file the module writes, as the stub names it (by its content).
        written = (stubPkgs { }).writeText "cell-secrets.json" (builtins.toJSON fw.cell.secretsDocument);
        policy = (stubPkgs { }).writeText "cell-policy.json" (builtins.toJSON fw.cell.policy.document);
      in
      [
        checked.name
        (lib.hasInfix "--check --policy ${policy} --secrets ${written}" checked.script)
        (lib.hasInfix "cp ${written} $out" checked.script)
      ]
    ) [
    "cell-secrets-checked.json"
    true
    true
  ])
  (eq "firewall: an aws secret's document has its kind and access key id placeholder; a token's locations as given"
    (
      (builtins.fromJSON (builtins.toJSON (firewall [
        {
          cell.policy.https."bedrock-runtime.us-east-1.amazonaws.com" = { };
          cell.policy.https."api.example.com" = { };
          cell.secrets.bedrock = {
            kind = "aws";
            hosts = [ "bedrock-runtime.us-east-1.amazonaws.com" ];
            source.command = [
              "aws"
              "configure"
              "export-credentials"
              "--profile"
              "dev"
              "--format"
              "process"
            ];
          };
          cell.secrets.search = {
            env = "SEARCH_KEY";
            hosts = [ "api.example.com" ];
            locations = [
              "query"
              "body"
            ];
            source.keychain = "search-key";
          };
        }
      ]).cell.secretsDocument))
    ).secrets [
    {
      name = "bedrock";
      env = null;
      placeholder = "cell-placeholder-bedrock";
      accessKeyIdPlaceholder = "cell-placeholder-bedrock.akid";
      hosts = [ "bedrock-runtime.us-east-1.amazonaws.com" ];
      kind = "aws";
      locations = [ "header" ];
      source.command = [
        "aws"
        "configure"
        "export-credentials"
        "--profile"
        "dev"
        "--format"
        "process"
      ];
    }
    {
      name = "search";
      env = "SEARCH_KEY";
      placeholder = "cell-placeholder-search";
      hosts = [ "api.example.com" ];
      kind = "token";
      locations = [
        "query"
        "body"
      ];
      source.keychain = "search-key";
    }
  ])
  (eq "firewall: cell-proxy reads the secrets document; values never reach a file or a credential; a changed document restarts it"
    [
      (has "--secrets /etc/cell/secrets.json")
      (svc.serviceConfig ? LoadCredential || svc.serviceConfig ? LoadCredentialEncrypted || svc.serviceConfig ? SetCredential)
      (lib.length svc.restartTriggers)
      (lib.elem fw.environment.etc."cell/secrets.json".source svc.restartTriggers)
    ]
    [
      true
      false
      2
      false
    ])
  (eq "firewall: `cell status` asks the daemon over its control socket"
    (
      let
        script = n: (lib.findFirst (p: p.name == n) { text = "absent"; } fw.environment.systemPackages).text;
      in
      [
        (lib.hasInfix "/bin/cell-proxy --control /run/cell-proxy/control" (script "cell-proxy-status"))
        (lib.hasSuffix "--status\n" (script "cell-proxy-status"))
      ]
    ) [
    true
    true
  ])
  (eq "firewall: the host CLI's secrets commands, values on stdin only"
    (
      let
        script = n: (lib.findFirst (p: p.name == n) { text = "absent"; } fw.environment.systemPackages).text;
      in
      map (lib.hasInfix "/bin/cell-proxy --control /run/cell-proxy/control") [
        (script "cell-secrets-load")
        (script "cell-secrets-status")
      ]
      ++ [
        (lib.hasSuffix "--load-secrets -\n" (script "cell-secrets-load"))
        (lib.hasSuffix "--secrets-status\n" (script "cell-secrets-status"))
      ]
    ) [
    true
    true
    true
    true
  ])
  (eq "firewall: a secret's kind and locations are typed"
    (map (s: throws (firewall [{ cell.secrets.x = { hosts = [ "a.example" ]; source.env = "X"; } // s; }]).cell.secretsDocument) [
      { kind = "oauth"; }
      { locations = [ ]; }
      { locations = [ "cookie" ]; }
      { locations = [ "header" "query" "body" ]; }
      { kind = "aws"; }
    ]) [
    true
    true
    true
    false
    false
  ])
  (eq "firewall: an aws secret with env, or with locations, or two aws secrets, are refused"
    (map (c: throws (firewall [{ cell.secrets = c; }]).environment.etc."cell/secrets.json".source.script) [
      { x = { kind = "aws"; env = "AWS_KEY"; hosts = [ "a.example" ]; source.env = "X"; }; }
      { x = { kind = "aws"; locations = [ "body" ]; hosts = [ "a.example" ]; source.env = "X"; }; }
      {
        x = { kind = "aws"; hosts = [ "a.example" ]; source.env = "X"; };
        y = { kind = "aws"; hosts = [ "b.example" ]; source.env = "Y"; };
      }
      {
        x = { env = "K"; hosts = [ "a.example" ]; source.env = "X"; };
        y = { env = "K"; hosts = [ "b.example" ]; source.env = "Y"; };
      }
    ]) [
    true
    true
    true
    true
  ])
  (eq "firewall: cell-proxy bounds and rotates its own event log (16 MiB, 4 kept); logrotate is not used"
    [
      (has "--events-max-bytes 16777216 --events-keep 4")
      fw.services.logrotate.enable
      fw.services.logrotate.settings
    ]
    [
      true
      false
      { }
    ])
  (eq "firewall: no spy store unless enabled; enabled, in the 0700 state directory with its bounds"
    [
      (has "--spy")
      (lib.hasInfix "--spy /var/lib/cell-proxy/spy.jsonl --spy-max-bytes 67108864 --spy-keep 4 --spy-body-max 1048576"
        (firewall [{ cell.firewall.spy.enable = true; }]).systemd.services.cell-proxy.serviceConfig.ExecStart)
      (lib.hasInfix "--spy-max-bytes 1000 --spy-keep 1 --spy-body-max 64"
        (firewall [{ cell.firewall.spy = { enable = true; maxBytes = 1000; keep = 1; bodyMaxBytes = 64; }; }]).systemd.services.cell-proxy.serviceConfig.ExecStart)
      svc.serviceConfig.StateDirectoryMode
      (throws (firewall [{ cell.firewall.spy = { enable = true; bodyMaxBytes = 0; }; }]).systemd.services.cell-proxy.serviceConfig.ExecStart)
    ]
    [
      false
      true
      true
      "0700"
      true
    ])
  (eq "firewall: an https entry's spy flag reaches the policy document"
    (map (e: e.spy or "unset")
      (firewall [{
        cell.policy.https."api.anthropic.com".spy = true;
        cell.policy.https."api.openai.com".spy = false;
        cell.policy.https."pypi.org" = { };
      }]).cell.policy.document.https)
    [
      true
      false
      "unset"
    ])
  (eq "firewall: the event log bounds are options; without an event log no bound flags"
    (map (c: lib.hasInfix "--events-max-bytes 0 --events-keep 0" c.systemd.services.cell-proxy.serviceConfig.ExecStart) [
      (firewall [{ cell.firewall.eventLog = { maxBytes = 0; keep = 0; }; }])
    ]
    ++ [
      (lib.hasInfix "--events-" (firewall [{ cell.firewall.eventLog.enable = false; }]).systemd.services.cell-proxy.serviceConfig.ExecStart)
      (throws (firewall [{ cell.firewall.eventLog.keep = 101; }]).cell.firewall.eventLog.keep)
      (throws (firewall [{ cell.firewall.eventLog.maxBytes = -1; }]).cell.firewall.eventLog.maxBytes)
    ]) [
    true
    false
    true
    true
  ])
  (eq "firewall: the old eventLog.rotate still works (renamed to keep, with a warning); maxSize is refused with the replacement"
    (
      let
        renamed = firewall [{ cell.firewall.eventLog.rotate = 7; }];
      in
      [
        renamed.cell.firewall.eventLog.keep
        (lib.any (lib.hasInfix "eventLog.keep") renamed.warnings)
        (lib.any (lib.hasInfix "eventLog.maxBytes") (failing (firewall [{ cell.firewall.eventLog.maxSize = "50M"; }])))
      ]
    ) [
    7
    true
    true
  ])
  (eq "firewall: clashing ports are refused with the fix"
    (
      map (lib.hasInfix "three different ports") (failing (firewall [{ cell.firewall.ports.transparent = 3128; }]))
    ) [ true ])
  (eq "firewall and agent in one configuration are refused, by both modules"
    (
      lib.length (lib.filter (lib.hasInfix "are separate VMs") (failing (firewall [ ../../modules/agent { cell.agent.enable = true; } ])))
    ) 2)
  (eq "firewall: a secret file in the Nix store is refused"
    (throws (firewall [
      {
        cell.secrets.x = {
          hosts = [ "a.example" ];
          source.file = "${builtins.storeDir}/abc-key";
        };
      }
    ]).environment.etc."cell/secrets.json".source.text)
    true)
  (eq "firewall: a path literal as a secret file is refused by the type"
    (throws (firewall [
      {
        cell.secrets.x = {
          hosts = [ "a.example" ];
          source.file = ./nixos-stub.nix;
        };
      }
    ]).cell.secretsDocument)
    true)
  (eq "firewall: a policy the compiler refuses stops evaluation" (throws (firewall [{ cell.policy.https."*" = { }; }]).environment.etc."cell/policy.json".source.text) true)
  (eq "firewall: disabled means nothing is set (sysctls as NixOS has them without cell)"
    (
      let
        c = eval { modules = [ ../../modules/firewall ]; };
      in
      [
        (c.systemd.services ? cell-proxy)
        (c.boot.kernel.sysctl == (eval { modules = [ ]; }).boot.kernel.sysctl)
      ]
    ) [
    false
    true
  ])

  # --- the project template's cell.nix, given to both VMs (by lib.mkCell) ---
  (eq "template: evaluates in both roles with no failing assertion"
    (
      let
        role = r: eval {
          nixpkgs = "writable";
          modules = [ ../../modules/${r} { cell.${r}.enable = true; } ../../templates/default/cell.nix ];
        };
      in
      [
        (failing (role "firewall"))
        (failing (role "agent"))
        ((role "firewall").systemd.services ? cell-ca)
        ((role "agent").systemd.services ? cell-proxy)
        (map (p: p.name) (role "agent").environment.systemPackages)
      ]
    ) [
    [ ]
    [ ]
    false
    false
    [ "claude-code-2.0.0" "go" "gnumake" "git" "curl" ]
  ])
  (eq "hosts: the default cell (hosts/) evaluates in both roles with no failing assertion"
    (map
      (r: failing (eval {
        nixpkgs = "writable";
        modules = [ ../../modules/${r} ../../hosts/policy.nix ../../hosts/${r} ];
      })) [ "firewall" "agent" ]) [ [ ] [ ] ])

  # --- microvm.nix wiring ---------------------------------------------------
  (eq "vm: the firewall listens on the link socket; MMIO without PCI devices" vmFw.microvm.qemu.extraArgs [
    "-netdev"
    "stream,id=cell-link,addr.type=unix,addr.path=link.sock,server=on"
    "-device"
    "virtio-net-device,netdev=cell-link,mac=02:ce:11:00:00:01"
  ])
  (eq "vm: the agent connects (and reconnects); PCI once a share exists, with microvm.nix's romfile=" vmAg.microvm.qemu.extraArgs [
    "-netdev"
    "stream,id=cell-link,addr.type=unix,addr.path=link.sock,server=off,reconnect-ms=1000"
    "-device"
    "virtio-net-pci,netdev=cell-link,mac=02:ce:11:00:00:02,romfile="
  ])
  (eq "vm: the firewall's SSH is forwarded from host loopback only" (map (f: f.host.address) vmFw.microvm.forwardPorts) [ "127.0.0.1" ])
  (eq "vm: only the firewall has an uplink; the agent has no microvm.nix interface at all" [
    (map (i: i.type) vmFw.microvm.interfaces)
    vmAg.microvm.interfaces
  ] [
    [ "user" ]
    [ ]
  ])
  (eq "vm: the agent's workspace share and /var volume"
    {
      shares = map (s: { inherit (s) proto tag source mountPoint; }) vmAg.microvm.shares;
      volumes = map (v: v.mountPoint) vmAg.microvm.volumes;
    }
    {
      shares = [
        {
          proto = "9p";
          tag = "workspace";
          source = "workspace";
          mountPoint = "/workspace";
        }
      ];
      volumes = [ "/var" ];
    })
  (eq "vm: vfkit joins the link by a unixgram socket" vmAgDarwin.microvm.vfkit.extraArgs [
    "--device"
    "virtio-net,unixSocketPath=link-agent.sock,mac=02:ce:11:00:00:02"
  ])
  (eq "vm: sizes default by role" [ vmFw.microvm.mem vmAg.microvm.mem vmAg.microvm.vcpu ] [ 512 4096 2 ])
  (eq "vm: the spec the host CLI boots (firewall: link + uplink, no volume)"
    {
      inherit (vmFw.cell.vm.spec) version role system linkMac uplinkMac volumes shares vcpu mem;
      kernel = baseNameOf vmFw.cell.vm.spec.kernel;
      init = lib.elem "init=${vmFw.system.build.toplevel}/init" vmFw.cell.vm.spec.cmdline;
    }
    {
      version = 1;
      role = "firewall";
      system = "x86_64-linux";
      linkMac = "02:ce:11:00:00:01";
      uplinkMac = vmFw.cell.firewall.uplinkMac;
      volumes = [ ];
      shares = [ ];
      init = true;
      vcpu = 1;
      mem = 512;
      kernel = "bzImage";
    })
  (eq "vm: the agent's spec has no uplink, its /var volume and the workspace share"
    {
      inherit (vmAg.cell.vm.spec) role uplinkMac linkMac volumes shares;
    }
    {
      role = "agent";
      uplinkMac = null;
      linkMac = "02:ce:11:00:00:02";
      volumes = [
        {
          image = "agent-var.img";
          sizeMib = 16384;
        }
      ];
      shares = [
        {
          tag = "workspace";
          source = "workspace";
        }
      ];
    })
  (eq "vm: the CLI's key comes from the kernel command line, read from /run by sshd, for root on the firewall and the agent user on the agent"
    [
      vmFw.services.openssh.authorizedKeysFiles
      vmFw.systemd.services.cell-boot-key.before
      (lib.hasInfix "authorized_keys.d/root" vmFw.systemd.services.cell-boot-key.serviceConfig.ExecStart.text)
      (lib.hasInfix "authorized_keys.d/agent" vmAg.systemd.services.cell-boot-key.serviceConfig.ExecStart.text)
      vmAg.fileSystems."/var".autoFormat
    ]
    [
      [ "/run/cell/authorized_keys.d/%u" ]
      [ "sshd.service" ]
      true
      true
      true
    ])
  (eq "vm: sshd over vsock only on a vfkit firewall (qemu forwards a loopback port instead)"
    [
      (vmFwDarwin.systemd.sockets ? cell-sshd-vsock)
      vmFwDarwin.systemd.sockets.cell-sshd-vsock.socketConfig.ListenStream
      (vmFw.systemd.sockets ? cell-sshd-vsock)
      (vmAgDarwin.systemd.sockets ? cell-sshd-vsock)
    ]
    [
      true
      "vsock::22"
      false
      false
    ])

  # --- agent --------------------------------------------------------------
  (eq "agent: no failing assertions" (failing ag) [ ])
  (eq "agent: its only network is the link, routed and resolved via the firewall"
    {
      networks = lib.attrNames ag.systemd.network.networks;
      inherit (ag.systemd.network.networks."10-cell") address gateway;
      inherit (ag.networking) nameservers;
      match = ag.systemd.network.links."10-cell".matchConfig.MACAddress;
    }
    {
      networks = [ "10-cell" ];
      address = [
        "10.89.0.2/24"
        "fd89::2/64"
      ];
      gateway = [
        "10.89.0.1"
        "fd89::1"
      ];
      nameservers = [ "10.89.0.1" ];
      match = "02:ce:11:00:00:02";
    })
  (eq "agent: a second network is refused"
    (
      map (lib.hasInfix "only interface") (failing (agent [
        {
          systemd.network.networks."20-host".matchConfig.Name = "eth1";
        }
      ]))
    ) [ true ])
  (eq "agent: an aws secret gives the AWS SDKs their two variables, placeholders only"
    (
      let
        c = agent [
          {
            cell.secrets.bedrock = {
              kind = "aws";
              hosts = [ "bedrock-runtime.us-east-1.amazonaws.com" ];
              source.command = [
                "aws"
                "configure"
                "export-credentials"
                "--profile"
                "dev"
                "--format"
                "process"
              ];
            };
          }
        ];
      in
      {
        inherit (c.environment.variables) AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY;
        leaks = lib.filter (lib.hasInfix "export-credentials") (lib.attrValues c.environment.variables);
      }
    )
    {
      AWS_ACCESS_KEY_ID = "cell-placeholder-bedrock.akid";
      AWS_SECRET_ACCESS_KEY = "cell-placeholder-bedrock";
      leaks = [ ];
    })
  (eq "agent: two secrets in one variable are refused"
    (throws (agent [
      {
        cell.secrets.x = { env = "K"; hosts = [ "a.example" ]; source.env = "X"; };
        cell.secrets.y = { env = "K"; hosts = [ "b.example" ]; source.env = "Y"; };
      }
    ]).environment.variables)
    true)
  (eq "agent: sees the placeholder, never the source"
    {
      key = ag.environment.variables.EXAMPLE_KEY;
      leaks = lib.filter (v: lib.hasInfix "pass" v) (lib.attrValues ag.environment.variables);
    }
    {
      key = "cell-placeholder-example";
      leaks = [ ];
    })
  (eq "agent: trusts the cell CA at runtime, fetched from the firewall"
    {
      inherit (ag.cell.agent) caUrl;
      etc = ag.environment.etc."ssl/certs/ca-certificates.crt".source;
      env = ag.environment.variables.SSL_CERT_FILE;
      node = ag.environment.variables.NODE_EXTRA_CA_CERTS;
      fetch = lib.hasInfix "cell-fetch-ca" ag.systemd.services.cell-ca.serviceConfig.ExecStart;
    }
    {
      caUrl = "http://10.89.0.1:3128/cell/ca.crt";
      etc = "/run/cell/ca-bundle.crt";
      env = "/run/cell/ca-bundle.crt";
      node = "/run/cell/ca.crt";
      fetch = true;
    })
  (eq "agent: the chosen harnesses are installed" (map (p: p.name) ag.environment.systemPackages) [
    "codex"
    "pi-coding-agent"
    "git"
    "curl"
  ])
  (eq "agent: a harness the nixpkgs lacks is refused with the fix"
    (
      map (lib.hasInfix "no package for pi (pkgs.pi-coding-agent)") (failing (eval {
        modules = [
          ../../modules/agent
          {
            cell.agent.enable = true;
            cell.agent.harnesses = [ "pi" ];
          }
        ];
        without = [ "pi-coding-agent" ];
      }))
    ) [ true ])
  (eq "agent: no module of cell writes nixpkgs.config (writable, as lib.mkCell evaluates it), with or without claude"
    [
      (eval { nixpkgs = "writable"; modules = [ ../../modules/agent { cell.agent.enable = true; } ]; }).nixpkgs.config
      (eval { nixpkgs = "writable"; modules = [ ../../modules/agent { cell.agent = { enable = true; harnesses = [ "codex" ]; }; } ]; }).nixpkgs.config
    ] [
    { }
    { }
  ])
  (eq "agent: evaluates under runNixOSTest's read-only nixpkgs.config (node.pkgs), with and without claude"
    [
      (evaluates (failing ag))
      (evaluates (failing (eval { modules = [ ../../modules/firewall { cell.firewall.enable = true; } ]; })))
      (failing (eval {
        config = claudeAllowed;
        modules = [ ../../modules/agent { cell.agent = { enable = true; harnesses = [ "claude" ]; }; } ];
      }))
    ] [
    true
    true
    [ ]
  ])
  (eq "agent: with its own pkgs (nixpkgs.pkgs) no assertion fails (nixpkgs.config must stay empty then)"
    (failing (eval {
      nixpkgs = "writable";
      modules = [
        ../../modules/agent
        {
          cell.agent.enable = true;
          nixpkgs.pkgs = stubPkgs { config = claudeAllowed; };
          cell.agent.harnesses = [ "claude" ];
        }
      ];
    })) [ ])
  (eq "agent: claude refused by the user's nixpkgs is reported with the exact allowUnfreePredicate to add; allowed, it is installed"
    [
      (map (lib.hasInfix ''nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";'') (failing (agent [{ cell.agent.harnesses = [ "claude" ]; }])))
      (failing (eval {
        nixpkgs = "writable";
        modules = [ ../../modules/agent { cell.agent = { enable = true; harnesses = [ "claude" ]; }; nixpkgs.config = claudeAllowed; } ];
      }))
      (map (p: p.name)
        (eval {
          nixpkgs = "writable";
          modules = [ ../../modules/agent { cell.agent = { enable = true; harnesses = [ "claude" ]; }; nixpkgs.config = claudeAllowed; } ];
        }).environment.systemPackages)
    ]
    [
      [ true ]
      [ ]
      [ "claude-code-2.0.0" "git" "curl" ]
    ])
  (eq "agent: the agent module mounts nothing itself (the workspace share is modules/vm's), never the home directory"
    (lib.attrNames ag.fileSystems) [ ])
  (eq "agent: `cell agent` finds the installed harnesses; the user's git key is made on first boot on /var"
    [
      ag.environment.etc."cell/harnesses".text
      ag.systemd.services.cell-agent-key.serviceConfig.User
      (lib.hasInfix "/var/lib/cell-agent/id_ed25519" ag.systemd.services.cell-agent-key.serviceConfig.ExecStart)
      (lib.hasInfix "IdentityFile /var/lib/cell-agent/id_ed25519" ag.programs.ssh.extraConfig)
    ]
    [
      "codex\npi\n"
      "agent"
      true
      true
    ])
  (eq "firewall: `cell allow` has its installer on the firewall"
    (map (p: p.name) (lib.filter (p: p.name == "cell-overlay-install") fw.environment.systemPackages))
    [ "cell-overlay-install" ])
  (eq "agent: SSH by key only, root login off, host key on the persistent volume"
    {
      inherit (ag.services.openssh.settings) PasswordAuthentication PermitRootLogin;
      hostKeys = map (k: k.path) ag.services.openssh.hostKeys;
    }
    {
      PasswordAuthentication = false;
      PermitRootLogin = "no";
      hostKeys = [ "/var/lib/cell/ssh_host_ed25519_key" ];
    })

  # --- each host system, as lib.mkCell builds it ---------------------------
  (eq "hosts: x86_64-linux and aarch64-linux (qemu), aarch64-darwin (vfkit): both VMs evaluate, no failing assertion (microvm.nix's included)"
    (map failing [ vmFw vmAg vmFwArm vmAgArm vmFwDarwin vmAgDarwin ])
    [ [ ] [ ] [ ] [ ] [ ] [ ] ])
  (eq "hosts: the guest system and kernel image per host (aarch64-linux guests, uncompressed Image, on a Mac)"
    (map (c: [ c.cell.vm.spec.system (baseNameOf c.cell.vm.spec.kernel) c.microvm.qemu.machine ]) [ vmFw vmFwArm vmFwDarwin ])
    [
      [ "x86_64-linux" "bzImage" "microvm" ]
      [ "aarch64-linux" "Image" "virt" ]
      [ "aarch64-linux" "Image" "virt" ]
    ])
  (eq "vm: the link device follows microvm.nix's PCI and romfile= rules (aarch64 `virt` is PCI and gets romfile=; x86_64 MMIO gets neither)"
    (map linkDevice [ vmFw vmAgNoShare vmAg vmFwArm vmAgArm ])
    [
      "virtio-net-device,netdev=cell-link,mac=02:ce:11:00:00:01"
      "virtio-net-device,netdev=cell-link,mac=02:ce:11:00:00:02"
      "virtio-net-pci,netdev=cell-link,mac=02:ce:11:00:00:02,romfile="
      "virtio-net-pci,netdev=cell-link,mac=02:ce:11:00:00:01,romfile="
      "virtio-net-pci,netdev=cell-link,mac=02:ce:11:00:00:02,romfile="
    ])
  (eq "vm: an emulated CPU on aarch64 drops romfile= there too, as microvm.nix does"
    (linkDevice (cellVm "firewall" "aarch64-linux" [{ microvm.cpu = "cortex-a72"; microvm.qemu.machine = "microvm"; }]))
    "virtio-net-device,netdev=cell-link,mac=02:ce:11:00:00:01")
  (eq "vm: the workspace mount keeps cell's options over microvm.nix's own share mount (1 MiB 9p messages, nofail; virtio-fs on vfkit)"
    (map (c: { inherit (c.fileSystems."/workspace") device fsType options; }) [ vmAg vmAgArm vmAgDarwin ])
    (
      let
        p9 = {
          device = "workspace";
          fsType = "9p";
          options = [ "trans=virtio" "version=9p2000.L" "msize=1048576" "x-systemd.after=systemd-modules-load.service" "nofail" ];
        };
      in
      [
        p9
        p9
        {
          device = "workspace";
          fsType = "virtiofs";
          options = [ "defaults" "x-systemd.after=systemd-modules-load.service" "nofail" ];
        }
      ]
    ))
  (eq "vm: systemd's ssh generator is off on every cell VM, so on vfkit only cell-sshd-vsock.socket listens on vsock port 22"
    [
      (map (c: lib.elem "systemd.ssh_auto=no" c.cell.vm.spec.cmdline) [ vmFwDarwin vmAgDarwin vmFw vmAg vmFwArm ])
      vmFwDarwin.systemd.sockets.cell-sshd-vsock.socketConfig.ListenStream
    ]
    [
      [ true true true true true ]
      "vsock::22"
    ])

  # --- the stubs themselves: a looser stub is a test that cannot fail ------
  (eq "stubs: NixOS defaults as nixpkgs declares them (sshd opens the firewall; an enabled nftables on a pre-23.11 stateVersion flushes the whole ruleset)"
    (
      let
        c = eval { modules = [ ]; };
        old = eval { modules = [{ networking.nftables.enable = true; system.stateVersion = "23.05"; }]; };
      in
      [
        c.services.openssh.openFirewall
        c.networking.nftables.flushRuleset
        old.networking.nftables.flushRuleset
        c.networking.firewall.enable
        c.services.openssh.settings.PermitRootLogin
        c.networking.useDHCP
        c.services.logrotate.enable
      ]
    ) [
    true
    false
    true
    true
    "prohibit-password"
    true
    false
  ])
  (eq "firewall: keeps cell-proxy's nftables table even where NixOS would flush the ruleset (old stateVersion)"
    (firewall [{ system.stateVersion = "23.05"; }]).networking.nftables.flushRuleset
    false)
  (eq "stubs: networkd sections refuse keys and values nixpkgs' checkUnitConfig refuses"
    (map (m: throws (eval { modules = [ m ]; }).systemd.network) [
      { systemd.network.networks.x.networkConfig.Bogus = true; }
      { systemd.network.networks.x.linkConfig.RequiredForOnline = "sometimes"; }
      { systemd.network.networks.x.networkConfig.IPv6AcceptRA = "maybe"; }
      { systemd.network.links.x.linkConfig.Bogus = "x"; }
      { systemd.network.links.x.linkConfig.MACAddress = "not-a-mac"; }
    ]
    ++ [ (throws (eval { modules = [{ systemd.network.networks.x.networkConfig.DHCP = "ipv4"; }]; }).systemd.network) ])
    [ true true true true true false ])
  (eq "stubs: unit options are typed (unit names, Service Type)"
    (map (m: throws (eval { modules = [ m ]; }).systemd.services) [
      { systemd.services.x.after = [ "not a unit" ]; }
      { systemd.services.x.serviceConfig.Type = "oneshoot"; }
    ]) [ true true ])
  (eq "stubs: nixpkgs.config is read-only under runNixOSTest, even an empty definition"
    [
      (throws (eval { modules = [{ nixpkgs.config = { }; }]; }).nixpkgs.config)
      (throws (eval { modules = [{ nixpkgs.config.allowUnfree = true; }]; }).nixpkgs.config)
    ] [ true true ])
  (eq "stubs: boot.kernel.sysctl as config/sysctl.nix declares it: a key defined twice is refused even with equal values; the buffer maxima take the highest"
    [
      (throws (eval { modules = [{ boot.kernel.sysctl."net.ipv4.ip_forward" = 0; } { boot.kernel.sysctl."net.ipv4.ip_forward" = 0; }]; }).boot.kernel.sysctl)
      (attempt (eval { modules = [{ boot.kernel.sysctl."net.core.rmem_max" = 100; } { boot.kernel.sysctl."net.core.rmem_max" = 200; }]; }).boot.kernel.sysctl."net.core.rmem_max")
      (attempt (eval { modules = [ ]; }).boot.kernel.sysctl)
    ]
    [
      true
      200
      {
        "net.core.rmem_max" = null;
        "net.core.wmem_max" = null;
      }
    ])
  (eq "stubs: users as config/users-groups.nix declares them: a normal user's group defaults to users, a group's members include the users naming it in extraGroups"
    (attempt (
      let
        c = eval { modules = [{ users.users.alice = { isNormalUser = true; extraGroups = [ "wheel" ]; }; users.groups.wheel = { }; }]; };
      in
      [ c.users.users.alice.group (c.users.users.alice.name or "absent") c.users.groups.wheel.members ]
    ))
    [ "users" "alice" [ "alice" ] ])
  (eq "stubs: environment.etc as system/etc/etc.nix declares it: target, mode and owner default; text is written as etc-<name, / as ->"
    (attempt (
      let
        e = (eval { modules = [{ environment.etc."cell/x.json".text = "{}"; }]; }).environment.etc."cell/x.json";
      in
      [ (e.target or "absent") (e.mode or "absent") (e.user or "absent") e.source.name ]
    ))
    [ "cell/x.json" "symlink" "+0" "etc-cell-x.json" ])
  (eq "stubs: environment.variables as config/shells-environment.nix declares it: null unsets a variable, numbers become strings"
    (attempt (eval {
      modules = [
        { environment.variables = { A = "a"; B = 1; }; }
        { environment.variables.A = lib.mkForce null; }
      ];
    }).environment.variables)
    { B = "1"; })
  (eq "stubs: fileSystems as tasks/filesystems.nix declares them: autoFormat and boot paths add mount options, disabled entries are dropped, a trailing slash is refused"
    [
      (attempt vmAg.fileSystems."/var".options)
      (attempt (lib.attrNames (eval { modules = [{ fileSystems."/data" = { enable = false; device = "d"; }; }]; }).fileSystems))
      (throws (eval { modules = [{ fileSystems."/data/".device = "d"; }]; }).fileSystems)
      (attempt (eval { modules = [{ fileSystems."/x".label = "data"; }]; }).fileSystems."/x".device)
    ]
    [
      [ "x-systemd.makefs" "x-initrd.mount" ]
      [ ]
      true
      "/dev/disk/by-label/data"
    ])
  (eq "stubs: microvm.nix's lists are typed, its paths are paths, its hypervisors are its own"
    (map (t: throws (cellVm "agent" "x86_64-linux" [ t.def ]).microvm.${t.read}) [
      { read = "shares"; def.microvm.shares = [{ tag = "x"; source = "x"; mountPoint = "/x"; bogus = 1; }]; }
      { read = "interfaces"; def.microvm.interfaces = [{ type = "vde"; id = "x"; mac = "02:00:00:00:00:01"; }]; }
      { read = "volumes"; def.microvm.volumes = [{ image = "x.img"; mountPoint = "/x"; }]; }
      { read = "initrdPath"; def.microvm.initrdPath = lib.mkForce "initrd"; }
      { read = "hypervisor"; def.microvm.hypervisor = lib.mkForce "vfkit2"; }
      { read = "hypervisor"; def.microvm.hypervisor = lib.mkForce "firecracker"; }
      { read = "shares"; def = { }; }
    ])
    [ true true true true true false false ])
]) // {
  microvm = if microvm == null then "stub" else microvm;
}
