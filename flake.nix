{
  description = "cell: a coding agent with root in a disposable VM, behind a firewall VM that enforces a typed allowlist";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # The Rust binaries, built once from rust/ (see pkgs/default.nix).
      packages = forAllSystems (
        pkgs:
        let
          cell = pkgs.callPackage ./pkgs { };
        in
        {
          inherit (cell) cell-workspace cell-proxy cell-lab;
          default = cell.cell-proxy;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.cell-workspace ];
          packages = [
            pkgs.cargo-nextest
            pkgs.clippy
            pkgs.rustfmt
          ]
          ++ pkgs.lib.optionals pkgs.stdenv.hostPlatform.isLinux [
            pkgs.iproute2
            pkgs.nftables
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
