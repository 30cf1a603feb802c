# A host outside the allowlist: its name does not resolve; asked for by
# name through an allowed connection (Host header, explicit proxy) it gets
# the 403 with the reason and the fix. Nothing reaches the internet.
{ ... }:
{
  policy.cell.policy.https."api.allowed.test" = { };
  testScript = ''
    # Not in the allowlist: no address, with the reason in the EDE text.
    out = agent.succeed("dig +time=2 +tries=1 denied.test A")
    assert "NXDOMAIN" in out, out

    # Through the explicit proxy: a 403 naming what was denied and how to allow it.
    code = agent.succeed("curl -sS --max-time 10 -o /dev/null -w '%{http_connect}' -x http://10.89.0.1:3128 https://denied.test/ 2>/dev/null || true")
    assert code.strip() == "403", code
    head = agent.succeed("curl -v --max-time 10 -o /dev/null -x http://10.89.0.1:3128 https://denied.test/ 2>&1 || true")
    assert "x-cell-deny-reason" in head.lower() and "not in the allowlist" in head, head

    # The allowed host still works; only it reached the internet.
    agent.succeed("curl -sS --max-time 10 https://api.allowed.test/")
    nothing_reached_internet("denied host", "denied.test")
  '';
}
