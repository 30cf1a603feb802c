//! The namespace lab: three network namespaces — agent, firewall, internet —
//! joined by veth links, with the real nftables ruleset and the real
//! `cell-proxy` in the firewall namespace and recording fake services in the
//! internet namespace. Tests use it to prove what the agent can and cannot
//! reach; `cell-lab` (the binary) brings it up for humans.
//!
//! Each lab has unique namespace names, so tests run in parallel; everything
//! is removed when the [`Lab`] is dropped, also when a test panics. After a
//! crash (SIGKILL), `cell-lab gc` removes what is left.

pub mod bench;
pub mod fake;
pub mod https;
pub mod lab;
pub mod probe;

pub use cell_netns::Netns;
pub use lab::{Lab, NS_PREFIX, Wire};

/// Namespace helpers, and `gc` for what crashed runs left behind.
pub mod netns {
    pub use cell_netns::*;

    /// Removes namespaces left by lab runs whose process is gone (after a
    /// SIGKILL, say). Returns their names.
    pub fn gc() -> anyhow::Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in list()? {
            let name = name.as_str();
            let Some(rest) = name.strip_prefix(crate::lab::NS_PREFIX) else {
                continue;
            };
            let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
            let alive = pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                drop(Netns::adopt(name));
                removed.push(name.to_string());
            }
        }
        Ok(removed)
    }
}

/// Whether this process can build a lab (root, `ip`, `nft`). Tests call this
/// first; outside CI they skip with a message when it says no, in CI they fail.
pub fn available() -> Result<(), String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        return Err("the namespace lab needs root (network namespaces, nftables)".into());
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("sysctl", "procps"),
    ] {
        let ok = std::process::Command::new(tool).arg("-V").output().is_ok()
            || std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok();
        if !ok {
            return Err(format!("`{tool}` is missing: apt-get install {pkg}"));
        }
    }
    Ok(())
}

/// Skips the calling test (returns `true`) when no lab can be built here,
/// unless `CI` is set, where a missing lab is a failure.
pub fn skip_unless_available() -> bool {
    match available() {
        Ok(()) => false,
        Err(why) if std::env::var_os("CI").is_some() => panic!("lab unavailable in CI: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            true
        }
    }
}
