# Checks on the agent configuration, each with the fix in its message.
{ config
, lib
, pkgs
, ...
}:
let
  cfg = config.cell.agent;
  missing = lib.filter (name: !(pkgs ? ${cfg.harnessPackages.${name}})) cfg.harnesses;

  # A package nixpkgs refuses (unfree and not allowed) throws when its
  # derivation is forced; tryEval turns that into an assertion with the fix.
  refused = lib.filter
    (name: name == "claude" && pkgs ? claude-code && !(builtins.tryEval pkgs.claude-code.drvPath).success)
    cfg.harnesses;
in
{
  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = missing == [ ];
        message = "cell.agent.harnesses: your nixpkgs has no package for ${lib.concatMapStringsSep ", " (n: "${n} (pkgs.${cfg.harnessPackages.${n}})") missing}; use a newer nixpkgs, drop it from the list, or add the package to cell.agent.extraPackages yourself";
      }
      {
        assertion = refused == [ ];
        message = ''
          cell.agent.harnesses: "claude" installs pkgs.claude-code, which is unfree, and your nixpkgs does not allow it. Allow that one package where your pkgs are made:
            - lib.mkCell or any lib.nixosSystem without nixpkgs.pkgs: add the module
                { nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code"; }
            - your own pkgs (nixpkgs.pkgs, pkgs.testers.runNixOSTest's node.pkgs): import nixpkgs with
                config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";
          or drop "claude" from cell.agent.harnesses.'';
      }
      {
        assertion = !config.cell.firewall.enable;
        message = "cell.agent.enable and cell.firewall.enable are both set in one configuration; the agent and the firewall are separate VMs (lib.mkCell builds both)";
      }
      {
        # The agent's only way out is the firewall: no other interface may be configured.
        assertion = lib.all (n: n.matchConfig.Name or "" == "cell0") (lib.attrValues config.systemd.network.networks);
        message = "the agent VM configures a network other than cell0 (${toString (lib.attrNames config.systemd.network.networks)}); the private link must be its only interface";
      }
    ];
  };
}
