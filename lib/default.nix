# The cell Nix library: pure functions (builtins only), each file tested
# under lib/tests. `mkCell` needs nixpkgs and lives in the flake (lib/cell.nix).
{
  policy = import ./policy.nix;
  secrets = import ./secrets.nix;
}
