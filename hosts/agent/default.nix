# The default cell's agent VM: every harness nixpkgs has, the project
# directory as /workspace.
{ pkgs, ... }:
{
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
