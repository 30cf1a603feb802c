# The cell binaries. One derivation compiles the whole Cargo workspace (shared
# dependencies are built once); the per-binary packages are thin views of it.
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

  cell-workspace = rustPlatform.buildRustPackage {
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
      description = "cell: host CLI, firewall daemon and namespace lab";
      homepage = "https://github.com/cell-sandbox/cell";
      license = [
        lib.licenses.mit
        lib.licenses.asl20
      ];
      mainProgram = "cell-proxy";
      platforms = lib.platforms.unix;
    };
  };

  # A package that exposes one binary of the workspace build.
  binary =
    name:
    runCommand name
      {
        meta = cell-workspace.meta // {
          mainProgram = name;
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
  inherit cell-workspace;
  cell =
    runCommand "cell"
      {
        nativeBuildInputs = [ makeWrapper ];
        meta = cell-workspace.meta // {
          mainProgram = "cell";
        };
      }
      ''
        makeWrapper ${cell-workspace}/bin/cell $out/bin/cell \
          --suffix PATH : ${lib.makeBinPath cellTools}
      '';
  cell-proxy = binary "cell-proxy";
  cell-lab = binary "cell-lab";
}
