# The agent VM holds no secret: its configuration names only placeholders;
# the value, present where the secret's source is, appears nowhere in the
# agent's environment, files or store, and not in the firewall's store.
{ ... }:
let
  value = "sk-test-0123456789abcdef-not-a-real-key";
in
{
  policy.cell = {
    policy.https."api.allowed.test" = { };
    secrets.example = {
      env = "EXAMPLE_API_KEY";
      hosts = [ "api.allowed.test" ];
      source.env = "EXAMPLE_API_KEY";
    };
  };
  # The value lives only on the "host" side: here, the internet node stands in.
  testScript = ''
    value = "${value}"
    internet.succeed(f"echo {value} > /root/host-secret")
    env = agent.succeed("su - agent -c 'echo $EXAMPLE_API_KEY'").strip()
    assert env == "cell-placeholder-example", env
    agent.fail(f"grep -rqsF {value} /etc /run /var /home /root")
    agent.fail(f"grep -rqsF {value} $(nix-store -qR /run/current-system)")
    agent.fail(f"grep -aqF {value} /proc/*/environ")
    firewall.fail(f"grep -rqsF {value} $(nix-store -qR /run/current-system) /etc")
    # The firewall knows the secret's name, scope and source, not its value.
    firewall.succeed("grep -F EXAMPLE_API_KEY /etc/cell/secrets.json")
  '';
}
