//! The real boot test: two tiny VMs under qemu TCG, started by `cell`'s own
//! qemu backend, prove the wiring the design depends on.
//!
//! The VMs are a Debian kernel and a busybox initramfs built from Debian
//! packages by `tests/tinyvm/build-assets.sh` (cached in the target dir). A
//! per-test cpio adds each VM's script. What is proven:
//!
//! - the agent VM reaches the firewall VM over the private link (stream
//!   netdev over `link.sock`), and the link is the agent's only NIC;
//! - the agent cannot reach the host: a listener on the host's loopback,
//!   which the firewall reaches through its uplink (the positive control),
//!   never hears from the agent; nor does anything else answer the agent;
//! - the host reaches the firewall's port 22 through the forwarded loopback
//!   port (the control path `cell` uses for SSH);
//! - secrets: a source that cannot be read at start is reported with its
//!   fix and the cell starts anyway; before a session `cell` pushes the
//!   values the firewall lacks, over SSH on the loader's stdin (stand-in
//!   scripts here: the real loader is cell-proxy's, tested on its own);
//!   `cell secrets` and `cell secrets reload` report it, and no file of the
//!   instance holds the value;
//! - `cell status` sees both VMs; a killed VM is reported and `cell start`
//!   repairs it (stale socket and all); `cell stop` and `cell destroy` leave
//!   no process, socket or file behind.
//!
//! Needs qemu-system-x86_64 and apt (CI installs them); elsewhere it skips
//! and says why.

mod common;
use common::cell;
use common::vm::{Cleanup, ok, qemu_processes, text_of, wait_for};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn have_qemu() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs the host CLI's key from the kernel command line (`cell.ssh_key=`,
/// base64url), as the NixOS images' cell-boot-key unit does, and starts
/// dropbear. $1: user, $2: home, $3: uid, $4: listen address.
const SSH_SETUP: &str = include_str!("tinyvm/ssh-setup.sh");

const FIREWALL_SCRIPT: &str = include_str!("tinyvm/firewall.sh");

const AGENT_SCRIPT: &str = include_str!("tinyvm/agent.sh");

fn write_spec(dir: &Path, role: &str, initrd: &Path, vmlinuz: &Path, hostport: u16) {
    let (link, uplink) = match role {
        "firewall" => ("02:ce:11:00:00:01", Some("02:ce:11:00:01:01")),
        _ => ("02:ce:11:00:00:02", None),
    };
    let spec = serde_json::json!({
        "version": 1,
        "role": role,
        "system": "x86_64-linux",
        "kernel": vmlinuz,
        "initrd": initrd,
        "cmdline": ["quiet", "loglevel=3", format!("cell.test_hostport={hostport}")],
        "vcpu": 1,
        "mem": 256,
        "linkMac": link,
        "uplinkMac": uplink,
    });
    std::fs::write(dir.join(format!("{role}.json")), spec.to_string()).unwrap();
}

/// Builds (or reuses) the assets and the two initrds; returns the spec dir.
fn prepare(work: &Path, hostport: u16) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tinyvm");
    let assets = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tinyvm-assets");
    let st = Command::new("bash")
        .arg(here.join("build-assets.sh"))
        .arg(&assets)
        .status()
        .unwrap();
    assert!(st.success(), "building the tiny VM assets failed");
    let specs = work.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    // The Nix baseline `cell policy` and `cell allow` validate against.
    std::fs::write(
        specs.join("policy.json"),
        r#"{"https":[{"host":"api.anthropic.com","methods":["POST"]}],"tcp":[{"host":"github.com","ports":[22]}]}"#,
    )
    .unwrap();
    // The secrets document: one secret from cell's environment.
    std::fs::write(
        specs.join("secrets.json"),
        format!(
            r#"{{"version":1,"secrets":[{{"name":"boot","env":"BOOT_KEY","placeholder":"cell-placeholder-boot","hosts":["api.anthropic.com"],"source":{{"env":"{SECRET_VAR}"}}}}]}}"#
        ),
    )
    .unwrap();
    for (role, script) in [("firewall", FIREWALL_SCRIPT), ("agent", AGENT_SCRIPT)] {
        let dir = work.join(format!("test-{role}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("init.sh"), format!("{SSH_SETUP}{script}")).unwrap();
        let extra = work.join(format!("{role}-test.cpio.gz"));
        let st = Command::new("bash")
            .arg(assets.join("pack-test.sh"))
            .arg(&dir)
            .arg(&extra)
            .status()
            .unwrap();
        assert!(st.success());
        let initrd = specs.join(format!("{role}.initrd"));
        let mut out = std::fs::File::create(&initrd).unwrap();
        for part in [assets.join("base.cpio.gz"), extra] {
            out.write_all(&std::fs::read(part).unwrap()).unwrap();
        }
        write_spec(&specs, role, &initrd, &assets.join("vmlinuz"), hostport);
    }
    specs
}

/// The variable the boot test's secret is read from, and its value.
const SECRET_VAR: &str = "CELL_BOOT_TEST_KEY";
const SECRET_VALUE: &str = "boot-secret-value-5e0c1d";

/// `cell ARGS` with the secret's variable set.
fn cell_with_secret(state: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(args)
        .env("CELL_STATE_DIR", state)
        .env_remove("CELL_INSTANCE")
        .env(SECRET_VAR, SECRET_VALUE)
        .output()
        .unwrap()
}

#[test]
fn two_tiny_vms_wired_by_the_qemu_backend() {
    if !cfg!(target_os = "linux") || std::env::consts::ARCH != "x86_64" {
        eprintln!("SKIPPED: the boot test runs on x86_64 Linux");
        return;
    }
    if !have_qemu() {
        if std::env::var_os("CI").is_some() {
            panic!("qemu-system-x86_64 is required in CI (apt-get install qemu-system-x86)");
        }
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let instance = format!("boot-{}", std::process::id());
    let _cleanup = Cleanup {
        instance: instance.clone(),
        state: state.clone(),
    };

    // The host listener: the firewall must reach it, the agent never.
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let hostport = host.local_addr().unwrap().port();
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let heard = heard.clone();
        std::thread::spawn(move || {
            for conn in host.incoming() {
                let Ok(mut c) = conn else { break };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut s = String::new();
                let _ = c.read_to_string(&mut s);
                heard.lock().unwrap().push(s.trim().to_string());
            }
        });
    }
    let specs = prepare(work.path(), hostport);
    eprintln!("assets ready after {:?}", started.elapsed());

    let i = instance.as_str();
    let specs_arg = specs.to_str().unwrap();
    let boot = Instant::now();
    // `cell start` waits until SSH answers on both VMs: the firewall through
    // the loopback forward, the agent through the firewall.
    let first = ok(&cell(
        &state,
        &[
            "start",
            "-i",
            i,
            "--specs",
            specs_arg,
            "--boot-timeout",
            "3m",
        ],
    ));
    assert!(first.contains("the agent VM: ready"), "{first}");
    if !String::from_utf8_lossy(&cell(&state, &["doctor"]).stdout).contains("ok   KVM usable") {
        assert!(
            first.contains("Falling back to TCG"),
            "the TCG fallback is loud: {first}"
        );
    }
    let dir = state.join("instances").join(i);
    let fw_console = wait_for(
        &dir.join("firewall.console"),
        "FW-UP",
        Duration::from_secs(180),
    );
    let agent_console = wait_for(
        &dir.join("agent.console"),
        "AGENT-DONE",
        Duration::from_secs(180),
    );
    eprintln!("both VMs ran their checks {:?} after start", boot.elapsed());

    // Sockets and keys live in a directory only the user can enter.
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(dir.join("id_ed25519")).unwrap().mode() & 0o077,
            0
        );
    }

    // The private link works, and it is the agent's only NIC.
    assert!(
        agent_console.contains("AGENT-REACHED-FIREWALL"),
        "{agent_console}"
    );
    let nics = agent_console
        .lines()
        .find_map(|l| l.strip_prefix("AGENT-NICS "))
        .unwrap();
    let nics: Vec<&str> = nics.split_whitespace().filter(|n| *n != "lo").collect();
    assert_eq!(nics.len(), 1, "the agent has one NIC: {nics:?}");

    // The positive control: the host listener is reachable from the firewall…
    assert!(fw_console.contains("FW-REACHED-HOST"), "{fw_console}");
    // …and from the agent nothing gets anywhere but the firewall.
    assert!(!agent_console.contains("AGENT-ESCAPED"), "{agent_console}");
    assert_eq!(
        agent_console.matches("AGENT-BLOCKED").count(),
        3,
        "{agent_console}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let heard_now = heard.lock().unwrap().clone();
    assert!(
        heard_now.contains(&"fw-was-here".to_string()),
        "{heard_now:?}"
    );
    assert!(
        !heard_now.iter().any(|h| h.contains("agent")),
        "the host heard from the agent: {heard_now:?}"
    );

    // The control path: host loopback port → the firewall's sshd.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("instance.json")).unwrap()).unwrap();
    let port = meta["sshPort"].as_u64().unwrap() as u16;
    let mut banner = [0u8; 8];
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");

    // Secrets. The source could not be read at start (the variable is not
    // set): the cell started anyway, said why and how to fix it, and the
    // firewall holds nothing.
    assert!(
        first.contains("secret `boot` (source.env `CELL_BOOT_TEST_KEY`) is not loaded")
            && first.contains("export CELL_BOOT_TEST_KEY="),
        "{first}"
    );
    let table = ok(&cell(&state, &["secrets", "-i", i]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("boot") && l.contains(" NO ")),
        "{table}"
    );
    assert!(!fw_console.contains("FW-SECRETS"), "nothing was pushed");
    // Before a session, cell pushes what the firewall lacks: over SSH, on the
    // loader's stdin, exactly the values document.
    let pushed = ok(&cell_with_secret(&state, &["run", "-i", i, "--", "true"]));
    assert!(
        pushed.contains("secrets loaded into the firewall: boot"),
        "{pushed}"
    );
    let fw_console = wait_for(
        &dir.join("firewall.console"),
        "FW-SECRETS",
        Duration::from_secs(20),
    );
    let expected = {
        let mut c = Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(format!("{{\"boot\":\"{SECRET_VALUE}\"}}\n").as_bytes())
            .unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()[..64].to_string()
    };
    assert!(
        fw_console.contains(&format!("FW-SECRETS {expected}")),
        "the firewall got the values document: {fw_console}"
    );
    let table = ok(&cell(&state, &["secrets", "-i", i]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("boot") && l.contains(" yes ")),
        "{table}"
    );
    // Loaded: the next session does not push again.
    let again = ok(&cell_with_secret(&state, &["run", "-i", i, "--", "true"]));
    assert!(!again.contains("secrets loaded"), "{again}");
    // A reload whose source fails says so and exits non-zero.
    let reload = cell(&state, &["secrets", "reload", "-i", i]);
    assert_eq!(reload.status.code(), Some(1), "{}", text_of(&reload));
    assert!(
        text_of(&reload).contains("export CELL_BOOT_TEST_KEY="),
        "{}",
        text_of(&reload)
    );
    // The value is in no file of the instance (consoles, logs, metadata).
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(e.path()) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(SECRET_VALUE),
                "the value is in {}",
                e.path().display()
            );
        }
    }

    // Commands run in the agent, through the firewall; the exit status is kept.
    let out = ok(&cell(
        &state,
        &[
            "run",
            "-i",
            i,
            "--",
            "sh",
            "-c",
            "echo on $(ip -o -4 addr show | grep -o '10.89.0.2')",
        ],
    ));
    assert!(out.contains("on 10.89.0.2"), "{out}");
    let failed = cell(&state, &["run", "-i", i, "--", "sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7));
    let quoted = ok(&cell(
        &state,
        &["run", "-i", i, "--", "printf", "%s|", "a b", "it's"],
    ));
    assert!(
        quoted.contains("a b|it's|"),
        "arguments arrive as given: {quoted}"
    );

    // `cell` itself, while the cell runs: no boot, another shell in the agent
    // (here fed from a pipe instead of a terminal).
    {
        use std::io::Write as _;
        let mut shell = Command::new(env!("CARGO_BIN_EXE_cell"))
            .args(["-i", i, "--specs", specs_arg, "--accel", "tcg"])
            .env("CELL_STATE_DIR", &state)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        shell
            .stdin
            .take()
            .unwrap()
            .write_all(
                b"echo shell-as-$(id -un)-on-$(ip -o -4 addr show | grep -o '10.89.0.2')\nexit\n",
            )
            .unwrap();
        let out = shell.wait_with_output().unwrap();
        let said = text_of(&out);
        assert!(said.contains("is running"), "no second boot: {said}");
        assert!(said.contains("shell-as-agent-on-10.89.0.2"), "{said}");
        assert_eq!(qemu_processes(i).len(), 2);
    }

    // The live overlay: validated here, sent to the firewall over SSH.
    let allowed = ok(&cell(
        &state,
        &["allow", "-i", i, "https", "pypi.org", "--method", "GET"],
    ));
    assert!(
        allowed.contains("+ https pypi.org methods GET") && allowed.contains("in force"),
        "{allowed}"
    );
    eprintln!("cell allow said: {}", allowed.trim().replace('\n', " / "));
    // "In force in under a second": the whole round trip, SSH handshake and
    // all, to a TCG-emulated firewall.
    let ms: u64 = allowed
        .split("in force (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("cell allow reports how long it took");
    assert!(ms < 1000, "cell allow took {ms} ms");
    let fw_console = wait_for(
        &dir.join("firewall.console"),
        "FW-OVERLAY",
        Duration::from_secs(20),
    );
    assert!(fw_console.contains(r#""host":"pypi.org""#), "{fw_console}");
    let refused = cell(&state, &["allow", "-i", i, "https", "*"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("allowAnyHost"));
    let policy = ok(&cell(&state, &["policy", "-i", i]));
    assert!(
        policy.contains("https  pypi.org:443  methods GET")
            && policy.contains("overlay  overlay:https[0]"),
        "{policy}"
    );
    assert!(policy.contains("nix      policy:https[0]"), "{policy}");
    let denied = ok(&cell(&state, &["deny", "-i", i, "api.anthropic.com"]));
    assert!(denied.contains("+ deny api.anthropic.com"), "{denied}");
    let pubkey = ok(&cell(&state, &["pubkey", "-i", i]));
    assert!(
        pubkey.starts_with("ssh-ed25519 ") && pubkey.contains("agent@cell"),
        "{pubkey}"
    );
    let blocked = ok(&cell(&state, &["blocked", "-i", i]));
    assert!(
        blocked.contains("dns evil.example") && blocked.contains("cell allow https evil.example"),
        "{blocked}"
    );

    assert!(
        blocked.contains("tcp db.example:5432") && blocked.contains("(×"),
        "repeats fold: {blocked}"
    );
    // --follow prints new denials as they come, until interrupted.
    {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut follow = Command::new(env!("CARGO_BIN_EXE_cell"))
            .args(["blocked", "-i", i, "--follow", "-n", "0"])
            .env("CELL_STATE_DIR", &state)
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = follow.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("cell blocked --follow printed no new denial");
        assert!(line.contains("tcp db.example:5432"), "{line}");
        // Ctrl-C reaches the whole group, as from a terminal.
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(follow.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let _ = follow.wait();
    }

    // status sees both; starting again leaves them alone.
    let status = ok(&cell(&state, &["status", "-i", i]));
    assert_eq!(status.matches("running (pid").count(), 2, "{status}");
    assert!(status.contains("accel    tcg (emulated"), "{status}");
    let restart = [
        "start",
        "-i",
        i,
        "--specs",
        specs_arg,
        "--accel",
        "tcg",
        "--no-wait",
    ];
    let again = ok(&cell(&state, &restart));
    assert!(again.contains("is running"), "{again}");
    assert_eq!(qemu_processes(i).len(), 2);

    // A killed firewall: status explains, start repairs (its socket is stale).
    let fw_pid: i32 = std::fs::read_to_string(dir.join("firewall.pid"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fw_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dir.join("link.sock").exists(),
        "qemu leaves its socket behind when killed"
    );
    let status = ok(&cell(&state, &["status", "-i", i]));
    assert!(status.contains("firewall EXITED"), "{status}");
    let doctor = cell(&state, &["doctor"]);
    let doctor_text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor_text.contains(&format!("instance `{i}`: the firewall")),
        "{doctor_text}"
    );
    let repaired = ok(&cell(&state, &restart));
    assert!(repaired.contains("stopped unexpectedly"), "{repaired}");
    assert!(
        dir.join("firewall.console.old").exists(),
        "the crashed boot's console is kept"
    );
    wait_for(
        &dir.join("agent.console"),
        "AGENT-REACHED-FIREWALL",
        Duration::from_secs(180),
    );
    assert_eq!(qemu_processes(i).len(), 2);

    // stop leaves no process and no socket; destroy leaves nothing at all.
    let stopped = ok(&cell(&state, &["stop", "-i", i, "--timeout", "2s"]));
    assert!(stopped.contains("firewall: "), "{stopped}");
    assert!(qemu_processes(i).is_empty(), "qemu survived `cell stop`");
    for f in [
        "link.sock",
        "firewall.qmp",
        "agent.qmp",
        "firewall.pid",
        "agent.pid",
    ] {
        assert!(!dir.join(f).exists(), "{f} left behind by `cell stop`");
    }
    let status = ok(&cell(&state, &["status", "-i", i]));
    assert_eq!(status.matches("stopped").count(), 2, "{status}");
    let refused = cell(&state, &["destroy", "-i", i]);
    assert!(
        !refused.status.success(),
        "destroy without --yes and no terminal must refuse"
    );
    assert!(dir.exists());
    ok(&cell(&state, &["destroy", "-i", i, "--yes"]));
    assert!(!dir.exists(), "destroy left {}", dir.display());

    // Ctrl-C while `cell start` waits for the VMs: both are stopped again.
    let j = format!("{i}-int");
    let starting = Command::new(env!("CARGO_BIN_EXE_cell"))
        .args(["start", "-i", &j, "--specs", specs_arg, "--accel", "tcg"])
        .env("CELL_STATE_DIR", &state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let jdir = state.join("instances").join(&j);
    let t = Instant::now();
    while !jdir.join("agent.qmp").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the interrupted instance never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(starting.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = starting.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("interrupted") && text.contains("nothing is left running"),
        "{text}"
    );
    assert!(qemu_processes(&j).is_empty(), "Ctrl-C left qemu running");
    for f in [
        "link.sock",
        "firewall.qmp",
        "agent.qmp",
        "firewall.pid",
        "agent.pid",
    ] {
        assert!(!jdir.join(f).exists(), "{f} left behind by Ctrl-C");
    }
    ok(&cell(&state, &["destroy", "-i", &j, "--yes"]));

    // A cell built by Nix: `cell start --flake DIR` runs `nix build`, shows its
    // progress, takes the specs from the output and boots them.
    let nix_ok = nix::unistd::Uid::effective().is_root()
        && Command::new("nix")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !nix_ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI has nix (nix-bin) and root"
        );
        eprintln!("SKIPPED (nix phase): needs nix and a writable store (root)");
    } else {
        let flake = work.path().join("flake");
        std::fs::create_dir_all(&flake).unwrap();
        let file = |name: &str| std::fs::read_to_string(specs.join(name)).unwrap();
        std::fs::write(
            flake.join("flake.nix"),
            format!(
                r#"{{
  outputs = {{ self }}: {{
    cellConfigurations.x86_64-linux.vms = derivation {{
      name = "cell-vms";
      system = "x86_64-linux";
      builder = "/bin/sh";
      args = [ "-c" ''
        echo writing the specs
        /bin/mkdir $out
        printf '%s' '{fw}' > $out/firewall.json
        printf '%s' '{ag}' > $out/agent.json
        printf '%s' '{policy}' > $out/policy.json
      '' ];
    }};
  }};
}}
"#,
                fw = file("firewall.json"),
                ag = file("agent.json"),
                policy = file("policy.json"),
            ),
        )
        .unwrap();
        let k = format!("{i}-nix");
        // The test's own Nix configuration: nothing set up on this machine counts.
        let nix_conf = work.path().join("nix-conf");
        let out = common::own_nix(&mut Command::new(env!("CARGO_BIN_EXE_cell")), &nix_conf, "")
            .args([
                "start",
                "-i",
                &k,
                "--flake",
                flake.to_str().unwrap(),
                "--accel",
                "tcg",
            ])
            .env("CELL_STATE_DIR", &state)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("cell: building ") && text.contains("cell: built in"),
            "{text}"
        );
        assert!(
            text.contains("1/1 built") || text.contains("0/1 built"),
            "progress is shown: {text}"
        );
        assert!(text.contains("the agent VM: ready"), "{text}");
        let status = ok(&cell(&state, &["status", "-i", &k]));
        assert!(
            status.contains("cellConfigurations.x86_64-linux.vms"),
            "{status}"
        );
        let provision = |flake_text: &str| {
            std::fs::write(flake.join("flake.nix"), flake_text).unwrap();
            common::own_nix(&mut Command::new(env!("CARGO_BIN_EXE_cell")), &nix_conf, "")
                .args(["provision", "-i", &k, "--accel", "tcg"])
                .env("CELL_STATE_DIR", &state)
                .output()
                .unwrap()
        };
        let good = std::fs::read_to_string(flake.join("flake.nix")).unwrap();
        let pids = |k: &str| {
            let mut p = qemu_processes(k);
            p.sort();
            p
        };
        // A broken edit: the build fails and the running cell is left alone.
        let before = pids(&k);
        let out = provision("{ outputs = { self }: { cellConfigurations = ; }; }");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("building the VMs from"), "{text}");
        assert_eq!(
            pids(&k),
            before,
            "a failed provision touched the running VMs"
        );
        // A good edit (the baseline now allows pypi.org): rebuilt, restarted on it.
        let out = provision(&good.replace("api.anthropic.com", "pypi.org"));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("restarting") && text.contains("the agent VM: ready"),
            "{text}"
        );
        assert_ne!(pids(&k), before, "provision restarted the VMs");
        let policy = ok(&cell(&state, &["policy", "-i", &k]));
        assert!(policy.contains("https  pypi.org:443"), "{policy}");
        let spec = serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(state.join("instances").join(&k).join("instance.json"))
                .unwrap(),
        )
        .unwrap()["firewallSpec"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(spec.starts_with("/nix/store/"), "{spec}");
        ok(&cell(&state, &["destroy", "-i", &k, "--yes"]));
        assert!(qemu_processes(&k).is_empty());
    }
    eprintln!("boot test done in {:?}", started.elapsed());
}
