//! The other proxies the bench compares with, each started as a child in
//! the firewall namespace with a configuration generated into the lab's
//! run directory (no system configuration read or written, no service
//! started), and stopped when its guard drops.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{JAIL_NAME, NAME};
use crate::Lab;
use crate::lab::FW_AGENT_V4;

/// A peer proxy running as a child; SIGTERM, then SIGKILL, on drop.
pub struct Running {
    child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].trim().to_string()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_open(lab: &Lab, port: u16) -> bool {
    lab.firewall
        .exec("ss", &["-Hltn", &format!("sport = :{port}")])
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

/// Waits until the peer listens on `port` (and, if given, `file` exists).
fn wait_listening(
    lab: &Lab,
    p: &mut Running,
    port: u16,
    file: Option<&Path>,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(port_open(lab, port) && file.is_none_or(Path::exists)) {
        if !p.alive() {
            bail!("{what} exited at start: {}", p.log_tail());
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen within 60 s: {}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn spawn(lab: &Lab, mut cmd: std::process::Command, log_name: &str) -> anyhow::Result<Running> {
    let log = lab.dir.join(log_name);
    let out = std::fs::File::create(&log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()?;
    Ok(Running { child, log })
}

fn openssl_ca(
    dir: &Path,
    stem: &str,
    key: &[&str],
    cn: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (k, c) = (
        dir.join(format!("{stem}.key")),
        dir.join(format!("{stem}.pem")),
    );
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-days", "2", "-newkey"])
        .args(key)
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .args(["-subj", &format!("/CN={cn}")])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args([
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        ])
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((k, c))
}

pub const SQUID_PORT: u16 = 3129;
pub const SRT_TUNNEL_PORT: u16 = 3130;
pub const SRT_TLS_PORT: u16 = 3131;
pub const MITM_TRANSPARENT_PORT: u16 = 8080;
pub const MITM_EXPLICIT_PORT: u16 = 8081;

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(FW_AGENT_V4), port)
}

/// squid with ssl-bump: every CONNECT to the bench host is bumped (TLS
/// terminated with a certificate minted from a CA made here, a new
/// upstream TLS connection verified against the fake internet's CA), the
/// same host allowlist as the others, caching off, logs in the run dir.
/// Returns the guard and the CA the client trusts.
pub fn squid(lab: &Lab, squid: &Path) -> anyhow::Result<(Running, String)> {
    let dir = lab.dir.join("squid");
    std::fs::create_dir_all(&dir)?;
    // ECDSA P-256, as cell-proxy's minted leaves: the handshake's signature
    // costs the same on both sides of the comparison.
    let (key, cert) = openssl_ca(
        &dir,
        "squid-ca",
        &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
        "cell-lab bench squid CA",
    )?;
    let certgen = Path::new("/usr/lib/squid/security_file_certgen");
    let db = dir.join("ssl_db");
    let out = std::process::Command::new(certgen)
        .args(["-c", "-s"])
        .arg(&db)
        .args(["-M", "16MB"])
        .output()
        .with_context(|| format!("running {}", certgen.display()))?;
    if !out.status.success() {
        bail!(
            "security_file_certgen -c: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let d = dir.display();
    let ca = lab.dir.join("internet-ca.pem");
    let conf = format!(
        "# Generated by cell-lab bench; squid reads no other configuration.
http_port {listen}:{SQUID_PORT} ssl-bump tls-cert={cert} tls-key={key} generate-host-certificates=on dynamic_cert_mem_cache_size=16MB
sslcrtd_program {certgen} -s {db} -M 16MB
sslcrtd_children 4 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile={ca}
acl bench_host dstdomain {NAME}
acl tls_port port 443
acl CONNECT method CONNECT
http_access allow CONNECT bench_host tls_port
http_access allow bench_host
http_access deny all
cache deny all
cache_mem 0 MB
dns_nameservers 192.0.2.53
hosts_file none
access_log stdio:{d}/access.log
cache_log {d}/cache.log
cache_store_log none
pid_filename {d}/squid.pid
coredump_dir {d}
netdb_filename none
pinger_enable off
logfile_rotate 0
shutdown_lifetime 0 seconds
max_filedescriptors 65536
cache_effective_user proxy
visible_hostname cell-lab-bench
",
        listen = FW_AGENT_V4,
        cert = cert.display(),
        key = key.display(),
        certgen = certgen.display(),
        db = db.display(),
        ca = ca.display(),
    );
    let path = dir.join("squid.conf");
    std::fs::write(&path, conf)?;
    // squid drops to its own user (it refuses to run as root): its files
    // and the fake internet's CA must be readable to it.
    let out = std::process::Command::new("chown")
        .args(["-R", "proxy:proxy"])
        .arg(&dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "chown proxy {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let check = lab
        .firewall
        .command(squid)
        .args(["-k", "parse", "-f"])
        .arg(&path)
        .output()?;
    if !check.status.success() {
        bail!(
            "squid -k parse: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    let mut cmd = lab.firewall.command(squid);
    // -d 1: cache.log's important lines on standard error too (squid.out).
    cmd.args(["-N", "-d", "1", "-f"]).arg(&path);
    let mut p = spawn(lab, cmd, "squid.out")?;
    wait_listening(lab, &mut p, SQUID_PORT, None, "squid")?;
    Ok((p, std::fs::read_to_string(&cert)?))
}

/// sandbox-runtime's HTTP proxy, the one a sandboxed command's
/// `HTTPS_PROXY` points at, without TLS termination: a CONNECT to an
/// allowed host becomes an opaque byte tunnel (srt's default). Driven by a
/// small script that imports the package's own proxy server and gives it
/// the same one-host allowlist; the client verifies the upstream itself.
pub fn srt_tunnel(lab: &Lab, node: &Path, srt_pkg: &Path) -> anyhow::Result<Running> {
    let module = std::fs::canonicalize(srt_pkg.join("dist/sandbox/http-proxy.js"))
        .with_context(|| format!("{}: no sandbox-runtime package", srt_pkg.display()))?;
    if !module.exists() {
        bail!("{} not found", module.display());
    }
    let script = lab.dir.join("srt-tunnel.mjs");
    std::fs::write(
        &script,
        format!(
            r#"// Generated by cell-lab bench: sandbox-runtime's HTTP proxy, tunnel only.
import {{ createHttpProxyServer }} from "file://{module}";
const server = createHttpProxyServer({{
  filter: (port, host) => port === 443 && host === "{NAME}",
}});
server.listen({SRT_TUNNEL_PORT}, "{FW_AGENT_V4}", () => console.error("srt tunnel proxy listening"));
"#,
            module = module.display()
        ),
    )?;
    let mut cmd = lab.firewall.command(node);
    cmd.arg(&script);
    let mut p = spawn(lab, cmd, "srt-tunnel.log")?;
    wait_listening(lab, &mut p, SRT_TUNNEL_PORT, None, "srt tunnel proxy")?;
    Ok(p)
}

/// `srt proxy`: sandbox-runtime's proxy-only mode, which terminates every
/// CONNECT (a CA made here, handed in on a descriptor) and asks an
/// external decider about every request. The decider is a thread of this
/// process answering on a socket pair: allow the bench host, deny the rest.
/// Its CPU is this process's, not counted as the proxy's.
pub fn srt_tls(lab: &Lab, node: &Path, srt_pkg: &Path) -> anyhow::Result<(Running, String)> {
    let cli = srt_pkg.join("dist/cli.js");
    // node-forge, which srt mints with, signs with RSA only.
    let (key, cert) = openssl_ca(&lab.dir, "srt-ca", &["rsa:2048"], "cell-lab bench srt CA")?;
    let both = lab.dir.join("srt-ca-both.pem");
    std::fs::write(
        &both,
        std::fs::read_to_string(&key)? + &std::fs::read_to_string(&cert)?,
    )?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let ca_file = std::fs::File::open(&both)?;
    for fd in [theirs.as_fd(), ca_file.as_fd()] {
        // Inherited by the child (and by nothing else: spawned right after).
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
    }
    std::thread::spawn(move || {
        let _ = decider(ours);
    });
    let mut cmd = lab.firewall.command(node);
    cmd.arg(&cli)
        .arg("proxy")
        .arg("--listen")
        .arg(format!("{FW_AGENT_V4}:{SRT_TLS_PORT}"))
        .arg("--listen-any-interface")
        .arg("--decider-fd")
        .arg(theirs.as_raw_fd().to_string())
        .arg("--ca-fd")
        .arg(ca_file.as_raw_fd().to_string())
        .env("NODE_EXTRA_CA_CERTS", lab.dir.join("internet-ca.pem"));
    let spawned = spawn(lab, cmd, "srt-proxy.log");
    // The child has its copies now; ours would keep the decider's socket
    // open after the child is gone.
    drop((ca_file, theirs));
    let mut p = spawned?;
    wait_listening(lab, &mut p, SRT_TLS_PORT, None, "srt proxy")?;
    Ok((p, std::fs::read_to_string(&cert)?))
}

/// The decider side of `srt proxy`'s protocol: 4-byte big-endian length,
/// one JSON object per frame; the proxy says hello first.
fn decider(mut s: std::os::unix::net::UnixStream) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    fn read(s: &mut std::os::unix::net::UnixStream) -> anyhow::Result<serde_json::Value> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 1 << 20 {
            bail!("decider frame over 1 MiB");
        }
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf)?;
        Ok(serde_json::from_slice(&buf)?)
    }
    fn write(s: &mut std::os::unix::net::UnixStream, v: serde_json::Value) -> anyhow::Result<()> {
        let b = serde_json::to_vec(&v)?;
        s.write_all(&(b.len() as u32).to_be_bytes())?;
        s.write_all(&b)?;
        Ok(())
    }
    let hello = read(&mut s)?;
    if hello["t"] != "hello" {
        bail!("srt proxy did not say hello: {hello}");
    }
    write(
        &mut s,
        serde_json::json!({"t":"hello","proto":1,"allowedDomains":[NAME],"deniedDomains":[]}),
    )?;
    loop {
        let m = read(&mut s)?;
        if m["t"] != "req" {
            continue;
        }
        let verdict = if m["host"] == NAME && m["port"] == 443 {
            serde_json::json!({"t":"verdict","id":m["id"],"action":"allow"})
        } else {
            serde_json::json!({"t":"verdict","id":m["id"],"action":"deny","status":403,"reason":"not in the bench allowlist"})
        };
        write(&mut s, verdict)?;
    }
}

const MITM_ADDON: &str = r#"
from mitmproxy import http

ALLOWED = {"bench.example.test"}

def request(flow: http.HTTPFlow) -> None:
    # The same allowlist cell-proxy enforces: the host, on every request.
    if flow.request.pretty_host not in ALLOWED:
        flow.response = http.Response.make(403, b"denied\n")
"#;

/// mitmdump with two listeners: transparent (the nftables redirect of the
/// transparent section) and regular (explicit proxy); an addon enforcing
/// the same host allowlist per request; upstream verified against the fake
/// internet's CA. Returns the guard and mitmproxy's CA.
pub fn mitm(lab: &Lab, mitmdump: &Path) -> anyhow::Result<(Running, String)> {
    let conf = lab.dir.join("mitm");
    std::fs::create_dir_all(&conf)?;
    let addon = lab.dir.join("allowlist.py");
    std::fs::write(&addon, MITM_ADDON)?;
    let mut cmd = lab.firewall.command(mitmdump);
    cmd.args([
        "--mode",
        &format!("transparent@{MITM_TRANSPARENT_PORT}"),
        "--mode",
        &format!("regular@{MITM_EXPLICIT_PORT}"),
        "--listen-host",
        &FW_AGENT_V4.to_string(),
        "-q",
    ])
    .arg("--set")
    .arg(format!("confdir={}", conf.display()))
    .arg("--set")
    .arg(format!(
        "ssl_verify_upstream_trusted_ca={}",
        lab.dir.join("internet-ca.pem").display()
    ))
    .arg("-s")
    .arg(&addon);
    let mut p = spawn(lab, cmd, "mitm.log")?;
    let ca = conf.join("mitmproxy-ca-cert.pem");
    wait_listening(lab, &mut p, MITM_EXPLICIT_PORT, Some(&ca), "mitmdump")?;
    wait_listening(lab, &mut p, MITM_TRANSPARENT_PORT, None, "mitmdump")?;
    Ok((p, std::fs::read_to_string(&ca)?))
}

/// Points the firewall namespace's name lookups (glibc's, as mitmproxy and
/// node use) at the fake upstream: `ip netns exec` lays
/// /etc/netns/NAME/hosts over /etc/hosts for the programs it starts in
/// that namespace, and for no other. Removed on drop.
pub struct NetnsHosts(PathBuf);

impl NetnsHosts {
    pub fn new(lab: &Lab) -> anyhow::Result<NetnsHosts> {
        let dir = Path::new("/etc/netns").join(lab.firewall.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n{} {NAME}\n", crate::lab::WEB_V4),
        )?;
        Ok(NetnsHosts(dir))
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Requests one `curl` in a jail makes to the bench host (one kept-alive
/// connection), for the in-jail request cost.
pub const JAIL_REQUESTS: usize = 50;

/// Jail start-up, `srt` running `true` beside `cell jail … -- true`, and
/// the same two jails running one `curl` that makes [`JAIL_REQUESTS`]
/// requests to the bench host (intercepted by cell jail; tunnelled by srt,
/// curl checking the upstream itself): timed by hyperfine in the firewall
/// namespace (a network of its own, the fake resolver and HTTPS upstream).
/// Returns hyperfine's JSON with `in_jail_ms_per_request`: (curl − true) /
/// requests, per jail.
pub fn jail_startup(
    lab: &Lab,
    hyperfine: &Path,
    srt: &Path,
    cell: &Path,
    runs: u32,
) -> anyhow::Result<serde_json::Value> {
    let settings = lab.dir.join("srt-settings.json");
    std::fs::write(
        &settings,
        format!(
            r#"{{"network":{{"allowedDomains":["example.test","{NAME}"],"deniedDomains":[]}},"filesystem":{{"denyRead":[],"allowWrite":[],"denyWrite":[]}}}}"#
        ),
    )?;
    let internet_ca = lab.dir.join("internet-ca.pem");
    let curl = |host: &str| {
        format!(
            "curl -sSf{}",
            format!(" -o /dev/null https://{host}/echo").repeat(JAIL_REQUESTS)
        )
    };
    let srt_curl = format!(
        "{} -s {} -- {} --cacert {}",
        srt.display(),
        settings.display(),
        curl(NAME),
        internet_ca.display()
    );
    let cell_curl = format!(
        "{} jail --dns-upstream 192.0.2.53 --upstream-ca {} --allow {JAIL_NAME} -- {}",
        cell.display(),
        internet_ca.display(),
        curl(JAIL_NAME)
    );
    let out_json = lab.dir.join("jail-startup.json");
    let srt_cmd = format!("{} -s {} true", srt.display(), settings.display());
    let cell_cmd = format!("{} jail --allow example.test -- true", cell.display());
    // The same without root (`nobody`), from copies that user can reach
    // wherever the checkout is.
    let bin = lab.dir.join("rootless-bin");
    let home = lab.dir.join("rootless-home");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&home)?;
    std::os::unix::fs::chown(&home, Some(65534), Some(65534))?;
    std::fs::copy(cell, bin.join("cell"))?;
    std::fs::copy(cell.with_file_name("cell-proxy"), bin.join("cell-proxy"))?;
    let rootless_cmd = format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups env HOME={} {} jail --allow example.test -- true",
        home.display(),
        bin.join("cell").display()
    );
    let out = lab
        .firewall
        .command(hyperfine)
        .current_dir(&home)
        .args([
            "-N",
            "--warmup",
            "3",
            "--runs",
            &runs.to_string(),
            "--export-json",
        ])
        .arg(&out_json)
        .args(["--command-name", "srt true", &srt_cmd])
        .args(["--command-name", "cell jail -- true", &cell_cmd])
        .args([
            "--command-name",
            "cell jail -- true (no root)",
            &rootless_cmd,
        ])
        .args(["--command-name", "srt curl", &srt_curl])
        .args(["--command-name", "cell jail -- curl", &cell_curl])
        .output()
        .context("running hyperfine")?;
    std::fs::write(
        lab.dir.join("jail-startup.log"),
        [&out.stdout[..], &out.stderr[..]].concat(),
    )?;
    if !out.status.success() {
        // hyperfine hides the command's own output: run each once more to
        // say which failed and why.
        let why = [
            ("srt true", &srt_cmd),
            ("cell jail -- true", &cell_cmd),
            ("cell jail -- true (no root)", &rootless_cmd),
            ("srt curl", &srt_curl),
            ("cell jail -- curl", &cell_curl),
        ]
        .into_iter()
        .find_map(|(name, cmd)| {
            let o = lab
                .firewall
                .command("sh")
                .current_dir(&home)
                .args(["-c", cmd])
                .output()
                .ok()?;
            (!o.status.success()).then(|| {
                let tail: String = String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ");
                format!("{name} exited with {}: {tail}", o.status)
            })
        });
        bail!(
            "hyperfine: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            why.map(|w| format!("; {w}")).unwrap_or_default()
        );
    }
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out_json)?)?;
    let mean = |name: &str| {
        v["results"]
            .as_array()?
            .iter()
            .find(|r| r["command"] == name)?["mean"]
            .as_f64()
    };
    let per = |with: &str, without: &str| {
        Some((mean(with)? - mean(without)?) * 1e3 / JAIL_REQUESTS as f64)
    };
    v["in_jail_ms_per_request"] = serde_json::json!({
        "srt": per("srt curl", "srt true"),
        "cell jail": per("cell jail -- curl", "cell jail -- true"),
    });
    Ok(v)
}
