//! Where an instance lives on the host, and the lock that keeps two `cell`
//! processes from starting it at once.
//!
//! ```text
//! $XDG_STATE_HOME/cell/instances/NAME/     (Linux; ~/.local/state when unset)
//! ~/Library/Application Support/cell/instances/NAME/   (macOS)
//!   instance.json     what `cell` chose at creation (backend, ports, specs)
//!   lock              flock(2) held while starting or stopping
//!   id_ed25519{,.pub} the host's key for both VMs (never leaves this dir)
//!   known_hosts       the VMs' host keys, reset at every boot
//!   overlay.json      the live allowlist overlay (`cell allow`)
//!   agent-var.img     the agent's persistent /var
//!   firewall.pid, agent.pid, relay.pid   running processes
//!   firewall.log, agent.log, relay.log   their console and errors
//!   link.sock (qemu) | link-firewall.sock, link-agent.sock (vfkit)
//!   firewall.qmp, agent.qmp              qemu monitor sockets
//! ```
//!
//! Nothing is written outside this directory (and the cache of Nix builds
//! under `$XDG_CACHE_HOME/cell`): never into the user's repository.

use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// A checked instance name: what `--instance` accepts.
pub fn check_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(name.to_string())
    } else {
        Err(format!(
            "`{name}` is not an instance name: use 1-32 characters of a-z, 0-9 and `-`, not starting with `-` (for example `default` or `web-app`)"
        ))
    }
}

/// The directory holding every instance.
pub fn instances_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CELL_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("instances"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let base = if cfg!(target_os = "macos") {
        home.context("HOME is not set")?
            .join("Library/Application Support")
    } else {
        match std::env::var_os("XDG_STATE_HOME").filter(|d| Path::new(d).is_absolute()) {
            Some(d) => PathBuf::from(d),
            None => home
                .context("neither XDG_STATE_HOME nor HOME is set")?
                .join(".local/state"),
        }
    };
    Ok(base.join("cell").join("instances"))
}

/// The paths of one instance.
#[derive(Debug, Clone)]
pub struct Layout {
    pub name: String,
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(root: &Path, name: &str) -> Layout {
        Layout {
            name: name.to_string(),
            dir: root.join(name),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
    pub fn meta(&self) -> PathBuf {
        self.path("instance.json")
    }
    pub fn overlay(&self) -> PathBuf {
        self.path("overlay.json")
    }
    pub fn key(&self) -> PathBuf {
        self.path("id_ed25519")
    }
    pub fn known_hosts(&self) -> PathBuf {
        self.path("known_hosts")
    }
    pub fn pidfile(&self, role: &str) -> PathBuf {
        self.path(&format!("{role}.pid"))
    }
    pub fn log(&self, role: &str) -> PathBuf {
        self.path(&format!("{role}.log"))
    }

    pub fn exists(&self) -> bool {
        self.meta().is_file()
    }

    /// Creates the directory (mode 0700: sockets and keys live here).
    pub fn create_dir(&self) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating the instance directory {}", self.dir.display()))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    /// Takes the instance lock, waiting for another `cell` that holds it.
    pub fn lock(&self) -> anyhow::Result<Lock> {
        use nix::fcntl::{Flock, FlockArg};
        self.create_dir()?;
        let path = self.path("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                eprintln!(
                    "cell: instance `{}` is busy (another `cell` is starting or stopping it); waiting…",
                    self.name
                );
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e)?
            }
            Err((_, e)) => return Err(e).context("locking the instance"),
        };
        Ok(Lock { _file: file })
    }
}

/// Held while starting or stopping; released on drop (and by the kernel when
/// the process dies, so a crash never leaves the instance locked).
pub struct Lock {
    _file: nix::fcntl::Flock<File>,
}

/// What `cell` decided when it created the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Meta {
    pub version: u32,
    /// `qemu` or `vfkit`.
    pub backend: String,
    /// The flake the VMs were built from (`.`, a path or a flake reference).
    pub flake: String,
    /// The flake attribute holding the cell (`cellConfigurations.<system>.default`).
    pub attr: String,
    /// Host loopback port forwarded to the firewall's SSH (qemu).
    pub ssh_port: u16,
    /// The built VM specs (`/nix/store/...-cell-vm-{firewall,agent}.json`);
    /// empty until the first successful build.
    #[serde(default)]
    pub firewall_spec: String,
    #[serde(default)]
    pub agent_spec: String,
    /// The project directory shared as the agent's workspace, if any.
    #[serde(default)]
    pub workspace: Option<PathBuf>,
}

impl Meta {
    pub fn load(layout: &Layout) -> anyhow::Result<Meta> {
        let path = layout.meta();
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "instance `{}` does not exist ({} is missing); `cell --instance {}` creates it",
                layout.name,
                path.display(),
                layout.name
            )
        })?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; `cell destroy --instance {}` removes the instance",
                path.display(),
                layout.name
            )
        })
    }

    pub fn save(&self, layout: &Layout) -> anyhow::Result<()> {
        write_atomic(
            &layout.meta(),
            &(serde_json::to_string_pretty(self)? + "\n"),
            0o600,
        )
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a crash
/// or a full disk never leaves a half-written file behind.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("no parent directory")?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::options()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        bail!(
            "writing {}: {e} (the previous version is unchanged)",
            path.display()
        );
    }
    Ok(())
}

/// Bytes free for an unprivileged user on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let s = nix::sys::statvfs::statvfs(p).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_an_example_in_the_error() {
        assert_eq!(check_name("default").unwrap(), "default");
        assert_eq!(check_name("web-2").unwrap(), "web-2");
        for bad in ["", "-x", "Web", "a/b", "..", "a b", &"x".repeat(33)] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("for example"), "{e}");
        }
    }

    #[test]
    fn layout_names_every_file_inside_the_instance_dir() {
        let l = Layout::new(Path::new("/s/instances"), "web");
        assert_eq!(l.meta(), Path::new("/s/instances/web/instance.json"));
        assert_eq!(l.pidfile("agent"), Path::new("/s/instances/web/agent.pid"));
        assert_eq!(l.overlay(), Path::new("/s/instances/web/overlay.json"));
    }

    #[test]
    fn write_atomic_replaces_whole_files_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f.json");
        write_atomic(&p, "one", 0o600).unwrap();
        write_atomic(&p, "two", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        // A write that cannot happen keeps the old file and cleans up.
        let e = write_atomic(&d.path().join("no/such/dir/f"), "x", 0o600).unwrap_err();
        assert!(e.to_string().contains("unchanged"), "{e}");
    }

    #[test]
    fn the_lock_makes_a_second_cell_wait_for_the_first() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path(), "t");
        let first = l.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let l2 = l.clone();
        let waiter = std::thread::spawn(move || {
            let _second = l2.lock().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the second lock was granted while the first was held"
        );
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the second lock after the first was released");
        waiter.join().unwrap();
    }

    #[test]
    fn meta_round_trips_and_a_damaged_file_says_how_to_recover() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path(), "t");
        l.create_dir().unwrap();
        let m = Meta {
            version: 1,
            backend: "qemu".into(),
            flake: ".".into(),
            attr: "cellConfigurations.x86_64-linux.default".into(),
            ssh_port: 2222,
            firewall_spec: String::new(),
            agent_spec: String::new(),
            workspace: None,
        };
        m.save(&l).unwrap();
        assert_eq!(Meta::load(&l).unwrap(), m);
        fs::write(l.meta(), "{").unwrap();
        let e = format!("{:#}", Meta::load(&l).unwrap_err());
        assert!(e.contains("cell destroy --instance t"), "{e}");
        let e = format!(
            "{:#}",
            Meta::load(&Layout::new(d.path(), "none")).unwrap_err()
        );
        assert!(e.contains("`cell --instance none` creates it"), "{e}");
    }
}
