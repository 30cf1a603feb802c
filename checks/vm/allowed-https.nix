# An allowed HTTPS host works from the agent, through the cell CA the agent
# fetched at boot; the same request to a host not listed does not.
{ ... }:
{
  policy.cell.policy.https."api.allowed.test" = { };
  testScript = ''
    out = agent.succeed("curl -sS --max-time 10 https://api.allowed.test/v1/ok")
    assert "hello from api.allowed.test GET /v1/ok" in out, out
    # The certificate the agent saw was minted by the cell CA, not the internet's.
    issuer = agent.succeed("echo | openssl s_client -connect api.allowed.test:443 -servername api.allowed.test 2>/dev/null | openssl x509 -noout -issuer")
    assert "cell" in issuer.lower(), issuer
    internet.succeed("grep -F '/v1/ok' /var/log/nginx/access.log")

    agent.fail("curl -sS --max-time 10 https://denied.test/")
    nothing_reached_internet("denied host", "denied.test")
  '';
  agent =
    { pkgs, ... }:
    {
      cell.agent.extraPackages = [ pkgs.openssl ];
    };
}
