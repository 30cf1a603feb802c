//! Compiles a [`Policy`] into the firewall's nftables ruleset, and applies it.
//!
//! One table, `inet cell`, owned entirely by cell and replaced in a single
//! transaction (`add table; delete table; add table; …`), so there is never a
//! moment with half a ruleset. The security rules it enforces on the
//! agent-facing interface:
//!
//! 1. The agent may reach the firewall itself only on the daemon's DNS port
//!    (UDP and TCP) and its transparent and explicit proxy ports.
//! 2. TCP to the synthetic pool on a port some entry allows is redirected to
//!    the transparent proxy, which makes the per-host decision.
//! 3. Nothing is forwarded except to `cidr` entries (protocol and port).
//!    This is decided before routing (a filter chain on the prerouting hook,
//!    after the redirect): a packet for an address that is not the
//!    firewall's own is refused there, so it fails fast even when the
//!    firewall does not forward at all (`ip_forward=0`, the NixOS module's
//!    setting without `cidr` entries), where the kernel would otherwise drop
//!    it in routing and the agent would wait for a timeout. The forward chain
//!    checks the same entries again.
//! 4. Everything else — other addresses, other DNS servers, UDP (QUIC
//!    included), ICMP, IPv6 — is rejected at once: TCP with a reset, the rest
//!    with ICMP administratively-prohibited, and logged at a bounded rate to
//!    an NFLOG group that cell-proxy turns into `reject` event lines.
//!    IPv6 gets exactly the same treatment (only neighbour discovery is let
//!    through, so that a v6 connection fails with a reset rather than an ND
//!    timeout); it is never a bypass.
//! 5. Before any of that — before conntrack, before anything could answer —
//!    a second table, `netdev <table>`, hooks the agent interface's ingress:
//!    a packet whose source is not the agent's own address (IPv4 or IPv6) is
//!    counted, logged at a bounded rate (NFLOG, `spoof` events) and dropped,
//!    so a forged internet source never makes the firewall send anything out
//!    of its uplink. Link-local IPv6 sources may only do neighbour discovery;
//!    anything else from them is refused right there, on the link it came in
//!    on (a reset or ICMPv6 admin-prohibited: a reply routed by destination
//!    would pick any interface's fe80::/64 route, the uplink included, and the
//!    agent would wait). ARP requests are answered only for the firewall's
//!    listen address, never for its other (uplink) addresses.
//!
//! Both tables are replaced in the same transaction.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, SetItem,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Limit, Log, Match, NAT, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};
use sha2::{Digest, Sha256};

use crate::document::Protocol;
use crate::policy::Policy;

/// Where the firewall sits: deployment facts that are not policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallParams {
    /// Table name (family `inet`); `cell` unless several cells share a kernel.
    pub table: String,
    /// The interface facing the agent.
    pub agent_iface: String,
    /// The firewall's IPv4 address on the agent link (where the daemon listens).
    pub listen: Ipv4Addr,
    pub dns_port: u16,
    pub transparent_port: u16,
    pub explicit_port: u16,
    /// NFLOG group rejected packets are logged to (read by cell-proxy as `reject` events).
    pub nflog_group: u16,
    /// The agent's own addresses on the link: the only sources accepted from it.
    pub agent_addrs: Vec<IpAddr>,
}

/// Prefix of the fingerprint comment that marks a ruleset as ours.
const FINGERPRINT_PREFIX: &str = "cell-ruleset ";
/// Log prefix of rejected packets (kernel log / journald on the firewall).
pub const LOG_PREFIX: &str = "cell-reject: ";
/// Log prefix of packets dropped for a forged source address.
pub const SPOOF_PREFIX: &str = "cell-spoof: ";

/// The sysctls a firewall host sets so that every reject fails fast: the
/// kernel's ICMP rate masks, the defaults (`6168`, `0-1,3-127`) less
/// destination-unreachable (IPv4 type 3, IPv6 type 1), the type of every
/// ICMP reject. Left in the mask, those answers pass two limits: one per
/// destination (`icmp_ratelimit`) and a global token bucket (`icmp_msgs_burst`
/// credits, each answer costing a random 0–2, refilled no sooner than every
/// 20 ms), and a burst of rejected datagrams meets a silent drop — a timeout
/// for the agent. The agent is the only destination of these answers (forged
/// sources are dropped before anything answers), one per packet it sent.
pub const FAIL_FAST_SYSCTLS: [(&str, &str); 2] = [
    ("net.ipv4.icmp_ratemask", "6160"),
    ("net.ipv6.icmp.ratemask", "0,3-127"),
];

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

fn one_of(left: Expression<'static>, items: Vec<Expression<'static>>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: Expression::Named(NamedExpression::Set(
            items.into_iter().map(SetItem::Element).collect(),
        )),
        op: Operator::IN,
    })
}

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn ports(p: &[u16]) -> Expression<'static> {
    if let [one] = p {
        Expression::Number(u32::from(*one))
    } else {
        Expression::Named(NamedExpression::Set(
            p.iter()
                .map(|n| SetItem::Element(Expression::Number(u32::from(*n))))
                .collect(),
        ))
    }
}

fn net(n: ipnet::Ipv4Net) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(n.network().to_string())),
        len: u32::from(n.prefix_len()),
    }))
}

fn ct_state(states: &[&'static str]) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("state"),
            family: None,
            dir: None,
        })),
        right: Expression::List(
            states
                .iter()
                .map(|st| Expression::String(Cow::Borrowed(*st)))
                .collect(),
        ),
        op: Operator::IN,
    })
}

/// Accept IPv6 neighbour solicitations and advertisements (and nothing else).
fn neighbour_discovery() -> Vec<Statement<'static>> {
    vec![
        is(meta(MetaKey::Nfproto), s("ipv6")),
        is(meta(MetaKey::L4proto), s("ipv6-icmp")),
        one_of(
            field("icmpv6", "type"),
            vec![s("nd-neighbor-solicit"), s("nd-neighbor-advert")],
        ),
        accept(),
    ]
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn jump(target: &'static str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Borrowed(target),
    })
}

struct Builder<'p> {
    params: &'p FirewallParams,
    family: NfFamily,
    objects: Vec<NfListObject<'static>>,
}

impl Builder<'_> {
    fn chain(&mut self, name: &'static str, base: Option<(NfChainType, NfHook, i32)>) {
        let (ty, hook, prio) = match base {
            Some((t, h, p)) => (Some(t), Some(h), Some(p)),
            None => (None, None, None),
        };
        let dev =
            (hook == Some(NfHook::Ingress)).then(|| Cow::Owned(self.params.agent_iface.clone()));
        self.objects.push(NfListObject::Chain(Chain {
            family: self.family,
            dev,
            table: Cow::Owned(self.params.table.clone()),
            name: Cow::Borrowed(name),
            _type: ty,
            hook,
            prio,
            policy: base.map(|_| NfChainPolicy::Accept),
            ..Chain::default()
        }));
    }

    fn rule(
        &mut self,
        chain: &'static str,
        expr: Vec<Statement<'static>>,
        comment: Option<String>,
    ) {
        self.objects.push(NfListObject::Rule(Rule {
            family: self.family,
            table: Cow::Owned(self.params.table.clone()),
            chain: Cow::Borrowed(chain),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: comment.map(Cow::Owned),
        }));
    }
}

/// The compiled ruleset: the JSON document `nft -j -f` takes, and its fingerprint.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub nftables: Nftables<'static>,
    pub fingerprint: String,
}

impl Ruleset {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.nftables).expect("nftables schema serializes")
    }
}

/// Compiles the policy into the `inet <table>` ruleset.
pub fn compile(policy: &Policy, params: &FirewallParams) -> Ruleset {
    let agent = || s(params.agent_iface.clone());
    let mut b = Builder {
        params,
        family: NfFamily::INet,
        objects: Vec::new(),
    };

    // Base chains. Everything not arriving on the agent interface is left alone.
    b.chain(
        "prerouting",
        Some((NfChainType::NAT, NfHook::Prerouting, -100)),
    );
    b.chain(
        "route_guard",
        Some((NfChainType::Filter, NfHook::Prerouting, 0)),
    );
    b.chain("input", Some((NfChainType::Filter, NfHook::Input, 0)));
    b.chain("forward", Some((NfChainType::Filter, NfHook::Forward, 0)));
    b.chain(
        "postrouting",
        Some((NfChainType::NAT, NfHook::Postrouting, 100)),
    );
    b.chain("agent_in", None);
    b.chain("agent_fwd", None);
    b.chain("agent_route", None);
    b.chain("reject_agent", None);

    // 2. Redirect proxied ports on the synthetic pool to the transparent proxy.
    let proxied = policy.proxied_ports();
    if !proxied.is_empty() {
        b.rule(
            "prerouting",
            vec![
                is(meta(MetaKey::Iifname), agent()),
                is(field("ip", "daddr"), net(policy.dns.synthetic_pool)),
                is(field("tcp", "dport"), ports(&proxied)),
                Statement::Redirect(Some(NAT {
                    addr: None,
                    family: None,
                    port: Some(Expression::Number(u32::from(params.transparent_port))),
                    flags: None,
                })),
            ],
            Some("synthetic pool to the transparent proxy".into()),
        );
    }

    // input: the fingerprint rides on the dispatch rule's comment.
    b.rule(
        "input",
        vec![is(meta(MetaKey::Iifname), agent()), jump("agent_in")],
        None,
    );

    // 1. What the agent may reach on the firewall itself.
    b.rule(
        "agent_in",
        vec![ct_state(&["established", "related"]), accept()],
        None,
    );
    b.rule(
        "agent_in",
        neighbour_discovery(),
        Some("IPv6 neighbour discovery only, so v6 fails fast instead of timing out".into()),
    );
    let listen = || s(params.listen.to_string());
    b.rule(
        "agent_in",
        vec![
            is(field("ip", "daddr"), listen()),
            is(
                field("udp", "dport"),
                Expression::Number(params.dns_port.into()),
            ),
            accept(),
        ],
        Some("DNS".into()),
    );
    let mut tcp_ports = vec![
        params.dns_port,
        params.transparent_port,
        params.explicit_port,
    ];
    tcp_ports.sort_unstable();
    tcp_ports.dedup();
    b.rule(
        "agent_in",
        vec![
            is(field("ip", "daddr"), listen()),
            is(field("tcp", "dport"), ports(&tcp_ports)),
            accept(),
        ],
        Some("DNS over TCP, transparent and explicit proxy".into()),
    );
    b.rule("agent_in", vec![jump("reject_agent")], None);

    // 3. Forwarding: only to cidr entries; return traffic to the agent only when established.
    b.rule(
        "forward",
        vec![is(meta(MetaKey::Iifname), agent()), jump("agent_fwd")],
        None,
    );
    b.rule(
        "forward",
        vec![
            is(meta(MetaKey::Oifname), agent()),
            ct_state(&["established", "related"]),
            accept(),
        ],
        None,
    );
    b.rule(
        "forward",
        vec![is(meta(MetaKey::Oifname), agent()), Statement::Drop(None)],
        Some("nothing new is forwarded towards the agent".into()),
    );
    b.rule(
        "agent_fwd",
        vec![ct_state(&["established", "related"]), accept()],
        None,
    );
    for c in &policy.cidr {
        let proto = match c.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        b.rule(
            "agent_fwd",
            vec![
                is(field("ip", "daddr"), net(c.net)),
                is(field(proto, "dport"), ports(&c.ports)),
                accept(),
            ],
            Some(c.origin.to_string()),
        );
    }
    b.rule("agent_fwd", vec![jump("reject_agent")], None);

    // 3b. The same decision before routing (priority 0, after the redirect
    // at -100 made proxied connections local): what is for the firewall
    // itself goes on to the input chain, a cidr entry on to forward,
    // everything else is refused here, whatever the forwarding sysctls say.
    b.rule(
        "route_guard",
        vec![is(meta(MetaKey::Iifname), agent()), jump("agent_route")],
        None,
    );
    b.rule(
        "agent_route",
        vec![ct_state(&["established", "related"]), accept()],
        None,
    );
    b.rule(
        "agent_route",
        neighbour_discovery(),
        Some("neighbour discovery, also to link-local addresses".into()),
    );
    // `fib daddr type`: one flag only, so the JSON (a set in the schema)
    // and the fingerprint stay deterministic. Any of the firewall's own
    // addresses counts as local here; agent_in then admits only the listen
    // address's ports.
    b.rule(
        "agent_route",
        vec![
            one_of(
                Expression::Named(NamedExpression::Fib(Fib {
                    result: FibResult::Type,
                    flags: [FibFlag::Daddr].into_iter().collect(),
                })),
                vec![s("local"), s("broadcast"), s("multicast")],
            ),
            accept(),
        ],
        Some("for the firewall itself: the input chain decides".into()),
    );
    b.rule("agent_route", vec![jump("agent_fwd")], None);
    if !policy.cidr.is_empty() {
        b.rule(
            "postrouting",
            vec![
                is(meta(MetaKey::Iifname), agent()),
                is_not(meta(MetaKey::Oifname), agent()),
                Statement::Masquerade(None),
            ],
            Some("routed cidr traffic leaves with the firewall's address".into()),
        );
    }

    // 4. Reject fast, log at a bounded rate.
    b.rule("reject_agent", limited_log(params, LOG_PREFIX).into(), None);
    b.rule(
        "reject_agent",
        vec![
            is(meta(MetaKey::L4proto), s("tcp")),
            Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None))),
        ],
        None,
    );
    b.rule(
        "reject_agent",
        vec![Statement::Reject(Some(Reject::new(
            Some(RejectType::ICMPX),
            Some(RejectCode::AdminProhibited),
        )))],
        None,
    );

    let mut ingress = ingress(params);

    // Fingerprint over everything but itself, then attach it.
    let mut body = serde_json::to_vec(&b.objects).expect("nftables schema serializes");
    body.extend(serde_json::to_vec(&ingress).expect("nftables schema serializes"));
    let mut hasher = Sha256::new();
    hasher.update(params.table.as_bytes());
    hasher.update(&body);
    let fingerprint: String = hasher
        .finalize()
        .iter()
        .take(12)
        .map(|x| format!("{x:02x}"))
        .collect();
    for obj in b.objects.iter_mut().chain(ingress.iter_mut()) {
        if let NfListObject::Rule(r) = obj
            && (r.chain == "input" || r.chain == INGRESS_CHAIN)
            && r.comment.is_none()
        {
            r.comment = Some(Cow::Owned(format!("{FINGERPRINT_PREFIX}{fingerprint}")));
        }
    }

    let table = || Table {
        family: NfFamily::INet,
        name: Cow::Owned(params.table.clone()),
        handle: None,
    };
    let netdev = || Table {
        family: NfFamily::NetDev,
        name: Cow::Owned(params.table.clone()),
        handle: None,
    };
    let mut batch = Batch::new();
    for t in [table(), netdev()] {
        batch.add(NfListObject::Table(t.clone()));
        batch.delete(NfListObject::Table(t.clone()));
        batch.add(NfListObject::Table(t));
    }
    for obj in b.objects.into_iter().chain(ingress) {
        batch.add(obj);
    }
    Ruleset {
        nftables: batch.to_nftables(),
        fingerprint,
    }
}

const INGRESS_CHAIN: &str = "agent_ingress";

fn v6net(addr: &'static str, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(s(addr)),
        len,
    }))
}

/// Log to the NFLOG group cell-proxy reads, at most 10 packets a second
/// (burst 20): an agent flooding rejected packets cannot flood the log.
fn limited_log(params: &FirewallParams, prefix: &'static str) -> [Statement<'static>; 2] {
    [
        Statement::Limit(Limit {
            rate: 10,
            rate_unit: Some(Cow::Borrowed("packets")),
            per: Some(Cow::Borrowed("second")),
            burst: Some(20),
            burst_unit: Some(Cow::Borrowed("packets")),
            inv: None,
        }),
        Statement::Log(Some(Log {
            prefix: Some(Cow::Borrowed(prefix)),
            ..Log::new(Some(u32::from(params.nflog_group)))
        })),
    ]
}

/// The `netdev` table: rule 5 of the module docs, on the agent interface's
/// ingress hook.
fn ingress(params: &FirewallParams) -> Vec<NfListObject<'static>> {
    let mut b = Builder {
        params,
        family: NfFamily::NetDev,
        objects: Vec::new(),
    };
    b.chain(
        INGRESS_CHAIN,
        Some((NfChainType::Filter, NfHook::Ingress, -500)),
    );
    b.chain("spoofed", None);
    let link_local = || v6net("fe80::", 10);
    let nd = || {
        one_of(
            field("icmpv6", "type"),
            vec![
                s("nd-router-solicit"),
                s("nd-neighbor-solicit"),
                s("nd-neighbor-advert"),
            ],
        )
    };
    // The firewall answers ARP only for its listen address.
    b.rule(
        INGRESS_CHAIN,
        vec![
            is(field("arp", "operation"), s("request")),
            is_not(field("arp", "daddr ip"), s(params.listen.to_string())),
            Statement::Drop(None),
        ],
        Some("ARP only for the firewall's listen address".into()),
    );
    b.rule(
        INGRESS_CHAIN,
        vec![is(field("ip6", "saddr"), link_local()), nd(), accept()],
        None,
    );
    b.rule(
        INGRESS_CHAIN,
        vec![
            is(field("ip6", "saddr"), s("::")),
            is(field("icmpv6", "type"), s("nd-neighbor-solicit")),
            accept(),
        ],
        Some("duplicate address detection".into()),
    );
    let [limit, log] = limited_log(params, SPOOF_PREFIX);
    let reject_here = |b: &mut Builder, tcp: bool| {
        let mut expr = vec![is(field("ip6", "saddr"), link_local())];
        if tcp {
            expr.push(is(meta(MetaKey::L4proto), s("tcp")));
            expr.push(Statement::Reject(Some(Reject::new(
                Some(RejectType::TCPReset),
                None,
            ))));
        } else {
            expr.push(Statement::Reject(Some(Reject::new(
                Some(RejectType::ICMPX),
                Some(RejectCode::AdminProhibited),
            ))));
        }
        b.rule(
            INGRESS_CHAIN,
            expr,
            Some("link-local: refused on the link it came in on".into()),
        );
    };
    reject_here(&mut b, true);
    reject_here(&mut b, false);
    let (v4, v6): (Vec<_>, Vec<_>) = params.agent_addrs.iter().partition(|a| a.is_ipv4());
    let addrs = |v: Vec<&IpAddr>| v.into_iter().map(|a| s(a.to_string())).collect::<Vec<_>>();
    for (proto, own) in [("ip", addrs(v4)), ("ip6", addrs(v6))] {
        let mut expr = vec![is(meta(MetaKey::Protocol), s(proto))];
        match own.len() {
            0 => {}
            1 => expr.push(is_not(
                field(proto, "saddr"),
                own.into_iter().next().expect("one"),
            )),
            _ => expr.push(Statement::Match(Match {
                left: field(proto, "saddr"),
                right: Expression::Named(NamedExpression::Set(
                    own.into_iter().map(SetItem::Element).collect(),
                )),
                op: Operator::NEQ,
            })),
        }
        expr.push(jump("spoofed"));
        b.rule(INGRESS_CHAIN, expr, None);
    }
    b.rule(
        "spoofed",
        vec![Statement::Counter(nftables::stmt::Counter::Anonymous(None))],
        Some("forged source addresses".into()),
    );
    b.rule("spoofed", vec![limit, log], None);
    b.rule("spoofed", vec![Statement::Drop(None)], None);
    b.objects
}

/// Failure to run or satisfy `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "cannot run `{program}`: {source} (install nftables, e.g. `apt-get install nftables`, or pass the path of nft)"
    )]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{program}` refused the ruleset: {stderr}")]
    Refused { program: String, stderr: String },
}

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The kernel already had exactly this ruleset; nothing was sent.
    Unchanged,
    /// The table was replaced in one transaction.
    Replaced,
}

fn run_nft(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            program: program.into(),
            source,
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| NftError::Spawn {
                program: program.into(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NftError::Spawn {
        program: program.into(),
        source,
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Refused {
            program: program.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The fingerprint of the `inet <table>` currently in the kernel, if it is ours.
/// Both tables (`inet` and `netdev`) must carry the same one.
pub fn current_fingerprint(program: &str, table: &str) -> Option<String> {
    let of = |family: &str| {
        let out = run_nft(program, &["-j", "list", "table", family, table], None).ok()?;
        let doc: serde_json::Value = serde_json::from_str(&out).ok()?;
        doc.get("nftables")?.as_array()?.iter().find_map(|o| {
            let comment = o.get("rule")?.get("comment")?.as_str()?;
            comment.strip_prefix(FINGERPRINT_PREFIX).map(str::to_string)
        })
    };
    let inet = of("inet")?;
    (of("netdev")? == inet).then_some(inet)
}

/// Checks the ruleset with `nft -c` without touching the kernel's rules.
pub fn check(program: &str, ruleset: &Ruleset) -> Result<(), NftError> {
    run_nft(program, &["-c", "-j", "-f", "-"], Some(&ruleset.to_json())).map(|_| ())
}

/// Applies the ruleset atomically; a no-op when the kernel already has it.
pub fn apply(program: &str, ruleset: &Ruleset, table: &str) -> Result<Applied, NftError> {
    if current_fingerprint(program, table).as_deref() == Some(ruleset.fingerprint.as_str()) {
        return Ok(Applied::Unchanged);
    }
    run_nft(program, &["-j", "-f", "-"], Some(&ruleset.to_json()))?;
    Ok(Applied::Replaced)
}

/// Removes the table (used on shutdown of the jail and by tests).
pub fn remove(program: &str, table: &str) -> Result<(), NftError> {
    let inet = run_nft(program, &["delete", "table", "inet", table], None).map(|_| ());
    let netdev = run_nft(program, &["delete", "table", "netdev", table], None).map(|_| ());
    inet.and(netdev)
}
