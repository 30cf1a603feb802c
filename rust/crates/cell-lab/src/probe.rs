//! What the agent tries: DNS questions, TCP connects, UDP datagrams, pings.
//! Each probe runs inside a namespace and reports how it ended and how fast.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use crate::netns::Netns;

/// How a connection attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (TCP), or got a datagram back (UDP).
    Open,
    /// Failed with this error (refused, unreachable, …).
    Failed(ErrorKind),
    /// Nothing came back before the timeout: the failure mode we never want.
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub outcome: Outcome,
    pub elapsed: Duration,
}

impl Probe {
    /// Failed with an error (not a timeout) within `limit`.
    pub fn failed_fast(&self, limit: Duration) -> bool {
        matches!(self.outcome, Outcome::Failed(_)) && self.elapsed < limit
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        k => Outcome::Failed(k),
    }
}

/// TCP connect to `addr` from inside `ns`; on success sends `ping` and waits for the echo.
pub fn tcp(ns: &Netns, addr: SocketAddr, timeout: Duration) -> anyhow::Result<Probe> {
    ns.run(move || {
        let start = Instant::now();
        let outcome = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(timeout));
                let _ = s.write_all(b"ping");
                let mut buf = [0u8; 4];
                match s.read_exact(&mut buf) {
                    Ok(()) => Outcome::Open,
                    Err(e) => classify(&e),
                }
            }
            Err(e) => classify(&e),
        };
        Probe {
            outcome,
            elapsed: start.elapsed(),
        }
    })
}

/// Sends one UDP datagram to `addr` from inside `ns` and waits for a reply or an ICMP error.
pub fn udp(
    ns: &Netns,
    addr: SocketAddr,
    payload: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<Probe> {
    ns.run(move || -> std::io::Result<Probe> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(bind)?;
        s.connect(addr)?;
        s.set_read_timeout(Some(timeout))?;
        let start = Instant::now();
        let outcome = match s.send(&payload) {
            Err(e) => classify(&e),
            Ok(_) => {
                let mut buf = [0u8; 2048];
                match s.recv(&mut buf) {
                    Ok(_) => Outcome::Open,
                    Err(e) => classify(&e),
                }
            }
        };
        Ok(Probe {
            outcome,
            elapsed: start.elapsed(),
        })
    })?
    .context("udp probe")
}

/// Result of a ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    Reply,
    /// ICMP destination unreachable with this code (13 = administratively prohibited).
    Unreachable(u8),
    TimedOut,
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo request from inside `ns` over a raw socket (needs root).
pub fn ping(ns: &Netns, dst: Ipv4Addr, timeout: Duration) -> anyhow::Result<(Ping, Duration)> {
    ns.run(move || -> anyhow::Result<(Ping, Duration)> {
        use socket2::{Domain, Protocol, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
            .context("raw ICMP socket (needs root)")?;
        let mut pkt = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'c', b'e', b'l', b'l'];
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        let start = Instant::now();
        sock.send_to(&pkt, &SocketAddrV4::new(dst, 0).into())?;
        let raw: std::net::UdpSocket = sock.into();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok((Ping::TimedOut, start.elapsed()));
            }
            raw.set_read_timeout(Some(left))?;
            let mut buf = [0u8; 1500];
            let n = match raw.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok((Ping::TimedOut, start.elapsed()));
                }
                Err(e) => return Err(e.into()),
            };
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            if n < ihl + 2 {
                continue;
            }
            match buf[ihl] {
                0 => return Ok((Ping::Reply, start.elapsed())),
                3 => return Ok((Ping::Unreachable(buf[ihl + 1]), start.elapsed())),
                _ => continue,
            }
        }
    })?
}

/// Reads SO_ORIGINAL_DST of a redirected connection.
pub fn original_dst(stream: &std::net::TcpStream) -> anyhow::Result<SocketAddrV4> {
    use nix::sys::socket::{getsockopt, sockopt::OriginalDst};
    let raw = getsockopt(stream, OriginalDst).context("SO_ORIGINAL_DST")?;
    let ip = Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
    Ok(SocketAddrV4::new(ip, u16::from_be(raw.sin_port)))
}

/// DNS transport for [`dns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Asks `server` one question from inside `ns` (with EDNS, like modern stubs).
pub fn dns(
    ns: &Netns,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    transport: Transport,
) -> anyhow::Result<Message> {
    let name = Name::from_ascii(name).with_context(|| format!("bad name {name}"))?;
    dns_name(ns, server, name, qtype, transport)
}

/// Like [`dns`], for a name built from raw labels (bytes no hostname may contain).
pub fn dns_name(
    ns: &Netns,
    server: SocketAddr,
    name: Name,
    qtype: RecordType,
    transport: Transport,
) -> anyhow::Result<Message> {
    dns_query(ns, server, name, qtype, transport, Some(1232))
}

/// The general form: `edns_payload` is the advertised UDP size, `None` for a
/// query without EDNS (the 512-byte limit of RFC 1035).
pub fn dns_query(
    ns: &Netns,
    server: SocketAddr,
    name: Name,
    qtype: RecordType,
    transport: Transport,
    edns_payload: Option<u16>,
) -> anyhow::Result<Message> {
    let mut msg = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(name, qtype));
    msg.metadata.recursion_desired = true;
    if let Some(size) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        msg.set_edns(edns);
    }
    let wire = msg.to_vec()?;
    let id = msg.metadata.id;
    let timeout = Duration::from_secs(3);
    let reply = ns.run(move || -> anyhow::Result<Vec<u8>> {
        match transport {
            Transport::Udp => {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(timeout))?;
                s.connect(server)?;
                s.send(&wire)?;
                let mut buf = vec![0u8; 4096];
                let n = s.recv(&mut buf).context("no DNS answer over UDP")?;
                buf.truncate(n);
                Ok(buf)
            }
            Transport::Tcp => {
                let mut s = TcpStream::connect_timeout(&server, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&wire);
                s.write_all(&framed)?;
                let mut len = [0u8; 2];
                s.read_exact(&mut len)?;
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut buf)?;
                Ok(buf)
            }
        }
    })??;
    let answer = Message::from_vec(&reply)?;
    if answer.metadata.id != id {
        bail!("DNS answer with the wrong id");
    }
    Ok(answer)
}

fn rand_id() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u16
}

/// The IPv4 addresses in an answer.
pub fn a_records(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The Extended DNS Error text of an answer, if any.
pub fn ede_text(msg: &Message) -> Option<String> {
    use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
    let edns = msg.edns.as_ref()?;
    match edns.option(EdnsCode::Unknown(15))? {
        EdnsOption::Unknown(_, data) if data.len() >= 2 => {
            Some(String::from_utf8_lossy(&data[2..]).into_owned())
        }
        _ => None,
    }
}
