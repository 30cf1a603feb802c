//! The checks the fuzz targets in `rust/fuzz` run on every input; the corpus
//! replay (`tests/fuzz_corpus.rs`) runs the same functions on the committed
//! corpus, so a finding stays fixed without cargo-fuzz. Each check panics on
//! a finding and otherwise returns; none touches the network.
//!
//! | target        | parser fed the agent's bytes                       |
//! |---------------|----------------------------------------------------|
//! | `framing`     | [`crate::framing::Tracker`], against hyper itself  |
//! | `client_hello`| the ClientHello reader (rustls `Acceptor`) + SNI    |
//! | `h2`          | hyper's HTTP/2 server (HPACK, pseudo-headers) into the request checks |
//! | `path`        | [`cell_policy::path::normalize_request_path`]       |
//! | `host`        | [`cell_policy::normalize_host`]                     |
//! | `dns`         | [`crate::dns::DnsHandler`] on raw DNS messages       |
//! | `policy`      | policy and overlay parsing, validation, nftables    |

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use cell_policy::path::{PathPattern, check_views, normalize_method, normalize_request_path};
use cell_policy::{HostPattern, OverlayDocument, Policy, PolicyDocument, normalize_host};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::framing::{Flags, Tracker};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Lets every other task on the (single-threaded) runtime run for a while.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// Pieces of `data` cut at the lengths `seed` spells (1..=16 bytes each).
fn splits(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut at, mut k) = (0, u32::from(seed));
    while at < data.len() {
        let n = (k % 16 + 1) as usize;
        k = k.wrapping_mul(1103515245).wrapping_add(12345) >> 3;
        out.push(&data[at..(at + n).min(data.len())]);
        at += n;
    }
    out
}

/// The watch's verdict and the targets of the heads it followed.
fn watch<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> (Option<u64>, Vec<Vec<u8>>) {
    let flags = Flags::new();
    let mut t = Tracker::new(flags.clone()).recording();
    for p in pieces {
        t.feed(p);
    }
    (flags.first_refused(), t.targets().to_vec())
}

/// Serves `input` (the client's bytes, then end of stream) on one hyper
/// connection, HTTP/1.1 or HTTP/2, and returns every request hyper delivered
/// (each after its body was read).
fn serve<F>(input: Vec<u8>, h2: bool, on_request: F) -> Vec<Request<()>>
where
    F: Fn(&Request<()>) + Send + Sync + 'static,
{
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let seen = delivered.clone();
    let on_request = Arc::new(on_request);
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        let on_request = on_request.clone();
        async move {
            let (parts, body) = req.into_parts();
            let req = Request::from_parts(parts, ());
            on_request(&req);
            seen.lock().expect("lock").push(req);
            let _ = body.collect().await;
            Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async move {
            let _ = wr.write_all(&input).await;
            // Let the server (and the tasks HTTP/2 spawns per stream) act on
            // everything before it sees the end of the stream.
            settle().await;
            let _ = wr.shutdown().await;
        };
        let drain = async move {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        };
        let conn = async move {
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_header_list_size(64 * 1024)
                    .serve_connection(TokioIo::new(server), service)
                    .await;
            } else {
                // Half-close: the end of the input is not a reason to drop
                // pipelined requests already read (a live client keeps its
                // connection open).
                let _ = hyper::server::conn::http1::Builder::new()
                    .half_close(true)
                    .serve_connection(TokioIo::new(server), service)
                    .await;
            }
        };
        let all = async { tokio::join!(write, drain, conn) };
        let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
        settle().await;
    });
    Arc::try_unwrap(delivered)
        .map(|m| m.into_inner().expect("lock"))
        .unwrap_or_default()
}

/// The framing watch (issue 17 finding 1): the same verdict however the
/// bytes are split, and for every request hyper delivers that the watch did
/// not refuse, the watch followed the same head (same request target, same
/// place in the stream). The first byte chooses the split points.
pub fn framing(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = watch([stream]);
    let bytewise = watch(stream.chunks(1));
    let split = watch(splits(stream, seed));
    assert_eq!(whole, bytewise, "verdict depends on the reads (1 byte)");
    assert_eq!(whole, split, "verdict depends on the reads (seed {seed})");
    let (refused, targets) = whole;
    let delivered = serve(stream.to_vec(), false, |_| {});
    for (i, req) in delivered.iter().enumerate() {
        if refused.is_some_and(|r| i as u64 >= r) {
            break;
        }
        let ours = targets.get(i).unwrap_or_else(|| {
            panic!(
                "hyper delivered request {i} ({}) that the watch never saw",
                req.uri()
            )
        });
        // `http::Uri` drops a fragment; the watch keeps the raw target.
        let ours = ours.split(|&b| b == b'#').next().unwrap_or_default();
        if let Some(pq) = req
            .uri()
            .path_and_query()
            .filter(|_| ours.starts_with(b"/"))
        {
            assert_eq!(
                pq.as_str().as_bytes(),
                ours,
                "request {i}: hyper and the watch disagree on the head"
            );
        }
    }
}

/// The ClientHello reader, as `proxy.rs` runs it (rustls `Acceptor`, reads
/// cut where the first byte says, 64 KiB bound): no panic, no loop, and an
/// SNI that normalizes does so idempotently.
pub fn client_hello(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut acceptor = rustls::server::Acceptor::default();
    let mut raw = 0;
    for piece in splits(stream, seed) {
        raw += piece.len();
        if raw > 64 * 1024 {
            return;
        }
        let mut chunk = piece;
        while !chunk.is_empty() {
            match acceptor.read_tls(&mut chunk) {
                Ok(0) => panic!("read_tls made no progress: the reader would spin"),
                Ok(_) => {}
                Err(_) => return,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                if let Some(sni) = accepted.client_hello().server_name() {
                    host_idempotent(sni);
                }
                return;
            }
            Ok(None) => continue,
            Err(_) => return,
        }
    }
}

/// Patterns the path checks are exercised with (no `%`, see [`check_views`]).
const PATTERNS: &[&str] = &[
    "/allowed/**",
    "/allowed/*",
    "/allowed/*/x",
    "/x/*.json",
    "/**",
    "/a*/**",
];

fn patterns() -> &'static [PathPattern] {
    static P: OnceLock<Vec<PathPattern>> = OnceLock::new();
    P.get_or_init(|| {
        PATTERNS
            .iter()
            .map(|p| PathPattern::parse(p).expect("pattern"))
            .collect()
    })
}

/// Path normalization (issue 17 finding 2, issue 11 finding 4): a path let
/// through under a pattern matches it in every server's view, and the
/// normalized path normalizes to itself.
pub fn path(data: &[u8]) {
    let target = String::from_utf8_lossy(data);
    path_checks(&target);
}

fn path_checks(target: &str) {
    if let Some(p) = normalize_request_path(target) {
        assert_eq!(normalize_request_path(p), Some(p), "not idempotent");
    }
    for pattern in patterns() {
        if let Err(e) = check_views(pattern, target) {
            panic!("{e}");
        }
    }
}

fn host_idempotent(input: &str) {
    if let Ok(n) = normalize_host(input) {
        assert_eq!(
            normalize_host(&n).as_deref(),
            Ok(n.as_str()),
            "normalize_host({input:?}) = {n:?} is not a fixed point"
        );
    }
}

/// Hostname normalization: idempotent, and host patterns parse and match
/// without panicking.
pub fn host(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    host_idempotent(&text);
    let (pattern, name) = text.split_once('\n').unwrap_or((&text, &text));
    for (apex, any) in [(false, false), (true, false), (true, true)] {
        if let (Ok(p), Ok(n)) = (HostPattern::parse(pattern, apex, any), normalize_host(name)) {
            let _ = p.matches(&n);
        }
    }
}

/// HTTP/2: the bytes after the connection preface go to hyper's HTTP/2
/// server; each request it delivers goes through the proxy's pure request
/// checks (authority, method, framing headers, path) without panicking, and
/// the path rules hold for its `:path`.
pub fn h2(data: &[u8]) {
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    input.extend_from_slice(data);
    serve(input, true, |req| {
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        if let Some(a) = authority {
            let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
            host_idempotent(host);
        }
        let _ = normalize_method(req.method().as_str());
        let _ = req
            .headers()
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .count();
        if let Some(pq) = req.uri().path_and_query() {
            path_checks(pq.as_str());
        }
    });
}

/// A policy for the DNS target: synthetic names, no upstream (no network).
const DNS_POLICY: &str = r#"{"https":[{"host":"api.example.com"},{"host":"*.example.org"}],"tcp":[{"host":"git.example.com","ports":[22]}]}"#;

struct Dns {
    handler: crate::dns::DnsHandler,
    pool: ipnet::Ipv4Net,
}

fn dns_handler() -> &'static Dns {
    static H: OnceLock<Dns> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cell-fuzz-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let policy = dir.join("policy.json");
        std::fs::write(&policy, DNS_POLICY).expect("policy file");
        let events = crate::events::EventLog::open(
            &crate::events::Sink::File(dir.join("events.jsonl")),
            crate::events::Bounds {
                max_bytes: 1 << 20,
                keep: 0,
            },
        )
        .expect("event log");
        let sources = crate::state::Sources {
            policy,
            overlay: None,
            firewall: None,
            netns: None,
        };
        let state = crate::state::State::start(sources, events).expect("state");
        let pool = state.policy().dns.synthetic_pool;
        Dns {
            handler: crate::dns::DnsHandler::new(state, 64),
            pool,
        }
    })
}

/// Captures the encoded reply.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<u8>>>>);

#[async_trait::async_trait]
impl hickory_server::server::ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        >,
    ) -> Result<hickory_server::server::ResponseInfo, hickory_server::net::NetError> {
        let mut bytes = Vec::new();
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
        let info = response.destructive_emit(&mut encoder)?;
        *self.0.lock().expect("lock") = Some(bytes);
        Ok(info)
    }
}

/// DNS request handling (issue 17 finding 3): no panic, every reply parses,
/// and every address answered is in the synthetic pool.
pub fn dns(data: &[u8]) {
    use hickory_server::server::RequestHandler;
    let src = SocketAddr::from((Ipv4Addr::new(10, 89, 0, 2), 5353));
    let Ok(request) = hickory_server::server::Request::from_bytes(
        data.to_vec(),
        src,
        hickory_server::net::xfer::Protocol::Udp,
    ) else {
        return;
    };
    let dns = dns_handler();
    let capture = Capture::default();
    runtime().block_on(
        dns.handler
            .handle_request::<_, hickory_server::net::runtime::TokioTime>(
                &request,
                capture.clone(),
            ),
    );
    let Some(reply) = capture.0.lock().expect("lock").take() else {
        return;
    };
    let message = hickory_proto::op::Message::from_vec(&reply)
        .unwrap_or_else(|e| panic!("reply {reply:02x?} does not parse: {e}"));
    for record in &message.answers {
        if let hickory_proto::rr::RData::A(a) = &record.data {
            assert!(dns.pool.contains(&a.0), "{} is outside the pool", a.0);
        }
    }
}

/// Policy and overlay documents (base, then optionally a NUL and an
/// overlay): parsing, validation and nftables compilation never panic, and a
/// valid policy compiles to a ruleset that serializes.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (base, overlay) = text
        .split_once('\0')
        .map_or((text, None), |(b, o)| (b, Some(o)));
    let Ok(base) = PolicyDocument::from_json("base.json", base) else {
        return;
    };
    let overlay = overlay.and_then(|o| OverlayDocument::from_json("overlay.json", o).ok());
    let Ok(policy) = Policy::build(&base, overlay.as_ref()) else {
        return;
    };
    let params = cell_policy::nft::FirewallParams {
        table: "cell".into(),
        agent_iface: "eth1".into(),
        listen: Ipv4Addr::new(10, 89, 0, 1),
        dns_port: 53,
        transparent_port: 15001,
        explicit_port: 3128,
        nflog_group: 7,
        agent_addrs: vec![Ipv4Addr::new(10, 89, 0, 2).into()],
    };
    let ruleset = cell_policy::nft::compile(&policy, &params);
    let _ = ruleset.to_json();
    for name in ["api.example.com", "x.example.org", "localhost", "a..b"] {
        let _ = policy.resolve_name(name);
        let _ = policy.connection(name, 443);
    }
    let _ = policy.proxied_ports();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The oracles are not vacuous: hyper really delivers the requests the
    /// checks compare against, over HTTP/1.1 and HTTP/2.
    #[test]
    fn harness_sees_what_hyper_delivers() {
        let h1 = serve(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                .to_vec(),
            false,
            |_| {},
        );
        let paths: Vec<_> = h1.iter().map(|r| r.uri().path().to_string()).collect();
        assert_eq!(paths, ["/a", "/b"]);
        assert_eq!(watch([&b"GET /a HTTP/1.1\r\n\r\n"[..]]).1, [b"/a".to_vec()]);

        // SETTINGS, then HEADERS (END_STREAM|END_HEADERS) for GET https /x api.example.com.
        let mut frames = b"\0\0\0\x04\0\0\0\0\0".to_vec();
        let block = b"\x82\x87\x44\x02/x\x41\x0fapi.example.com";
        frames.extend_from_slice(&[0, 0, block.len() as u8, 1, 5, 0, 0, 0, 1]);
        frames.extend_from_slice(block);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend_from_slice(&frames);
        let h2 = serve(input, true, |_| {});
        assert_eq!(h2.len(), 1);
        assert_eq!(h2[0].uri().path(), "/x");
    }

    /// Issue 17 finding 3 through the whole handler: the pointer question
    /// gets a reply that parses (FORMERR, no question echoed).
    #[test]
    fn pointer_question_reply_parses() {
        dns(&[2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 2, 1, 2, 0, 1]);
    }
}
