# The default cell's firewall VM: the module's defaults as they are.
{
  cell.firewall.enable = true;
}
