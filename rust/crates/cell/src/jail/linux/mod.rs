//! The Linux side of `cell jail` (see the parent module): two network
//! namespaces joined by a veth pair, cell-proxy's listeners and nftables in
//! the firewall one, the command in the agent one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cell_netns::Netns;
use cell_policy::nft::FAIL_FAST_SYSCTLS;

use super::{Args, JAIL_FAILED};

mod audit;
mod caps;
mod confine;
mod files;
mod userns;
use crate::signals::{Signals, unblocked};
use serde_json::{Value, json};

const AGENT_ADDR: &str = "10.89.0.2/24";
const FW_ADDR: &str = "10.89.0.1";

/// The run directory; removed on drop unless kept.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("cell jail: kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `/etc/netns/<agent>/`, whose resolv.conf `ip netns exec` mounts over /etc/resolv.conf.
struct EtcNetns(PathBuf);

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct ProxyProcess(Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The tools' absolute paths, found once by [`on_path`]: an ordinary user's
/// `$PATH` often lacks the sbin directories they live in, so they are never
/// started by bare name.
static TOOLS: std::sync::OnceLock<Vec<(&'static str, PathBuf)>> = std::sync::OnceLock::new();

/// The path of a tool checked at start (`ip`, `nft`, `sysctl`).
fn tool(name: &str) -> PathBuf {
    TOOLS
        .get()
        .and_then(|t| t.iter().find(|(n, _)| *n == name).map(|(_, p)| p.clone()))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `program`'s executable on `$PATH` (or the sbin directories `ip` and
/// `nft` live in, which an ordinary user's `$PATH` may lack).
fn on_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|c| {
            c.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn find_proxy(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let beside = std::env::current_exe()?.with_file_name("cell-proxy");
    if beside.exists() {
        return Ok(beside);
    }
    on_path("cell-proxy").context("cell-proxy not found next to cell or on $PATH; pass --proxy")
}

/// Runs a set-up tool with `input` on its stdin; fails with its stderr and `why`.
fn run_with_input(mut cmd: Command, input: &str, why: &str) -> anyhow::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to {program}"))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        bail!(
            "`{program} {}` failed: {}\n{input}{why}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The base policy (user's, with --dns-upstream applied) and the overlay from the flags.
fn documents(
    args: &Args,
    secrets: &cell_policy::secrets::SecretsDocument,
) -> anyhow::Result<(Value, Value)> {
    let mut base: Value = match &args.policy {
        Some(p) => serde_json::from_str(
            &fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not JSON", p.display()))?,
        None => json!({}),
    };
    if !args.dns_upstream.is_empty() {
        let obj = base
            .as_object_mut()
            .context("the policy must be a JSON object")?;
        let dns = obj.entry("dns").or_insert_with(|| json!({}));
        dns.as_object_mut()
            .context("`dns` must be an object")?
            .insert("upstream".into(), json!(args.dns_upstream));
    }
    // A secret's hosts are allowed: its value could not go anywhere otherwise.
    let mut hosts: Vec<&String> = args.allow.iter().collect();
    for d in &secrets.secrets {
        hosts.extend(d.hosts.iter().filter(|h| !args.allow.contains(h)));
    }
    hosts.dedup();
    let spy = args.spy.is_some();
    let https: Vec<Value> = hosts
        .iter()
        .map(|h| {
            if spy {
                json!({ "host": h, "spy": true })
            } else {
                json!({ "host": h })
            }
        })
        .collect();
    let mut tcp = Vec::new();
    for spec in &args.allow_tcp {
        let (host, port) = spec
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .with_context(|| format!("--allow-tcp {spec}: write HOST:PORT, e.g. github.com:22"))?;
        tcp.push(json!({ "host": host, "ports": [port] }));
    }
    Ok((base, json!({ "https": https, "tcp": tcp })))
}

/// The secrets of `--secret ENV@HOSTS` and `--secret-cmd ENV@HOSTS=COMMAND`:
/// each named after its variable (lowercase), scoped to its hosts, header
/// only, read from cell's environment or from the command.
fn secret_specs(args: &Args) -> anyhow::Result<cell_policy::secrets::SecretsDocument> {
    use cell_policy::secrets::{Kind, Location, SecretDecl, SecretsDocument, Source};
    let mut doc = SecretsDocument {
        version: 1,
        secrets: Vec::new(),
    };
    let specs = args.secret.iter().map(|s| (s, "--secret", None)).chain(
        args.secret_cmd
            .iter()
            .map(|s| (s, "--secret-cmd", Some(()))),
    );
    for (spec, flag, is_cmd) in specs {
        let (head, command) = match is_cmd {
            None => (spec.as_str(), None),
            Some(()) => match spec.split_once('=') {
                Some((h, c)) if !c.trim().is_empty() => (h, Some(c)),
                _ => bail!(
                    "{flag} {spec}: write ENV@HOST=COMMAND, e.g. --secret-cmd 'GH_TOKEN@api.github.com=gh auth token'"
                ),
            },
        };
        let Some((env, hosts)) = head.split_once('@') else {
            bail!(
                "{flag} {spec}: write ENV@HOST[,HOST…], e.g. {flag} ANTHROPIC_API_KEY@api.anthropic.com{}",
                if command.is_some() { "=COMMAND" } else { "" }
            );
        };
        let valid_env = !env.is_empty()
            && env.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_env {
            bail!(
                "{flag} {spec}: `{env}` is not an environment variable name (letters, digits, _; a letter first)"
            );
        }
        let hosts: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if hosts.is_empty() {
            bail!("{flag} {spec}: name the host(s) the value may go to after the @");
        }
        let name = env.to_ascii_lowercase();
        if doc.secrets.iter().any(|d| d.name == name) {
            bail!("{flag} {spec}: {env} is given twice; one secret per variable");
        }
        doc.secrets.push(SecretDecl {
            placeholder: cell_policy::secrets::placeholder(&name),
            name,
            env: Some(env.to_string()),
            hosts,
            kind: Kind::Token,
            locations: vec![Location::Header],
            access_key_id_placeholder: None,
            source: match command {
                None => Source::Env(env.to_string()),
                Some(c) => Source::Command(vec!["sh".into(), "-c".into(), c.to_string()]),
            },
        });
    }
    Ok(doc)
}

/// The user's filesystem rules: the policy's `filesystem` section, then the flags.
fn fs_rules(args: &Args, base: &Value) -> anyhow::Result<Vec<files::UserRule>> {
    use files::{Access, UserRule};
    let section: cell_policy::document::FilesystemSection = match base.get("filesystem") {
        Some(v) => serde_json::from_value(v.clone()).context("the policy's `filesystem`")?,
        None => Default::default(),
    };
    let mut out = Vec::new();
    for (paths, access, from) in [
        (
            &section.allow_read,
            Access::Read,
            "policy filesystem.allowRead",
        ),
        (
            &section.allow_write,
            Access::Write,
            "policy filesystem.allowWrite",
        ),
        (
            &section.deny_read,
            Access::Deny,
            "policy filesystem.denyRead",
        ),
    ] {
        out.extend(paths.iter().map(|p| UserRule {
            path: p.as_str().to_string(),
            access,
            from,
        }));
    }
    for (paths, access, from) in [
        (&args.allow_read, Access::Read, "--allow-read"),
        (&args.allow_write, Access::Write, "--allow-write"),
        (&args.deny_read, Access::Deny, "--deny-read"),
    ] {
        for p in paths {
            let path = p
                .to_str()
                .with_context(|| format!("{from} {}: not UTF-8", p.display()))?;
            if path.is_empty() {
                bail!("{from}: name a path");
            }
            out.push(UserRule {
                path: path.to_string(),
                access,
                from,
            });
        }
    }
    Ok(out)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Sets up the jail, runs the command, tears everything down; returns the command's status.
pub fn run(args: Args) -> anyhow::Result<u8> {
    if let Some(spec) = &args.fs_exec {
        return confine::exec(spec, &args.command);
    }
    let root = nix::unistd::geteuid().is_root();
    let mut tools = Vec::new();
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("sysctl", "procps"),
    ] {
        // Looked up, not run: each start of a tool costs milliseconds.
        let Some(path) = on_path(tool) else {
            bail!("`{tool}` is missing: install {pkg}");
        };
        tools.push((tool, path));
    }
    let _ = TOOLS.set(tools);
    let proxy_bin = find_proxy(args.proxy.clone())?;
    let signals = Signals::install()?;
    let id = std::process::id();
    // A directory of this name may be a kept (--keep) or crashed run of an
    // earlier process with this pid: never touched, the next free name is used.
    let mut path = std::env::temp_dir().join(format!("cell-jail-{id}"));
    for n in 1.. {
        match fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                path = std::env::temp_dir().join(format!("cell-jail-{id}-{n}"));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("creating {}", path.display()));
            }
        }
    }
    let dir = RunDir {
        path,
        keep: args.keep,
    };

    // Secrets: every value read before anything is set up, so a missing one
    // fails the run at once (in the VM a cell starts without it; a jail is
    // one command, better not started than started without its key).
    let secrets_doc = secret_specs(&args)?;
    let mut failed = Vec::new();
    let mut values = Vec::new();
    for decl in &secrets_doc.secrets {
        match crate::sources::read(decl) {
            Ok(v) => values.push((decl.name.as_str(), v)),
            Err(e) => failed.push(format!("{e}")),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }

    // Policy: validated before anything touches the network.
    let (base, overlay) = documents(&args, &secrets_doc)?;
    let policy_path = dir.path.join("policy.json");
    let overlay_path = dir.path.join("overlay.json");
    write(&policy_path, &serde_json::to_string_pretty(&base)?)?;
    write(&overlay_path, &serde_json::to_string_pretty(&overlay)?)?;
    let policy = cell_policy::Policy::load(&policy_path, Some(&overlay_path)).map_err(|e| {
        anyhow::anyhow!("{e}")
            .context("the policy was refused (from --policy and the --allow flags)")
    })?;
    if policy.https.is_empty() && policy.tcp.is_empty() {
        eprintln!(
            "cell jail: nothing is allowed; every connection will be refused (add --allow HOST)"
        );
    }
    if !policy.cidr.is_empty() {
        bail!(
            "`cidr` entries cannot be routed by cell jail (its firewall has no uplink); remove them or use the VM"
        );
    }
    let user_fs = fs_rules(&args, &base)?;

    // Namespaces and the link between them.
    let topology = if root {
        Topology::root(id)?
    } else {
        Topology::user()?
    };
    if let Err(code) = signals.check() {
        return Ok(code);
    }

    // The daemon: in this netns, listening and filtering in the firewall one.
    let events = dir.path.join("events.jsonl");
    let mut cmd = topology.proxy_command(&proxy_bin);
    cmd.arg("--policy")
        .arg(&policy_path)
        .arg("--overlay")
        .arg(&overlay_path);
    cmd.args([
        "--agent-iface",
        "agent0",
        "--listen",
        FW_ADDR,
        "--agent-addr",
        AGENT_ADDR.split('/').next().expect("an address"),
        "--listen-netns",
        &topology.listen_netns(),
    ]);
    cmd.arg("--nft").arg(tool("nft"));
    cmd.arg("--events")
        .arg(&events)
        .arg("--state-dir")
        .arg(dir.path.join("state"));
    if let Some(store) = &args.spy {
        let store = if let Some(file) = store {
            // cell-proxy may not share our working directory's meaning later.
            std::path::absolute(file)?
        } else {
            let s = dir.path.join("spy.jsonl");
            eprintln!(
                "cell jail: recording into {} (`cell spy -f --file {}`){}",
                s.display(),
                s.display(),
                if dir.keep {
                    ""
                } else {
                    "; removed at the end: --keep keeps it"
                }
            );
            s
        };
        cmd.arg("--spy").arg(store);
    }
    let control = dir.path.join("control.sock");
    cmd.arg("--control").arg(&control);
    if !secrets_doc.secrets.is_empty() {
        let path = dir.path.join("secrets.json");
        write(&path, &serde_json::to_string_pretty(&secrets_doc)?)?;
        cmd.arg("--secrets").arg(&path);
    }
    for ca in &args.upstream_ca {
        cmd.arg("--upstream-ca").arg(ca);
    }
    // The daemon gets the values over its socket; its environment (readable
    // in /proc) holds none of them.
    for d in &secrets_doc.secrets {
        if let cell_policy::secrets::Source::Env(var) = &d.source {
            cmd.env_remove(var);
        }
    }
    let log = fs::File::create(dir.path.join("proxy.log"))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    let proxy = ProxyProcess(
        unblocked(&mut cmd)
            .spawn()
            .with_context(|| format!("starting {}", proxy_bin.display()))?,
    );
    if let Err(code) = wait_ready(&events, &dir.path.join("proxy.log"), &proxy, &signals)? {
        return Ok(code);
    }

    // The values: to the daemon's memory over its control socket, never a file.
    if !secrets_doc.secrets.is_empty() {
        let pushed = crate::secrets::load(&values, &crate::secrets::Channel::Socket(&control))?;
        drop(values);
        if !pushed.failed.is_empty() {
            let why: Vec<String> = pushed
                .failed
                .iter()
                .map(|(n, w)| format!("secret `{n}`: {w}"))
                .collect();
            bail!("{}", why.join("\n"));
        }
    }

    // Trust: the system roots plus this run's CA.
    let cell_ca = dir.path.join("state/ca.crt");
    let bundle = dir.path.join("ca-bundle.pem");
    let mut pem = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .iter()
    .find_map(|p| fs::read_to_string(p).ok())
    .unwrap_or_default();
    pem.push_str(&fs::read_to_string(&cell_ca).context("reading the cell CA")?);
    // What the command may read of the run directory (the rest is denied to it).
    let public = dir.path.join("pub");
    fs::DirBuilder::new().mode(0o755).create(&public)?;
    let bundle = public.join(bundle.file_name().expect("a file name"));
    write(&bundle, &pem)?;
    let cell_ca_pub = public.join("ca.crt");
    fs::copy(&cell_ca, &cell_ca_pub).context("copying the cell CA")?;
    for f in [&bundle, &cell_ca_pub] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o644))?;
    }
    let cell_ca = cell_ca_pub;

    // The filesystem: planned here, enforced by the exec helper in the child.
    let spy_file = match &args.spy {
        Some(Some(f)) => Some(std::path::absolute(f)?),
        _ => None,
    };
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let root = nix::unistd::geteuid().is_root();
    let env = |v: &str| std::env::var(v).ok();
    let host = files::Host {
        cwd: std::env::current_dir().context("the current directory")?,
        other_homes: files::other_homes(root, home.as_deref()),
        home,
        root,
        run_dir: &dir.path,
        public: &public,
        spy: spy_file.as_deref(),
        env: &env,
    };
    let mut spec = files::plan(&host, &user_fs)?;
    if let Topology::User(_) = &topology {
        // No `ip netns exec` to bind it: the exec helper does.
        let resolv = public.join("resolv.conf");
        write(&resolv, &format!("nameserver {FW_ADDR}\n"))?;
        fs::set_permissions(&resolv, fs::Permissions::from_mode(0o644))?;
        spec.resolv_conf = Some(resolv);
        spec.require_landlock = true;
    }
    let spec_path = dir.path.join("fs.json");
    spec.write(&spec_path)?;
    let observer = match audit::Observer::start(events.clone(), spec.clone()) {
        Ok(o) => Some(o),
        Err(why) => {
            eprintln!("cell jail: denied file accesses are not reported: {why}");
            None
        }
    };

    // The command. Ctrl-C reaches it through the terminal; we stay to clean up.
    let mut child = topology.agent_command(std::env::current_exe().context("finding cell itself")?);
    child
        .args(["jail", "--fs-exec"])
        .arg(&spec_path)
        .arg("--")
        .args(&args.command);
    if spec.private.iter().any(|p| p == Path::new("/tmp")) {
        child.env("TMPDIR", "/tmp");
    }
    for var in [
        "SSL_CERT_FILE",
        "NIX_SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
    ] {
        child.env(var, &bundle);
    }
    child
        .env("NODE_EXTRA_CA_CERTS", &cell_ca)
        .env("CELL_JAIL", "1");
    for d in &secrets_doc.secrets {
        if let Some(env) = &d.env {
            child.env(env, &d.placeholder);
        }
    }
    if let Err(code) = signals.check() {
        return Ok(code);
    }
    let mut child = unblocked(&mut child)
        .spawn()
        .context("starting the command")?;
    signals.child.store(child.id() as i32, Ordering::SeqCst);
    if let Some(o) = &observer {
        o.pid.store(child.id() as i32, Ordering::SeqCst);
    }
    let status = child.wait()?;
    drop(observer);
    let _ = std::io::stderr().flush();
    drop(proxy);
    drop(topology);
    drop(dir);
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        _ => JAIL_FAILED,
    })
}

/// The two network namespaces and the link between them.
enum Topology {
    /// As root: named namespaces (`ip netns`), the agent's resolv.conf in
    /// `/etc/netns`.
    Root {
        // Field order is drop order: the resolv.conf, then the namespaces.
        _etc: EtcNetns,
        fw: Netns,
        agent: Netns,
    },
    /// Without root: a user namespace owning both (see [`userns`]).
    User(userns::Userns),
}

impl Topology {
    /// Three `ip -batch` runs (each start of `ip` costs milliseconds) and
    /// the sysctls written from a thread inside each namespace.
    fn root(id: u32) -> anyhow::Result<Topology> {
        let (a, f) = (
            format!("cell-jail-{id}-agent"),
            format!("cell-jail-{id}-fw"),
        );
        let batch = |ns: Option<&str>, lines: &str| -> anyhow::Result<()> {
            let mut c = Command::new(tool("ip"));
            if let Some(ns) = ns {
                c.args(["-n", ns]);
            }
            c.args(["-batch", "-"]);
            run_with_input(c, lines, "")
        };
        // Adopted before they exist, so a failure half-way still removes both.
        let agent = Netns::adopt(&a);
        let fw = Netns::adopt(&f);
        batch(
            None,
            &format!(
                "netns add {a}\nnetns add {f}\nlink add eth0 netns {a} type veth peer name agent0 netns {f}\n"
            ),
        )
        .context("creating the jail's network namespaces (needs root)")?;
        let sysctl = |ns: &str, settings: &[(&str, &str)]| -> anyhow::Result<()> {
            cell_netns::run_in(ns, || {
                for (key, value) in settings {
                    let path = format!("/proc/sys/{}", key.replace('.', "/"));
                    fs::write(&path, value).with_context(|| format!("setting {key}"))?;
                }
                anyhow::Ok(())
            })?
        };
        // IPv4 only on the jail link: an application tries IPv6 never, not first.
        sysctl(&a, &[("net.ipv6.conf.eth0.disable_ipv6", "1")])?;
        // Rejected UDP and pings must fail at once, not after an ICMP rate limit.
        let [v4_mask, v6_mask] = FAIL_FAST_SYSCTLS;
        sysctl(
            &f,
            &[
                ("net.ipv6.conf.agent0.disable_ipv6", "1"),
                v4_mask,
                v6_mask,
                ("net.ipv4.ip_forward", "1"),
            ],
        )?;
        batch(
            Some(&a),
            &format!(
                "link set lo up\naddr add {AGENT_ADDR} dev eth0\nlink set eth0 up\nroute add default via {FW_ADDR}\n"
            ),
        )?;
        // No uplink. The default route points back out the agent link, so a stray packet
        // meets the ruleset's forward chain (a reset or admin-prohibited, logged) instead of
        // vanishing in routing, and could only ever go back to the agent.
        batch(
            Some(&f),
            &format!(
                "link set lo up\naddr add {FW_ADDR}/24 dev agent0\nlink set agent0 up\nroute add default dev agent0\n"
            ),
        )?;
        let etc = EtcNetns(PathBuf::from("/etc/netns").join(agent.name()));
        fs::create_dir_all(&etc.0)?;
        write(
            &etc.0.join("resolv.conf"),
            &format!("nameserver {FW_ADDR}\n"),
        )?;
        Ok(Topology::Root {
            _etc: etc,
            fw,
            agent,
        })
    }

    /// The same link and addresses as [`Topology::root`], configured from
    /// inside the user namespace (`ip -batch`, `sysctl`).
    fn user() -> anyhow::Result<Topology> {
        use userns::Net;
        let ns = userns::Userns::create()?;
        let agent_fd = ns.fd(Net::Agent).expect("a namespace descriptor");
        let ip = tool("ip");
        let sysctl = tool("sysctl");
        let batch = |net, lines: &str| ns.run(net, &ip, &["-batch", "-"], lines);
        batch(
            Net::Firewall,
            &format!(
                "link set lo up\nlink add agent0 type veth peer name eth0 netns /proc/self/fd/{agent_fd}\n"
            ),
        )?;
        let [v4_mask, v6_mask] = FAIL_FAST_SYSCTLS.map(|(key, value)| format!("{key}={value}"));
        ns.run(
            Net::Firewall,
            &sysctl,
            &[
                "-qw",
                "net.ipv6.conf.agent0.disable_ipv6=1",
                &v4_mask,
                &v6_mask,
                "net.ipv4.ip_forward=1",
            ],
            "",
        )?;
        ns.run(
            Net::Agent,
            &sysctl,
            &["-qw", "net.ipv6.conf.eth0.disable_ipv6=1"],
            "",
        )?;
        batch(
            Net::Firewall,
            &format!(
                "addr add {FW_ADDR}/24 dev agent0\nlink set agent0 up\nroute add default dev agent0\n"
            ),
        )?;
        batch(
            Net::Agent,
            &format!(
                "link set lo up\naddr add {AGENT_ADDR} dev eth0\nlink set eth0 up\nroute add default via {FW_ADDR}\n"
            ),
        )?;
        // The command runs as this user: it may not trace cell (Landlock
        // refuses it too; this holds where Yama does not).
        let _ = nix::sys::prctl::set_dumpable(false);
        Ok(Topology::User(ns))
    }

    /// cell-proxy: in this network namespace (its upstream connections),
    /// listening and filtering in the firewall one ([`Topology::listen_netns`]).
    fn proxy_command(&self, program: &Path) -> Command {
        match self {
            Topology::Root { .. } => Command::new(program),
            Topology::User(ns) => ns.command(
                program,
                userns::Net::Host,
                true,
                Some(userns::Net::Firewall),
            ),
        }
    }

    /// cell-proxy's `--listen-netns`.
    fn listen_netns(&self) -> String {
        match self {
            Topology::Root { fw, .. } => fw.name().to_string(),
            Topology::User(ns) => format!(
                "/proc/self/fd/{}",
                ns.fd(userns::Net::Firewall)
                    .expect("a namespace descriptor")
            ),
        }
    }

    /// `program` started in the agent namespace (the exec helper, which
    /// confines and runs the command).
    fn agent_command(&self, program: PathBuf) -> Command {
        match self {
            Topology::Root { agent, .. } => {
                let mut c = Command::new(tool("ip"));
                c.args(["netns", "exec", agent.name()]).arg(program);
                c
            }
            // Capabilities in the user namespace for the helper's mounts and
            // PID namespace; it drops them all before the command runs.
            Topology::User(ns) => ns.command(program, userns::Net::Agent, true, None),
        }
    }
}

/// `Ok(Err(code))` when a signal ended the wait.
fn wait_ready(
    events: &Path,
    log: &Path,
    proxy: &ProxyProcess,
    signals: &Signals,
) -> anyhow::Result<Result<(), u8>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = fs::read_to_string(events).unwrap_or_default();
        if text.lines().any(|l| l.contains(r#""event":"ready""#)) {
            return Ok(Ok(()));
        }
        if let Err(code) = signals.check() {
            return Ok(Err(code));
        }
        let exited = fs::read_to_string(format!("/proc/{}/stat", proxy.0.id()))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if exited || Instant::now() > deadline {
            bail!(
                "cell-proxy did not start:\n{}",
                fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
