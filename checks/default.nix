# Every check of the flake, per system. `nix flake check` runs them all:
#   lib-tests    lib/tests (pure functions), evaluated
#   module-eval  checks/eval/modules.nix under this nixpkgs' lib
#   vm-<name>    one NixOS VM test per file in checks/vm (Linux, needs KVM)
#   template     the project template's cell evaluates to both VMs
#   cell, cell-proxy (Linux)  the binaries build
{ pkgs, self }:
let
  inherit (pkgs) lib;
  system = pkgs.stdenv.hostPlatform.system;

  # An evaluation result as a check: fails the build with the failures listed.
  evaluated =
    name: result:
    pkgs.runCommand name { } (
      if result.failures == [ ] then
        "echo ${toString result.cases} cases passed > $out"
      else
        throw "${name}: failing cases: ${builtins.toJSON result.failures}"
    );

  libTests = import ../lib/tests;
  vmTest = import ./vm-test.nix { inherit pkgs self; };
  vmTests = lib.mapAttrs'
    (
      file: _: lib.nameValuePair "vm-${lib.removeSuffix ".nix" file}" (vmTest ./vm/${file})
    )
    (lib.filterAttrs (file: type: type == "regular" && lib.hasSuffix ".nix" file) (builtins.readDir ./vm));

  templateCell = self.lib.mkCell {
    system = if pkgs.stdenv.hostPlatform.isDarwin then "aarch64-linux" else system;
    hostSystem = system;
    modules = [ ../templates/default/cell.nix ];
  };
in
{
  lib-tests = evaluated "cell-lib-tests" {
    cases = lib.foldl' (n: t: n + t.cases) 0 (lib.attrValues libTests);
    failures = lib.concatMap (t: t.failures) (lib.attrValues libTests);
  };
  # Against microvm.nix's own modules (the flake input), not the stub.
  module-eval = evaluated "cell-module-eval" (import ./eval/modules.nix {
    inherit lib;
    microvm = "${self.inputs.microvm}";
  });
  template = pkgs.writeText "cell-template-eval" ''
    ${templateCell.firewall.config.system.build.toplevel.drvPath}
    ${templateCell.agent.config.system.build.toplevel.drvPath}
  '';
  inherit (self.packages.${system}) cell;
}
  // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux ({ inherit (self.packages.${system}) cell-proxy; } // vmTests)
