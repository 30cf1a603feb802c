# The cell binaries, per system: only what builds there.
#
# On Linux one derivation compiles the whole Cargo workspace (shared
# dependencies are built once) and the per-binary packages are thin views of
# it. Elsewhere (macOS) it builds only the host CLI: cell-netns (setns),
# cell-proxy (netlink, SO_ORIGINAL_DST) and cell-lab use Linux-only APIs, and
# the `cell` crate takes cell-netns on Linux only (`cell jail`).
# rust/crates/cell/tests/platforms.rs keeps the CLI's macOS graph free of them.
{ lib
, stdenv
, rustPlatform
, runCommand
, makeWrapper
, openssh
, qemu_kvm
, vfkit
,
}:
let
  manifest = lib.importTOML ../rust/Cargo.toml;
  inherit (stdenv.hostPlatform) isLinux;

  # The Rust build: every crate on Linux, only the `cell` crate elsewhere.
  cell-workspace = rustPlatform.buildRustPackage ({
    pname = "cell";
    inherit (manifest.workspace.package) version;

    src = lib.fileset.toSource {
      root = ../rust;
      fileset = lib.fileset.unions [
        ../rust/Cargo.toml
        ../rust/Cargo.lock
        ../rust/crates
      ];
    };
    cargoLock.lockFile = ../rust/Cargo.lock;

    # The lab tests need root and network namespaces, which the build sandbox
    # does not have; they run in CI (.ci/run) and in the NixOS VM tests.
    doCheck = false;

    meta = {
      description =
        if isLinux then "cell: host CLI, firewall daemon and namespace lab" else "cell: the host CLI";
      homepage = "https://github.com/cell-sandbox/cell";
      license = [
        lib.licenses.mit
        lib.licenses.asl20
      ];
      mainProgram = if isLinux then "cell-proxy" else "cell";
      platforms = lib.platforms.unix;
    };
  }
  // lib.optionalAttrs (!isLinux) {
    # Only on macOS, so the Linux derivation stays as it was.
    cargoBuildFlags = [ "--package" "cell" ];
    cargoTestFlags = [ "--package" "cell" ];
  });

  # A package that exposes one binary of the workspace build.
  binary =
    name:
    runCommand name
      {
        meta = cell-workspace.meta // {
          mainProgram = name;
          platforms = lib.platforms.linux;
        };
      }
      ''
        mkdir -p $out/bin
        ln -s ${cell-workspace}/bin/${name} $out/bin/${name}
      '';
  # `cell` runs ssh and ssh-keygen, and the hypervisor of its platform: the
  # package brings them (nix itself is the one the user runs it with).
  cellTools = [ openssh ] ++ (if stdenv.hostPlatform.isDarwin then [ vfkit ] else [ qemu_kvm ]);
in
{
  cell =
    runCommand "cell"
      {
        nativeBuildInputs = [ makeWrapper ];
        # The Rust build (the devShell takes its toolchain from it).
        passthru.unwrapped = cell-workspace;
        meta = cell-workspace.meta // {
          mainProgram = "cell";
        };
      }
      ''
        makeWrapper ${cell-workspace}/bin/cell $out/bin/cell \
          --suffix PATH : ${lib.makeBinPath cellTools}
      '';
}
  // lib.optionalAttrs isLinux {
  inherit cell-workspace;
  cell-proxy = binary "cell-proxy";
  cell-lab = binary "cell-lab";
}
