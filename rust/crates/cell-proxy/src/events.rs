//! The event log: one JSON object per line for every decision.
//!
//! Events carry names, addresses, ports, decisions and rule references —
//! never bodies, header values or secrets. Writing happens on its own thread
//! behind a bounded queue: a flood of queries can fill the queue, in which
//! case events are counted and dropped (and the count is logged as an event
//! of its own) rather than slowing DNS down or growing memory.
//!
//! A file log is bounded on disk too: past `max_bytes` it is renamed to
//! `FILE.1` (and `FILE.1` to `FILE.2` …, keeping `keep` of them) and a new
//! file started, between two lines, so no line is ever split. cell-proxy owns
//! this rotation because a hardened logrotate (nixpkgs keeps it to
//! CAP_CHOWN/CAP_SETGID without @privileged) cannot `su` to the log's owner.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use anyhow::Context;
use serde_json::{Map, Value};

/// Where events go.
#[derive(Debug, Clone)]
pub enum Sink {
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "-" {
            Sink::Stdout
        } else {
            Sink::File(s.into())
        })
    }
}

#[derive(Clone)]
pub struct EventLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// What the writer thread receives: an event (serialised there, off the
/// request path) and when it happened, or a barrier it answers once every
/// event sent before it is written.
enum Msg {
    Event(Map<String, Value>, SystemTime),
    Flush(SyncSender<()>),
}

const QUEUE: usize = 8192;

/// How large a file log may grow, and how many rotated files to keep.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Rotate before a line would take the file past this; 0: never rotate.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` newest … `FILE.keep` oldest); 0: none,
    /// the file just starts again.
    pub keep: u32,
}

/// A log file that rotates itself by size (see the module docs).
struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    bounds: Bounds,
}

impl RotatingFile {
    fn open(path: &std::path::Path, bounds: Bounds) -> std::io::Result<Self> {
        let file = Self::open_file(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            bounds,
        })
    }

    fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.bounds.keep;
        if keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..keep).rev() {
                match std::fs::rename(self.numbered(n), self.numbered(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
        }
        self.file = Self::open_file(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Writes whole lines (each ending in a newline) with one write,
    /// rotating between two lines when the next would not fit.
    fn write_lines(&mut self, mut lines: &[u8]) -> std::io::Result<()> {
        while !lines.is_empty() {
            let room = match self.bounds.max_bytes {
                0 => u64::MAX,
                max => max.saturating_sub(self.size),
            };
            // The longest run of whole lines that fits; at least one line
            // into an empty file (a line longer than the bound is kept whole).
            let mut end = 0;
            for (i, _) in lines.iter().enumerate().filter(|(_, b)| **b == b'\n') {
                if (i + 1) as u64 > room && (end > 0 || self.size > 0) {
                    break;
                }
                end = i + 1;
                if end as u64 >= room {
                    break;
                }
            }
            if end == 0 {
                if lines.last() != Some(&b'\n') {
                    return Err(std::io::Error::other("a partial line"));
                }
                self.rotate()?;
                continue;
            }
            self.file.write_all(&lines[..end])?;
            self.size += end as u64;
            lines = &lines[end..];
        }
        Ok(())
    }

    #[cfg(test)]
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        self.write_lines(format!("{line}\n").as_bytes())
    }
}

enum Out {
    Stdout(std::io::Stdout),
    File(RotatingFile),
}

impl Out {
    /// Writes whole lines, each ending in a newline.
    fn write_lines(&mut self, lines: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stdout(s) => s.write_all(lines).and_then(|_| s.flush()),
            Out::File(f) => f.write_lines(lines),
        }
    }
}

/// How long a writer thread (the event log's, the spy's) rests after a
/// batch. What a busy proxy emits meanwhile waits in the queue and is
/// written in one go: a wake-up and a write per batch, not per request
/// (profiled: the hand-off per event was an eighth of the proxy's CPU per
/// kept-alive request). Events reach the file at most this much later.
pub(crate) const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs a writer thread's loop: `handle(Some(msg))` for every message in
/// arrival order, `handle(None)` once the queue is empty (write what is
/// buffered), then a rest of [`BATCH_WINDOW`]; returns when every sender
/// is gone, after a last `handle(None)`.
pub(crate) fn batches<T>(rx: &std::sync::mpsc::Receiver<T>, mut handle: impl FnMut(Option<T>)) {
    while let Ok(first) = rx.recv() {
        handle(Some(first));
        while let Ok(next) = rx.try_recv() {
            handle(Some(next));
        }
        handle(None);
        std::thread::sleep(BATCH_WINDOW);
    }
}

impl EventLog {
    pub fn open(sink: &Sink, bounds: Bounds) -> anyhow::Result<Self> {
        let mut out = match sink {
            Sink::Stdout => Out::Stdout(std::io::stdout()),
            Sink::File(p) => Out::File(
                RotatingFile::open(p, bounds)
                    .with_context(|| format!("opening event log {}", p.display()))?,
            ),
        };
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 * 1024);
                let write = |out: &mut Out, buf: &mut Vec<u8>| {
                    if buf.is_empty() {
                        return;
                    }
                    if let Err(e) = out.write_lines(buf) {
                        tracing::error!("event log write failed ({e}); events are being lost");
                    }
                    buf.clear();
                    buf.shrink_to(64 * 1024);
                };
                batches(&rx, |msg| match msg {
                    Some(Msg::Event(fields, at)) => {
                        let lost = counter.swap(0, Ordering::Relaxed);
                        if lost > 0 {
                            line_into(
                                &mut buf,
                                event("events-dropped", [("count", lost.into())]),
                                SystemTime::now(),
                            );
                        }
                        line_into(&mut buf, fields, at);
                    }
                    Some(Msg::Flush(done)) => {
                        write(&mut out, &mut buf);
                        let _ = done.try_send(());
                    }
                    None => write(&mut out, &mut buf),
                });
            })
            .context("starting the event log thread")?;
        Ok(EventLog { tx, dropped })
    }

    /// Waits (at most `timeout`) until every event emitted before is written.
    pub fn flush(&self, timeout: std::time::Duration) {
        let (done, wait) = sync_channel(1);
        let deadline = std::time::Instant::now() + timeout;
        if send_until(&self.tx, Msg::Flush(done), deadline) {
            let _ =
                wait.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
        }
    }

    /// Records an event; never blocks.
    pub fn emit(&self, fields: Map<String, Value>) {
        match self.tx.try_send(Msg::Event(fields, SystemTime::now())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends `msg` on a bounded queue that may be full, retrying until there is
/// room or `deadline` passes; `false` when it was not sent.
pub(crate) fn send_until<T>(tx: &SyncSender<T>, mut msg: T, deadline: std::time::Instant) -> bool {
    loop {
        match tx.try_send(msg) {
            Ok(()) => return true,
            Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return false,
        }
    }
}

/// Builds an event object: `{"event": kind, ...fields}`.
pub fn event<const N: usize>(kind: &str, fields: [(&str, Value); N]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("event".into(), kind.into());
    for (k, v) in fields {
        if !v.is_null() {
            m.insert(k.into(), v);
        }
    }
    m
}

/// Appends the event's line (with its `time` and a newline) to `buf`.
fn line_into(buf: &mut Vec<u8>, mut fields: Map<String, Value>, at: SystemTime) {
    fields.insert(
        "time".into(),
        humantime::format_rfc3339_millis(at).to_string().into(),
    );
    let start = buf.len();
    match serde_json::to_writer(&mut *buf, &Value::Object(fields)) {
        Ok(()) => buf.push(b'\n'),
        // Never for a map of strings to values; no partial line either way.
        Err(_) => buf.truncate(start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past max_bytes the log rotates between lines: every file stays within
    /// the bound, no line is split or lost across the files kept, only `keep`
    /// rotated files remain, and the oldest lines are the ones dropped.
    #[test]
    fn the_file_log_rotates_by_size_and_keeps_whole_lines() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        let bounds = Bounds {
            max_bytes: 1000,
            keep: 2,
        };
        let mut f = RotatingFile::open(&path, bounds).unwrap();
        let lines: Vec<String> = (0..100)
            .map(|i| format!("{{\"n\":{i:03},\"pad\":\"{}\"}}", "x".repeat(40)))
            .collect();
        for l in &lines {
            f.write_line(l).unwrap();
        }
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
        let names = ["events.jsonl.2", "events.jsonl.1", "events.jsonl"];
        let mut kept = Vec::new();
        for n in names {
            let p = d.path().join(n);
            let text = read(&p);
            assert!(
                text.len() as u64 <= bounds.max_bytes,
                "{n}: {} bytes",
                text.len()
            );
            assert!(text.ends_with('\n'), "{n} ends mid-line");
            kept.extend(text.lines().map(str::to_string));
        }
        assert!(
            !d.path().join("events.jsonl.3").exists(),
            "more than `keep` files"
        );
        // What is kept is the newest lines, whole and in order.
        assert_eq!(kept, lines[lines.len() - kept.len()..].to_vec());
        assert!(kept.len() >= 30, "{} lines kept", kept.len());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The same lines in one batched write rotate at the same lines.
        let batched = tempfile::tempdir().unwrap();
        let mut b = RotatingFile::open(&batched.path().join("events.jsonl"), bounds).unwrap();
        b.write_lines(
            lines
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .as_bytes(),
        )
        .unwrap();
        for n in names {
            assert_eq!(
                read(&batched.path().join(n)),
                read(&d.path().join(n)),
                "{n}"
            );
        }
        assert!(b.write_lines(b"no newline").is_err(), "a partial line");
        // An existing file counts towards the bound after a restart.
        drop(f);
        let size = std::fs::metadata(&path).unwrap().len();
        let mut f = RotatingFile::open(&path, bounds).unwrap();
        let big = "y".repeat((bounds.max_bytes - size) as usize);
        f.write_line(&big).unwrap();
        assert_eq!(
            read(&path),
            format!("{big}\n"),
            "rotated before the line that did not fit"
        );
    }

    /// keep = 0: the file starts again, nothing rotated is left; max_bytes = 0
    /// never rotates.
    #[test]
    fn keep_zero_truncates_and_max_zero_never_rotates() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("e");
        let mut f = RotatingFile::open(
            &path,
            Bounds {
                max_bytes: 100,
                keep: 0,
            },
        )
        .unwrap();
        for _ in 0..20 {
            f.write_line(&"z".repeat(30)).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert!(!d.path().join("e.1").exists());
        let path = d.path().join("u");
        let mut f = RotatingFile::open(
            &path,
            Bounds {
                max_bytes: 0,
                keep: 3,
            },
        )
        .unwrap();
        for _ in 0..20 {
            f.write_line(&"z".repeat(30)).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 20 * 31);
        assert!(!d.path().join("u.1").exists());
    }
}
