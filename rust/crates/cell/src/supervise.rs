//! Starting, finding and stopping the instance's processes.
//!
//! Each process runs in its own session (so a Ctrl-C in the user's terminal
//! reaches `cell`, which decides, not the VMs) with its output in
//! `ROLE.log`. Its pid file holds the pid *and* the process's start time, so a
//! pid recycled after a crash is never mistaken for the VM and never killed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::backend::Launch;
use crate::signals::{Signals, unblocked};
use crate::state::{Layout, write_atomic};

/// What identifies a process beyond its pid: its start time.
pub fn identity(pid: i32) -> Option<String> {
    if cfg!(target_os = "linux") {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 22 (starttime), counted after the `(comm)` field, which may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let start = rest.split(' ').nth(19)?;
        // A zombie has exited: it is not running.
        if rest.starts_with('Z') {
            return None;
        }
        Some(start.to_string())
    } else {
        let out = Command::new("ps")
            .args(["-o", "lstart=,stat=", "-p", &pid.to_string()])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!s.is_empty() && !s.ends_with('Z')).then_some(s.rsplit_once(' ')?.0.trim().to_string())
    }
}

/// A process recorded in a pid file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// No pid file: never started or cleanly stopped.
    None,
    Running(i32),
    /// The pid file names a process that is gone (crashed or killed).
    Dead(i32),
}

pub fn recorded(layout: &Layout, role: &str) -> Recorded {
    let Ok(text) = fs::read_to_string(layout.pidfile(role)) else {
        return Recorded::None;
    };
    let mut it = text.split_whitespace();
    let (Some(pid), Some(id)) = (it.next().and_then(|p| p.parse::<i32>().ok()), it.next()) else {
        return Recorded::Dead(0);
    };
    match identity(pid) {
        Some(now) if now == id && pid > 0 => Recorded::Running(pid),
        _ => Recorded::Dead(pid),
    }
}

/// A started process; the pid file is written.
pub struct Started {
    pub role: &'static str,
    pub child: Child,
}

/// Starts `launch` in the instance directory.
pub fn start(layout: &Layout, launch: &Launch) -> anyhow::Result<Started> {
    let log = layout.log(launch.role);
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .current_dir(&layout.dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    unblocked(&mut cmd);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            })
        };
    }
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "`{}` is not installed or not on PATH; `cell doctor` says how to get it",
                launch.program.display()
            )
        } else {
            anyhow::anyhow!("starting {}: {e}", launch.program.display())
        }
    })?;
    let pid = child.id() as i32;
    let id = identity(pid).unwrap_or_default();
    write_atomic(
        &layout.pidfile(launch.role),
        &format!("{pid} {id}\n"),
        0o600,
    )?;
    Ok(Started {
        role: launch.role,
        child,
    })
}

/// Waits for `paths` to appear while `started` keeps running.
pub fn wait_created(
    layout: &Layout,
    started: &mut Started,
    paths: &[PathBuf],
    timeout: Duration,
    signals: &Signals,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if paths.iter().all(|p| p.exists()) {
            return Ok(());
        }
        if let Some(status) = started.child.try_wait()? {
            bail!(
                "the {} exited ({status}) while starting:\n{}",
                started.role,
                tail(&layout.log(started.role), 20)
            );
        }
        if signals.check().is_err() {
            bail!("interrupted");
        }
        if Instant::now() > deadline {
            bail!(
                "the {} did not create {} within {:?}",
                started.role,
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                timeout
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a log, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asks a qemu VM to power down through its monitor socket.
fn qmp_powerdown(sock: &Path) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(s) = std::os::unix::net::UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return false,
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Greeting, capabilities, then the request.
    if r.read_line(&mut line).is_err() {
        return false;
    }
    let _ = w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n");
    line.clear();
    let _ = r.read_line(&mut line);
    w.write_all(b"{\"execute\":\"system_powerdown\"}\n").is_ok()
}

fn wait_gone(pid: i32, id: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if identity(pid).as_deref() != Some(id) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    identity(pid).as_deref() != Some(id)
}

/// How a stop went.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    NotRunning,
    PoweredOff,
    Terminated,
    Killed,
}

/// Stops the process of `role`: a clean power-off first (qemu, within
/// `grace`), then SIGTERM, then SIGKILL. Removes the pid file.
pub fn stop(layout: &Layout, role: &str, grace: Duration) -> anyhow::Result<Stopped> {
    let pidfile = layout.pidfile(role);
    let result = match recorded(layout, role) {
        Recorded::None | Recorded::Dead(_) => Stopped::NotRunning,
        Recorded::Running(pid) => {
            let id = identity(pid).unwrap_or_default();
            let qmp = layout.path(&format!("{role}.qmp"));
            if !grace.is_zero() && qmp_powerdown(&qmp) && wait_gone(pid, &id, grace) {
                Stopped::PoweredOff
            } else {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                if wait_gone(pid, &id, Duration::from_secs(5)) {
                    Stopped::Terminated
                } else {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    if !wait_gone(pid, &id, Duration::from_secs(5)) {
                        bail!("{role} (pid {pid}) survived SIGKILL; is it stuck in the kernel?");
                    }
                    Stopped::Killed
                }
            }
        }
    };
    let _ = fs::remove_file(&pidfile);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path(), "t");
        l.create_dir().unwrap();
        (d, l)
    }

    fn sleeper(role: &'static str, secs: &str) -> Launch {
        Launch {
            role,
            program: "sleep".into(),
            args: vec![secs.into()],
            creates: vec![],
        }
    }

    #[test]
    fn a_started_process_is_recorded_found_and_stopped() {
        let (_d, l) = layout();
        let mut s = start(&l, &sleeper("firewall", "30")).unwrap();
        let pid = s.child.id() as i32;
        assert_eq!(recorded(&l, "firewall"), Recorded::Running(pid));
        assert_eq!(
            stop(&l, "firewall", Duration::ZERO).unwrap(),
            Stopped::Terminated
        );
        let _ = s.child.wait();
        assert_eq!(recorded(&l, "firewall"), Recorded::None);
        assert!(!l.pidfile("firewall").exists());
        assert_eq!(
            stop(&l, "firewall", Duration::ZERO).unwrap(),
            Stopped::NotRunning
        );
    }

    #[test]
    fn a_killed_process_shows_as_dead_and_a_recycled_pid_is_not_trusted() {
        let (_d, l) = layout();
        let mut s = start(&l, &sleeper("agent", "30")).unwrap();
        let pid = s.child.id() as i32;
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        let _ = s.child.wait();
        assert_eq!(recorded(&l, "agent"), Recorded::Dead(pid));
        // A pid file naming a live process with another start time (pid reuse):
        let me = std::process::id() as i32;
        fs::write(l.pidfile("agent"), format!("{me} 1\n")).unwrap();
        assert_eq!(recorded(&l, "agent"), Recorded::Dead(me));
        // Stopping it must not signal us.
        assert_eq!(
            stop(&l, "agent", Duration::ZERO).unwrap(),
            Stopped::NotRunning
        );
        // Garbage in the pid file is a dead record, not a crash.
        fs::write(l.pidfile("agent"), "garbage").unwrap();
        assert_eq!(recorded(&l, "agent"), Recorded::Dead(0));
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed() {
        let (_d, l) = layout();
        let launch = Launch {
            role: "relay",
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "trap '' TERM; while :; do sleep 0.1; done".into(),
            ],
            creates: vec![],
        };
        let mut s = start(&l, &launch).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(stop(&l, "relay", Duration::ZERO).unwrap(), Stopped::Killed);
        let _ = s.child.wait();
    }

    #[test]
    fn an_early_exit_is_reported_with_the_log() {
        let (_d, l) = layout();
        let launch = Launch {
            role: "firewall",
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo 'qemu: could not bind port' >&2; exit 1".into(),
            ],
            creates: vec![l.path("link.sock")],
        };
        let mut s = start(&l, &launch).unwrap();
        let sig = Signals {
            got: Default::default(),
            child: Default::default(),
        };
        let e = wait_created(&l, &mut s, &launch.creates, Duration::from_secs(5), &sig)
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not bind port"), "{e}");
        let missing = start(
            &l,
            &Launch {
                program: "/nonexistent/qemu".into(),
                ..launch
            },
        );
        let e = missing.err().unwrap().to_string();
        assert!(e.contains("cell doctor"), "{e}");
    }
}
