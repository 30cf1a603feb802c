# A host added to the live overlay is reachable within a second, with no
# restart of cell-proxy and no reboot; removing it takes effect as fast.
{ ... }:
{
  policy.cell.policy.https."api.allowed.test" = { };
  testScript = ''
    pid = firewall.succeed("systemctl show -P MainPID cell-proxy").strip()
    agent.fail("curl -sS --max-time 5 https://late.test/")

    firewall.succeed(
        "printf '%s' '{\"version\":1,\"https\":[{\"host\":\"late.test\"}]}' > /var/lib/cell-proxy/overlay.json.new"
        " && chown cell-proxy: /var/lib/cell-proxy/overlay.json.new"
        " && mv /var/lib/cell-proxy/overlay.json.new /var/lib/cell-proxy/overlay.json"
    )
    agent.wait_until_succeeds("curl -sS --max-time 5 https://late.test/ | grep 'hello from late.test'", timeout=10)

    # Invalid input keeps the last good policy.
    firewall.succeed("printf 'not json' > /var/lib/cell-proxy/overlay.json")
    agent.succeed("sleep 1; curl -sS --max-time 5 https://late.test/")

    firewall.succeed("rm /var/lib/cell-proxy/overlay.json")
    agent.wait_until_fails("curl -sS --max-time 5 https://late.test/", timeout=10)
    agent.succeed("curl -sS --max-time 5 https://api.allowed.test/")
    assert firewall.succeed("systemctl show -P MainPID cell-proxy").strip() == pid, "cell-proxy restarted"
  '';
}
