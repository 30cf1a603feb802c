//! The jail without root: one user namespace, created by cell as the user
//! who runs it, owning the firewall and the agent network namespaces.
//!
//! The topology is the root jail's: the agent namespace's only link is the
//! veth to the firewall namespace, which has no uplink; cell-proxy joins the
//! user namespace only, so its upstream sockets stay in the caller's own
//! network namespace while its listeners and ruleset go into the firewall one
//! (`--listen-netns /proc/self/fd/N`, one thread at a time).
//!
//! The namespaces live as long as a descriptor or a process holds them: the
//! two short-lived holder processes that create them exit as soon as cell
//! has opened their namespace files, so nothing but cell's descriptors (and
//! the processes it starts inside) keeps them, and nothing outlives the run.
//!
//! Security rule: inside the user namespace the user keeps their own uid
//! (mapped to itself), so files the command writes are theirs; only the
//! setup tools and cell-proxy get capabilities there (ambient CAP_NET_ADMIN
//! and CAP_SYS_ADMIN, in that namespace only), and the command gets none. The
//! command runs as the same user as cell-proxy, so the exec helper requires
//! Landlock (no ptrace of processes outside its domain, the run directory
//! unreadable) and cell and cell-proxy are not dumpable.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::Context;

/// `<linux/capability.h>`: binding the firewall's port 53, configuring its
/// network namespaces, entering them.
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Which network namespace a process started with [`Userns::command`] enters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Net {
    /// The caller's own (cell-proxy: its upstream connections).
    Host,
    Firewall,
    Agent,
}

/// The user namespace and its two network namespaces, as open descriptors.
pub(super) struct Userns {
    user: OwnedFd,
    fw: OwnedFd,
    agent: OwnedFd,
}

impl Userns {
    /// Creates the namespaces, or says why this machine does not allow it
    /// and how to change that.
    pub(super) fn create() -> anyhow::Result<Userns> {
        let uid = nix::unistd::getuid();
        let gid = nix::unistd::getgid();
        // The firewall holder: a new user namespace and its first network namespace.
        let fw_holder = Holder::start(None)
            .map_err(|e| anyhow::anyhow!("creating a user namespace: {e}\n{}", fix()))?;
        let pid = fw_holder.pid;
        for (file, text) in [
            ("setgroups", "deny".to_string()),
            ("uid_map", format!("{uid} {uid} 1")),
            ("gid_map", format!("{gid} {gid} 1")),
        ] {
            std::fs::write(format!("/proc/{pid}/{file}"), text)
                .with_context(|| format!("writing the user namespace's {file}"))?;
        }
        let user = open_ns(pid, "user")?;
        let fw = open_ns(pid, "net")?;
        // The agent holder: joins that user namespace, makes the second network namespace.
        let agent_holder = Holder::start(Some(user.as_raw_fd()))
            .map_err(|e| anyhow::anyhow!("creating the agent's network namespace: {e}"))?;
        let agent = open_ns(agent_holder.pid, "net")?;
        drop((fw_holder, agent_holder));
        Ok(Userns { user, fw, agent })
    }

    /// The descriptor of a network namespace, for `/proc/self/fd/N` in a
    /// process started with [`Userns::command`] (it stays open across exec there).
    pub(super) fn fd(&self, net: Net) -> Option<RawFd> {
        match net {
            Net::Host => None,
            Net::Firewall => Some(self.fw.as_raw_fd()),
            Net::Agent => Some(self.agent.as_raw_fd()),
        }
    }

    /// `program` started inside the user namespace and `net`; with `caps`,
    /// holding CAP_NET_BIND_SERVICE, CAP_NET_ADMIN and CAP_SYS_ADMIN there across
    /// exec (ambient);
    /// with `keep`, that network namespace's descriptor left open across exec
    /// (its number is [`Userns::fd`]). The command itself gets neither.
    pub(super) fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        net: Net,
        caps: bool,
        keep: Option<Net>,
    ) -> Command {
        let mut cmd = Command::new(program);
        let user = self.user.as_raw_fd();
        let target = self.fd(net);
        let keep = keep.and_then(|k| self.fd(k));
        // SAFETY: only async-signal-safe syscalls (setns, fcntl, capget/capset,
        // prctl) run between fork and exec, on descriptors this process owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(user, libc::CLONE_NEWUSER) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = target
                    && libc::setns(fd, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = keep
                    && libc::fcntl(fd, libc::F_SETFD, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if caps {
                    raise_ambient(&[CAP_NET_BIND_SERVICE, CAP_NET_ADMIN, CAP_SYS_ADMIN])?;
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs a setup tool (`ip`, `sysctl`) in `net` with capabilities, the
    /// agent namespace's descriptor open and `input` on its stdin; fails with its stderr.
    pub(super) fn run(
        &self,
        net: Net,
        program: &std::path::Path,
        args: &[&str],
        input: &str,
    ) -> anyhow::Result<()> {
        let mut cmd = self.command(program, net, true, Some(Net::Agent));
        cmd.args(args);
        super::run_with_input(
            cmd,
            input,
            &format!("(inside the jail's user namespace)\n{}", fix()),
        )
    }
}

/// Puts `caps` (held after joining the user namespace) into the inheritable
/// and ambient sets, so an exec as the unprivileged uid keeps them.
/// Async-signal-safe: plain syscalls only.
fn raise_ambient(caps: &[u32]) -> std::io::Result<()> {
    let mut sets = super::caps::get()?;
    for &cap in caps {
        let (word, bit) = super::caps::bit(cap);
        sets[word].inheritable |= bit;
    }
    super::caps::set(&sets)?;
    for &cap in caps {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn open_ns(pid: i32, kind: &str) -> anyhow::Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/{kind}");
    Ok(File::open(&path)
        .with_context(|| format!("opening {path}"))?
        .into())
}

/// A forked process that made a namespace and waits to be killed (or for
/// cell to die: then the kernel kills it).
struct Holder {
    pid: i32,
}

impl Holder {
    /// Forks; the child joins `user` (when given), unshares a network
    /// namespace (and a user namespace when not), and reports the result.
    fn start(user: Option<RawFd>) -> Result<Holder, std::io::Error> {
        let mut fds = [0; 2];
        // SAFETY: a two-element array for pipe2.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the read and write ends just made, owned here.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let parent = std::process::id() as i32;
        // SAFETY: the child runs only async-signal-safe syscalls (prctl,
        // setns, unshare, write, pause, _exit): cell has other threads.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                let mut rc = 0;
                match user {
                    Some(fd) => {
                        if libc::setns(fd, libc::CLONE_NEWUSER) != 0
                            || libc::unshare(libc::CLONE_NEWNET) != 0
                        {
                            rc = *libc::__errno_location();
                        }
                    }
                    None => {
                        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                            rc = *libc::__errno_location();
                        }
                    }
                }
                let bytes = rc.to_ne_bytes();
                libc::write(write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                if rc != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        drop(write);
        let holder = Holder { pid };
        let mut buf = [0u8; 4];
        File::from(read).read_exact(&mut buf)?;
        match i32::from_ne_bytes(buf) {
            0 => Ok(holder),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: our own child; reaped right after.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// What keeps unprivileged user namespaces off on this machine, and the fix.
pub(super) fn fix() -> String {
    fix_from(&|key| {
        std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
            .ok()
            .map(|v| v.trim().to_string())
    })
}

fn fix_from(sysctl: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = Vec::new();
    if sysctl("kernel.unprivileged_userns_clone").as_deref() == Some("0") {
        out.push(
            "unprivileged user namespaces are off (kernel.unprivileged_userns_clone = 0): \
             `sudo sysctl -w kernel.unprivileged_userns_clone=1` (and in /etc/sysctl.d/ to keep it)",
        );
    }
    if sysctl("user.max_user_namespaces").as_deref() == Some("0") {
        out.push(
            "user namespaces are limited to none (user.max_user_namespaces = 0): \
             `sudo sysctl -w user.max_user_namespaces=15000`",
        );
    }
    if sysctl("kernel.apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        out.push(
            "AppArmor denies unprivileged user namespaces their capabilities \
             (kernel.apparmor_restrict_unprivileged_userns = 1, Ubuntu 23.10+): \
             `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`, or an AppArmor \
             profile for cell with `userns,`",
        );
    }
    if out.is_empty() {
        return "(or run it with sudo: as root cell jail needs no user namespace)".into();
    }
    format!(
        "{}\nor run it with sudo: as root cell jail needs no user namespace",
        out.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each switch that keeps unprivileged user namespaces off is named with
    /// its exact fix; with none set, the message offers root.
    #[test]
    fn the_fix_names_each_switch() {
        let off = |key: &str| {
            Some(
                match key {
                    "kernel.unprivileged_userns_clone" => "0",
                    "kernel.apparmor_restrict_unprivileged_userns" => "1",
                    _ => "15000",
                }
                .to_string(),
            )
        };
        let text = fix_from(&off);
        assert!(
            text.contains("sudo sysctl -w kernel.unprivileged_userns_clone=1"),
            "{text}"
        );
        assert!(
            text.contains("sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
            "{text}"
        );
        assert!(!text.contains("max_user_namespaces"), "{text}");
        let none = fix_from(&|_| None);
        assert!(none.contains("run it with sudo"), "{none}");
    }
}
