# lib.mkCell: a whole cell (firewall VM + agent VM + one policy) in a few
# lines. Needs nixpkgs and microvm.nix, so it is built by the flake:
#
#   cell.lib.mkCell {
#     modules = [ { cell.policy.https."api.anthropic.com" = { }; } ];
#     agentModules = [ { cell.agent.harnesses = [ "claude" ]; } ];
#   }
#
# `modules` go to both VMs (they share the `cell.*` namespace: the policy,
# secrets and link); `firewallModules` / `agentModules` to one each.
# Returns { firewall; agent; runners; }: the two nixosSystems and a package
# holding both microvm.nix runners (what the host CLI starts).
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
