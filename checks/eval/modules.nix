# Module evaluation tests: the firewall and agent modules evaluated with
# nixpkgs' `lib.evalModules` (NixOS options stubbed with their real names and
# types: ./nixos-stub.nix). Checks the options, the assertions, and what the
# modules set. Run:
#   nix-instantiate --eval --strict --json checks/eval/modules.nix --arg lib 'import /path/to/nixpkgs.lib/lib'
# Evaluates to { cases; failures = [ ]; }.
{ lib }:
let
  inherit (import ../../lib/tests/harness.nix) eq run;

  eval =
    { modules
    , without ? [ ]
    ,
    }:
    (lib.evalModules {
      modules = [
        ./nixos-stub.nix
        ./microvm-stub.nix
        { _module.args.pkgs = import ./pkgs-stub.nix { inherit without; }; }
      ]
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

  # Messages of the assertions that fail.
  failing = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # Does evaluating (deeply) throw?
  throws = value: !(builtins.tryEval (builtins.deepSeq value value)).success;

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
  # The microvm.nix wiring of each VM (modules/vm).
  vmFw = firewall [ ../../modules/vm ];
  vmAg = agent [
    ../../modules/vm
    { cell.agent.workspace.enable = true; }
  ];
  vmAgDarwin = agent [
    ../../modules/vm
    { microvm.hypervisor = "vfkit"; }
  ];
  vmFwDarwin = firewall [
    ../../modules/vm
    { microvm.hypervisor = "vfkit"; }
  ];
in
run [
  # --- firewall -----------------------------------------------------------
  (eq "firewall: no failing assertions" (failing fw) [ ])
  (eq "firewall: ICMP rate limits off so rejects fail fast, no forwarding without cidr"
    {
      inherit (fw.boot.kernel.sysctl) "net.ipv4.icmp_ratelimit" "net.ipv6.icmp.ratelimit" "net.ipv4.ip_forward";
    }
    {
      "net.ipv4.icmp_ratelimit" = 0;
      "net.ipv6.icmp.ratelimit" = 0;
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
      "--dns-port 53"
      "--transparent-port 15001"
      "--explicit-port 3128"
      "--policy /etc/cell/policy.json"
      "--overlay /var/lib/cell-proxy/overlay.json"
      "--control /run/cell-proxy/control"
      "--events /var/log/cell-proxy/events.jsonl"
      "--state-dir /var/lib/cell-proxy"
    ])
    (lib.genList (_: true) 10))
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
      link = fw.systemd.network.links."10-cell-agent";
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
  (eq "firewall: the secrets document names sources, never values" (builtins.fromJSON fw.environment.etc."cell/secrets.json".source.text) {
    version = 1;
    secrets = [
      {
        name = "example";
        env = "EXAMPLE_KEY";
        placeholder = "cell-placeholder-example";
        hosts = [ "api.example.com" ];
        source.env = "EXAMPLE_KEY";
      }
    ];
  })
  (eq "firewall: the event log rotates as its owner"
    {
      inherit (fw.services.logrotate.settings.cell-proxy-events) files su copytruncate;
    }
    {
      files = "/var/log/cell-proxy/events.jsonl";
      su = "cell-proxy cell-proxy";
      copytruncate = true;
    })
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
  (eq "firewall: disabled means nothing is set"
    (
      let
        c = eval { modules = [ ../../modules/firewall ]; };
      in
      [
        (c.systemd.services ? cell-proxy)
        c.boot.kernel.sysctl
      ]
    ) [
    false
    { }
  ])

  # --- the project template's cell.nix, given to both VMs ----------------
  (eq "template: evaluates in both roles with no failing assertion" [
    (failing (firewall [ ../../templates/default/cell.nix ]))
    (failing (agent [ ../../templates/default/cell.nix ]))
    ((firewall [ ../../templates/default/cell.nix ]).systemd.services ? cell-ca)
    ((agent [ ../../templates/default/cell.nix ]).systemd.services ? cell-proxy)
  ] [
    [ ]
    [ ]
    false
    false
  ])

  # --- microvm.nix wiring ---------------------------------------------------
  (eq "vm: the firewall listens on the link socket; MMIO without PCI devices" vmFw.microvm.qemu.extraArgs [
    "-netdev"
    "stream,id=cell-link,addr.type=unix,addr.path=link.sock,server=on"
    "-device"
    "virtio-net-device,netdev=cell-link,mac=02:ce:11:00:00:01"
  ])
  (eq "vm: the agent connects (and reconnects); PCI once a share exists" vmAg.microvm.qemu.extraArgs [
    "-netdev"
    "stream,id=cell-link,addr.type=unix,addr.path=link.sock,server=off,reconnect-ms=1000"
    "-device"
    "virtio-net-pci,netdev=cell-link,mac=02:ce:11:00:00:02"
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
      inherit (vmFw.cell.vm.spec) version role system linkMac uplinkMac volumes shares cmdline vcpu mem;
      kernel = baseNameOf vmFw.cell.vm.spec.kernel;
    }
    {
      version = 1;
      role = "firewall";
      system = "x86_64-linux";
      linkMac = "02:ce:11:00:00:01";
      uplinkMac = vmFw.cell.firewall.uplinkMac;
      volumes = [ ];
      shares = [ ];
      cmdline = [ "init=/nix/store/00000000000000000000000000000000-nixos-system/init" ];
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
  (eq "agent: claude-code is the only unfree package allowed, and only when chosen" [
    (ag.nixpkgs.config ? allowUnfreePredicate)
    ((agent [{ cell.agent.harnesses = [ "claude" ]; }]).nixpkgs.config.allowUnfreePredicate { name = "claude-code-2.0.0"; pname = "claude-code"; })
    ((agent [{ cell.agent.harnesses = [ "claude" ]; }]).nixpkgs.config.allowUnfreePredicate { name = "other-1.0"; pname = "other"; })
  ] [
    false
    true
    false
  ])
  (eq "agent: the workspace is mounted, the home directory never"
    {
      inherit (ag.fileSystems."/workspace") device fsType;
      mounts = lib.attrNames ag.fileSystems;
    }
    {
      device = "workspace";
      fsType = "9p";
      mounts = [ "/workspace" ];
    })
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
]
