//! Shared by the lab tests that drive the real `cell-proxy` (proxy.rs,
//! attacks.rs): resolving through the firewall's DNS, CONNECT through the
//! explicit port, and waiting for event lines.
#![allow(dead_code)] // not every test binary uses every helper

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::time::{Duration, Instant};

use cell_lab::Lab;
use cell_lab::lab::{EXPLICIT_PORT, FW_AGENT_V4, fw_dns};
use cell_lab::probe::{self, Transport};
use hickory_proto::rr::RecordType;

/// The synthetic address the agent's DNS gives for `name`.
pub fn resolve(lab: &Lab, name: &str) -> Ipv4Addr {
    let m = probe::dns(
        &lab.agent,
        fw_dns(),
        &format!("{name}."),
        RecordType::A,
        Transport::Udp,
    )
    .unwrap();
    *probe::a_records(&m)
        .first()
        .unwrap_or_else(|| panic!("{name} did not resolve: {m:?}"))
}

pub fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// CONNECT through the explicit proxy; the response head (and a denial's body).
pub fn connect_via_proxy(lab: &Lab, target: &str) -> (String, std::net::TcpStream) {
    let mut c = lab.agent_connect(at(FW_AGENT_V4, EXPLICIT_PORT)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).unwrap();
        return (head + &String::from_utf8_lossy(&body), c);
    }
    (head, c)
}

/// The event log once `done` holds for it (events are written by their own
/// thread), or panics after 3 s showing what is there.
pub fn events_until(
    lab: &Lab,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let ev = lab.events();
        if done(&ev) {
            return ev;
        }
        assert!(Instant::now() < deadline, "events never arrived: {ev:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
