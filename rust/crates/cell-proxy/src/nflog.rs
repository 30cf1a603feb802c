//! Rejected packets as event lines.
//!
//! The ruleset's reject chain logs (at most 10 a second, burst 20) to an
//! NFLOG group; this reads that group over netlink and writes one `reject`
//! event per packet: who, to where, which protocol, and why. The rate limit
//! in the ruleset bounds what the agent can make us write.

use std::net::IpAddr;

use anyhow::{Context, bail};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, PacketNla, Timeout, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, constants::NETLINK_NETFILTER};
use serde_json::Value;

use crate::events::{EventLog, event};

fn send_config(
    socket: &Socket,
    family: NetfilterProtoFamily,
    group: u16,
    cmds: Vec<netlink_packet_netfilter::nflog::ConfigNla>,
) -> anyhow::Result<()> {
    let packet = config_request(family, group, cmds);
    let mut buf = vec![0; packet.header.length as usize];
    packet.serialize(&mut buf[..]);
    socket
        .send(&buf[..], 0)
        .context("sending an NFLOG config request")?;
    let mut reply = vec![0; 4096];
    let n = socket
        .recv(&mut &mut reply[..], 0)
        .context("reading the NFLOG config reply")?;
    let msg = <NetlinkMessage<NetfilterMessage>>::deserialize(&reply[..n])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let NetlinkPayload::Error(e) = msg.payload
        && e.code.is_some()
    {
        bail!("the kernel refused the NFLOG request: {e:?}");
    }
    Ok(())
}

/// Binds NFLOG `group` in the current network namespace.
pub fn open(group: u16) -> anyhow::Result<Socket> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
        // Legacy per-family binding; newer kernels ignore it, older ones need it.
        let _ = send_config(&socket, family, 0, vec![ConfigCmd::PfBind.into()]);
    }
    send_config(
        &socket,
        NetfilterProtoFamily::Unspec,
        group,
        // Headers are enough (128 bytes); flush within 50 ms instead of the default second.
        vec![
            ConfigCmd::Bind.into(),
            ConfigMode::new_packet(128).into(),
            Timeout::new(5).into(),
        ],
    )
    .with_context(|| format!("binding NFLOG group {group} (needs CAP_NET_ADMIN)"))?;
    Ok(socket)
}

/// What a logged packet was, as event fields.
fn describe(payload: &[u8]) -> Vec<(&'static str, Value)> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ip(payload) else {
        return vec![("proto", "unparsed".into())];
    };
    let (src, dst): (IpAddr, IpAddr) = match &p.net {
        Some(NetSlice::Ipv4(v4)) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        _ => return vec![("proto", "unparsed".into())],
    };
    let (proto, port): (&str, Option<u16>) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => ("tcp", Some(t.destination_port())),
        Some(TransportSlice::Udp(u)) => ("udp", Some(u.destination_port())),
        Some(TransportSlice::Icmpv4(_)) => ("icmp", None),
        Some(TransportSlice::Icmpv6(_)) => ("icmpv6", None),
        _ => ("other", None),
    };
    let dst_text = match (port, dst) {
        (Some(p), IpAddr::V6(a)) => format!("[{a}]:{p}"),
        (Some(p), a) => format!("{a}:{p}"),
        (None, a) => a.to_string(),
    };
    let reason = match (proto, port, dst.is_ipv6()) {
        (_, _, true) => "IPv6 is not routed for the agent",
        ("udp", Some(443), _) => "QUIC (UDP 443) is not proxied; clients fall back to TCP",
        ("udp", Some(53), _) | ("tcp", Some(53), _) => {
            "only the firewall's DNS server may be asked"
        }
        ("tcp", _, _) => {
            "no entry allows this address and port; hosts are reached by name through DNS"
        }
        _ => "not allowed by the policy",
    };
    vec![
        ("client", src.to_string().into()),
        ("dst", dst_text.into()),
        ("proto", proto.into()),
        ("decision", "deny".into()),
        ("reason", reason.into()),
    ]
}

/// Reads rejected packets forever on the calling (dedicated) thread.
pub fn run(socket: Socket, events: EventLog) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("NFLOG receive failed, rejected packets are no longer logged: {e}");
                return;
            }
        };
        let mut offset = 0;
        while offset < n {
            let Ok(msg) = <NetlinkMessage<NetfilterMessage>>::deserialize(&buf[offset..n]) else {
                break;
            };
            let len = msg.header.length as usize;
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = &msg.payload
                && let Some(payload) = nlas.iter().find_map(|n| match n {
                    PacketNla::Payload(p) => Some(p),
                    _ => None,
                })
            {
                let spoofed = nlas.iter().any(|n| {
                    matches!(n, PacketNla::Prefix(p)
                        if p.to_bytes().starts_with(cell_policy::nft::SPOOF_PREFIX.as_bytes()))
                });
                let mut ev = event(if spoofed { "spoof" } else { "reject" }, []);
                for (k, v) in describe(payload) {
                    ev.insert(k.into(), v);
                }
                if spoofed {
                    ev.insert(
                        "reason".into(),
                        "the source address is not the agent's own: dropped, never answered".into(),
                    );
                }
                events.emit(ev);
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}
