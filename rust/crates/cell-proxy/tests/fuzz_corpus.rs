//! Replays the committed fuzz corpus (`rust/fuzz/corpus/<target>/`, each
//! finding's input among it) through the same checks the fuzz targets run
//! (`cell_proxy::fuzzing`), so the normal test suite keeps every finding
//! fixed without cargo-fuzz or a nightly toolchain. Deterministic; seconds.
//! Longer fuzzing: `scripts/fuzz` (docs/fuzzing.md).

use std::path::PathBuf;

/// Runs `check` on every file of the target's corpus; at least one must exist.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for file in files {
        let data = std::fs::read(&file).expect("corpus file");
        let run = std::panic::catch_unwind(|| check(&data));
        assert!(run.is_ok(), "{} fails its check", file.display());
    }
}

/// Framing watch: split-invariant, and agrees with hyper on every head.
#[test]
fn framing() {
    replay("framing", cell_proxy::fuzzing::framing);
}

/// ClientHello reader and SNI normalization.
#[test]
fn client_hello() {
    replay("client_hello", cell_proxy::fuzzing::client_hello);
}

/// HTTP/2 requests through hyper into the request checks.
#[test]
fn h2() {
    replay("h2", cell_proxy::fuzzing::h2);
}

/// Path rules hold in every server's view (issue 17/2, issue 11/4).
#[test]
fn path() {
    replay("path", cell_proxy::fuzzing::path);
}

/// Hostname normalization is idempotent.
#[test]
fn host() {
    replay("host", cell_proxy::fuzzing::host);
}

/// DNS replies parse and stay in the pool (issue 17/3).
#[test]
fn dns() {
    replay("dns", cell_proxy::fuzzing::dns);
}

/// Policy and overlay parsing and compilation.
#[test]
fn policy() {
    replay("policy", cell_proxy::fuzzing::policy);
}
