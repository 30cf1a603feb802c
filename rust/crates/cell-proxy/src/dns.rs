//! The DNS half of the firewall daemon.
//!
//! Answers, by query type, for a name the policy allows (synthetic):
//!
//! | type            | answer                                                   |
//! |-----------------|----------------------------------------------------------|
//! | A, ANY          | one A record from the synthetic pool, stable per name    |
//! | AAAA            | NOERROR, no records (IPv6 is not routed for the agent)   |
//! | anything else   | NOERROR, no records (TXT, MX, SRV, HTTPS, CNAME, NS, …)  |
//!
//! For a `dns.forward` name: A is resolved upstream and only A records come
//! back; every other type is NOERROR/empty without asking upstream.
//! A PTR query for an assigned pool address answers with its name.
//! Everything else — a name no entry allows, a denied name, a malformed name,
//! class other than IN — is NXDOMAIN (REFUSED for a non-IN class, NOTIMP for
//! an opcode other than QUERY), with an Extended DNS Error (RFC 8914, code 15
//! "Blocked") saying how to allow it when the client speaks EDNS.
//!
//! Security rule: the only code path that sends anything upstream is
//! [`Forwarder::lookup_a`], and it is reached only for `NameDecision::Forward`
//! with query type A. A name the agent makes up is therefore never seen by
//! any resolver unless the policy says so — DNS exfiltration by query is
//! impossible by construction. The lab test `dns_exfiltration_*` attacks it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cell_policy::{DenyReason, NameDecision, allow_hint};
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecoder;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::events::event;
use crate::state::State;

/// EDNS option code of Extended DNS Errors (RFC 8914).
const EDE: u16 = 15;
/// EDE info-code "Blocked".
const EDE_BLOCKED: u16 = 15;

/// Resolves `dns.forward` names upstream.
pub struct Forwarder {
    resolver: TokioResolver,
}

impl Forwarder {
    /// Upstream servers from the policy, or the system's resolv.conf when empty.
    pub fn new(upstream: &[SocketAddr], timeout: Duration) -> anyhow::Result<Self> {
        let mut builder = if upstream.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let servers = upstream
                .iter()
                .map(|sa| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = sa.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = sa.port();
                    NameServerConfig::new(sa.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 1;
        opts.ndots = 0;
        opts.cache_size = 1024;
        Ok(Forwarder {
            resolver: builder.build()?,
        })
    }

    /// The IPv4 addresses of an allowed name, for the proxy's own connections.
    pub async fn lookup(&self, name: &str) -> Result<Vec<Ipv4Addr>, String> {
        match self.lookup_a(name).await? {
            Some(v) => Ok(v.into_iter().map(|(ip, _)| ip).collect()),
            None => Err("NXDOMAIN".into()),
        }
    }

    /// A records for a fully qualified name. `Ok(None)` is NXDOMAIN.
    async fn lookup_a(&self, name: &str) -> Result<Option<Vec<(Ipv4Addr, u32)>>, String> {
        let fqdn = Name::from_ascii(format!("{name}.")).map_err(|e| e.to_string())?;
        match self.resolver.lookup(fqdn, RecordType::A).await {
            Ok(lookup) => Ok(Some(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match r.data {
                        RData::A(a) => Some((a.0, r.ttl)),
                        _ => None,
                    })
                    .collect(),
            )),
            Err(e) if e.is_nx_domain() => Ok(None),
            Err(e) if e.is_no_records_found() => Ok(Some(Vec::new())),
            Err(e) => Err(e.to_string()),
        }
    }
}

pub struct DnsHandler {
    state: Arc<State>,
    slots: Arc<Semaphore>,
}

impl DnsHandler {
    pub fn new(state: Arc<State>, concurrency: usize) -> Self {
        DnsHandler {
            state,
            slots: Arc::new(Semaphore::new(concurrency)),
        }
    }
}

/// What we answer, before encoding.
struct Answer {
    rcode: ResponseCode,
    records: Vec<Record>,
    /// Extended DNS Error text for a blocked name.
    blocked: Option<String>,
    decision: &'static str,
    rule: Option<String>,
    reason: Option<String>,
}

impl Answer {
    fn empty(decision: &'static str, rule: Option<String>) -> Self {
        Answer {
            rcode: ResponseCode::NoError,
            records: Vec::new(),
            blocked: None,
            decision,
            rule,
            reason: None,
        }
    }
    fn deny(rcode: ResponseCode, name: &str, reason: &DenyReason) -> Self {
        let text = match reason {
            DenyReason::NoRule => {
                format!("cell: {name} is not in the allowlist; {}", allow_hint(name))
            }
            DenyReason::DeniedBy(o) => {
                format!("cell: {name} is denied by {o}; remove that entry to allow it")
            }
            DenyReason::InvalidName => "cell: not a valid hostname".to_string(),
        };
        Answer {
            rcode,
            records: Vec::new(),
            blocked: Some(text),
            decision: "deny",
            rule: match reason {
                DenyReason::DeniedBy(o) => Some(o.to_string()),
                _ => None,
            },
            reason: Some(reason.to_string()),
        }
    }
}

impl DnsHandler {
    async fn answer(&self, qname: &Name, qtype: RecordType, qclass: DNSClass) -> Answer {
        let raw = qname.to_ascii();
        if qclass != DNSClass::IN {
            return Answer::deny(ResponseCode::Refused, &raw, &DenyReason::InvalidName);
        }
        if qtype == RecordType::PTR
            && let Some(ip) = ptr_to_ipv4(&raw)
        {
            let table = self.state.table.lock().expect("table lock");
            if let Some(name) = table.name_of(ip)
                && let Ok(target) = Name::from_ascii(format!("{name}."))
            {
                let ttl = self.state.policy().dns.ttl;
                return Answer {
                    records: vec![Record::from_rdata(
                        qname.clone(),
                        ttl,
                        RData::PTR(PTR(target)),
                    )],
                    ..Answer::empty("allow", Some("synthetic-ptr".into()))
                };
            }
        }
        let policy = self.state.policy();
        match policy.resolve_name(&raw) {
            NameDecision::Deny(reason) => {
                Answer::deny(ResponseCode::NXDomain, raw.trim_end_matches('.'), &reason)
            }
            NameDecision::Synthetic { name, origin } => {
                if !matches!(qtype, RecordType::A | RecordType::ANY) {
                    return Answer::empty("allow", Some(origin.to_string()));
                }
                let addr = self.state.table.lock().expect("table lock").assign(&name);
                Answer {
                    records: vec![Record::from_rdata(
                        qname.clone(),
                        policy.dns.ttl,
                        RData::A(A(addr)),
                    )],
                    ..Answer::empty("allow", Some(origin.to_string()))
                }
            }
            NameDecision::Forward { name, origin } => {
                if qtype != RecordType::A {
                    return Answer::empty("forward", Some(origin.to_string()));
                }
                let Some(fwd) = self.state.forwarder() else {
                    return Answer {
                        rcode: ResponseCode::ServFail,
                        reason: Some("no upstream resolver".into()),
                        ..Answer::empty("forward", Some(origin.to_string()))
                    };
                };
                // An invented name under a forwarded wildcard goes upstream: bounded.
                let wildcard = policy
                    .dns
                    .forward
                    .iter()
                    .any(|f| f.origin == origin && f.pattern.is_wildcard());
                if wildcard
                    && self
                        .state
                        .name_budget
                        .admit(
                            &origin.to_string(),
                            &name,
                            policy.limits.wildcard_names_per_minute,
                        )
                        .is_err()
                {
                    let why = format!(
                        "{origin} has looked up {} new names this minute (limits.wildcardNamesPerMinute)",
                        policy.limits.wildcard_names_per_minute
                    );
                    return Answer {
                        rcode: ResponseCode::Refused,
                        blocked: Some(why.clone()),
                        reason: Some(why),
                        ..Answer::empty("deny", Some(origin.to_string()))
                    };
                }
                match fwd.lookup_a(&name).await {
                    Ok(Some(addrs)) => {
                        // The same guard as the proxy's own upstream connections: a
                        // forwarded answer never points the agent at loopback, the
                        // firewall, link-local (metadata) or, outside the `cidr`
                        // entries that route it, a private range.
                        let guard = self.state.upstream_guard(&policy);
                        let (addrs, refused): (Vec<_>, Vec<_>) =
                            addrs.into_iter().partition(|(ip, _)| {
                                let routed = policy.cidr.iter().any(|c| c.net.contains(ip));
                                guard.check(std::net::IpAddr::V4(*ip), routed).is_none()
                            });
                        let why = (!refused.is_empty()).then(|| {
                            let list: Vec<String> = refused
                                .iter()
                                .map(|(ip, _)| {
                                    let r = guard
                                        .check(std::net::IpAddr::V4(*ip), false)
                                        .map(|r| r.to_string())
                                        .unwrap_or_default();
                                    format!("{ip} ({r})")
                                })
                                .collect();
                            format!("upstream answer refused: {}", list.join(", "))
                        });
                        if addrs.is_empty() && why.is_some() {
                            return Answer {
                                rcode: ResponseCode::NXDomain,
                                blocked: why.clone(),
                                reason: why,
                                ..Answer::empty("deny", Some(origin.to_string()))
                            };
                        }
                        Answer {
                            reason: why,
                            records: addrs
                                .into_iter()
                                .map(|(ip, ttl)| {
                                    Record::from_rdata(
                                        qname.clone(),
                                        ttl.min(policy.dns.ttl),
                                        RData::A(A(ip)),
                                    )
                                })
                                .collect(),
                            ..Answer::empty("forward", Some(origin.to_string()))
                        }
                    }
                    Ok(None) => Answer {
                        rcode: ResponseCode::NXDomain,
                        ..Answer::empty("forward", Some(origin.to_string()))
                    },
                    Err(e) => Answer {
                        rcode: ResponseCode::ServFail,
                        reason: Some(format!("upstream: {e}")),
                        ..Answer::empty("forward", Some(origin.to_string()))
                    },
                }
            }
        }
    }
}

/// The mnemonic dig prints, for event lines.
fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::FormErr => "FORMERR",
        _ => "OTHER",
    }
}

/// Whether a question name in the raw `message` uses a compression pointer
/// (or a label type other than a plain length). The reply copies the question
/// bytes as they came; a pointer in them would then point into the reply's
/// own header, so such a question is answered FORMERR without an echo.
fn question_is_compressed(message: &[u8]) -> bool {
    let count = message
        .get(4..6)
        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
    let mut at = 12;
    for _ in 0..count {
        loop {
            match message.get(at) {
                None => return false,
                Some(0) => break,
                Some(len) if len & 0xc0 != 0 => return true,
                Some(&len) => at += 1 + usize::from(len),
            }
        }
        at += 5;
    }
    false
}

/// `4.3.2.1.in-addr.arpa` → 1.2.3.4
fn ptr_to_ipv4(name: &str) -> Option<Ipv4Addr> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    let rev = lower.strip_suffix(".in-addr.arpa")?;
    let octets: Vec<u8> = rev
        .split('.')
        .map(|o| o.parse().ok())
        .collect::<Option<_>>()?;
    let [d, c, b, a] = octets[..] else {
        return None;
    };
    Some(Ipv4Addr::new(a, b, c, d))
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let mut edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            e
        });
        let client = request.src();

        let compressed = question_is_compressed(request.as_slice());
        // Bounded concurrency: beyond the limit, refuse at once instead of queueing.
        let permit = self.slots.clone().try_acquire_owned();
        let (answer, qname, qtype) = if permit.is_err() {
            (
                Answer {
                    rcode: ResponseCode::Refused,
                    reason: Some("busy".into()),
                    ..Answer::empty("deny", None)
                },
                None,
                None,
            )
        } else if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            (
                Answer {
                    rcode: ResponseCode::NotImp,
                    ..Answer::empty("deny", None)
                },
                None,
                None,
            )
        } else {
            match request.request_info() {
                Ok(_) if compressed => (
                    Answer {
                        rcode: ResponseCode::FormErr,
                        reason: Some("compressed question".into()),
                        ..Answer::empty("deny", None)
                    },
                    None,
                    None,
                ),
                Ok(info) => {
                    let q = info.query;
                    let name: Name = q.name().into();
                    let a = self.answer(&name, q.query_type(), q.query_class()).await;
                    (a, Some(name), Some(q.query_type()))
                }
                Err(_) => (
                    Answer {
                        rcode: ResponseCode::FormErr,
                        ..Answer::empty("deny", None)
                    },
                    None,
                    None,
                ),
            }
        };
        drop(permit);

        metadata.response_code = answer.rcode;
        metadata.authoritative = answer.rcode != ResponseCode::ServFail;
        if let (Some(e), Some(text)) = (edns.as_mut(), answer.blocked.as_ref()) {
            let mut data = EDE_BLOCKED.to_be_bytes().to_vec();
            data.extend_from_slice(text.as_bytes());
            e.options_mut().insert(EdnsOption::Unknown(EDE, data));
        }

        self.state.events.emit(event(
            "dns",
            [
                ("client", Value::String(client.to_string())),
                (
                    "name",
                    qname
                        .as_ref()
                        .map(|n| n.to_ascii().trim_end_matches('.').to_string())
                        .into(),
                ),
                ("type", qtype.map(|t| t.to_string()).into()),
                ("decision", answer.decision.into()),
                ("rcode", rcode_name(answer.rcode).into()),
                ("rule", answer.rule.clone().into()),
                ("reason", answer.reason.clone().into()),
                (
                    "answer",
                    Value::Array(
                        answer
                            .records
                            .iter()
                            .filter_map(|r| match &r.data {
                                RData::A(a) => Some(Value::String(IpAddr::V4(a.0).to_string())),
                                RData::PTR(p) => Some(Value::String(p.0.to_ascii())),
                                _ => None,
                            })
                            .collect(),
                    ),
                ),
            ],
        ));

        // A compressed question is not echoed: its copy would point into the reply's header.
        let no_question = Queries::read(&mut BinDecoder::new(&[]), 0).expect("empty");
        let mut builder = if compressed {
            MessageResponseBuilder::new(&no_question, None)
        } else {
            MessageResponseBuilder::from_message_request(request)
        };
        if let Some(e) = edns.as_ref() {
            builder.edns(e);
        }
        let response = builder.build(metadata, answer.records.iter(), [], [], []);
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(%client, "sending DNS response failed: {e}");
                let mut m = Metadata::response_from_request(&request.metadata);
                m.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: m,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17 finding 3: a question with a compression pointer is spotted
    /// (the handler answers FORMERR with no question); a plain one is not.
    #[test]
    fn compressed_questions_are_spotted() {
        let pointer = [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 2, 1, 2, 0, 1];
        assert!(question_is_compressed(&pointer));
        let plain = [2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1];
        assert!(!question_is_compressed(&plain));
        assert!(!question_is_compressed(&pointer[..4]));
    }

    #[test]
    fn ptr_names() {
        assert_eq!(
            ptr_to_ipv4("4.3.18.198.in-addr.arpa."),
            Some(Ipv4Addr::new(198, 18, 3, 4))
        );
        assert_eq!(
            ptr_to_ipv4("4.3.18.198.IN-ADDR.ARPA"),
            Some(Ipv4Addr::new(198, 18, 3, 4))
        );
        assert_eq!(ptr_to_ipv4("3.18.198.in-addr.arpa."), None);
        assert_eq!(ptr_to_ipv4("x.3.18.198.in-addr.arpa."), None);
        assert_eq!(ptr_to_ipv4("example.com."), None);
    }
}
