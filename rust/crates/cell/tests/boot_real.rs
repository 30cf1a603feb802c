//! The real dataplane under qemu: the firewall VM runs the workspace's
//! `cell-proxy` with Debian's `nft`, the flags and files of the NixOS
//! firewall module and the policy `lib/policy.nix` compiles; the agent VM's
//! curl goes agent → private link → firewall VM → qemu's user-mode uplink →
//! the lab's fake internet.
//!
//! Every `cell` command runs inside the namespace lab's *firewall namespace*,
//! which plays "the host" (as in tests/jail.rs): qemu's user-mode network
//! opens its sockets there, so the firewall VM's DNS and HTTPS reach the
//! lab's fake resolver (192.0.2.53) and fake HTTPS server (203.0.113.10)
//! and nothing on the real host; the SSH forward lands on that namespace's
//! loopback, which `cell` uses.
//!
//! Proven through `cell run`: the agent fetched the cell CA at boot and
//! trusts it; allowed HTTPS (HTTP/2 and HTTP/1.1) arrives at the fake server;
//! a denied method and a denied host (explicit proxy) get the 403 with the
//! reason header; a denied name does not resolve; random labels under a
//! denied and under an allowed name never reach the fake resolver; direct
//! IPv4 and IPv6, and ICMP, fail fast; TCP to an allowed host:port splices,
//! to another port is refused; `cell allow` changes the real daemon's
//! overlay and the next request passes; `cell blocked` reads the real event
//! log; a secret pushed by `cell` reaches the fake server while the agent
//! sent the placeholder; killing cell-proxy in the firewall VM leaves the
//! agent with no egress (fail closed).
//!
//! Needs qemu-system-x86_64, nft, nix-instantiate, curl, root (the lab) and
//! the workspace's cell-proxy; elsewhere it skips and says why, in CI it fails.

#![cfg(target_os = "linux")]

mod common;
use common::vm::{Cleanup, ok, qemu_processes, text_of, wait_for};

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cell_lab::Lab;
use cell_lab::https::CertKind;
use cell_lab::lab::WEB_V4;

const SSH_SETUP: &str = include_str!("tinyvm/ssh-setup.sh");
const FIREWALL_SCRIPT: &str = include_str!("tinyvm/firewall-real.sh");
const AGENT_SCRIPT: &str = include_str!("tinyvm/agent-real.sh");

/// The variable the secret's source reads, and its value.
const SECRET_VAR: &str = "CELL_REAL_TEST_KEY";
const SECRET_VALUE: &str = "real-secret-value-7b2e90";

const POLICY: &str = r#"{
  https."api.example.test".methods = [ "GET" ];
  https."llm.example.test".spy = true;
  tcp."git.example.test".ports = [ 22 ];
  deny = [ "evil.example.test" ];
  dns.upstream = [ "192.0.2.53" ];
}"#;

fn secrets_nix() -> String {
    format!(
        r#"{{ api = {{ env = "API_KEY"; hosts = [ "api.example.test" ]; source.env = "{SECRET_VAR}"; }}; }}"#
    )
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Skips (or, in CI, fails) when something the test needs is missing.
fn requirements() -> Option<PathBuf> {
    let missing = |why: String| {
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("SKIPPED: {why}");
        None
    };
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("SKIPPED: the real boot test runs on x86_64 Linux");
        return None;
    }
    for (program, arg, pkg) in [
        ("qemu-system-x86_64", "--version", "qemu-system-x86"),
        ("nft", "--version", "nftables"),
        ("nix-instantiate", "--version", "nix-bin"),
        ("curl", "--version", "curl"),
        ("ssh", "-V", "openssh-client"),
    ] {
        if !have(program, arg) {
            return missing(format!("{program} is missing (apt-get install {pkg})"));
        }
    }
    if cell_lab::skip_unless_available() {
        return None;
    }
    let proxy = PathBuf::from(env!("CARGO_BIN_EXE_cell")).with_file_name("cell-proxy");
    if !proxy.exists() {
        return missing(format!(
            "{} missing: build the workspace (cargo build -p cell-proxy)",
            proxy.display()
        ));
    }
    Some(proxy)
}

/// The number after `MARKER ` on the console (the guest's uptime, seconds).
fn marker_value(console: &str, marker: &str) -> f64 {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{marker} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{marker} N` on the console:\n{console}"))
}

/// Compiles a Nix expression over the project's lib with builtins only.
fn nix_json(work: &Path, expr: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let root = root.canonicalize().unwrap();
    let mut cmd = Command::new("nix-instantiate");
    common::own_nix(&mut cmd, &work.join("nix"), "");
    let out = cmd
        .args(["--eval", "--strict", "--json", "-E"])
        .arg(expr.replace("ROOT", &root.to_string_lossy()))
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-instantiate: {}", text_of(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a shell script of the tiny VM assets.
fn bash(args: &[&Path]) {
    let st = Command::new("bash").args(args).status().unwrap();
    assert!(st.success(), "bash {args:?} failed");
}

fn concat(out: &Path, parts: &[PathBuf]) {
    let mut f = std::fs::File::create(out).unwrap();
    for p in parts {
        f.write_all(&std::fs::read(p).unwrap()).unwrap();
    }
}

/// Builds the assets, both initrds and the spec directory.
fn prepare(work: &Path, lab: &Lab, proxy: &Path) -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tinyvm");
    let assets = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tinyvm-assets");
    bash(&[&here.join("build-assets.sh"), &assets]);
    assert!(
        assets.join("firewall-real.cpio.gz").exists(),
        "build-assets.sh made no firewall-real.cpio.gz (nft or curl missing?)"
    );
    let policy = nix_json(
        work,
        &format!("(import ROOT/lib/policy.nix).toDocument {POLICY}"),
    );
    let secrets = nix_json(
        work,
        &format!("(import ROOT/lib/secrets.nix).toDocument {}", secrets_nix()),
    );
    // The check the module's build runs on both documents.
    let check = Command::new(proxy)
        .args(["--check", "--policy", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(policy.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(check.status.success(), "{}", text_of(&check));

    let specs = work.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(specs.join("policy.json"), &policy).unwrap();
    std::fs::write(specs.join("secrets.json"), &secrets).unwrap();

    // The workspace's cell-proxy, stripped, with its libraries.
    let stage = work.join("proxy-root");
    std::fs::create_dir_all(&stage).unwrap();
    let proxy_cpio = work.join("proxy.cpio.gz");
    bash(&[&assets.join("pack-root.sh"), &stage, &proxy_cpio, proxy]);

    for role in ["firewall", "agent"] {
        let dir = work.join(format!("test-{role}"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = if role == "firewall" {
            std::fs::write(dir.join("policy.json"), &policy).unwrap();
            std::fs::write(dir.join("secrets.json"), &secrets).unwrap();
            std::fs::copy(lab.dir.join("internet-ca.pem"), dir.join("upstream-ca.pem")).unwrap();
            FIREWALL_SCRIPT
        } else {
            AGENT_SCRIPT
        };
        std::fs::write(dir.join("init.sh"), format!("{SSH_SETUP}{script}")).unwrap();
        let test_cpio = work.join(format!("{role}-test.cpio.gz"));
        bash(&[&assets.join("pack-test.sh"), &dir, &test_cpio]);
        let initrd = specs.join(format!("{role}.initrd"));
        let mut parts = vec![
            assets.join("base.cpio.gz"),
            assets.join(format!("{role}-real.cpio.gz")),
        ];
        if role == "firewall" {
            parts.push(proxy_cpio.clone());
        }
        parts.push(test_cpio);
        concat(&initrd, &parts);
        let (link, uplink, mem) = match role {
            "firewall" => ("02:ce:11:00:00:01", Some("02:ce:11:00:01:01"), 512),
            _ => ("02:ce:11:00:00:02", None, 256),
        };
        let spec = serde_json::json!({
            "version": 1,
            "role": role,
            "system": "x86_64-linux",
            "kernel": assets.join("vmlinuz"),
            "initrd": initrd,
            "cmdline": ["quiet", "loglevel=3"],
            "vcpu": 1,
            "mem": mem,
            "linkMac": link,
            "uplinkMac": uplink,
        });
        std::fs::write(specs.join(format!("{role}.json")), spec.to_string()).unwrap();
    }
    specs
}

/// `cell ARGS` inside the lab's firewall namespace (the stand-in host).
struct Host<'a> {
    lab: &'a Lab,
    state: PathBuf,
}

impl Host<'_> {
    fn cell_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = self.lab.firewall.command(env!("CARGO_BIN_EXE_cell"));
        c.args(args)
            .env("CELL_STATE_DIR", &self.state)
            .env_remove("CELL_INSTANCE")
            .env_remove(SECRET_VAR)
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    fn cell(&self, args: &[&str]) -> Output {
        self.cell_env(&[], args)
    }

    /// `cell run -i I -- sh -c SCRIPT` in the agent VM.
    fn agent(&self, instance: &str, script: &str) -> Output {
        self.cell(&["run", "-i", instance, "--", "sh", "-c", script])
    }

    /// A command on the firewall VM as root, over SSH the way `cell` reaches
    /// it (the instance's key and known_hosts, the forwarded loopback port).
    fn firewall(&self, instance: &str, script: &str) -> Output {
        let dir = self.state.join("instances").join(instance);
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("instance.json")).unwrap())
                .unwrap();
        let port = meta["sshPort"].as_u64().unwrap().to_string();
        let mut c = self.lab.firewall.command("ssh");
        c.arg("-i").arg(dir.join("id_ed25519"));
        for o in [
            "IdentitiesOnly=yes",
            "IdentityAgent=none",
            &format!("UserKnownHostsFile={}", dir.join("known_hosts").display()),
            "StrictHostKeyChecking=accept-new",
            "HostKeyAlias=cell-firewall",
            "LogLevel=ERROR",
            "ConnectTimeout=10",
            "BatchMode=yes",
        ] {
            c.args(["-o", o]);
        }
        c.args(["-p", &port, "root@127.0.0.1", script])
            .stdin(Stdio::null());
        c.output().unwrap()
    }
}

/// `LABEL START END` lines the agent prints around a probe: the probe's
/// duration in the guest, seconds.
fn took(out: &str, label: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no `{label}` line: {out}"));
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    v[1] - v[0]
}

/// A shell snippet that runs CMD and prints `LABEL START END STATUS`.
/// A shell line sending UDP datagrams to `addr:port` with tracepath, which
/// succeeds and prints the hop marked `!H`/`!A` (host unreachable,
/// administratively prohibited) when the firewall answers with an ICMP error,
/// and fails (printing what it saw) otherwise.
fn refused_udp(port: u16, addr: &str) -> String {
    format!(
        "tracepath -n -m 2 -p {port} {addr} > /tmp/tp.out 2>&1; grep -m1 -E ' ![AHNP]' /tmp/tp.out || {{ cat /tmp/tp.out; false; }}"
    )
}

fn timed(label: &str, cmd: &str) -> String {
    format!(
        "s=$(cut -d' ' -f1 /proc/uptime); {{ {cmd}; }} >/tmp/probe.out 2>&1; r=$?; echo {label} $s $(cut -d' ' -f1 /proc/uptime) status=$r; echo \"  $(tail -n 1 /tmp/probe.out)\"; "
    )
}

#[test]
fn the_agent_vm_egresses_only_through_the_real_cell_proxy() {
    let Some(proxy) = requirements() else { return };
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let instance = format!("real-{}", std::process::id());
    let i = instance.as_str();

    let mut lab = Lab::new().unwrap();
    let records: Vec<(&str, Ipv4Addr)> = vec![
        ("api.example.test", WEB_V4),
        ("other.example.test", WEB_V4),
        ("llm.example.test", WEB_V4),
        ("git.example.test", WEB_V4),
    ];
    lab.start_resolver(&records).unwrap();
    let web = lab
        .https_server(&[
            ("api.example.test", CertKind::Valid),
            ("other.example.test", CertKind::Valid),
            ("llm.example.test", CertKind::Valid),
        ])
        .unwrap();
    let git = lab
        .tcp_recorder(SocketAddr::new(WEB_V4.into(), 22))
        .unwrap();
    // After the lab: dropped first, so no qemu outlives its namespace.
    let _cleanup = Cleanup {
        instance: instance.clone(),
        state: state.clone(),
    };
    let specs = prepare(work.path(), &lab, &proxy);
    eprintln!("assets and initrds ready after {:?}", started.elapsed());
    let host = Host {
        lab: &lab,
        state: state.clone(),
    };

    // Boot, under TCG everywhere (what CI machines without KVM do).
    let boot = Instant::now();
    let first = ok(&host.cell(&[
        "start",
        "-i",
        i,
        "--specs",
        specs.to_str().unwrap(),
        "--accel",
        "tcg",
        "--boot-timeout",
        "4m",
    ]));
    assert!(first.contains("the agent VM: ready"), "{first}");
    let ssh_ready = boot.elapsed();
    let dir = state.join("instances").join(i);
    let fw = wait_for(
        &dir.join("firewall.console"),
        "FW-PROXY-",
        Duration::from_secs(120),
    );
    assert!(
        fw.contains("FW-PROXY-READY"),
        "cell-proxy did not start:\n{fw}"
    );
    let agent = wait_for(
        &dir.join("agent.console"),
        "AGENT-CA",
        Duration::from_secs(120),
    );
    assert!(!agent.contains("AGENT-NO-CA"), "{agent}");
    let all_ready = boot.elapsed();
    eprintln!(
        "TCG boot: `cell start` (SSH up on both) {ssh_ready:.1?}, everything ready {all_ready:.1?}; \
         firewall: cell-proxy ready at {:.1} s uptime (script start {:.1} s); agent: CA fetched at {:.1} s uptime",
        marker_value(&fw, "FW-PROXY-READY"),
        marker_value(&fw, "FW-BOOTED"),
        marker_value(&agent, "AGENT-CA"),
    );

    // The CA the agent fetched is the daemon's own.
    let ca = ok(&host.agent(i, "cat /run/cell/ca.crt"));
    let fw_ca = ok(&host.firewall(i, "cat /var/lib/cell-proxy/ca.crt"));
    assert!(
        fw_ca.contains("BEGIN CERTIFICATE") && ca.contains(fw_ca.trim()),
        "agent: {ca}\nfirewall: {fw_ca}"
    );

    // Allowed HTTPS, HTTP/2 and HTTP/1.1, arrives at the fake server.
    let fetch = ok(&host.agent(
        i,
        "curl -sS --max-time 30 -w '\\nproto=%{http_version}\\n' https://api.example.test/echo; \
         curl -sS --http1.1 --max-time 30 -w '\\nproto=%{http_version} time=%{time_total}\\n' https://api.example.test/echo",
    ));
    assert!(fetch.contains("GET /echo api.example.test"), "{fetch}");
    assert!(
        fetch.contains("proto=2\n") && fetch.contains("proto=1.1 "),
        "{fetch}"
    );
    let latency: f64 = fetch
        .split("time=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    let t = Instant::now();
    ok(&host.agent(
        i,
        "curl -sS --max-time 30 -o /dev/null https://api.example.test/echo",
    ));
    eprintln!(
        "one request through the VM path (TCG): {:.0} ms in the agent's curl (new connection, TLS to the proxy and upstream); `cell run` of one curl {:.1?} end to end",
        latency * 1000.0,
        t.elapsed()
    );
    let seen = web.seen();
    assert!(
        seen.iter()
            .any(|s| s == "GET /echo api.example.test HTTP/2.0"),
        "{seen:?}"
    );

    // Denials: a method the policy does not allow (transparent path), a
    // denied host asked of the explicit proxy; both a 403 with the reason.
    let method = ok(&host.agent(
        i,
        "curl -sS --max-time 30 -X POST -o /dev/null -D - https://api.example.test/echo",
    ));
    assert!(
        method.contains(" 403") && method.to_ascii_lowercase().contains("x-cell-deny-reason:"),
        "{method}"
    );
    let explicit = text_of(&host.agent(
        i,
        "curl -sS -v --max-time 30 -x http://10.89.0.1:3128 https://evil.example.test/ -o /dev/null",
    ));
    assert!(
        explicit.contains("403")
            && explicit
                .to_ascii_lowercase()
                .contains("x-cell-deny-reason: evil.example.test:443 is not in the allowlist"),
        "{explicit}"
    );
    let name = host.agent(i, "curl -sS --max-time 30 https://evil.example.test/");
    assert_eq!(name.status.code(), Some(6), "{}", text_of(&name));

    // DNS exfiltration: random labels under a denied and an allowed name.
    let nonce = format!("x{:x}{}", std::process::id(), started.elapsed().as_nanos());
    let exfil = text_of(&host.agent(
        i,
        &format!(
            "nslookup {nonce}a.evil.example.test; nslookup {nonce}b.api.example.test; nslookup -type=txt {nonce}c.example.test; true"
        ),
    ));
    std::thread::sleep(Duration::from_secs(1));
    let asked = lab.resolver.queries();
    assert!(
        !asked.iter().any(|(n, _)| n.contains(&nonce)),
        "the resolver heard {asked:?}\n{exfil}"
    );
    assert!(
        asked.iter().any(|(n, _)| n == "api.example.test"),
        "the positive control: the firewall resolved the allowed host upstream: {asked:?}"
    );

    // Direct IPv4, IPv6 and ICMP fail, fast.
    let probes = ok(&host.agent(
        i,
        &[
            timed("direct4", "curl -sS --max-time 5 https://203.0.113.10/echo"),
            timed(
                "direct6",
                "curl -sS --max-time 5 'https://[2001:db8:2::10]/echo'",
            ),
            // UDP datagrams to another DNS server and to UDP 443 (QUIC's first
            // flight; curl here has no HTTP/3): tracepath sends real datagrams
            // and prints `!H` when the ICMP error comes back.
            timed("udp", &refused_udp(53, "203.0.113.10")),
            timed("quic", &refused_udp(443, "203.0.113.10")),
            timed("quic6", &refused_udp(443, "2001:db8:2::10")),
        ]
        .concat(),
    ));
    let agent_console = wait_for(
        &dir.join("agent.console"),
        "AGENT-PING",
        Duration::from_secs(30),
    );
    // One console line per ping (other writers share the console), made
    // into the probes' two-line form.
    let ping = agent_console
        .lines()
        .filter(|l| l.starts_with("AGENT-PING"))
        .map(|l| l.replace("AGENT-PING", "icmp").replacen(" | ", "\n  ", 1))
        .collect::<Vec<_>>()
        .join("\n");
    let probes = format!("{probes}{ping}\n");
    let line = |label: &str| {
        let mut lines = probes
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{label} ")));
        let head = lines
            .next()
            .unwrap_or_else(|| panic!("no {label}: {probes}"));
        (head, lines.next().unwrap_or_default())
    };
    // TCP gets a reset, ping an ICMP admin-prohibited ("Packet filtered"),
    // a datagram its ICMP error from the firewall's own address (`!H`, `!A`).
    for label in ["direct4", "direct6", "icmp4", "icmp6"] {
        let (head, said) = line(label);
        assert!(!head.ends_with("status=0"), "{label} got through: {probes}");
        assert!(
            said.contains("refused")
                || said.contains("Couldn't connect")
                || said.contains("Packet filtered")
                || said.contains("Administratively prohibited"),
            "{label}: not a refusal: {probes}"
        );
    }
    for label in ["udp", "quic", "quic6"] {
        let (head, said) = line(label);
        assert!(
            head.ends_with("status=0")
                && (said.contains("10.89.0.1 ") || said.contains("fd89::1 "))
                && (said.contains("!H") || said.contains("!A")),
            "{label}: the datagram was not refused by the firewall: {probes}"
        );
    }
    // Each is refused before routing (the module sets ip_forward=0 without
    // cidr entries; a packet the kernel would have to forward would be
    // dropped in routing, and the agent would wait for its 5 s timeout).
    // Under TCG a refusal takes well under a second; 2.5 s leaves room.
    let labels = [
        "direct4", "direct6", "icmp4", "icmp6", "udp", "quic", "quic6",
    ];
    let times: Vec<(&str, f64)> = labels.into_iter().map(|l| (l, took(&probes, l))).collect();
    eprintln!("denials in the agent (TCG), seconds: {times:?}\n{probes}");
    for (label, secs) in &times {
        assert!(
            *secs < 2.5,
            "{label} took {secs:.2} s, a timeout not a refusal: {probes}"
        );
    }
    assert!(
        web.seen().iter().all(|s| !s.contains("203.0.113.10")),
        "{:?}",
        web.seen()
    );

    // TCP: the allowed host:port splices to the recorder; another port is refused.
    let tcp = text_of(&host.agent(
        i,
        "echo hello-git | nc -w 5 git.example.test 22; echo; echo other-port; echo x | nc -w 5 git.example.test 2222; echo status=$?",
    ));
    assert!(tcp.contains("hello-git"), "{tcp}");
    assert_eq!(git.seen().len(), 1, "{:?}", git.seen());
    assert!(!tcp.ends_with("status=0\n"), "{tcp}");

    // `cell allow` changes the real daemon's overlay; the next request passes.
    let allowed = ok(&host.cell(&["allow", "-i", i, "https", "other.example.test"]));
    assert!(allowed.contains("in force ("), "{allowed}");
    eprintln!(
        "cell allow round trip to the real daemon (TCG): {}",
        allowed
            .split("in force (")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or("?")
    );
    let other = ok(&host.agent(i, "curl -sS --max-time 30 https://other.example.test/echo"));
    assert!(other.contains("GET /echo other.example.test"), "{other}");

    // `cell blocked` reads the daemon's event log.
    let blocked = ok(&host.cell(&["blocked", "-i", i]));
    assert!(
        blocked.contains("dns evil.example.test")
            && blocked.contains("https api.example.test POST /echo")
            && blocked.contains(&format!("dns {nonce}a.evil.example.test")),
        "{blocked}"
    );

    // A secret pushed by cell reaches the fake server; the agent sent the placeholder.
    let pushed = ok(&host.cell_env(
        &[(SECRET_VAR, SECRET_VALUE)],
        &[
            "run",
            "-i",
            i,
            "--",
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "x-api-key: cell-placeholder-api",
            "https://api.example.test/record",
        ],
    ));
    assert!(
        pushed.contains("secrets loaded into the firewall: api") && pushed.contains("200"),
        "{pushed}"
    );
    let got = web.recorded();
    assert_eq!(
        got.last().and_then(|r| r.header("x-api-key")),
        Some(SECRET_VALUE.as_bytes()),
        "{got:?}"
    );
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if let Ok(bytes) = std::fs::read(e.path()) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(SECRET_VALUE),
                "the value is in {}",
                e.path().display()
            );
        }
    }

    // The spy: an exchange with the spy host (a fake Anthropic Messages
    // stream), recorded by the real daemon, read by `cell spy` over SSH.
    let body = r#"{"model":"claude-lab-1","max_tokens":64,"system":"Be brief.","stream":true,"messages":[{"role":"user","content":"list the files"}]}"#;
    let streamed = ok(&host.cell(&[
        "run",
        "-i",
        i,
        "--",
        "curl",
        "-sS",
        "--max-time",
        "30",
        "-H",
        "content-type: application/json",
        "-d",
        body,
        "https://llm.example.test/v1/messages",
    ]));
    assert!(streamed.contains("message_stop"), "{streamed}");
    let spied = ok(&host.cell(&["spy", "-i", i, "-n", "5"]));
    for want in [
        "claude-lab-1",
        "200 POST /v1/messages",
        "tokens in 21 out 9",
        "system     Be brief.",
        "tool call  run {\"cmd\":\"ls\"}",
    ] {
        assert!(spied.contains(want), "{want} not in\n{spied}");
    }
    assert!(
        !spied.contains("api.example.test"),
        "only the spy host is recorded: {spied}"
    );
    let json = ok(&host.cell(&["spy", "-i", i, "-n", "1", "--json"]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(v["usage"]["output"], 9, "{json}");
    let report = work.path().join("report.html");
    let wrote = ok(&host.cell(&["spy", "-i", i, "--html", report.to_str().unwrap()]));
    let html = std::fs::read_to_string(&report).unwrap_or_else(|e| panic!("{e}: {wrote}"));
    assert!(
        html.contains("claude-lab-1") && html.contains("<details") && html.contains("<svg"),
        "{wrote}"
    );

    // `cell status` and `cell doctor` ask the real daemon.
    let up = ok(&host.cell(&["status", "-i", i]));
    assert!(
        up.contains("daemon   cell-proxy answering: ") && up.contains("1 secrets loaded"),
        "{up}"
    );
    let doctor = text_of(&host.cell(&["doctor"]));
    assert!(
        doctor.contains(&format!(
            "ok   instance `{i}`: cell-proxy answers in the firewall VM"
        )),
        "{doctor}"
    );

    // Fail closed: kill cell-proxy; its rules stay, the agent gets nowhere.
    ok(&host.firewall(i, "kill -9 $(cat /run/cell-proxy/pid)"));
    let before = web.seen().len();
    let after = host.agent(
        i,
        &[
            timed(
                "allowed",
                "curl -sS --max-time 10 https://api.example.test/echo",
            ),
            timed("direct", "curl -sS --max-time 10 https://203.0.113.10/echo"),
        ]
        .concat(),
    );
    let after = text_of(&after);
    for label in ["allowed", "direct"] {
        let line = after.lines().find(|l| l.starts_with(label)).unwrap();
        assert!(!line.ends_with("status=0"), "{label} got through: {after}");
    }
    assert_eq!(web.seen().len(), before, "{:?}", web.seen());
    let down = host.cell(&["status", "-i", i]);
    let status = text_of(&down);
    assert_eq!(down.status.code(), Some(1), "{status}");
    assert!(
        status.contains("cell-proxy NOT ANSWERING")
            && status.contains("does not answer; is cell-proxy running?")
            && status.contains("fail closed"),
        "{status}"
    );
    let doctor = text_of(&host.cell(&["doctor"]));
    assert!(
        doctor.contains(&format!(
            "FAIL instance `{i}`: cell-proxy answers in the firewall VM"
        )),
        "{doctor}"
    );
    eprintln!(
        "after killing cell-proxy: allowed host failed in {:.2} s, direct IP in {:.2} s; `cell status` says:\n{status}",
        took(&after, "allowed"),
        took(&after, "direct")
    );

    ok(&host.cell(&["destroy", "-i", i, "--yes"]));
    assert!(qemu_processes(i).is_empty());
    eprintln!("whole test {:?}", started.elapsed());
}
