//! Which addresses the firewall may open an upstream connection to.
//!
//! The agent controls DNS for any domain it owns, so an allowed name can
//! resolve to anything. Security rule: whatever DNS says, cell-proxy never
//! connects (transparent, explicit, passthrough or splice) to
//!
//! - loopback, unspecified (`0.0.0.0/8`, `::`), link-local (`169.254.0.0/16`
//!   — cloud metadata services live there — and `fe80::/10`), multicast,
//!   broadcast and the reserved `240.0.0.0/4`;
//! - the firewall's own addresses, on any interface, its gateways (under
//!   qemu's user-mode networking the gateway, 10.0.2.2, *is* the host), and
//!   the agent link;
//! - the synthetic pool (its addresses lead back into cell itself);
//!
//! and, unless the entry says `privateUpstream`, to private and shared
//! ranges: RFC 1918, RFC 6598 (`100.64.0.0/10`), `192.0.0.0/24`, the
//! benchmarking range `198.18.0.0/15`, ULA (`fc00::/7`). IPv4-mapped and
//! NAT64 (`64:ff9b::/96`) IPv6 addresses are judged by the IPv4 address
//! inside. No opt-in reaches the first two groups.
//!
//! The check is made on each address actually being connected to, after
//! resolution, so a name that resolves to a public address once and to
//! 127.0.0.1 the next time (DNS rebinding) is refused the second time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

/// Why an upstream address is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Never reachable, whatever the policy says.
    Never(&'static str),
    /// A private or shared range; an entry may opt in with `privateUpstream`.
    Private(&'static str),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Never(what) => write!(f, "{what}: never an upstream"),
            Refusal::Private(what) => write!(
                f,
                "{what}: a private address, refused unless the entry sets `privateUpstream`"
            ),
        }
    }
}

/// What the firewall knows about its own place in the network.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Every address of the firewall (all interfaces).
    pub local: Vec<IpAddr>,
    /// The firewall's gateways (default routes).
    pub gateways: Vec<IpAddr>,
    /// The agent link's networks.
    pub agent_nets: Vec<IpNet>,
    /// The synthetic pool.
    pub pool: Option<Ipv4Net>,
}

impl Guard {
    /// `None` if `ip` may be connected to; `private_ok` is the entry's opt-in.
    pub fn check(&self, ip: IpAddr, private_ok: bool) -> Option<Refusal> {
        let ip = canonical(ip);
        let class = classify(ip);
        if let Some(never @ Refusal::Never(_)) = class {
            return Some(never);
        }
        if self.local.iter().any(|l| canonical(*l) == ip) {
            return Some(Refusal::Never("the firewall's own address"));
        }
        if self.gateways.iter().any(|g| canonical(*g) == ip) {
            return Some(Refusal::Never(
                "the firewall's gateway (under qemu user-mode networking, the host itself)",
            ));
        }
        if self.agent_nets.iter().any(|n| n.contains(&ip)) {
            return Some(Refusal::Never("the agent link"));
        }
        if let (IpAddr::V4(v4), Some(pool)) = (ip, self.pool)
            && pool.contains(&v4)
        {
            return Some(Refusal::Never("the synthetic pool"));
        }
        class.filter(|_| !private_ok)
    }
}

/// An IPv4-mapped or NAT64 IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

fn in4(ip: Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    Ipv4Net::new(Ipv4Addr::from(net), len).is_ok_and(|n| n.contains(&ip))
}

/// The address classes of the module docs, by address alone.
pub fn classify(ip: IpAddr) -> Option<Refusal> {
    match canonical(ip) {
        IpAddr::V4(v4) => classify4(v4),
        IpAddr::V6(v6) => classify6(v6),
    }
}

fn classify4(ip: Ipv4Addr) -> Option<Refusal> {
    use Refusal::{Never, Private};
    let never: [([u8; 4], u8, &'static str); 6] = [
        ([0, 0, 0, 0], 8, "an unspecified address (0.0.0.0/8)"),
        ([127, 0, 0, 0], 8, "loopback"),
        (
            [169, 254, 0, 0],
            16,
            "link-local (169.254.0.0/16, cloud metadata)",
        ),
        ([224, 0, 0, 0], 4, "multicast"),
        ([255, 255, 255, 255], 32, "broadcast"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
    ];
    let private: [([u8; 4], u8, &'static str); 6] = [
        ([10, 0, 0, 0], 8, "10.0.0.0/8 (RFC 1918)"),
        ([172, 16, 0, 0], 12, "172.16.0.0/12 (RFC 1918)"),
        ([192, 168, 0, 0], 16, "192.168.0.0/16 (RFC 1918)"),
        ([100, 64, 0, 0], 10, "100.64.0.0/10 (shared, RFC 6598)"),
        (
            [192, 0, 0, 0],
            24,
            "192.0.0.0/24 (IETF protocol assignments)",
        ),
        ([198, 18, 0, 0], 15, "198.18.0.0/15 (benchmarking)"),
    ];
    // Broadcast before reserved: 255.255.255.255 is both.
    if let Some((_, _, what)) = never.iter().find(|(n, l, _)| in4(ip, *n, *l)) {
        return Some(Never(what));
    }
    private
        .iter()
        .find(|(n, l, _)| in4(ip, *n, *l))
        .map(|(_, _, what)| Private(what))
}

fn classify6(ip: Ipv6Addr) -> Option<Refusal> {
    use Refusal::{Never, Private};
    let s = ip.segments();
    if ip.is_unspecified() {
        Some(Never("an unspecified address (::)"))
    } else if ip.is_loopback() {
        Some(Never("loopback"))
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some(Never("link-local (fe80::/10)"))
    } else if s[0] & 0xff00 == 0xff00 {
        Some(Never("multicast"))
    } else if s[0] & 0xffc0 == 0xfec0 {
        Some(Never("site-local (fec0::/10, deprecated)"))
    } else if s[0] & 0xfe00 == 0xfc00 {
        Some(Private("fc00::/7 (unique local)"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Every class of the module docs, with and without the opt-in; public
    /// and documentation addresses pass.
    #[test]
    fn addresses_are_classified_and_the_opt_in_reaches_only_private_ranges() {
        let g = Guard {
            local: vec![ip("192.0.2.1"), ip("10.89.0.1"), ip("2001:db8:1::1")],
            gateways: vec![ip("10.0.2.2")],
            agent_nets: vec![
                "10.89.0.0/24".parse().unwrap(),
                "fd89::/64".parse().unwrap(),
            ],
            pool: Some("198.18.0.0/16".parse().unwrap()),
        };
        for never in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",  // the firewall's uplink
            "10.89.0.1",  // the firewall on the agent link
            "10.89.0.2",  // the agent
            "198.18.0.7", // the synthetic pool
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "fd89::2",       // the agent link (a ULA, but never opt-in)
            "2001:db8:1::1", // the firewall's own v6
            "10.0.2.2",      // the gateway: under qemu user networking, the host
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "64:ff9b::7f00:1",
        ] {
            for opt_in in [false, true] {
                assert!(
                    matches!(g.check(ip(never), opt_in), Some(Refusal::Never(_))),
                    "{never} (opt-in {opt_in}): {:?}",
                    g.check(ip(never), opt_in)
                );
            }
        }
        for private in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "198.19.0.1",
            "fd00::1",
            "fc00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                matches!(g.check(ip(private), false), Some(Refusal::Private(_))),
                "{private}"
            );
            assert_eq!(
                g.check(ip(private), true),
                None,
                "{private} with the opt-in"
            );
        }
        for public in [
            "203.0.113.10",
            "192.0.2.53",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "11.0.0.1",
            "2001:db8:2::10",
            "2606:4700::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(g.check(ip(public), false), None, "{public}");
        }
    }

    #[test]
    fn refusals_say_what_and_how() {
        let r = classify(ip("10.1.2.3")).unwrap().to_string();
        assert!(
            r.contains("10.0.0.0/8") && r.contains("privateUpstream"),
            "{r}"
        );
        let r = classify(ip("169.254.169.254")).unwrap().to_string();
        assert!(r.contains("cloud metadata") && r.contains("never"), "{r}");
    }
}
