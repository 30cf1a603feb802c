//! The three-namespace lab: agent ── firewall ── internet.
//!
//! ```text
//!  agent ns                firewall ns                        internet ns
//!  eth0 10.89.0.2  ───  agent0 10.89.0.1   uplink0 192.0.2.1 ─── eth0 192.0.2.2
//!       fd89::2               fd89::1              2001:db8:1::1       2001:db8:1::2
//!  default via fw       nftables (cell)            forwarding ON      + 192.0.2.53 (resolver)
//!                       cell-proxy                                    + 203.0.113.10, 2001:db8:2::10
//! ```
//!
//! Forwarding is switched on in the firewall namespace on purpose: the
//! nftables rules, not a sysctl, must be what stops the agent. The internet
//! namespace routes back to the agent's subnet, so anything that leaked
//! would complete a handshake and show up in a recorder; a counter in its
//! prerouting hook counts every packet that arrives at all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::fake::{FakeResolver, Recorder};
use crate::netns::{Netns, sh};

pub const AGENT_V4: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
pub const FW_AGENT_V4: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
pub const FW_AGENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 1);
pub const FW_UPLINK_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const INET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The fake upstream resolver.
pub const RESOLVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
/// A fake internet server (recorders listen here).
pub const WEB_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const WEB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// The firewall's interface towards the agent.
pub const AGENT_IFACE: &str = "agent0";
pub const DNS_PORT: u16 = 53;
pub const TRANSPARENT_PORT: u16 = 15001;
pub const EXPLICIT_PORT: u16 = 3128;

/// The firewall's DNS server as the agent sees it.
pub fn fw_dns() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(FW_AGENT_V4), DNS_PORT)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Packet counts seen arriving in the internet namespace from the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wire {
    /// DNS from the firewall to the fake resolver (legitimate for `forward` names).
    pub resolver: u64,
    /// Everything else (ND/MLD excluded).
    pub other: u64,
}

const WIRE_RULES: &str = r#"
table inet wire {
    counter resolver { }
    counter other { }
    chain pre {
        type filter hook prerouting priority -300; policy accept;
        iifname "eth0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } return
        iifname "eth0" ip daddr 192.0.2.53 udp dport 53 counter name "resolver" return
        iifname "eth0" ip daddr 192.0.2.53 tcp dport 53 counter name "resolver" return
        iifname "eth0" counter name "other"
    }
}
"#;

/// A running `cell-proxy` in the firewall namespace.
struct Proxy {
    child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Lab {
    pub id: String,
    pub agent: Netns,
    pub firewall: Netns,
    pub internet: Netns,
    pub dir: PathBuf,
    pub resolver: FakeResolver,
    /// The fake internet's CA; `cell-proxy` trusts it for upstream servers.
    pub internet_ca: crate::https::TestCa,
    runtime: tokio::runtime::Runtime,
    proxy: Option<Proxy>,
    /// Keep `dir` (proxy log, events) when the lab is dropped ([`Lab::keep`]).
    keep: bool,
}

/// Prefix of every lab namespace: `cell-lab-<pid>-<n>-<role>`.
pub const NS_PREFIX: &str = "cell-lab-";

impl Lab {
    /// Builds the three namespaces, links, addresses, routes and the wire counter,
    /// and starts the fake resolver. Everything is removed when the lab is dropped.
    pub fn new() -> anyhow::Result<Lab> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let agent = Netns::create(&format!("{NS_PREFIX}{id}-agent"))?;
        let firewall = Netns::create(&format!("{NS_PREFIX}{id}-fw"))?;
        let internet = Netns::create(&format!("{NS_PREFIX}{id}-inet"))?;
        let dir = std::env::temp_dir().join(format!("{NS_PREFIX}{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("lab runtime")?;
        let internet_ca = crate::https::TestCa::new()?;
        std::fs::write(dir.join("internet-ca.pem"), &internet_ca.pem)?;
        let mut lab = Lab {
            id,
            agent,
            firewall,
            internet,
            dir,
            resolver: FakeResolver::default(),
            internet_ca,
            runtime,
            proxy: None,
            keep: false,
        };
        lab.wire_up()?;
        Ok(lab)
    }

    /// Resolves the agent's IPv6 neighbour (the firewall) before any test runs.
    /// Right after bring-up the first solicitation can go unanswered and the
    /// kernel retries after a second, which would turn the first fast IPv6
    /// reject into a one-second one. This goes through the real ruleset's
    /// neighbour-discovery rule, so a broken rule fails here, loudly.
    pub fn warm_up_ipv6(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.agent.run(|| {
                std::net::UdpSocket::bind("[::]:0").and_then(|s| s.send_to(b"", (FW_AGENT_V6, 9)))
            })??;
            let out = self
                .agent
                .ip(&["-6", "neigh", "show", &FW_AGENT_V6.to_string()])?;
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("lladdr") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent cannot resolve the firewall's IPv6 neighbour: {text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wire_up(&mut self) -> anyhow::Result<()> {
        let (a, f, i) = (
            self.agent.name().to_string(),
            self.firewall.name().to_string(),
            self.internet.name().to_string(),
        );
        sh(
            "ip",
            [
                "link",
                "add",
                "eth0",
                "netns",
                &a,
                "type",
                "veth",
                "peer",
                "name",
                AGENT_IFACE,
                "netns",
                &f,
            ],
        )?;
        sh(
            "ip",
            [
                "link", "add", "uplink0", "netns", &f, "type", "veth", "peer", "name", "eth0",
                "netns", &i,
            ],
        )?;
        // No duplicate-address detection on the lab links: a tentative link-local
        // address delays the first IPv6 packets by a second, which would make a
        // fast reject look like a timeout.
        for (ns, ifaces) in [
            (&self.agent, &["eth0"][..]),
            (&self.firewall, &[AGENT_IFACE, "uplink0"][..]),
            (&self.internet, &["eth0"][..]),
        ] {
            for ifc in ifaces {
                ns.exec(
                    "sysctl",
                    &["-qw", &format!("net.ipv6.conf.{ifc}.accept_dad=0")],
                )?;
            }
        }
        let ag = &self.agent;
        ag.ip(&["addr", "add", "10.89.0.2/24", "dev", "eth0"])?;
        ag.ip(&["addr", "add", "fd89::2/64", "dev", "eth0", "nodad"])?;
        ag.ip(&["link", "set", "eth0", "up"])?;
        ag.ip(&["route", "add", "default", "via", "10.89.0.1"])?;
        ag.ip(&["-6", "route", "add", "default", "via", "fd89::1"])?;
        let fw = &self.firewall;
        fw.ip(&["addr", "add", "10.89.0.1/24", "dev", AGENT_IFACE])?;
        fw.ip(&["addr", "add", "fd89::1/64", "dev", AGENT_IFACE, "nodad"])?;
        fw.ip(&["addr", "add", "192.0.2.1/24", "dev", "uplink0"])?;
        fw.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "uplink0", "nodad"])?;
        fw.ip(&["link", "set", AGENT_IFACE, "up"])?;
        fw.ip(&["link", "set", "uplink0", "up"])?;
        fw.ip(&["route", "add", "default", "via", "192.0.2.2"])?;
        fw.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::2"])?;
        fw.exec(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        // As on the firewall VM: destination-unreachable is exempt from the ICMP
        // rate limits, so every rejected UDP datagram or ping gets its
        // admin-prohibited answer at once. (With only the per-destination limit
        // off, the global bucket dropped an answer in a burst of ~60, and the
        // burst test timed out now and then.)
        let settings =
            cell_policy::nft::FAIL_FAST_SYSCTLS.map(|(key, value)| format!("{key}={value}"));
        let mut args = vec!["-qw"];
        args.extend(settings.iter().map(String::as_str));
        fw.exec("sysctl", &args)?;
        let inet = &self.internet;
        for addr in ["192.0.2.2/24", "192.0.2.53/32", "203.0.113.10/32"] {
            inet.ip(&["addr", "add", addr, "dev", "eth0"])?;
        }
        for addr in ["2001:db8:1::2/64", "2001:db8:2::10/128"] {
            inet.ip(&["addr", "add", addr, "dev", "eth0", "nodad"])?;
        }
        inet.ip(&["link", "set", "eth0", "up"])?;
        inet.ip(&["route", "add", "10.89.0.0/24", "via", "192.0.2.1"])?;
        inet.ip(&["-6", "route", "add", "fd89::/64", "via", "2001:db8:1::1"])?;
        self.wait_for_ipv6()?;
        let mut nft = inet.command("nft");
        nft.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = nft
            .spawn()
            .context("running nft (apt-get install nftables)")?;
        std::io::Write::write_all(child.stdin.as_mut().expect("piped"), WIRE_RULES.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "installing the wire counter: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn wait_for_ipv6(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for ns in [&self.agent, &self.firewall, &self.internet] {
            while !ns
                .ip(&["-6", "addr", "show", "tentative"])?
                .stdout
                .is_empty()
            {
                if Instant::now() > deadline {
                    bail!("IPv6 addresses in {} stay tentative", ns.name());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Starts the fake resolver on 192.0.2.53:53 with these A records.
    pub fn start_resolver(&mut self, records: &[(&str, Ipv4Addr)]) -> anyhow::Result<FakeResolver> {
        let addr = SocketAddr::new(IpAddr::V4(RESOLVER_V4), 53);
        let (udp, tcp) = self.internet.run(move || -> std::io::Result<_> {
            Ok((
                std::net::UdpSocket::bind(addr)?,
                std::net::TcpListener::bind(addr)?,
            ))
        })??;
        self.resolver = FakeResolver::new(records);
        let _guard = self.runtime.enter();
        self.resolver.serve(udp, tcp)?;
        Ok(self.resolver.clone())
    }

    /// A TCP echo recorder in the internet namespace.
    /// Forwarding in the firewall namespace: on by default (the rules, not a
    /// sysctl, must stop the agent); off is what the NixOS module sets when
    /// the policy has no `cidr` entries, and denials must fail as fast then.
    pub fn set_forwarding(&self, on: bool) -> anyhow::Result<()> {
        let v = u8::from(on);
        self.firewall.exec(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv4.ip_forward={v}"),
                &format!("net.ipv6.conf.all.forwarding={v}"),
            ],
        )?;
        Ok(())
    }

    pub fn tcp_recorder(&self, addr: SocketAddr) -> anyhow::Result<Recorder> {
        let l = self
            .internet
            .run(move || std::net::TcpListener::bind(addr))??;
        let rec = Recorder::default();
        let _guard = self.runtime.enter();
        rec.serve_tcp(l)?;
        Ok(rec)
    }

    /// A TCP echo recorder in any of the lab's namespaces (the firewall's
    /// own services, for SSRF tests).
    pub fn tcp_recorder_in(&self, ns: &Netns, addr: SocketAddr) -> anyhow::Result<Recorder> {
        let l = ns.run(move || std::net::TcpListener::bind(addr))??;
        let rec = Recorder::default();
        let _guard = self.runtime.enter();
        rec.serve_tcp(l)?;
        Ok(rec)
    }

    /// A UDP echo recorder in the internet namespace.
    pub fn udp_recorder(&self, addr: SocketAddr) -> anyhow::Result<Recorder> {
        let s = self
            .internet
            .run(move || std::net::UdpSocket::bind(addr))??;
        let rec = Recorder::default();
        let _guard = self.runtime.enter();
        rec.serve_udp(s)?;
        Ok(rec)
    }

    /// The fake HTTPS server on 203.0.113.10:443, one certificate per name.
    pub fn https_server(
        &self,
        names: &[(&str, crate::https::CertKind)],
    ) -> anyhow::Result<crate::https::FakeHttps> {
        let addr = crate::https::addr();
        let l = self
            .internet
            .run(move || std::net::TcpListener::bind(addr))??;
        let server = crate::https::FakeHttps::default();
        let _guard = self.runtime.enter();
        server.serve(l, &self.internet_ca, names)?;
        Ok(server)
    }

    /// The cell CA certificate the running proxy created (what the agent trusts).
    pub fn cell_ca_pem(&self) -> anyhow::Result<String> {
        let p = self.dir.join("state/ca.crt");
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    }

    /// A TCP connection from the agent namespace.
    pub fn agent_connect(&self, addr: SocketAddr) -> anyhow::Result<std::net::TcpStream> {
        Ok(self
            .agent
            .run(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))??)
    }

    /// Runs a future on the lab's runtime (where the fake internet lives).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The running proxy's pid.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(|p| p.child.id())
    }

    /// Stops the proxy (its rules stay, as they would on the firewall).
    pub fn stop_proxy(&mut self) {
        self.proxy.take();
    }

    /// The proxy's peak resident memory (VmHWM), bytes.
    pub fn proxy_peak_rss(&self) -> anyhow::Result<u64> {
        let p = self.proxy.as_ref().context("proxy not started")?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmHWM")?;
        Ok(kb * 1024)
    }

    /// Packet counters of the internet side.
    pub fn wire(&self) -> anyhow::Result<Wire> {
        let read = |name: &str| -> anyhow::Result<u64> {
            let out = self
                .internet
                .exec("nft", &["-j", "list", "counter", "inet", "wire", name])?;
            let v: Value = serde_json::from_slice(&out.stdout)?;
            v["nftables"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find_map(|o| o.get("counter")?.get("packets")?.as_u64())
                })
                .context("counter missing")
        };
        Ok(Wire {
            resolver: read("resolver")?,
            other: read("other")?,
        })
    }

    /// Path of the event log of the running proxy.
    pub fn events_path(&self) -> PathBuf {
        self.dir.join("events.jsonl")
    }

    /// Every event line so far.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.events_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn count(&self, kind: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == kind).count()
    }

    fn wait_for_event(&self, kind: &str, after: usize, timeout: Duration) -> anyhow::Result<Value> {
        self.wait_for(kind, |_| true, after, timeout)
    }

    /// Waits for an event of `kind` past the first `after` of that kind that satisfies `pred`.
    fn wait_for(
        &self,
        kind: &str,
        pred: impl Fn(&Value) -> bool,
        after: usize,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self
                .events()
                .into_iter()
                .filter(|e| e["event"] == kind)
                .skip(after)
                .find(&pred)
            {
                return Ok(e);
            }
            if let Some(p) = &self.proxy
                && let Ok(Some(status)) = nix_try_wait(p)
            {
                bail!("cell-proxy exited ({status}):\n{}", self.proxy_log());
            }
            if Instant::now() > deadline {
                bail!(
                    "no `{kind}` event within {timeout:?}; proxy log:\n{}",
                    self.proxy_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The proxy's standard error.
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// Starts `cell-proxy` in the firewall namespace with the lab's parameters
    /// and waits until it reports ready.
    pub fn start_proxy(
        &mut self,
        binary: &Path,
        policy: &Path,
        overlay: Option<&Path>,
    ) -> anyhow::Result<()> {
        self.start_proxy_with(binary, policy, overlay, &[])
    }

    /// [`Lab::start_proxy`] with more arguments (`--secrets FILE`, say).
    pub fn start_proxy_with(
        &mut self,
        binary: &Path,
        policy: &Path,
        overlay: Option<&Path>,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("proxy.log"))?;
        let mut cmd = self.firewall.command(binary);
        cmd.args(extra);
        cmd.arg("--policy").arg(policy);
        if let Some(o) = overlay {
            cmd.arg("--overlay").arg(o);
        }
        cmd.args([
            "--agent-iface",
            AGENT_IFACE,
            "--listen",
            &FW_AGENT_V4.to_string(),
            "--agent-addr",
            &AGENT_V4.to_string(),
            "--agent-addr",
            "fd89::2",
        ])
        .arg("--events")
        .arg(self.events_path())
        .arg("--state-dir")
        .arg(self.dir.join("state"))
        .arg("--upstream-ca")
        .arg(self.dir.join("internet-ca.pem"))
        .arg("--control")
        .arg(self.control_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        let before = self.count("ready");
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.proxy = Some(Proxy { child });
        self.wait_for_event("ready", before, Duration::from_secs(15))?;
        self.warm_up_ipv6()
    }

    /// Keep the lab's directory (the proxy's log, the event log) when the lab
    /// is dropped, for a post-mortem; its path is printed then.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// The proxy's control socket.
    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// One request on the control socket; the reply.
    pub fn control(&self, request: &str) -> anyhow::Result<Value> {
        use std::io::{BufRead, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.control_path())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        writeln!(s, "{request}")?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Sends SIGHUP to the proxy and returns the `policy` event it answers with.
    pub fn reload_proxy(&self) -> anyhow::Result<Value> {
        let p = self.proxy.as_ref().context("proxy not started")?;
        let before = self.count("policy");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )?;
        // The file watcher may reload too; wait for the answer to this signal.
        self.wait_for(
            "policy",
            |e| e["cause"] == "sighup",
            before,
            Duration::from_secs(10),
        )
    }

    /// The firewall namespace's ruleset as `nft list ruleset` prints it.
    pub fn firewall_ruleset(&self) -> anyhow::Result<String> {
        Ok(String::from_utf8(
            self.firewall.exec("nft", &["list", "ruleset"])?.stdout,
        )?)
    }

    /// Whether the proxy process is still running.
    pub fn proxy_running(&self) -> bool {
        self.proxy
            .as_ref()
            .is_some_and(|p| matches!(nix_try_wait(p), Ok(None)))
    }
}

/// `Some(state)` once the proxy has exited (zombie or gone), `None` while it runs.
fn nix_try_wait(p: &Proxy) -> anyhow::Result<Option<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.child.id())).unwrap_or_default();
    // Field 3, after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    Ok(match state {
        None => Some("gone".into()),
        Some("Z") | Some("X") => Some("exited".into()),
        Some(_) => None,
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.proxy.take();
        // Namespaces drop after this (field order); the runtime's tasks die with it.
        // CELL_LAB_KEEP=1 (or keep()) keeps the directory (events, proxy log)
        // for a post-mortem.
        if self.keep || std::env::var_os("CELL_LAB_KEEP").is_some() {
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
