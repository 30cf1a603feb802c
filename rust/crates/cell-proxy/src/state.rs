//! Shared daemon state: the effective policy, the synthetic table, the
//! upstream forwarder, and the reload that swaps them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cell_policy::Policy;
use cell_policy::nft::{self, Applied, FirewallParams};
use serde_json::Value;

use crate::dns::Forwarder;
use crate::events::{EventLog, event};
use crate::synth::SyntheticTable;

/// Where the policy comes from and whether we own the firewall rules.
pub struct Sources {
    pub policy: PathBuf,
    pub overlay: Option<PathBuf>,
    /// `None`: do not touch nftables (`--no-firewall`).
    pub firewall: Option<(String, FirewallParams)>,
    /// Apply the rules inside this named network namespace (`--listen-netns`).
    pub netns: Option<String>,
}

pub struct State {
    policy: RwLock<Arc<Policy>>,
    pub table: Mutex<SyntheticTable>,
    forwarder: RwLock<Option<Arc<Forwarder>>>,
    pub events: EventLog,
    pub sources: Sources,
    /// Bumped after every applied reload; open connections watch it.
    generation: tokio::sync::watch::Sender<u64>,
    reload_lock: Mutex<()>,
    /// The agent link's networks, read where the listeners are bound.
    pub agent_nets: std::sync::OnceLock<Vec<ipnet::IpNet>>,
    /// New names looked up upstream per wildcard entry ([`NameBudget`]).
    pub name_budget: NameBudget,
    /// Declared secrets and their values ([`crate::secrets`]).
    pub secrets: Arc<crate::secrets::Store>,
    /// The spy store, when the daemon keeps one ([`crate::spy`]).
    pub spy: std::sync::OnceLock<Arc<crate::spy::Recorder>>,
    /// When the daemon started (`{"op":"status"}` reports its uptime).
    pub started: std::time::Instant,
    /// Intercepted TLS connections open now, and how many of them are
    /// parked (idle HTTP/1.1 without hyper's buffers, `proxy::park`).
    pub intercepted: Gauge,
    pub parked: Gauge,
}

/// A count of things open now, and of all there have been:
/// [`Gauge::hold`] adds one until the guard drops.
#[derive(Debug, Default)]
pub struct Gauge {
    now: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl Gauge {
    pub fn hold(&self) -> GaugeGuard<'_> {
        self.now.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        GaugeGuard(self)
    }

    pub fn get(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One unit of a [`Gauge`], given back on drop (a cancelled task included).
pub struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0
            .now
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn forwarder_for(policy: &Policy) -> Option<Arc<Forwarder>> {
    let timeout = Duration::from_millis(policy.limits.dns_upstream_timeout_ms.into());
    match Forwarder::new(&policy.dns.upstream, timeout) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::warn!(
                "no upstream resolver ({e:#}); `dns.forward` names will get SERVFAIL. Set `dns.upstream`."
            );
            None
        }
    }
}

fn table_for(policy: &Policy) -> SyntheticTable {
    SyntheticTable::new(policy.dns.synthetic_pool, policy.limits.dns_names as usize)
}

/// Applies the firewall ruleset for `policy`, if we own the firewall.
fn apply_firewall(sources: &Sources, policy: &Policy) -> anyhow::Result<Option<(Applied, String)>> {
    let Some((program, params)) = &sources.firewall else {
        return Ok(None);
    };
    let ruleset = nft::compile(policy, params);
    let applied = match &sources.netns {
        // nft is a child process: spawned from a thread inside the namespace, it runs there.
        Some(ns) => cell_netns::run_in(ns, || nft::apply(program, &ruleset, &params.table))??,
        None => nft::apply(program, &ruleset, &params.table)?,
    };
    Ok(Some((applied, ruleset.fingerprint)))
}

fn firewall_fields(fw: &Option<(Applied, String)>) -> [(&'static str, Value); 2] {
    match fw {
        Some((applied, fp)) => [
            (
                "nft",
                Value::from(if *applied == Applied::Unchanged {
                    "unchanged"
                } else {
                    "replaced"
                }),
            ),
            ("fingerprint", Value::from(fp.as_str())),
        ],
        None => [
            ("nft", Value::from("not-managed")),
            ("fingerprint", Value::Null),
        ],
    }
}

impl State {
    /// Loads the policy and applies the firewall; any failure here stops the daemon.
    pub fn start(sources: Sources, events: EventLog) -> anyhow::Result<Arc<State>> {
        let policy = Policy::load(&sources.policy, sources.overlay.as_deref())?;
        let fw = apply_firewall(&sources, &policy)?;
        let [a, b] = firewall_fields(&fw);
        events.emit(event(
            "policy",
            [
                ("decision", "applied".into()),
                ("cause", "start".into()),
                a,
                b,
            ],
        ));
        Ok(Arc::new(State {
            table: Mutex::new(table_for(&policy)),
            forwarder: RwLock::new(forwarder_for(&policy)),
            policy: RwLock::new(Arc::new(policy)),
            events,
            sources,
            generation: tokio::sync::watch::Sender::new(0),
            reload_lock: Mutex::new(()),
            agent_nets: std::sync::OnceLock::new(),
            name_budget: NameBudget::default(),
            secrets: Arc::default(),
            spy: std::sync::OnceLock::new(),
            started: std::time::Instant::now(),
            intercepted: Gauge::default(),
            parked: Gauge::default(),
        }))
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// A receiver that wakes after each applied reload.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Where upstream connections may not go (see `cell_policy::upstream`):
    /// the firewall's addresses as they are now (an address can change under
    /// DHCP), the agent link's networks, the synthetic pool.
    pub fn upstream_guard(&self, policy: &Policy) -> cell_policy::upstream::Guard {
        cell_policy::upstream::Guard {
            local: local_addresses(None)
                .into_iter()
                .map(|n| n.addr())
                .collect(),
            gateways: gateways(),
            agent_nets: self.agent_nets.get().cloned().unwrap_or_default(),
            pool: Some(policy.dns.synthetic_pool),
        }
    }

    pub fn forwarder(&self) -> Option<Arc<Forwarder>> {
        self.forwarder.read().expect("forwarder lock").clone()
    }

    /// Re-reads policy and overlay. An invalid document, or a ruleset the
    /// kernel refuses, leaves the running policy and rules exactly as they
    /// were and reports why.
    /// Returns the `policy` event it emitted. Reloads never overlap.
    pub fn reload(&self, cause: &str) -> serde_json::Map<String, Value> {
        let _one_at_a_time = self.reload_lock.lock().expect("reload lock");
        let refused = |why: String| {
            tracing::error!("policy reload refused, keeping the running policy: {why}");
            let ev = event(
                "policy",
                [
                    ("decision", "refused".into()),
                    ("cause", cause.into()),
                    ("reason", why.into()),
                ],
            );
            self.events.emit(ev.clone());
            ev
        };
        let new = match Policy::load(&self.sources.policy, self.sources.overlay.as_deref()) {
            Ok(p) => p,
            Err(e) => return refused(e.to_string()),
        };
        let fw = match apply_firewall(&self.sources, &new) {
            Ok(fw) => fw,
            Err(e) => return refused(format!("{e:#}")),
        };
        let old = self.policy();
        if old.dns.synthetic_pool != new.dns.synthetic_pool
            || old.limits.dns_names != new.limits.dns_names
        {
            *self.table.lock().expect("table lock") = table_for(&new);
        }
        if old.dns.upstream != new.dns.upstream
            || old.limits.dns_upstream_timeout_ms != new.limits.dns_upstream_timeout_ms
        {
            *self.forwarder.write().expect("forwarder lock") = forwarder_for(&new);
        }
        *self.policy.write().expect("policy lock") = Arc::new(new);
        self.generation.send_modify(|g| *g += 1);
        let [a, b] = firewall_fields(&fw);
        let ev = event(
            "policy",
            [
                ("decision", "applied".into()),
                ("cause", cause.into()),
                a,
                b,
            ],
        );
        self.events.emit(ev.clone());
        tracing::info!(cause, "policy reloaded");
        ev
    }
}

/// The IPv4 gateways of this network namespace's routes (`/proc/net/route`:
/// hex, little-endian). Upstream lookups are A only, so IPv4 is enough.
pub fn gateways() -> Vec<std::net::IpAddr> {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    parse_gateways(&table)
}

fn parse_gateways(table: &str) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let hex = l.split_whitespace().nth(2)?;
            let raw = u32::from_str_radix(hex, 16).ok()?;
            (raw != 0).then(|| std::net::Ipv4Addr::from(raw.swap_bytes()).into())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The addresses (with their networks) of this network namespace's
/// interfaces; only those of `iface` when given.
pub fn local_addresses(iface: Option<&str>) -> Vec<ipnet::IpNet> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter(|a| iface.is_none_or(|i| a.interface_name == i))
        .filter_map(|a| {
            let addr = a.address?;
            let mask = a.netmask;
            if let Some(v4) = addr.as_sockaddr_in() {
                let len = mask
                    .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_bits().count_ones()))
                    .unwrap_or(32);
                ipnet::Ipv4Net::new(v4.ip(), len as u8)
                    .ok()
                    .map(ipnet::IpNet::V4)
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let len = mask
                    .and_then(|m| m.as_sockaddr_in6().map(|m| m.ip().to_bits().count_ones()))
                    .unwrap_or(128);
                ipnet::Ipv6Net::new(v6.ip(), len as u8)
                    .ok()
                    .map(ipnet::IpNet::V6)
            } else {
                None
            }
        })
        .collect()
}

/// How many new distinct names each wildcard entry has had looked up
/// upstream in the current minute.
///
/// Security rule: a name the agent invents under an allowed wildcard
/// (`<data>.github.com`) must be resolved upstream to be reached, so the
/// domain's own DNS operators see it: a channel. The budget narrows it:
/// past `limits.wildcardNamesPerMinute` new names in a minute, further new
/// names under that entry are refused (a name already looked up stays
/// allowed). Memory is bounded: the names remembered per entry are capped.
#[derive(Default)]
pub struct NameBudget {
    entries: Mutex<std::collections::HashMap<String, Window>>,
}

struct Window {
    started: std::time::Instant,
    new: u32,
    seen: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

/// Names remembered per wildcard entry (older ones count as new again).
const REMEMBERED: usize = 4096;
/// Wildcard entries tracked at once (a reload can change them).
const ENTRIES: usize = 1024;

impl NameBudget {
    /// May `name` be looked up for wildcard entry `origin`? `Err` when this
    /// minute's budget of new names is spent.
    pub fn admit(&self, origin: &str, name: &str, per_minute: u32) -> Result<(), ()> {
        let mut entries = self.entries.lock().expect("budget lock");
        if entries.len() >= ENTRIES && !entries.contains_key(origin) {
            entries.clear();
        }
        let w = entries.entry(origin.to_string()).or_insert_with(|| Window {
            started: std::time::Instant::now(),
            new: 0,
            seen: Default::default(),
            order: Default::default(),
        });
        if w.seen.contains(name) {
            return Ok(());
        }
        if w.started.elapsed() >= std::time::Duration::from_secs(60) {
            w.started = std::time::Instant::now();
            w.new = 0;
        }
        if w.new >= per_minute {
            return Err(());
        }
        w.new += 1;
        if w.order.len() >= REMEMBERED
            && let Some(old) = w.order.pop_front()
        {
            w.seen.remove(&old);
        }
        w.seen.insert(name.to_string());
        w.order.push_back(name.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_are_read_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\n\
uplink0\t00000000\t0202000A\t0003\n\
uplink0\t0002000A\t00000000\t0001\n";
        assert_eq!(
            parse_gateways(table),
            vec!["10.0.2.2".parse::<std::net::IpAddr>().unwrap()]
        );
    }

    /// New names are counted per entry; repeats are free; the budget is per
    /// minute and per entry.
    #[test]
    fn the_budget_counts_new_names_per_entry() {
        let b = NameBudget::default();
        for i in 0..3 {
            assert!(b.admit("policy:tcp[0]", &format!("n{i}.x.test"), 3).is_ok());
        }
        assert!(b.admit("policy:tcp[0]", "n3.x.test", 3).is_err());
        assert!(
            b.admit("policy:tcp[0]", "n1.x.test", 3).is_ok(),
            "seen before"
        );
        assert!(
            b.admit("policy:tcp[1]", "n3.x.test", 3).is_ok(),
            "another entry"
        );
        b.entries
            .lock()
            .unwrap()
            .get_mut("policy:tcp[0]")
            .unwrap()
            .started -= std::time::Duration::from_secs(61);
        assert!(
            b.admit("policy:tcp[0]", "n3.x.test", 3).is_ok(),
            "a new minute"
        );
    }
}
