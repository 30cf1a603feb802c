# SSH to an allowed git host is spliced through the firewall; SSH to a host
# not listed (or on another port) fails.
{ ... }:
{
  policy.cell.policy.tcp."git.allowed.test".ports = [ 22 ];
  testScript = ''
    internet.wait_for_unit("sshd.service")
    out = agent.succeed("ssh-keyscan -T 10 -t ed25519 git.allowed.test")
    assert "ssh-ed25519" in out, out
    internet.succeed("journalctl -u sshd | grep -i 'Connection from\\|kex_exchange\\|banner exchange'")

    agent.fail("ssh-keyscan -T 5 denied.test | grep ssh-")
    agent.fail("nc -z -w 5 git.allowed.test 2222")
    agent.fail("nc -z -w 5 192.168.1.3 22")
  '';
}
