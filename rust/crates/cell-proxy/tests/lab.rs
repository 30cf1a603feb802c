//! The firewall, proven in the namespace lab: real nftables, the real
//! `cell-proxy` binary, a fake internet that records everything it sees.
//!
//! Every test checks the allowed path, the denied path, and that the internet
//! side saw nothing it should not have. They need root; outside CI they skip
//! with a message when the lab cannot be built.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cell_lab::lab::{self, RESOLVER_V4, WEB_V4, WEB_V6, fw_dns};
use cell_lab::probe::{self, Outcome, Ping, Transport};
use cell_lab::{Lab, skip_unless_available};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

const FAST: Duration = Duration::from_secs(1);
const POOL: &str = "198.18.0.0/16";

fn proxy_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cell-proxy"))
}

/// A lab running `cell-proxy` with `policy`, the fake resolver serving `records`.
fn lab_with(policy: &str, records: &[(&str, Ipv4Addr)]) -> Option<(Lab, PathBuf, PathBuf)> {
    if skip_unless_available() {
        return None;
    }
    let mut lab = Lab::new().expect("building the lab");
    let policy_path = lab.dir.join("policy.json");
    let overlay_path = lab.dir.join("overlay.json");
    std::fs::write(&policy_path, policy).unwrap();
    lab.start_resolver(records).expect("fake resolver");
    lab.start_proxy(proxy_bin(), &policy_path, Some(&overlay_path))
        .expect("starting cell-proxy");
    Some((lab, policy_path, overlay_path))
}

fn ask(lab: &Lab, name: &str, qtype: RecordType) -> Message {
    probe::dns(&lab.agent, fw_dns(), name, qtype, Transport::Udp)
        .unwrap_or_else(|e| panic!("{name} {qtype}: {e:#}"))
}

fn addrs(m: &Message) -> Vec<Ipv4Addr> {
    probe::a_records(m)
}

fn in_pool(ip: Ipv4Addr) -> bool {
    POOL.parse::<ipnet::Ipv4Net>().unwrap().contains(&ip)
}

/// Allowed names (exact, wildcard, TCP-only) resolve to stable pool addresses
/// over UDP and TCP; other types get a defined empty answer; nothing is asked upstream.
#[test]
fn allowed_names_resolve_into_the_pool() {
    let Some((lab, ..)) = lab_with(
        r#"{"https":[{"host":"api.example.test"},{"host":"*.allowed.test"}],
            "tcp":[{"host":"git.example.test","ports":[22]}],
            "dns":{"upstream":["192.0.2.53"]}}"#,
        &[("api.example.test", WEB_V4)],
    ) else {
        return;
    };
    let a1 = addrs(&ask(&lab, "api.example.test.", RecordType::A));
    let tcp = probe::dns(
        &lab.agent,
        fw_dns(),
        "API.Example.Test.",
        RecordType::A,
        Transport::Tcp,
    )
    .unwrap();
    assert_eq!(a1.len(), 1);
    assert!(in_pool(a1[0]), "{a1:?} outside {POOL}");
    assert_eq!(
        addrs(&tcp),
        a1,
        "same name, same address, over TCP and in another case"
    );
    assert_eq!(
        addrs(&ask(&lab, "api.example.test.", RecordType::A)),
        a1,
        "stable"
    );

    let w = addrs(&ask(&lab, "deep.sub.allowed.test.", RecordType::A));
    let g = addrs(&ask(&lab, "git.example.test.", RecordType::A));
    assert!(in_pool(w[0]) && in_pool(g[0]));
    let distinct: HashSet<_> = [a1[0], w[0], g[0]].into_iter().collect();
    assert_eq!(distinct.len(), 3);

    for t in [
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::HTTPS,
        RecordType::SRV,
        RecordType::CNAME,
    ] {
        let m = ask(&lab, "api.example.test.", t);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(
            m.answers.is_empty(),
            "{t} must have no records: {:?}",
            m.answers
        );
    }
    assert_eq!(addrs(&ask(&lab, "api.example.test.", RecordType::ANY)), a1);

    // Reverse lookup of a pool address names it.
    let o = a1[0].octets();
    let ptr = ask(
        &lab,
        &format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0]),
        RecordType::PTR,
    );
    assert!(matches!(&ptr.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "api.example.test."));

    // The bare suffix of a wildcard is not allowed.
    assert_eq!(
        ask(&lab, "allowed.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );

    assert!(
        lab.resolver.queries().is_empty(),
        "synthetic answers never ask upstream: {:?}",
        lab.resolver.queries()
    );
    let wire = lab.wire().unwrap();
    assert_eq!(
        (wire.resolver, wire.other),
        (0, 0),
        "nothing reached the internet"
    );
}

fn random_label(len: usize, seed: u64) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

/// The DNS-exfiltration attack: long random labels (the encoding of stolen
/// data) under a denied suffix and under an allowed wildcard, in every query
/// type. None of them reaches the resolver. The positive control at the end
/// shows the resolver is reachable and recording.
#[test]
fn dns_exfiltration_never_reaches_upstream() {
    let Some((lab, ..)) = lab_with(
        r#"{"https":[{"host":"*.allowed.test"}],
            "dns":{"upstream":["192.0.2.53"],"forward":["*.fwd.test"]}}"#,
        &[("ok.fwd.test", WEB_V4)],
    ) else {
        return;
    };
    for i in 0..8u64 {
        let secret = format!(
            "{}.{}.{}",
            random_label(63, i),
            random_label(63, i + 100),
            random_label(40, i + 200)
        );
        for t in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
            RecordType::ANY,
            RecordType::NULL,
        ] {
            let denied = ask(&lab, &format!("{secret}.denied.test."), t);
            assert_eq!(denied.metadata.response_code, ResponseCode::NXDomain, "{t}");
            assert!(denied.answers.is_empty());
            let text =
                probe::ede_text(&denied).expect("blocked answers carry an Extended DNS Error");
            assert!(text.contains("cell allow https"), "{text}");

            let allowed = ask(&lab, &format!("{secret}.allowed.test."), t);
            assert_eq!(allowed.metadata.response_code, ResponseCode::NoError, "{t}");
            for ip in addrs(&allowed) {
                assert!(in_pool(ip), "{ip} outside the pool");
            }
        }
    }
    // Malformed names, including bytes no hostname has, are denied without a trace upstream.
    let raw = hickory_proto::rr::Name::from_labels([&b"a\x00b"[..], b"fwd", b"test"]).unwrap();
    let weird = probe::dns_name(&lab.agent, fw_dns(), raw, RecordType::A, Transport::Udp).unwrap();
    assert_eq!(weird.metadata.response_code, ResponseCode::NXDomain);

    assert!(
        lab.resolver.queries().is_empty(),
        "leaked to upstream: {:?}",
        lab.resolver.queries()
    );
    assert_eq!(lab.wire().unwrap().resolver, 0);

    // Positive control: a forward name does reach the resolver, so the recorder works.
    assert_eq!(
        addrs(&ask(&lab, "ok.fwd.test.", RecordType::A)),
        vec![WEB_V4]
    );
    assert_eq!(
        lab.resolver.queries(),
        vec![("ok.fwd.test".to_string(), RecordType::A)]
    );
    assert!(lab.wire().unwrap().resolver > 0);
}

/// `dns.forward` names get their real A records; other types and denied
/// names under the same zone are answered without asking upstream.
#[test]
fn forward_names_get_real_addresses_for_a_only() {
    let Some((lab, ..)) = lab_with(
        r#"{"dns":{"upstream":["192.0.2.53"],"forward":["*.fwd.test"]},"deny":["blocked.fwd.test"]}"#,
        &[("db.fwd.test", WEB_V4)],
    ) else {
        return;
    };
    assert_eq!(
        addrs(&ask(&lab, "db.fwd.test.", RecordType::A)),
        vec![WEB_V4]
    );
    let aaaa = ask(&lab, "db.fwd.test.", RecordType::AAAA);
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    assert_eq!(
        ask(&lab, "missing.fwd.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    let blocked = ask(&lab, "blocked.fwd.test.", RecordType::A);
    assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        probe::ede_text(&blocked)
            .unwrap()
            .contains("denied by policy:deny[0]")
    );
    assert_eq!(
        lab.resolver.queries(),
        vec![
            ("db.fwd.test".to_string(), RecordType::A),
            ("missing.fwd.test".to_string(), RecordType::A)
        ],
        "only A questions for allowed forward names went upstream"
    );
}

/// An answer too big for a plain 512-byte UDP reply comes back truncated
/// (TC set) over UDP, and whole over TCP.
#[test]
fn large_answers_truncate_over_udp_and_complete_over_tcp() {
    let many: Vec<(&str, Ipv4Addr)> = (1..=60)
        .map(|i| ("big.fwd.test", Ipv4Addr::new(203, 0, 113, i)))
        .collect();
    let Some((lab, ..)) = lab_with(
        r#"{"dns":{"upstream":["192.0.2.53"],"forward":["*.fwd.test"]}}"#,
        &many,
    ) else {
        return;
    };
    let name: hickory_proto::rr::Name = "big.fwd.test.".parse().unwrap();
    let udp = probe::dns_query(
        &lab.agent,
        fw_dns(),
        name.clone(),
        RecordType::A,
        Transport::Udp,
        None,
    )
    .unwrap();
    assert!(udp.metadata.truncation, "60 A records do not fit 512 bytes");
    assert!(udp.answers.len() < 60);
    let tcp = probe::dns_query(
        &lab.agent,
        fw_dns(),
        name,
        RecordType::A,
        Transport::Tcp,
        None,
    )
    .unwrap();
    assert!(!tcp.metadata.truncation);
    assert_eq!(addrs(&tcp).len(), 60);
}

/// Direct addresses, other DNS servers, UDP 443 (QUIC), IPv6, ICMP, other
/// firewall ports, unlisted ports on pool addresses: each fails fast (reset
/// or ICMP admin-prohibited, never a timeout), and the internet saw nothing —
/// with forwarding on (the rules stop it) and off (the NixOS module's setting
/// without cidr entries: refused before routing, not dropped in it).
#[test]
fn everything_else_fails_fast_and_reaches_nothing() {
    let Some((lab, ..)) = lab_with(
        r#"{"https":[{"host":"api.example.test"}],"dns":{"upstream":["192.0.2.53"]}}"#,
        &[("api.example.test", WEB_V4)],
    ) else {
        return;
    };
    let web = SocketAddr::new(IpAddr::V4(WEB_V4), 443);
    let web6 = SocketAddr::new(IpAddr::V6(WEB_V6), 443);
    let recorders = [
        lab.tcp_recorder(web).unwrap(),
        lab.udp_recorder(web).unwrap(),
        lab.tcp_recorder(web6).unwrap(),
        lab.udp_recorder(web6).unwrap(),
    ];
    let synthetic = addrs(&ask(&lab, "api.example.test.", RecordType::A))[0];
    let resolver = SocketAddr::new(IpAddr::V4(RESOLVER_V4), 53);
    let dns_query = {
        let mut m = Message::query();
        m.add_query(hickory_proto::op::Query::query(
            "api.example.test.".parse().unwrap(),
            RecordType::A,
        ));
        m.to_vec().unwrap()
    };
    let tcp_cases = [
        ("direct IPv4", web),
        ("direct IPv6", web6),
        ("another DNS server over TCP", resolver),
        (
            "unlisted port on a pool address",
            SocketAddr::new(IpAddr::V4(synthetic), 8443),
        ),
        (
            "firewall SSH port",
            SocketAddr::new(IpAddr::V4(lab::FW_AGENT_V4), 22),
        ),
        (
            "firewall DNS over IPv6",
            SocketAddr::new(IpAddr::V6(lab::FW_AGENT_V6), 53),
        ),
    ];
    for forwarding in ["forwarding on", "forwarding off"] {
        lab.set_forwarding(forwarding == "forwarding on").unwrap();
        for (what, addr) in tcp_cases.iter().copied() {
            let p = probe::tcp(&lab.agent, addr, Duration::from_secs(5)).unwrap();
            assert!(p.failed_fast(FAST), "{what} ({addr}), {forwarding}: {p:?}");
            assert_eq!(
                p.outcome,
                Outcome::Failed(std::io::ErrorKind::ConnectionRefused),
                "{what}, {forwarding}: a TCP reset"
            );
        }
        let udp_cases = [
            ("another DNS server over UDP", resolver, dns_query.clone()),
            (
                "QUIC to a pool address",
                SocketAddr::new(IpAddr::V4(synthetic), 443),
                b"quic".to_vec(),
            ),
            ("QUIC direct", web, b"quic".to_vec()),
            ("UDP over IPv6", web6, b"quic".to_vec()),
        ];
        for (what, addr, payload) in udp_cases.iter().cloned() {
            let p = probe::udp(&lab.agent, addr, payload, Duration::from_secs(5)).unwrap();
            assert!(p.failed_fast(FAST), "{what} ({addr}), {forwarding}: {p:?}");
        }
        // A client retrying (QUIC falls back, resolvers retry): every datagram is
        // rejected at once. Enough of them, back to back, to drain the kernel's
        // global ICMP bucket (50 credits) if the rate masks did not exempt the
        // answers: with only the per-destination limit off, some would time out.
        for port in 0..100u16 {
            for ip in [IpAddr::V4(WEB_V4), IpAddr::V6(WEB_V6)] {
                let p = probe::udp(
                    &lab.agent,
                    SocketAddr::new(ip, 4000 + port),
                    b"again".to_vec(),
                    Duration::from_secs(5),
                )
                .unwrap();
                assert!(
                    p.failed_fast(FAST),
                    "burst datagram {port} to {ip}, {forwarding}: {p:?}"
                );
            }
        }
        let (ping, took) = probe::ping(&lab.agent, WEB_V4, Duration::from_secs(5)).unwrap();
        assert_eq!(
            ping,
            Ping::Unreachable(13),
            "ICMP admin-prohibited, {forwarding}"
        );
        assert!(took < FAST, "ping, {forwarding}: {took:?}");
    }

    for r in &recorders {
        assert!(r.seen().is_empty(), "reached the internet: {:?}", r.seen());
    }
    // The rejects are event lines (rate-limited in the ruleset; the first ones always pass).
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    let found = loop {
        let events = lab.events();
        let hit = events
            .iter()
            .find(|e| {
                e["event"] == "reject" && e["dst"] == "203.0.113.10:443" && e["proto"] == "tcp"
            })
            .cloned();
        if hit.is_some() || std::time::Instant::now() > deadline {
            break hit;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let found = found.expect("a reject event for the direct connection");
    assert_eq!(found["client"], lab::AGENT_V4.to_string());
    assert!(
        found["reason"]
            .as_str()
            .unwrap()
            .contains("by name through DNS"),
        "{found}"
    );
    assert!(
        lab.events()
            .iter()
            .any(|e| e["event"] == "reject" && e["proto"] == "udp"),
        "UDP rejects are events too"
    );
    assert!(lab.resolver.queries().is_empty());
    let wire = lab.wire().unwrap();
    assert_eq!(
        (wire.resolver, wire.other),
        (0, 0),
        "no packet arrived on the internet side"
    );
}

/// A `cidr` entry is routed (masqueraded) for its protocol and port only;
/// the next port on the same host is refused and never arrives.
#[test]
fn routed_cidr_is_forwarded_and_nothing_else() {
    let Some((lab, ..)) = lab_with(
        r#"{"cidr":[{"cidr":"203.0.113.10/32","protocol":"tcp","ports":[5432]}],"dns":{"upstream":["192.0.2.53"]}}"#,
        &[],
    ) else {
        return;
    };
    let allowed = SocketAddr::new(IpAddr::V4(WEB_V4), 5432);
    let other = SocketAddr::new(IpAddr::V4(WEB_V4), 5433);
    let (ra, ro) = (
        lab.tcp_recorder(allowed).unwrap(),
        lab.tcp_recorder(other).unwrap(),
    );
    let p = probe::tcp(&lab.agent, allowed, Duration::from_secs(5)).unwrap();
    assert_eq!(p.outcome, Outcome::Open);
    let p = probe::tcp(&lab.agent, other, Duration::from_secs(5)).unwrap();
    assert!(p.failed_fast(FAST), "{p:?}");
    let udp = probe::udp(&lab.agent, allowed, b"x".to_vec(), Duration::from_secs(5)).unwrap();
    assert!(
        udp.failed_fast(FAST),
        "protocol is part of the rule: {udp:?}"
    );
    assert_eq!(ra.seen().len(), 1);
    assert!(
        ra.seen()[0].ends_with(&format!(
            "from {}:{}",
            lab::FW_UPLINK_V4,
            ra.seen()[0].rsplit(':').next().unwrap()
        )),
        "masqueraded: {:?}",
        ra.seen()
    );
    assert!(ro.seen().is_empty());
    assert!(
        lab.wire().unwrap().other > 0,
        "positive control: the wire counter counts"
    );
}

/// Policy and overlay changes take effect on SIGHUP; an invalid document is
/// refused with the reason and the running policy stays; an unchanged
/// ruleset is not re-sent to the kernel.
#[test]
fn policy_reload_takes_effect_and_bad_input_is_refused() {
    let Some((lab, policy, overlay)) = lab_with(
        r#"{"https":[{"host":"a.example.test"}],"dns":{"upstream":["192.0.2.53"]}}"#,
        &[],
    ) else {
        return;
    };
    let rcode = |n: &str| ask(&lab, n, RecordType::A).metadata.response_code;
    assert_eq!(rcode("new.example.test."), ResponseCode::NXDomain);

    std::fs::write(
        &policy,
        r#"{"https":[{"host":"a.example.test"},{"host":"new.example.test"}],"tcp":[{"host":"new.example.test","ports":[2222]}],"dns":{"upstream":["192.0.2.53"]}}"#,
    )
    .unwrap();
    let ev = lab.reload_proxy().unwrap();
    assert_eq!(ev["decision"], "applied", "{ev}");
    assert_eq!(rcode("new.example.test."), ResponseCode::NoError);
    assert!(
        lab.firewall_ruleset().unwrap().contains("2222"),
        "new port redirected"
    );

    let ev = lab.reload_proxy().unwrap();
    assert_eq!(
        ev["nft"], "unchanged",
        "same policy, no kernel transaction: {ev}"
    );

    std::fs::write(&policy, r#"{"https":[{"host":"*"}]}"#).unwrap();
    let ev = lab.reload_proxy().unwrap();
    assert_eq!(ev["decision"], "refused");
    assert!(
        ev["reason"].as_str().unwrap().contains("https[0].host"),
        "{ev}"
    );
    assert_eq!(
        rcode("new.example.test."),
        ResponseCode::NoError,
        "old policy still in force"
    );
    assert!(
        lab.firewall_ruleset().unwrap().contains("2222"),
        "old rules still in force"
    );

    std::fs::write(&policy, "{ not json").unwrap();
    assert_eq!(lab.reload_proxy().unwrap()["decision"], "refused");
    assert!(lab.proxy_running());

    // The live overlay adds and denies without touching the base.
    std::fs::write(
        &policy,
        r#"{"https":[{"host":"a.example.test"},{"host":"new.example.test"}],"dns":{"upstream":["192.0.2.53"]}}"#,
    )
    .unwrap();
    std::fs::write(
        &overlay,
        r#"{"https":[{"host":"extra.example.test"}],"deny":["new.example.test"]}"#,
    )
    .unwrap();
    assert_eq!(lab.reload_proxy().unwrap()["decision"], "applied");
    assert_eq!(rcode("extra.example.test."), ResponseCode::NoError);
    let m = ask(&lab, "new.example.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(probe::ede_text(&m).unwrap().contains("overlay:deny[0]"));
    assert!(
        !lab.firewall_ruleset().unwrap().contains("2222"),
        "port removed with its entry"
    );
    std::fs::remove_file(&overlay).unwrap();
    assert_eq!(lab.reload_proxy().unwrap()["decision"], "applied");
    assert_eq!(rcode("new.example.test."), ResponseCode::NoError);
    assert_eq!(rcode("extra.example.test."), ResponseCode::NXDomain);
}

/// Every lookup is one JSON event line with time, client, name, type, decision and rule.
#[test]
fn lookups_are_json_events() {
    let Some((lab, ..)) = lab_with(
        r#"{"https":[{"host":"a.example.test"}],"dns":{"upstream":["192.0.2.53"]}}"#,
        &[],
    ) else {
        return;
    };
    ask(&lab, "a.example.test.", RecordType::A);
    ask(&lab, "nope.example.test.", RecordType::TXT);
    // The event log is written by its own task: the answer can arrive first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let events = loop {
        let events = lab.events();
        let n = events.iter().filter(|e| e["event"] == "dns").count();
        if n >= 2 || std::time::Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let dns: Vec<_> = events.iter().filter(|e| e["event"] == "dns").collect();
    assert_eq!(dns.len(), 2, "{events:?}");
    let (allow, deny) = (dns[0], dns[1]);
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["rule"], "policy:https[0]");
    assert_eq!(allow["name"], "a.example.test");
    assert_eq!(allow["type"], "A");
    assert!(
        allow["client"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", lab::AGENT_V4))
    );
    assert!(humantime::parse_rfc3339(allow["time"].as_str().unwrap()).is_ok());
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["rcode"], "NXDOMAIN");
    assert_eq!(deny["reason"], "no-rule");
    assert_eq!(deny["name"], "nope.example.test");
    assert_eq!(deny["type"], "TXT");
}

/// Re-applying the same ruleset sends nothing to the kernel (handles and all
/// stay identical); a different policy replaces the table atomically; tables
/// that are not ours are never touched.
#[test]
fn reapplying_the_same_ruleset_is_a_noop() {
    use cell_policy::nft::{self, Applied, FirewallParams};
    use cell_policy::{Policy, PolicyDocument};
    if skip_unless_available() {
        return;
    }
    let lab = Lab::new().unwrap();
    let params = FirewallParams {
        table: "cell".into(),
        agent_iface: lab::AGENT_IFACE.into(),
        listen: lab::FW_AGENT_V4,
        dns_port: 53,
        transparent_port: 15001,
        explicit_port: 3128,
        nflog_group: 7,
        agent_addrs: vec![lab::AGENT_V4.into()],
    };
    let compile = |json: &str| {
        nft::compile(
            &Policy::build(&PolicyDocument::from_json("t", json).unwrap(), None).unwrap(),
            &params,
        )
    };
    let one = compile(r#"{"https":[{"host":"a.example"}]}"#);
    let two = compile(r#"{"https":[{"host":"a.example","ports":[443,8443]}]}"#);
    lab.firewall
        .exec("nft", &["add", "table", "inet", "someone_else"])
        .unwrap();
    let list = |lab: &Lab| {
        String::from_utf8(
            lab.firewall
                .exec("nft", &["-a", "-j", "list", "ruleset"])
                .unwrap()
                .stdout,
        )
        .unwrap()
    };
    let apply = |rs: nft::Ruleset| {
        lab.firewall
            .run(move || nft::apply("nft", &rs, "cell"))
            .unwrap()
            .unwrap()
    };

    assert_eq!(apply(one.clone()), Applied::Replaced);
    let before = list(&lab);
    assert_eq!(apply(one.clone()), Applied::Unchanged);
    assert_eq!(list(&lab), before, "nothing changed, not even rule handles");
    assert_eq!(apply(two), Applied::Replaced);
    let after = list(&lab);
    assert_ne!(after, before);
    assert!(after.contains("8443") && after.contains("someone_else"));
    assert_eq!(apply(one), Applied::Replaced);
}

/// A lab removes every namespace it made, also when the test using it panics.
#[test]
fn lab_cleans_up_after_a_panic() {
    if skip_unless_available() {
        return;
    }
    let id = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new().unwrap();
        *id.lock().unwrap() = lab.id.clone();
        panic!("test failure inside a lab");
    }));
    assert!(result.is_err());
    let id = id.into_inner().unwrap();
    let listed = cell_lab::netns::list().unwrap().join("\n");
    assert!(!id.is_empty());
    assert!(
        !listed.contains(&format!("{}{id}-", cell_lab::NS_PREFIX)),
        "left behind: {listed}"
    );
}

/// A changed policy file is in force within 100 ms, without a signal; the
/// control socket reloads on request and reports status.
#[test]
fn file_changes_apply_within_100ms_and_control_socket_works() {
    let Some((lab, policy, _)) = lab_with(
        r#"{"https":[{"host":"a.example.test"}],"dns":{"upstream":["192.0.2.53"]}}"#,
        &[],
    ) else {
        return;
    };
    let rcode = |n: &str| ask(&lab, n, RecordType::A).metadata.response_code;
    assert_eq!(rcode("b.example.test."), ResponseCode::NXDomain);
    // Written the way `cell allow` writes: a new file renamed over the old one.
    let tmp = policy.with_extension("tmp");
    std::fs::write(&tmp, r#"{"https":[{"host":"a.example.test"},{"host":"b.example.test"}],"dns":{"upstream":["192.0.2.53"]}}"#).unwrap();
    let start = std::time::Instant::now();
    std::fs::rename(&tmp, &policy).unwrap();
    while rcode("b.example.test.") != ResponseCode::NoError {
        assert!(start.elapsed() < Duration::from_secs(2), "never applied");
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = start.elapsed();
    eprintln!("policy file change in force after {took:?}");
    assert!(took < Duration::from_millis(100), "in force after {took:?}");

    let status = lab.control(r#"{"op":"status"}"#).unwrap();
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["https"], 2);
    let reload = lab.control(r#"{"op":"reload"}"#).unwrap();
    assert_eq!(reload["ok"], true, "{reload}");
    assert_eq!(reload["event"]["cause"], "control");
    assert_eq!(reload["event"]["nft"], "unchanged");
    let junk = lab.control("not json").unwrap();
    assert_eq!(junk["ok"], false);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.control_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}
