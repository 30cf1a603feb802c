# QUIC (UDP 443) and connections to an address instead of a name fail fast;
# the internet's UDP listener and web server receive nothing. IPv6 is no
# bypass.
{ ... }:
{
  policy.cell.policy.https."api.allowed.test" = { };
  testScript = ''
    import time
    start = time.monotonic()
    # QUIC to an allowed name's (synthetic) address and to the real one:
    # UDP is rejected at the firewall, with an ICMP error the agent sees at once.
    synthetic = agent.succeed("dig +short api.allowed.test A").strip()
    for target in (synthetic, "192.168.1.3"):
        agent.execute(f"echo quic-probe | nc -u -w 1 {target} 443")
    rc, out = agent.execute("nc -u -z -w 2 192.168.1.3 443")
    assert rc != 0, out
    # Direct IP, HTTPS and plain TCP, IPv4 and IPv6.
    agent.fail("curl -sS --max-time 5 -k https://192.168.1.3/")
    agent.fail("curl -sS --max-time 5 -k 'https://[2001:db8:1::3]/'")
    agent.fail("ping -c 1 -W 2 192.168.1.3")
    assert time.monotonic() - start < 60, "denials must not hang"
    nothing_reached_internet("QUIC", "quic-probe")
    internet.fail("test -s /tmp/udp.log")
    internet.fail("test -s /var/log/nginx/access.log")

    # The allowed path over TCP works.
    agent.succeed("curl -sS --max-time 10 https://api.allowed.test/")
  '';
}
