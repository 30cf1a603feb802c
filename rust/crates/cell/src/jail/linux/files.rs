//! The filesystem half of `cell jail`: what the command may read and write.
//!
//! Planned here, on cell's side, into a [`Spec`]: canonical paths, one
//! [`Access`] each. The exec helper ([`super::confine`]) enforces it in the
//! child just before the command is executed.
//!
//! The defaults: the host read-only (`/`), the current directory read-write,
//! a private `/tmp` and `/dev/shm`, `/dev` listed with only its harmless
//! devices openable, and nothing readable where credentials live
//! ([`CREDENTIALS`] in every home that matters, the system's secrets when
//! cell runs as root, cell's own run directory and spy store).
//!
//! Security rule — precedence: for any path the rule on its longest prefix
//! decides, so `--deny-read .env` inside the writable current directory and
//! `--allow-read ~/.ssh/known_hosts` inside the denied `~/.ssh` both hold. At
//! the same path a user's rule (flag or policy) beats a default, and within
//! one source deny beats write beats read. Paths are canonical (symlinks
//! resolved as far as the path exists), because Landlock judges the file a
//! path reaches, not the name it was reached by.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What the command may do with a path and everything beneath it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Access {
    /// Directories listed, nothing opened (`/dev`: its block devices would
    /// otherwise be readable by a root command).
    List,
    /// Read and execute.
    Read,
    /// Device files opened for reading and writing, with their ioctls.
    Device,
    /// Read, execute, write, create and remove (never device nodes).
    Write,
    /// Neither read nor write the content.
    Deny,
}

impl Access {
    /// Which wins at the same path and source.
    fn rank(self) -> u8 {
        match self {
            Access::List => 0,
            Access::Read => 1,
            Access::Device => 2,
            Access::Write => 3,
            Access::Deny => 4,
        }
    }
}

/// One path's access and where it came from (`default`, `--allow-read`,
/// `policy`), for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Rule {
    pub path: PathBuf,
    pub access: Access,
    pub from: String,
}

/// What the exec helper enforces: written by cell into the run directory,
/// read by the helper before it changes anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Spec {
    /// Sorted by path, one per path.
    pub rules: Vec<Rule>,
    /// Directories replaced by an empty tmpfs in the command's own mount
    /// namespace (each also has a `write` rule).
    pub private: Vec<PathBuf>,
    /// Where the command starts (re-entered after the mounts).
    pub cwd: PathBuf,
    /// Bound over `/etc/resolv.conf` in the command's mount namespace (the
    /// jail without root has no `ip netns exec` to do it).
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
    /// Refuse to run the command unless Landlock enforces the rules. The jail
    /// without root sets it: there the command runs as the jail's own user,
    /// and only Landlock keeps it from tracing cell-proxy or rewriting the run
    /// directory's policy.
    #[serde(default)]
    pub require_landlock: bool,
}

/// Where credentials live, relative to a home directory. Unreadable and
/// unwritable by default (docs/policy.md repeats this list).
pub(super) const CREDENTIALS: &[&str] = &[
    // SSH, clouds, clusters, containers
    ".ssh",
    ".aws",
    ".config/gcloud",
    ".azure",
    ".kube",
    ".docker/config.json",
    ".config/containers/auth.json",
    ".oci",
    ".config/doctl",
    ".terraform.d/credentials.tfrc.json",
    ".vault-token",
    // tokens of the usual tools
    ".netrc",
    ".git-credentials",
    ".config/git/credentials",
    ".config/gh",
    ".config/hub",
    ".npmrc",
    ".yarnrc.yml",
    ".pypirc",
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".gem/credentials",
    ".pgpass",
    ".my.cnf",
    ".s3cfg",
    ".boto",
    ".config/rclone",
    // keys and password stores
    ".gnupg",
    ".password-store",
    ".local/share/keyrings",
    ".local/share/kwalletd",
    ".local/share/kwallet",
    ".kde/share/apps/kwallet",
    ".config/op",
    // browser profiles (and mail)
    ".mozilla",
    ".thunderbird",
    ".librewolf",
    ".config/google-chrome",
    ".config/google-chrome-beta",
    ".config/chromium",
    ".config/BraveSoftware",
    ".config/microsoft-edge",
    ".config/vivaldi",
    ".config/opera",
    ".var/app/org.mozilla.firefox",
    ".var/app/com.google.Chrome",
    ".var/app/org.chromium.Chromium",
    ".var/app/com.brave.Browser",
    "snap/firefox",
    "snap/chromium",
    // shell and REPL histories
    ".bash_history",
    ".zsh_history",
    ".zhistory",
    ".histfile",
    ".sh_history",
    ".local/share/fish/fish_history",
    ".python_history",
    ".node_repl_history",
    ".psql_history",
    ".mysql_history",
    ".sqlite_history",
    ".irb_history",
    ".lesshst",
    ".viminfo",
];

/// Environment variables naming a credential file or directory elsewhere
/// (colon-separated lists for `KUBECONFIG`).
const CREDENTIAL_VARS: &[&str] = &[
    "GNUPGHOME",
    "PASSWORD_STORE_DIR",
    "KUBECONFIG",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "DOCKER_CONFIG",
    "CLOUDSDK_CONFIG",
    "AZURE_CONFIG_DIR",
    "HISTFILE",
];

/// The system's own secrets, readable by a root command otherwise.
const SYSTEM_SECRETS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/ssl/private",
];

/// The devices a command may open: the usual streams, randomness and terminals.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// Directories the command gets empty and private.
const PRIVATE: &[&str] = &["/tmp", "/dev/shm"];

/// A user's rule as written (flag or policy), before `~` and relative paths.
pub(super) struct UserRule {
    pub path: String,
    pub access: Access,
    pub from: &'static str,
}

/// The host facts the plan depends on.
pub(super) struct Host<'a> {
    pub cwd: PathBuf,
    /// `$HOME`: all of [`CREDENTIALS`] are denied there, also those not there yet.
    pub home: Option<PathBuf>,
    /// Other homes (the sudo user's, the system's accounts when root): only
    /// the credentials that exist now.
    pub other_homes: Vec<PathBuf>,
    pub root: bool,
    pub run_dir: &'a Path,
    /// Inside `run_dir`: what the command needs from it (the CA bundle).
    pub public: &'a Path,
    pub spy: Option<&'a Path>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The homes that matter for `cell jail` started this way: `$HOME`, the
/// user `sudo` was started by, and when root every account's home.
pub(super) fn other_homes(root: bool, home: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(user) = std::env::var("SUDO_USER")
        && let Ok(Some(u)) = nix::unistd::User::from_name(&user)
    {
        out.push(u.dir);
    }
    if root && let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            if let Some(dir) = line.split(':').nth(5)
                && dir.starts_with('/')
                && dir != "/"
            {
                out.push(PathBuf::from(dir));
            }
        }
    }
    out.retain(|d| Some(d.as_path()) != home && d.is_dir());
    out.sort();
    out.dedup();
    out
}

/// The spec for this run: the defaults, then the user's rules over them.
pub(super) fn plan(host: &Host, user: &[UserRule]) -> anyhow::Result<Spec> {
    let mut rules: BTreeMap<PathBuf, (u8, Access, String)> = BTreeMap::new();
    let mut put = |path: PathBuf, access: Access, from: &str, prio: u8| {
        let new = (prio, access.rank());
        match rules.get(&path) {
            Some((p, a, _)) if (*p, a.rank()) >= new => {}
            _ => {
                rules.insert(path, (prio, access, from.to_string()));
            }
        }
    };
    const DEFAULT: u8 = 0;
    const USER: u8 = 1;
    let default = "default";

    put(PathBuf::from("/"), Access::Read, default, DEFAULT);
    let cwd = canonical(&host.cwd);
    put(cwd.clone(), Access::Write, "the current directory", DEFAULT);
    let mut private = Vec::new();
    for p in PRIVATE {
        let p = canonical(Path::new(p));
        // From /tmp itself the current directory is the host's /tmp, not an empty one.
        if p != cwd && p.is_dir() {
            put(p.clone(), Access::Write, "private", DEFAULT);
            private.push(p);
        }
    }
    put(PathBuf::from("/dev"), Access::List, default, DEFAULT);
    for d in DEVICES {
        put(canonical(Path::new(d)), Access::Device, default, DEFAULT);
    }
    if let Some(home) = &host.home {
        for c in CREDENTIALS {
            put(canonical(&home.join(c)), Access::Deny, default, DEFAULT);
        }
    }
    for home in &host.other_homes {
        for c in CREDENTIALS {
            let p = home.join(c);
            if p.symlink_metadata().is_ok() {
                put(canonical(&p), Access::Deny, default, DEFAULT);
            }
        }
    }
    for var in CREDENTIAL_VARS {
        for p in (host.env)(var).unwrap_or_default().split(':') {
            if !p.is_empty() {
                put(canonical(&host.cwd.join(p)), Access::Deny, default, DEFAULT);
            }
        }
    }
    if host.root {
        for p in SYSTEM_SECRETS {
            put(canonical(Path::new(p)), Access::Deny, default, DEFAULT);
        }
        if let Ok(dir) = std::fs::read_dir("/etc/ssh") {
            for e in dir.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("ssh_host_") && name.ends_with("_key") {
                    put(canonical(&e.path()), Access::Deny, default, DEFAULT);
                }
            }
        }
    }
    put(canonical(host.run_dir), Access::Deny, "cell", USER + 1);
    put(canonical(host.public), Access::Read, "cell", USER + 1);
    if let Some(spy) = host.spy {
        put(canonical(spy), Access::Deny, "cell", USER + 1);
    }

    for r in user {
        let path = expand(&r.path, host).with_context(|| format!("{} {}", r.from, r.path))?;
        put(path, r.access, r.from, USER);
    }
    Ok(Spec {
        rules: rules
            .into_iter()
            .map(|(path, (_, access, from))| Rule { path, access, from })
            .collect(),
        private,
        cwd,
        resolv_conf: None,
        require_landlock: false,
    })
}

/// `~`, `~/…`, relative (to the current directory) or absolute, made canonical.
fn expand(path: &str, host: &Host) -> anyhow::Result<PathBuf> {
    let p = if path == "~" || path.starts_with("~/") {
        let home = host
            .home
            .as_ref()
            .context("`~` needs $HOME; write the absolute path")?;
        home.join(path.trim_start_matches('~').trim_start_matches('/'))
    } else if path.starts_with('~') {
        anyhow::bail!("only `~/…` (your own home) is expanded; write the absolute path");
    } else {
        host.cwd.join(path)
    };
    Ok(canonical(&p))
}

/// The path with `.` and `..` removed, then its longest existing prefix
/// resolved (symlinks followed); the part that does not exist yet is kept.
pub(super) fn canonical(path: &Path) -> PathBuf {
    let mut lexical = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::Normal(n) => lexical.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = std::fs::canonicalize(&existing) {
            let mut out = c;
            for n in rest.iter().rev() {
                out.push(n);
            }
            return out;
        }
        match existing.file_name() {
            Some(n) => {
                rest.push(n.to_os_string());
                existing.pop();
            }
            None => return lexical,
        }
    }
}

impl Spec {
    pub(super) fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    pub(super) fn read(path: &Path) -> anyhow::Result<Spec> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a jail spec", path.display()))
    }

    /// The rule deciding `path` (its longest prefix).
    pub(super) fn decides(&self, path: &Path) -> Option<&Rule> {
        self.rules
            .iter()
            .filter(|r| path.starts_with(&r.path))
            .max_by_key(|r| r.path.components().count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory outside /tmp (which the plan makes private; the
    /// checkout, and the test binary beside it, may well be in /tmp).
    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let p = std::fs::canonicalize(t.path()).unwrap();
        (t, p)
    }

    fn host<'a>(
        cwd: &Path,
        home: &Path,
        run: &'a Path,
        public: &'a Path,
        env: &'a dyn Fn(&str) -> Option<String>,
    ) -> Host<'a> {
        Host {
            cwd: cwd.to_path_buf(),
            home: Some(home.to_path_buf()),
            other_homes: Vec::new(),
            root: false,
            run_dir: run,
            public,
            spy: None,
            env,
        }
    }

    /// The defaults and the precedence: credentials denied, also before they
    /// exist; a user's allow beats a default deny at the same path and a
    /// deeper deny beats a shallower allow; `~` and relative paths expand;
    /// symlinks are resolved to what they reach.
    #[test]
    fn plan_denies_credentials_and_the_most_specific_rule_wins() {
        let (_keep, t) = scratch();
        let (home, cwd, run) = (t.join("home"), t.join("home/proj"), t.join("run"));
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::create_dir_all(run.join("pub")).unwrap();
        std::os::unix::fs::symlink(home.join(".ssh"), cwd.join("keys")).unwrap();
        let env = |_: &str| None;
        let public = run.join("pub");
        let h = host(&cwd, &home, &run, &public, &env);
        let spec = plan(
            &h,
            &[
                UserRule {
                    path: "~/.ssh/known_hosts".into(),
                    access: Access::Read,
                    from: "--allow-read",
                },
                UserRule {
                    path: ".env".into(),
                    access: Access::Deny,
                    from: "--deny-read",
                },
                UserRule {
                    path: "keys/../keys/id".into(),
                    access: Access::Write,
                    from: "--allow-write",
                },
            ],
        )
        .unwrap();
        let at = |p: &Path| spec.decides(p).map(|r| r.access);
        assert_eq!(at(&home.join(".ssh/id_ed25519")), Some(Access::Deny));
        assert_eq!(
            at(&home.join(".aws/credentials")),
            Some(Access::Deny),
            "not there yet"
        );
        assert_eq!(at(&home.join(".ssh/known_hosts")), Some(Access::Read));
        assert_eq!(
            at(&home.join(".ssh/id")),
            Some(Access::Write),
            "via the symlink"
        );
        assert_eq!(at(&cwd.join("src/main.rs")), Some(Access::Write));
        assert_eq!(at(&cwd.join(".env")), Some(Access::Deny));
        assert_eq!(at(&home.join(".bashrc")), Some(Access::Read));
        assert_eq!(at(&run.join("events.jsonl")), Some(Access::Deny));
        assert_eq!(at(&run.join("pub/ca-bundle.pem")), Some(Access::Read));
        assert_eq!(at(Path::new("/dev/sda")), Some(Access::List));
        assert_eq!(at(Path::new("/dev/null")), Some(Access::Device));

        let bad = plan(
            &h,
            &[UserRule {
                path: "~bob/.ssh".into(),
                access: Access::Read,
                from: "--allow-read",
            }],
        );
        assert!(format!("{:#}", bad.unwrap_err()).contains("--allow-read ~bob/.ssh"));
    }

    /// Same path, same source: deny beats write beats read; a user's rule
    /// beats a default; cell's own run directory stays denied whatever the user says.
    #[test]
    fn precedence_at_one_path() {
        let (_keep, t) = scratch();
        let run = t.join("run");
        let public = run.join("pub");
        let env = |v: &str| (v == "KUBECONFIG").then(|| "/k/one:/k/two".to_string());
        let h = host(&t, &t, &run, &public, &env);
        let rule = |path: &str, access, from| UserRule {
            path: path.into(),
            access,
            from,
        };
        let spec = plan(
            &h,
            &[
                rule("x", Access::Read, "--allow-read"),
                rule("x", Access::Deny, "--deny-read"),
                rule("x", Access::Write, "--allow-write"),
                rule(".ssh", Access::Read, "--allow-read"),
                rule("run", Access::Write, "--allow-write"),
            ],
        )
        .unwrap();
        let at = |p: &Path| spec.decides(p).map(|r| r.access);
        assert_eq!(at(&t.join("x")), Some(Access::Deny));
        assert_eq!(at(&t.join(".ssh/id_rsa")), Some(Access::Read));
        assert_eq!(at(&run.join("state/ca.key")), Some(Access::Deny));
        assert_eq!(at(Path::new("/k/two")), Some(Access::Deny));
        assert_eq!(canonical(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
