# The nixpkgs.* options as nixos/modules/misc/nixpkgs.nix declares them:
# what lib.nixosSystem (and so lib.mkCell) evaluates with. `pkgs` is made
# from nixpkgs.config and nixpkgs.hostPlatform (here by ./pkgs-stub.nix
# instead of importing nixpkgs), unless nixpkgs.pkgs is given, and then
# nixpkgs.config must stay empty (the same assertion as nixpkgs).
{ without ? [ ] }:
{ config, options, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixpkgs;
  opt = options.nixpkgs;

  # nixpkgs.nix `configType`: attribute sets (or functions of { pkgs, lib })
  # merged key by key; lists concatenate, other values: the first wins.
  isConfig = x: builtins.isAttrs x || lib.isFunction x;
  resolve = c: if lib.isFunction c then c { inherit lib; pkgs = config._module.args.pkgs; } else c;
  configType = lib.mkOptionType {
    name = "nixpkgs-config";
    description = "nixpkgs config";
    check = isConfig;
    merge = _: defs:
      lib.zipAttrsWith (_: values: if lib.isList (lib.head values) then lib.concatLists values else lib.head values)
        (map (d: resolve d.value) defs);
  };
in
{
  options.nixpkgs = {
    pkgs = mkOption {
      type = types.pkgs;
      description = "Given instead of being made from nixpkgs.config.";
    };
    config = mkOption {
      type = configType;
      default = { };
      description = "The nixpkgs config `pkgs` is made with.";
    };
    hostPlatform = mkOption {
      type = types.either types.str types.attrs;
      apply = lib.systems.elaborate;
      description = "The platform the configuration runs on.";
    };
  };

  config = {
    _module.args.pkgs = lib.mkOverride lib.modules.defaultOverridePriority (
      if opt.pkgs.isDefined then
        cfg.pkgs
      else
        import ./pkgs-stub.nix {
          inherit without;
          inherit (cfg) config;
          inherit (cfg.hostPlatform) system;
        }
    );
    assertions = [
      {
        assertion = opt.pkgs.isDefined -> cfg.config == { };
        message = "Your system configures nixpkgs with an externally created instance. `nixpkgs.config` options should be passed when creating the instance instead.";
      }
    ];
  };
}
