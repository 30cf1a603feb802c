//! `cell relay A B`: the macOS private link.
//!
//! vfkit attaches a VM's network device to a unix datagram socket: every
//! datagram is one Ethernet frame. The relay binds the two socket paths the
//! VMs are pointed at and forwards frames between exactly those two peers.
//!
//! - A side's peer is the first sender it hears from (vfkit binds its own end
//!   and announces itself). Datagrams from any other sender are dropped and
//!   counted: a third process cannot inject frames or take a side over.
//! - Frames are passed as they are, never parsed or rewritten; datagrams too
//!   short to be Ethernet (vfkit's 4-byte hello) only announce the peer.
//! - The sockets are mode 0600 in the 0700 instance directory.
//! - The relay exits on SIGTERM/SIGINT and removes its sockets.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

/// Shortest Ethernet frame without FCS (header only).
const MIN_FRAME: usize = 14;
/// Largest datagram handled: a 64 KiB frame (TSO off) plus headroom.
const MAX_FRAME: usize = 65_550;

#[derive(clap::Args)]
#[command(hide = true)]
pub struct Args {
    /// The firewall's side.
    a: PathBuf,
    /// The agent's side.
    b: PathBuf,
}

#[derive(Default)]
pub struct Counters {
    pub forwarded: std::sync::atomic::AtomicU64,
    pub dropped: std::sync::atomic::AtomicU64,
}

fn bind(path: &Path) -> anyhow::Result<UnixDatagram> {
    if path.exists() {
        // Stale from a crash: only we bind this path (the launcher holds the instance lock).
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let s = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // macOS caps unix datagrams at 2 KiB by default: without bigger buffers a
    // burst of full-size frames is dropped (vfkit's own tooling does the same).
    use nix::sys::socket::{setsockopt, sockopt};
    for (what, r) in [
        ("send", setsockopt(&s, sockopt::SndBuf, &(1 << 20))),
        ("receive", setsockopt(&s, sockopt::RcvBuf, &(4 << 20))),
    ] {
        if let Err(e) = r {
            eprintln!(
                "cell relay: could not enlarge the {what} buffer of {}: {e}",
                path.display()
            );
        }
    }
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    Ok(s)
}

fn same(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.as_pathname().is_some() && a.as_pathname() == b.as_pathname()
}

/// Forwards from `from` to the peer learned on `to`'s side.
fn pump(
    from: &UnixDatagram,
    from_peer: &Mutex<Option<SocketAddr>>,
    to: &UnixDatagram,
    to_peer: &Mutex<Option<SocketAddr>>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut buf = vec![0u8; MAX_FRAME];
    while !stop.load(Ordering::Relaxed) {
        let (n, sender) = match from.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("cell relay: receive failed: {e}");
                return;
            }
        };
        {
            let mut p = from_peer.lock().expect("peer lock");
            match &*p {
                // An unnamed sender cannot be answered: not a VM.
                None if sender.as_pathname().is_some() => *p = Some(sender),
                Some(known) if same(known, &sender) => {}
                _ => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        if n < MIN_FRAME {
            continue;
        }
        let target = to_peer.lock().expect("peer lock").clone();
        let Some(path) = target.as_ref().and_then(|t| t.as_pathname()) else {
            // The other VM has not started yet: the frame is lost, as on a cable.
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match to.send_to(&buf[..n], path) {
            Ok(_) => {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            // The peer's buffer is full or it went away: drop, like a congested link.
            Err(_) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A running relay (used by `cell relay` and the tests).
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub counters: Arc<Counters>,
    paths: [PathBuf; 2],
}

impl Relay {
    pub fn start(a: &Path, b: &Path) -> anyhow::Result<Relay> {
        let sa = Arc::new(bind(a)?);
        let sb = Arc::new(bind(b)?);
        let pa = Arc::new(Mutex::new(None));
        let pb = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut threads = Vec::new();
        for (from, fp, to, tp) in [
            (sa.clone(), pa.clone(), sb.clone(), pb.clone()),
            (sb, pb, sa, pa),
        ] {
            let (stop, counters) = (stop.clone(), counters.clone());
            threads.push(std::thread::spawn(move || {
                pump(&from, &fp, &to, &tp, &stop, &counters)
            }));
        }
        Ok(Relay {
            stop,
            threads,
            counters,
            paths: [a.to_path_buf(), b.to_path_buf()],
        })
    }

    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block()?;
    let relay = Relay::start(&args.a, &args.b)?;
    eprintln!(
        "cell relay: forwarding frames between {} and {}",
        args.a.display(),
        args.b.display()
    );
    let sig = set.wait()?;
    let (f, d) = (
        relay.counters.forwarded.load(Ordering::Relaxed),
        relay.counters.dropped.load(Ordering::Relaxed),
    );
    relay.shutdown();
    eprintln!("cell relay: {sig:?}: stopped after {f} frames forwarded, {d} dropped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        let mut f = vec![tag; len];
        f[12] = 0x08; // EtherType IPv4, for looks
        f
    }

    fn recv(s: &UnixDatagram) -> Option<Vec<u8>> {
        let mut buf = vec![0; MAX_FRAME];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    #[test]
    fn frames_flow_both_ways_between_the_two_peers_only() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (
            d.path().join("link-firewall.sock"),
            d.path().join("link-agent.sock"),
        );
        let relay = Relay::start(&a, &b).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o777, 0o600);

        let fw = UnixDatagram::bind(d.path().join("vfkit-fw")).unwrap();
        let ag = UnixDatagram::bind(d.path().join("vfkit-ag")).unwrap();
        for s in [&fw, &ag] {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
        }
        // Hellos announce the peers and are not forwarded.
        fw.send_to(b"VFKT", &a).unwrap();
        ag.send_to(b"VFKT", &b).unwrap();
        std::thread::sleep(Duration::from_millis(100));

        let big = frame(0xab, 9000);
        fw.send_to(&big, &a).unwrap();
        assert_eq!(recv(&ag).unwrap(), big, "firewall → agent, byte for byte");
        let small = frame(0xcd, 60);
        ag.send_to(&small, &b).unwrap();
        assert_eq!(recv(&fw).unwrap(), small, "agent → firewall");

        // A third process on the agent's side is ignored: no injection, no takeover.
        let intruder = UnixDatagram::bind(d.path().join("intruder")).unwrap();
        intruder
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        intruder.send_to(&frame(0xee, 60), &b).unwrap();
        intruder.send_to(&frame(0xee, 60), &a).unwrap();
        assert!(
            recv(&fw).is_none(),
            "an intruder's frame reached the firewall"
        );
        assert!(recv(&ag).is_none(), "an intruder's frame reached the agent");
        fw.send_to(&frame(0x11, 60), &a).unwrap();
        assert_eq!(
            recv(&ag).unwrap(),
            frame(0x11, 60),
            "the agent is still the peer"
        );
        assert!(recv(&intruder).is_none(), "the intruder received a frame");
        // An unnamed socket is not a peer either.
        let anon = UnixDatagram::unbound().unwrap();
        anon.send_to(&frame(0x22, 60), &a).unwrap();
        assert!(recv(&ag).is_none());

        assert!(relay.counters.dropped.load(Ordering::Relaxed) >= 3);
        relay.shutdown();
        assert!(!a.exists() && !b.exists(), "the relay removes its sockets");
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.sock"), d.path().join("b.sock"));
        drop(UnixDatagram::bind(&a).unwrap());
        assert!(a.exists());
        Relay::start(&a, &b).unwrap().shutdown();
    }
}
