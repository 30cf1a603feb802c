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

  bedrock = {
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

  # A token secret with everything else defaulted, for the refusals.
  token = extra: {
    hosts = [ "a.example" ];
    source.env = "X";
  } // extra;
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
          kind = "token";
          locations = [ "header" ];
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
      kind = "token";
      locations = [ "header" ];
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
        kind = "token";
        locations = [ "header" ];
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
  (eq "locations are compiled as given"
    (map (s: s.locations)
      (toDocument {
        x = token {
          locations = [
            "query"
            "body"
          ];
        };
      }).secrets) [
    [
      "query"
      "body"
    ]
  ])
  (eq "an aws secret compiles with its kind and access key id placeholder"
    (toDocument { inherit bedrock; }).secrets
    [
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
    ]
  )
  (eq "a token secret has no access key id placeholder"
    (map (s: s ? accessKeyIdPlaceholder) (toDocument { inherit anthropic; }).secrets) [ false ])
  (eq "an aws secret gives the agent both AWS variables, placeholders only"
    (agentEnvironment { inherit anthropic bedrock; })
    {
      ANTHROPIC_API_KEY = "cell-placeholder-anthropic";
      AWS_ACCESS_KEY_ID = "cell-placeholder-bedrock.akid";
      AWS_SECRET_ACCESS_KEY = "cell-placeholder-bedrock";
    })
  (refuses "an unknown kind" (toDocument { x = token { kind = "oauth"; }; }))
  (refuses "no locations" (toDocument { x = token { locations = [ ]; }; }))
  (refuses "an unknown location" (toDocument { x = token { locations = [ "cookie" ]; }; }))
  (refuses "an aws secret with env" (toDocument { bedrock = bedrock // { env = "AWS_SECRET_ACCESS_KEY"; }; }))
  (refuses "an aws secret with locations other than the default"
    (toDocument { bedrock = bedrock // { locations = [ "header" "body" ]; }; }))
  (eq "an aws secret with the default locations spelled out is fine"
    (map (s: s.locations) (toDocument { bedrock = bedrock // { locations = [ "header" ]; }; }).secrets)
    [ [ "header" ] ])
  (refuses "two aws secrets" (toDocument {
    inherit bedrock;
    s3 = bedrock // { hosts = [ "s3.amazonaws.com" ]; };
  }))
  (refuses "two aws secrets, in the agent's environment too" (agentEnvironment {
    inherit bedrock;
    s3 = bedrock // { hosts = [ "s3.amazonaws.com" ]; };
  }))
  (refuses "an env name used twice" (toDocument {
    a = token { env = "API_KEY"; };
    b = token { env = "API_KEY"; };
  }))
  (refuses "an env name used twice, in the agent's environment too" (agentEnvironment {
    a = token { env = "API_KEY"; };
    b = token { env = "API_KEY"; };
  }))
  (refuses "a token secret's env clashing with an aws secret's variables" (agentEnvironment {
    inherit bedrock;
    raw = token { env = "AWS_ACCESS_KEY_ID"; };
  }))
  (eq "secrets without env never clash"
    (agentEnvironment {
      a = token { };
      b = token { env = null; };
    })
    { })
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
