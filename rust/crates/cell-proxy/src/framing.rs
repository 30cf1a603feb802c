//! Spots ambiguous HTTP/1.1 framing before hyper normalizes it.
//!
//! hyper's parser, given `Content-Length` together with `Transfer-Encoding`,
//! drops the length and closes the connection after the response (what RFC
//! 9112 §6.3 asks of an intermediary), so the request never looks ambiguous
//! to the proxy. Security rule: such a request is refused (400), not relayed.
//! [`FramingWatch`] sees the bytes first: it follows message boundaries
//! (heads and chunk sizes parsed by `httparse`) and records the ordinal of
//! the first request whose head carries both headers. The service counts its
//! requests and refuses that one. After it, the connection is closed anyway.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest head or chunk-size line followed; past it the watch gives up
/// (and hyper's own limits refuse the request).
const MAX_LINE: usize = 64 * 1024;
const NONE: u64 = u64::MAX;

/// Shared between the watch (writer) and the service (reader); also counts
/// the connection's plaintext bytes for its event line.
#[derive(Debug)]
pub struct Flags {
    ambiguous: AtomicU64,
    served: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl Flags {
    pub fn new() -> Arc<Flags> {
        Arc::new(Flags {
            ambiguous: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        })
    }

    /// Called once per request by the service: is this one ambiguous?
    pub fn next_request_is_ambiguous(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::SeqCst);
        self.ambiguous.load(Ordering::SeqCst) == n
    }
}

#[derive(Debug)]
enum Phase {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailers,
    /// Upgraded, CONNECT, flagged, or beyond what we follow: stop watching.
    Stop,
}

/// The boundary tracker, separate from I/O so it can be tested directly.
#[derive(Debug)]
pub struct Tracker {
    phase: Phase,
    line: Vec<u8>,
    ordinal: u64,
    flags: Arc<Flags>,
}

impl Tracker {
    pub fn new(flags: Arc<Flags>) -> Tracker {
        Tracker {
            phase: Phase::Head,
            line: Vec::new(),
            ordinal: 0,
            flags,
        }
    }

    fn head_done(&mut self) {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(&self.line) else {
            self.phase = Phase::Stop;
            return;
        };
        let has = |name: &str| {
            req.headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case(name))
        };
        let (cl, te) = (has("content-length"), has("transfer-encoding"));
        if cl && te {
            self.flags.ambiguous.store(self.ordinal, Ordering::SeqCst);
            self.phase = Phase::Stop;
            return;
        }
        if req.method == Some("CONNECT") || has("upgrade") {
            self.phase = Phase::Stop;
            return;
        }
        let chunked = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .next_back()
            .is_some_and(|v| {
                v.rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            });
        let length = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        self.ordinal += 1;
        self.phase = if chunked {
            Phase::ChunkSize
        } else {
            Phase::Body(length)
        };
    }

    /// Follows `data`, the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Stop => return,
                Phase::Head => {
                    // Empty lines before a request line are allowed (RFC 9112 §2.2).
                    if self.line.is_empty() && (data[0] == b'\r' || data[0] == b'\n') {
                        data = &data[1..];
                        continue;
                    }
                    let (take, done) = until(data, &self.line, b"\r\n\r\n");
                    self.line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if done {
                        self.head_done();
                        self.line.clear();
                    } else if self.line.len() > MAX_LINE {
                        self.phase = Phase::Stop;
                    }
                }
                Phase::Body(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.phase = Phase::Head;
                    }
                }
                Phase::ChunkSize => {
                    let (take, done) = until(data, &self.line, b"\r\n");
                    self.line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if done {
                        self.phase = match httparse::parse_chunk_size(&self.line) {
                            Ok(httparse::Status::Complete((_, 0))) => Phase::Trailers,
                            Ok(httparse::Status::Complete((_, size))) => Phase::ChunkData(size),
                            _ => Phase::Stop,
                        };
                        self.line.clear();
                    } else if self.line.len() > MAX_LINE {
                        self.phase = Phase::Stop;
                    }
                }
                Phase::ChunkData(left) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.phase = Phase::ChunkDataEnd(2);
                    }
                }
                Phase::ChunkDataEnd(left) => {
                    *left -= 1;
                    data = &data[1..];
                    if *left == 0 {
                        self.phase = Phase::ChunkSize;
                    }
                }
                Phase::Trailers => {
                    // Either an empty line at once, or trailer fields ending in one.
                    let (take, done) = until(data, &self.line, b"\r\n");
                    self.line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if done {
                        if self.line == b"\r\n" {
                            self.phase = Phase::Head;
                        }
                        self.line.clear();
                    } else if self.line.len() > MAX_LINE {
                        self.phase = Phase::Stop;
                    }
                }
            }
        }
    }
}

/// How many bytes of `data` to take so that `seen + taken` ends with `end`
/// at the first possible place; and whether it does.
fn until(data: &[u8], seen: &[u8], end: &[u8]) -> (usize, bool) {
    for i in 0..data.len() {
        let upto = i + 1;
        let tail_len = end.len();
        let total = seen.len() + upto;
        if total >= tail_len {
            let matches = (0..tail_len).all(|k| {
                let pos = total - tail_len + k;
                let byte = if pos < seen.len() {
                    seen[pos]
                } else {
                    data[pos - seen.len()]
                };
                byte == end[k]
            });
            if matches {
                return (upto, true);
            }
        }
    }
    (data.len(), false)
}

/// A stream that shows every byte read through it to a [`Tracker`].
pub struct FramingWatch<S> {
    inner: S,
    tracker: Tracker,
}

impl<S> FramingWatch<S> {
    pub fn new(inner: S, flags: Arc<Flags>) -> Self {
        FramingWatch {
            inner,
            tracker: Tracker::new(flags),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let me = &mut *self;
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = &buf.filled()[before..];
            me.tracker
                .flags
                .bytes_up
                .fetch_add(new.len() as u64, Ordering::Relaxed);
            me.tracker.feed(new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FramingWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.tracker
                .flags
                .bytes_down
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flagged(stream: &[u8], splits: &[usize]) -> Option<u64> {
        let flags = Flags::new();
        let mut t = Tracker::new(flags.clone());
        let mut at = 0;
        for &s in splits.iter().chain(std::iter::once(&stream.len())) {
            let s = s.clamp(at, stream.len());
            t.feed(&stream[at..s]);
            at = s;
        }
        match flags.ambiguous.load(Ordering::SeqCst) {
            NONE => None,
            n => Some(n),
        }
    }

    const CLEAN: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\n";

    #[test]
    fn clean_pipelines_are_not_flagged() {
        assert_eq!(flagged(CLEAN, &[]), None);
    }

    #[test]
    fn cl_with_te_is_flagged_at_its_ordinal() {
        let mut s = CLEAN.to_vec();
        s.extend_from_slice(b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert_eq!(flagged(&s, &[]), Some(3));
        let first = b"POST /d HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
        assert_eq!(flagged(first, &[]), Some(0));
    }

    #[test]
    fn bodies_that_look_like_heads_are_skipped() {
        // A body containing a fake ambiguous request is data, not a request.
        let fake = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s = format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            fake.len()
        )
        .into_bytes();
        s.extend_from_slice(fake);
        s.extend_from_slice(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(flagged(&s, &[]), None);
    }

    proptest! {
        /// However the bytes are split across reads, the result is the same.
        #[test]
        fn split_invariant(splits in prop::collection::vec(0usize..400, 0..20)) {
            let mut s = CLEAN.to_vec();
            s.extend_from_slice(b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
            let mut sorted = splits.clone();
            sorted.sort_unstable();
            prop_assert_eq!(flagged(&s, &sorted), Some(3));
            prop_assert_eq!(flagged(CLEAN, &sorted), None);
        }
    }
}
