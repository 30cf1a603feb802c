//! `cell doctor` and the host checks `cell` runs before it boots anything.

use std::path::Path;
use std::process::Command;

use crate::backend::Accel;
use crate::state::{Layout, free_bytes};
use crate::supervise::{Recorded, recorded};

/// Below this, `cell` refuses to start (the agent's volume and logs grow).
pub const MIN_FREE: u64 = 2 << 30;

/// Can this process create a KVM virtual machine? `Err` says why not.
pub fn kvm() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "/dev/kvm does not exist: enable virtualization in the firmware (VT-x/AMD-V) and load kvm_intel or kvm_amd; in a cloud VM, enable nested virtualization".to_string()
            }
            std::io::ErrorKind::PermissionDenied => {
                "/dev/kvm is not accessible: add yourself to the `kvm` group (`sudo usermod -aG kvm $USER`, then log in again)".to_string()
            }
            _ => format!("/dev/kvm: {e}"),
        })?;
    // KVM_GET_API_VERSION, KVM_CREATE_VM: _IO(0xAE, 0x00) and _IO(0xAE, 0x01).
    // SAFETY: both ioctls take an integer argument and touch no user memory.
    let version = unsafe { nix::libc::ioctl(f.as_raw_fd(), 0xAE00, 0) };
    if version != 12 {
        return Err(format!("/dev/kvm answers API version {version}, not 12"));
    }
    // SAFETY: as above; the returned descriptor is closed at once.
    let vm = unsafe { nix::libc::ioctl(f.as_raw_fd(), 0xAE01, 0) };
    if vm < 0 {
        return Err(format!(
            "/dev/kvm cannot create a VM ({}): is another hypervisor holding VT-x, or is this a VM without nested virtualization?",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: vm is a descriptor we own.
    unsafe { nix::libc::close(vm) };
    Ok(())
}

/// Can qemu start a KVM guest? A /dev/kvm that creates VMs may still fail
/// the first vCPU reset (broken nested virtualization: "failed to set MSR").
/// Starts a paused, diskless guest: one that is still running after a moment
/// works.
pub fn kvm_with_qemu(qemu: &Path) -> Result<(), String> {
    kvm()?;
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-m",
            "64",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return Err(format!(
                "/dev/kvm opens, but qemu cannot run a KVM guest here ({}); nested virtualization is likely missing or broken",
                err.lines().next().unwrap_or("no message").trim()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// How long a kernel may take under KVM to print its first line. Under a
/// working KVM that is well under a second; a broken one never prints.
pub const KERNEL_PROBE: std::time::Duration = std::time::Duration::from_secs(8);

/// Does `kernel` get as far as its first printk under KVM here? Some nested
/// setups pass every cheaper check — /dev/kvm creates VMs, a paused guest
/// starts, even real, protected and long mode code runs — and then hang
/// silently once the kernel starts. Booting the VM's own kernel (no initrd:
/// it panics right after, and `panic=-1 -no-reboot` ends qemu) is the check
/// that answers for this kernel; it stops at the `Linux version` line.
pub fn kernel_boots_under_kvm(
    qemu: &Path,
    kernel: &Path,
    system: &str,
    budget: std::time::Duration,
) -> Result<(), String> {
    use std::io::BufRead;
    let (machine, console) = if system.starts_with("aarch64") {
        ("virt", "console=ttyAMA0 earlycon")
    } else {
        ("q35", "console=ttyS0 earlyprintk=ttyS0")
    };
    let mut child = Command::new(qemu)
        .args(["-machine", machine, "-accel", "kvm", "-cpu", "host"])
        .args(["-m", "256", "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .args(["-append", &format!("{console} panic=-1 loglevel=4")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if String::from_utf8_lossy(&line).contains("Linux version") {
                let _ = tx.send(());
                return;
            }
        }
    });
    let printed = rx.recv_timeout(budget).is_ok();
    let _ = child.kill();
    let status = child.wait();
    if printed {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let said = err
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.contains("terminating on signal"))
        .map(|l| format!(" (qemu: {l})"))
        .unwrap_or_default();
    Err(match status {
        Ok(s) if s.code().is_some() => format!(
            "qemu exited before the kernel {} printed anything under KVM{said}",
            kernel.display()
        ),
        _ => format!(
            "the kernel {} printed nothing within {}s under KVM{said}; nested virtualization here starts guests but cannot run this kernel",
            kernel.display(),
            budget.as_secs()
        ),
    })
}

/// The accelerator to use, and a warning to print when it is the slow one.
/// With `kernel` (the VM's kernel and its system), KVM counts as usable only
/// if that kernel starts under it ([`kernel_boots_under_kvm`]).
pub fn choose_accel(
    request: &str,
    qemu: &Path,
    kernel: Option<(&Path, &str)>,
) -> anyhow::Result<(Accel, Option<String>)> {
    if cfg!(target_os = "macos") {
        return Ok((Accel::Hvf, None));
    }
    // With a kernel, booting it answers everything the paused guest would
    // (qemu's own refusal is reported from its stderr) without that probe's
    // fixed 1.5 s wait.
    let usable = || match kernel {
        Some((k, system)) => {
            kvm()?;
            eprintln!("cell: checking that the VM's kernel starts under KVM here…");
            kernel_boots_under_kvm(qemu, k, system, KERNEL_PROBE)
        }
        None => kvm_with_qemu(qemu),
    };
    match request {
        "kvm" => {
            usable().map_err(|e| anyhow::anyhow!("--accel kvm: {e}"))?;
            Ok((Accel::Kvm, None))
        }
        "tcg" => Ok((Accel::Tcg, None)),
        "auto" => match usable() {
            Ok(()) => Ok((Accel::Kvm, None)),
            Err(why) => Ok((
                Accel::Tcg,
                Some(format!(
                    "\n  !!! KVM is not usable: {why}\n  !!! Falling back to TCG emulation: the VMs will be 10-50x slower (minutes to boot).\n  !!! `cell doctor` explains; `--accel tcg` silences this warning.\n"
                )),
            )),
        },
        other => anyhow::bail!("--accel {other}: use auto, kvm or tcg"),
    }
}

struct Check {
    ok: bool,
    what: String,
    fix: Option<String>,
}

fn tool(name: &str, arg: &str) -> Option<String> {
    let out = Command::new(name).arg(arg).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

/// What decides whether this user's Nix can build the VMs: its effective
/// configuration, who runs it, and what the store looks like.
#[derive(Debug, Clone, PartialEq)]
pub struct NixFacts {
    /// `build-users-group` (empty: builds run as the caller).
    pub build_users_group: String,
    /// `store` (`auto`, `daemon`, `local`, `unix://…`, …).
    pub store: String,
    /// Flakes are on in the configuration (`nix run`, `nix flake init` need it;
    /// cell itself passes `--extra-experimental-features` to its own builds).
    pub flakes: bool,
    pub root: bool,
    /// The Nix state directory (`/nix/var/nix`) is writable by this user, or
    /// does not exist yet and root would create it: a local store works.
    pub state_writable: bool,
    /// A nix-daemon answers on its socket.
    pub daemon: bool,
    /// Members of `build_users_group` (None: no such group).
    pub group_members: Option<usize>,
}

const DAEMON_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";
const STATE_DIR: &str = "/nix/var/nix";

impl NixFacts {
    /// Reads the effective configuration from `nix` itself (so NIX_CONFIG,
    /// NIX_CONF_DIR and the user's nix.conf count exactly as they do for a build).
    pub fn probe() -> Result<NixFacts, String> {
        let show = |args: &[&str]| {
            Command::new("nix")
                .args(["--extra-experimental-features", "nix-command"])
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
        };
        // `nix config show` since Nix 2.20, `nix show-config` before.
        let out = show(&["config", "show", "--json"])
            .or_else(|| show(&["show-config", "--json"]))
            .ok_or(
                "`nix show-config --json` failed: run it to see why; is this Nix 2.4 or newer?",
            )?;
        let config: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("`nix show-config --json` printed no JSON ({e})"))?;
        let setting = |k: &str| config.get(k).and_then(|v| v.get("value")).cloned();
        let build_users_group = setting("build-users-group")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let store = setting("store")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "auto".into());
        // The configuration's features are numbers in some Nix versions: ask
        // the evaluator instead (`builtins.getFlake` exists only with flakes).
        let flakes = show(&["eval", "--expr", "builtins ? getFlake"])
            .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true");
        let root = nix::unistd::Uid::effective().is_root();
        let state_writable = if Path::new(STATE_DIR).exists() {
            nix::unistd::access(STATE_DIR, nix::unistd::AccessFlags::W_OK).is_ok()
        } else {
            root
        };
        let daemon = std::os::unix::net::UnixStream::connect(DAEMON_SOCKET).is_ok();
        let group_members = (!build_users_group.is_empty())
            .then(|| {
                nix::unistd::Group::from_name(&build_users_group)
                    .ok()
                    .flatten()
            })
            .flatten()
            .map(|g| g.mem.len());
        Ok(NixFacts {
            build_users_group,
            store,
            flakes,
            root,
            state_writable,
            daemon,
            group_members,
        })
    }

    /// Does a build go through a nix-daemon (rather than this process)?
    fn via_daemon(&self) -> bool {
        match self.store.as_str() {
            "daemon" => true,
            s if s.starts_with("unix://") => true,
            // Nix's `auto`: the local store if its state is writable, else the daemon.
            "auto" => !self.state_writable && (self.daemon || !self.root),
            _ => false,
        }
    }

    /// The checks `cell doctor` prints: each problem that stops a build, with its fix.
    fn checks(&self) -> Vec<Check> {
        let mut checks = vec![Check {
            ok: self.flakes,
            what: "nix flakes enabled".into(),
            fix: (!self.flakes).then(|| {
                "`nix run` and `nix flake init` need flakes: add `experimental-features = nix-command flakes` to ~/.config/nix/nix.conf (or /etc/nix/nix.conf for everyone)".into()
            }),
        }];
        if self.via_daemon() {
            checks.push(Check {
                ok: self.daemon,
                what: format!(
                    "nix builds through the nix-daemon ({DAEMON_SOCKET}): {}",
                    if self.daemon { "answers" } else { "not running" }
                ),
                fix: (!self.daemon).then(|| {
                    if self.root {
                        "start it: `systemctl enable --now nix-daemon.socket`, or set `store = local` to build as root without it".to_string()
                    } else {
                        "as a user without write access to /nix, Nix builds through the daemon: start it (`sudo systemctl enable --now nix-daemon.socket`; on Debian/Ubuntu `sudo apt install nix-setup-systemd`), or run cell as root".to_string()
                    }
                }),
            });
        } else if self.root && !self.build_users_group.is_empty() {
            let g = &self.build_users_group;
            let create = format!(
                "create it: `groupadd -r {g} && for i in $(seq 1 8); do useradd -r -M -N -g {g} -G {g} -d /var/empty -s /usr/sbin/nologin {g}$i; done` (on Debian/Ubuntu `apt install nix-setup-systemd` does this), or build as root: `build-users-group =` in /etc/nix/nix.conf"
            );
            let (ok, what, fix) = match self.group_members {
                None => (
                    false,
                    format!("nix build users: the group `{g}` (build-users-group) does not exist"),
                    Some(create),
                ),
                Some(0) => (
                    false,
                    format!("nix build users: the group `{g}` (build-users-group) has no members"),
                    Some(create),
                ),
                Some(n) => (true, format!("nix build users: `{g}` ({n} users)"), None),
            };
            checks.push(Check { ok, what, fix });
        } else if !self.root && !self.state_writable {
            checks.push(Check {
                ok: false,
                what: format!(
                    "nix store: {STATE_DIR} is not writable and the store is `{}`",
                    self.store
                ),
                fix: Some(
                    "use the nix-daemon (`store = daemon`), or own /nix for a single-user install"
                        .into(),
                ),
            });
        }
        checks
    }
}

/// The fixes for whatever stops this machine's Nix from building, as lines a
/// failed build can append (empty when the configuration looks fine).
pub fn nix_fixes() -> Vec<String> {
    match NixFacts::probe() {
        Ok(f) => f
            .checks()
            .into_iter()
            // Flakes off does not stop cell's own builds (it enables them per call).
            .filter(|c| !c.ok && !c.what.starts_with("nix flakes"))
            .map(|c| format!("{}; fix: {}", c.what, c.fix.unwrap_or_default()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs every check; returns the report and whether all passed.
pub fn report(root: &Path) -> (String, bool) {
    let mut checks = Vec::new();
    if cfg!(target_os = "macos") {
        let hv = Command::new("sysctl")
            .args(["-n", "kern.hv_support"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "1")
            .unwrap_or(false);
        checks.push(Check {
            ok: hv,
            what: "Hypervisor.framework available".into(),
            fix: (!hv).then(|| {
                "this Mac cannot run VMs (kern.hv_support is not 1); Apple Silicon is required"
                    .into()
            }),
        });
        let vfkit = tool("vfkit", "--version");
        checks.push(Check {
            ok: vfkit.is_some(),
            what: format!(
                "vfkit: {}",
                vfkit.clone().unwrap_or_else(|| "not found".into())
            ),
            fix: vfkit
                .is_none()
                .then(|| "`nix run .#cell` brings vfkit; or `brew install vfkit`".into()),
        });
    } else {
        let k = kvm_with_qemu(Path::new("qemu-system-x86_64"));
        checks.push(Check {
            ok: k.is_ok(),
            what:
                "KVM usable (a guest starts; `cell start` also checks that the VM's kernel boots)"
                    .into(),
            fix: k.err().map(|e| {
                format!("{e}. Without KVM cell falls back to TCG emulation (slow but works)")
            }),
        });
        let q = tool("qemu-system-x86_64", "--version")
            .or_else(|| tool("qemu-system-aarch64", "--version"));
        checks.push(Check {
            ok: q.is_some(),
            what: format!("qemu: {}", q.clone().unwrap_or_else(|| "not found".into())),
            fix: q.is_none().then(|| "`nix run .#cell` brings qemu; or install your distribution's qemu-system package".into()),
        });
    }
    let ssh = tool("ssh", "-V");
    checks.push(Check {
        ok: ssh.is_some(),
        what: format!(
            "OpenSSH client: {}",
            ssh.clone().unwrap_or_else(|| "not found".into())
        ),
        fix: ssh.is_none().then(|| {
            "install OpenSSH (the ssh and ssh-keygen commands): cell reaches the VMs over SSH"
                .into()
        }),
    });
    let nix = tool("nix", "--version");
    checks.push(Check {
        ok: nix.is_some(),
        what: format!("nix: {}", nix.clone().unwrap_or_else(|| "not found".into())),
        fix: nix
            .is_none()
            .then(|| "install Nix (https://nixos.org/download): the VMs are built with it".into()),
    });
    if nix.is_some() {
        match NixFacts::probe() {
            Ok(facts) => checks.extend(facts.checks()),
            Err(why) => checks.push(Check {
                ok: false,
                what: "nix configuration".into(),
                fix: Some(why),
            }),
        }
    }
    let free = free_bytes(root);
    checks.push(Check {
        ok: free.is_none_or(|f| f >= MIN_FREE),
        what: format!(
            "free disk under {}: {}",
            root.display(),
            free.map(|f| format!("{:.1} GiB", f as f64 / (1u64 << 30) as f64))
                .unwrap_or_else(|| "unknown".into())
        ),
        fix: free.filter(|f| *f < MIN_FREE).map(|_| {
            "free some space (cell needs 2 GiB); `cell destroy --instance NAME` removes an instance and its disk".into()
        }),
    });
    // Instances: stale records and orphans.
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let layout = Layout::new(root, &name);
            for role in ["firewall", "agent", "relay"] {
                if let Recorded::Dead(pid) = recorded(&layout, role) {
                    checks.push(Check {
                        ok: false,
                        what: format!("instance `{name}`: the {role} (pid {pid}) is gone but recorded as running"),
                        fix: Some(format!("`cell --instance {name}` restarts the cell; `cell stop --instance {name}` clears the record")),
                    });
                }
            }
            // A running firewall: does its daemon answer? (Without it the
            // agent's egress is stopped: the rules stay, nothing passes.)
            if matches!(recorded(&layout, "firewall"), Recorded::Running(_))
                && let Ok(meta) = crate::state::Meta::load(&layout)
                && let Ok(backend) = crate::instance::backend(&meta)
            {
                let ssh =
                    crate::remote::Ssh::new(&layout, backend.ssh_route(&layout.dir, meta.ssh_port));
                let d = crate::instance::daemon(&ssh);
                checks.push(Check {
                    ok: matches!(d, crate::instance::Daemon::Answering(_)),
                    what: format!("instance `{name}`: cell-proxy answers in the firewall VM"),
                    fix: match d {
                        crate::instance::Daemon::Answering(_) => None,
                        crate::instance::Daemon::Down(why) => Some(format!(
                            "{why}; the agent's egress is stopped (fail closed). `cell stop --instance {name}` then `cell --instance {name}` restarts the cell; `journalctl -u cell-proxy` in the firewall VM says why it stopped"
                        )),
                    },
                });
            }
            let running = ["firewall", "agent", "relay"]
                .iter()
                .any(|r| matches!(recorded(&layout, r), Recorded::Running(_)));
            for sock in [
                "link.sock",
                "link-firewall.sock",
                "link-agent.sock",
                "ssh.sock",
                "firewall.qmp",
                "agent.qmp",
            ] {
                if !running && layout.path(sock).exists() {
                    checks.push(Check {
                        ok: false,
                        what: format!("instance `{name}`: stale socket {sock} from a crash"),
                        fix: Some(format!(
                            "`cell stop --instance {name}` removes it (so does the next start)"
                        )),
                    });
                }
            }
        }
    }
    let mut out = String::new();
    let mut all = true;
    for c in &checks {
        all &= c.ok;
        out.push_str(&format!(
            "{} {}\n",
            if c.ok { "ok  " } else { "FAIL" },
            c.what
        ));
        if let Some(f) = &c.fix {
            out.push_str(&format!("     fix: {f}\n"));
        }
    }
    (out, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_records_and_sockets_are_reported_with_a_fix() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::new(d.path(), "web");
        l.create_dir().unwrap();
        std::fs::write(l.pidfile("firewall"), "999999999 1\n").unwrap();
        drop(std::os::unix::net::UnixListener::bind(l.path("link.sock")).unwrap());
        let (text, ok) = report(d.path());
        assert!(!ok);
        assert!(
            text.contains("instance `web`: the firewall (pid 999999999) is gone"),
            "{text}"
        );
        assert!(text.contains("stale socket link.sock"), "{text}");
        assert!(text.contains("fix: `cell stop --instance web`"), "{text}");
    }

    fn facts() -> NixFacts {
        NixFacts {
            build_users_group: "nixbld".into(),
            store: "auto".into(),
            flakes: true,
            root: true,
            state_writable: true,
            daemon: false,
            group_members: Some(8),
        }
    }

    fn failing(f: &NixFacts) -> Vec<String> {
        f.checks()
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} / {}", c.what, c.fix.unwrap_or_default()))
            .collect()
    }

    /// The ways a Nix cannot build, each recognised with its fix; and the
    /// set-ups that do build pass.
    #[test]
    fn nix_that_cannot_build_is_recognised_with_the_fix() {
        assert_eq!(failing(&facts()), Vec::<String>::new());
        // Root, local store, build users group missing: Debian's nix-bin alone.
        let f = NixFacts {
            group_members: None,
            ..facts()
        };
        let e = failing(&f);
        assert!(
            e.len() == 1 && e[0].contains("the group `nixbld` (build-users-group) does not exist"),
            "{e:?}"
        );
        assert!(
            e[0].contains("groupadd -r nixbld") && e[0].contains("build-users-group ="),
            "{e:?}"
        );
        let e = failing(&NixFacts {
            group_members: Some(0),
            ..facts()
        });
        assert!(e[0].contains("has no members"), "{e:?}");
        // Building as root with no build users is fine.
        assert!(
            failing(&NixFacts {
                build_users_group: String::new(),
                group_members: None,
                ..facts()
            })
            .is_empty()
        );
        // Flakes off.
        let e = failing(&NixFacts {
            flakes: false,
            ..facts()
        });
        assert!(
            e.len() == 1 && e[0].contains("experimental-features = nix-command flakes"),
            "{e:?}"
        );
        // Not root, no writable store, no daemon.
        let user = NixFacts {
            root: false,
            state_writable: false,
            group_members: None,
            ..facts()
        };
        let e = failing(&user);
        assert!(
            e.len() == 1 && e[0].contains("not running") && e[0].contains("nix-daemon.socket"),
            "{e:?}"
        );
        // ... with the daemon up: fine, and the group is the daemon's business.
        assert!(
            failing(&NixFacts {
                daemon: true,
                ..user.clone()
            })
            .is_empty()
        );
        // A single-user install (the user owns /nix) builds without a daemon.
        assert!(
            failing(&NixFacts {
                state_writable: true,
                ..user
            })
            .is_empty()
        );
        // `store = daemon` needs the daemon even as root.
        let e = failing(&NixFacts {
            store: "daemon".into(),
            ..facts()
        });
        assert!(
            e[0].contains("nix-daemon") && e[0].contains("store = local"),
            "{e:?}"
        );
    }

    #[test]
    fn kvm_answers_either_way_with_a_reason() {
        // This machine's /dev/kvm may or may not work; either answer must be explained.
        if let Err(why) = kvm() {
            assert!(why.contains("/dev/kvm"), "{why}");
        }
        let qemu = Path::new("qemu-system-x86_64");
        let (accel, warning) = choose_accel("auto", qemu, None).unwrap();
        if accel == Accel::Tcg {
            assert!(warning.unwrap().contains("TCG"));
            let e = choose_accel("kvm", qemu, None).unwrap_err().to_string();
            assert!(e.contains("--accel kvm: ") && e.contains("/dev/kvm"), "{e}");
        }
        assert!(choose_accel("fast", qemu, None).is_err());
    }
}
