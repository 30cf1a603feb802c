//! The command line as a user meets it: `--check`, `--print-ruleset`, errors.

use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cell-proxy"))
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A valid policy checks with exit 0 and a summary; an invalid one exits 1
/// and lists every problem with its path, once, on stderr.
#[test]
fn check_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        &dir,
        "good.json",
        r#"{"https":[{"host":"api.example.com"}],"tcp":[{"host":"git.example.com","ports":[22]}]}"#,
    );
    let out = proxy()
        .args(["--check", "--policy"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("valid") && stdout.contains("1 https, 1 tcp"),
        "{stdout}"
    );

    let bad = write(
        &dir,
        "bad.json",
        r#"{"https":[{"host":"*"},{"host":"a.com","paths":["v1"]}],"tcp":[{"host":"b.com","ports":[]}]}"#,
    );
    let out = proxy()
        .args(["--check", "--policy"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    for path in ["https[0].host", "https[1].paths[0]", "tcp[0].ports"] {
        assert_eq!(stderr.matches(path).count(), 1, "{path} once in: {stderr}");
    }
}

/// A syntax error names the file and the place; a missing file says so.
#[test]
fn check_syntax_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let typo = write(&dir, "typo.json", r#"{"https":[{"hots":"a.com"}]}"#);
    let out = proxy()
        .args(["--check", "--policy"])
        .arg(&typo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("typo.json: https[0].hots: unknown field `hots`"),
        "{stderr}"
    );

    let out = proxy()
        .args(["--check", "--policy", "/nonexistent/policy.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/policy.json"));

    let overlay = write(&dir, "overlay.json", r#"{"dns":{}}"#);
    let good = write(&dir, "good.json", "{}");
    let out = proxy()
        .args(["--check", "--policy"])
        .arg(&good)
        .arg("--overlay")
        .arg(&overlay)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overlay.json"),
        "the overlay is named"
    );
}

/// `--print-ruleset` prints the nft JSON for the given interface and address.
#[test]
fn print_ruleset() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "p.json",
        r#"{"https":[{"host":"api.example.com","ports":[443,8443]}]}"#,
    );
    let out = proxy()
        .args([
            "--print-ruleset",
            "--agent-iface",
            "eth7",
            "--listen",
            "10.1.2.3",
            "--agent-addr",
            "10.1.2.4",
            "--policy",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v.to_string();
    assert!(text.contains("eth7") && text.contains("10.1.2.3") && text.contains("8443"));

    let out = proxy()
        .arg("--print-ruleset")
        .arg("--policy")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "clap names the missing flags");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agent-iface"));
}

/// `--install-overlay`: a valid overlay is written whole and the daemon is
/// asked to reload; an invalid one is refused and the old file stays.
#[test]
fn install_overlay_validates_writes_and_reloads() {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let policy = write(
        &dir,
        "policy.json",
        r#"{"https":[{"host":"api.example.com"}]}"#,
    );
    let overlay = dir.path().join("overlay.json");
    let control = dir.path().join("control");
    let listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
    let daemon = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        (&s).write_all(b"{\"ok\":true,\"event\":{\"decision\":\"applied\"}}\n")
            .unwrap();
        line
    });
    let run = |text: &str| {
        let mut c = proxy()
            .arg("--policy")
            .arg(&policy)
            .arg("--overlay")
            .arg(&overlay)
            .arg("--control")
            .arg(&control)
            .args(["--install-overlay", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    };
    let good = r#"{"tcp":[{"host":"db.example","ports":[5432]}]}"#;
    let out = run(good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    assert_eq!(daemon.join().unwrap().trim(), r#"{"op":"reload"}"#);
    assert_eq!(std::fs::read_to_string(&overlay).unwrap(), good);

    let out = run(r#"{"https":[{"host":"*"}]}"#);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("overlay: https[0].host") && stderr.contains("old one stays"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&overlay).unwrap(),
        good,
        "the old overlay is kept"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
