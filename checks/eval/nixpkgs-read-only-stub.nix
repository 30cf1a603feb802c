# The nixpkgs.* options as nixos/modules/misc/nixpkgs/read-only.nix declares
# them: what pkgs.testers.runNixOSTest evaluates every node with (it sets
# node.pkgs). nixpkgs.config and nixpkgs.overlays are `types.unique`: the
# module's own definition (from pkgs) is the only one allowed, so any other
# module that defines them, even to `{ }`, fails to evaluate.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nixpkgs;
in
{
  options.nixpkgs = {
    pkgs = mkOption {
      type = types.pkgs;
      description = "The pkgs module argument.";
    };
    config = mkOption {
      internal = true;
      type = types.unique { message = "nixpkgs.config is set to read-only"; } types.anything;
      description = "The config `pkgs` was made with.";
    };
    overlays = mkOption {
      internal = true;
      type = types.unique { message = "nixpkgs.overlays is set to read-only"; } types.anything;
      description = "The overlays `pkgs` was made with.";
    };
  };
  config = {
    # Forcing config and overlays first finds the mistaken definitions.
    _module.args.pkgs = builtins.seq cfg.config (builtins.seq cfg.overlays cfg.pkgs.__splicedPackages);
    nixpkgs.config = cfg.pkgs.config;
    nixpkgs.overlays = cfg.pkgs.overlays;
  };
}
