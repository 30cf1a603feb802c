//! `cell jail` end to end: real curl inside the jail, the real proxy, a fake
//! internet. The lab's firewall namespace plays "the host" (it has the uplink).
#![cfg(target_os = "linux")] // cell jail is Linux only (network namespaces)

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;

use cell_lab::https::CertKind;
use cell_lab::lab::WEB_V4;
use cell_lab::{Lab, skip_unless_available};

fn bins() -> Option<(PathBuf, PathBuf)> {
    let cell = PathBuf::from(env!("CARGO_BIN_EXE_cell"));
    let proxy = cell.with_file_name("cell-proxy");
    if !proxy.exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{} missing: build the workspace (cargo nextest run --workspace)",
                proxy.display()
            );
        }
        eprintln!(
            "SKIPPED: {} not built; run the workspace tests",
            proxy.display()
        );
        return None;
    }
    Some((cell, proxy))
}

/// Runs `cell jail` (the lab firewall namespace as its host); checks that
/// this jail (named after its pid: `ip netns exec` execs it) left nothing behind.
fn jail(lab: &Lab, cell: &PathBuf, proxy: &PathBuf, flags: &[&str], cmd: &[&str]) -> Output {
    let mut c = lab.firewall.command(cell);
    c.arg("jail").arg("--proxy").arg(proxy);
    c.args(["--dns-upstream", "192.0.2.53"])
        .arg("--upstream-ca")
        .arg(lab.dir.join("internet-ca.pem"));
    c.args(flags).arg("--").args(cmd);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        leftovers(pid).is_empty(),
        "jail {pid} left behind: {:?}",
        leftovers(pid)
    );
    out
}

/// Namespaces and /etc/netns entries of the jail with this pid.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("cell-jail-{pid}-");
    let ns = cell_lab::netns::list().unwrap().join("\n");
    let mut left: Vec<String> = ns
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    if let Ok(dir) = std::fs::read_dir("/etc/netns") {
        left.extend(
            dir.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix)),
        );
    }
    left
}

/// `curl URL` in a jail that allows api.example.test.
fn curl(lab: &Lab, cell: &PathBuf, proxy: &PathBuf, url: &str) -> Output {
    jail(
        lab,
        cell,
        proxy,
        &["--allow", "api.example.test"],
        &["curl", "-sS", "--max-time", "10", url],
    )
}

/// curl reaches an allowed host through the jail (intercepted, trusted via the
/// CA environment variables), fails fast on a denied one, and the command's
/// exit status comes back; nothing is left behind.
#[test]
fn jail_runs_commands_behind_the_firewall() {
    if skip_unless_available() {
        return;
    }
    let Some((cell, proxy)) = bins() else { return };
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!("curl is needed for the jail test (apt-get install curl)");
        }
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    let mut lab = Lab::new().unwrap();
    let records: Vec<(&str, Ipv4Addr)> =
        vec![("api.example.test", WEB_V4), ("other.example.test", WEB_V4)];
    lab.start_resolver(&records).unwrap();
    let web = lab
        .https_server(&[
            ("api.example.test", CertKind::Valid),
            ("other.example.test", CertKind::Valid),
        ])
        .unwrap();

    let ok = curl(&lab, &cell, &proxy, "https://api.example.test/echo");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "status {:?}\nstdout {stdout}\nstderr {}",
        ok.status,
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.starts_with("GET /echo api.example.test"), "{stdout}");

    let denied = curl(&lab, &cell, &proxy, "https://other.example.test/echo");
    assert_eq!(
        denied.status.code(),
        Some(6),
        "curl: could not resolve host; {}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let direct = curl(&lab, &cell, &proxy, "https://203.0.113.10/echo");
    assert_eq!(
        direct.status.code(),
        Some(7),
        "curl: connection refused; {}",
        String::from_utf8_lossy(&direct.stderr)
    );

    let status = jail(&lab, &cell, &proxy, &[], &["sh", "-c", "exit 42"]);
    assert_eq!(
        status.status.code(),
        Some(42),
        "the command's status is the jail's"
    );

    let bad = jail(&lab, &cell, &proxy, &["--allow", "*"], &["true"]);
    assert_eq!(bad.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("allowAnyHost"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    assert_eq!(
        web.seen(),
        vec!["GET /echo api.example.test HTTP/2.0".to_string()],
        "only the allowed request arrived"
    );
}

/// Ctrl-C (SIGINT to the foreground process group, as a terminal sends it) and
/// SIGTERM to the jail both end the command and leave nothing behind.
#[test]
fn jail_cleans_up_on_ctrl_c_and_sigterm() {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::time::{Duration, Instant};
    if skip_unless_available() {
        return;
    }
    let Some((cell, proxy)) = bins() else { return };
    let lab = Lab::new().unwrap();
    for (signal, to_group) in [
        (nix::sys::signal::Signal::SIGINT, true),
        (nix::sys::signal::Signal::SIGTERM, false),
    ] {
        let mut c = lab.firewall.command(&cell);
        c.arg("jail").arg("--proxy").arg(&proxy).args([
            "--dns-upstream",
            "192.0.2.53",
            "--",
            "sleep",
            "30",
        ]);
        c.process_group(0);
        let mut child = c.spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // Wait until the jail is up (its namespaces exist), then signal.
        let start = Instant::now();
        while leftovers(pid.as_raw() as u32).len() < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "jail never came up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        let target = if to_group {
            nix::unistd::Pid::from_raw(-pid.as_raw())
        } else {
            pid
        };
        nix::sys::signal::kill(target, signal).unwrap();
        let status = child.wait().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{signal:?} took {:?}",
            start.elapsed()
        );
        assert_eq!(
            status.code(),
            Some(128 + signal as i32),
            "{signal:?}: {status:?} {:?}",
            status.signal()
        );
        let left = leftovers(pid.as_raw() as u32);
        assert!(left.is_empty(), "{signal:?} left behind: {left:?}");
    }
}
