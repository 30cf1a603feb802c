//! The flake's inputs are pinned: every input names an exact revision, so
//! the first `flake.lock` anyone creates locks the same sources, and nothing
//! floats behind the pins (microvm.nix's own inputs follow ours).

use std::path::Path;
use std::process::Command;

/// `(import ./flake.nix).inputs` as JSON (flake.nix's inputs are plain data).
fn inputs() -> Option<serde_json::Value> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let out = match Command::new("nix-instantiate")
        .args([
            "--eval",
            "--strict",
            "--json",
            "-E",
            "(import ./flake.nix).inputs",
        ])
        .current_dir(&repo)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI has nix-instantiate (nix-bin)"
            );
            eprintln!("SKIPPED: nix-instantiate is not installed (apt-get install nix-bin)");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The revision a flake URL pins, if it pins one: `github:o/r/<40 hex>` or
/// `git+…?rev=<40 hex>`.
fn pinned_rev(url: &str) -> Option<&str> {
    let rev = if let Some(rest) = url.strip_prefix("github:") {
        rest.split('?').next()?.splitn(3, '/').nth(2)?
    } else if url.starts_with("git+") {
        url.split(['?', '&']).find_map(|p| p.strip_prefix("rev="))?
    } else {
        return None;
    };
    (rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())).then_some(rev)
}

#[test]
fn pinned_rev_tells_a_pin_from_a_branch() {
    let rev = "643809054d65fdd466a63e3155b8c498cb483c04";
    assert_eq!(
        pinned_rev(&format!("github:NixOS/nixpkgs/{rev}")),
        Some(rev)
    );
    assert_eq!(
        pinned_rev(&format!("git+https://x.test/r?rev={rev}")),
        Some(rev)
    );
    assert_eq!(pinned_rev("github:NixOS/nixpkgs/nixos-unstable"), None);
    assert_eq!(pinned_rev("github:microvm-nix/microvm.nix"), None);
    assert_eq!(pinned_rev("git+https://x.test/r"), None);
    assert_eq!(pinned_rev("git+https://x.test/r?ref=main"), None);
}

/// Every input is pinned; microvm.nix's nixpkgs and spectrum follow ours.
#[test]
fn every_flake_input_is_pinned_to_a_revision() {
    let Some(inputs) = inputs() else { return };
    let inputs = inputs.as_object().unwrap();
    for name in ["nixpkgs", "microvm", "spectrum"] {
        assert!(
            inputs.contains_key(name),
            "flake.nix lacks the input {name}"
        );
    }
    for (name, input) in inputs {
        let url = input["url"].as_str().unwrap_or_default();
        assert!(
            pinned_rev(url).is_some(),
            "flake input `{name}` ({url}) is not pinned to a 40-hex revision: see README, Pinned inputs"
        );
    }
    assert_eq!(inputs["microvm"]["inputs"]["nixpkgs"]["follows"], "nixpkgs");
    assert_eq!(
        inputs["microvm"]["inputs"]["spectrum"]["follows"],
        "spectrum"
    );
}
