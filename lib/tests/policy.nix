# Tests for lib/policy.nix. Run: nix-instantiate --eval --strict lib/tests/policy.nix
# Evaluates to { cases = N; failures = [ ... ]; } — failures must be empty.
let
  inherit (import ../policy.nix) toDocument;

  inherit (import ./harness.nix) eq refuses run;

  cases = [
    (eq "empty policy is version 1 with empty lists" (toDocument { }) {
      version = 1;
      https = [ ];
      tcp = [ ];
      cidr = [ ];
      deny = [ ];
    })
    (eq "one https entry is just its host" (toDocument { https."api.example.com" = { }; }).https [
      { host = "api.example.com"; }
    ])
    (eq "the key is the host unless host is set"
      (toDocument {
        https.anthropic = {
          host = "api.anthropic.com";
          comment = "model provider";
        };
      }).https
      [
        {
          host = "api.anthropic.com";
          comment = "model provider";
        }
      ]
    )
    (eq "false flags and null values are left out"
      (toDocument {
        https."a.example" = {
          includeApex = false;
          passthrough = false;
          privateUpstream = false;
          ports = null;
          methods = null;
        };
      }).https
      [{ host = "a.example"; }]
    )
    (eq "rules are carried over"
      (toDocument {
        https."*.github.com" = {
          includeApex = true;
          methods = [ "GET" ];
          paths = [ "/repos/**" ];
          ports = [
            443
            8443
          ];
        };
      }).https
      [
        {
          host = "*.github.com";
          includeApex = true;
          methods = [ "GET" ];
          paths = [ "/repos/**" ];
          ports = [
            443
            8443
          ];
        }
      ]
    )
    (eq "tcp entries" (toDocument { tcp."github.com".ports = [ 22 ]; }).tcp [
      {
        host = "github.com";
        ports = [ 22 ];
      }
    ])
    (eq "privateUpstream is carried over for https and tcp"
      (
        let
          d = toDocument {
            https."intranet.corp.example".privateUpstream = true;
            tcp."db.corp.example" = {
              ports = [ 5432 ];
              privateUpstream = true;
            };
          };
        in
        [
          d.https
          d.tcp
        ]
      )
      [
        [
          {
            host = "intranet.corp.example";
            privateUpstream = true;
          }
        ]
        [
          {
            host = "db.corp.example";
            ports = [ 5432 ];
            privateUpstream = true;
          }
        ]
      ])
    (eq "cidr entries"
      (toDocument {
        cidr = [
          {
            cidr = "192.0.2.0/28";
            protocol = "tcp";
            ports = [ 5432 ];
            comment = null;
          }
        ];
      }).cidr
      [
        {
          cidr = "192.0.2.0/28";
          protocol = "tcp";
          ports = [ 5432 ];
        }
      ]
    )
    (eq "dns settings without nulls; an all-null section disappears"
      (toDocument {
        dns = {
          syntheticPool = null;
          ttl = 30;
          forward = [ "*.corp.example" ];
          upstream = [ "192.0.2.53" ];
        };
        limits = {
          dnsNames = null;
        };
      })
      {
        version = 1;
        https = [ ];
        tcp = [ ];
        cidr = [ ];
        deny = [ ];
        dns = {
          ttl = 30;
          forward = [ "*.corp.example" ];
          upstream = [ "192.0.2.53" ];
        };
      }
    )
    (eq "allowAnyHost makes * acceptable"
      (toDocument {
        https."*" = {
          allowAnyHost = true;
        };
      }).https
      [
        {
          host = "*";
          allowAnyHost = true;
        }
      ]
    )
    (eq "spy is carried over as given, and left out (the daemon's default) when unset"
      (toDocument {
        https."api.anthropic.com".spy = true;
        https."api.openai.com".spy = false;
        https."pypi.org" = { };
      }).https
      [
        {
          host = "api.anthropic.com";
          spy = true;
        }
        {
          host = "api.openai.com";
          spy = false;
        }
        { host = "pypi.org"; }
      ])
    (refuses "spy with passthrough" (toDocument {
      https."pinned.example" = {
        passthrough = true;
        spy = true;
      };
    }))
    (refuses "* without allowAnyHost" (toDocument { https."*" = { }; }))
    (refuses "passthrough with methods" (toDocument {
      https."pinned.example" = {
        passthrough = true;
        methods = [ "GET" ];
      };
    }))
    (refuses "tcp without ports" (toDocument { tcp."db.example" = { }; }))
  ];
in
run cases
