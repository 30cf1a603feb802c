//! The fake internet: services in the internet namespace that record every
//! query and connection they see, so tests can prove what never arrived.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Name → (addresses, TTL).
type Records = HashMap<String, (Vec<Ipv4Addr>, u32)>;

/// An authoritative server for test zones that logs every question it receives.
#[derive(Clone, Default)]
pub struct FakeResolver {
    records: Arc<Mutex<Records>>,
    log: Arc<Mutex<Vec<(String, RecordType)>>>,
}

impl FakeResolver {
    /// A name listed several times gets several A records.
    pub fn new(records: &[(&str, Ipv4Addr)]) -> Self {
        let mut map: HashMap<String, (Vec<Ipv4Addr>, u32)> = HashMap::new();
        for (n, a) in records {
            map.entry(n.to_ascii_lowercase())
                .or_insert_with(|| (Vec::new(), 30))
                .0
                .push(*a);
        }
        FakeResolver {
            records: Arc::new(Mutex::new(map)),
            log: Arc::default(),
        }
    }

    /// Answers `name` with `addrs` from now on, with TTL 0 so that nobody
    /// caches it: a hostile domain's DNS, which can say something else on
    /// every query (DNS rebinding).
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr]) {
        self.records
            .lock()
            .expect("records lock")
            .insert(name.to_ascii_lowercase(), (addrs.to_vec(), 0));
    }

    /// Every (name, type) asked so far, names lowercased without the trailing dot.
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.log.lock().expect("log lock").clone()
    }

    /// Serves on UDP and TCP sockets that were bound in the internet namespace.
    pub fn serve(
        &self,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> anyhow::Result<()> {
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let mut server = Server::new(self.clone());
        server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
        server.register_listener(
            tokio::net::TcpListener::from_std(tcp)?,
            Duration::from_secs(5),
            16,
        );
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        Ok(())
    }
}

#[async_trait::async_trait]
impl RequestHandler for FakeResolver {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let mut records = Vec::new();
        match request.request_info() {
            Ok(info) => {
                let name: Name = info.query.name().into();
                let key = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
                let qtype = info.query.query_type();
                self.log
                    .lock()
                    .expect("log lock")
                    .push((key.clone(), qtype));
                let known = self
                    .records
                    .lock()
                    .expect("records lock")
                    .get(&key)
                    .cloned();
                match known {
                    Some((addrs, ttl)) if qtype == RecordType::A => {
                        records.extend(
                            addrs
                                .iter()
                                .map(|a| Record::from_rdata(name.clone(), ttl, RData::A(A(*a)))),
                        );
                    }
                    Some(_) => {}
                    None => metadata.response_code = ResponseCode::NXDomain,
                }
            }
            Err(_) => metadata.response_code = ResponseCode::FormErr,
        }
        let builder = MessageResponseBuilder::from_message_request(request);
        let msg = builder.build(metadata, records.iter(), [], [], []);
        response.send_response(msg).await.unwrap_or_else(|_| {
            ResponseInfo::from(Header {
                metadata: Metadata::response_from_request(&request.metadata),
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// What a listener saw: one line per connection or datagram.
#[derive(Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("recorder lock").clone()
    }

    fn push(&self, line: String) {
        self.seen.lock().expect("recorder lock").push(line);
    }

    /// Accepts TCP connections, records `tcp <local> from <peer>`, and echoes
    /// what it receives (bounded to 64 KiB a connection).
    pub fn serve_tcp(&self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local = listener.local_addr()?;
        let rec = self.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, peer)) = listener.accept().await {
                rec.push(format!("tcp {local} from {peer}"));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut total = 0usize;
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await
                    {
                        if n == 0 || total > 65536 || conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        total += n;
                    }
                });
            }
        });
        Ok(())
    }

    /// Records `udp <local> from <peer>` for every datagram; echoes it back.
    pub fn serve_udp(&self, socket: std::net::UdpSocket) -> anyhow::Result<()> {
        socket.set_nonblocking(true)?;
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let local = socket.local_addr()?;
        let rec = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                rec.push(format!("udp {local} from {peer}"));
                let _ = socket.send_to(&buf[..n], peer).await;
            }
        });
        Ok(())
    }
}

/// Addresses a recorder listens on, for reading its log.
pub type Listeners = HashMap<SocketAddr, Recorder>;
