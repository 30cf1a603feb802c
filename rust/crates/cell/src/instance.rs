//! One instance's lifecycle: boot, readiness, stop, status.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::backend::{self, Accel, Backend, Ctx};
use crate::doctor::MIN_FREE;
use crate::remote::{self, Ssh};
use crate::signals::Signals;
use crate::spec::VmSpec;
use crate::state::{Layout, Meta, free_bytes};
use crate::supervise::{self, Recorded, Stopped};

/// Roles in stop order (the agent first: it depends on the others).
pub const ROLES: [&str; 3] = ["agent", "firewall", "relay"];

pub fn backend(meta: &Meta) -> anyhow::Result<Box<dyn Backend>> {
    backend::by_name(&meta.backend)
}

/// Is something (other than us) listening on 127.0.0.1:port?
fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The first free loopback port from `preferred` on.
pub fn pick_port(preferred: u16) -> anyhow::Result<u16> {
    (preferred..preferred.saturating_add(200))
        .find(|p| port_free(*p))
        .context("no free loopback port for the firewall's SSH")
}

/// What is running now.
pub fn running(layout: &Layout) -> Vec<(&'static str, Recorded)> {
    ROLES
        .iter()
        .map(|r| (*r, supervise::recorded(layout, r)))
        .filter(|(_, rec)| *rec != Recorded::None)
        .collect()
}

/// Stops every process of the instance and removes its sockets.
/// Returns a line per process for the user.
pub fn stop_all(
    layout: &Layout,
    backend: &dyn Backend,
    grace: Duration,
) -> anyhow::Result<Vec<String>> {
    // All at once: each gets the same grace to power off cleanly.
    let results: Vec<(&str, Recorded, anyhow::Result<Stopped>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ROLES
            .iter()
            .map(|role| {
                let before = supervise::recorded(layout, role);
                (
                    *role,
                    before,
                    scope.spawn(move || supervise::stop(layout, role, grace)),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(role, before, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("stopping the {role} panicked")));
                (role, before, r)
            })
            .collect()
    });
    let mut said = Vec::new();
    for (role, before, how) in results {
        match (how?, before) {
            (Stopped::NotRunning, Recorded::Dead(pid)) => said.push(format!(
                "{role}: had already exited (pid {pid}); record cleared"
            )),
            (Stopped::NotRunning, _) => {}
            (Stopped::PoweredOff, _) => said.push(format!("{role}: powered off")),
            (Stopped::Terminated, _) => said.push(format!("{role}: stopped")),
            (Stopped::Killed, _) => said.push(format!("{role}: did not stop; killed")),
        }
    }
    for s in backend.sockets(&layout.dir) {
        let _ = fs::remove_file(s);
    }
    let _ = fs::remove_file(layout.path("accel"));
    Ok(said)
}

/// Everything boot needs besides the instance.
pub struct BootPlan<'a> {
    pub firewall: &'a VmSpec,
    pub agent: &'a VmSpec,
    pub accel: Accel,
    pub workspace: Option<&'a Path>,
    pub hypervisor: Option<&'a Path>,
}

pub enum Booted {
    /// Both VMs were already running.
    AlreadyRunning,
    Started,
}

/// Boots the instance (the caller holds its lock). Anything dead is cleaned
/// up first; a half-running instance is stopped and started whole (a
/// restarted firewall mints a new CA the running agent would not trust).
/// On an error or Ctrl-C, whatever was started is stopped again.
pub fn boot(
    layout: &Layout,
    meta: &mut Meta,
    plan: &BootPlan,
    signals: &Signals,
) -> anyhow::Result<Booted> {
    let backend = backend(meta)?;
    let now = running(layout);
    let alive = now
        .iter()
        .filter(|(_, r)| matches!(r, Recorded::Running(_)))
        .count();
    let expected = if meta.backend == "vfkit" { 3 } else { 2 };
    if alive == expected {
        return Ok(Booted::AlreadyRunning);
    }
    if !now.is_empty() {
        for (role, rec) in &now {
            if let Recorded::Dead(pid) = rec {
                eprintln!(
                    "cell: the {role} (pid {pid}) had stopped unexpectedly; restarting the cell"
                );
            }
        }
        stop_all(layout, backend.as_ref(), Duration::from_secs(10))?;
    }
    // Sockets left by a crash would make qemu or the relay fail to bind.
    for s in backend.sockets(&layout.dir) {
        if s.exists() {
            fs::remove_file(&s).with_context(|| format!("removing stale {}", s.display()))?;
        }
    }
    if let Some(free) = free_bytes(&layout.dir)
        && free < MIN_FREE
    {
        bail!(
            "only {} MiB free under {}; cell needs 2 GiB for the VMs' disks and logs. Free some space (`cell destroy --instance NAME` removes an instance), then run `cell` again",
            free >> 20,
            layout.dir.display()
        );
    }
    for v in &plan.agent.volumes {
        let path = layout.path(&v.image);
        if !path.exists() {
            let f =
                fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            // Sparse: takes space only as the guest writes; formatted by the guest on first boot.
            f.set_len(v.size_mib << 20)
                .with_context(|| format!("sizing {}", path.display()))?;
        }
    }
    // Each boot gets fresh consoles; the previous boot's stay as *.console.old.
    for role in ROLES {
        let console = layout.path(&format!("{role}.console"));
        if console.exists() {
            let _ = fs::rename(&console, layout.path(&format!("{role}.console.old")));
        }
    }
    let public = remote::ensure_key(layout)?;
    let _ = fs::remove_file(layout.known_hosts());
    if meta.backend == "qemu" && !port_free(meta.ssh_port) {
        let port = pick_port(meta.ssh_port.saturating_add(1))?;
        eprintln!(
            "cell: loopback port {} is taken; the firewall's SSH uses {port} instead",
            meta.ssh_port
        );
        meta.ssh_port = port;
        meta.save(layout)?;
    }
    let boot_args = vec![remote::key_boot_arg(&public)];
    let cell_exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("cell"));
    let version = if meta.backend == "qemu" {
        let program = plan.hypervisor.map(Path::to_path_buf).unwrap_or_else(|| {
            PathBuf::from(if plan.firewall.system.starts_with("aarch64") {
                "qemu-system-aarch64"
            } else {
                "qemu-system-x86_64"
            })
        });
        backend::hypervisor_version(&program)
    } else {
        None
    };
    let ctx = Ctx {
        dir: &layout.dir,
        name: &layout.name,
        firewall: plan.firewall,
        agent: plan.agent,
        accel: plan.accel,
        ssh_port: meta.ssh_port,
        boot_args: &boot_args,
        workspace: plan.workspace,
        cell_exe: &cell_exe,
        hypervisor: plan.hypervisor,
        version,
    };
    let launches = backend.launches(&ctx)?;
    let mut started = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        for l in &launches {
            eprintln!("cell: starting the {} ({})", l.role, backend.name());
            let mut s = supervise::start(layout, l)?;
            let waited = supervise::wait_created(
                layout,
                &mut s,
                &l.creates,
                Duration::from_secs(30),
                signals,
            );
            started.push(s);
            waited?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        stop_all(layout, backend.as_ref(), Duration::ZERO)?;
        for mut s in started {
            let _ = s.child.wait();
        }
        if signals.check().is_err() {
            bail!(
                "interrupted: the VMs started so far were stopped again; nothing is left running"
            );
        }
        return Err(e);
    }
    // What `cell status` shows as the accelerator of the running VMs.
    let _ = fs::write(layout.path("accel"), plan.accel.as_str());
    Ok(Booted::Started)
}

/// Waits until `probe` succeeds, showing how long it has taken.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    signals: &Signals,
    layout: &Layout,
    mut probe: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = 0;
    loop {
        // Before and after each probe: a probe can take seconds, and Ctrl-C
        // during it must win over a late success.
        if signals.check().is_err() {
            bail!("interrupted while waiting for {what}");
        }
        let up = probe();
        if signals.check().is_err() {
            bail!("interrupted while waiting for {what}");
        }
        if up {
            eprintln!("cell: {what}: ready after {}s", started.elapsed().as_secs());
            return Ok(());
        }
        for role in ROLES {
            if let Recorded::Dead(pid) = supervise::recorded(layout, role) {
                bail!(
                    "the {role} VM (pid {pid}) exited while waiting for {what}:\n{}\n(full log: {})",
                    supervise::tail(&layout.log(role), 20),
                    layout.log(role).display()
                );
            }
        }
        let secs = started.elapsed().as_secs();
        if started.elapsed() > timeout {
            bail!(
                "{what} did not answer within {secs}s; the console is in {}",
                layout.path("firewall.console").display()
            );
        }
        if secs >= last + 10 {
            eprintln!("cell: waiting for {what} ({secs}s)…");
            last = secs;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Does `cmd` (an SSH probe) succeed, quietly?
fn answers(mut cmd: std::process::Command) -> bool {
    crate::signals::unblocked(&mut cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SSH to the firewall answers.
pub fn firewall_ready(ssh: &Ssh) -> bool {
    answers(ssh.firewall("true"))
}

/// SSH to the agent, through the firewall, answers.
pub fn agent_ready(ssh: &Ssh) -> bool {
    answers(ssh.agent(false, Some("true")))
}

/// `cell status` text.
/// What the firewall's daemon says when asked (`cell-proxy-status` over SSH).
#[derive(Debug, Clone, PartialEq)]
pub enum Daemon {
    /// It answers: what it has in force.
    Answering(serde_json::Value),
    /// It does not: why (the control socket's error, or ssh's).
    Down(String),
}

/// Asks the firewall VM whether cell-proxy answers on its control socket.
pub fn daemon(ssh: &Ssh) -> Daemon {
    let out = match ssh.firewall("cell-proxy-status").output() {
        Ok(o) => o,
        Err(e) => return Daemon::Down(format!("running ssh: {e}")),
    };
    let reply: Option<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok());
    match reply {
        Some(v) if out.status.success() && v["ok"] == true => Daemon::Answering(v),
        Some(v) => Daemon::Down(v["error"].as_str().unwrap_or("it said no").to_string()),
        None => Daemon::Down(match String::from_utf8_lossy(&out.stderr).trim() {
            "" => format!("cell-proxy-status exited with {}", out.status),
            e => e.to_string(),
        }),
    }
}

/// The `daemon` line of `cell status`, with the fix when it is down.
pub fn render_daemon(d: &Daemon, name: &str) -> String {
    match d {
        Daemon::Answering(v) => {
            let n = |k: &str| v[k].as_u64().unwrap_or(0);
            let mut line = format!(
                "  daemon   cell-proxy answering: {} https, {} tcp, {} cidr, {} deny; {} names; {} secrets loaded",
                n("https"),
                n("tcp"),
                n("cidr"),
                n("deny"),
                n("names"),
                n("secrets_loaded"),
            );
            if v["pid"].as_u64().is_some_and(|p| p > 0) {
                line.push_str(&format!(
                    " (pid {}, up {})",
                    n("pid"),
                    humantime::format_duration(Duration::from_secs(n("uptime_secs")))
                ));
            }
            line + "\n"
        }
        Daemon::Down(why) => format!(
            "  daemon   cell-proxy NOT ANSWERING: {why}\n           the agent's egress is stopped (its rules stay in force: fail closed); `cell stop -i {name}` then `cell -i {name}` restarts the cell, and the firewall's log says why (`journalctl -u cell-proxy` in the firewall VM)\n"
        ),
    }
}

pub fn status(layout: &Layout, meta: &Meta) -> String {
    let mut out = format!("instance {} ({})\n", layout.name, layout.dir.display());
    out.push_str(&format!("  backend  {}\n", meta.backend));
    if meta.firewall_spec.starts_with("/nix/store/") || meta.firewall_spec.is_empty() {
        out.push_str(&format!("  flake    {}#{}\n", meta.flake, meta.attr));
    } else {
        out.push_str(&format!(
            "  specs    {}\n",
            meta.firewall_spec.trim_end_matches("/firewall.json")
        ));
    }
    let roles: &[&str] = if meta.backend == "vfkit" {
        &["firewall", "agent", "relay"]
    } else {
        &["firewall", "agent"]
    };
    for role in roles {
        let state = match supervise::recorded(layout, role) {
            Recorded::None => "stopped".to_string(),
            Recorded::Running(pid) => format!("running (pid {pid})"),
            Recorded::Dead(pid) => format!(
                "EXITED (pid {pid} is gone: crashed, killed or powered off from inside; see {} and {}) — `cell` starts the cell again",
                layout.log(role).display(),
                layout.path(&format!("{role}.console")).display()
            ),
        };
        out.push_str(&format!("  {role:<8} {state}\n"));
    }
    if let Ok(accel) = fs::read_to_string(layout.path("accel")) {
        let note = if accel == "tcg" {
            " (emulated: slow; `cell doctor` says why)"
        } else {
            ""
        };
        out.push_str(&format!("  accel    {accel}{note}\n"));
    }
    if meta.backend == "qemu" {
        out.push_str(&format!(
            "  ssh      127.0.0.1:{} → firewall:22\n",
            meta.ssh_port
        ));
    }
    out
}
