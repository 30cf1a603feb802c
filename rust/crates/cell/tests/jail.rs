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
    jail_env(lab, cell, proxy, &[], flags, cmd)
}

/// [`jail`] with variables in cell's own environment.
fn jail_env(
    lab: &Lab,
    cell: &PathBuf,
    proxy: &PathBuf,
    env: &[(&str, &str)],
    flags: &[&str],
    cmd: &[&str],
) -> Output {
    let mut c = lab.firewall.command(cell);
    c.envs(env.iter().copied());
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

/// `--secret` and `--secret-cmd`: the command holds the placeholder only; the
/// value reaches the scoped host, in the header the command put the
/// placeholder in; the placeholder to another allowed host is refused before
/// anything is sent; the value never shows in the command's output, the
/// event log or any command line. A source that cannot be read stops the
/// jail before it starts, naming the secret and the fix.
#[test]
fn jail_secrets_reach_their_host_only_and_the_command_holds_the_placeholder() {
    if skip_unless_available() {
        return;
    }
    let Some((cell, proxy)) = bins() else { return };
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
    let env_value = "jail-env-secret-4d1c9e7b";
    let cmd_value = "jail-cmd-secret-a81f02c6";
    let script = r#"
        echo "env=$JAIL_KEY cmd=$CMD_KEY"
        curl -sS --max-time 10 -o /dev/null -w 'scoped=%{http_code}\n' -H "authorization: Bearer $JAIL_KEY" -H "x-api-key: $CMD_KEY" https://api.example.test/record
        curl -sS --max-time 10 -o /dev/null -w 'other=%{http_code}\n' -H "x-api-key: $JAIL_KEY" https://other.example.test/record
        ps -eo args
        for p in $(pgrep -x cell-proxy); do echo "proxy-env:"; tr '\0' '\n' < /proc/$p/environ; done
    "#;
    // The command prints the value without holding it in its arguments (as
    // `gh auth token` or `pass show` would), so no command line shows it.
    let store = tempfile::tempdir().unwrap();
    std::fs::write(store.path().join("value"), cmd_value).unwrap();
    let cmd_flag = format!(
        "CMD_KEY@api.example.test=cat {}",
        store.path().join("value").display()
    );
    let out = jail_env(
        &lab,
        &cell,
        &proxy,
        &[("JAIL_KEY", env_value)],
        &[
            "--keep",
            "--allow",
            "other.example.test",
            "--secret",
            "JAIL_KEY@api.example.test",
            "--secret-cmd",
            &cmd_flag,
        ],
        &["sh", "-c", script],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("env=cell-placeholder-jail_key cmd=cell-placeholder-cmd_key"),
        "the command holds placeholders: {stdout}"
    );
    assert!(stdout.contains("scoped=200"), "{stdout}\n{stderr}");
    assert!(stdout.contains("other=403"), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("proxy-env:"),
        "the daemon's environment was read: {stdout}"
    );

    // What the fake internet received: the values, at the scoped host only.
    let got = web.recorded();
    assert_eq!(
        got.len(),
        1,
        "one request arrived: {:?}",
        got.iter().map(|r| &r.host).collect::<Vec<_>>()
    );
    assert_eq!(got[0].host, "api.example.test");
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {env_value}").as_bytes())
    );
    assert_eq!(got[0].header("x-api-key"), Some(cmd_value.as_bytes()));
    for r in &got {
        assert!(
            !String::from_utf8_lossy(&r.all_bytes()).contains("cell-placeholder-"),
            "no placeholder went upstream"
        );
    }

    // Nowhere else: the command's output (ps included), cell's own output,
    // and every file of the kept run directory (events, proxy log, secrets.json).
    for v in [env_value, cmd_value] {
        assert!(!stdout.contains(v) && !stderr.contains(v), "{v} printed");
    }
    let kept = stderr
        .lines()
        .find_map(|l| l.strip_prefix("cell jail: kept "))
        .expect("--keep says where");
    let run = PathBuf::from(kept.trim());
    let mut files = 0;
    let mut stack = vec![run.clone()];
    let mut events = String::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                files += 1;
                let text = String::from_utf8_lossy(&bytes);
                for v in [env_value, cmd_value] {
                    assert!(!text.contains(v), "{v} in {}", p.display());
                }
                if p.ends_with("events.jsonl") {
                    events = text.into_owned();
                }
            }
        }
    }
    assert!(files >= 3, "the run directory was read ({files} files)");
    assert!(
        events
            .lines()
            .any(|l| l.contains(r#""reason":"secret-scope""#)
                && l.contains("jail_key")
                && l.contains("other.example.test")),
        "the refusal is an event naming the secret: {events}"
    );
    std::fs::remove_dir_all(&run).unwrap();

    // A source that cannot be read: nothing starts, the fix is named.
    let missing = jail_env(
        &lab,
        &cell,
        &proxy,
        &[],
        &["--secret", "CELL_TEST_UNSET_KEY@api.example.test"],
        &["true"],
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(125), "{err}");
    assert!(
        err.contains("CELL_TEST_UNSET_KEY") && err.contains("export CELL_TEST_UNSET_KEY="),
        "{err}"
    );
    for bad in ["NOHOST", "1BAD@api.example.test", "K@"] {
        let o = jail(&lab, &cell, &proxy, &["--secret", bad], &["true"]);
        assert_eq!(o.status.code(), Some(125), "--secret {bad}");
    }
    assert_eq!(web.recorded().len(), 1, "nothing more arrived");
}

/// `cell jail --spy FILE`: the exchanges with the allowed provider are
/// recorded into FILE (the secret as its placeholder), and `cell spy --file`
/// decodes them: model, tokens, stop reason, the text and the tool call.
#[test]
fn jail_spy_records_the_provider_exchange_and_cell_spy_decodes_it() {
    if skip_unless_available() {
        return;
    }
    let Some((cell, proxy)) = bins() else { return };
    let mut lab = Lab::new().unwrap();
    lab.start_resolver(&[("api.example.test", WEB_V4)]).unwrap();
    let _web = lab
        .https_server(&[("api.example.test", CertKind::Valid)])
        .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let store = out_dir.path().join("spy.jsonl");
    let value = "jail-spy-secret-0b5e7d21c9";
    let body = r#"{"model":"claude-lab-1","max_tokens":64,"system":"Be brief.","stream":true,"messages":[{"role":"user","content":"list the files"}]}"#;
    let script = format!(
        "curl -sS --max-time 10 -H 'content-type: application/json' -H \"x-api-key: $KEY\" -d '{body}' https://api.example.test/v1/messages"
    );
    let out = jail_env(
        &lab,
        &cell,
        &proxy,
        &[("KEY", value)],
        &[
            "--secret",
            "KEY@api.example.test",
            "--spy",
            store.to_str().unwrap(),
        ],
        &["sh", "-c", &script],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("message_stop"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&store).expect("the store outlives the jail");
    assert!(!text.contains(value), "the value is in the spy store");
    assert!(
        text.contains(r#""x-api-key":null"#),
        "the key header is recorded by name only: {text}"
    );

    let spy = std::process::Command::new(&cell)
        .args(["spy", "--file", store.to_str().unwrap()])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&spy.stdout);
    assert!(
        spy.status.success(),
        "{}",
        String::from_utf8_lossy(&spy.stderr)
    );
    let head = shown.lines().next().unwrap_or("");
    for want in [
        "anthropic",
        "claude-lab-1",
        "200 POST /v1/messages",
        "(first token ",
        "tool_use",
        "tokens in 21 out 9",
    ] {
        assert!(head.contains(want), "{want} not in {head:?}\n{shown}");
    }
    for want in [
        "system     Be brief.",
        "user       list the files",
        "assistant  Checking.",
        "tool call  run {\"cmd\":\"ls\"}",
    ] {
        assert!(shown.contains(want), "{want} not in\n{shown}");
    }
    let json = std::process::Command::new(&cell)
        .args(["spy", "--json", "--file", store.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["toolCalls"][0]["name"], "run");
    assert_eq!(v["usage"]["output"], 9);
    assert!(v["firstByteMs"].as_f64().unwrap() < v["durationMs"].as_f64().unwrap());

    // `--spy` without FILE: the store is in the run directory, whose path is
    // said at the start; it is removed at the end unless --keep.
    let recording = |stderr: &str| -> std::path::PathBuf {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("cell jail: recording into "))
            .unwrap_or_else(|| panic!("where the store is was not said: {stderr}"));
        line["cell jail: recording into ".len()..]
            .split(" (")
            .next()
            .unwrap()
            .into()
    };
    for keep in [false, true] {
        let mut flags = vec!["--secret", "KEY@api.example.test", "--spy"];
        if keep {
            flags.push("--keep");
        }
        let out = jail_env(
            &lab,
            &cell,
            &proxy,
            &[("KEY", value)],
            &flags,
            &["sh", "-c", &script],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let store = recording(&stderr);
        assert_eq!(store.file_name().unwrap(), "spy.jsonl", "{stderr}");
        if keep {
            let text = std::fs::read_to_string(&store).expect("kept with --keep");
            assert!(
                text.contains("claude-lab-1") && !text.contains(value),
                "{text}"
            );
            std::fs::remove_dir_all(store.parent().unwrap()).unwrap();
        } else {
            assert!(
                stderr.contains("removed at the end: --keep keeps it"),
                "{stderr}"
            );
            assert!(!store.exists(), "{} outlived the jail", store.display());
        }
    }
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
