# Every lib/ test file. Run: nix-instantiate --eval --strict lib/tests
# Evaluates to { <file> = { cases; failures = [ ]; }; }.
{
  policy = import ./policy.nix;
  secrets = import ./secrets.nix;
}
