//! `fs` events: the command's denied file accesses, as the kernel reports them.
//!
//! Landlock logs a denial to the kernel's audit subsystem (Landlock ABI 7,
//! Linux 6.15; the exec helper keeps logging on after exec). The record
//! names the Landlock domain, the missing rights and the path; a second
//! record, the first time a domain shows, names the process that created it —
//! the command, since the helper becomes it. cell reads them from the audit
//! socket's read-only multicast group and writes one `fs` event line per
//! denial of this command into the run's event log, and a line on stderr.
//!
//! This works only where the kernel lets it: Landlock ABI 7, the kernel's
//! audit enabled (`auditctl -e 1`, or auditd running), CAP_AUDIT_READ to
//! read it (root), and cell in the initial network namespace (the only one
//! the log is sent to). Otherwise [`Observer::start`] says why, cell prints it,
//! and no denial is ever reported as if it had been seen.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread::JoinHandle;

use serde_json::json;

use super::files::Spec;

const AUDIT_GET: u16 = 1000;
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// `AUDIT_NLGRP_READLOG`, as a group bit.
const READLOG_GROUP: u32 = 1;
/// Most denials held while their domain is not known yet, and most reported.
const PENDING: usize = 256;
const MOST_EVENTS: usize = 1000;
/// Most denials also printed on stderr.
const MOST_PRINTED: usize = 20;

/// Reads Landlock's audit records for one command while it runs.
pub(super) struct Observer {
    stop: Arc<AtomicBool>,
    /// The command's pid (0 until it runs).
    pub pid: Arc<AtomicI32>,
    thread: Option<JoinHandle<()>>,
}

impl Observer {
    /// Starts reading, or says why denials cannot be observed here.
    pub(super) fn start(events: PathBuf, spec: Spec) -> Result<Observer, String> {
        let abi = landlock_abi();
        if abi < 7 {
            return Err(format!(
                "Landlock reports denials from ABI 7 (Linux 6.15); this kernel has {}",
                if abi <= 0 {
                    "no Landlock".to_string()
                } else {
                    format!("ABI {abi}")
                }
            ));
        }
        // The kernel multicasts its audit log in the initial network namespace
        // only: that of init, or of kthreadd where init's is not readable.
        let init =
            std::fs::read_link("/proc/1/ns/net").or_else(|_| std::fs::read_link("/proc/2/ns/net"));
        if let (Ok(ours), Ok(init)) = (std::fs::read_link("/proc/self/ns/net"), init)
            && ours != init
        {
            return Err(
                "the kernel sends its audit log to the initial network namespace only, \
                 and cell runs in another"
                    .into(),
            );
        }
        let control = Netlink::open().map_err(|e| format!("no audit socket ({e})"))?;
        match control.audit_enabled() {
            Ok(true) => {}
            Ok(false) => {
                return Err(
                    "the kernel's audit is off (`auditctl -e 1` or a running auditd turns it on)"
                        .into(),
                );
            }
            Err(e) => {
                return Err(format!(
                    "the audit status is not readable here ({e}; root can)"
                ));
            }
        }
        drop(control);
        let sock = Netlink::open().map_err(|e| format!("no audit socket ({e})"))?;
        sock.join_readlog().map_err(|e| {
            format!("reading the audit log needs CAP_AUDIT_READ ({e}; root has it)")
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicI32::new(0));
        let (s, p) = (stop.clone(), pid.clone());
        let thread = std::thread::Builder::new()
            .name("fs-events".into())
            .spawn(move || read_loop(sock, &s, &p, &events, &spec))
            .map_err(|e| format!("no thread for it ({e})"))?;
        Ok(Observer {
            stop,
            pid,
            thread: Some(thread),
        })
    }
}

impl Drop for Observer {
    /// Takes what the kernel still has queued, then stops.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The running kernel's Landlock ABI (0 or less: none).
pub(super) fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number.
    unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    }
}

struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    fn open() -> std::io::Result<Netlink> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) returns a new descriptor or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_AUDIT,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let sock = Netlink(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(sock)
    }

    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// AUDIT_GET: whether the kernel's audit is enabled.
    fn audit_enabled(&self) -> std::io::Result<bool> {
        let mut req = [0u8; 16];
        req[0..4].copy_from_slice(&16u32.to_ne_bytes());
        req[4..6].copy_from_slice(&AUDIT_GET.to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: a valid buffer and address.
        let sent = unsafe {
            libc::sendto(
                self.fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        for _ in 0..4 {
            let n = self.recv(&mut buf)?;
            for (kind, payload) in messages(&buf[..n]) {
                if kind == AUDIT_GET && payload.len() >= 8 {
                    let enabled =
                        u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    return Ok(enabled != 0);
                }
                if kind == libc::NLMSG_ERROR as u16 && payload.len() >= 4 {
                    let errno =
                        i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    if errno != 0 {
                        return Err(std::io::Error::from_raw_os_error(-errno));
                    }
                }
            }
        }
        Err(std::io::Error::other("no answer"))
    }

    fn join_readlog(&self) -> std::io::Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = READLOG_GROUP;
        // SAFETY: a valid address.
        let rc = unsafe {
            libc::bind(
                self.fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: a valid buffer of buf.len() bytes.
        let n = unsafe { libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// The netlink messages in one datagram: (type, payload).
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[16..len]));
        let next = (len + 3) & !3;
        buf = &buf[next.min(buf.len())..];
    }
    out
}

/// One Landlock denial, as the access record says it.
#[derive(Debug, PartialEq, Eq)]
struct Denial {
    domain: String,
    /// `fs.read_file`, `fs.make_reg`, …
    blockers: Vec<String>,
    path: Option<String>,
}

/// The `key=value` fields of an audit record's text (after `audit(…): `);
/// values quoted, hex-encoded (for untrusted strings with odd bytes) or bare.
fn fields(text: &str) -> HashMap<&str, String> {
    let body = text.split_once("): ").map_or(text, |(_, b)| b);
    let mut out = HashMap::new();
    let mut rest = body.trim_end_matches('\0').trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            match q.split_once('"') {
                Some((v, t)) => (v.to_string(), t),
                None => (q.to_string(), ""),
            }
        } else {
            let (v, t) = after.split_once(' ').unwrap_or((after, ""));
            (v.to_string(), t)
        };
        out.insert(key, value);
        rest = tail.trim_start();
    }
    out
}

/// An untrusted string field: quoted text as is, otherwise hex.
fn untrusted(text: &str, key: &str) -> Option<String> {
    let body = text.split_once("): ").map_or(text, |(_, b)| b);
    let start = body
        .find(&format!(" {key}="))
        .map(|i| i + 1)
        .or_else(|| body.starts_with(&format!("{key}=")).then_some(0))?;
    let value = &body[start + key.len() + 1..];
    if value.starts_with('"') {
        return fields(body).get(key).cloned();
    }
    let hex = value.split(' ').next().unwrap_or("");
    let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn denial(text: &str) -> Option<Denial> {
    let f = fields(text);
    Some(Denial {
        domain: f.get("domain")?.clone(),
        blockers: f.get("blockers")?.split(',').map(str::to_string).collect(),
        path: untrusted(text, "path"),
    })
}

/// (domain, creator pid) of a domain record.
fn domain(text: &str) -> Option<(String, i32)> {
    let f = fields(text);
    Some((f.get("domain")?.clone(), f.get("pid")?.parse().ok()?))
}

/// What the command was refused, in words, and the flag that would allow it
/// (none for what no flag allows: device nodes, cell's own files).
fn operation(blockers: &[String]) -> Option<(&'static str, Option<&'static str>)> {
    let rights: Vec<&str> = blockers
        .iter()
        .filter_map(|b| b.strip_prefix("fs."))
        .collect();
    if rights.is_empty() {
        return None; // a scope (a signal, an abstract socket): not a file
    }
    let reads = rights
        .iter()
        .any(|r| matches!(*r, "read_file" | "read_dir" | "execute"));
    Some(if rights.contains(&"refer") {
        // Linking or moving a file where it would gain rights.
        (
            "link or rename",
            Some(if reads {
                "--allow-read"
            } else {
                "--allow-write"
            }),
        )
    } else if rights
        .iter()
        .all(|r| matches!(*r, "make_char" | "make_block"))
    {
        ("create a device node", None)
    } else if rights
        .iter()
        .any(|r| matches!(*r, "read_file" | "read_dir"))
    {
        ("read", Some("--allow-read"))
    } else if rights.contains(&"execute") {
        ("execute", Some("--allow-read"))
    } else {
        ("write", Some("--allow-write"))
    })
}

fn read_loop(sock: Netlink, stop: &AtomicBool, pid: &AtomicI32, events: &Path, spec: &Spec) {
    let mut creators: HashMap<String, i32> = HashMap::new();
    let mut pending: Vec<Denial> = Vec::new();
    let mut reported = 0usize;
    let mut buf = vec![0u8; 16384];
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        match sock.recv(&mut buf) {
            Ok(n) => {
                for (kind, payload) in messages(&buf[..n]) {
                    let text = String::from_utf8_lossy(payload);
                    match kind {
                        AUDIT_LANDLOCK_ACCESS => {
                            if let Some(d) = denial(&text)
                                && pending.len() < PENDING
                            {
                                pending.push(d);
                            }
                        }
                        AUDIT_LANDLOCK_DOMAIN => {
                            if let Some((id, creator)) = domain(&text)
                                && creators.len() < PENDING
                            {
                                creators.insert(id, creator);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stopping {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // ENOBUFS: the kernel dropped records for us.
            Err(_) => {
                if stopping {
                    break;
                }
            }
        }
        let ours = pid.load(Ordering::SeqCst);
        if ours == 0 {
            continue;
        }
        pending.retain(|d| match creators.get(&d.domain) {
            Some(&creator) if creator == ours => {
                report(d, events, spec, &mut reported);
                false
            }
            Some(_) => false,
            None => true,
        });
    }
    if reported > MOST_PRINTED {
        eprintln!(
            "cell jail: {} more denied accesses not printed (the `fs` events have them)",
            reported - MOST_PRINTED
        );
    }
}

/// One `fs` event line, and a line on stderr for the first few.
fn report(d: &Denial, events: &Path, spec: &Spec, reported: &mut usize) {
    let Some((op, flag)) = operation(&d.blockers) else {
        return;
    };
    if *reported >= MOST_EVENTS {
        return;
    }
    *reported += 1;
    let path = d.path.clone().unwrap_or_default();
    let cells_own = spec
        .decides(Path::new(&path))
        .is_some_and(|r| r.from == "cell");
    let allow = flag
        .filter(|_| !cells_own && !path.is_empty())
        .map(|f| format!("{f} {path}"));
    let line = json!({
        "event": "fs",
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "path": path,
        "operation": op,
        "access": d.blockers.iter().map(|b| b.trim_start_matches("fs.")).collect::<Vec<_>>(),
        "allow": allow,
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(events)
    {
        let _ = writeln!(f, "{line}");
    }
    if *reported <= MOST_PRINTED {
        let why = match &allow {
            Some(flag) => format!("allow with {flag}"),
            None if cells_own => "cell's own files".into(),
            None => "never allowed".into(),
        };
        // One write, so the line does not interleave with the command's.
        let _ = std::io::stderr()
            .write_all(format!("cell jail: denied {op} of {path} ({why})\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as the kernel writes them: quoted and hex-encoded paths, the
    /// domain record that names the creator, the operation each right means.
    #[test]
    fn landlock_records_parse() {
        let access = r#"audit(1733000000.123:42): domain=195ba459b blockers=fs.read_file path="/home/u/.ssh/id_ed25519" dev="vda" ino=1234"#;
        assert_eq!(
            denial(access),
            Some(Denial {
                domain: "195ba459b".into(),
                blockers: vec!["fs.read_file".into()],
                path: Some("/home/u/.ssh/id_ed25519".into()),
            })
        );
        // A path with a space is hex-encoded.
        let hex = "audit(1.2:3): domain=1a blockers=fs.make_reg,fs.write_file path=2F746D702F6120622E747874 dev=\"vda\" ino=9";
        let d = denial(hex).unwrap();
        assert_eq!(d.path.as_deref(), Some("/tmp/a b.txt"));
        assert_eq!(d.blockers, ["fs.make_reg", "fs.write_file"]);
        let dom = r#"audit(1733000000.123:42): domain=195ba459b status=allocated mode=enforcing pid=4242 uid=0 exe="/usr/bin/cat" comm="cat""#;
        assert_eq!(domain(dom), Some(("195ba459b".into(), 4242)));
        let op = |b: &[&str]| operation(&b.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(op(&["fs.read_dir"]), Some(("read", Some("--allow-read"))));
        assert_eq!(op(&["fs.execute"]), Some(("execute", Some("--allow-read"))));
        assert_eq!(op(&["fs.make_reg"]), Some(("write", Some("--allow-write"))));
        assert_eq!(
            op(&["fs.truncate", "fs.write_file"]),
            Some(("write", Some("--allow-write")))
        );
        assert_eq!(
            op(&["fs.make_char", "fs.make_block"]),
            Some(("create a device node", None))
        );
        assert_eq!(
            op(&["fs.execute", "fs.read_file", "fs.refer"]),
            Some(("link or rename", Some("--allow-read")))
        );
        assert_eq!(op(&["scope.signal"]), None);
        let mut two = Vec::new();
        for text in [access, dom] {
            let mut m = Vec::new();
            let len = 16 + text.len();
            m.extend_from_slice(&(len as u32).to_ne_bytes());
            m.extend_from_slice(&AUDIT_LANDLOCK_ACCESS.to_ne_bytes());
            m.extend_from_slice(&[0; 10]);
            m.extend_from_slice(text.as_bytes());
            while m.len() % 4 != 0 {
                m.push(0);
            }
            two.extend(m);
        }
        assert_eq!(messages(&two).len(), 2);
    }
}
