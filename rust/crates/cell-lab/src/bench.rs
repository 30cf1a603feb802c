//! `cell-lab bench`: direct TLS, `cell-proxy` and its peers (mitmproxy,
//! squid with ssl-bump, sandbox-runtime's proxy) side by side, in one run,
//! in the lab. Not a test: it never gates CI. See docs/benchmarks.md.
//!
//! Two sections. **Transparent**: the agent's connections are redirected by
//! nftables (cell-proxy's own rules, or a redirect to mitmproxy); every
//! measurement, latency and idle memory included. **Explicit**: the client
//! asks each proxy for a `CONNECT` tunnel, as a program that honours
//! `HTTPS_PROXY` does; the throughput phases over HTTP/1.1 and HTTP/2.
//! Every throughput phase runs `reps` times (interleaved) and reports the
//! median, with the proxy's CPU per request next to it: on a machine where
//! client, proxy and server share the cores, CPU per request is the fair
//! figure.
//!
//! The client runs on a thread that has entered the agent namespace; every
//! thread it creates (the tokio workers included) starts there too, so all
//! its sockets are the agent's.

mod client;
mod cpu;
mod peers;
mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::Lab;
use crate::https::CertKind;
use crate::lab::{AGENT_IFACE, EXPLICIT_PORT, FW_AGENT_V4, WEB_V4};
use client::{NoH2, Phase, Proto, Target};

pub use report::table;

const NAME: &str = "bench.example.test";
/// The same server under a name the firewall namespace's /etc/hosts does
/// not answer (see [`peers::NetnsHosts`]): a `cell jail` started there
/// inherits that file, and its command must ask the jail's DNS.
const JAIL_NAME: &str = "jail.example.test";

/// How long each throughput phase runs, and the knobs of the others.
#[derive(Clone, Debug)]
pub struct Plan {
    pub phase: Duration,
    pub keepalive_conns: usize,
    pub new_conn_workers: usize,
    pub bulk_mb: usize,
    pub rate_per_sec: u32,
    pub idle_conns: usize,
    /// Runs of each throughput phase; the median is reported.
    pub reps: usize,
    /// hyperfine runs per command for jail start-up.
    pub jail_runs: u32,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            phase: Duration::from_secs(3),
            keepalive_conns: 16,
            new_conn_workers: 16,
            bulk_mb: 200,
            rate_per_sec: 200,
            idle_conns: 1000,
            reps: 3,
            jail_runs: 30,
        }
    }
}

/// The peers' programs; a missing one is a column that says why.
#[derive(Clone, Debug, Default)]
pub struct Tools {
    pub mitmdump: Option<PathBuf>,
    pub squid: Option<PathBuf>,
    pub node: Option<PathBuf>,
    /// The installed `@anthropic-ai/sandbox-runtime` package directory.
    pub srt_pkg: Option<PathBuf>,
    pub hyperfine: Option<PathBuf>,
    /// The `cell` binary, for `cell jail` start-up.
    pub cell: Option<PathBuf>,
    /// Peers the installer could not provide, and why (`squid`, `srt`,
    /// `mitmproxy`, `hyperfine`, `cell`).
    pub unavailable: Vec<(String, String)>,
}

impl Tools {
    fn missing(&self, peer: &str, flag: &str) -> String {
        self.unavailable
            .iter()
            .find(|(p, _)| p == peer)
            .map(|(_, why)| format!("not installed: {why}"))
            .unwrap_or_else(|| format!("not run: {flag} not given"))
    }
}

/// cell-proxy as the firewall VM runs it by default (one vCPU, so one
/// worker), and as its peers run here: squid, mitmproxy and srt's node each
/// serve from one thread.
fn one_worker() -> [&'static std::ffi::OsStr; 2] {
    [std::ffi::OsStr::new("--workers"), std::ffi::OsStr::new("1")]
}

/// The secret of the injection phase: what the agent sends, and the value
/// the proxy puts in its place (never the agent's).
const PLACEHOLDER: &str = "cell-placeholder-bench";
const SECRET_VALUE: &str = "sk-bench-3f9a1c7e5b2d4086a1e9c3b7d5f20486";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn round(x: Option<f64>, digits: i32) -> Value {
    let f = 10f64.powi(digits);
    x.map(|x| json!((x * f).round() / f)).unwrap_or(Value::Null)
}

/// The throughput phases, `plan.reps` times each (interleaved), medians and
/// the proxy's CPU per request (connection, MB).
async fn throughput(t: &Target, plan: &Plan, cpu: client::CpuProbe<'_>) -> anyhow::Result<Value> {
    let c = client::connector(&t.ca_pem, t.proto)?;
    let (mut ka, mut nc, mut bk): (Vec<Phase>, Vec<Phase>, Vec<Phase>) = Default::default();
    for rep in 1..=plan.reps {
        eprintln!(
            "  {} ({}), run {rep}/{}: keep-alive requests/s, new connections/s, bulk",
            t.label,
            t.proto.label(),
            plan.reps
        );
        ka.push(
            client::keepalive(t, &c, plan, cpu)
                .await
                .context("keep-alive phase")?,
        );
        nc.push(
            client::new_conns(t, &c, plan, cpu)
                .await
                .context("new-connections phase")?,
        );
        bk.push(client::bulk(t, &c, plan, cpu).await.context("bulk phase")?);
    }
    let rate = |v: &[Phase]| median(v.iter().map(|p| p.rate).collect());
    let per = |v: &[Phase], scale: f64| {
        median(
            v.iter()
                .filter_map(|p| p.cpu_per().map(|c| c * scale))
                .collect(),
        )
    };
    let runs: Vec<Value> = (0..plan.reps)
        .map(|i| {
            json!({
                "requests_per_sec": round(Some(ka[i].rate), 0),
                "keepalive_requests": ka[i].served,
                "keepalive_cpu_s": round(ka[i].cpu_s, 2),
                "new_connections_per_sec": round(Some(nc[i].rate), 0),
                "new_connections": nc[i].served,
                "new_connections_cpu_s": round(nc[i].cpu_s, 2),
                "bulk_mb_per_sec": round(Some(bk[i].rate), 1),
                "bulk_cpu_s": round(bk[i].cpu_s, 2),
            })
        })
        .collect();
    Ok(json!({
        "target": t.label,
        "proto": t.proto.label(),
        "requests_per_sec": round(rate(&ka), 0),
        "cpu_us_per_request": round(per(&ka, 1e6), 1),
        "new_connections_per_sec": round(rate(&nc), 0),
        "cpu_ms_per_new_connection": round(per(&nc, 1e3), 3),
        "bulk_mb_per_sec": round(rate(&bk), 1),
        "cpu_ms_per_mb": round(per(&bk, 1e3), 2),
        "runs": runs,
    }))
}

/// Everything for one transparent target: throughput (with CPU), latency
/// at a fixed rate, a stream's first byte, memory with idle connections.
async fn measure(
    t: &Target,
    plan: &Plan,
    cpu: client::CpuProbe<'_>,
    rss: &(dyn Fn() -> Option<u64> + Sync),
) -> anyhow::Result<Value> {
    let mut out = throughput(t, plan, cpu).await?;
    let c = client::connector(&t.ca_pem, t.proto)?;

    eprintln!("  {}: latency at {} requests/s", t.label, plan.rate_per_sec);
    let conns = 4usize;
    let mut tasks = Vec::new();
    let per_conn = plan.rate_per_sec as f64 / conns as f64;
    let mut senders = Vec::new();
    for _ in 0..conns {
        senders.push(client::connect(t, &c).await?);
    }
    for mut send in senders {
        let (phase, t) = (plan.phase, t.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_conn));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + phase;
            while Instant::now() < end {
                tick.tick().await;
                let s = Instant::now();
                client::get(&mut send, "/echo", &t).await?;
                lat.push(s.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await?.context("latency phase")?);
    }
    lat.sort();

    // Time to the first byte of a streamed response (the fake's /sse sends
    // its first event at once, the next 1.5 s later): what a recorder or a
    // scanner that buffered would delay. A new connection per sample, its
    // handshake not timed; the stream is dropped after the first byte.
    eprintln!("  {}: time to first byte of a stream", t.label);
    let mut ttfb = Vec::new();
    for _ in 0..20 {
        let mut send = client::connect(t, &c).await?;
        let req = client::request(&send, "/sse", t)?;
        let s = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(10), client::send(&mut send, req))
            .await
            .context("stream: no answer within 10 s")??;
        let mut body = resp.into_body();
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .context("stream: no first byte within 10 s")?
        {
            if frame?.data_ref().is_some_and(|d| !d.is_empty()) {
                break;
            }
        }
        ttfb.push(s.elapsed());
    }
    ttfb.sort();

    eprintln!("  {}: {} idle connections", t.label, plan.idle_conns);
    let before = rss();
    let mut idle = Vec::new();
    for _ in 0..plan.idle_conns {
        let mut send = client::connect(t, &c).await?;
        client::get(&mut send, "/echo", t)
            .await
            .context("idle-connections phase")?;
        idle.push(send);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = rss();
    drop(idle);

    let mb = |b: Option<u64>| round(b.map(|b| b as f64 / 1048576.0), 1);
    let o = out.as_object_mut().context("throughput result")?;
    o.insert(
        "latency_ms_p50".into(),
        round(Some(percentile(&lat, 0.50)), 3),
    );
    o.insert(
        "latency_ms_p99".into(),
        round(Some(percentile(&lat, 0.99)), 3),
    );
    o.insert("latency_samples".into(), json!(lat.len()));
    o.insert(
        "stream_first_byte_ms_p50".into(),
        round(Some(percentile(&ttfb, 0.50)), 3),
    );
    o.insert(
        "stream_first_byte_ms_p99".into(),
        round(Some(percentile(&ttfb, 0.99)), 3),
    );
    o.insert("rss_mb_before_idle".into(), mb(before));
    o.insert("rss_mb_with_idle".into(), mb(held));
    Ok(out)
}

/// Runs the client for `t` inside the agent namespace: everything
/// (`full`) or the throughput phases only.
fn in_agent(
    lab: &Lab,
    t: Target,
    plan: &Plan,
    pid: Option<u32>,
    full: bool,
) -> anyhow::Result<Value> {
    let plan = plan.clone();
    lab.agent.run(move || -> anyhow::Result<Value> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let cpu = move || pid.and_then(cpu::tree_cpu_secs);
        let rss = move || pid.and_then(cpu::tree_rss);
        rt.block_on(async {
            if full {
                measure(&t, &plan, &cpu, &rss).await
            } else {
                throughput(&t, &plan, &cpu).await
            }
        })
    })?
}

fn raise_fd_limit() -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard)?;
    Ok(())
}

/// A row that is not a number, and why.
fn not_run(label: &str, proto: Option<Proto>, why: &str) -> Value {
    json!({"target": label, "proto": proto.map(Proto::label), "na": why})
}

/// The explicit-proxy rows of one peer: HTTP/1.1 and HTTP/2. An HTTP/2
/// client the peer does not serve is "n/a"; a failed phase keeps the lab's
/// directory and says where.
fn explicit_rows(lab: &mut Lab, t: &Target, plan: &Plan, pid: Option<u32>, rows: &mut Vec<Value>) {
    for proto in [Proto::H1, Proto::H2] {
        let t = Target { proto, ..t.clone() };
        eprintln!("{} (explicit proxy, {})", t.label, proto.label());
        match in_agent(lab, t.clone(), plan, pid, false) {
            Ok(r) => rows.push(r),
            Err(e) => {
                if let Some(no) = e.chain().find_map(|c| c.downcast_ref::<NoH2>()) {
                    eprintln!("  n/a: {no}");
                    rows.push(not_run(&t.label, Some(proto), &no.to_string()));
                } else {
                    lab.keep();
                    let why = format!("failed: {e:#} (logs kept in {})", lab.dir.display());
                    eprintln!("  {why}");
                    rows.push(not_run(&t.label, Some(proto), &why));
                }
            }
        }
    }
}

fn first_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().map(|l| l.trim().to_string())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1048576.0 * 10.0).round() / 10.0);
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_gib": mem_gib,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.trim().to_string()),
    })
}

fn now_utc() -> Option<String> {
    first_line(Path::new("date"), &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
}

fn delete_cell_tables(lab: &Lab) -> anyhow::Result<()> {
    for family in ["inet", "netdev"] {
        lab.firewall
            .exec("nft", &["delete", "table", family, "cell"])?;
    }
    Ok(())
}

/// Runs the whole comparison; returns the JSON results.
pub fn run(proxy_bin: &Path, tools: &Tools, plan: &Plan) -> anyhow::Result<Value> {
    raise_fd_limit()?;
    let started = now_utc();
    let machine = machine();
    let mut lab = Lab::new()?;
    lab.start_resolver(&[(NAME, WEB_V4), (JAIL_NAME, WEB_V4)])?;
    let _web = lab.https_server(&[(NAME, CertKind::Valid), (JAIL_NAME, CertKind::Valid)])?;
    let _hosts = peers::NetnsHosts::new(&lab)?;
    let direct_addr = SocketAddr::new(IpAddr::V4(WEB_V4), 443);
    let mut transparent = Vec::new();
    let mut explicit = Vec::new();
    let kept = |lab: &mut Lab, e: anyhow::Error, phase: &str| {
        // The proxy's log and events say why; a partial run is no result.
        lab.keep();
        e.context(format!(
            "{phase} failed; the lab's logs and events are kept in {}",
            lab.dir.display()
        ))
    };

    eprintln!("direct TLS (no proxy)");
    let direct = Target {
        label: "direct".into(),
        addr: direct_addr,
        explicit: false,
        ca_pem: lab.internet_ca.pem.clone(),
        header: None,
        proto: Proto::H1,
    };
    match in_agent(&lab, direct.clone(), plan, None, true) {
        Ok(r) => transparent.push(r),
        Err(e) => return Err(kept(&mut lab, e, "direct")),
    }
    eprintln!("direct TLS (no proxy), h2");
    match in_agent(
        &lab,
        Target {
            proto: Proto::H2,
            ..direct.clone()
        },
        plan,
        None,
        false,
    ) {
        Ok(r) => explicit.push(r),
        Err(e) => return Err(kept(&mut lab, e, "direct h2")),
    }

    eprintln!("cell-proxy");
    let policy = lab.dir.join("bench-policy.json");
    std::fs::write(
        &policy,
        format!(r#"{{"https":[{{"host":"{NAME}"}}],"dns":{{"upstream":["192.0.2.53"]}}}}"#),
    )?;
    lab.start_proxy_with(proxy_bin, &policy, None, &one_worker())?;
    let ip = synthetic_address(&lab)?;
    let cell_ca = lab.cell_ca_pem()?;
    let cell = Target {
        label: "cell-proxy".into(),
        addr: SocketAddr::new(IpAddr::V4(ip), 443),
        explicit: false,
        ca_pem: cell_ca.clone(),
        header: None,
        proto: Proto::H1,
    };
    let pid = lab.proxy_pid();
    match in_agent(&lab, cell, plan, pid, true) {
        Ok(r) => transparent.push(r),
        Err(e) => return Err(kept(&mut lab, e, "cell-proxy (transparent)")),
    }
    // The same daemon on its explicit port: CONNECT, then the same
    // interception as a redirected connection.
    for proto in [Proto::H1, Proto::H2] {
        eprintln!("cell-proxy (explicit proxy, {})", proto.label());
        let t = Target {
            label: "cell-proxy".into(),
            addr: SocketAddr::new(IpAddr::V4(FW_AGENT_V4), EXPLICIT_PORT),
            explicit: true,
            ca_pem: cell_ca.clone(),
            header: None,
            proto,
        };
        match in_agent(&lab, t, plan, pid, false) {
            Ok(r) => explicit.push(r),
            Err(e) => return Err(kept(&mut lab, e, "cell-proxy (explicit)")),
        }
    }
    lab.stop_proxy();
    delete_cell_tables(&lab)?;

    // The same with a secret: every request carries its placeholder in
    // `authorization`, which the proxy replaces by the value; every request
    // head and response is scanned for the value (leaks, echoes).
    eprintln!("cell-proxy with secret injection and spy recording");
    let secrets = lab.dir.join("bench-secrets.json");
    std::fs::write(
        &secrets,
        format!(
            r#"{{"version":1,"secrets":[{{"name":"bench","env":null,"placeholder":"{PLACEHOLDER}","hosts":["{NAME}"],"source":{{"env":"BENCH"}}}}]}}"#
        ),
    )?;
    // The same host, recorded by the spy (bodies capped at the default).
    let spy_policy = lab.dir.join("bench-policy-spy.json");
    std::fs::write(
        &spy_policy,
        format!(
            r#"{{"https":[{{"host":"{NAME}","spy":true}}],"dns":{{"upstream":["192.0.2.53"]}}}}"#
        ),
    )?;
    let store = lab.dir.join("bench-spy.jsonl");
    lab.start_proxy_with(
        proxy_bin,
        &spy_policy,
        None,
        &[
            one_worker()[0],
            one_worker()[1],
            std::ffi::OsStr::new("--secrets"),
            secrets.as_os_str(),
            std::ffi::OsStr::new("--spy"),
            store.as_os_str(),
        ],
    )?;
    let loaded = lab.control(&format!(
        r#"{{"op":"secrets-load","values":{{"bench":"{SECRET_VALUE}"}}}}"#
    ))?;
    if loaded["ok"] != Value::Bool(true) {
        bail!("the bench secret was not loaded: {loaded}");
    }
    // A new daemon: its own synthetic address for the name, asked again.
    let ip = synthetic_address(&lab)?;
    let injected = Target {
        label: "cell-proxy+secret+spy".into(),
        addr: SocketAddr::new(IpAddr::V4(ip), 443),
        explicit: false,
        ca_pem: lab.cell_ca_pem()?,
        header: Some(("authorization", "Bearer cell-placeholder-bench")),
        proto: Proto::H1,
    };
    let pid = lab.proxy_pid();
    match in_agent(&lab, injected, plan, pid, true) {
        Ok(r) => transparent.push(r),
        Err(e) => return Err(kept(&mut lab, e, "cell-proxy+secret+spy")),
    }
    let status = lab.control(r#"{"op":"secrets"}"#)?;
    let uses = status["secrets"][0]["uses"].as_u64().unwrap_or(0);
    if uses == 0 {
        bail!("the secret was never injected during its phase: {status}");
    }
    eprintln!("  the secret was put into {uses} requests");
    let recorded = std::fs::read_to_string(&store)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""event":"exchange""#))
        .count();
    if recorded == 0 {
        bail!("the spy recorded nothing during its phase");
    }
    eprintln!(
        "  the spy recorded {recorded} exchanges (more may have been dropped by its bounded queue)"
    );
    lab.stop_proxy();
    delete_cell_tables(&lab)?;

    let explicit_target = |label: &str, port: u16, ca_pem: String| Target {
        label: label.into(),
        addr: peers::addr(port),
        explicit: true,
        ca_pem,
        header: None,
        proto: Proto::H1,
    };

    // squid with ssl-bump.
    match &tools.squid {
        None => {
            for p in [Proto::H1, Proto::H2] {
                explicit.push(not_run(
                    "squid",
                    Some(p),
                    &tools.missing("squid", "--squid"),
                ));
            }
        }
        Some(bin) => {
            eprintln!("squid (ssl-bump)");
            match peers::squid(&lab, bin) {
                Ok((running, ca)) => {
                    let t = explicit_target("squid", peers::SQUID_PORT, ca);
                    explicit_rows(&mut lab, &t, plan, Some(running.pid()), &mut explicit);
                    drop(running);
                }
                Err(e) => {
                    lab.keep();
                    let why = format!("did not start: {e:#} (logs kept in {})", lab.dir.display());
                    eprintln!("  {why}");
                    for p in [Proto::H1, Proto::H2] {
                        explicit.push(not_run("squid", Some(p), &why));
                    }
                }
            }
        }
    }

    // sandbox-runtime: its proxy as a sandboxed command uses it (tunnel),
    // and its proxy-only mode (TLS termination, external decider).
    match (&tools.node, &tools.srt_pkg) {
        (Some(node), Some(pkg)) => {
            eprintln!("srt (tunnel)");
            match peers::srt_tunnel(&lab, node, pkg) {
                Ok(running) => {
                    // A tunnel: the client verifies the upstream itself.
                    let t = explicit_target(
                        "srt (tunnel)",
                        peers::SRT_TUNNEL_PORT,
                        lab.internet_ca.pem.clone(),
                    );
                    explicit_rows(&mut lab, &t, plan, Some(running.pid()), &mut explicit);
                    drop(running);
                }
                Err(e) => {
                    lab.keep();
                    let why = format!("did not start: {e:#} (logs kept in {})", lab.dir.display());
                    for p in [Proto::H1, Proto::H2] {
                        explicit.push(not_run("srt (tunnel)", Some(p), &why));
                    }
                }
            }
            eprintln!("srt proxy (TLS termination)");
            match peers::srt_tls(&lab, node, pkg) {
                Ok((running, ca)) => {
                    let t = explicit_target("srt proxy (TLS termination)", peers::SRT_TLS_PORT, ca);
                    explicit_rows(&mut lab, &t, plan, Some(running.pid()), &mut explicit);
                    drop(running);
                }
                Err(e) => {
                    lab.keep();
                    let why = format!("did not start: {e:#} (logs kept in {})", lab.dir.display());
                    for p in [Proto::H1, Proto::H2] {
                        explicit.push(not_run("srt proxy (TLS termination)", Some(p), &why));
                    }
                }
            }
        }
        _ => {
            let why = tools.missing("srt", "--node and --srt");
            for label in ["srt (tunnel)", "srt proxy (TLS termination)"] {
                for p in [Proto::H1, Proto::H2] {
                    explicit.push(not_run(label, Some(p), &why));
                }
            }
        }
    }

    // mitmproxy: transparent (nftables redirect) and explicit, one process.
    match &tools.mitmdump {
        None => {
            let why = tools.missing("mitmproxy", "--mitmdump");
            transparent.push(not_run("mitmproxy", Some(Proto::H1), &why));
            for p in [Proto::H1, Proto::H2] {
                explicit.push(not_run("mitmproxy", Some(p), &why));
            }
        }
        Some(bin) => {
            eprintln!("mitmproxy");
            match peers::mitm(&lab, bin) {
                Ok((running, ca)) => {
                    redirect_to(&lab, peers::MITM_TRANSPARENT_PORT)?;
                    let t = Target {
                        label: "mitmproxy".into(),
                        addr: direct_addr,
                        explicit: false,
                        ca_pem: ca.clone(),
                        header: None,
                        proto: Proto::H1,
                    };
                    eprintln!("mitmproxy (transparent)");
                    match in_agent(&lab, t, plan, Some(running.pid()), true) {
                        Ok(r) => transparent.push(r),
                        Err(e) => {
                            lab.keep();
                            let why = format!("failed: {e:#} (logs kept in {})", lab.dir.display());
                            transparent.push(not_run("mitmproxy", Some(Proto::H1), &why));
                        }
                    }
                    lab.firewall
                        .exec("nft", &["delete", "table", "ip", "mitm"])?;
                    let t = explicit_target("mitmproxy", peers::MITM_EXPLICIT_PORT, ca);
                    explicit_rows(&mut lab, &t, plan, Some(running.pid()), &mut explicit);
                    drop(running);
                }
                Err(e) => {
                    lab.keep();
                    let why = format!("did not start: {e:#} (logs kept in {})", lab.dir.display());
                    transparent.push(not_run("mitmproxy", Some(Proto::H1), &why));
                    for p in [Proto::H1, Proto::H2] {
                        explicit.push(not_run("mitmproxy", Some(p), &why));
                    }
                }
            }
        }
    }

    // Jails: srt beside `cell jail`, running `true` (start-up) and one curl
    // making requests to the bench host (in-jail requests).
    let srt_bin = tools
        .srt_pkg
        .as_ref()
        .map(|p| p.join("dist/cli.js"))
        .filter(|p| p.exists());
    let jail = match (&tools.hyperfine, &srt_bin, &tools.cell, &tools.node) {
        (Some(h), Some(srt), Some(cell), Some(_)) => {
            eprintln!("jail start-up (hyperfine, {} runs each)", plan.jail_runs);
            match peers::jail_startup(&lab, h, srt, cell, plan.jail_runs) {
                Ok(v) => v,
                Err(e) => {
                    lab.keep();
                    json!({"na": format!("failed: {e:#} (logs kept in {})", lab.dir.display())})
                }
            }
        }
        (None, ..) => json!({"na": tools.missing("hyperfine", "--hyperfine")}),
        (_, None, ..) => json!({"na": tools.missing("srt", "--srt")}),
        (_, _, None, _) => json!({"na": tools.missing("cell", "--cell")}),
        (.., None) => json!({"na": tools.missing("srt", "--node")}),
    };

    let version =
        |bin: &Option<PathBuf>, args: &[&str]| bin.as_deref().and_then(|b| first_line(b, args));
    let srt_version = tools.srt_pkg.as_ref().and_then(|p| {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(p.join("package.json")).ok()?).ok()?;
        v["version"].as_str().map(str::to_string)
    });
    // Every failed or unstartable peer kept the lab's directory and said so.
    let logs_kept_in = [&transparent, &explicit]
        .iter()
        .flat_map(|rows| rows.iter())
        .chain(std::iter::once(&jail))
        .any(|r| r["na"].as_str().is_some_and(|s| s.contains("logs kept in")))
        .then(|| lab.dir.display().to_string());
    let mut machine = machine;
    machine["loadavg_at_end"] = json!(
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|s| s.trim().to_string())
    );
    Ok(json!({
        "started": started,
        "finished": now_utc(),
        "machine": machine,
        "versions": {
            "squid": version(&tools.squid, &["-v"]),
            "node": version(&tools.node, &["--version"]),
            "sandbox-runtime": srt_version,
            "mitmproxy": version(&tools.mitmdump, &["--version"]),
            "hyperfine": version(&tools.hyperfine, &["--version"]),
        },
        "plan": {
            "phase_secs": plan.phase.as_secs_f64(),
            "keepalive_connections": plan.keepalive_conns,
            "new_connection_workers": plan.new_conn_workers,
            "bulk_mib": plan.bulk_mb,
            "latency_rate_per_sec": plan.rate_per_sec,
            "idle_connections": plan.idle_conns,
            "runs_per_phase": plan.reps,
        },
        "transparent": transparent,
        "explicit": explicit,
        "jail_startup": jail,
        "logs_kept_in": logs_kept_in,
    }))
}

/// Redirects the agent's TCP to port 443 to `port` in the firewall namespace.
fn redirect_to(lab: &Lab, port: u16) -> anyhow::Result<()> {
    lab.firewall.exec("nft", &["add", "table", "ip", "mitm"])?;
    lab.firewall.exec(
        "nft",
        &["add chain ip mitm pre { type nat hook prerouting priority dstnat; }"],
    )?;
    lab.firewall.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "mitm",
            "pre",
            "iifname",
            AGENT_IFACE,
            "tcp",
            "dport",
            "443",
            "redirect",
            "to",
            &format!(":{port}"),
        ],
    )?;
    Ok(())
}

/// The address the running daemon hands the agent for the bench host.
fn synthetic_address(lab: &Lab) -> anyhow::Result<Ipv4Addr> {
    let m = crate::probe::dns(
        &lab.agent,
        crate::lab::fw_dns(),
        &format!("{NAME}."),
        hickory_proto::rr::RecordType::A,
        crate::probe::Transport::Udp,
    )?;
    Ok(*crate::probe::a_records(&m)
        .first()
        .context("no synthetic address")?)
}
