//! The CLI as a user meets it without VMs: help, completions, where state
//! lives, errors that say what to do, and `cell allow --edit`.

use std::path::Path;
use std::process::{Command, Output};

fn cell(env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cell"));
    c.args(args)
        .env_remove("CELL_INSTANCE")
        .env_remove("CELL_STATE_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_command_has_help_and_completions_cover_them() {
    let commands = [
        "start",
        "shell",
        "run",
        "agent",
        "allow",
        "deny",
        "policy",
        "blocked",
        "pubkey",
        "status",
        "stop",
        "destroy",
        "provision",
        "doctor",
        "completions",
        "jail",
    ];
    for c in commands {
        let o = cell(&[], &[c, "--help"]);
        assert!(o.status.success(), "{c} --help: {}", text(&o));
        assert!(
            text(&o).contains("--instance"),
            "{c} --help lacks --instance"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let o = cell(&[], &["completions", shell]);
        assert!(o.status.success());
        let script = String::from_utf8_lossy(&o.stdout);
        for c in ["allow", "blocked", "destroy"] {
            assert!(script.contains(c), "{shell} completions lack {c}");
        }
    }
}

#[test]
fn state_lives_under_xdg_state_home_and_missing_instances_say_how_to_create_them() {
    let d = tempfile::tempdir().unwrap();
    let o = cell(&[("XDG_STATE_HOME", d.path())], &["status", "-i", "web"]);
    assert!(!o.status.success());
    let t = text(&o);
    let expected = d.path().join("cell/instances/web/instance.json");
    assert!(t.contains(&expected.display().to_string()), "{t}");
    assert!(t.contains("`cell --instance web` creates it"), "{t}");
    let o = cell(
        &[("XDG_STATE_HOME", d.path())],
        &["status", "-i", "Bad Name"],
    );
    assert!(text(&o).contains("for example"), "{}", text(&o));
    assert!(
        !d.path().join("cell").exists(),
        "looking at an instance created nothing"
    );
}

/// An instance that was built but is not running: enough for the overlay commands.
fn built_instance(state: &Path) -> std::path::PathBuf {
    let specs = state.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("policy.json"),
        r#"{"https":[{"host":"api.anthropic.com"}]}"#,
    )
    .unwrap();
    let dir = state.join("instances/dev");
    std::fs::create_dir_all(&dir).unwrap();
    let meta = serde_json::json!({
        "version": 1, "backend": "qemu", "flake": ".", "attr": "cellConfigurations.x86_64-linux.vms",
        "sshPort": 2222,
        "firewallSpec": specs.join("firewall.json"), "agentSpec": specs.join("agent.json"),
    });
    std::fs::write(dir.join("instance.json"), meta.to_string()).unwrap();
    dir
}

#[test]
fn allow_edit_validates_before_anything_is_applied() {
    let d = tempfile::tempdir().unwrap();
    let state = d.path();
    let dir = built_instance(state);
    let editor = d.path().join("editor.sh");
    let env_for = |script: &str| {
        std::fs::write(&editor, format!("#!/bin/sh\n{script}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    };

    // A valid edit is saved (the cell is not running: in force at the next start).
    env_for(r#"printf '{"tcp":[{"host":"db.example","ports":[5432]}]}' > "$1""#);
    let o = cell(
        &[("CELL_STATE_DIR", state), ("EDITOR", &editor)],
        &["allow", "-i", "dev", "--edit"],
    );
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("+ tcp db.example:5432") && t.contains("saved; in force when the cell starts"),
        "{t}"
    );
    let saved = std::fs::read_to_string(dir.join("overlay.json")).unwrap();
    assert!(saved.contains("db.example"));

    // An invalid edit (no terminal to ask again) changes nothing.
    env_for(r#"printf '{"https":[{"host":"*"}]}' > "$1""#);
    let o = cell(
        &[("CELL_STATE_DIR", state), ("EDITOR", &editor)],
        &["allow", "-i", "dev", "--edit"],
    );
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("https[0].host") && t.contains("unchanged"),
        "{t}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("overlay.json")).unwrap(),
        saved
    );
    assert!(
        !dir.join("overlay.edit.json").exists(),
        "the draft is removed"
    );

    // An editor that fails changes nothing either.
    env_for("exit 3");
    let o = cell(
        &[("CELL_STATE_DIR", state), ("EDITOR", &editor)],
        &["allow", "-i", "dev", "--edit"],
    );
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.join("overlay.json")).unwrap(),
        saved
    );

    // The same allowance twice is no change.
    let o = cell(
        &[("CELL_STATE_DIR", state)],
        &["allow", "-i", "dev", "tcp", "db.example:5432"],
    );
    assert!(text(&o).contains("nothing changed"), "{}", text(&o));
    // tcp without a port is explained.
    let o = cell(
        &[("CELL_STATE_DIR", state)],
        &["allow", "-i", "dev", "tcp", "db.example"],
    );
    assert!(
        text(&o).contains("for example github.com:22"),
        "{}",
        text(&o)
    );
    // The effective policy shows both origins.
    let o = cell(&[("CELL_STATE_DIR", state)], &["policy", "-i", "dev"]);
    let t = text(&o);
    assert!(
        t.contains("nix      policy:https[0]") && t.contains("overlay  overlay:tcp[0]"),
        "{t}"
    );
    // Commands that need the VMs say how to start them.
    let o = cell(&[("CELL_STATE_DIR", state)], &["shell", "-i", "dev"]);
    assert!(
        text(&o).contains("is not running; `cell --instance dev` starts it"),
        "{}",
        text(&o)
    );
}
