//! Hypervisor backends: from two VM specs to the processes that run them.
//!
//! One small trait, one implementation per platform:
//!
//! - [`Qemu`] (Linux): each VM is one qemu process. The private link is a
//!   `-netdev stream` over `link.sock` in the instance directory: the firewall
//!   listens, the agent connects (and reconnects after a firewall restart).
//!   The firewall's uplink is user-mode networking with one forward,
//!   127.0.0.1:PORT → the firewall's SSH. The agent has no other NIC, so there
//!   is no route from it to the host or anywhere else. Rootless: no tap, no
//!   bridge, no sudo.
//! - [`Vfkit`] (macOS): each VM is one vfkit process. vfkit cannot join two
//!   VMs directly, so the link is two unixgram devices and `cell relay`
//!   (this binary) forwards Ethernet frames between exactly those two
//!   sockets. The uplink is vfkit NAT; SSH to the firewall goes over vsock,
//!   exposed by vfkit as `ssh.sock`.
//!
//! The generated command lines are covered by golden tests
//! (`tests/golden/*.args`, regenerate with `CELL_UPDATE_GOLDEN=1`).

use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::spec::{Role, VmSpec};

/// How the guest CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Linux KVM.
    Kvm,
    /// qemu's emulator: slow (minutes to boot NixOS), for hosts without KVM.
    Tcg,
    /// Hypervisor.framework (vfkit).
    Hvf,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
            Accel::Hvf => "hvf",
        }
    }
}

/// Everything a backend needs to write the command lines.
pub struct Ctx<'a> {
    /// The instance directory (absolute).
    pub dir: &'a Path,
    /// The instance name (shown in process lists).
    pub name: &'a str,
    pub firewall: &'a VmSpec,
    pub agent: &'a VmSpec,
    pub accel: Accel,
    /// Host loopback port forwarded to the firewall's SSH (qemu).
    pub ssh_port: u16,
    /// Extra kernel parameters for both VMs (the host's SSH key).
    pub boot_args: &'a [String],
    /// The project directory shared as the workspace, when the agent has a share.
    pub workspace: Option<&'a Path>,
    /// The `cell` binary (runs the vfkit relay).
    pub cell_exe: &'a Path,
    /// A hypervisor binary to use instead of the one on PATH.
    pub hypervisor: Option<&'a Path>,
    /// The hypervisor's version (major, minor) when known: qemu renamed an
    /// option in 9.2. `None`: assume a current one.
    pub version: Option<(u32, u32)>,
}

/// `QEMU emulator version 7.2.15 (…)` → (7, 2).
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split("version ").nth(1)?;
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Asks `program --version`.
pub fn hypervisor_version(program: &Path) -> Option<(u32, u32)> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()?;
    parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
}

/// One process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// `firewall`, `agent` or `relay`: names the pid and log files.
    pub role: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Files this process creates that the next one needs; the launcher
    /// waits for them before going on.
    pub creates: Vec<PathBuf>,
}

/// How the host reaches the firewall's SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshRoute {
    /// A forwarded loopback port.
    Loopback(u16),
    /// A unix socket connected to the guest's vsock port 22 (vfkit).
    Unix(PathBuf),
}

pub trait Backend {
    fn name(&self) -> &'static str;
    /// The processes to start, in order.
    fn launches(&self, ctx: &Ctx) -> anyhow::Result<Vec<Launch>>;
    /// Sockets the processes create (removed when stale or stopped).
    fn sockets(&self, dir: &Path) -> Vec<PathBuf>;
    fn ssh_route(&self, dir: &Path, ssh_port: u16) -> SshRoute;
}

/// The backend for this host.
pub fn for_host() -> Box<dyn Backend> {
    if cfg!(target_os = "macos") {
        Box::new(Vfkit)
    } else {
        Box::new(Qemu)
    }
}

pub fn by_name(name: &str) -> anyhow::Result<Box<dyn Backend>> {
    match name {
        "qemu" => Ok(Box::new(Qemu)),
        "vfkit" => Ok(Box::new(Vfkit)),
        other => bail!("unknown backend `{other}`: qemu (Linux) or vfkit (macOS)"),
    }
}

/// Escapes a value for a qemu option list (`,` is written `,,`).
fn q(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

fn cmdline(console: &str, spec: &VmSpec, extra: &[String]) -> String {
    let mut parts = vec![
        format!("console={console}"),
        "reboot=t".into(),
        "panic=-1".into(),
    ];
    parts.extend(spec.cmdline.iter().cloned());
    parts.extend(extra.iter().cloned());
    parts.join(" ")
}

pub struct Qemu;

impl Qemu {
    fn vm(&self, ctx: &Ctx, spec: &VmSpec) -> anyhow::Result<Launch> {
        let role = spec.role.as_str();
        let dir = ctx.dir;
        let (program, machine, console) = match spec.system.as_str() {
            "x86_64-linux" => ("qemu-system-x86_64", "q35", "ttyS0"),
            _ => ("qemu-system-aarch64", "virt", "ttyAMA0"),
        };
        let accel = match ctx.accel {
            Accel::Kvm if !spec.native() => bail!(
                "KVM runs only {} guests on this host; the spec is for {}",
                std::env::consts::ARCH,
                spec.system
            ),
            Accel::Hvf => bail!("qemu here uses kvm or tcg, not hvf"),
            a => a,
        };
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&[
            "-name",
            &format!("cell-{}-{role},debug-threads=on", ctx.name),
        ]);
        push(&["-machine", machine, "-accel", accel.as_str()]);
        push(&["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
        push(&["-smp", &spec.vcpu.to_string(), "-m", &spec.mem.to_string()]);
        push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
        push(&[
            "-chardev",
            &format!(
                "file,id=console,path={}",
                q(&dir.join(format!("{role}.console")))
            ),
            "-serial",
            "chardev:console",
        ]);
        push(&[
            "-qmp",
            &format!(
                "unix:{},server=on,wait=off",
                q(&dir.join(format!("{role}.qmp")))
            ),
        ]);
        push(&["-kernel", &q(&spec.kernel), "-initrd", &q(&spec.initrd)]);
        push(&["-append", &cmdline(console, spec, ctx.boot_args)]);
        push(&["-device", "virtio-rng-pci"]);
        if let Some(store) = &spec.store_disk {
            push(&[
                "-drive",
                &format!("id=store,format=raw,read-only=on,if=none,file={}", q(store)),
                "-device",
                "virtio-blk-pci,drive=store",
            ]);
        }
        for (i, v) in spec.volumes.iter().enumerate() {
            push(&[
                "-drive",
                &format!(
                    "id=vol{i},format=raw,if=none,discard=unmap,file={}",
                    q(&dir.join(&v.image))
                ),
                "-device",
                &format!("virtio-blk-pci,drive=vol{i}"),
            ]);
        }
        for (i, s) in spec.shares.iter().enumerate() {
            let Some(ws) = ctx.workspace else { continue };
            push(&[
                "-fsdev",
                &format!("local,id=fs{i},path={},security_model=none", q(ws)),
                "-device",
                &format!("virtio-9p-pci,fsdev=fs{i},mount_tag={}", s.tag),
            ]);
        }
        let link = q(&dir.join("link.sock"));
        let (netdev, creates) = match spec.role {
            // The firewall listens on the link socket…
            Role::Firewall => (
                format!("stream,id=link,server=on,addr.type=unix,addr.path={link}"),
                vec![dir.join("link.sock")],
            ),
            // …the agent connects, and reconnects if the firewall restarts
            // (`reconnect-ms` since qemu 9.2, `reconnect` in seconds since
            // 8.0, nothing before: the launcher starts the agent only once
            // the firewall's socket exists, and restarts both together).
            Role::Agent => (
                format!(
                    "stream,id=link,server=off,addr.type=unix,addr.path={link}{}",
                    match ctx.version {
                        Some(v) if v < (8, 0) => "",
                        Some(v) if v < (9, 2) => ",reconnect=1",
                        _ => ",reconnect-ms=1000",
                    }
                ),
                vec![],
            ),
        };
        // qemu creates its monitor socket once it has parsed its arguments
        // and set the machine up: the sign it is running, not failing.
        let mut creates = creates;
        creates.push(dir.join(format!("{role}.qmp")));
        push(&[
            "-netdev",
            &netdev,
            "-device",
            &format!("virtio-net-pci,netdev=link,mac={}", spec.link_mac),
        ]);
        if let Some(mac) = &spec.uplink_mac {
            push(&[
                "-netdev",
                &format!("user,id=uplink,hostfwd=tcp:127.0.0.1:{}-:22", ctx.ssh_port),
                "-device",
                &format!("virtio-net-pci,netdev=uplink,mac={mac}"),
            ]);
        }
        Ok(Launch {
            role: spec.role.as_str(),
            program: ctx
                .hypervisor
                .map(Path::to_path_buf)
                .unwrap_or_else(|| program.into()),
            args: a,
            creates,
        })
    }
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }
    fn launches(&self, ctx: &Ctx) -> anyhow::Result<Vec<Launch>> {
        Ok(vec![self.vm(ctx, ctx.firewall)?, self.vm(ctx, ctx.agent)?])
    }
    fn sockets(&self, dir: &Path) -> Vec<PathBuf> {
        ["link.sock", "firewall.qmp", "agent.qmp"]
            .iter()
            .map(|s| dir.join(s))
            .collect()
    }
    fn ssh_route(&self, _dir: &Path, ssh_port: u16) -> SshRoute {
        SshRoute::Loopback(ssh_port)
    }
}

pub struct Vfkit;

impl Vfkit {
    fn vm(&self, ctx: &Ctx, spec: &VmSpec) -> anyhow::Result<Launch> {
        let role = spec.role.as_str();
        let dir = ctx.dir;
        if !spec.native() {
            bail!(
                "vfkit runs only {} guests on this Mac; the spec is for {}",
                std::env::consts::ARCH,
                spec.system
            );
        }
        let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let mut a: Vec<String> = vec![
            "--cpus".into(),
            spec.vcpu.to_string(),
            "--memory".into(),
            spec.mem.to_string(),
            "--bootloader".into(),
            format!(
                "linux,kernel={},initrd={},cmdline=\"{}\"",
                spec.kernel.display(),
                spec.initrd.display(),
                cmdline("hvc0", spec, ctx.boot_args)
            ),
            "--device".into(),
            "virtio-rng".into(),
            "--device".into(),
            format!(
                "virtio-serial,logFilePath={}",
                p(&format!("{role}.console"))
            ),
        ];
        let mut dev = |d: String| {
            a.push("--device".into());
            a.push(d);
        };
        if let Some(store) = &spec.store_disk {
            dev(format!("virtio-blk,path={},readonly", store.display()));
        }
        for v in &spec.volumes {
            dev(format!("virtio-blk,path={}", p(&v.image)));
        }
        for s in &spec.shares {
            if let Some(ws) = ctx.workspace {
                dev(format!(
                    "virtio-fs,sharedDir={},mountTag={}",
                    ws.display(),
                    s.tag
                ));
            }
        }
        dev(format!(
            "virtio-net,unixSocketPath={},mac={}",
            p(&format!("link-{role}.sock")),
            spec.link_mac
        ));
        if let Some(mac) = &spec.uplink_mac {
            dev(format!("virtio-net,nat,mac={mac}"));
            // The host connects to ssh.sock; vfkit connects on to the guest's vsock port 22.
            dev(format!(
                "virtio-vsock,port=22,socketURL={},connect",
                p("ssh.sock")
            ));
        }
        Ok(Launch {
            role: spec.role.as_str(),
            program: ctx
                .hypervisor
                .map(Path::to_path_buf)
                .unwrap_or_else(|| "vfkit".into()),
            args: a,
            creates: vec![],
        })
    }
}

impl Backend for Vfkit {
    fn name(&self) -> &'static str {
        "vfkit"
    }
    fn launches(&self, ctx: &Ctx) -> anyhow::Result<Vec<Launch>> {
        if ctx.accel != Accel::Hvf {
            bail!("vfkit always uses Hypervisor.framework");
        }
        let relay = Launch {
            role: "relay",
            program: ctx.cell_exe.to_path_buf(),
            args: vec![
                "relay".into(),
                ctx.dir.join("link-firewall.sock").to_string_lossy().into(),
                ctx.dir.join("link-agent.sock").to_string_lossy().into(),
            ],
            creates: vec![
                ctx.dir.join("link-firewall.sock"),
                ctx.dir.join("link-agent.sock"),
            ],
        };
        Ok(vec![
            relay,
            self.vm(ctx, ctx.firewall)?,
            self.vm(ctx, ctx.agent)?,
        ])
    }
    fn sockets(&self, dir: &Path) -> Vec<PathBuf> {
        ["link-firewall.sock", "link-agent.sock", "ssh.sock"]
            .iter()
            .map(|s| dir.join(s))
            .collect()
    }
    fn ssh_route(&self, dir: &Path, _ssh_port: u16) -> SshRoute {
        SshRoute::Unix(dir.join("ssh.sock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::{agent, firewall};

    fn ctx<'a>(fw: &'a VmSpec, ag: &'a VmSpec, accel: Accel, boot: &'a [String]) -> Ctx<'a> {
        Ctx {
            dir: Path::new("/home/u/.local/state/cell/instances/default"),
            name: "default",
            firewall: fw,
            agent: ag,
            accel,
            ssh_port: 2222,
            boot_args: boot,
            workspace: Some(Path::new("/home/u/src/project")),
            cell_exe: Path::new("/nix/store/c-cell/bin/cell"),
            hypervisor: None,
            version: None,
        }
    }

    fn render(launches: &[Launch]) -> String {
        let mut out = String::new();
        for l in launches {
            out.push_str(&format!("# {}\n{}\n", l.role, l.program.display()));
            // One option per line, with its value.
            let mut args = l.args.iter().peekable();
            while let Some(a) = args.next() {
                match args.peek() {
                    Some(v) if a.starts_with('-') && !v.starts_with('-') => {
                        out.push_str(&format!("  {a} {}\n", args.next().unwrap()))
                    }
                    _ => out.push_str(&format!("  {a}\n")),
                }
            }
            for c in &l.creates {
                out.push_str(&format!("# creates {}\n", c.display()));
            }
        }
        out
    }

    /// Compares with `tests/golden/NAME.args`; `CELL_UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, got: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(format!("{name}.args"));
        if std::env::var_os("CELL_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "{} is missing; run with CELL_UPDATE_GOLDEN=1 and review it",
                path.display()
            )
        });
        assert_eq!(
            got,
            want,
            "the generated invocation differs from {}; if intended, rerun with CELL_UPDATE_GOLDEN=1 and review the diff",
            path.display()
        );
    }

    fn key() -> Vec<String> {
        vec!["cell.ssh_key=c3NoLWVkMjU1MTkgQUFBQSBjZWxs".into()]
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn qemu_kvm_golden() {
        let (fw, ag, k) = (firewall(), agent(), key());
        golden(
            "qemu-kvm",
            &render(&Qemu.launches(&ctx(&fw, &ag, Accel::Kvm, &k)).unwrap()),
        );
    }

    #[test]
    fn qemu_tcg_golden() {
        let (fw, ag, k) = (firewall(), agent(), key());
        golden(
            "qemu-tcg",
            &render(&Qemu.launches(&ctx(&fw, &ag, Accel::Tcg, &k)).unwrap()),
        );
    }

    #[test]
    fn vfkit_golden() {
        let arch = |mut s: VmSpec| {
            // vfkit only runs native guests; the golden file is for Apple Silicon.
            s.system = format!("{}-linux", std::env::consts::ARCH);
            s
        };
        let (fw, ag, k) = (arch(firewall()), arch(agent()), key());
        let got = render(&Vfkit.launches(&ctx(&fw, &ag, Accel::Hvf, &k)).unwrap());
        golden("vfkit", &got.replace(std::env::consts::ARCH, "aarch64"));
    }

    /// The security property of the wiring, independent of formatting: the
    /// agent's only network device is the link, and nothing forwards to it.
    #[test]
    fn the_agent_has_exactly_one_nic_and_no_forward() {
        let (fw, ag, k) = (firewall(), agent(), key());
        for (backend, accel) in [(&Qemu as &dyn Backend, Accel::Tcg), (&Vfkit, Accel::Hvf)] {
            let mut fw = fw.clone();
            let mut ag = ag.clone();
            if backend.name() == "vfkit" {
                fw.system = format!("{}-linux", std::env::consts::ARCH);
                ag.system = fw.system.clone();
            }
            let l = backend.launches(&ctx(&fw, &ag, accel, &k)).unwrap();
            let agent = l.iter().find(|l| l.role == "agent").unwrap();
            let nets: Vec<&String> = agent
                .args
                .iter()
                .filter(|a| {
                    a.starts_with("virtio-net") || a.starts_with("stream") || a.starts_with("user")
                })
                .collect();
            let joined = agent.args.join(" ");
            assert!(!joined.contains("hostfwd"), "{joined}");
            assert!(!joined.contains(",nat"), "{joined}");
            assert!(!joined.contains("vsock"), "{joined}");
            match backend.name() {
                "qemu" => {
                    assert_eq!(nets.len(), 2, "one netdev + one device: {nets:?}");
                    assert!(nets[0].starts_with("stream,") && nets[0].contains("server=off"));
                }
                _ => {
                    assert_eq!(nets.len(), 1, "{nets:?}");
                    assert!(
                        nets[0].contains("unixSocketPath=") && nets[0].contains("link-agent.sock")
                    );
                }
            }
            // The firewall's forward binds loopback only.
            let fwl = l.iter().find(|l| l.role == "firewall").unwrap();
            for a in &fwl.args {
                if a.contains("hostfwd") {
                    assert!(a.contains("hostfwd=tcp:127.0.0.1:2222-:22"), "{a}");
                }
            }
        }
    }

    #[test]
    fn the_reconnect_option_follows_the_qemu_version() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u7)\nCopyright"
            ),
            Some((7, 2))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.2"),
            Some((10, 0))
        );
        assert_eq!(parse_qemu_version("nonsense"), None);
        let (fw, ag, k) = (firewall(), agent(), key());
        let mut c = ctx(&fw, &ag, Accel::Tcg, &k);
        c.version = Some((7, 2));
        let oldest = Qemu.launches(&c).unwrap()[1].args.join(" ");
        assert!(!oldest.contains("reconnect"), "{oldest}");
        c.version = Some((8, 2));
        let old = Qemu.launches(&c).unwrap()[1].args.join(" ");
        assert!(
            old.contains(",reconnect=1") && !old.contains("reconnect-ms"),
            "{old}"
        );
        c.version = Some((9, 2));
        let new = Qemu.launches(&c).unwrap()[1].args.join(" ");
        assert!(new.contains(",reconnect-ms=1000"), "{new}");
    }

    #[test]
    fn commas_in_paths_are_escaped_for_qemu() {
        let (fw, ag, k) = (firewall(), agent(), key());
        let mut c = ctx(&fw, &ag, Accel::Tcg, &k);
        c.dir = Path::new("/tmp/a,b");
        let l = Qemu.launches(&c).unwrap();
        let joined = l[0].args.join(" ");
        assert!(joined.contains("path=/tmp/a,,b/link.sock"), "{joined}");
        assert!(!joined.contains("/tmp/a,b/"), "{joined}");
    }

    #[test]
    fn kvm_refuses_a_foreign_guest() {
        let (mut fw, ag, k) = (firewall(), agent(), key());
        fw.system = if std::env::consts::ARCH == "x86_64" {
            "aarch64-linux".into()
        } else {
            "x86_64-linux".into()
        };
        let e = Qemu
            .launches(&ctx(&fw, &ag, Accel::Kvm, &k))
            .unwrap_err()
            .to_string();
        assert!(e.contains("KVM runs only"), "{e}");
    }
}
