//! The fake internet's HTTPS side: a test CA, an HTTPS server that picks its
//! certificate by SNI (valid, self-signed, expired, wrong name), and an
//! HTTPS client for the agent side that trusts a given CA.
//!
//! Server routes: `/echo` (method, path, host, protocol, body length),
//! `/sse` (one event at once, another after 1.5 s), `/big?mb=N` (N MiB
//! streamed), a model provider's `/v1/messages` (Anthropic) and
//! `/model/<id>/invoke-with-response-stream` and `/model/<id>/converse`
//! (Bedrock Runtime), anything else 404. Every request is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How the fake server presents itself for a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// Issued by the test CA for the name: valid.
    Valid,
    /// Self-signed for the name.
    SelfSigned,
    /// Issued by the test CA, expired yesterday.
    Expired,
    /// Issued by the test CA for `other.invalid`.
    WrongName,
}

/// A CA for the fake internet; `cell-proxy` is told to trust it.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new() -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "fake internet CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        })
    }

    fn certified(&self, name: &str, kind: CertKind) -> anyhow::Result<Arc<CertifiedKey>> {
        let key = KeyPair::generate()?;
        let san = if kind == CertKind::WrongName {
            "other.invalid".to_string()
        } else {
            name.to_string()
        };
        let mut p = CertificateParams::new(vec![san])?;
        let now = SystemTime::now();
        if kind == CertKind::Expired {
            p.not_before = (now - Duration::from_secs(10 * 86400)).into();
            p.not_after = (now - Duration::from_secs(86400)).into();
        }
        let cert = match kind {
            CertKind::SelfSigned => p.self_signed(&key)?,
            _ => p.signed_by(&key, &self.issuer)?,
        };
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone()],
            signer,
        )))
    }
}

#[derive(Debug)]
struct BySni(HashMap<String, Arc<CertifiedKey>>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.get(hello.server_name()?).cloned()
    }
}

/// A recording HTTPS server.
#[derive(Clone, Default)]
pub struct FakeHttps {
    seen: Arc<Mutex<Vec<String>>>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    suites: Arc<Mutex<Vec<rustls::CipherSuite>>>,
}

/// One request as the server received it, whole (`/record` and `/reflect`).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub host: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// The body did not arrive whole (the client, or the proxy, cut it).
    pub body_failed: bool,
    pub version: http::Version,
}

impl Recorded {
    /// Every byte the server saw of this request: target, header values, body.
    pub fn all_bytes(&self) -> Vec<u8> {
        let mut v = self.target.as_bytes().to_vec();
        for (n, h) in &self.headers {
            v.extend_from_slice(n.as_bytes());
            v.push(b':');
            v.extend_from_slice(h);
            v.push(b'\n');
        }
        v.extend_from_slice(&self.body);
        v
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

type Body = BoxBody<Bytes, std::convert::Infallible>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r
}

impl FakeHttps {
    /// `METHOD path host proto` for every request so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen lock").clone()
    }

    /// The cipher suite of every TLS connection accepted so far.
    pub fn cipher_suites(&self) -> Vec<rustls::CipherSuite> {
        self.suites.lock().expect("suites lock").clone()
    }

    /// Every request to `/record` or `/reflect` so far, whole.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().expect("recorded lock").clone()
    }

    /// Serves TLS (h2 and http/1.1) on `listener` with a certificate per name.
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
        ca: &TestCa,
        names: &[(&str, CertKind)],
    ) -> anyhow::Result<()> {
        let mut certs = HashMap::new();
        for (n, k) in names {
            certs.insert(n.to_string(), ca.certified(n, *k)?);
        }
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni(certs)));
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let me = me.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(suite) = tls.get_ref().1.negotiated_cipher_suite() {
                        me.suites.lock().expect("suites lock").push(suite.suite());
                    }
                    let svc = hyper::service::service_fn(move |req| {
                        let me = me.clone();
                        async move { Ok::<_, std::convert::Infallible>(me.route(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(())
    }

    async fn route(&self, mut req: Request<Incoming>) -> Response<Body> {
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let line = format!(
            "{} {} {} {:?}",
            req.method(),
            req.uri().path(),
            host,
            req.version()
        );
        self.seen.lock().expect("seen lock").push(line.clone());
        let query = req.uri().query().unwrap_or("").to_string();
        match req.uri().path() {
            "/record" | "/reflect" => {
                let reflect = req.uri().path() == "/reflect";
                let (parts, body) = req.into_parts();
                let (body, body_failed) = match body.collect().await {
                    Ok(b) => (b.to_bytes().to_vec(), false),
                    Err(_) => (Vec::new(), true),
                };
                let rec = Recorded {
                    method: parts.method.to_string(),
                    host: host.clone(),
                    target: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str().to_string())
                        .unwrap_or_default(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                        .collect(),
                    body,
                    body_failed,
                    version: parts.version,
                };
                self.recorded
                    .lock()
                    .expect("recorded lock")
                    .push(rec.clone());
                if !reflect {
                    return text(
                        StatusCode::OK,
                        format!("recorded {} body bytes\n", rec.body.len()),
                    );
                }
                // An API that quotes the credential back: in a header and the body.
                let auth = rec.header("authorization").unwrap_or_default().to_vec();
                let mut out = b"you sent: ".to_vec();
                out.extend_from_slice(&auth);
                out.extend_from_slice(b"\nand the body: ");
                out.extend_from_slice(&rec.body);
                out.push(b'\n');
                let mut r = Response::new(Full::new(Bytes::from(out)).boxed());
                if let Ok(v) = http::HeaderValue::from_bytes(&auth) {
                    r.headers_mut().insert("x-you-sent", v);
                }
                r
            }
            // A model provider answering in the Anthropic Messages format
            // (docs.anthropic.com's wire format): SSE when the request asks to
            // stream, one JSON message otherwise; a text block and a tool call.
            "/v1/messages" => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let stream = serde_json::from_slice::<serde_json::Value>(&body)
                    .map(|v| v["stream"] == serde_json::Value::Bool(true))
                    .unwrap_or(false);
                if stream {
                    let mut r = Response::new(
                        StreamBody::new(async_stream(vec![
                            (
                                Duration::ZERO,
                                Bytes::from_static(ANTHROPIC_SSE[0].as_bytes()),
                            ),
                            (
                                Duration::from_millis(300),
                                Bytes::from_static(ANTHROPIC_SSE[1].as_bytes()),
                            ),
                        ]))
                        .boxed(),
                    );
                    r.headers_mut()
                        .insert("content-type", "text/event-stream".parse().expect("static"));
                    r.headers_mut()
                        .insert("request-id", "req_lab_1".parse().expect("static"));
                    r
                } else {
                    let mut r = Response::new(
                        Full::new(Bytes::from_static(ANTHROPIC_JSON.as_bytes())).boxed(),
                    );
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().expect("static"));
                    r
                }
            }
            // Bedrock Runtime (its API reference's wire format): the model's
            // Anthropic events as `chunk` frames of an AWS event stream, in
            // two parts 300 ms apart; Converse's JSON answer.
            p if p.starts_with("/model/") && p.ends_with("/invoke-with-response-stream") => {
                let _ = req.into_body().collect().await;
                let part = |events: &[&str]| -> Bytes {
                    events
                        .iter()
                        .flat_map(|e| bedrock_chunk(e))
                        .collect::<Vec<u8>>()
                        .into()
                };
                let mut r = Response::new(
                    StreamBody::new(async_stream(vec![
                        (Duration::ZERO, part(BEDROCK_EVENTS[0])),
                        (Duration::from_millis(300), part(BEDROCK_EVENTS[1])),
                    ]))
                    .boxed(),
                );
                r.headers_mut().insert(
                    "content-type",
                    "application/vnd.amazon.eventstream"
                        .parse()
                        .expect("static"),
                );
                r.headers_mut()
                    .insert("x-amzn-requestid", "lab-bedrock-1".parse().expect("static"));
                r
            }
            p if p.starts_with("/model/") && p.ends_with("/converse") => {
                let _ = req.into_body().collect().await;
                let mut r =
                    Response::new(Full::new(Bytes::from_static(CONVERSE_JSON.as_bytes())).boxed());
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("static"));
                r
            }
            "/echo" => {
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().len())
                    .unwrap_or(0);
                text(StatusCode::OK, format!("{line} body={body}\n"))
            }
            "/ws" => {
                // A real WebSocket echo server (RFC 6455 handshake and framing, by tungstenite).
                let Some(key) = req
                    .headers()
                    .get("sec-websocket-key")
                    .map(|k| k.as_bytes().to_vec())
                else {
                    return text(StatusCode::BAD_REQUEST, "not a websocket request\n".into());
                };
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    use futures_util::{SinkExt, StreamExt};
                    let Ok(up) = on.await else { return };
                    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(up),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
                let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
                r.headers_mut()
                    .insert("connection", "upgrade".parse().expect("static"));
                r.headers_mut()
                    .insert("upgrade", "websocket".parse().expect("static"));
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
                r.headers_mut()
                    .insert("sec-websocket-accept", accept.parse().expect("base64"));
                r
            }
            "/upgrade" => {
                // Accepts any upgrade (the WebSocket handshake shape) and echoes raw bytes after the 101.
                let on = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if let Ok(up) = on.await {
                        let mut io = TokioIo::new(up);
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
                r.headers_mut()
                    .insert("connection", "upgrade".parse().expect("static"));
                r.headers_mut()
                    .insert("upgrade", "websocket".parse().expect("static"));
                r
            }
            "/sse" => {
                let stream = async_stream(vec![
                    (Duration::ZERO, Bytes::from_static(b"data: first\n\n")),
                    (
                        Duration::from_millis(1500),
                        Bytes::from_static(b"data: second\n\n"),
                    ),
                ]);
                let mut r = Response::new(StreamBody::new(stream).boxed());
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().expect("static"));
                r
            }
            "/big" => {
                let mb: usize = query
                    .strip_prefix("mb=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                let chunk = Bytes::from(vec![0u8; 64 * 1024]);
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
                tokio::spawn(async move {
                    for _ in 0..mb * 16 {
                        if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                            return;
                        }
                    }
                });
                let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut r = Response::new(StreamBody::new(stream).boxed());
                r.headers_mut().insert(
                    "content-length",
                    (mb * 1024 * 1024).to_string().parse().expect("number"),
                );
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// The streamed answer of `/v1/messages`, in two parts sent 300 ms apart.
const ANTHROPIC_SSE: [&str; 2] = [
    concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_lab","type":"message","role":"assistant","model":"claude-lab-1","content":[],"stop_reason":null,"usage":{"input_tokens":21,"output_tokens":1}}}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking."}}"#,
        "\n\n",
    ),
    concat!(
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_lab","name":"run","input":{}}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"cmd\":\"ls\"}"}}"#,
        "\n\nevent: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":1}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
        "\n\nevent: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    ),
];

/// The unstreamed answer of `/v1/messages`.
const ANTHROPIC_JSON: &str = r#"{"id":"msg_lab","type":"message","role":"assistant","model":"claude-lab-1","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_lab","name":"run","input":{"cmd":"ls"}}],"stop_reason":"tool_use","usage":{"input_tokens":21,"output_tokens":9}}"#;

/// The streamed answer of `/model/<id>/invoke-with-response-stream`: an
/// Anthropic model's events, in two parts; Bedrock's metrics on the last.
const BEDROCK_EVENTS: [&[&str]; 2] = [
    &[
        r#"{"type":"message_start","message":{"id":"msg_lab_bedrock","type":"message","role":"assistant","model":"claude-lab-1","content":[],"stop_reason":null,"usage":{"input_tokens":21,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking."}}"#,
    ],
    &[
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_lab","name":"run","input":{}}}"#,
        r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"cmd\":\"ls\"}"}}"#,
        r#"{"type":"content_block_stop","index":1}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":21,"outputTokenCount":9,"invocationLatency":310,"firstByteLatency":5}}"#,
    ],
];

/// The answer of `/model/<id>/converse`.
const CONVERSE_JSON: &str = r#"{"output":{"message":{"role":"assistant","content":[{"text":"Checking."},{"toolUse":{"toolUseId":"tooluse_lab","name":"run","input":{"cmd":"ls"}}}]}},"stopReason":"tool_use","usage":{"inputTokens":21,"outputTokens":9,"totalTokens":30},"metrics":{"latencyMs":12}}"#;

/// One `chunk` frame of an AWS event stream (`{"bytes":"<base64 of event>"}`),
/// encoded by aws-smithy-eventstream.
fn bedrock_chunk(event: &str) -> Vec<u8> {
    use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
    let header = |n: &'static str, v: &'static str| Header::new(n, HeaderValue::String(v.into()));
    let payload = serde_json::json!({ "bytes": aws_smithy_types::base64::encode(event) });
    let message = Message::new_from_parts(
        vec![
            header(":event-type", "chunk"),
            header(":content-type", "application/json"),
            header(":message-type", "event"),
        ],
        payload.to_string().into_bytes(),
    );
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out)
        .expect("a small frame encodes");
    out
}

type FrameStream =
    tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>;

/// Frames sent after the given delays.
fn async_stream(parts: Vec<(Duration, Bytes)>) -> FrameStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for (delay, data) in parts {
            tokio::time::sleep(delay).await;
            if tx.send(Ok(Frame::data(data))).await.is_err() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An HTTPS client in the agent namespace, trusting `ca_pem`.
pub struct Client {
    tls: tokio_rustls::TlsConnector,
}

/// One response, with its body and when the first body bytes arrived.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Body bytes received in all (also those past `keep`).
    pub len: u64,
    pub version: http::Version,
    pub first_byte_after: Option<Duration>,
    pub total: Duration,
}

impl Client {
    pub fn new(ca_pem: &str, alpn: &[&[u8]]) -> anyhow::Result<Client> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.context("CA pem")?)?;
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }

    /// Only the TLS connection, for tests that write raw bytes.
    pub async fn raw(
        &self,
        stream: std::net::TcpStream,
        sni: &str,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        stream.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(stream)?;
        let name = rustls_pki_types::ServerName::try_from(sni.to_string())?;
        Ok(self.tls.connect(name, tcp).await?)
    }

    /// TLS to `stream` with `sni`, then one request per `(method, path, host)`.
    /// Bodies are read completely, but only counted past `keep` bytes.
    pub async fn fetch<B>(
        &self,
        stream: std::net::TcpStream,
        sni: &str,
        requests: Vec<Request<B>>,
        keep: usize,
    ) -> anyhow::Result<Vec<Fetched>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        stream.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(stream)?;
        let name = rustls_pki_types::ServerName::try_from(sni.to_string())?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .context("TLS handshake with the proxy")?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let mut out = Vec::new();
        if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            for req in requests {
                out.push(read(send.send_request(req).await?, keep).await?);
            }
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            for mut req in requests {
                // HTTP/1.1 origin form: the path in the request line, the name in Host.
                let origin = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_else(|| "/".into());
                *req.uri_mut() = origin.parse()?;
                send.ready().await?;
                out.push(read(send.send_request(req).await?, keep).await?);
            }
        }
        Ok(out)
    }
}

async fn read(resp: Response<Incoming>, keep: usize) -> anyhow::Result<Fetched> {
    let start = std::time::Instant::now();
    let (parts, mut body) = resp.into_parts();
    let mut kept = Vec::new();
    let mut len = 0u64;
    let mut first = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            if first.is_none() && !data.is_empty() {
                first = Some(start.elapsed());
            }
            if kept.len() < keep {
                kept.extend_from_slice(&data[..data.len().min(keep - kept.len())]);
            }
        }
    }
    Ok(Fetched {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(kept),
        len,
        version: parts.version,
        first_byte_after: first,
        total: start.elapsed(),
    })
}

/// A request for `https://host/path` (origin form; the Host header names `host`).
pub fn get(method: &str, host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("https://{host}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// A body sent as these separate frames (HTTP/1.1 chunks, HTTP/2 DATA
/// frames), `gap` apart so that they also arrive apart.
pub fn frames(chunks: Vec<Vec<u8>>, gap: Duration) -> BoxBody<Bytes, std::convert::Infallible> {
    // Lazy: nothing runs until the body is polled (inside the lab's runtime).
    let stream = futures_util::stream::unfold(
        (chunks.into_iter(), false),
        move |(mut it, wait)| async move {
            if wait {
                tokio::time::sleep(gap).await;
            }
            let c = it.next()?;
            Some((Ok(Frame::data(Bytes::from(c))), (it, true)))
        },
    );
    StreamBody::new(stream).boxed()
}

/// Where the fake internet's HTTPS server is.
pub fn addr() -> SocketAddr {
    SocketAddr::new(crate::lab::WEB_V4.into(), 443)
}
