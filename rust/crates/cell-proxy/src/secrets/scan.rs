//! Finding placeholders and values in bytes, whole (a header) or as they
//! stream (a body), and rewriting them.
//!
//! Matching is leftmost-longest over a small set of patterns: at the first
//! position where any pattern occurs, the longest one wins, so
//! `cell-placeholder-aws.akid` is never taken for `cell-placeholder-aws`.
//! Patterns live in zeroized buffers of our own (no automaton copies them),
//! and are searched with `memchr::memmem`, one finder per pattern; the sets
//! are a handful of secrets times a handful of encodings.
//!
//! Streaming keeps back at most `longest pattern - 1` bytes between chunks,
//! and only the end of a chunk that could begin a pattern (usually nothing):
//! a pattern split across chunks (or HTTP/2 DATA frames) is found whole, and
//! a match is only decided once every pattern that could start there has
//! been seen in full.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use zeroize::Zeroizing;

/// What a pattern stands for; the meaning is the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// Index of the secret in the store's list.
    pub secret: usize,
    pub what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// The placeholder the agent holds.
    Placeholder,
    /// An AWS secret's access key id placeholder.
    KeyIdPlaceholder,
    /// The real value (or a real AWS credential part), in this encoding.
    Value(Encoding),
}

/// How a real value was written when it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Base64,
    Base64Url,
    Hex,
    Percent,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Base64 => "base64",
            Encoding::Base64Url => "base64url",
            Encoding::Hex => "hex",
            Encoding::Percent => "percent-encoded",
        }
    }
}

pub struct Pattern {
    pub bytes: Zeroizing<Vec<u8>>,
    pub tag: Tag,
}

/// A set of patterns. Empty patterns are never added.
#[derive(Default)]
pub struct Matcher {
    patterns: Vec<Pattern>,
    longest: usize,
}

/// One match: `start..end` in the searched bytes, and what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub tag: Tag,
}

impl Matcher {
    pub fn new(patterns: Vec<Pattern>) -> Matcher {
        // Identical bytes under two tags: the first one declared wins (ties
        // in `find_all` go to the lower index), deterministically.
        let patterns: Vec<Pattern> = patterns
            .into_iter()
            .filter(|p| !p.bytes.is_empty())
            .collect();
        let longest = patterns.iter().map(|p| p.bytes.len()).max().unwrap_or(0);
        Matcher { patterns, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The longest pattern's length: how much a stream must hold back.
    pub fn longest(&self) -> usize {
        self.longest
    }

    /// The length of the longest end of `hay` that is the start (and not
    /// the whole) of some pattern: what a stream must hold back, because
    /// the next chunk may complete it. Usually 0, so a stream's bytes go on
    /// at once — an SSE event is not kept waiting for the next one.
    pub fn partial_suffix(&self, hay: &[u8]) -> usize {
        let max = self.longest.saturating_sub(1).min(hay.len());
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = &hay[hay.len() - k..];
                self.patterns
                    .iter()
                    .any(|p| p.bytes.len() > k && p.bytes.starts_with(tail))
            })
            .unwrap_or(0)
    }

    /// Every leftmost-longest, non-overlapping match in `hay`.
    pub fn find_all(&self, hay: &[u8]) -> Vec<Found> {
        let mut out = Vec::new();
        if self.patterns.is_empty() || hay.is_empty() {
            return out;
        }
        // Next occurrence of each pattern at or after `pos` (None: no more).
        let mut next: Vec<Option<usize>> = self
            .patterns
            .iter()
            .map(|p| memchr::memmem::find(hay, &p.bytes))
            .collect();
        let mut pos = 0;
        loop {
            for (i, p) in self.patterns.iter().enumerate() {
                if let Some(s) = next[i]
                    && s < pos
                {
                    next[i] = memchr::memmem::find(&hay[pos..], &p.bytes).map(|o| o + pos);
                }
            }
            let best = next
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.map(|s| (s, i)))
                .min_by(|(sa, ia), (sb, ib)| {
                    sa.cmp(sb).then(
                        self.patterns[*ib]
                            .bytes
                            .len()
                            .cmp(&self.patterns[*ia].bytes.len()),
                    )
                });
            let Some((start, i)) = best else { break };
            let end = start + self.patterns[i].bytes.len();
            out.push(Found {
                start,
                end,
                tag: self.patterns[i].tag,
            });
            pos = end;
        }
        out
    }
}

/// What to do with one match.
pub enum Action {
    Keep,
    Replace(Zeroizing<Vec<u8>>),
    /// Stop: the stream fails and nothing from this match on is sent.
    Block(Blocked),
}

/// Why a stream (or a request) was stopped, for the 403/503 and the event.
/// Never holds a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub status: u16,
    pub secret: String,
    /// `scope`, `not-loaded`, `leak`, `location`, `aws`.
    pub reason: &'static str,
    /// `header x-api-key`, `query`, `body`.
    pub place: String,
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Blocked {}

/// Rewrites `hay` whole: every match goes through `act`.
pub fn rewrite(
    m: &Matcher,
    hay: &[u8],
    mut act: impl FnMut(&Found) -> Action,
) -> Result<Option<Zeroizing<Vec<u8>>>, Blocked> {
    let found = m.find_all(hay);
    if found.is_empty() {
        return Ok(None);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(hay.len()));
    let mut pos = 0;
    let mut changed = false;
    for f in &found {
        out.extend_from_slice(&hay[pos..f.start]);
        match act(f) {
            Action::Keep => out.extend_from_slice(&hay[f.start..f.end]),
            Action::Replace(r) => {
                changed = true;
                out.extend_from_slice(&r)
            }
            Action::Block(b) => return Err(b),
        }
        pos = f.end;
    }
    out.extend_from_slice(&hay[pos..]);
    Ok(changed.then_some(out))
}

/// The streaming state: bytes held back between chunks.
pub struct Stream {
    matcher: Arc<Matcher>,
    carry: Zeroizing<Vec<u8>>,
}

impl Stream {
    pub fn new(matcher: Arc<Matcher>) -> Stream {
        Stream {
            matcher,
            carry: Zeroizing::new(Vec::new()),
        }
    }

    /// Feeds `chunk` (`last`: nothing follows) and returns what may be sent
    /// now. Bytes that could be the start of a pattern are held back.
    pub fn push(
        &mut self,
        chunk: &[u8],
        last: bool,
        act: &mut impl FnMut(&Found) -> Action,
    ) -> Result<Bytes, Blocked> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        // Before `safe` no pattern can still be completed by the next chunk:
        // every match starting there is visible in full.
        let safe = if last {
            buf.len()
        } else {
            buf.len() - self.matcher.partial_suffix(&buf)
        };
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for f in self.matcher.find_all(&buf) {
            if f.start >= safe {
                break;
            }
            out.extend_from_slice(&buf[pos..f.start]);
            match act(&f) {
                Action::Keep => out.extend_from_slice(&buf[f.start..f.end]),
                Action::Replace(r) => out.extend_from_slice(&r),
                Action::Block(b) => {
                    self.carry = Zeroizing::new(Vec::new());
                    return Err(b);
                }
            }
            pos = f.end;
        }
        let emit = pos.max(safe);
        out.extend_from_slice(&buf[pos..emit]);
        self.carry = Zeroizing::new(buf[emit..].to_vec());
        Ok(Bytes::from(out))
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The decision for each match of a body, shared with the request handler
/// (which reads `blocked` to answer 403/503 when the body was stopped).
pub type Act = Box<dyn FnMut(&Found) -> Action + Send + Sync>;

/// A body scanned as it streams. With `length_may_change`, its size hint is
/// unknown, so the length is not announced (HTTP/1.1 sends it chunked).
pub struct Scanned<B> {
    inner: B,
    stream: Option<Stream>,
    act: Option<Act>,
    length_may_change: bool,
    trailers: Option<http::HeaderMap>,
    ended: bool,
    pub blocked: Arc<Mutex<Option<Blocked>>>,
}

impl<B> Scanned<B> {
    /// Passes `inner` through untouched.
    pub fn plain(inner: B) -> Self {
        Scanned {
            inner,
            stream: None,
            act: None,
            length_may_change: false,
            trailers: None,
            ended: false,
            blocked: Arc::default(),
        }
    }

    pub fn new(inner: B, matcher: Arc<Matcher>, act: Act, length_may_change: bool) -> Self {
        if matcher.is_empty() {
            return Scanned::plain(inner);
        }
        Scanned {
            stream: Some(Stream::new(matcher)),
            act: Some(act),
            length_may_change,
            ..Scanned::plain(inner)
        }
    }
}

impl<B> Body for Scanned<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            let (Some(stream), Some(act)) = (this.stream.as_mut(), this.act.as_mut()) else {
                return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
            };
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(f) => f,
            };
            let (data, last) = match frame {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => (d, false),
                    Err(f) => {
                        // Trailers end the data: flush what is held first.
                        this.trailers = f.into_trailers().ok();
                        (Bytes::new(), true)
                    }
                },
                None => (Bytes::new(), true),
                Some(Err(_)) => unreachable!("handled above"),
            };
            match stream.push(&data, last, act) {
                Ok(out) => {
                    if last {
                        // Trailers, if any, come next; then the end.
                        this.ended = true;
                        this.stream = None;
                        this.act = None;
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    if last && this.trailers.is_none() {
                        return Poll::Ready(None);
                    }
                }
                Err(b) => {
                    *this.blocked.lock().expect("blocked lock") = Some(b.clone());
                    this.ended = true;
                    return Poll::Ready(Some(Err(Box::new(b))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.stream.is_some() {
            false
        } else if self.act.is_none() && !self.ended && self.trailers.is_none() {
            self.inner.is_end_stream()
        } else {
            self.ended && self.trailers.is_none()
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.length_may_change {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tag(secret: usize, what: What) -> Tag {
        Tag { secret, what }
    }

    fn m(pats: &[(&str, Tag)]) -> Matcher {
        Matcher::new(
            pats.iter()
                .map(|(p, t)| Pattern {
                    bytes: Zeroizing::new(p.as_bytes().to_vec()),
                    tag: *t,
                })
                .collect(),
        )
    }

    #[test]
    fn the_longest_pattern_at_the_leftmost_position_wins() {
        let a = tag(0, What::Placeholder);
        let b = tag(1, What::KeyIdPlaceholder);
        let mm = m(&[
            ("cell-placeholder-aws", a),
            ("cell-placeholder-aws.akid", b),
        ]);
        let f = mm.find_all(b"x cell-placeholder-aws.akid cell-placeholder-aws");
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].start, f[0].tag), (2, b));
        assert_eq!((f[1].start, f[1].tag), (28, a));
    }

    fn stream_all(mm: Matcher, chunks: &[&[u8]], rep: &[u8]) -> Vec<u8> {
        let mut s = Stream::new(Arc::new(mm));
        let mut act = |_: &Found| Action::Replace(Zeroizing::new(rep.to_vec()));
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&s.push(c, i + 1 == chunks.len(), &mut act).unwrap());
        }
        out
    }

    #[test]
    fn a_split_placeholder_is_found_whole_and_a_short_prefix_is_not_taken_early() {
        let a = tag(0, What::Placeholder);
        let b = tag(1, What::KeyIdPlaceholder);
        let mm = m(&[("ph-aws", a), ("ph-aws.akid", b)]);
        let mut s = Stream::new(Arc::new(mm));
        let mut act = |f: &Found| {
            Action::Replace(Zeroizing::new(if f.tag == a {
                b"A".to_vec()
            } else {
                b"B".to_vec()
            }))
        };
        let mut out = Vec::new();
        for (c, last) in [
            (&b"..ph-a"[..], false),
            (b"ws.ak", false),
            (b"id ph-aws", true),
        ] {
            out.extend_from_slice(&s.push(c, last, &mut act).unwrap());
        }
        assert_eq!(out, b"..B A");
    }

    #[test]
    fn a_block_stops_before_the_match() {
        let mm = Arc::new(m(&[("VALUE", tag(0, What::Value(Encoding::Raw)))]));
        let mut s = Stream::new(mm);
        let mut act = |_: &Found| {
            Action::Block(Blocked {
                status: 403,
                secret: "x".into(),
                reason: "leak",
                place: "body".into(),
                what: "w".into(),
                fix: "f".into(),
            })
        };
        let first = s.push(b"hello VA", false, &mut act).unwrap();
        assert!(!first.windows(2).any(|w| w == b"VA"), "{first:?}");
        assert!(s.push(b"LUE tail", true, &mut act).is_err());
    }

    proptest! {
        /// However a body is cut into chunks, the output equals rewriting it whole.
        #[test]
        fn chunking_never_changes_the_result(
            body in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..20),
        ) {
            let pats = [("abca", tag(0, What::Placeholder)), ("abcab", tag(1, What::Placeholder)), ("cc", tag(2, What::Placeholder))];
            let whole = rewrite(&m(&pats), &body, |f| Action::Replace(Zeroizing::new(format!("<{}>", f.tag.secret).into_bytes())))
                .unwrap()
                .map(|z| z.to_vec())
                .unwrap_or_else(|| body.clone());
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= body.len()).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for c in cuts { chunks.push(&body[prev..c]); prev = c; }
            chunks.push(&body[prev..]);
            let mut s = Stream::new(Arc::new(m(&pats)));
            let mut act = |f: &Found| Action::Replace(Zeroizing::new(format!("<{}>", f.tag.secret).into_bytes()));
            let mut out = Vec::new();
            for (i, c) in chunks.iter().enumerate() {
                out.extend_from_slice(&s.push(c, i + 1 == chunks.len(), &mut act).unwrap());
            }
            prop_assert_eq!(out, whole);
        }
    }

    #[test]
    fn a_stream_holds_back_only_what_could_begin_a_pattern() {
        let mm = Arc::new(m(&[(
            "sk-secret-value-0123456789",
            tag(0, What::Placeholder),
        )]));
        let mut st = Stream::new(mm);
        let mut keep = |_: &Found| Action::Keep;
        // An SSE event: nothing in it could start the value, so all of it goes now.
        assert_eq!(
            &st.push(b"data: first\n\n", false, &mut keep).unwrap()[..],
            b"data: first\n\n"
        );
        // A chunk ending in the value's first bytes keeps exactly those back.
        assert_eq!(
            &st.push(b"data: sk-sec", false, &mut keep).unwrap()[..],
            b"data: "
        );
        assert_eq!(
            &st.push(b"ond\n\n", false, &mut keep).unwrap()[..],
            b"sk-second\n\n"
        );
        assert_eq!(&st.push(b"", true, &mut keep).unwrap()[..], b"");
    }

    #[test]
    fn stream_all_helper_rewrites_across_three_chunks() {
        let mm = m(&[("secretvalue", tag(0, What::Placeholder))]);
        assert_eq!(
            stream_all(mm, &[b"a secr", b"etval", b"ue b"], b"X"),
            b"a X b"
        );
    }
}
