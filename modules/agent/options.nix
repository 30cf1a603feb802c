# Options of the agent VM (`cell.agent.*`).
{ lib, ... }:
let
  inherit (lib) mkOption types;

  # Harness name → nixpkgs attribute. Names not in the user's nixpkgs are
  # reported by ./asserts.nix with the fix.
  harnessAttrs = {
    pi = "pi-coding-agent";
    claude = "claude-code";
    codex = "codex";
    opencode = "opencode";
  };
in
{
  options.cell.agent = {
    enable = lib.mkEnableOption "the cell agent VM: root for the agent, one network interface, the firewall as its only way out";

    harnesses = mkOption {
      type = types.listOf (types.enum (builtins.attrNames harnessAttrs));
      default = [ ];
      example = [
        "claude"
        "codex"
      ];
      description = ''
        Coding-agent harnesses to install: `pi` (pi-coding-agent), `claude`
        (claude-code), `codex`, `opencode`. Each needs its package in your
        nixpkgs. claude-code is unfree and this module never changes your
        nixpkgs config: allow it yourself, for that package only, with
        `nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";`
        (or the same `config` where you import nixpkgs when you bring your
        own pkgs); an assertion says so when it is missing.
      '';
    };

    harnessPackages = mkOption {
      type = types.attrsOf types.str;
      default = harnessAttrs;
      readOnly = true;
      description = "Which nixpkgs attribute each harness name installs. Read-only.";
    };

    harnessBinaries = mkOption {
      type = types.attrsOf types.str;
      default = {
        pi = "pi";
        claude = "claude";
        codex = "codex";
        opencode = "opencode";
      };
      readOnly = true;
      description = "The command each harness installs (what `cell agent NAME` runs). Read-only.";
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = lib.literalExpression "[ pkgs.nodejs pkgs.python3 ]";
      description = "More tools for the agent.";
    };

    user = mkOption {
      type = types.strMatching "[a-z_][a-z0-9_-]*";
      default = "agent";
      description = "The login the agent runs as; it has password-less sudo (root in the VM is the point).";
    };

    ssh.authorizedKeys = mkOption {
      type = types.listOf types.singleLineStr;
      default = [ ];
      description = "Public keys allowed to log in as `cell.agent.user` (the host CLI's per-instance key; it reaches the agent through the firewall, never over a host route).";
    };

    ssh.hostKeyPath = mkOption {
      type = types.str;
      default = "/var/lib/cell/ssh_host_ed25519_key";
      description = "The agent VM's SSH host key, generated on first boot and kept on the VM's persistent volume.";
    };

    ssh.userKeyPath = mkOption {
      type = types.str;
      default = "/var/lib/cell-agent/id_ed25519";
      description = "The agent user's own SSH key (git over SSH), generated on first boot and kept on the persistent volume; `cell pubkey` prints its public half to add as a deploy key.";
    };

    workspace = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Mount a host directory (the project) read-write into the agent VM. Only this directory is shared; never the home directory. The share and its mount are wired by the VM module (`nixosModules.vm`, which lib.mkCell adds).";
      };
      mountPoint = mkOption {
        type = types.str;
        default = "/workspace";
        description = "Where the workspace appears in the agent VM.";
      };
      tag = mkOption {
        type = types.strMatching "[a-zA-Z0-9_-]{1,31}";
        default = "workspace";
        description = "The share's tag (the hypervisor side names the host directory).";
      };
    };

    caUrl = mkOption {
      type = types.str;
      readOnly = true;
      description = "Where the agent fetches the cell CA certificate at boot (the firewall's explicit port). Read-only.";
    };

    caBundle = mkOption {
      type = types.str;
      default = "/run/cell/ca-bundle.crt";
      readOnly = true;
      description = "The runtime trust bundle: the system roots plus the cell CA. `/etc/ssl/certs/ca-certificates.crt` and the usual environment variables point here. Read-only.";
    };
  };

}
