# Just enough of `pkgs` for the cell modules (and microvm.nix's guest
# modules) to evaluate without nixpkgs: each package is an attribute set
# that looks like a derivation, and the builders keep their input so tests
# can read what a module wrote (the policy document cell-proxy --check runs
# on, for one). Real builds happen in `nix flake check`.
#
# Like `import nixpkgs { inherit config; localSystem = system; }`, it takes
# the nixpkgs `config`: an unfree package (claude-code) refuses to be
# instantiated unless `config.allowUnfree` or `config.allowUnfreePredicate`
# allows it, as pkgs/stdenv/generic/check-meta.nix does (with `throw`, so
# `builtins.tryEval` sees it).
{ without ? [ ]
, config ? { }
, system ? "x86_64-linux"
}:
let
  platform = s: {
    system = s;
    isLinux = builtins.match ".*-linux" s != null;
    isDarwin = builtins.match ".*-darwin" s != null;
    isAarch64 = builtins.match "aarch64-.*" s != null;
    # The kernel image microvm.nix boots: uncompressed on aarch64 (vfkit needs it).
    linux-kernel.target = if builtins.match "aarch64-.*" s != null then "Image" else "bzImage";
  };

  # The inputs that name a fake store path (functions cannot be hashed).
  hashed = extra: builtins.removeAttrs extra (builtins.filter (n: builtins.isFunction extra.${n}) (builtins.attrNames extra));

  fake = name: extra: rec {
    type = "derivation";
    inherit name;
    outPath = "${builtins.storeDir}/${builtins.hashString "sha256" (builtins.toJSON [ name system (hashed extra) ])}-${name}";
    drvPath = "${builtins.storeDir}/${builtins.hashString "sha256" (builtins.toJSON [ "drv" name system (hashed extra) ])}-${name}.drv";
    # The `out` output, as a path (a real one is the derivation again).
    out = outPath;
    meta.mainProgram = extra.mainProgram or name;
    overrideAttrs = _: fake name extra;
  } // builtins.removeAttrs extra [ "mainProgram" ];

  allowUnfree =
    pkg:
    config.allowUnfree or false || (config ? allowUnfreePredicate && config.allowUnfreePredicate pkg);

  # An unfree package: every use of the derivation throws unless allowed.
  unfree =
    name: version: extra:
    let
      pkg = fake name extra // {
        pname = name;
        inherit version;
        name = "${name}-${version}";
        meta = {
          license.free = false;
          mainProgram = extra.mainProgram or name;
        };
      };
      refusal = throw "Package ‘${name}-${version}’ has an unfree license, refusing to evaluate.";
    in
    if allowUnfree pkg then pkg else pkg // { outPath = refusal; drvPath = refusal; };

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
    nix = fake "nix" { };
    codex = fake "codex" { };
    opencode = fake "opencode" { };
    claude-code = unfree "claude-code" "2.0.0" { mainProgram = "claude"; };
    pi-coding-agent = fake "pi-coding-agent" { mainProgram = "pi"; };
    cell-proxy = fake "cell-proxy" { };
    linuxPackages.kernel = fake "linux" { version = "6.12.0"; };
  };

  builders = {
    writeText = name: text: fake name { inherit text; };
    writeShellScript = name: text: fake name { inherit text; };
    writeShellScriptBin = name: text: fake name { inherit text; };
    runCommand = name: env: script: fake name { inherit env script; };
    runCommandLocal = name: _env: script: fake name { inherit script; };
    writeShellApplication = args: fake args.name { inherit (args) text runtimeInputs; };
    closureInfo = { rootPaths }: fake "closure-info" { inherit rootPaths; };
    writeClosure = paths: fake "closure" { inherit paths; };
    # Not a nixpkgs attribute: a derivation-like value for the stubs.
    fakeDerivation = name: fake name { };
    callPackage = _: _: { inherit (packages) cell-proxy; };
  };

  self = builtins.removeAttrs packages without // builders // {
    # lib.types.pkgs recognises a package set by this.
    _type = "pkgs";
    inherit config;
    overlays = [ ];
    __splicedPackages = self;
    stdenv = {
      hostPlatform = platform system;
      buildPlatform = platform system;
      targetPlatform = platform system;
    };
    buildPackages = self // {
      erofs-utils = fake "erofs-utils" { };
      squashfs-tools-ng = fake "squashfs-tools-ng" { };
      time = fake "time" { };
      bubblewrap = fake "bubblewrap" { };
    };
  };
in
self
