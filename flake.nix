{
  description = "cell: a coding agent with root in a disposable VM, behind a firewall VM that enforces a typed allowlist";

  # Every input is pinned to an exact revision, so the first `flake.lock`
  # anyone creates locks the same sources (README: "Pinned inputs" says how to
  # bump them). nixpkgs is the nixos-unstable revision microvm.nix's own lock
  # was tested with; spectrum is microvm.nix's input, pinned here (it is a git
  # input, fetched over git, and would otherwise float to its newest commit).
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/643809054d65fdd466a63e3155b8c498cb483c04";
    microvm = {
      url = "github:microvm-nix/microvm.nix/71beea0076cd46dafcee97a5a2e7d00cbba5bd2f";
      inputs.nixpkgs.follows = "nixpkgs";
      inputs.spectrum.follows = "spectrum";
    };
    spectrum = {
      url = "git+https://spectrum-os.org/git/spectrum?rev=a7762d6f54b40560dd5255ce902e6e6a5d980fe9";
      flake = false;
    };
  };

  outputs =
    { self
    , nixpkgs
    , microvm
    , ...
    }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "aarch64-darwin"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The default cell (hosts/): what `nix run .#cell` boots when the user
      # has no project cell of their own.
      defaultCell =
        system: hostSystem:
        self.lib.mkCell {
          inherit system hostSystem;
          modules = [ ./hosts/policy.nix ];
          firewallModules = [ ./hosts/firewall ];
          agentModules = [ ./hosts/agent ];
        };
    in
    {
      # The Rust binaries, built once from rust/ (see pkgs/default.nix), per
      # system only what builds there: cell, cell-proxy, cell-lab and
      # cell-workspace on Linux; cell alone on macOS.
      packages = forAllSystems (
        pkgs:
        let
          cell = pkgs.callPackages ./pkgs { };
        in
        cell // { default = cell.cell; }
      );

      # `nix run .#cell`: the host CLI.
      apps = forAllSystems (
        pkgs:
        let
          app = {
            type = "app";
            program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.cell;
            meta.description = "cell host CLI: boot the cell and open a shell in the agent VM";
          };
        in
        {
          cell = app;
          default = app;
        }
      );

      nixosModules = {
        # The firewall VM: cell-proxy on the agent link, the policy installed and checked.
        firewall =
          { lib, ... }:
          {
            imports = [ ./modules/firewall ];
            cell.firewall.enable = lib.mkDefault true;
          };
        # The agent VM: one interface, the cell CA trusted at runtime, harnesses.
        agent =
          { lib, ... }:
          {
            imports = [ ./modules/agent ];
            cell.agent.enable = lib.mkDefault true;
          };
        # The microvm.nix wiring (link, uplink, volumes); lib.mkCell adds it.
        vm = ./modules/vm;
        # Every option, nothing enabled: set cell.firewall.enable or cell.agent.enable.
        default = {
          imports = [
            ./modules/firewall
            ./modules/agent
          ];
        };
      };

      lib = import ./lib // {
        mkCell = import ./lib/cell.nix {
          inherit nixpkgs microvm;
          inherit (self) nixosModules;
        };
      };

      nixosConfigurations = {
        cell-firewall = (defaultCell "x86_64-linux" "x86_64-linux").firewall;
        cell-agent = (defaultCell "x86_64-linux" "x86_64-linux").agent;
        cell-firewall-aarch64 = (defaultCell "aarch64-linux" "aarch64-linux").firewall;
        cell-agent-aarch64 = (defaultCell "aarch64-linux" "aarch64-linux").agent;
      };

      # The default cell per host system: `cell` builds `cellConfigurations.<host>.vms`
      # of the flake it runs in (this one when the project has none of its own).
      # On a Mac the guests are aarch64-linux, run by vfkit.
      cellConfigurations = lib.genAttrs systems (
        hostSystem:
        defaultCell (if lib.hasSuffix "-darwin" hostSystem then "aarch64-linux" else hostSystem) hostSystem
      );

      checks = forAllSystems (
        pkgs:
        import ./checks {
          inherit pkgs self;
        }
      );

      templates.default = {
        path = ./templates/default;
        description = "A project cell: your allowlist, your harness, this project as an input";
        welcomeText = ''
          # A new cell
          Edit `flake.nix` (the allowlist and harness are commented line by
          line; README.md explains each), then start it with `nix run`.
        '';
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          # The Rust build's toolchain (the whole workspace on Linux, the CLI on macOS).
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.cell.unwrapped ];
          packages = [
            pkgs.cargo-nextest
            pkgs.clippy
            pkgs.rustfmt
            pkgs.nixpkgs-fmt
            pkgs.deadnix
          ]
          ++ lib.optionals pkgs.stdenv.hostPlatform.isLinux [
            pkgs.iproute2
            pkgs.nftables
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
