# Checks on the agent configuration, each with the fix in its message.
{ config
, lib
, pkgs
, ...
}:
let
  cfg = config.cell.agent;
  missing = lib.filter (name: !(pkgs ? ${cfg.harnessPackages.${name}})) cfg.harnesses;
in
{
  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = missing == [ ];
        message = "cell.agent.harnesses: your nixpkgs has no package for ${lib.concatMapStringsSep ", " (n: "${n} (pkgs.${cfg.harnessPackages.${n}})") missing}; use a newer nixpkgs, drop it from the list, or add the package to cell.agent.extraPackages yourself";
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
