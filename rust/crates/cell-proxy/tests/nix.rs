//! The Nix layer's policy compiler against the real validator: what
//! `lib/policy.nix` and `modules/options.nix` produce must pass
//! `cell-proxy --check`, and the lib's own tests must be green.
//!
//! Needs `nix-instantiate` (Debian: nix-bin; required in CI). The module
//! evaluation part needs a nixpkgs `lib`: set CELL_NIXPKGS_LIB to a checkout
//! of nixpkgs.lib (the directory holding `lib/`); without it that part says
//! SKIPPED. With CELL_MICROVM set to a microvm.nix checkout, the VM module
//! is evaluated against microvm.nix's own guest modules; without it against
//! checks/eval/microvm-stub.nix, and the test says so.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../..")
        .canonicalize()
        .unwrap()
}

fn nix_available() -> bool {
    let ok = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("nix-instantiate is required in CI (apt-get install nix-bin)");
        }
        eprintln!("SKIPPED: nix-instantiate not installed (apt-get install nix-bin)");
    }
    ok
}

fn eval_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nix-instantiate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(document: &serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.json");
    std::fs::write(&path, document.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cell-proxy"))
        .arg("--check")
        .arg("--policy")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cell-proxy refused the Nix-compiled document {document}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every lib/tests file evaluates with no failures (and has its cases).
#[test]
fn lib_tests_pass() {
    if !nix_available() {
        return;
    }
    let r = eval_json(&["lib/tests"]);
    for (file, min) in [("policy", 12), ("secrets", 13)] {
        assert!(r[file]["cases"].as_u64().unwrap() >= min, "{file}: {r}");
        assert_eq!(
            r[file]["failures"],
            serde_json::json!([]),
            "failing lib tests in lib/tests/{file}.nix: {r:#}"
        );
    }
}

/// The nixpkgs lib named by CELL_NIXPKGS_LIB, as a Nix expression; None
/// (after saying SKIPPED) without one.
fn nixpkgs_lib() -> Option<String> {
    let Some(lib) = std::env::var_os("CELL_NIXPKGS_LIB") else {
        eprintln!(
            "SKIPPED: module evaluation tests need a nixpkgs lib; set CELL_NIXPKGS_LIB=/path/to/nixpkgs.lib"
        );
        return None;
    };
    Some(format!("import {}/lib", Path::new(&lib).display()))
}

/// The microvm.nix checkout named by CELL_MICROVM; None (after saying
/// which stub is used instead) without one.
fn microvm_checkout() -> Option<String> {
    match std::env::var_os("CELL_MICROVM") {
        Some(dir)
            if Path::new(&dir)
                .join("nixos-modules/microvm/options.nix")
                .is_file() =>
        {
            Some(Path::new(&dir).display().to_string())
        }
        Some(dir) => panic!(
            "CELL_MICROVM={} has no nixos-modules/microvm/options.nix; point it at a microvm.nix checkout",
            Path::new(&dir).display()
        ),
        None => {
            eprintln!(
                "SKIPPED: the VM module against microvm.nix's own modules; set CELL_MICROVM=/path/to/microvm.nix (evaluating against checks/eval/microvm-stub.nix instead)"
            );
            None
        }
    }
}

/// checks/eval/modules.nix: the firewall, agent and VM modules under
/// lib.evalModules — what they set (capabilities, sysctls, interfaces,
/// the CA fetch, placeholders, the event log bounds, the workspace mount,
/// the link device), what their assertions refuse, and that they evaluate
/// the way runNixOSTest (read-only nixpkgs.config) and lib.mkCell on each
/// host system do. Also the stubs' own fidelity cases.
#[test]
fn module_evaluation_tests_pass() {
    if !nix_available() {
        return;
    }
    let Some(lib_expr) = nixpkgs_lib() else {
        return;
    };
    let mut args = vec!["checks/eval/modules.nix", "--arg", "lib", &lib_expr];
    let microvm = microvm_checkout();
    if let Some(dir) = &microvm {
        args.extend(["--argstr", "microvm", dir]);
    }
    let r = eval_json(&args);
    assert!(r["cases"].as_u64().unwrap() >= 59, "{r}");
    assert_eq!(r["failures"], serde_json::json!([]), "{r:#}");
    let expected = microvm.map_or(serde_json::json!("stub"), serde_json::Value::from);
    assert_eq!(
        r["microvm"], expected,
        "evaluated against the wrong microvm.nix"
    );
}

/// A typical policy compiled by lib/policy.nix passes the Rust validator.
#[test]
fn lib_document_passes_cell_proxy_check() {
    if !nix_available() {
        return;
    }
    let doc = eval_json(&[
        "-E",
        r#"(import ./lib/policy.nix).toDocument {
          https."api.anthropic.com" = { comment = "model provider"; spy = true; };
          https."*.github.com" = { includeApex = true; methods = [ "GET" "POST" ]; paths = [ "/repos/**" ]; };
          https."pinned.example.com" = { passthrough = true; ports = [ 443 8443 ]; };
          tcp."github.com".ports = [ 22 ];
          tcp."db.corp.example" = { ports = [ 5432 ]; privateUpstream = true; };
          https."intranet.corp.example".privateUpstream = true;
          cidr = [ { cidr = "192.0.2.0/28"; protocol = "tcp"; ports = [ 5432 ]; } ];
          deny = [ "gist.github.com" ];
          dns = { ttl = 30; upstream = [ "192.0.2.53" ]; forward = [ "*.corp.example" ]; syntheticPool = null; };
          limits = { proxyConnections = 512; certCache = null; requestHeadTimeoutMs = 5000; wildcardNamesPerMinute = 30; };
        }"#,
    ]);
    check(&doc);
}

/// modules/options.nix under lib.evalModules: entries from several modules
/// merge, the compiled document passes cell-proxy --check, and the types
/// refuse what the validator would.
#[test]
fn module_options_evaluate_and_validate() {
    if !nix_available() {
        return;
    }
    let Some(lib_expr) = nixpkgs_lib() else {
        return;
    };
    let r = eval_json(&["checks/eval/policy.nix", "--arg", "lib", &lib_expr]);
    let doc = &r["document"];
    let goproxy = doc["https"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["host"] == "proxy.golang.org")
        .unwrap();
    assert_eq!(
        goproxy["methods"],
        serde_json::json!(["GET", "HEAD"]),
        "methods from two modules merge"
    );
    assert_eq!(
        doc["limits"],
        serde_json::json!({ "proxyConnections": 512 }),
        "unset limits are left to the daemon"
    );
    check(doc);
    for (case, result) in r["errors"].as_object().unwrap() {
        let expected = if case == "fine" {
            serde_json::Value::Null
        } else {
            "refused".into()
        };
        assert_eq!(result, &expected, "{case}");
    }
}

/// The secrets document lib/secrets.nix compiles (token and aws kinds,
/// locations, every source) is the one the daemon reads: `cell-proxy
/// --check --secrets` accepts it against the policy lib/policy.nix compiles,
/// and refuses it, naming the secret, when the policy does not intercept a
/// secret's host — the same check the firewall module runs at build time.
#[test]
fn lib_secrets_document_passes_cell_proxy_check() {
    if !nix_available() {
        return;
    }
    let compile = |https: &str| {
        eval_json(&[
            "-E",
            &format!(
                r#"{{
                  policy = (import ./lib/policy.nix).toDocument {{ https = {https}; }};
                  secrets = (import ./lib/secrets.nix).toDocument {{
                    anthropic = {{ env = "ANTHROPIC_API_KEY"; hosts = [ "api.anthropic.com" ]; source.keychain = "anthropic-api-key"; }};
                    search = {{ env = "SEARCH_KEY"; hosts = [ "*.search.example" ]; locations = [ "query" "body" ]; source.command = [ "pass" "show" "search" ]; }};
                    bedrock = {{ kind = "aws"; hosts = [ "bedrock-runtime.us-east-1.amazonaws.com" ]; source.command = [ "aws" "configure" "export-credentials" "--format" "process" ]; }};
                    gh = {{ hosts = [ "api.github.com" ]; source.file = "/run/user/1000/gh-token"; }};
                    ci = {{ env = "CI_TOKEN"; hosts = [ "api.github.com" ]; source.env = "CI_TOKEN"; }};
                  }};
                }}"#
            ),
        ])
    };
    let run = |r: &serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.json");
        let secrets = dir.path().join("secrets.json");
        std::fs::write(&policy, r["policy"].to_string()).unwrap();
        std::fs::write(&secrets, r["secrets"].to_string()).unwrap();
        Command::new(env!("CARGO_BIN_EXE_cell-proxy"))
            .arg("--check")
            .arg("--policy")
            .arg(&policy)
            .arg("--secrets")
            .arg(&secrets)
            .output()
            .unwrap()
    };
    let all = r#"{ "api.anthropic.com" = { }; "*.search.example" = { }; "bedrock-runtime.us-east-1.amazonaws.com" = { }; "api.github.com" = { }; }"#;
    let r = compile(all);
    assert_eq!(r["secrets"]["secrets"].as_array().unwrap().len(), 5);
    let ok = run(&r);
    assert!(
        ok.status.success(),
        "cell-proxy refused the Nix-compiled secrets document {}:\n{}",
        r["secrets"],
        String::from_utf8_lossy(&ok.stderr)
    );
    // The same secrets with one host not allowed: refused, naming it.
    let r = compile(
        r#"{ "api.anthropic.com" = { }; "*.search.example" = { }; "api.github.com" = { }; }"#,
    );
    let refused = run(&r);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("bedrock") && err.contains("bedrock-runtime.us-east-1.amazonaws.com"),
        "{err}"
    );
}
