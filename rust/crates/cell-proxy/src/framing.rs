//! Spots ambiguous HTTP/1.1 framing before hyper normalizes it.
//!
//! hyper's parser, given `Content-Length` together with `Transfer-Encoding`,
//! drops the length and closes the connection after the response (what RFC
//! 9112 §6.3 asks of an intermediary), so the request never looks ambiguous
//! to the proxy. Security rule: such a request is refused (400), not relayed.
//! [`FramingWatch`] sees the bytes first: it follows message boundaries the
//! way hyper does (heads parsed by `httparse` as hyper calls it, bodies by
//! `Content-Length` or by a copy of hyper's chunked decoder) and records the
//! ordinal of the first request it cannot vouch for. The service counts its
//! requests and refuses that one and every later one.
//!
//! Security rule: the watch and hyper must agree on where every head, line
//! and body ends, or a second request hides inside the first. So the watch
//! refuses what it cannot follow exactly instead of guessing:
//! - a head with both framing headers;
//! - a head with a bare LF line ending (hyper accepts one, RFC 9112 §2.2
//!   lets a server refuse it; refusing keeps one line rule: CRLF);
//! - anything hyper would refuse anyway (a bad head, a bad chunk line, a
//!   head longer than any limit the policy allows), so that a mismatch
//!   between the two parsers fails closed.
//!
//! Upgrade and CONNECT requests are followed like any other: if the upgrade
//! happens hyper stops calling the service, and if it does not (the upstream
//! answered without 101) the next requests are still watched.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request head followed: above the largest `headerBytes` a policy
/// may set (1 MiB, hyper's buffer), so past it hyper has refused the head too.
const MAX_HEAD: usize = (1 << 20) + 1;
/// hyper's limit on one chunk's extension bytes (`CHUNKED_EXTENSIONS_LIMIT`).
const MAX_EXTENSION: u64 = 1 << 14;
/// hyper's default header count; more fields in a head or trailer is an error.
const MAX_FIELDS: usize = 100;
/// HTTP/2's connection preface starts like a request head; hyper-util's
/// auto server takes it as HTTP/2, whose framing is not this module's concern.
const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";
const NONE: u64 = u64::MAX;

/// Shared between the watch (writer) and the service (reader); also counts
/// the connection's plaintext bytes for its event line.
#[derive(Debug)]
pub struct Flags {
    ambiguous: AtomicU64,
    served: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Requests whose response body has not ended yet.
    in_flight: AtomicU64,
    /// `bytes_up` when the last response ended (0 before any request).
    up_at_rest: AtomicU64,
    /// Set while the proxy takes the stream back from hyper: its shutdown of
    /// the stream is then skipped (the connection goes on).
    pub parking: AtomicBool,
}

impl Flags {
    pub fn new() -> Arc<Flags> {
        Arc::new(Flags {
            ambiguous: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            up_at_rest: AtomicU64::new(0),
            parking: AtomicBool::new(false),
        })
    }

    /// Plaintext bytes moved either way so far (idle and at-rest checks
    /// compare two readings).
    pub fn bytes_moved(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed) + self.bytes_down.load(Ordering::Relaxed)
    }

    /// A request has reached the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// A response body has ended (or was dropped).
    pub fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.up_at_rest
                .store(self.bytes_up.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    /// Between requests: no response is being sent and not one byte has
    /// arrived since the last one ended (no head is half read, no body is
    /// still coming), so the connection can be taken back from hyper without
    /// restarting any of its timers on a request in progress.
    pub fn at_rest(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
            && self.bytes_up.load(Ordering::SeqCst) == self.up_at_rest.load(Ordering::SeqCst)
    }

    /// Called once per request by the service: must it be refused? True for
    /// the first request the watch could not vouch for and all after it.
    pub fn next_request_is_ambiguous(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::SeqCst);
        n >= self.ambiguous.load(Ordering::SeqCst)
    }

    /// The ordinal of the first refused request, if any (for tests and fuzzing).
    pub fn first_refused(&self) -> Option<u64> {
        match self.ambiguous.load(Ordering::SeqCst) {
            NONE => None,
            n => Some(n),
        }
    }
}

/// hyper's chunked decoder states (hyper `proto/h1/decode.rs`), same names.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    Start,
    Size,
    SizeLws,
    Extension(u64),
    SizeLf,
    Body(u64),
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

#[derive(Debug)]
enum Phase {
    Head,
    Body(u64),
    Chunked(Chunk),
    /// Refused, or an HTTP/2 connection: stop watching.
    Stop,
}

/// The boundary tracker, separate from I/O so it can be tested directly.
#[derive(Debug)]
pub struct Tracker {
    phase: Phase,
    line: Vec<u8>,
    /// Size of the chunk being read; bytes and fields of the trailer section.
    size: u64,
    trailer_bytes: usize,
    trailer_fields: usize,
    ordinal: u64,
    flags: Arc<Flags>,
    /// The request targets of the heads followed, when asked (fuzzing compares
    /// them with what hyper delivered).
    targets: Option<Vec<Vec<u8>>>,
}

impl Tracker {
    pub fn new(flags: Arc<Flags>) -> Tracker {
        Tracker {
            phase: Phase::Head,
            line: Vec::new(),
            size: 0,
            trailer_bytes: 0,
            trailer_fields: 0,
            ordinal: 0,
            flags,
            targets: None,
        }
    }

    /// Also records each followed head's request target (see [`Tracker::targets`]).
    #[doc(hidden)]
    pub fn recording(mut self) -> Tracker {
        self.targets = Some(Vec::new());
        self
    }

    #[doc(hidden)]
    pub fn targets(&self) -> &[Vec<u8>] {
        self.targets.as_deref().unwrap_or(&[])
    }

    /// Refuses request `self.ordinal` (the one being read, or the next one
    /// when a body is being read) and everything after it.
    fn refuse(&mut self) {
        self.flags
            .ambiguous
            .fetch_min(self.ordinal, Ordering::SeqCst);
        self.phase = Phase::Stop;
        self.line = Vec::new();
    }

    fn head_done(&mut self) {
        if self.line == H2_PREFACE_HEAD {
            self.phase = Phase::Stop;
            return;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.line) {
            Ok(httparse::Status::Complete(n)) if n == self.line.len() => {}
            _ => return self.refuse(),
        }
        let is = |h: &httparse::Header, name: &str| h.name.eq_ignore_ascii_case(name);
        let cl = req.headers.iter().any(|h| is(h, "content-length"));
        let te = req.headers.iter().any(|h| is(h, "transfer-encoding"));
        if cl && te {
            return self.refuse();
        }
        // As hyper: TE is an error before HTTP/1.1, and chunked must be the
        // last coding of the last field; every Content-Length is all digits,
        // and all agree.
        let framing = if te {
            let last = req
                .headers
                .iter()
                .rev()
                .find(|h| is(h, "transfer-encoding"));
            let chunked = last.is_some_and(|h| {
                h.value
                    .iter()
                    .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
                    && h.value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            });
            if req.version != Some(1) || !chunked {
                return self.refuse();
            }
            Phase::Chunked(Chunk::Start)
        } else {
            let mut length = None;
            for h in req.headers.iter().filter(|h| is(h, "content-length")) {
                let Some(n) = digits(h.value) else {
                    return self.refuse();
                };
                if length.is_some_and(|l| l != n) {
                    return self.refuse();
                }
                length = Some(n);
            }
            match length.unwrap_or(0) {
                0 => Phase::Head,
                n => Phase::Body(n),
            }
        };
        if let (Some(t), Some(path)) = (&mut self.targets, req.path) {
            t.push(path.as_bytes().to_vec());
        }
        self.ordinal += 1;
        self.phase = framing;
    }

    /// Follows `data`, the next bytes the client sent.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Stop => return,
                Phase::Head => {
                    // Empty lines before a request line are skipped (RFC 9112
                    // §2.2), as httparse does; a lone CR there is its error.
                    if self.line.is_empty() && (data[0] == b'\r' || data[0] == b'\n') {
                        data = &data[1..];
                        continue;
                    }
                    // The head ends at the first CRLF CRLF; a LF without its
                    // CR before it is refused (hyper would end a line there).
                    let mut end = None;
                    for (i, &b) in data.iter().enumerate() {
                        if b != b'\n' {
                            continue;
                        }
                        let at = self.line.len() + i;
                        let byte = |k: usize| {
                            if k < self.line.len() {
                                self.line[k]
                            } else {
                                data[k - self.line.len()]
                            }
                        };
                        if at == 0 || byte(at - 1) != b'\r' {
                            end = Some(None);
                            break;
                        }
                        if at >= 3 && byte(at - 2) == b'\n' && byte(at - 3) == b'\r' {
                            end = Some(Some(i + 1));
                            break;
                        }
                    }
                    match end {
                        Some(None) => return self.refuse(),
                        Some(Some(take)) => {
                            self.line.extend_from_slice(&data[..take]);
                            data = &data[take..];
                            self.head_done();
                            self.line.clear();
                        }
                        None => {
                            self.line.extend_from_slice(data);
                            data = &[];
                            if self.line.len() > MAX_HEAD {
                                return self.refuse();
                            }
                        }
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
                Phase::Chunked(Chunk::Body(left)) => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    if *left == 0 {
                        self.phase = Phase::Chunked(Chunk::BodyCr);
                    }
                }
                Phase::Chunked(state) => {
                    let state = *state;
                    let b = data[0];
                    data = &data[1..];
                    match self.chunk_byte(state, b) {
                        Some(Some(next)) => self.phase = Phase::Chunked(next),
                        Some(None) => self.phase = Phase::Head,
                        None => return self.refuse(),
                    }
                }
            }
        }
    }

    /// One byte through hyper's chunked decoder: the next state, `Some(None)`
    /// at the end of the body, `None` where hyper fails.
    fn chunk_byte(&mut self, state: Chunk, b: u8) -> Option<Option<Chunk>> {
        let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
        let next = match state {
            Chunk::Start => {
                self.size = hex(b)?;
                self.trailer_bytes = 0;
                self.trailer_fields = 0;
                Chunk::Size
            }
            Chunk::Size => match b {
                b'\t' | b' ' => Chunk::SizeLws,
                b';' => Chunk::Extension(0),
                b'\r' => Chunk::SizeLf,
                _ => {
                    self.size = self.size.checked_mul(16)?.checked_add(hex(b)?)?;
                    Chunk::Size
                }
            },
            Chunk::SizeLws => match b {
                b'\t' | b' ' => Chunk::SizeLws,
                b';' => Chunk::Extension(0),
                b'\r' => Chunk::SizeLf,
                _ => return None,
            },
            Chunk::Extension(n) => match b {
                b'\r' => Chunk::SizeLf,
                b'\n' => return None,
                _ if n + 1 >= MAX_EXTENSION => return None,
                _ => Chunk::Extension(n + 1),
            },
            Chunk::SizeLf if b != b'\n' => return None,
            Chunk::SizeLf if self.size == 0 => Chunk::EndCr,
            Chunk::SizeLf => Chunk::Body(self.size),
            // Zero-length bodies never stay in `Body`; `feed` reads the data.
            Chunk::Body(_) => return None,
            Chunk::BodyCr if b == b'\r' => Chunk::BodyLf,
            Chunk::BodyLf if b == b'\n' => Chunk::Start,
            Chunk::BodyCr | Chunk::BodyLf => return None,
            Chunk::Trailer | Chunk::EndCr if b != b'\r' => {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_HEAD {
                    return None;
                }
                Chunk::Trailer
            }
            Chunk::Trailer => {
                self.trailer_bytes += 1;
                Chunk::TrailerLf
            }
            Chunk::TrailerLf if b == b'\n' => {
                self.trailer_fields += 1;
                if self.trailer_fields > MAX_FIELDS {
                    return None;
                }
                Chunk::EndCr
            }
            Chunk::TrailerLf => return None,
            Chunk::EndCr => Chunk::EndLf,
            Chunk::EndLf if b == b'\n' => return Some(None),
            Chunk::EndLf => return None,
        };
        Some(Some(next))
    }
}

/// A Content-Length value as hyper reads it: ASCII digits only, no sign, no list.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A stream that shows every byte read through it to a [`Tracker`].
///
/// It can also be handed back from hyper between requests (see
/// `proxy::park`): bytes hyper had read but not parsed are given back with
/// [`FramingWatch::replay`] and read again first, without being watched or
/// counted a second time, and while `Flags::parking` is set hyper's shutdown
/// of the stream is skipped.
pub struct FramingWatch<S> {
    inner: S,
    tracker: Tracker,
    replay: Bytes,
}

impl<S> FramingWatch<S> {
    pub fn new(inner: S, flags: Arc<Flags>) -> Self {
        FramingWatch {
            inner,
            tracker: Tracker::new(flags),
            replay: Bytes::new(),
        }
    }

    /// Counts what a write accepted as sent towards the client.
    fn count_down(&self, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = r {
            self.tracker
                .flags
                .bytes_down
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    /// Bytes already watched, to be read again before the stream's next ones.
    pub fn replay(&mut self, bytes: Bytes) {
        debug_assert!(self.replay.is_empty(), "replay set twice");
        self.replay = bytes;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FramingWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        if !me.replay.is_empty() {
            let n = me.replay.len().min(buf.remaining());
            buf.put_slice(&me.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
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
        self.count_down(r)
    }
    /// Vectored, as the TLS stream under it is: otherwise hyper copies every
    /// response byte into its own buffer first.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_down(r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.tracker.flags.parking.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
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
        flags.first_refused()
    }

    /// The verdict for `stream` read at once and read one byte at a time.
    fn both_ways(stream: &[u8]) -> Option<u64> {
        let whole = flagged(stream, &[]);
        let bytewise = flagged(stream, &(1..stream.len()).collect::<Vec<_>>());
        assert_eq!(whole, bytewise, "{}", String::from_utf8_lossy(stream));
        whole
    }

    const CLEAN: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: y\r\n\r\n";

    #[test]
    fn clean_pipelines_are_not_flagged() {
        assert_eq!(both_ways(CLEAN), None);
    }

    #[test]
    fn cl_with_te_is_flagged_at_its_ordinal() {
        let mut s = CLEAN.to_vec();
        s.extend_from_slice(b"POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert_eq!(both_ways(&s), Some(3));
        let first = b"POST /d HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";
        assert_eq!(both_ways(first), Some(0));
    }

    /// Every request from the flagged one on is refused, not just that one.
    #[test]
    fn refusal_covers_the_rest_of_the_connection() {
        let flags = Flags::new();
        let mut t = Tracker::new(flags.clone());
        t.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\nContent-Length: 1\r\n\r\n");
        assert!(!flags.next_request_is_ambiguous());
        assert!(flags.next_request_is_ambiguous());
        assert!(flags.next_request_is_ambiguous());
    }

    /// Finding 1 (issue 17): hyper ends lines at a bare LF, so the watch must
    /// not read past one; any head with a bare LF is refused.
    #[test]
    fn bare_lf_heads_are_refused() {
        // The finding's request: both framing headers, bare LF throughout.
        let bare =
            b"POST /s HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nContent-Length: 3\n\n0\n\n";
        assert_eq!(both_ways(bare), Some(0));
        // A bare-LF first request, then a CRLF one carrying both headers.
        let mut two = b"GET /a HTTP/1.1\nHost: x\n\n".to_vec();
        two.extend_from_slice(
            b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(both_ways(&two), Some(0));
        // A clean first request, then one with a single bare LF.
        let mut late = CLEAN.to_vec();
        late.extend_from_slice(b"GET /z HTTP/1.1\r\nHost: x\n\r\n");
        assert_eq!(both_ways(&late), Some(3));
        // Mixed endings at the end of the head: LF CRLF and CRLF LF.
        assert_eq!(both_ways(b"GET / HTTP/1.1\r\nHost: x\n\r\n"), Some(0));
        assert_eq!(both_ways(b"GET / HTTP/1.1\r\nHost: x\r\n\n"), Some(0));
        // Empty lines before the request line may still be bare (RFC 9112 §2.2).
        assert_eq!(both_ways(b"\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), None);
    }

    /// hyper's chunked decoder wants CRLF after sizes, data and trailers;
    /// where it fails, so does the watch (a bare LF can never end a line).
    #[test]
    fn bare_lf_chunk_lines_are_refused() {
        let head = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5;a=b\nhello\r\n0\r\n\r\n",
            b"0\n\n",
            b"5\r\nhelloXY0\r\n\r\n",
            b"x\r\n",
            b"fffffffffffffffff\r\n",
        ] {
            let mut s = head.to_vec();
            s.extend_from_slice(body);
            s.extend_from_slice(b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(both_ways(&s), Some(1), "{}", String::from_utf8_lossy(body));
        }
        // A trailer field may contain a bare LF byte as hyper reads it; the
        // section still ends only at CRLF CRLF.
        let mut s = head.to_vec();
        s.extend_from_slice(b"0\r\nX: a\nb\r\n\r\nGET /n HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(both_ways(&s), None);
    }

    /// hyper refuses what the watch cannot follow; the watch refuses it too.
    #[test]
    fn heads_hyper_refuses_are_refused() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\rY\r\n\r\n",
            b"GET / HTTP/1.1\r\n X: folded\r\n\r\n",
        ] {
            assert_eq!(
                both_ways(head),
                Some(0),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        // Equal duplicates are one length, as in hyper.
        let dup = b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nhiGET / HTTP/1.1\r\n\r\n";
        assert_eq!(both_ways(dup), None);
    }

    /// An upgrade the upstream declines leaves an HTTP connection: still watched.
    #[test]
    fn requests_after_an_upgrade_request_are_watched() {
        let s = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(both_ways(s), Some(1));
    }

    /// The HTTP/2 preface is not a refused HTTP/1.1 head.
    #[test]
    fn http2_preface_is_left_alone() {
        assert_eq!(
            both_ways(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0"),
            None
        );
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
        assert_eq!(both_ways(&s), None);
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
