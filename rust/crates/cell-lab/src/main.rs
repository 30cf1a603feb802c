//! `cell-lab`: bring the namespace lab up for a human. See `cell-lab --help`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cell_lab::Lab;
use cell_lab::lab::{self, WEB_V4, fw_dns};
use cell_lab::probe::{self, Transport};
use clap::{Parser, Subcommand};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

const SAMPLE_POLICY: &str = r#"{
  "https": [
    { "host": "api.example.test", "comment": "the model provider" },
    { "host": "*.github.test", "includeApex": true }
  ],
  "tcp": [ { "host": "git.example.test", "ports": [22] } ],
  "deny": [ "gist.github.test" ],
  "dns": { "upstream": ["192.0.2.53"], "forward": ["*.corp.test"] }
}
"#;

const AFTER_HELP: &str = "\
The lab is three network namespaces: agent ── firewall ── internet. The firewall runs the
real nftables ruleset and the real cell-proxy; the internet side runs a fake resolver
(192.0.2.53) and is reachable at 203.0.113.10. Needs root.

Examples:
  cell-lab demo                      allowed and denied lookups and connections, then clean up
  cell-lab up --policy my.json       keep a lab running; prints how to get a shell in the agent
  cell-lab gc                        remove namespaces left by a crashed run";

/// The cell namespace lab: the firewall, for real, without a VM.
#[derive(Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring a lab up with a sample policy, show what is allowed and denied, tear it down.
    Demo(ProxyArgs),
    /// Bring a lab up and keep it until Ctrl-C.
    Up(ProxyArgs),
    /// Remove lab namespaces whose process is gone.
    Gc,
    /// Benchmark: direct TLS, cell-proxy, mitmproxy, squid and srt side by side (not a test).
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The cell-proxy binary (default: next to this one). Use a release build.
    #[arg(long, value_name = "PATH")]
    proxy: Option<PathBuf>,
    /// mitmdump from mitmproxy; without it the mitmproxy column says why.
    #[arg(long, value_name = "PATH")]
    mitmdump: Option<PathBuf>,
    /// squid built with OpenSSL (Debian's squid-openssl), run with a generated ssl-bump config.
    #[arg(long, value_name = "PATH")]
    squid: Option<PathBuf>,
    /// node, to run sandbox-runtime's proxy.
    #[arg(long, value_name = "PATH")]
    node: Option<PathBuf>,
    /// The installed @anthropic-ai/sandbox-runtime package directory (its package.json's).
    #[arg(long, value_name = "DIR")]
    srt: Option<PathBuf>,
    /// hyperfine, for jail start-up (srt vs cell jail).
    #[arg(long, value_name = "PATH")]
    hyperfine: Option<PathBuf>,
    /// The cell binary, for `cell jail` start-up. Use a release build.
    #[arg(long, value_name = "PATH")]
    cell: Option<PathBuf>,
    /// A peer the installer could not provide, and why: `squid=apt-get failed`. Repeatable.
    #[arg(long, value_name = "PEER=REASON")]
    unavailable: Vec<String>,
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 3)]
    phase_secs: u64,
    /// Runs of each throughput phase; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to write the results as JSON.
    #[arg(long, value_name = "FILE", default_value = "bench-proxy.json")]
    output: PathBuf,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Policy document (default: a sample allowing api.example.test, *.github.test, git.example.test:22).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// The cell-proxy binary (default: next to this one).
    #[arg(long, value_name = "PATH")]
    proxy: Option<PathBuf>,
}

impl ProxyArgs {
    fn proxy(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.proxy {
            return Ok(p.clone());
        }
        let here = std::env::current_exe()?;
        let next = here.with_file_name("cell-proxy");
        if next.exists() {
            Ok(next)
        } else {
            bail!(
                "cell-proxy not found next to {}; build it (`cargo build -p cell-proxy`) or pass --proxy",
                here.display()
            )
        }
    }

    fn start(&self) -> anyhow::Result<Lab> {
        cell_lab::available().map_err(|e| anyhow::anyhow!(e))?;
        let proxy = self.proxy()?;
        let mut lab = Lab::new().context("building the lab")?;
        let policy = match &self.policy {
            Some(p) => p.clone(),
            None => {
                let p = lab.dir.join("policy.json");
                std::fs::write(&p, SAMPLE_POLICY)?;
                p
            }
        };
        lab.start_resolver(&[("db.corp.test", WEB_V4), ("api.example.test", WEB_V4)])?;
        lab.start_proxy(&proxy, &policy, Some(&lab.dir.join("overlay.json")))?;
        Ok(lab)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cell-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gc => {
            let removed = cell_lab::netns::gc()?;
            println!(
                "removed {} stale namespace(s){}",
                removed.len(),
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", removed.join(", "))
                }
            );
            Ok(())
        }
        Command::Up(args) => {
            // Block the signals before any thread exists, so every thread inherits
            // the mask and only our waiter sees Ctrl-C: the lab is then dropped normally.
            let (tx, rx) = std::sync::mpsc::channel();
            ctrlc_channel(tx)?;
            let lab = args.start()?;
            println!(
                "lab {} is up (policy reload: kill -HUP the cell-proxy process)",
                lab.id
            );
            println!(
                "  agent shell:    ip netns exec {} bash   (DNS server {})",
                lab.agent.name(),
                fw_dns()
            );
            println!(
                "  firewall rules: ip netns exec {} nft list ruleset",
                lab.firewall.name()
            );
            println!("  events:         tail -f {}", lab.events_path().display());
            println!("Ctrl-C removes everything.");
            let _ = rx.recv();
            println!("\nremoving lab {}", lab.id);
            Ok(())
        }
        Command::Demo(args) => demo(args),
        Command::Bench(args) => {
            cell_lab::available().map_err(|e| anyhow::anyhow!(e))?;
            let proxy = ProxyArgs {
                policy: None,
                proxy: args.proxy,
            }
            .proxy()?;
            let plan = cell_lab::bench::Plan {
                phase: Duration::from_secs(args.phase_secs),
                reps: args.runs.max(1),
                ..Default::default()
            };
            let unavailable = args
                .unavailable
                .iter()
                .map(|u| {
                    u.split_once('=')
                        .map(|(p, r)| (p.to_string(), r.to_string()))
                        .with_context(|| format!("--unavailable {u}: expected PEER=REASON"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Absolute paths: the peers start with other working directories.
            let abs = |p: Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
                p.map(|p| std::fs::canonicalize(&p).with_context(|| format!("{}", p.display())))
                    .transpose()
            };
            let tools = cell_lab::bench::Tools {
                mitmdump: abs(args.mitmdump)?,
                squid: abs(args.squid)?,
                node: abs(args.node)?,
                srt_pkg: abs(args.srt)?,
                hyperfine: abs(args.hyperfine)?,
                cell: abs(args.cell)?,
                unavailable,
            };
            let results = cell_lab::bench::run(&proxy, &tools, &plan)?;
            std::fs::write(&args.output, serde_json::to_string_pretty(&results)? + "\n")?;
            println!("{}", cell_lab::bench::table(&results));
            println!("results: {}", args.output.display());
            Ok(())
        }
    }
}

fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        let _ = set.wait();
        let _ = tx.send(());
    });
    Ok(())
}

fn describe(m: &Message) -> String {
    let addrs: Vec<String> = probe::a_records(m).iter().map(|a| a.to_string()).collect();
    let mut s = match m.metadata.response_code {
        ResponseCode::NoError => "NOERROR".to_string(),
        ResponseCode::NXDomain => "NXDOMAIN".to_string(),
        other => other.to_string(),
    };
    if !addrs.is_empty() {
        s.push_str(&format!(" {}", addrs.join(", ")));
    }
    if let Some(t) = probe::ede_text(m) {
        s.push_str(&format!("\n{:>44}{t}", ""));
    }
    s
}

fn demo(args: ProxyArgs) -> anyhow::Result<()> {
    eprintln!("building the lab (3 namespaces, nftables, cell-proxy)…");
    let lab = args.start()?;
    println!(
        "lab {} up: agent ── firewall (cell-proxy, nftables) ── internet\n",
        lab.id
    );
    println!("DNS from the agent:");
    let mut synthetic = None;
    for (name, t) in [
        ("api.example.test.", RecordType::A),
        ("raw.github.test.", RecordType::A),
        ("gist.github.test.", RecordType::A),
        ("secret-data-4f2a9c.evil.test.", RecordType::TXT),
        ("db.corp.test.", RecordType::A),
        ("api.example.test.", RecordType::AAAA),
    ] {
        let m = probe::dns(&lab.agent, fw_dns(), name, t, Transport::Udp)?;
        if name.starts_with("api") && t == RecordType::A {
            synthetic = probe::a_records(&m).first().copied();
        }
        println!(
            "  {:<36}{:<6}{}",
            name.trim_end_matches('.'),
            t.to_string(),
            describe(&m)
        );
    }
    println!(
        "\nWhat the upstream resolver was asked: {:?}",
        lab.resolver.queries()
    );
    println!("\nConnections from the agent:");
    let web = SocketAddr::new(IpAddr::V4(WEB_V4), 443);
    let cases = [
        ("203.0.113.10:443 (direct IP)", web),
        (
            "192.0.2.53:53 (another DNS server)",
            SocketAddr::new(IpAddr::V4(lab::RESOLVER_V4), 53),
        ),
    ];
    for (what, addr) in cases {
        let p = probe::tcp(&lab.agent, addr, Duration::from_secs(3))?;
        println!("  tcp  {what:<48} {:?} after {:?}", p.outcome, p.elapsed);
    }
    if let Some(ip) = synthetic {
        let p = probe::udp(
            &lab.agent,
            SocketAddr::new(IpAddr::V4(ip), 443),
            b"quic".to_vec(),
            Duration::from_secs(3),
        )?;
        println!(
            "  udp  {:<48} {:?} after {:?}",
            format!("{ip}:443 (QUIC to api.example.test)"),
            p.outcome,
            p.elapsed
        );
    }
    let (ping, took) = probe::ping(&lab.agent, WEB_V4, Duration::from_secs(3))?;
    println!("  icmp {:<48} {ping:?} after {took:?}", "echo 203.0.113.10");
    println!("\nHTTPS from the agent (trusting the cell CA), through the intercepting proxy:");
    let web = lab.https_server(&[("api.example.test", cell_lab::https::CertKind::Valid)])?;
    if let Some(ip) = synthetic {
        let client = cell_lab::https::Client::new(&lab.cell_ca_pem()?, &[b"h2", b"http/1.1"])?;
        let stream = lab.agent_connect(SocketAddr::new(IpAddr::V4(ip), 443))?;
        let got = lab.block_on(client.fetch(
            stream,
            "api.example.test",
            vec![
                cell_lab::https::get("GET", "api.example.test", "/echo"),
                cell_lab::https::get("GET", "raw.github.test", "/echo"),
            ],
            512,
        ))?;
        for (what, f) in [
            "GET https://api.example.test/echo",
            "same connection, Host: raw.github.test",
        ]
        .iter()
        .zip(&got)
        {
            let reason = f
                .headers
                .get("x-cell-deny-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            println!(
                "  {what:<48} {} {}",
                f.status,
                if reason.is_empty() {
                    String::from_utf8_lossy(&f.body).trim().to_string()
                } else {
                    reason.to_string()
                }
            );
        }
    }
    let cell = std::env::current_exe()?.with_file_name("cell");
    if cell.exists()
        && std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok()
    {
        println!(
            "\nThe same firewall without a VM: `cell jail` (its host here is the lab's firewall namespace):"
        );
        for url in [
            "https://api.example.test/echo",
            "https://evil.example.test/",
            "https://203.0.113.10/",
        ] {
            let out = lab
                .firewall
                .command(&cell)
                .args([
                    "jail",
                    "--allow",
                    "api.example.test",
                    "--dns-upstream",
                    "192.0.2.53",
                    "--upstream-ca",
                ])
                .arg(lab.dir.join("internet-ca.pem"))
                .args(["--", "curl", "-sS", "--max-time", "5", url])
                .output()?;
            let text = if out.status.success() {
                String::from_utf8_lossy(&out.stdout)
            } else {
                String::from_utf8_lossy(&out.stderr)
            };
            println!(
                "  cell jail --allow api.example.test -- curl {url:<34} exit {} {}",
                out.status.code().unwrap_or(-1),
                text.trim()
            );
        }
    }
    println!(
        "\nRequests that reached the fake HTTPS server: {:?}",
        web.seen()
    );
    let wire = lab.wire()?;
    println!(
        "\nPackets that reached the internet side: {} to the resolver, {} other (the proxy's own upstream connections)",
        wire.resolver, wire.other
    );
    println!("\nEvent log ({}):", lab.events_path().display());
    for e in lab
        .events()
        .iter()
        .filter(|e| e["event"] == "dns" || e["event"] == "reject")
    {
        println!("  {e}");
    }
    println!("\nlab {} removed.", lab.id);
    Ok(())
}
