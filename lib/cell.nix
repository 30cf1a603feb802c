# lib.mkCell: a whole cell (firewall VM + agent VM + one policy) in a few
# lines. Needs nixpkgs and microvm.nix, so it is built by the flake:
#
#   cell.lib.mkCell {
#     modules = [ { cell.policy.https."api.anthropic.com" = { }; } ];
#     agentModules = [
#       ({ lib, ... }: {
#         cell.agent.harnesses = [ "claude" ];
#         # claude-code is unfree; the modules never set nixpkgs.config.
#         nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "claude-code";
#       })
#     ];
#   }
#
# `modules` go to both VMs (they share the `cell.*` namespace: the policy,
# secrets and link); `firewallModules` / `agentModules` to one each.
# Returns { firewall; agent; vms; runners; }: the two nixosSystems; `vms`,
# what the host CLI builds and boots (firewall.json and agent.json, the VM
# specs it turns into qemu or vfkit command lines, policy.json, the Nix
# baseline `cell policy` and `cell allow` validate against, and secrets.json,
# the secrets document `cell` reads the sources of); and `runners`,
# both microvm.nix runners, to start the VMs without the CLI.
{ nixpkgs
, microvm
, nixosModules
,
}:
{
  # The guests' system; aarch64-linux guests on an Apple Silicon host.
  system ? "x86_64-linux"
, # Where the VMs run: decides the hypervisor (qemu on Linux, vfkit on macOS).
  hostSystem ? system
, modules ? [ ]
, firewallModules ? [ ]
, agentModules ? [ ]
, specialArgs ? { }
,
}:
let
  inherit (nixpkgs) lib;
  hostPkgs = nixpkgs.legacyPackages.${hostSystem};

  vm =
    role: roleModules:
    lib.nixosSystem {
      inherit specialArgs;
      modules = [
        microvm.nixosModules.microvm
        nixosModules.${role}
        nixosModules.vm
        {
          nixpkgs.hostPlatform = lib.mkDefault system;
          networking.hostName = lib.mkDefault "cell-${role}";
          microvm.hypervisor = lib.mkDefault (if hostPkgs.stdenv.hostPlatform.isDarwin then "vfkit" else "qemu");
          microvm.vmHostPackages = lib.mkDefault hostPkgs;
          # Disposable VMs: only the agent's /var volume keeps state.
          system.stateVersion = lib.mkDefault lib.trivial.release;
        }
      ]
      ++ modules
      ++ roleModules;
    };

  firewall = vm "firewall" firewallModules;
  agent = vm "agent" agentModules;
in
{
  inherit firewall agent;
  vms = hostPkgs.linkFarm "cell-vms" [
    {
      name = "firewall.json";
      path = hostPkgs.writeText "cell-vm-firewall.json" (builtins.toJSON firewall.config.cell.vm.spec);
    }
    {
      name = "agent.json";
      path = hostPkgs.writeText "cell-vm-agent.json" (builtins.toJSON agent.config.cell.vm.spec);
    }
    {
      name = "policy.json";
      path = firewall.config.cell.firewall.checkedPolicy;
    }
    # Names, scopes and sources, never a value: what the host CLI reads
    # before it pushes the values to the firewall daemon's memory.
    {
      name = "secrets.json";
      path = firewall.config.environment.etc."cell/secrets.json".source;
    }
  ];
  runners = hostPkgs.linkFarm "cell-runners" [
    {
      name = "firewall";
      path = firewall.config.microvm.declaredRunner;
    }
    {
      name = "agent";
      path = agent.config.microvm.declaredRunner;
    }
  ];
}
