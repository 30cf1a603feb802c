//! What the tests that boot tiny VMs share (tests/boot.rs, tests/boot_real.rs).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// A command's stdout and stderr, together.
pub fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// [`text_of`] a command that must have succeeded.
pub fn ok(o: &Output) -> String {
    let text = text_of(o);
    assert!(o.status.success(), "failed ({:?}): {text}", o.status);
    text
}

/// Every qemu process of this instance (by the `-name cell-INSTANCE-ROLE`).
pub fn qemu_processes(instance: &str) -> Vec<i32> {
    let needle = format!("cell-{instance}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("qemu-system") && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Kills the instance's qemu processes and removes its state, even on
/// failure; on failure it first prints the consoles' tails, the only
/// witness of what the VMs did.
pub struct Cleanup {
    pub instance: String,
    pub state: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = self.state.join("instances").join(&self.instance);
            for role in ["firewall", "agent"] {
                let text = std::fs::read_to_string(dir.join(format!("{role}.console")))
                    .unwrap_or_else(|e| format!("(unreadable: {e})"));
                let tail: Vec<&str> = text.lines().rev().take(80).collect();
                eprintln!("--- {role}.console (last {} lines) ---", tail.len());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for pid in qemu_processes(&self.instance) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// The text of `path` once it holds `marker`; fails after `timeout`.
pub fn wait_for(path: &Path, marker: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(marker) {
            return text;
        }
        assert!(
            start.elapsed() < timeout,
            "`{marker}` not in {} after {timeout:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
