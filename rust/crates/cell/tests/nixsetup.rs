//! `cell doctor` against the real Nix of this machine: each way a Nix cannot
//! build the VMs is recognised, with its fix, and what doctor says agrees with
//! what a real `nix build` then does. Every case brings its own Nix
//! configuration (`common::own_nix`), so none depends on how this machine
//! was set up.

use std::path::Path;
use std::process::{Command, Output};

mod common;

fn nix_installed() -> bool {
    let ok = Command::new("nix")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI has nix (scripts/dev deps installs nix-bin)"
        );
        eprintln!("SKIPPED: nix is not installed (apt-get install nix-bin)");
    }
    ok
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn doctor(conf: &Path, extra: &str, state: &Path) -> String {
    let o = common::own_nix(&mut Command::new(env!("CARGO_BIN_EXE_cell")), conf, extra)
        .arg("doctor")
        .env("CELL_STATE_DIR", state)
        .output()
        .unwrap();
    text(&o)
}

/// A real build of a derivation no store has yet (a new name each time, so
/// Nix cannot skip the build and with it the build-user check).
fn nix_build(conf: &Path, extra: &str) -> Output {
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    common::own_nix(&mut Command::new("nix"), conf, extra)
        .args(["build", "--no-link", "--impure", "--expr"])
        .arg(format!(
            r#"derivation {{ name = "cell-doctor-{nonce}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; }}"#
        ))
        .output()
        .unwrap()
}

fn fail_lines(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|l| l.starts_with("FAIL nix"))
        .collect()
}

/// As root with Debian's nix-bin alone, Nix wants a `nixbld` group nobody
/// made: doctor says so and how to fix it, and a real build fails the same
/// way. With the fix (`build-users-group =`) doctor is content and the build
/// succeeds. Flakes off is named with the line to add.
#[test]
fn doctor_names_what_stops_nix_from_building() {
    if !nix_installed() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("nix");
    let state = d.path().join("state");
    if nix::unistd::Uid::effective().is_root() {
        let missing = "build-users-group = cell-test-no-such-group";
        let report = doctor(&conf, missing, &state);
        assert!(
            report.contains(
                "FAIL nix build users: the group `cell-test-no-such-group` (build-users-group) does not exist"
            ) && report.contains("groupadd -r cell-test-no-such-group")
                && report.contains("`build-users-group =` in /etc/nix/nix.conf"),
            "{report}"
        );
        let built = nix_build(&conf, missing);
        assert!(!built.status.success(), "{}", text(&built));
        assert!(
            text(&built).contains(
                "'cell-test-no-such-group' specified in 'build-users-group' does not exist"
            ),
            "{}",
            text(&built)
        );
        // The fix doctor printed, applied: a clean report and a real build.
        let report = doctor(&conf, "", &state);
        assert_eq!(fail_lines(&report), Vec::<&str>::new(), "{report}");
        assert!(report.contains("ok   nix flakes enabled"), "{report}");
        let built = nix_build(&conf, "");
        assert!(built.status.success(), "{}", text(&built));
    }
    let report = doctor(&conf, "experimental-features = nix-command", &state);
    assert!(
        report.contains("FAIL nix flakes enabled")
            && report.contains("add `experimental-features = nix-command flakes`"),
        "{report}"
    );
}

/// An ordinary user who cannot write /nix and has no nix-daemon: doctor says
/// the daemon is not running and how to start it; a real build fails too.
/// (Run as `nobody`, which every Debian has; needs root to switch to it.)
#[test]
fn doctor_names_a_missing_daemon_for_an_ordinary_user() {
    if !nix_installed() {
        return;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: switching to an unprivileged user needs root");
        return;
    }
    if std::os::unix::net::UnixStream::connect("/nix/var/nix/daemon-socket/socket").is_ok() {
        eprintln!("SKIPPED: a nix-daemon runs on this machine");
        return;
    }
    // Everything the unprivileged user touches lives in a directory it can read.
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        d.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let bin = d.path().join("cell");
    std::fs::copy(env!("CARGO_BIN_EXE_cell"), &bin).unwrap();
    let conf = d.path().join("nix");
    let run = |program: &Path, args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(program)
            .args(args)
            .env("HOME", d.path())
            .env("XDG_CACHE_HOME", d.path().join("cache"))
            .env("CELL_STATE_DIR", d.path().join("state"));
        common::own_nix(&mut cmd, &conf, "").output().unwrap()
    };
    let report = text(&run(&bin, &["doctor"]));
    assert!(
        report.contains("FAIL nix builds through the nix-daemon")
            && report.contains("not running")
            && report.contains("systemctl enable --now nix-daemon.socket"),
        "{report}"
    );
    let built = run(
        Path::new("/usr/bin/env"),
        &[
            "nix",
            "build",
            "--no-link",
            "--impure",
            "--expr",
            r#"derivation { name = "cell-doctor-user"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }"#,
        ],
    );
    assert!(!built.status.success(), "{}", text(&built));
}
