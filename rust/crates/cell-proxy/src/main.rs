//! `cell-proxy`: the firewall daemon. See `cell-proxy --help`.

use cell_proxy::{ca, control, dns, events, nflog, proxy, state};

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cell_policy::Policy;
use cell_policy::nft::{self, FirewallParams};
use clap::Parser;
use hickory_server::Server;
use tokio::signal::unix::{SignalKind, signal};

use crate::events::{EventLog, Sink, event};
use crate::state::{Sources, State};

const AFTER_HELP: &str = "\
Examples:
  Validate a policy (what the Nix build does):
    cell-proxy --check --policy policy.json

  Show the nftables ruleset a policy compiles to:
    cell-proxy --print-ruleset --policy policy.json --agent-iface eth1 --listen 10.89.0.1 --agent-addr 10.89.0.2

  Run on the firewall VM (needs CAP_NET_ADMIN for nftables, CAP_NET_BIND_SERVICE for port 53):
    cell-proxy --policy /etc/cell/policy.json --overlay /var/lib/cell/overlay.json \\
               --agent-iface eth1 --listen 10.89.0.1 --agent-addr 10.89.0.2 \\
               --events /var/log/cell/events.jsonl

Reload: send SIGHUP after changing the policy or overlay. An invalid document is refused
with the reason in the event log, and the running policy stays in force.
If the daemon stops, its nftables rules stay: the agent's traffic fails closed.";

/// The cell firewall daemon: answers the agent's DNS from the allowlist with
/// synthetic addresses, and owns the nftables rules that send everything else
/// the agent tries to a fast reject.
#[derive(Parser, Debug)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Base policy document (JSON, format in docs/policy.md).
    #[arg(long, env = "CELL_POLICY", value_name = "FILE", required_unless_present_any = ["load_secrets", "secrets_status", "status"])]
    policy: Option<PathBuf>,

    /// Live overlay merged over the base (written by `cell allow`); a missing file counts as empty.
    #[arg(long, value_name = "FILE")]
    overlay: Option<PathBuf>,

    /// Validate the policy and overlay, print a summary, and exit (1 with every problem listed).
    #[arg(long, conflicts_with = "print_ruleset")]
    check: bool,

    /// Read a new overlay from FILE (`-`: standard input), validate it over the
    /// policy, write it to --overlay by rename, ask the running daemon on
    /// --control to reload, print its answer, and exit (0: in force). This is
    /// what `cell allow` runs on the firewall VM. An invalid overlay is refused
    /// and the old one stays.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["check", "print_ruleset"], requires = "overlay")]
    install_overlay: Option<PathBuf>,

    /// Print the compiled nftables ruleset (the JSON `nft -j -f` takes) and exit.
    #[arg(long)]
    print_ruleset: bool,

    /// Interface facing the agent; the only one the rules restrict.
    #[arg(long, value_name = "NAME", required_unless_present_any = ["check", "install_overlay", "load_secrets", "secrets_status", "status"])]
    agent_iface: Option<String>,

    /// The firewall's IPv4 address on the agent link; DNS and the proxies listen here.
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["check", "install_overlay", "load_secrets", "secrets_status", "status"])]
    listen: Option<Ipv4Addr>,

    /// The agent's own address on the link (repeatable: its IPv4 and IPv6 addresses).
    /// The ruleset drops every packet from the agent interface with any other source,
    /// so a forged source never makes the firewall answer towards the internet.
    #[arg(long = "agent-addr", value_name = "ADDR")]
    agent_addrs: Vec<std::net::IpAddr>,

    #[arg(long, default_value_t = 53, value_name = "PORT")]
    dns_port: u16,

    /// Where redirected agent TCP arrives.
    #[arg(long, default_value_t = 15001, value_name = "PORT")]
    transparent_port: u16,

    /// HTTP CONNECT / absolute-URI proxy for clients that honour HTTPS_PROXY.
    #[arg(long, default_value_t = 3128, value_name = "PORT")]
    explicit_port: u16,

    /// NFLOG group the ruleset logs rejected packets to; they become `reject` events.
    #[arg(long, default_value_t = 7, value_name = "GROUP")]
    nflog_group: u16,

    /// nftables table (family inet) owned by this daemon.
    #[arg(long, default_value = "cell", value_name = "NAME")]
    table: String,

    /// The nft binary.
    #[arg(long, default_value = "nft", value_name = "PATH")]
    nft: String,

    /// Leave nftables alone (something else installs the rules).
    #[arg(long)]
    no_firewall: bool,

    /// Event log: a file to append JSON lines to, or `-` for standard output.
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    events: Sink,

    /// Rotate the event log file before it would grow past this many bytes
    /// (renamed to FILE.1, FILE.1 to FILE.2, …); 0 never rotates.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    events_max_bytes: u64,

    /// How many rotated event log files to keep (FILE.1 … FILE.N); 0 keeps none.
    #[arg(long, default_value_t = 4, value_name = "N")]
    events_keep: u32,

    /// The spy store: each exchange with a host whose policy entry has `spy`, one JSON
    /// line (secrets redacted, bodies capped), for `cell spy`. Without it nothing is kept.
    #[arg(long, value_name = "FILE")]
    spy: Option<PathBuf>,

    /// Rotate the spy store before it would grow past this many bytes; 0 never rotates.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    spy_max_bytes: u64,

    /// How many rotated spy store files to keep (FILE.1 … FILE.N).
    #[arg(long, default_value_t = 4, value_name = "N")]
    spy_keep: u32,

    /// The most kept of each request or response body in the spy store (the rest is
    /// counted and marked `cut`).
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    spy_body_max: usize,

    /// Where the cell CA lives (`ca.key` mode 0600, `ca.crt` for the agent); created on first start.
    #[arg(long, default_value = "/var/lib/cell-proxy", value_name = "DIR")]
    state_dir: PathBuf,

    /// Bind the listeners and install the rules inside this named network namespace
    /// (`/run/netns/NAME`; a NAME with a `/` is the namespace file itself, such as
    /// `/proc/self/fd/3`) while upstream connections leave from the daemon's own.
    /// `cell jail` uses it: the firewall namespace then needs no uplink at all.
    #[arg(long, value_name = "NAME")]
    listen_netns: Option<String>,

    /// Threads that run DNS and the proxies (default: the CPUs this process may
    /// run on — one on the firewall VM's default single vCPU). More workers than
    /// CPUs only adds hand-offs between threads: measured in the lab, two workers
    /// sharing two cores with other work cost 20% more CPU per request than one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: Option<u16>,

    /// Control socket (JSON lines: {"op":"reload"}, {"op":"status"}); mode 0600.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// The secrets document (JSON, docs/secrets.md): names, scopes, locations,
    /// no values. With --check, every scope must be a host the policy intercepts.
    #[arg(long, env = "CELL_SECRETS", value_name = "FILE")]
    secrets: Option<PathBuf>,

    /// Read secret values as one JSON object {"NAME": "VALUE", …} (null unloads)
    /// from FILE (`-`: standard input, the only way that keeps them out of argv
    /// and off disk), hand them to the running daemon on --control, print which
    /// were loaded or refused (never a value), and exit (0: all loaded). This is
    /// what `cell` runs on the firewall VM.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["check", "print_ruleset", "install_overlay"], requires = "control")]
    load_secrets: Option<PathBuf>,

    /// Print the running daemon's secrets (name, scope, loaded, last used; never
    /// a value) as JSON, asking it on --control, and exit.
    #[arg(long, conflicts_with_all = ["check", "print_ruleset", "install_overlay", "load_secrets"], requires = "control")]
    secrets_status: bool,

    /// Print whether the running daemon answers on --control, and what it has in
    /// force (entries, names, secrets loaded, its pid and uptime), as JSON; exit 1
    /// when it does not answer. This is what `cell status` and `cell doctor` run on
    /// the firewall VM.
    #[arg(long, conflicts_with_all = ["check", "print_ruleset", "install_overlay", "load_secrets", "secrets_status"], requires = "control")]
    status: bool,

    /// Extra CA certificates (PEM) trusted for upstream servers, besides the system roots. Repeatable.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,
}

impl Cli {
    /// The policy file (clap requires it outside the control-socket client modes).
    fn policy(&self) -> &std::path::Path {
        self.policy.as_deref().expect("--policy is required here")
    }

    fn params(&self) -> Option<FirewallParams> {
        Some(FirewallParams {
            table: self.table.clone(),
            agent_iface: self.agent_iface.clone()?,
            listen: self.listen?,
            dns_port: self.dns_port,
            transparent_port: self.transparent_port,
            explicit_port: self.explicit_port,
            nflog_group: self.nflog_group,
            agent_addrs: self.agent_addrs.clone(),
        })
    }
}

fn main() -> ExitCode {
    // The daemon holds the CA key and the secrets' values: no core dump of it,
    // and no same-user process (`cell jail`'s command runs as the same user
    // without root) may ptrace it or read its /proc memory files.
    let _ = nix::sys::prctl::set_dumpable(false);
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CELL_LOG")
                .unwrap_or_else(|_| "info,hickory=warn".into()),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cell-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--install-overlay`: validate, write by rename, reload, report.
fn install_overlay(cli: &Cli, from: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{BufRead, Read, Write};
    let target = cli.overlay.as_deref().context("--overlay is required")?;
    let policy_path = cli.policy();
    let mut text = String::new();
    if from == std::path::Path::new("-") {
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut text)
            .context("reading the overlay from standard input")?;
    } else {
        text =
            std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    }
    let base = cell_policy::PolicyDocument::from_json(
        &policy_path.display().to_string(),
        &std::fs::read_to_string(policy_path)
            .with_context(|| format!("reading {}", policy_path.display()))?,
    )?;
    let overlay = cell_policy::OverlayDocument::from_json("new overlay", &text)?;
    if let Err((b, o)) = Policy::build(&base, Some(&overlay)) {
        let lines: Vec<String> = b
            .iter()
            .map(|e| format!("  policy: {e}"))
            .chain(o.iter().map(|e| format!("  overlay: {e}")))
            .collect();
        anyhow::bail!(
            "the overlay was refused, the old one stays in force:\n{}",
            lines.join("\n")
        );
    }
    let dir = target.parent().context("--overlay has no directory")?;
    let tmp = dir.join(format!(".overlay.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, target)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!(
            "writing {}: {e} (the old overlay stays in force)",
            target.display()
        );
    }
    let Some(control) = &cli.control else {
        println!("{{\"ok\":true,\"written\":true}}");
        return Ok(());
    };
    let mut s = std::os::unix::net::UnixStream::connect(control).with_context(|| {
        format!(
            "the overlay is written, but the daemon's control socket {} does not answer (it reloads on its own when it runs)",
            control.display()
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(b"{\"op\":\"reload\"}\n")?;
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply)?;
    print!("{reply}");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
    if v.get("ok") != Some(&serde_json::Value::Bool(true)) {
        anyhow::bail!("the daemon did not apply the overlay: {}", reply.trim());
    }
    Ok(())
}

/// Sends one request line to the daemon's control socket; returns its answer.
fn ask(control: &std::path::Path, line: &[u8]) -> anyhow::Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(control).with_context(|| {
        format!(
            "the daemon's control socket {} does not answer; is cell-proxy running?",
            control.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(line)?;
    s.write_all(b"\n")?;
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply)?;
    serde_json::from_str(&reply).context("the daemon's answer is not JSON")
}

/// `--load-secrets`: values from a file or stdin to the daemon's memory.
fn load_secrets(cli: &Cli, from: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Read;
    use zeroize::Zeroizing;
    let control = cli.control.as_deref().context("--control is required")?;
    let mut text = Zeroizing::new(Vec::new());
    if from == std::path::Path::new("-") {
        std::io::stdin()
            .take(200 * 1024)
            .read_to_end(&mut text)
            .context("reading secret values from standard input")?;
    } else {
        text = Zeroizing::new(
            std::fs::read(from).with_context(|| format!("reading {}", from.display()))?,
        );
    }
    // Each value straight into a zeroized string; the request line into a
    // zeroized buffer sized so it never reallocates (a reallocation would
    // leave a copy behind). Errors give a position, never the text.
    let values: std::collections::BTreeMap<String, Option<Zeroizing<String>>> =
        serde_json::from_slice(&text).map_err(|e| {
            anyhow::anyhow!(
                "the values are not a JSON object of names to strings or null (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
    let borrowed: Vec<(&str, Option<&str>)> = values
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_ref().map(|v| v.as_str())))
        .collect();
    let line = cell_policy::secrets::load_line(&borrowed, true);
    drop(borrowed);
    drop(values);
    let reply = ask(control, &line)?;
    println!("{reply}");
    if reply.get("ok") != Some(&serde_json::Value::Bool(true)) {
        anyhow::bail!("not every secret was loaded (see \"refused\" above)");
    }
    Ok(())
}

/// Never leave a secret in a core dump or to a debugger of the same user.
fn harden_process() {
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(
            "prctl(PR_SET_DUMPABLE, 0) failed: {e}; a core dump could hold secret values"
        );
    }
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(from) = &cli.load_secrets {
        harden_process();
        return load_secrets(&cli, from);
    }
    if cli.secrets_status {
        let control = cli.control.as_deref().context("--control is required")?;
        println!("{}", ask(control, br#"{"op":"secrets"}"#)?);
        return Ok(());
    }
    if cli.status {
        let control = cli.control.as_deref().context("--control is required")?;
        return match ask(control, br#"{"op":"status"}"#) {
            Ok(v) => {
                println!("{v}");
                Ok(())
            }
            Err(e) => {
                // Still one JSON line: the host CLI reads the reason from it.
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": format!("{e:#}")})
                );
                std::process::exit(1)
            }
        };
    }
    if cli.check {
        let policy = Policy::load(cli.policy(), cli.overlay.as_deref())?;
        if let Some(path) = &cli.secrets {
            let doc = cell_policy::secrets::SecretsDocument::load(path)?;
            let problems = doc.check_against(&policy);
            if !problems.is_empty() {
                let lines: Vec<String> = problems.iter().map(|e| format!("  {e}")).collect();
                anyhow::bail!("{} was refused:\n{}", path.display(), lines.join("\n"));
            }
            println!(
                "{}: valid — {} secrets, every scope intercepted by the policy",
                path.display(),
                doc.secrets.len()
            );
        }
        println!(
            "{}: valid — {} https, {} tcp, {} cidr, {} deny, {} forward entries; pool {}",
            cli.policy().display(),
            policy.https.len(),
            policy.tcp.len(),
            policy.cidr.len(),
            policy.deny.len(),
            policy.dns.forward.len(),
            policy.dns.synthetic_pool
        );
        return Ok(());
    }
    if let Some(from) = &cli.install_overlay {
        return install_overlay(&cli, from);
    }
    let params = cli
        .params()
        .context("--agent-iface and --listen are required")?;
    if params.agent_addrs.is_empty() && !cli.no_firewall {
        anyhow::bail!(
            "--agent-addr is required: the agent's own address on the link (e.g. --agent-addr 10.89.0.2 --agent-addr fd89::2); the ruleset drops every packet from {} with another source",
            params.agent_iface
        );
    }
    if cli.print_ruleset {
        let policy = Policy::load(cli.policy(), cli.overlay.as_deref())?;
        println!("{}", nft::compile(&policy, &params).to_json());
        return Ok(());
    }
    harden_process();
    let secrets = match &cli.secrets {
        Some(path) => {
            let doc = cell_policy::secrets::SecretsDocument::load(path)?;
            let policy = Policy::load(cli.policy(), cli.overlay.as_deref())?;
            let problems = doc.check_against(&policy);
            if !problems.is_empty() {
                let lines: Vec<String> = problems.iter().map(|e| format!("  {e}")).collect();
                anyhow::bail!("{} was refused:\n{}", path.display(), lines.join("\n"));
            }
            doc
        }
        None => cell_policy::secrets::SecretsDocument::default(),
    };
    let events = EventLog::open(
        &cli.events,
        events::Bounds {
            max_bytes: cli.events_max_bytes,
            keep: cli.events_keep,
        },
    )?;
    let sources = Sources {
        policy: cli.policy().to_path_buf(),
        overlay: cli.overlay.clone(),
        firewall: (!cli.no_firewall).then(|| (cli.nft.clone(), params.clone())),
        netns: cli.listen_netns.clone(),
    };
    let client_tls = proxy::client_tls(&cli.upstream_ca)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(match cli.workers {
            Some(n) => n.into(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let control = cli.control.clone();
    let state_dir = cli.state_dir.clone();
    let spy = match &cli.spy {
        Some(path) => Some(Arc::new(
            cell_proxy::spy::Recorder::open(
                path,
                events::Bounds {
                    max_bytes: cli.spy_max_bytes,
                    keep: cli.spy_keep,
                },
                cli.spy_body_max,
            )
            .with_context(|| format!("opening the spy store {}", path.display()))?,
        )),
        None => None,
    };
    runtime.block_on(serve(
        sources,
        events,
        params,
        state_dir,
        client_tls,
        control,
        Stages { secrets, spy },
    ))
}

/// The kernel rate-limits the ICMP errors our rejects answer with unless the
/// rate masks exempt them ([`cell_policy::nft::FAIL_FAST_SYSCTLS`]); with a
/// limit on, some of the agent's rejected UDP and pings would time out
/// instead of failing fast. Read in the namespace the rules are in (`cell
/// jail` starts this daemon in its own and points `--listen-netns` there).
fn warn_on_icmp_ratemask(netns: Option<&str>) {
    let read = || {
        cell_policy::nft::FAIL_FAST_SYSCTLS.map(|(name, _)| {
            std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        })
    };
    let values = match netns {
        Some(ns) => match cell_netns::run_in(ns, read) {
            Ok(v) => v,
            Err(_) => return,
        },
        None => read(),
    };
    for ((name, want), value) in cell_policy::nft::FAIL_FAST_SYSCTLS.iter().zip(values) {
        if let Ok(v) = value
            && v.trim() != *want
        {
            tracing::warn!(
                "{name} is {}: rejected UDP and ICMP from the agent may time out instead of failing fast; set {name}={want}",
                v.trim()
            );
        }
    }
}

/// What the request stages after the policy start with.
struct Stages {
    secrets: cell_policy::secrets::SecretsDocument,
    spy: Option<Arc<cell_proxy::spy::Recorder>>,
}

async fn serve(
    sources: Sources,
    events: EventLog,
    params: FirewallParams,
    state_dir: PathBuf,
    client_tls: rustls::ClientConfig,
    control_path: Option<PathBuf>,
    stages: Stages,
) -> anyhow::Result<()> {
    let Stages { secrets, spy } = stages;
    let state = State::start(sources, events.clone()).context("loading the policy")?;
    state.secrets.set_document(&secrets);
    if let Some(spy) = spy {
        let _ = state.spy.set(spy);
    }
    let cert_cache = state.policy().limits.cert_cache as usize;
    let ca =
        Arc::new(ca::Ca::load_or_create(&state_dir, cert_cache).context("loading the cell CA")?);
    warn_on_icmp_ratemask(state.sources.netns.as_deref());
    if state.sources.firewall.is_some() {
        let group = params.nflog_group;
        let socket = match &state.sources.netns {
            Some(ns) => cell_netns::run_in(ns, || nflog::open(group)).and_then(|r| r),
            None => nflog::open(group),
        };
        match socket {
            Ok(socket) => {
                let ev = events.clone();
                std::thread::Builder::new()
                    .name("nflog".into())
                    .spawn(move || nflog::run(socket, ev))?;
            }
            Err(e) => tracing::warn!("rejected packets will not become events: {e:#}"),
        }
    }
    let policy = state.policy();
    let dns_addr = SocketAddr::from((params.listen, params.dns_port));
    let transparent_addr = SocketAddr::from((params.listen, params.transparent_port));
    let explicit_addr = SocketAddr::from((params.listen, params.explicit_port));
    let bind = || -> anyhow::Result<_> {
        let hint = |what: &str, addr: SocketAddr| {
            format!(
                "binding {what} on {addr}; is the address configured on {}?",
                params.agent_iface
            )
        };
        Ok((
            std::net::UdpSocket::bind(dns_addr).with_context(|| hint("DNS (UDP)", dns_addr))?,
            std::net::TcpListener::bind(dns_addr).with_context(|| hint("DNS (TCP)", dns_addr))?,
            std::net::TcpListener::bind(transparent_addr)
                .with_context(|| hint("the transparent proxy", transparent_addr))?,
            std::net::TcpListener::bind(explicit_addr)
                .with_context(|| hint("the explicit proxy", explicit_addr))?,
        ))
    };
    let (udp, tcp, transparent, explicit) = match &state.sources.netns {
        Some(ns) => cell_netns::run_in(ns, bind)??,
        None => bind()?,
    };
    // The agent link is never an upstream (cell_policy::upstream).
    let agent_nets = match &state.sources.netns {
        Some(ns) => cell_netns::run_in(ns, || state::local_addresses(Some(&params.agent_iface)))?,
        None => state::local_addresses(Some(&params.agent_iface)),
    };
    let _ = state
        .agent_nets
        .set(agent_nets.iter().map(ipnet::IpNet::trunc).collect());
    let tokio_listener = |l: std::net::TcpListener| -> anyhow::Result<tokio::net::TcpListener> {
        l.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(l)?)
    };
    udp.set_nonblocking(true)?;
    let udp = tokio::net::UdpSocket::from_std(udp)?;
    let (tcp, transparent, explicit) = (
        tokio_listener(tcp)?,
        tokio_listener(transparent)?,
        tokio_listener(explicit)?,
    );
    let mut server = Server::new(dns::DnsHandler::new(
        state.clone(),
        policy.limits.dns_concurrency as usize,
    ));
    server.register_socket(udp);
    server.register_listener(
        tcp,
        Duration::from_secs(policy.limits.dns_tcp_idle_secs.into()),
        64,
    );
    let proxy = proxy::Proxy::new(state.clone(), ca.clone(), client_tls)?;
    tokio::spawn(proxy.clone().serve_transparent(transparent));
    tokio::spawn(proxy.clone().serve_explicit(explicit));
    let mut watched = vec![state.sources.policy.clone()];
    watched.extend(state.sources.overlay.clone());
    tokio::spawn(control::watch_files(state.clone(), watched));
    if let Some(path) = control_path {
        control::serve(state.clone(), path).await?;
    }
    tracing::info!(%dns_addr, %transparent_addr, ca = %ca.cert_path.display(), "cell-proxy ready");
    events.emit(event(
        "ready",
        [
            ("dns", dns_addr.to_string().into()),
            ("transparent", transparent_addr.to_string().into()),
            ("explicit", explicit_addr.to_string().into()),
            ("ca", ca.cert_path.display().to_string().into()),
        ],
    ));

    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let st = Arc::clone(&state);
                // Reload runs nft (a child process): keep it off the async workers.
                let _ = tokio::task::spawn_blocking(move || st.reload("sighup")).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down; firewall rules stay in place (fail closed)");
    let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown_gracefully()).await;
    events.emit(event("stopped", []));
    // Everything recorded and logged so far reaches its file before exit
    // (waiting for the writers, not a fixed pause: `cell jail` waits for this).
    if let Some(spy) = state.spy.get() {
        spy.flush(Duration::from_secs(1));
    }
    events.flush(Duration::from_secs(1));
    Ok(())
}
