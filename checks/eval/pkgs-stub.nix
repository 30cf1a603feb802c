# Just enough of `pkgs` for the cell modules to evaluate without nixpkgs:
# each package is an attribute set that looks like a derivation, and the
# builders keep their input so tests can read what a module wrote (the
# policy document cell-proxy --check runs on, for one). Real builds happen
# in `nix flake check`.
{ without ? [ ] }:
let
  fake = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "${builtins.storeDir}/${builtins.hashString "sha256" (builtins.toJSON [ name extra ])}-${name}";
    meta.mainProgram = extra.mainProgram or name;
  } // extra;
  packages = {
    nftables = fake "nftables" { mainProgram = "nft"; };
    coreutils = fake "coreutils" { };
    openssh = fake "openssh" { mainProgram = "ssh"; };
    curl = fake "curl" { };
    openssl = fake "openssl" { };
    git = fake "git" { };
    gnumake = fake "gnumake" { };
    ripgrep = fake "ripgrep" { mainProgram = "rg"; };
    jq = fake "jq" { };
    cacert = fake "cacert" { override = args: fake "cacert" { inherit args; }; };
    go = fake "go" { };
    codex = fake "codex" { };
    opencode = fake "opencode" { };
    claude-code = fake "claude-code" { mainProgram = "claude"; };
    pi-coding-agent = fake "pi-coding-agent" { mainProgram = "pi"; };
    cell-proxy = fake "cell-proxy" { };
  };
in
builtins.removeAttrs packages without
  // {
  writeText = name: text: fake name { inherit text; };
  writeShellScript = name: text: fake name { inherit text; };
  writeShellScriptBin = name: text: fake name { inherit text; };
  stdenv.hostPlatform = {
    system = "x86_64-linux";
    linux-kernel.target = "bzImage";
  };
  runCommand = name: env: script: fake name { inherit env script; };
  writeShellApplication = args: fake args.name { inherit (args) text runtimeInputs; };
  callPackage = _: _: { inherit (packages) cell-proxy; };
}
