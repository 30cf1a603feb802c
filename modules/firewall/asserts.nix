# Checks on the firewall configuration, each with the fix in its message.
{ config, lib, ... }:
let
  cfg = config.cell.firewall;
  ports = [
    cfg.ports.dns
    cfg.ports.transparent
    config.cell.link.proxyPort
  ];
in
{
  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.length (lib.unique ports) == lib.length ports;
        message = "cell.firewall.ports: cell.firewall.ports.dns, cell.firewall.ports.transparent and cell.link.proxyPort must be three different ports (got ${lib.concatMapStringsSep ", " toString ports})";
      }
      {
        assertion = cfg.agentInterface != cfg.uplinkInterface;
        message = "cell.firewall.agentInterface and uplinkInterface are both \"${cfg.agentInterface}\"; give the agent link its own name";
      }
      {
        assertion = config.cell.link.firewallAddress != config.cell.link.agentAddress;
        message = "cell.link.firewallAddress and agentAddress are both ${config.cell.link.firewallAddress}; give each VM its own address";
      }
      {
        assertion = !config.cell.agent.enable;
        message = "cell.firewall.enable and cell.agent.enable are both set in one configuration; the agent and the firewall are separate VMs (lib.mkCell builds both)";
      }
    ];
  };
}
