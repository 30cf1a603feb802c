//! SSH to the VMs: the host's only way in.
//!
//! The firewall is reached over the route its backend provides (a loopback
//! port forwarded by qemu, or vfkit's vsock socket). The agent is reached
//! *through* the firewall (`ssh -W` from the firewall to the agent's link
//! address): the host never has a route into the agent's network.
//!
//! The key pair is the instance's own (`id_ed25519`, generated at creation,
//! never leaves the instance directory); its public half reaches the VMs on
//! the kernel command line (`cell.ssh_key=`, base64). Host keys are trusted on
//! first use per boot: `known_hosts` is reset whenever the VMs start.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::backend::SshRoute;
use crate::state::Layout;

/// The agent's address on the private link (`cell.link.agentAddress`).
pub const AGENT_ADDRESS: &str = "10.89.0.2";
/// The user the agent's shells run as (`cell.agent.user`).
pub const AGENT_USER: &str = "agent";

pub struct Ssh {
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub route: SshRoute,
    pub cell_exe: PathBuf,
}

/// Quotes one word for a POSIX shell.
pub fn shq(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Ssh {
    pub fn new(layout: &Layout, route: SshRoute) -> Ssh {
        Ssh {
            key: layout.key(),
            known_hosts: layout.known_hosts(),
            route,
            cell_exe: std::env::current_exe().unwrap_or_else(|_| "cell".into()),
        }
    }

    fn options(&self) -> Vec<String> {
        let o = |k: &str, v: &str| ["-o".to_string(), format!("{k}={v}")];
        let mut a = vec!["-i".into(), self.key.to_string_lossy().into_owned()];
        a.extend(o("IdentitiesOnly", "yes"));
        a.extend(o("IdentityAgent", "none"));
        a.extend(o("UserKnownHostsFile", &self.known_hosts.to_string_lossy()));
        a.extend(o("StrictHostKeyChecking", "accept-new"));
        a.extend(o("LogLevel", "ERROR"));
        a.extend(o("ConnectTimeout", "10"));
        a.extend(o("ServerAliveInterval", "15"));
        a.extend(o("ForwardAgent", "no"));
        a.extend(o("ForwardX11", "no"));
        a.extend(o("BatchMode", "yes"));
        a
    }

    /// Arguments that reach the firewall's sshd as root.
    pub fn firewall_args(&self) -> Vec<String> {
        let mut a = self.options();
        match &self.route {
            SshRoute::Loopback(port) => {
                a.extend(["-p".into(), port.to_string()]);
                a.extend(["-o".into(), "HostKeyAlias=cell-firewall".into()]);
                a.push("root@127.0.0.1".into());
            }
            SshRoute::Unix(path) => {
                a.extend([
                    "-o".into(),
                    format!(
                        "ProxyCommand={} connect {}",
                        shq(&self.cell_exe.to_string_lossy()),
                        shq(&path.to_string_lossy())
                    ),
                ]);
                a.push("root@cell-firewall".into());
            }
        }
        a
    }

    /// Arguments that reach the agent through the firewall.
    pub fn agent_args(&self, tty: bool) -> Vec<String> {
        let jump: Vec<String> = std::iter::once("ssh".to_string())
            .chain(self.firewall_args().into_iter().flat_map(|a| {
                // The user@host goes last, after -W.
                if a.ends_with("@127.0.0.1") || a.ends_with("@cell-firewall") {
                    vec![]
                } else {
                    vec![a]
                }
            }))
            .chain(["-W".into(), "%h:%p".into()])
            .chain(std::iter::once(match &self.route {
                SshRoute::Loopback(_) => "root@127.0.0.1".to_string(),
                SshRoute::Unix(_) => "root@cell-firewall".to_string(),
            }))
            .collect();
        let mut a = self.options();
        a.extend([
            "-o".into(),
            format!(
                "ProxyCommand={}",
                jump.iter().map(|w| shq(w)).collect::<Vec<_>>().join(" ")
            ),
        ]);
        a.extend(["-o".into(), "HostKeyAlias=cell-agent".into()]);
        if tty {
            a.push("-t".into());
        }
        a.push(format!("{AGENT_USER}@{AGENT_ADDRESS}"));
        a
    }

    pub fn firewall(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.firewall_args()).arg("--").arg(remote);
        c
    }

    pub fn agent(&self, tty: bool, remote: Option<&str>) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.agent_args(tty));
        if let Some(r) = remote {
            c.arg("--").arg(r);
        }
        c
    }
}

/// Creates the instance key pair if it does not exist.
pub fn ensure_key(layout: &Layout) -> anyhow::Result<String> {
    let key = layout.key();
    let public = key.with_extension("pub");
    if !key.exists() || !public.exists() {
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&public);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("cell-{}", layout.name))
            .arg("-f")
            .arg(&key)
            .output()
            .context("running ssh-keygen (install OpenSSH: it is how cell reaches the VMs)")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(std::fs::read_to_string(&public)?.trim().to_string())
}

/// The kernel parameter carrying the public key to both VMs.
pub fn key_boot_arg(public: &str) -> String {
    format!("cell.ssh_key={}", base64url(public.as_bytes()))
}

fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `cell connect PATH`: joins stdin/stdout to a unix socket (SSH's
/// ProxyCommand for vfkit's vsock socket).
pub fn connect(path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to {}", path.display()))?;
    let mut r = s.try_clone()?;
    let mut w = s;
    let up = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || w.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 16384];
    let mut stdout = std::io::stdout();
    while let Ok(n) = r.read(&mut buf) {
        if n == 0
            || stdout
                .write_all(&buf[..n])
                .and_then(|_| stdout.flush())
                .is_err()
        {
            break;
        }
    }
    drop(up);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(route: SshRoute) -> Ssh {
        Ssh {
            key: "/i/id_ed25519".into(),
            known_hosts: "/i/known_hosts".into(),
            route,
            cell_exe: "/bin/cell".into(),
        }
    }

    #[test]
    fn the_agent_is_reached_only_through_the_firewall() {
        let a = ssh(SshRoute::Loopback(2222)).agent_args(true);
        let joined = a.join(" ");
        assert_eq!(a.last().unwrap(), "agent@10.89.0.2");
        let proxy = a.iter().find(|x| x.starts_with("ProxyCommand=")).unwrap();
        assert!(
            proxy.contains("-W %h:%p root@127.0.0.1") && proxy.contains("-p 2222"),
            "{proxy}"
        );
        assert!(joined.contains("ForwardAgent=no"));
        assert!(joined.contains("IdentitiesOnly=yes"));
        assert!(a.contains(&"-t".to_string()));
    }

    #[test]
    fn vsock_route_uses_cell_connect() {
        let a = ssh(SshRoute::Unix("/i/ssh.sock".into())).firewall_args();
        assert!(
            a.contains(&"ProxyCommand=/bin/cell connect /i/ssh.sock".to_string()),
            "{a:?}"
        );
        assert_eq!(a.last().unwrap(), "root@cell-firewall");
    }

    #[test]
    fn base64url_matches_the_standard_alphabet_without_padding() {
        assert_eq!(base64url(b"ssh"), "c3No");
        assert_eq!(base64url(b"ss"), "c3M");
        assert_eq!(base64url(b"s"), "cw");
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shq("a/b"), "a/b");
        assert_eq!(shq("a b"), "'a b'");
        assert_eq!(shq("it's"), "'it'\\''s'");
        assert_eq!(shq(""), "''");
    }
}
