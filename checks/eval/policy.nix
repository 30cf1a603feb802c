# Module evaluation test for modules/options.nix. Needs a nixpkgs `lib`:
#   nix-instantiate --eval --strict --json checks/eval/policy.nix --arg lib 'import /path/to/nixpkgs.lib/lib'
# Evaluates to { document = ...; errors = { name = "message" | null; }; }.
{ lib }:
let
  eval =
    modules:
    (lib.evalModules {
      modules = [
        ../../modules/options.nix
        # nixos/modules/misc/assertions.nix: every NixOS configuration has
        # them, and the renamed cell.* options write to them.
        {
          options.assertions = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
          options.warnings = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
        }
      ] ++ modules;
    }).config.cell.policy.document;

  # The error message evaluating `modules` produces, or null when it evaluates.
  errorOf =
    modules:
    let
      r = builtins.tryEval (builtins.deepSeq (eval modules) true);
    in
    if r.success then null else "refused";
in
{
  # Two modules adding to the same host merge; a third adds another host.
  document = eval [
    {
      cell.policy.https."api.anthropic.com" = { };
      cell.policy.https."*.github.com".includeApex = true;
      cell.policy.tcp."github.com".ports = [ 22 ];
      cell.policy.dns.forward = [ "*.corp.example" ];
      cell.policy.limits.proxyConnections = 512;
    }
    {
      cell.policy.https."proxy.golang.org".methods = [ "GET" ];
      cell.policy.https."proxy.golang.org".comment = "package registry";
      cell.policy.deny = [ "gist.github.com" ];
    }
    {
      cell.policy.https."proxy.golang.org".methods = [ "HEAD" ];
    }
  ];

  # Values the types (or the compiler) refuse.
  errors = {
    portZero = errorOf [{ cell.policy.tcp."db.example".ports = [ 0 ]; }];
    noPorts = errorOf [{ cell.policy.tcp."db.example".ports = [ ]; }];
    badMethod = errorOf [{ cell.policy.https."a.example".methods = [ "G ET" ]; }];
    relativePath = errorOf [{ cell.policy.https."a.example".paths = [ "v1/**" ]; }];
    badCidr = errorOf [
      {
        cell.policy.cidr = [
          {
            cidr = "10.0.0.0";
            protocol = "tcp";
            ports = [ 5432 ];
          }
        ];
      }
    ];
    bareStar = errorOf [{ cell.policy.https."*" = { }; }];
    passthroughWithPaths = errorOf [
      {
        cell.policy.https."pinned.example" = {
          passthrough = true;
          paths = [ "/x" ];
        };
      }
    ];
    unknownOption = errorOf [{ cell.policy.https."a.example".method = [ "GET" ]; }];
    fine = errorOf [{ cell.policy.https."a.example" = { }; }];
  };
}
