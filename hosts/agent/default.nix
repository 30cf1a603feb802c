# The default cell's agent VM: every harness nixpkgs has, the project
# directory as /workspace.
{ lib, pkgs, ... }:
{
  # claude-code is unfree; the default cell allows that one package (the
  # agent module itself never touches nixpkgs.config).
  nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";

  cell.agent = {
    enable = true;
    harnesses = [
      "pi"
      "claude"
      "codex"
      "opencode"
    ];
    workspace.enable = true;
    extraPackages = [
      pkgs.gnumake
      pkgs.ripgrep
      pkgs.jq
    ];
  };
}
