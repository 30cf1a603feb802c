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
