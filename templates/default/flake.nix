{
  description = "A project cell: a coding agent in a VM behind a firewall VM";

  # cell itself: the modules, lib.mkCell and the `cell` command.
  inputs.cell.url = "github:cell-sandbox/cell";
  # Use cell's nixpkgs so the binaries come from the same build as its tests.
  inputs.nixpkgs.follows = "cell/nixpkgs";

  outputs =
    { cell, nixpkgs, ... }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems f;
    in
    {
      # The cell: both VMs from one description (./cell.nix). On a Mac the
      # VMs are aarch64-linux guests run by vfkit; on Linux, qemu.
      cellConfigurations = forAllSystems (
        system:
        cell.lib.mkCell {
          system = if nixpkgs.lib.hasSuffix "-darwin" system then "aarch64-linux" else system;
          hostSystem = system;
          modules = [ ./cell.nix ];
        }
      );

      # `nix run`: the cell command, which boots this flake's cell and opens
      # a shell in the agent VM (`nix run . -- agent claude` starts a harness).
      apps = forAllSystems (system: {
        default = cell.apps.${system}.cell;
      });
    };
}
