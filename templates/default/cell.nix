# What this project's agent may reach, and what it runs. Both VMs read this
# file: the firewall compiles `cell.policy` into its DNS answers, nftables
# rules and proxy rules; the agent VM installs the harness. Anything not
# listed here is denied. Change it live with `cell allow …` (no rebuild), or
# here followed by `cell provision`.
{ lib, pkgs, ... }:
{
  cell.policy = {
    # The model provider the harness talks to.
    https."api.anthropic.com".comment = "model provider";

    # Git over HTTPS and SSH. A wildcard never includes the bare domain
    # unless it says so (includeApex).
    https."github.com".comment = "git over HTTPS";
    https."*.githubusercontent.com".comment = "raw files and release assets";
    tcp."github.com" = {
      ports = [ 22 ];
      comment = "git over SSH";
    };

    # A package registry, read-only: only GET and HEAD get through.
    https."proxy.golang.org" = {
      methods = [
        "GET"
        "HEAD"
      ];
      comment = "Go module proxy";
    };

    # Even if a wildcard above allowed it, never this one.
    deny = [ "gist.github.com" ];
  };

  # The provider key: read on your machine when the cell starts, from your
  # OS keychain (store it once with
  #   security add-generic-password -s anthropic-api-key -a cell -w        (macOS)
  #   secret-tool store --label='cell anthropic-api-key' service anthropic-api-key username cell  (Linux)
  # or use source.env / source.command / source.file instead), and pushed
  # into the firewall daemon's memory only. The agent VM only ever sees the
  # placeholder `cell-placeholder-anthropic` in ANTHROPIC_API_KEY; the
  # firewall swaps in the value in request headers to api.anthropic.com, and
  # nowhere else. `cell secrets` shows whether it is loaded.
  cell.secrets.anthropic = {
    env = "ANTHROPIC_API_KEY";
    hosts = [ "api.anthropic.com" ];
    source.keychain = "anthropic-api-key";
  };

  # claude-code (the "claude" harness below) is unfree. cell never changes
  # your nixpkgs config; this allows that one package and nothing else.
  # Drop the line if you drop "claude".
  nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";

  # The agent VM. The firewall VM needs nothing more.
  cell.agent = {
    # Which harnesses to install: any of "pi" "claude" "codex" "opencode".
    harnesses = [ "claude" ];
    # This project directory appears as /workspace inside the VM; nothing
    # else of your machine does.
    workspace.enable = true;
    # Tools the agent may use.
    extraPackages = [
      pkgs.go
      pkgs.gnumake
    ];
  };
}
