# The cell Nix library: pure functions, each file tested under lib/tests.
{
  policy = import ./policy.nix;
}
