//! The recorder of `cell spy`: for hosts whose policy entry says `spy`, each
//! intercepted exchange — what the agent sent, what it received — becomes one
//! JSON line in the spy store.
//!
//! Rules:
//! - **Never in the way.** Bodies are teed as they stream: a frame is copied
//!   (up to the cap) and passed on in the same poll, so the agent gets the
//!   first event of a stream when it would without the recorder. When the
//!   response ends, the exchange goes to the recorder's own thread behind a
//!   bounded queue, which redacts, serialises and writes it: a full queue
//!   drops exchanges (counted), never waits.
//! - **Redacted before it is kept.** The request is recorded as it goes
//!   upstream and the response as the agent gets it (already scrubbed), and
//!   both are passed through the secrets store once more: every loaded
//!   value, raw, becomes its placeholder. Header values are kept only for a
//!   safe list (content type and encoding, API versions and betas, request
//!   ids, rate limits, the SDK's own description); every other header is
//!   recorded by name only.
//! - **Bounded.** Each body is kept up to `body_max` bytes and marked `cut`
//!   past it (its full length is still counted); the store rotates like the
//!   event log (`max_bytes`, `keep` files). It lives on the firewall only.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value, json};

use std::sync::mpsc::{SyncSender, sync_channel};

use crate::events::{Bounds, EventLog, Sink, event};
use crate::secrets::Store;

/// Header values worth keeping: what a reader of an exchange needs (the
/// format, the API version, the ids to quote to a provider), never
/// credentials or cookies.
const SAFE_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-length",
    "transfer-encoding",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "openai-model",
    "openai-processing-ms",
    "openai-version",
    "request-id",
    "x-request-id",
    "x-amzn-requestid",
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "x-amzn-bedrock-invocation-latency",
    "x-amz-target",
    "user-agent",
    "retry-after",
];

/// Header name prefixes whose values are kept (rate limits, SDK metadata).
const SAFE_PREFIXES: &[&str] = &[
    "anthropic-ratelimit-",
    "x-ratelimit-",
    "x-stainless-",
    "x-amzn-bedrock-",
];

fn safe(name: &str) -> bool {
    SAFE_HEADERS.contains(&name) || SAFE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// An exchange to redact, serialise and write, on the recorder's thread.
type Job = Box<dyn FnOnce() -> Map<String, Value> + Send>;

/// What the recorder's thread receives: an exchange to write, or a barrier
/// it answers once everything before it is in the store.
enum Work {
    Job(Job),
    Flush(SyncSender<()>),
}

/// Exchanges waiting for the recorder's thread; past this they are dropped.
const QUEUE: usize = 1024;

/// Where exchanges go and how much of each is kept.
pub struct Recorder {
    jobs: SyncSender<Work>,
    dropped: Arc<AtomicU64>,
    body_max: usize,
    next: AtomicU64,
}

impl Recorder {
    /// A store at `path`, rotated like the event log.
    pub fn open(path: &std::path::Path, bounds: Bounds, body_max: usize) -> anyhow::Result<Self> {
        let log = EventLog::open(&Sink::File(path.to_path_buf()), bounds)?;
        let (jobs, rx) = sync_channel::<Work>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("spy".into())
            .spawn(move || {
                crate::events::batches(&rx, |work| match work {
                    Some(Work::Job(job)) => {
                        let lost = counter.swap(0, Ordering::Relaxed);
                        if lost > 0 {
                            log.emit(event("events-dropped", [("count", lost.into())]));
                        }
                        log.emit(job());
                    }
                    Some(Work::Flush(done)) => {
                        log.flush(std::time::Duration::from_secs(1));
                        let _ = done.try_send(());
                    }
                    None => {}
                });
            })?;
        Ok(Recorder {
            jobs,
            dropped,
            body_max,
            next: AtomicU64::new(1),
        })
    }

    fn submit(&self, job: Job) {
        if self.jobs.try_send(Work::Job(job)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits (at most `timeout`) until every exchange submitted before is in the store.
    pub fn flush(&self, timeout: std::time::Duration) {
        let (done, wait) = sync_channel(1);
        let deadline = std::time::Instant::now() + timeout;
        if crate::events::send_until(&self.jobs, Work::Flush(done), deadline) {
            let _ =
                wait.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
        }
    }

    /// A capture for one body.
    pub fn capture(&self) -> Arc<Capture> {
        Arc::new(Capture {
            kept: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
            max: self.body_max,
            first: Mutex::new(None),
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// What was seen of one body: up to `max` bytes of it, its full length, and
/// when its first byte passed.
pub struct Capture {
    kept: Mutex<Vec<u8>>,
    bytes: AtomicU64,
    max: usize,
    first: Mutex<Option<Instant>>,
}

impl Capture {
    fn push(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut first = self.first.lock().expect("capture lock");
        first.get_or_insert_with(Instant::now);
        drop(first);
        let mut kept = self.kept.lock().expect("capture lock");
        let room = self.max.saturating_sub(kept.len());
        kept.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn first_byte(&self) -> Option<Instant> {
        *self.first.lock().expect("capture lock")
    }

    /// The body as recorded: text when it is UTF-8 (else base64), its full
    /// length as it passed the proxy (`bytes`: upstream for a request, to the
    /// agent for a response), and whether it was cut. Secret values become
    /// placeholders.
    fn to_json(&self, redact: &mut impl FnMut(&[u8]) -> Vec<u8>) -> Value {
        let kept = self.kept.lock().expect("capture lock");
        let bytes = self.bytes.load(Ordering::Relaxed);
        let redacted = redact(&kept);
        let cut = bytes > kept.len() as u64;
        let mut m = Map::new();
        m.insert("bytes".into(), bytes.into());
        if cut {
            m.insert("cut".into(), true.into());
        }
        // A cut can split a UTF-8 sequence: drop at most 3 trailing bytes.
        let text = match std::str::from_utf8(&redacted) {
            Ok(t) => Some(t),
            Err(e) if cut && redacted.len() - e.valid_up_to() < 4 && e.error_len().is_none() => {
                std::str::from_utf8(&redacted[..e.valid_up_to()]).ok()
            }
            Err(_) => None,
        };
        match text {
            Some(t) => m.insert("text".into(), t.into()),
            None => {
                use base64::Engine;
                m.insert(
                    "base64".into(),
                    base64::engine::general_purpose::STANDARD
                        .encode(&redacted)
                        .into(),
                )
            }
        };
        Value::Object(m)
    }
}

/// Header names, with values for the safe ones only (redacted all the same).
fn headers_json(headers: &HeaderMap, redact: &mut impl FnMut(&[u8]) -> Vec<u8>) -> Value {
    let mut m = Map::new();
    for (name, value) in headers {
        let n = name.as_str();
        let v = if safe(n) {
            let red = redact(value.as_bytes());
            Value::from(String::from_utf8_lossy(&red).into_owned())
        } else {
            Value::Null
        };
        match m.get_mut(n) {
            Some(Value::Array(a)) => a.push(v),
            Some(old) => {
                let first = old.take();
                *old = Value::Array(vec![first, v]);
            }
            None => {
                m.insert(n.into(), v);
            }
        }
    }
    Value::Object(m)
}

/// Everything known of an exchange when its request is sent.
pub struct Pending {
    pub id: u64,
    pub started: Instant,
    pub at: SystemTime,
    pub host: String,
    pub method: String,
    pub path: String,
    pub rule: String,
    pub request_headers: HeaderMap,
    pub request: Arc<Capture>,
}

impl Pending {
    /// Hands the exchange to the recorder once its response has ended (or
    /// the agent left). The times are taken now; redacting and serialising
    /// happen on the recorder's thread, with one redactor for the exchange.
    pub fn finish(
        self,
        recorder: &Recorder,
        secrets: Arc<Store>,
        status: u16,
        response_headers: HeaderMap,
        response: Arc<Capture>,
        complete: bool,
    ) {
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e3 * 1e3).round() / 1e3;
        let duration = ms(self.started.elapsed());
        let first_byte = response
            .first_byte()
            .map(|t| ms(t.duration_since(self.started)));
        recorder.submit(Box::new(move || {
            let mut redact = secrets.redactor();
            let path = String::from_utf8_lossy(&redact(self.path.as_bytes())).into_owned();
            let fields = json!({
                "event": "exchange",
                "id": self.id,
                "at": humantime::format_rfc3339_millis(self.at).to_string(),
                "host": self.host,
                "method": self.method,
                "path": path,
                "rule": self.rule,
                "status": status,
                "durationMs": duration,
                "firstByteMs": first_byte,
                "complete": complete,
                "request": {
                    "headers": headers_json(&self.request_headers, &mut redact),
                    "body": self.request.to_json(&mut redact),
                },
                "response": {
                    "headers": headers_json(&response_headers, &mut redact),
                    "body": response.to_json(&mut redact),
                },
            });
            match fields {
                Value::Object(m) => m,
                _ => Map::new(),
            }
        }));
    }
}

/// A body that copies what passes into a [`Capture`] and calls `done` once
/// at its end (`true`) or when it is dropped early (`false`).
pub struct Tee<B: hyper::body::Body> {
    inner: B,
    capture: Arc<Capture>,
    done: Option<Box<dyn FnOnce(bool) + Send + Sync>>,
}

impl<B: hyper::body::Body> Tee<B> {
    pub fn new(
        inner: B,
        capture: Arc<Capture>,
        done: Option<Box<dyn FnOnce(bool) + Send + Sync>>,
    ) -> Self {
        Tee {
            inner,
            capture,
            done,
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            done(complete);
        }
    }
}

impl<B: hyper::body::Body> Drop for Tee<B> {
    fn drop(&mut self) {
        // hyper stops polling once a body says it has ended: dropped then,
        // it was read whole.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

impl<B: hyper::body::Body<Data = Bytes> + Unpin> hyper::body::Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.capture.push(d);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Ready(None) => this.finish(true),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(max: usize) -> Capture {
        Capture {
            kept: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
            max,
            first: Mutex::new(None),
        }
    }

    #[test]
    fn a_capture_keeps_up_to_its_cap_and_counts_everything() {
        let c = capture(5);
        c.push(b"abc");
        c.push(b"defgh");
        let j = c.to_json(&mut Store::default().redactor());
        assert_eq!(j, json!({"bytes": 8, "cut": true, "text": "abcde"}));
        let c = capture(100);
        c.push(&[0xff, 0x00, 0x01]);
        assert_eq!(
            c.to_json(&mut Store::default().redactor()),
            json!({"bytes": 3, "base64": "/wAB"})
        );
    }

    #[test]
    fn a_cut_inside_a_utf8_character_keeps_the_text() {
        let c = capture(4);
        c.push("abcé".as_bytes()); // é is two bytes: the cap splits it
        assert_eq!(
            c.to_json(&mut Store::default().redactor()),
            json!({"bytes": 5, "cut": true, "text": "abc"})
        );
    }

    #[test]
    fn only_safe_header_values_are_kept() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-real".parse().unwrap());
        h.insert("x-api-key", "sk-real".parse().unwrap());
        h.insert("cookie", "a=b".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "49".parse().unwrap(),
        );
        let j = headers_json(&h, &mut Store::default().redactor());
        assert_eq!(
            j,
            json!({
                "authorization": null, "x-api-key": null, "cookie": null,
                "content-type": "application/json",
                "anthropic-ratelimit-requests-remaining": "49",
            })
        );
    }
}
