//! Named network namespaces that remove themselves on drop, shared by the
//! namespace lab and `cell jail`.

use std::ffi::OsStr;
use std::fs::File;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// Runs a command and fails with its stderr when it fails.
pub fn sh<I, S>(program: &str, args: I) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// The names of all named network namespaces (`ip netns list`).
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = sh("ip", ["netns", "list"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Runs `f` on a scoped thread that has entered the named namespace
/// (`/run/netns/<name>`, or the namespace file at `name` when it holds a `/`,
/// as iproute2 reads it: `/proc/self/fd/3` for one passed by descriptor).
/// Sockets created there stay in that namespace, and child processes spawned
/// there start in it.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = if name.contains('/') {
        name.to_string()
    } else {
        format!("/run/netns/{name}")
    };
    let file = File::open(&path)
        .with_context(|| format!("opening {path} (does network namespace {name} exist?)"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .context("entering the namespace (needs CAP_SYS_ADMIN)")?;
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread inside namespace {name} panicked"))?
    })
}

/// A named network namespace (`ip netns add`), deleted on drop together with
/// every process still inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Takes ownership of an existing namespace (to remove it on drop).
    pub fn adopt(name: &str) -> Self {
        Netns {
            name: name.to_string(),
        }
    }
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        sh("ip", ["netns", "add", name]).context("creating a network namespace (needs root)")?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> <program> <args>` as a command to configure further.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs a program inside the namespace; fails with its stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        sh("ip", all)
    }

    /// `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        sh("ip", all)
    }

    /// Runs `f` on a fresh thread that has entered this namespace. Sockets
    /// created there stay in this namespace for their whole life, wherever
    /// they are used afterwards.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).context("entering the namespace")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread inside namespace panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever is left inside, then remove the namespace: what
        // `ip netns pids` and `ip netns del` do, without starting `ip` twice.
        use std::os::unix::fs::MetadataExt;
        let path = format!("/run/netns/{}", self.name);
        let Ok(ns) = std::fs::metadata(&path) else {
            return;
        };
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for e in procs.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                    continue;
                };
                if std::fs::metadata(e.path().join("ns/net"))
                    .is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = nix::mount::umount2(path.as_str(), nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&path);
    }
}
