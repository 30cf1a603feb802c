//! The event log: one JSON object per line for every decision.
//!
//! Events carry names, addresses, ports, decisions and rule references —
//! never bodies, header values or secrets. Writing happens on its own thread
//! behind a bounded queue: a flood of queries can fill the queue, in which
//! case events are counted and dropped (and the count is logged as an event
//! of its own) rather than slowing DNS down or growing memory.

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
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

const QUEUE: usize = 8192;

impl EventLog {
    pub fn open(sink: &Sink) -> anyhow::Result<Self> {
        let mut out: Box<dyn Write + Send> = match sink {
            Sink::Stdout => Box::new(std::io::stdout()),
            Sink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening event log {}", p.display()))?,
            ),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || {
                while let Ok(line) = rx.recv() {
                    let lost = counter.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        let _ = writeln!(
                            out,
                            "{}",
                            line_for(event("events-dropped", [("count", lost.into())]))
                        );
                    }
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        tracing::error!("event log write failed; events are being lost");
                    }
                }
            })
            .context("starting the event log thread")?;
        Ok(EventLog { tx, dropped })
    }

    /// Records an event; never blocks.
    pub fn emit(&self, fields: Map<String, Value>) {
        match self.tx.try_send(line_for(fields)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
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

fn line_for(mut fields: Map<String, Value>) -> String {
    fields.insert(
        "time".into(),
        humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .into(),
    );
    Value::Object(fields).to_string()
}
