//! The host CLI builds on every system the flake offers it for (issue 10).
//!
//! No macOS toolchain runs these tests, so they check what decides whether the
//! `cell` crate can compile there: the dependency graph cargo resolves for a
//! Mac target, and where the Linux-only code sits in `src/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const DARWIN: &str = "aarch64-apple-darwin";
const LINUX: [&str; 2] = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

/// Crates that only compile on Linux: the workspace's namespace and netfilter
/// crates (setns, netlink, SO_ORIGINAL_DST) and the Linux kernel bindings.
const LINUX_ONLY: [&str; 5] = [
    "cell-netns",
    "cell-proxy",
    "cell-lab",
    "linux-raw-sys",
    "landlock",
];
/// Name prefixes of Linux-only crates (the kernel's netlink protocol).
const LINUX_ONLY_PREFIXES: [&str; 2] = ["netlink-", "rtnetlink"];

/// The crate names in `cell`'s dependency graph for `target`, over `edges`
/// (`cargo tree -e`), resolved offline from Cargo.lock.
fn graph(target: &str, edges: &str) -> BTreeSet<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--locked", "--manifest-path"])
        .arg(&manifest)
        .args(["-p", "cell", "--target", target, "-e", edges])
        .args(["--prefix", "none", "--format", "{p}"])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree --target {target} failed (if a crate is missing, `cargo fetch` downloads every target's; scripts/dev test runs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: BTreeSet<String> = String::from_utf8(out.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(names.contains("cell"), "no `cell` in the tree: {names:?}");
    names
}

fn linux_only(names: &BTreeSet<String>) -> Vec<&str> {
    names
        .iter()
        .map(String::as_str)
        .filter(|n| LINUX_ONLY.contains(n) || LINUX_ONLY_PREFIXES.iter().any(|p| n.starts_with(p)))
        .collect()
}

/// What `nix build .#cell` compiles on a Mac has no Linux-only crate; on
/// Linux the same manifest still brings cell-netns (for `cell jail`), so the
/// exclusion comes from a Linux-only target table, not from a lost dependency.
#[test]
fn darwin_builds_without_linux_only_crates() {
    let darwin = graph(DARWIN, "normal,build");
    assert_eq!(
        linux_only(&darwin),
        Vec::<&str>::new(),
        "Linux-only crates in cell's {DARWIN} build graph: move them to \
         [target.'cfg(target_os = \"linux\")'.dependencies] in crates/cell/Cargo.toml"
    );
    assert!(darwin.contains("cell-policy") && darwin.contains("nix"));
    for target in LINUX {
        let linux = graph(target, "normal,build");
        assert!(
            linux.contains("cell-netns"),
            "cell-netns missing for {target}: `cell jail` needs it"
        );
    }
}

/// `cargo test -p cell` on a Mac does not pull the namespace lab either; the
/// Linux test suites keep it.
#[test]
fn darwin_dev_dependencies_have_no_linux_only_crates() {
    let darwin = graph(DARWIN, "normal,build,dev");
    assert_eq!(
        linux_only(&darwin),
        Vec::<&str>::new(),
        "Linux-only crates among cell's {DARWIN} dev-dependencies: move them to \
         [target.'cfg(target_os = \"linux\")'.dev-dependencies]"
    );
    for target in LINUX {
        assert!(graph(target, "normal,build,dev").contains("cell-lab"));
    }
}

/// Names whose items exist only on Linux (cell-netns; the nix crate's
/// `#[cfg(linux_android)]` modules and flags: sched's setns/unshare, prctl,
/// signalfd, memfd, epoll, inotify, timerfd, mount, pipe2, accept4, dup3,
/// SOCK_CLOEXEC/SOCK_NONBLOCK type flags, O_PATH, SO_ORIGINAL_DST) and std's
/// Linux extensions.
const LINUX_ONLY_APIS: &[&str] = &[
    "cell_netns",
    "nix::sched",
    "prctl",
    "signalfd",
    "memfd",
    "epoll",
    "inotify",
    "timerfd",
    "nix::mount",
    "pipe2",
    "accept4",
    "dup3",
    "SOCK_CLOEXEC",
    "SOCK_NONBLOCK",
    "O_PATH",
    "OriginalDst",
    "std::os::linux",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("reading src/").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Linux-only code lives in modules named `linux` (`src/**/linux.rs` or
/// `src/**/linux/`), each declared `#[cfg(target_os = "linux")] mod linux;`:
/// one boundary to read, instead of cfg attributes scattered over the CLI.
#[test]
fn linux_only_code_sits_behind_one_cfg_boundary() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut misplaced = Vec::new();
    let mut linux_modules = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("reading a source file");
        let rel = file.strip_prefix(&src).expect("under src/");
        let in_linux = rel
            .components()
            .any(|c| c.as_os_str() == "linux" || c.as_os_str() == "linux.rs");
        if !in_linux {
            for api in LINUX_ONLY_APIS {
                if text.contains(api) {
                    misplaced.push(format!("{} uses {api}", rel.display()));
                }
            }
        }
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            if line.ends_with("mod linux;") {
                linux_modules += 1;
                assert!(
                    i > 0 && lines[i - 1] == r#"#[cfg(target_os = "linux")]"#,
                    "{}:{}: `mod linux;` must be preceded by #[cfg(target_os = \"linux\")]",
                    rel.display(),
                    i + 1
                );
            }
        }
    }
    assert_eq!(
        misplaced,
        Vec::<String>::new(),
        "Linux-only APIs outside a `linux` module: move them into one (see src/jail/linux/)"
    );
    assert!(
        linux_modules > 0,
        "no `#[cfg(target_os = \"linux\")] mod linux;` in src/: where did `cell jail` go?"
    );
}
