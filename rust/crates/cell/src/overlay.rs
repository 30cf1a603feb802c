//! The live overlay: `cell allow`, `cell deny`, `cell allow --edit` and
//! `cell policy`.
//!
//! The instance's `overlay.json` is the source of truth on the host. Every
//! change is made on a copy, validated together with the Nix baseline by the
//! same validator the firewall runs (`cell_policy::Policy::build`), written
//! to a temporary file and renamed into place, and only then sent to the
//! firewall. A refused change leaves the file as it was.

use std::fmt::Write as _;

use anyhow::bail;
use cell_policy::document::{HttpsRule, TcpRule};
use cell_policy::{OverlayDocument, Policy, PolicyDocument, Source};

/// Validates `overlay` over `base`; the error lists every problem.
pub fn validate(base: &PolicyDocument, overlay: &OverlayDocument) -> anyhow::Result<Policy> {
    match Policy::build(base, Some(overlay)) {
        Ok(p) => Ok(p),
        Err((b, o)) => {
            let mut msg = String::new();
            if !b.is_empty() {
                msg.push_str(
                    "the Nix baseline itself is invalid (`cell provision` after fixing it):\n",
                );
                for e in &b {
                    let _ = writeln!(msg, "  policy: {e}");
                }
            }
            for e in &o {
                let _ = writeln!(msg, "  overlay: {e}");
            }
            bail!("{}", msg.trim_end())
        }
    }
}

/// One line about an HTTPS rule: `https api.example.com:443 GET,POST /v1/**`.
pub fn https_line(r: &HttpsRule) -> String {
    let mut s = format!("https {}", r.host);
    if let Some(p) = &r.ports {
        let ports: Vec<String> = p.iter().map(u16::to_string).collect();
        let _ = write!(s, ":{}", ports.join(","));
    }
    if let Some(m) = &r.methods {
        let _ = write!(s, " methods {}", m.join(","));
    }
    if let Some(p) = &r.paths {
        let _ = write!(s, " paths {}", p.join(" "));
    }
    if r.passthrough {
        s.push_str(" passthrough");
    }
    if r.private_upstream {
        s.push_str(" private-upstream");
    }
    match r.spy {
        Some(true) => s.push_str(" spy"),
        Some(false) => s.push_str(" no-spy"),
        None => {}
    }
    s
}

pub fn tcp_line(r: &TcpRule) -> String {
    let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
    let private = if r.private_upstream {
        " private-upstream"
    } else {
        ""
    };
    format!("tcp {}:{}{private}", r.host, ports.join(","))
}

/// What changed between two overlays, one `+`/`-` line per entry.
pub fn diff(old: &OverlayDocument, new: &OverlayDocument) -> Vec<String> {
    fn lines(o: &OverlayDocument) -> Vec<String> {
        o.https
            .iter()
            .map(https_line)
            .chain(o.tcp.iter().map(tcp_line))
            .chain(o.cidr.iter().map(|c| {
                let ports: Vec<String> = c.ports.iter().map(u16::to_string).collect();
                format!("cidr {} {:?} {}", c.cidr, c.protocol, ports.join(",")).to_lowercase()
            }))
            .chain(o.deny.iter().map(|d| format!("deny {d}")))
            .collect()
    }
    let (a, b) = (lines(old), lines(new));
    let mut out: Vec<String> = a
        .iter()
        .filter(|l| !b.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        b.iter()
            .filter(|l| !a.contains(l))
            .map(|l| format!("+ {l}")),
    );
    out
}

/// What `cell allow https` asks for.
#[derive(Debug, Clone, Default)]
pub struct HttpsRequest {
    pub host: String,
    pub port: Option<u16>,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    pub passthrough: bool,
    pub private_upstream: bool,
}

/// Adds an HTTPS rule (and lifts an overlay denial of the same host).
/// An identical rule already present is not added twice.
pub fn allow_https(o: &mut OverlayDocument, req: &HttpsRequest) {
    let rule = HttpsRule {
        host: req.host.clone(),
        include_apex: false,
        allow_any_host: false,
        ports: req.port.map(|p| vec![p]),
        methods: (!req.methods.is_empty()).then(|| req.methods.clone()),
        paths: (!req.paths.is_empty()).then(|| req.paths.clone()),
        passthrough: req.passthrough,
        private_upstream: req.private_upstream,
        spy: None,
        comment: None,
    };
    o.deny.retain(|d| d != &req.host);
    if !o.https.contains(&rule) {
        o.https.push(rule);
    }
}

pub fn allow_tcp(o: &mut OverlayDocument, host: &str, port: u16, private_upstream: bool) {
    o.deny.retain(|d| d != host);
    if let Some(r) = o.tcp.iter_mut().find(|r| r.host == host) {
        if !r.ports.contains(&port) {
            r.ports.push(port);
        }
        r.private_upstream |= private_upstream;
    } else {
        o.tcp.push(TcpRule {
            host: host.to_string(),
            include_apex: false,
            allow_any_host: false,
            ports: vec![port],
            private_upstream,
            comment: None,
        });
    }
}

/// Takes back what the overlay allowed for `host`; if the policy would still
/// allow it (the Nix baseline does), adds a denial that wins over it.
pub fn deny(base: &PolicyDocument, o: &mut OverlayDocument, host: &str) -> anyhow::Result<()> {
    o.https.retain(|r| r.host != host);
    o.tcp.retain(|r| r.host != host);
    let probe = host.trim_start_matches("*.");
    let policy = validate(base, o)?;
    let still = policy.https.iter().any(|r| r.pattern.matches(probe))
        || policy.tcp.iter().any(|r| r.pattern.matches(probe));
    if still && !o.deny.iter().any(|d| d == host) {
        o.deny.push(host.to_string());
    }
    Ok(())
}

/// `cell policy`: the effective policy with where each entry came from.
pub fn render_effective(p: &Policy) -> String {
    let origin = |o: cell_policy::Origin| match o.source {
        Source::Base => format!("nix      {o}"),
        Source::Overlay => format!("overlay  {o}"),
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    for r in &p.https {
        let mut s = format!("https  {}", r.pattern);
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        let _ = write!(s, ":{}", ports.join(","));
        if let Some(m) = &r.methods {
            let _ = write!(s, "  methods {}", m.join(","));
        }
        if let Some(ps) = &r.paths {
            let ps: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
            let _ = write!(s, "  paths {}", ps.join(" "));
        }
        if r.passthrough {
            s.push_str("  passthrough");
        }
        if r.private_upstream {
            s.push_str("  private-upstream");
        }
        match r.spy {
            Some(true) => s.push_str("  spy"),
            Some(false) => s.push_str("  no-spy"),
            None => {}
        }
        rows.push((s, origin(r.origin)));
    }
    for r in &p.tcp {
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        let private = if r.private_upstream {
            "  private-upstream"
        } else {
            ""
        };
        rows.push((
            format!("tcp    {}:{}{private}", r.pattern, ports.join(",")),
            origin(r.origin),
        ));
    }
    for r in &p.cidr {
        let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
        rows.push((
            format!(
                "cidr   {} {} {}",
                r.net,
                format!("{:?}", r.protocol).to_lowercase(),
                ports.join(",")
            ),
            origin(r.origin),
        ));
    }
    for d in &p.deny {
        rows.push((format!("deny   {}", d.pattern), origin(d.origin)));
    }
    for f in &p.dns.forward {
        rows.push((format!("dns    forward {}", f.pattern), origin(f.origin)));
    }
    let width = rows.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("nothing is allowed: every connection the agent makes is refused\n");
    }
    for (a, b) in rows {
        let _ = writeln!(out, "{a:width$}   {b}");
    }
    let _ = writeln!(
        out,
        "\ndeny wins over allow; everything not listed is refused. nix = the Nix configuration (change it and run `cell provision`); overlay = `cell allow`/`cell deny` (live)."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> PolicyDocument {
        PolicyDocument::from_json(
            "policy.json",
            r#"{"https":[{"host":"api.anthropic.com","methods":["POST"]},{"host":"*.github.com"}],
                "tcp":[{"host":"github.com","ports":[22]}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn allow_adds_once_and_says_what_changed() {
        let b = base();
        let old = OverlayDocument::default();
        let mut o = old.clone();
        let req = HttpsRequest {
            host: "pypi.org".into(),
            methods: vec!["GET".into()],
            paths: vec!["/simple/**".into()],
            ..Default::default()
        };
        allow_https(&mut o, &req);
        allow_https(&mut o, &req);
        allow_tcp(&mut o, "db.internal.example", 5432, false);
        allow_tcp(&mut o, "db.internal.example", 5433, true);
        allow_tcp(&mut o, "db.internal.example", 5432, false);
        assert_eq!(o.https.len(), 1);
        assert_eq!(o.tcp[0].ports, vec![5432, 5433]);
        assert!(
            o.tcp[0].private_upstream,
            "--private-upstream on any port sets it"
        );
        let p = validate(&b, &o).unwrap();
        assert!(matches!(
            p.connection("pypi.org", 443),
            cell_policy::ConnDecision::Https(_)
        ));
        assert_eq!(
            diff(&old, &o),
            vec![
                "+ https pypi.org methods GET paths /simple/**",
                "+ tcp db.internal.example:5432,5433 private-upstream"
            ]
        );
    }

    #[test]
    fn deny_takes_back_an_overlay_allow_without_a_needless_denial() {
        let b = base();
        let mut o = OverlayDocument::default();
        allow_https(
            &mut o,
            &HttpsRequest {
                host: "pypi.org".into(),
                ..Default::default()
            },
        );
        deny(&b, &mut o, "pypi.org").unwrap();
        assert!(o.https.is_empty());
        assert!(o.deny.is_empty(), "nothing else allows it: {:?}", o.deny);
    }

    #[test]
    fn deny_of_a_nix_allowed_host_adds_a_denial_that_wins() {
        let b = base();
        let mut o = OverlayDocument::default();
        deny(&b, &mut o, "api.github.com").unwrap();
        assert_eq!(o.deny, vec!["api.github.com"]);
        let p = validate(&b, &o).unwrap();
        assert!(matches!(
            p.connection("api.github.com", 443),
            cell_policy::ConnDecision::Deny(_)
        ));
        // …and allowing it again lifts the denial.
        allow_https(
            &mut o,
            &HttpsRequest {
                host: "api.github.com".into(),
                ..Default::default()
            },
        );
        assert!(o.deny.is_empty());
    }

    #[test]
    fn invalid_changes_are_refused_with_every_reason() {
        let b = base();
        let mut o = OverlayDocument::default();
        allow_https(
            &mut o,
            &HttpsRequest {
                host: "*".into(),
                ..Default::default()
            },
        );
        allow_https(
            &mut o,
            &HttpsRequest {
                host: "ok.example".into(),
                paths: vec!["no-slash".into()],
                ..Default::default()
            },
        );
        let e = validate(&b, &o).unwrap_err().to_string();
        assert!(e.contains("overlay: https[0].host"), "{e}");
        assert!(e.contains("overlay: https[1].paths"), "{e}");
    }

    #[test]
    fn the_effective_policy_names_each_origin() {
        let b = base();
        let mut o = OverlayDocument::default();
        allow_tcp(&mut o, "db.example", 5432, false);
        o.deny.push("gist.github.com".into());
        let text = render_effective(&validate(&b, &o).unwrap());
        for want in [
            "https  api.anthropic.com:443  methods POST",
            "nix      policy:https[0]",
            "tcp    db.example:5432",
            "overlay  overlay:tcp[0]",
            "deny   gist.github.com",
            "overlay  overlay:deny[0]",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
