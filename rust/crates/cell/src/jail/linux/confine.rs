//! The jail's exec helper: `cell jail --fs-exec SPEC -- CMD`, run inside the
//! agent network namespace in place of the command. It confines the
//! filesystem as [`Spec`] says, then runs the command in a PID namespace of
//! its own and waits for it: when the command ends, every process it left
//! behind (daemons, double forks, processes that made themselves
//! unkillable by name) ends with the namespace — the kernel kills them.
//!
//! A helper process rather than a `pre_exec` closure: cell is multithreaded
//! when it starts the command, and building Landlock rules (directory
//! listings, allocations) is not async-signal-safe between fork and exec.
//!
//! In order:
//! 1. **Mount namespace** (private, so nothing propagates to the host): an
//!    empty tmpfs on `/tmp` and `/dev/shm`; the host paths under them the
//!    command is allowed (a current directory in `/tmp`, the CA bundle)
//!    bound back in; and inside every writable tree, what Landlock cannot
//!    keep apart (below).
//! 2. **Capabilities**: the ones that reach around file permissions and
//!    Landlock (modules, raw I/O, mounts and BPF, ptrace, mknod, reading
//!    by file handle) leave the bounding set, so a root command never gets them.
//! 3. **Landlock** (best effort, [`TARGET`] as the newest ABI asked for):
//!    every access right handled, rules compiled from the spec (below), the
//!    process scoped for signals and abstract sockets, audit logging of denials
//!    kept on after exec; `no_new_privs` set. The jail without root requires
//!    it ([`Spec::require_landlock`]) and refuses to run the command otherwise.
//! 4. **The PID namespace** (made before the capabilities go): the helper
//!    forks a reaper (its pid 1, adopting orphans) and the command, passes
//!    SIGTERM and SIGHUP on, waits, then kills the reaper — and with it the
//!    namespace — and exits with the command's status.
//!
//! Security rule — "deny under an allowed tree" with an allow-list. Landlock
//! grants a right to a whole hierarchy and cannot take it back below, so:
//!
//! - Under a **read-only** tree (the default: `$HOME` holding `.ssh`) the
//!   tree is *split*: a directory on the way to a rule gets only the right
//!   to list itself, each of its existing children the tree's full rights
//!   unless it is itself on the way, and so on down to the rule. The denied
//!   path gets nothing: EACCES, whichever way it is reached. Symlinks among
//!   the children get no rule (what they point to is judged where it lives);
//!   a file that appears in a split directory later gets nothing either
//!   (unreadable: failing closed, and no loss, as nothing there is writable).
//! - Under a **writable** tree a split would leave new files in the split
//!   directories unwritable (`--deny-read .env` would break `npm install`),
//!   so the mount namespace does it: a denied file is covered by `/dev/null`
//!   on a read-only `nodev` mount (every open fails, EACCES), a denied
//!   directory by an empty read-only tmpfs (its files are not there); a
//!   read-only path is bound onto itself read-only (EROFS), since creating,
//!   removing or renaming entries beneath a writable directory is not
//!   something Landlock can refuse further down. Without a mount namespace
//!   Landlock splits the writable tree after all, and that cost is reported.
//!
//! Overmounting everywhere was not chosen: it answers ENOENT or empty
//! content rather than EACCES, needs a mount namespace that the rootless
//! jail may not have, and Landlock judges the file itself, however it is
//! reached; a mount covers one path.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use landlock::{
    ABI, Access as _, AccessFs, BitFlags, LandlockStatus, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope,
};

use super::files::{Access, Spec};

/// The newest Landlock ABI this code asks for (and was reviewed against).
/// Older kernels enforce what they can; what they cannot is reported.
const TARGET: ABI = ABI::V9;

/// Runs the command confined as the spec at `spec_path` says; returns only
/// when the command could not be executed.
pub(super) fn exec(spec_path: &Path, command: &[String]) -> anyhow::Result<u8> {
    let spec = Spec::read(spec_path)?;
    let mut not_enforced = Vec::new();
    let absorbed = mounts(&spec)?;
    if absorbed.is_none() && spec.resolv_conf.is_some() {
        bail!(
            "no mount namespace for the command here (unshare: {}), so its DNS cannot be \
             pointed at the firewall",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a plain syscall; the namespace is for the children forked below.
    let pid_ns = unsafe { libc::unshare(libc::CLONE_NEWPID) } == 0;
    drop_capabilities();
    let enforced = landlock(&spec, absorbed.as_ref(), &mut not_enforced)?;
    if spec.require_landlock && !enforced {
        bail!(
            "cell jail without root needs Landlock (Linux 5.13+, `landlock` in the kernel's \
             `lsm=`): the command runs as your own user, and only Landlock keeps it from \
             tracing cell-proxy or rewriting the jail's policy; run it as root instead"
        );
    }
    if !pid_ns {
        not_enforced.push(
            "ending the command's background processes with it (no PID namespace here)".into(),
        );
    }
    if absorbed.is_none() && !spec.private.is_empty() {
        not_enforced.push(format!(
            "a private {} (no mount namespace here): the command writes the host's",
            list(&spec.private)
        ));
    }
    if !not_enforced.is_empty() {
        eprintln!(
            "cell jail: not enforced on this kernel: {}",
            not_enforced.join("; ")
        );
    }
    std::env::set_current_dir(&spec.cwd)
        .with_context(|| format!("entering {}", spec.cwd.display()))?;
    if pid_ns {
        return supervise(command);
    }
    Ok(run_command(command))
}

/// Executes the command in this process; returns only the status for an
/// exec that failed (127: not found, 126: not executable).
fn run_command(command: &[String]) -> u8 {
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    eprintln!("cell jail: {}: {err}", command[0]);
    if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

/// The signals the helper handles itself while it waits.
fn handled() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Runs the command as pid 2 of the new PID namespace, under a reaper as
/// pid 1; returns the command's status once the namespace is gone.
fn supervise(command: &[String]) -> anyhow::Result<u8> {
    use nix::sys::signal::{Signal, kill};
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};

    let set = handled();
    let old = set.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
    // SAFETY: this helper is single-threaded (it runs before cell starts any
    // thread), so the children may run any code.
    let reaper = match unsafe { fork() }.context("starting the jail's reaper")? {
        ForkResult::Child => reap(),
        ForkResult::Parent { child } => child,
    };
    // SAFETY: as above.
    let cmd = match unsafe { fork() }.context("starting the command")? {
        ForkResult::Child => {
            let _ = old.thread_set_mask();
            std::process::exit(run_command(command).into());
        }
        ForkResult::Parent { child } => child,
    };
    let status = loop {
        match set.wait()? {
            // cell passes these on; the terminal's own (INT, QUIT) reach the command directly.
            sig @ (Signal::SIGTERM | Signal::SIGHUP) => {
                let _ = kill(cmd, sig);
            }
            Signal::SIGCHLD => match waitpid(cmd, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break code.clamp(0, 255) as u8,
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    break (128 + sig as i32).clamp(0, 255) as u8;
                }
                _ => {}
            },
            _ => {}
        }
    };
    let _ = kill(reaper, Signal::SIGKILL);
    let _ = waitpid(reaper, None);
    Ok(status)
}

/// Pid 1 of the command's namespace: adopts orphans and collects them, until
/// the helper kills it (or dies: then the kernel does).
fn reap() -> ! {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let chld = {
        let mut s = nix::sys::signal::SigSet::empty();
        s.add(nix::sys::signal::Signal::SIGCHLD);
        s
    };
    let timeout = libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    };
    loop {
        while let Ok(s) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            if s == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        // SAFETY: a valid set and timeout; SIGCHLD is blocked here.
        unsafe { libc::sigtimedwait(chld.as_ref(), std::ptr::null_mut(), &timeout) };
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

// ---------------------------------------------------------------------------
// 1. The mount namespace

/// Sets up the command's mount namespace. Returns the rule paths the mounts
/// enforce (Landlock leaves them to the enclosing rule), or `None` when the
/// kernel or the privileges here allow no mount namespace (nothing changed).
fn mounts(spec: &Spec) -> anyhow::Result<Option<HashSet<PathBuf>>> {
    // SAFETY: plain syscalls on this (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Ok(None);
    }
    mount(
        None::<&str>,
        "/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .context("making the jail's mounts private")?;
    if let Some(resolv) = &spec.resolv_conf {
        mount(
            Some(resolv.as_os_str()),
            "/etc/resolv.conf",
            None,
            libc::MS_BIND,
            None,
        )
        .context("pointing /etc/resolv.conf at the firewall")?;
    }
    let private = |p: &Path| spec.private.iter().find(|m| p != *m && p.starts_with(m));

    // The host paths under a private directory the command may still reach,
    // taken (as detached copies of their mounts) before the tmpfs hides them.
    let mut carried: Vec<(PathBuf, bool, OwnedFd)> = Vec::new();
    for r in &spec.rules {
        let inside_carried = carried.iter().any(|(c, ..)| r.path.starts_with(c));
        if private(&r.path).is_none() || inside_carried || r.access == Access::Deny {
            continue;
        }
        let Ok(meta) = std::fs::metadata(&r.path) else {
            continue;
        };
        let fd = open_tree(&r.path)
            .with_context(|| format!("taking {} into the private mounts", r.path.display()))?;
        carried.push((r.path.clone(), meta.is_dir(), fd));
    }
    for p in &spec.private {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        )
        .with_context(|| format!("mounting a private {}", p.display()))?;
    }
    for (path, is_dir, fd) in &carried {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if *is_dir {
            std::fs::create_dir(path)?;
        } else {
            std::fs::File::create(path)?;
        }
        move_mount(fd, path)
            .with_context(|| format!("binding {} into the private mounts", path.display()))?;
    }

    // Inside a writable tree, what Landlock cannot keep apart (see the module doc).
    let mut absorbed = HashSet::new();
    let mut overmounted: Vec<&Path> = Vec::new();
    // The rules Landlock keeps, to find each path's enclosing one.
    let mut kept: Vec<&super::files::Rule> = Vec::new();
    for r in &spec.rules {
        let path = r.path.as_path();
        let hidden = private(path).is_some() && !carried.iter().any(|(c, ..)| path.starts_with(c));
        if overmounted.iter().any(|o| path.starts_with(o)) || (hidden && r.access == Access::Deny) {
            // Under an overmount, or denied in a private directory where it is not.
            absorbed.insert(r.path.clone());
            continue;
        }
        let enclosing = kept
            .iter()
            .filter(|k| k.path != r.path && path.starts_with(&k.path))
            .max_by_key(|k| k.path.components().count())
            .map(|k| k.access);
        let in_writable = enclosing == Some(Access::Write);
        let exists = path.symlink_metadata().ok();
        match r.access {
            Access::Read | Access::List if in_writable => {
                if exists.is_some() {
                    bind_read_only(path)?;
                }
                absorbed.insert(r.path.clone());
            }
            Access::Deny if in_writable => {
                let allowed_below = spec.rules.iter().any(|d| {
                    d.path != r.path && d.path.starts_with(path) && d.access != Access::Deny
                });
                match exists {
                    // Nothing to protect yet; what the command creates there is its own.
                    None => {
                        absorbed.insert(r.path.clone());
                    }
                    // Landlock splits the writable tree instead (its cost is reported).
                    Some(_) if allowed_below => kept.push(r),
                    Some(meta) => {
                        overmount_denied(path, meta.is_dir())?;
                        absorbed.insert(r.path.clone());
                        overmounted.push(path);
                    }
                }
            }
            _ => kept.push(r),
        }
    }
    Ok(Some(absorbed))
}

/// Binds `path` onto itself read-only: nothing in it can be created,
/// removed, renamed or written, whatever Landlock allows around it.
fn bind_read_only(path: &Path) -> anyhow::Result<()> {
    mount(
        Some(path.as_os_str()),
        path,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .with_context(|| format!("binding {} read-only", path.display()))?;
    remount(path, libc::MS_RDONLY)
}

/// Covers a denied path inside a writable tree. A file: `/dev/null` bound
/// over it on a read-only `nodev` mount, so every open is refused (EACCES),
/// for reading and for writing. A directory: an empty read-only tmpfs
/// (its files are not there: ENOENT; nothing can be created: EROFS).
fn overmount_denied(path: &Path, is_dir: bool) -> anyhow::Result<()> {
    if is_dir {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=000,size=4k"),
        )
    } else {
        mount(Some("/dev/null"), path, None, libc::MS_BIND, None)
            .and_then(|()| remount(path, libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC))
    }
    .with_context(|| format!("covering the denied {}", path.display()))
}

fn cstr(s: &std::ffi::OsStr) -> anyhow::Result<CString> {
    CString::new(s.as_bytes()).context("a path with a NUL byte")
}

fn mount(
    source: Option<impl AsRef<std::ffi::OsStr>>,
    target: impl AsRef<Path>,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> anyhow::Result<()> {
    let source = source.map(|s| cstr(s.as_ref())).transpose()?;
    let target = cstr(target.as_ref().as_os_str())?;
    let fstype = fstype.map(CString::new).transpose()?;
    let data = data.map(CString::new).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Remounts the bind mount at `path` with `add` (read-only, nodev, …),
/// keeping the flags it has (a user namespace refuses a remount that drops
/// locked ones).
fn remount(path: &Path, add: libc::c_ulong) -> anyhow::Result<()> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: statvfs fills the zeroed struct for a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("{}", path.display()));
    }
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | add;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    mount(None::<&str>, path, None, flags, None)
        .with_context(|| format!("remounting {}", path.display()))
}

/// A detached copy of the mounts at `path` (`open_tree(2)`, Linux 5.2).
fn open_tree(path: &Path) -> anyhow::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32;
    // SAFETY: a NUL-terminated path; the result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the detached mount `fd` at `path` (`move_mount(2)`).
fn move_mount(fd: &OwnedFd, path: &Path) -> anyhow::Result<()> {
    let c = cstr(path.as_os_str())?;
    let empty = c"";
    // SAFETY: valid descriptors and NUL-terminated paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Capabilities

/// Capabilities that would let a root command around the file rules:
/// loading modules and raw I/O (kernel memory, disks), CAP_SYS_ADMIN
/// (mounts and much else), BPF and perf (reading kernel memory), ptrace,
/// mknod (a disk's device node in the writable directory), reading files
/// by handle (`open_by_handle_at`), the MAC policies, the kernel log.
const DROPPED_CAPS: &[libc::c_ulong] = &[
    2,  // CAP_DAC_READ_SEARCH
    16, // CAP_SYS_MODULE
    17, // CAP_SYS_RAWIO
    19, // CAP_SYS_PTRACE
    21, // CAP_SYS_ADMIN
    22, // CAP_SYS_BOOT
    27, // CAP_MKNOD
    32, // CAP_MAC_OVERRIDE
    33, // CAP_MAC_ADMIN
    34, // CAP_SYSLOG
    38, // CAP_PERFMON
    39, // CAP_BPF
];

/// Drops [`DROPPED_CAPS`] from the bounding set and the inheritable set
/// (root's exec gets the union of the two: a container runtime that leaves
/// inheritable capabilities set would hand them back otherwise) and clears the
/// ambient set. Without CAP_SETPCAP (not root) the command has none of them
/// anyway; a capability older kernels lack is skipped.
fn drop_capabilities() {
    for &cap in DROPPED_CAPS {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    clear_inheritable();
    if !nix::unistd::geteuid().is_root() {
        // The jail without root: what the helper held for its mounts and PID
        // namespace (in the jail's user namespace) goes too, so neither it
        // nor the reaper, both traceable by the command, holds anything.
        clear_all();
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
}

/// Removes [`DROPPED_CAPS`] from this process's inheritable set (a process
/// may always lower it); left as is when the kernel refuses to say what it is.
fn clear_inheritable() {
    let Ok(mut sets) = super::caps::get() else {
        return;
    };
    for &cap in DROPPED_CAPS {
        let (word, bit) = super::caps::bit(cap as u32);
        sets[word].inheritable &= !bit;
    }
    let _ = super::caps::set(&sets);
}

/// Empties this process's effective, permitted and inheritable sets
/// (lowering is always allowed).
fn clear_all() {
    let _ = super::caps::set(&Default::default());
}

// ---------------------------------------------------------------------------
// 3. Landlock

/// One path of the rule tree.
#[derive(Default)]
struct Node {
    access: Option<Access>,
    children: BTreeMap<OsString, Node>,
}

/// The rights beneath a rule's path.
fn full(a: Access) -> BitFlags<AccessFs> {
    use AccessFs::*;
    match a {
        Access::Deny => BitFlags::EMPTY,
        Access::List => ReadDir.into(),
        Access::Read => AccessFs::from_read(TARGET),
        Access::Device => ReadDir | ReadFile | WriteFile | Truncate | IoctlDev,
        // Never device nodes: one for a disk, in the writable directory, would read it raw.
        Access::Write => AccessFs::from_all(TARGET) & !(MakeChar | MakeBlock),
    }
}

/// The rights of a split directory: about its own entries only.
fn split(a: Access) -> BitFlags<AccessFs> {
    use AccessFs::*;
    match a {
        Access::Deny => BitFlags::EMPTY,
        Access::List | Access::Read | Access::Device => ReadDir.into(),
        Access::Write => {
            ReadDir
                | RemoveDir
                | RemoveFile
                | MakeDir
                | MakeReg
                | MakeSock
                | MakeFifo
                | MakeSym
                | Refer
        }
    }
}

/// Applies the spec's rules to this process; `true` when Landlock enforces them.
fn landlock(
    spec: &Spec,
    absorbed: Option<&HashSet<PathBuf>>,
    not_enforced: &mut Vec<String>,
) -> anyhow::Result<bool> {
    let mut root = Node::default();
    let mut kept: Vec<(&Path, Access)> = Vec::new();
    for r in &spec.rules {
        if absorbed.is_some_and(|a| a.contains(&r.path)) {
            continue;
        }
        // A rule saying what its enclosing one says would only split that one.
        let enclosing = kept
            .iter()
            .filter(|(k, _)| r.path.starts_with(k))
            .max_by_key(|(k, _)| k.components().count())
            .map(|(_, a)| *a);
        if enclosing == Some(r.access) {
            continue;
        }
        kept.push((&r.path, r.access));
        let mut node = &mut root;
        for c in r.path.components().skip(1) {
            node = node
                .children
                .entry(c.as_os_str().to_os_string())
                .or_default();
        }
        node.access = Some(r.access);
    }
    let ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET))?
        .scope(Scope::from_all(TARGET))?
        .create()?
        // The command is executed after this: its denials are what to report.
        .log_new_exec(true)?;
    let mut missing = Vec::new();
    let mut split_writable = Vec::new();
    let ruleset = compile(
        Path::new("/"),
        &root,
        None,
        ruleset,
        &mut missing,
        &mut split_writable,
    )?;
    if !split_writable.is_empty() {
        not_enforced.push(format!(
            "writing new files directly in {} (to keep a protected path inside unreadable \
             without a mount namespace, Landlock grants those directories only their entries)",
            list(&split_writable)
        ));
    }
    for path in missing {
        if let Some(r) = spec.decides(&path).filter(|r| r.path == path)
            && r.access != Access::Deny
            && r.from != "default"
            && r.from != "cell"
        {
            eprintln!(
                "cell jail: {} {}: not there, so nothing is allowed there",
                r.from,
                path.display()
            );
        }
    }
    let status = ruleset
        .restrict_self()
        .context("applying the Landlock rules")?;
    let enforced = matches!(status.landlock, LandlockStatus::Available { .. });
    match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => {
            let abi = effective_abi as i32;
            if status.ruleset == RulesetStatus::NotEnforced {
                bail!("Landlock is available (ABI {abi}) but enforced nothing");
            }
            for (since, linux, what) in [
                (3, "6.2", "truncating files the command may only read"),
                (
                    6,
                    "6.12",
                    "signals to processes outside the jail (ptrace is refused)",
                ),
                (
                    9,
                    "7.1",
                    "connecting to the host's UNIX sockets (D-Bus, docker, ssh-agent, …)",
                ),
            ] {
                if abi < since {
                    not_enforced.push(format!(
                        "{what} (Landlock ABI {since}, Linux {linux}; this kernel has {abi})"
                    ));
                }
            }
        }
        LandlockStatus::NotEnabled => not_enforced.push(
            "any file rule: Landlock is built in but not enabled (add `landlock` to the \
             kernel's `lsm=` boot parameter); the command reads and writes whatever its user may"
                .into(),
        ),
        LandlockStatus::NotImplemented => not_enforced.push(
            "any file rule: this kernel has no Landlock (Linux 5.13 or later, \
             CONFIG_SECURITY_LANDLOCK); the command reads and writes whatever its user may"
                .into(),
        ),
    }
    Ok(enforced)
}

/// Adds the rules for `path` and beneath (see the module's security rule).
fn compile(
    path: &Path,
    node: &Node,
    inherited: Option<Access>,
    mut ruleset: RulesetCreated,
    missing: &mut Vec<PathBuf>,
    split_writable: &mut Vec<PathBuf>,
) -> anyhow::Result<RulesetCreated> {
    let access = node.access.or(inherited);
    let all = access.map_or(BitFlags::EMPTY, full);
    if node.children.is_empty() {
        let there;
        (ruleset, there) = add(ruleset, path, all)?;
        if !there {
            missing.push(path.to_path_buf());
        }
        return Ok(ruleset);
    }
    let own = access.map_or(BitFlags::EMPTY, split);
    if access == Some(Access::Write) {
        split_writable.push(path.to_path_buf());
    }
    let there;
    (ruleset, there) = add(ruleset, path, own)?;
    if !there && node.access.is_some() {
        missing.push(path.to_path_buf());
    }
    if all != own
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for e in entries.flatten() {
            if !node.children.contains_key(&e.file_name()) {
                (ruleset, _) = add(ruleset, &e.path(), all)?;
            }
        }
    }
    for (name, child) in &node.children {
        ruleset = compile(
            &path.join(name),
            child,
            access,
            ruleset,
            missing,
            split_writable,
        )?;
    }
    Ok(ruleset)
}

/// Adds one rule (none for a symlink or no rights); `false` when `path` does not exist.
fn add(
    ruleset: RulesetCreated,
    path: &Path,
    access: BitFlags<AccessFs>,
) -> anyhow::Result<(RulesetCreated, bool)> {
    if access.is_empty() {
        return Ok((ruleset, path.symlink_metadata().is_ok()));
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((ruleset, false)),
        // Not even openable by the helper (another user's FUSE mount): no rule, denied.
        Err(_) => return Ok((ruleset, true)),
    };
    let meta = file.metadata()?;
    let access = if meta.is_dir() {
        access
    } else {
        access & AccessFs::from_file(TARGET)
    };
    if meta.file_type().is_symlink() || access.is_empty() {
        return Ok((ruleset, true));
    }
    let ruleset = ruleset
        .add_rule(PathBeneath::new(file, access))
        .with_context(|| format!("a Landlock rule for {}", path.display()))?;
    Ok((ruleset, true))
}
