# Tests for lib/secrets.nix. Run: nix-instantiate --eval --strict lib/tests/secrets.nix
# Evaluates to { cases = N; failures = [ ... ]; } — failures must be empty.
let
  secrets = import ../secrets.nix;
  inherit (secrets) toDocument agentEnvironment;
  inherit (import ./harness.nix) eq refuses run;

  anthropic = {
    env = "ANTHROPIC_API_KEY";
    hosts = [ "api.anthropic.com" ];
    source.keychain = "anthropic-api-key";
  };
in
run [
  (eq "no secrets" (toDocument { }) {
    version = 1;
    secrets = [ ];
  })
  (eq "a keychain secret compiles with its placeholder and scope" (toDocument { inherit anthropic; })
    {
      version = 1;
      secrets = [
        {
          name = "anthropic";
          env = "ANTHROPIC_API_KEY";
          placeholder = "cell-placeholder-anthropic";
          hosts = [ "api.anthropic.com" ];
          source.keychain = "anthropic-api-key";
        }
      ];
    }
  )
  (eq "null source kinds are dropped"
    (
      (toDocument {
        gh = {
          hosts = [ "api.github.com" ];
          source = {
            command = [
              "gh"
              "auth"
              "token"
            ];
            env = null;
            keychain = null;
            file = null;
          };
        };
      }).secrets
    ) [
    {
      name = "gh";
      env = null;
      placeholder = "cell-placeholder-gh";
      hosts = [ "api.github.com" ];
      source.command = [
        "gh"
        "auth"
        "token"
      ];
    }
  ])
  (eq "the agent sees only placeholders"
    (agentEnvironment {
      inherit anthropic;
      gh = {
        env = null;
        hosts = [ "api.github.com" ];
        source.env = "GH_TOKEN";
      };
    })
    { ANTHROPIC_API_KEY = "cell-placeholder-anthropic"; })
  (refuses "two sources" (toDocument {
    x = {
      hosts = [ "a.example" ];
      source = {
        env = "X";
        keychain = "x";
      };
    };
  }))
  (refuses "no source" (toDocument {
    x = {
      hosts = [ "a.example" ];
      source = { };
    };
  }))
  (refuses "a file in the Nix store" (toDocument {
    x = {
      hosts = [ "a.example" ];
      source.file = "${builtins.storeDir}/abc-key";
    };
  }))
  (refuses "a relative file" (toDocument {
    x = {
      hosts = [ "a.example" ];
      source.file = "secrets/key";
    };
  }))
  (eq "a file outside the store is fine"
    (toDocument {
      x = {
        hosts = [ "a.example" ];
        source.file = "/run/user/1000/key";
      };
    }).secrets
    [
      {
        name = "x";
        env = null;
        placeholder = "cell-placeholder-x";
        hosts = [ "a.example" ];
        source.file = "/run/user/1000/key";
      }
    ]
  )
  (refuses "no hosts" (toDocument {
    x = {
      hosts = [ ];
      source.env = "X";
    };
  }))
  (refuses "an empty command" (toDocument {
    x = {
      hosts = [ "a.example" ];
      source.command = [ ];
    };
  }))
  (refuses "a name with a space" (toDocument {
    "my key" = {
      hosts = [ "a.example" ];
      source.env = "X";
    };
  }))
  (eq "store path detection"
    (map secrets.isStorePath [
      "${builtins.storeDir}/x"
      builtins.storeDir
      "/nix/storefront/x"
      "/home/me/key"
    ]) [
    true
    true
    false
    false
  ])
]
