//! Golden tests for the nftables compilation, and `nft -c` on every result.
//!
//! Regenerate the golden files after an intended change with
//! `UPDATE_GOLDEN=1 cargo test -p cell-policy --test compile`, then read the diff.

use std::path::{Path, PathBuf};

use cell_policy::nft::{self, FirewallParams};
use cell_policy::{Policy, PolicyDocument};

fn params() -> FirewallParams {
    FirewallParams {
        table: "cell".into(),
        agent_iface: "agent0".into(),
        listen: "10.89.0.1".parse().unwrap(),
        dns_port: 53,
        transparent_port: 15001,
        explicit_port: 3128,
        nflog_group: 7,
        agent_addrs: vec!["10.89.0.2".parse().unwrap(), "fd89::2".parse().unwrap()],
    }
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(v.len() >= 3, "fixtures went missing");
    v
}

fn compiled(path: &Path) -> nft::Ruleset {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = PolicyDocument::from_json(&path.display().to_string(), &text).unwrap();
    let policy = Policy::build(&doc, None).unwrap();
    nft::compile(&policy, &params())
}

/// The compiled JSON for each fixture equals its reviewed golden file.
#[test]
fn golden() {
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for f in fixtures() {
        let got = compiled(&f).to_json() + "\n";
        let golden = golden_dir
            .join(f.file_name().unwrap())
            .with_extension("nft.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} missing; run with UPDATE_GOLDEN=1", golden.display()));
        assert_eq!(
            got,
            want,
            "{} changed; if intended, UPDATE_GOLDEN=1 and review",
            f.display()
        );
    }
}

/// Compilation is deterministic and the fingerprint tracks content and parameters.
#[test]
fn fingerprint_is_stable_and_sensitive() {
    let f = &fixtures()[0];
    let a = compiled(f);
    let b = compiled(f);
    assert_eq!(a.fingerprint, b.fingerprint);
    let doc = PolicyDocument::from_json("x", r#"{"https":[{"host":"a.example"}]}"#).unwrap();
    let p = Policy::build(&doc, None).unwrap();
    let one = nft::compile(&p, &params());
    let mut other_params = params();
    other_params.agent_iface = "eth9".into();
    assert_ne!(one.fingerprint, nft::compile(&p, &other_params).fingerprint);
    assert_ne!(one.fingerprint, a.fingerprint);
}

fn nft_program() -> Option<String> {
    let program = std::env::var("NFT").unwrap_or_else(|_| "nft".into());
    let found = std::process::Command::new(&program)
        .arg("--version")
        .output()
        .is_ok();
    if !found && std::env::var_os("CI").is_some() {
        panic!("nft is required in CI (apt-get install nftables)");
    }
    found.then_some(program)
}

/// Every compiled ruleset passes `nft -c` (the kernel's own parser and checker).
#[test]
fn nft_accepts_every_compiled_ruleset() {
    let Some(program) = nft_program() else {
        eprintln!("SKIPPED: nft not installed (apt-get install nftables)");
        return;
    };
    if !nix_is_root() {
        eprintln!("SKIPPED: `nft -c` needs CAP_NET_ADMIN; run as root");
        return;
    }
    for f in fixtures() {
        let rs = compiled(&f);
        nft::check(&program, &rs).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
