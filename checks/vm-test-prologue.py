# The start of every VM test script (checks/vm-test.nix prepends it to the
# scenario's testScript): wait for the three nodes, and the helper every
# scenario uses to prove the fake internet saw nothing.
start_all()
internet.wait_for_unit("nginx.service")
internet.wait_for_unit("dnsmasq.service")
firewall.wait_for_unit("cell-proxy.service")
agent.wait_for_unit("cell-ca.service")

def nothing_reached_internet(what, pattern):
    """The fake internet's logs hold no trace of `pattern`."""
    print(f"{what}: checking the internet saw no {pattern!r}")
    internet.fail(f"journalctl -u dnsmasq -u nginx -u sshd | grep -F {pattern!r}")
    internet.fail(f"grep -F {pattern!r} /var/log/nginx/access.log /tmp/udp.log 2>/dev/null")

