//! A full disk: `cell` refuses to boot with the reason and the fix, and a
//! change to the overlay that cannot be written leaves the old overlay whole.
//!
//! Uses a small tmpfs as the state directory (needs root to mount; CI runs
//! as root, elsewhere the test says SKIPPED). The mount is removed even when
//! the test fails.

mod common;
use common::cell;
use std::path::PathBuf;
use std::process::Command;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_explained_and_loses_nothing() {
    if !nix::unistd::Uid::effective().is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("CI runs as root; this test mounts a tmpfs");
        }
        eprintln!("SKIPPED: needs root to mount a small tmpfs");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m,mode=0700",
            "cell-test",
            state.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs failed");
    let _mount = Mount(state.clone());

    // Specs and a baseline policy outside the small disk.
    let specs = work.path().join("specs");
    std::fs::create_dir(&specs).unwrap();
    for (role, link, uplink) in [
        ("firewall", "02:ce:11:00:00:01", Some("02:ce:11:00:01:01")),
        ("agent", "02:ce:11:00:00:02", None),
    ] {
        let spec = serde_json::json!({
            "version": 1, "role": role, "system": "x86_64-linux",
            "kernel": "/nonexistent/vmlinuz", "initrd": "/nonexistent/initrd",
            "cmdline": [], "vcpu": 1, "mem": 256, "linkMac": link, "uplinkMac": uplink,
        });
        std::fs::write(specs.join(format!("{role}.json")), spec.to_string()).unwrap();
    }
    std::fs::write(
        specs.join("policy.json"),
        r#"{"https":[{"host":"api.anthropic.com"}]}"#,
    )
    .unwrap();

    // Booting on a disk with less than 2 GiB free is refused, with the fix.
    let out = cell(
        &state,
        &[
            "start",
            "-i",
            "full",
            "--specs",
            specs.to_str().unwrap(),
            "--accel",
            "tcg",
            "--no-wait",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("MiB free") && text.contains("cell destroy"),
        "{text}"
    );
    let dir = state.join("instances/full");
    assert!(!dir.join("firewall.pid").exists(), "nothing was started");

    // An overlay change that cannot be written keeps the old overlay whole.
    let first = cell(&state, &["allow", "-i", "full", "https", "pypi.org"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = std::fs::read_to_string(dir.join("overlay.json")).unwrap();
    assert!(before.contains("pypi.org"));
    // Fill the disk.
    let mut filler = std::fs::File::create(state.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    let host = format!("{}.example.com", "x".repeat(60));
    let mut args = vec!["allow", "-i", "full", "https", host.as_str()];
    let paths: Vec<String> = (0..40).map(|n| format!("/some/long/path/{n}/**")).collect();
    for p in &paths {
        args.extend(["--path", p.as_str()]);
    }
    let out = cell(&state, &args);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the write cannot have succeeded: {text}"
    );
    assert!(text.contains("unchanged"), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.join("overlay.json")).unwrap(),
        before,
        "the overlay is whole and as it was"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
