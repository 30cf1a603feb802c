# The NixOS options the cell modules (and, with CELL_MICROVM, microvm.nix's
# guest modules) set or read, declared as nixpkgs declares them: same name,
# type, default and read-only-ness, each with the nixpkgs file it mirrors
# (paths under nixos/). Sub-options of the huge submodules (systemd units,
# networkd sections) are the ones these modules use, with their real types;
# networkd sections reject unknown keys as nixpkgs' checkUnitConfig does
# (./systemd-stub.nix). A misspelt option, a wrong type or an unknown
# networkd key fails here as it would in NixOS. It does not prove what
# NixOS does with the values: the VM tests in checks/vm do, on a machine
# with Nix and KVM. The nixpkgs.* options are in ./nixpkgs-stub.nix and
# ./nixpkgs-read-only-stub.nix.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  # services/networking/firewall.nix: port lists are sorted and deduplicated.
  ports = mkOption {
    type = types.listOf types.port;
    default = [ ];
    apply = ps: lib.unique (builtins.sort builtins.lessThan ps);
  };
  sd = import ./systemd-stub.nix { inherit lib; };
  opt = type: default: mkOption { inherit type default; };
  list = t: opt (types.listOf t) [ ];
  bool = opt types.bool;
  units = list sd.unitName;

  # config/sysctl.nix: a freeform value is one definition only (two, even
  # equal, are refused); the buffer maxima take the highest definition.
  sysctlOption = lib.mkOptionType {
    name = "sysctl option value";
    check =
      val:
      let
        checkType = x: lib.isBool x || lib.isString x || lib.isInt x || x == null;
      in
      checkType val || (val._type or "" == "override" && checkType val.content);
    merge = loc: defs: lib.mergeOneOption loc defs;
  };
  highestValueType = types.ints.unsigned // {
    merge = _loc: defs: lib.foldl (a: b: if b.value == null then null else lib.max a b.value) 0 defs;
  };

  # tasks/filesystems.nix checks its strings itself (not lib's nonEmptyStr):
  # the same checks, with nixpkgs' addCheckDesc.
  addCheckDesc =
    desc: elemType: check:
    types.addCheck elemType check // { description = "${elemType.description} (with check: ${desc})"; };
  isNonEmpty = s: (builtins.match "[ \t\n]*" s) == null;
  fsNonEmptyStr = addCheckDesc "non-empty" types.str isNonEmpty;
  nonEmptyWithoutTrailingSlash = addCheckDesc "non-empty without trailing slash" types.str (
    s: isNonEmpty s && (builtins.match ".+/" s) == null
  );
  specialFSTypes = [
    "proc"
    "sysfs"
    "tmpfs"
    "ramfs"
    "devtmpfs"
    "devpts"
  ];
  fstabEscape = string: builtins.replaceStrings [ " " "\t" ] [ "\\040" "\\011" ] string;
  # lib/utils.nix: fsNeededForBoot.
  pathsNeededForBoot = [
    "/"
    "/nix"
    "/nix/store"
    "/var"
    "/var/log"
    "/var/lib"
    "/var/lib/nixos"
    "/etc"
    "/usr"
  ];
  fsNeededForBoot = fs: fs.neededForBoot || lib.elem fs.mountPoint pathsNeededForBoot;
  initrdSystemd = config.boot.initrd.systemd.enable;
  allUsers = config.users.users;

  # lib/systemd-unit-options.nix: commonUnitOptions + stage2CommonUnitOptions.
  commonUnit = {
    enable = bool true;
    description = opt types.singleLineStr "";
    documentation = list types.str;
    wantedBy = units;
    requiredBy = units;
    wants = units;
    requires = units;
    after = units;
    before = units;
    bindsTo = units;
    partOf = units;
    conflicts = units;
    unitConfig = opt (types.attrsOf sd.unitOption) { };
    restartTriggers = list types.unspecified;
    reloadTriggers = list sd.unitOption;
  };
in
{
  options = {
    # misc/assertions.nix
    assertions = list types.unspecified;
    warnings = list types.str;

    # config/sysctl.nix
    boot.kernel.sysctl = opt
      (types.submodule {
        freeformType = types.attrsOf sysctlOption;
        options = {
          "net.core.rmem_max" = opt (types.nullOr highestValueType) null;
          "net.core.wmem_max" = opt (types.nullOr highestValueType) null;
        };
      })
      { };
    # system/boot/kernel.nix
    boot.kernelParams = list (
      types.strMatching ''([^"[:space:]]|"[^"]*")+''
      // {
        name = "kernelParam";
        description = "string, with spaces inside double quotes";
      }
    );
    boot.kernelPackages = opt types.raw pkgs.linuxPackages;
    boot.blacklistedKernelModules = list types.str;
    boot.initrd.kernelModules = list types.str;
    boot.initrd.availableKernelModules = list types.str;
    # system/boot/systemd/initrd.nix
    boot.initrd.systemd.enable = bool false;
    # system/boot/loader/grub/grub.nix
    boot.loader.grub.enable = bool true;
    # system/boot/stage-2.nix
    boot.postBootCommands = opt types.lines "";

    networking = {
      # tasks/network-interfaces.nix
      useNetworkd = bool false;
      useDHCP = bool true;
      nameservers = list types.str;
      hostName = opt (types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$") "nixos";
      hostId = opt (types.nullOr (types.strMatching "[0-9a-f]{8}")) null;
      # services/networking/nftables.nix: flushRuleset is an mkEnableOption
      # (false), but see `config` below.
      nftables = {
        enable = bool false;
        flushRuleset = bool false;
        ruleset = opt types.lines "";
        rulesetFile = opt (types.nullOr types.path) null;
      };
      # services/networking/firewall.nix
      firewall = {
        enable = bool true;
        trustedInterfaces = list types.str;
        allowedTCPPorts = ports;
        interfaces = opt (types.attrsOf (types.submodule { options.allowedTCPPorts = ports; })) { };
      };
    };

    # system/boot/networkd.nix: linkOptions / networkOptions
    systemd.network.links = opt
      (types.attrsOf (types.submodule {
        options = {
          enable = bool true;
          matchConfig = opt (types.attrsOf sd.unitOption) { };
          linkConfig = opt (sd.section sd.checkLinkLink) { };
        };
      }))
      { };
    systemd.network.networks = opt
      (types.attrsOf (types.submodule {
        options = {
          enable = bool true;
          matchConfig = opt (types.attrsOf sd.unitOption) { };
          linkConfig = opt (sd.section sd.checkNetworkLink) { };
          networkConfig = opt (sd.section sd.checkNetworkNetwork) { };
          address = list types.str;
          gateway = list types.str;
          dns = list types.str;
        };
      }))
      { };

    # system/boot/systemd.nix with lib/systemd-unit-options.nix
    systemd.services = opt
      (types.attrsOf (types.submodule {
        options = commonUnit // {
          environment = opt (types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]))) { };
          serviceConfig = opt (sd.section sd.checkService) { };
        };
      }))
      { };
    systemd.sockets = opt
      (types.attrsOf (types.submodule {
        options = commonUnit // {
          listenStreams = list types.str;
          socketConfig = opt (types.attrsOf sd.unitOption) { };
        };
      }))
      { };
    systemd.mounts = list (types.submodule {
      options = commonUnit // {
        what = opt types.str "";
        where = mkOption { type = types.str; };
        overrideStrategy = opt (types.enum [ "asDropinIfExists" "asDropin" ]) "asDropinIfExists";
      };
    });
    systemd.generators = opt (types.attrsOf types.path) { };

    # system/boot/resolved.nix
    services.resolved.enable = bool false;
    # services/networking/ssh/sshd.nix
    services.openssh = {
      enable = bool false;
      openFirewall = bool true;
      package = opt types.package pkgs.openssh;
      hostKeys = opt (types.listOf types.attrs) [
        {
          type = "rsa";
          bits = 4096;
          path = "/etc/ssh/ssh_host_rsa_key";
        }
        {
          type = "ed25519";
          path = "/etc/ssh/ssh_host_ed25519_key";
        }
      ];
      authorizedKeysFiles = list types.str;
      settings = opt
        (types.submodule {
          freeformType = types.attrsOf (types.nullOr (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ]));
          options = {
            PasswordAuthentication = opt (types.nullOr types.bool) true;
            KbdInteractiveAuthentication = opt (types.nullOr types.bool) true;
            PermitRootLogin = opt (types.nullOr (types.enum [ "yes" "without-password" "prohibit-password" "forced-commands-only" "no" ])) "prohibit-password";
          };
        })
        { };
    };
    # programs/ssh.nix
    programs.ssh.extraConfig = opt types.lines "";
    # services/logging/logrotate.nix (cell no longer writes it; the checks
    # prove that): enabled as soon as any enabled section exists.
    services.logrotate = {
      enable = opt types.bool (lib.any (s: s.enable) (lib.attrValues config.services.logrotate.settings));
      settings = opt
        (types.attrsOf (types.submodule ({ name, ... }: {
          freeformType = types.attrsOf (types.nullOr (types.oneOf [ types.int types.bool types.str ]));
          options = {
            enable = bool true;
            global = bool false;
            files = opt (types.either types.str (types.listOf types.str)) name;
            frequency = opt (types.nullOr types.str) null;
            priority = opt types.int 1000;
          };
        })))
        { };
    };

    # config/users-groups.nix (userOpts: the options cell uses, and what a
    # normal user defaults), with services/networking/ssh/sshd.nix's
    # userOptions (openssh.authorizedKeys).
    users.users = opt
      (types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          enable = bool true;
          name = mkOption {
            type = types.passwdEntry types.str;
            apply = x: assert (lib.stringLength x < 32 || abort "Username '${x}' is longer than 31 characters which is not allowed!"); x;
          };
          description = opt (types.passwdEntry types.str) "";
          isSystemUser = bool false;
          isNormalUser = bool false;
          group = mkOption {
            type = types.str;
            apply = x: assert (lib.stringLength x < 32 || abort "Group name '${x}' is longer than 31 characters which is not allowed!"); x;
            default = "";
          };
          extraGroups = list types.str;
          openssh.authorizedKeys.keys = list types.singleLineStr;
        };
        config = lib.mkMerge [
          { name = lib.mkDefault name; }
          (lib.mkIf config.isNormalUser {
            group = lib.mkDefault "users";
            isSystemUser = lib.mkDefault false;
          })
        ];
      })))
      { };
    # config/users-groups.nix (groupOpts): members are also the enabled
    # users that name the group in extraGroups.
    users.groups = opt
      (types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          name = mkOption { type = types.passwdEntry types.str; };
          members = list (types.passwdEntry types.str);
        };
        config = {
          name = lib.mkDefault name;
          members = lib.mapAttrsToList (_: u: u.name) (
            lib.filterAttrs (_: u: u.enable && lib.elem config.name u.extraGroups) allUsers
          );
        };
      })))
      { };
    # security/sudo.nix
    security.sudo.wheelNeedsPassword = bool true;
    # security/ca.nix
    security.pki = {
      certificateFiles = list types.path;
      certificates = list types.str;
      caCertificateBlacklist = list types.str;
    };
    # security/misc.nix
    security.virtualisation.flushL1DataCache = opt (types.nullOr (types.enum [ "never" "cond" "always" ])) null;

    # system/etc/etc.nix: `text` becomes `source` through pkgs.writeText,
    # named etc-<name with / as ->.
    environment.etc = opt
      (types.attrsOf (types.submodule ({ name, config, options, ... }: {
        options = {
          enable = bool true;
          target = mkOption { type = types.str; };
          text = opt (types.nullOr types.lines) null;
          source = mkOption { type = types.path; };
          mode = opt types.str "symlink";
          uid = opt types.int 0;
          gid = opt types.int 0;
          user = opt types.str "+${toString config.uid}";
          group = opt types.str "+${toString config.gid}";
        };
        config = {
          target = lib.mkDefault name;
          source = lib.mkIf (config.text != null) (
            lib.mkDerivedConfig options.text (pkgs.writeText ("etc-" + lib.replaceStrings [ "/" ] [ "-" ] name))
          );
        };
      })))
      { };
    # config/shells-environment.nix: null unsets a variable; paths are
    # copied to the store.
    environment.variables = mkOption {
      type = types.attrsOf (
        types.nullOr (types.oneOf [ (types.listOf (types.oneOf [ types.int types.str types.path ])) types.int types.str types.path ])
      );
      default = { };
      apply =
        let
          toStr = v: if lib.isPath v then "${v}" else toString v;
        in
        attrs:
        lib.mapAttrs (_: v: if lib.isList v then lib.concatMapStringsSep ":" toStr v else toStr v) (
          lib.filterAttrs (_: v: v != null) attrs
        );
    };
    # config/system-path.nix
    environment.systemPackages = list types.package;

    # tasks/filesystems.nix (coreFileSystemOpts, fileSystemOpts: disabled
    # entries dropped, mount options added for autoFormat, autoResize, boot
    # and depends), system/boot/stage-1.nix (neededForBoot) and
    # tasks/filesystems/overlayfs.nix (overlay).
    fileSystems = mkOption {
      type = types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          enable = bool true;
          mountPoint = mkOption {
            type = nonEmptyWithoutTrailingSlash;
            default = name;
          };
          device = opt (types.nullOr fsNonEmptyStr) null;
          fsType = opt fsNonEmptyStr "auto";
          options = opt (types.nonEmptyListOf fsNonEmptyStr) [ "defaults" ];
          depends = list nonEmptyWithoutTrailingSlash;
          label = opt (types.nullOr fsNonEmptyStr) null;
          autoFormat = bool false;
          autoResize = bool false;
          noCheck = bool false;
          neededForBoot = bool false;
          overlay = {
            lowerdir = opt (types.nullOr (types.nonEmptyListOf (types.either types.str types.pathInStore))) null;
            upperdir = opt (types.nullOr types.str) null;
            workdir = opt (types.nullOr types.str) null;
          };
        };
        config = {
          device = lib.mkMerge [
            (lib.mkIf (lib.elem config.fsType specialFSTypes) (lib.mkDefault config.fsType))
            (lib.mkIf (config.label != null) (lib.mkDefault "/dev/disk/by-label/${fstabEscape config.label}"))
          ];
          options =
            let
              inInitrd = fsNeededForBoot config;
            in
            lib.mkMerge [
              (lib.mkIf config.autoResize [ "x-systemd.growfs" ])
              (lib.mkIf config.autoFormat [ "x-systemd.makefs" ])
              (lib.mkIf inInitrd [ "x-initrd.mount" ])
              (lib.mkIf (config.depends != [ ] && (inInitrd -> initrdSystemd)) (
                map (x: "x-systemd.requires-mounts-for=${lib.optionalString inInitrd "/sysroot"}${x}") config.depends
              ))
            ];
        };
      }));
      default = { };
      apply = lib.filterAttrs (_: fs: fs.enable);
    };

    # services/system/nix-daemon.nix, config/nix.nix
    nix.enable = bool true;
    nix.package = opt types.package pkgs.nix;
    nix.optimise.automatic = bool false;
    nix.settings = opt (types.submodule { freeformType = types.attrsOf types.anything; options.auto-optimise-store = bool false; }) { };

    # system/activation/top-level.nix, system/boot/kernel.nix
    system.build = opt (types.submoduleWith { modules = [{ freeformType = types.lazyAttrsOf (types.uniq types.unspecified); }]; }) { };
    system.boot.loader.initrdFile = opt types.str "initrd";
    # misc/version.nix (default: this nixpkgs' release)
    system.stateVersion = opt types.str lib.trivial.release;
  };

  config = {
    # What the real modules put there; fixed fakes here.
    system.build = {
      toplevel = pkgs.fakeDerivation "nixos-system";
      initialRamdisk = pkgs.fakeDerivation "initrd";
    };
    # services/networking/nftables.nix: an enabled nftables flushes the
    # whole ruleset on configurations older than 23.11 or with a ruleset.
    networking.nftables.flushRuleset = lib.mkIf config.networking.nftables.enable (
      lib.mkDefault (
        lib.versionOlder config.system.stateVersion "23.11"
        || config.networking.nftables.rulesetFile != null
        || config.networking.nftables.ruleset != ""
      )
    );
  };
}
