//! Reading secret values from their host sources (src/sources.rs) with real
//! files, real processes and, when its binaries are installed, a real Secret
//! Service on a private D-Bus.
//!
//! `cell` is a binary crate, so this file compiles src/sources.rs itself as a
//! module: the tests run the very code the CLI runs, through its public API
//! only, and need nothing of main.rs.

#[path = "../src/sources.rs"]
mod sources;

mod host_sources {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use cell_policy::secrets::{Kind, Location, SecretDecl, SecretsDocument, Source};

    use crate::sources::{self, SourceError, Value};

    /// A value distinctive enough that finding it anywhere is a leak.
    const SECRET: &str = "sk-test-8c1d5f0e9a7b4c3d";
    /// Its middle: a leak of part of the value is a leak too.
    const SECRET_PART: &str = "8c1d5f0e";

    fn decl(name: &str, kind: Kind, source: Source) -> SecretDecl {
        SecretDecl {
            name: name.into(),
            env: None,
            placeholder: cell_policy::secrets::placeholder(name),
            hosts: vec!["api.example.com".into()],
            kind,
            locations: vec![Location::Header],
            access_key_id_placeholder: (kind == Kind::Aws)
                .then(|| cell_policy::secrets::access_key_id_placeholder(name)),
            source,
        }
    }

    fn token(name: &str, source: Source) -> SecretDecl {
        decl(name, Kind::Token, source)
    }

    fn cmd(argv: &[&str]) -> Source {
        Source::Command(argv.iter().map(|s| s.to_string()).collect())
    }

    fn sh(script: &str) -> Source {
        cmd(&["sh", "-c", script])
    }

    /// A file holding [`SECRET`] (no newline), so that a command can print it
    /// without the value in its argv (which error messages show).
    struct SecretFile(tempfile::TempDir);

    impl SecretFile {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("s"), SECRET).unwrap();
            SecretFile(dir)
        }

        /// `sh -c SCRIPT FILE`: `$0` in the script is the file.
        fn sh(&self, script: &str) -> Source {
            let path = self.0.path().join("s");
            cmd(&["sh", "-c", script, path.to_str().unwrap()])
        }
    }

    fn ok(d: &SecretDecl) -> Value {
        match sources::read(d) {
            Ok(v) => v,
            Err(e) => panic!("reading {}: {e}", d.name),
        }
    }

    /// Reads `d`, expecting an error that names the secret, its source kind
    /// and every one of `fragments`, and shows no part of the value, neither
    /// displayed nor debug-printed.
    fn refused(d: &SecretDecl, fragments: &[&str]) -> String {
        let e: SourceError = match sources::read(d) {
            Ok(v) => panic!("{} was read ({v}), expected an error", d.name),
            Err(e) => e,
        };
        let shown = e.to_string();
        let debug = format!("{e:?}");
        for text in [&shown, &debug] {
            assert!(
                !text.contains(SECRET_PART),
                "the value leaked into an error: {text}"
            );
        }
        assert!(
            shown.starts_with(&format!("secret `{}` (source.{} ", d.name, d.source.kind())),
            "{shown}"
        );
        for f in fragments {
            assert!(shown.contains(f), "no `{f}` in: {shown}");
        }
        shown
    }

    /// A value prints as its length only.
    #[test]
    fn a_value_is_redacted_when_printed() {
        let f = SecretFile::new();
        let v = ok(&token("t", f.sh("cat \"$0\"; echo")));
        assert_eq!(v.expose(), SECRET);
        assert_eq!(
            format!("{v:?}"),
            format!("<redacted, {} bytes>", SECRET.len())
        );
        assert_eq!(
            format!("{v}"),
            format!("<redacted, {} bytes>", SECRET.len())
        );
        assert!(!format!("{:?}", sources::read_all(&SecretsDocument::default())).contains(SECRET));
    }

    // ---- env ----

    /// Sets a variable no other test reads.
    fn set_env(name: &str, value: &str) {
        // SAFETY: every read and write of the environment in this test
        // binary goes through std, which serializes them; the name is unique
        // to the calling test.
        unsafe { std::env::set_var(name, value) }
    }

    /// An env source gives the variable's value; one trailing newline goes.
    #[test]
    fn env_source_reads_the_variable() {
        set_env("CELL_SOURCES_TEST_ENV_OK", &format!("{SECRET}\n"));
        let v = ok(&token(
            "envok",
            Source::Env("CELL_SOURCES_TEST_ENV_OK".into()),
        ));
        assert_eq!(v.expose(), SECRET);
    }

    /// Unset and empty variables are refused with the `export` that fixes them.
    #[test]
    fn env_source_unset_or_empty_is_refused_with_the_fix() {
        let unset = token("envunset", Source::Env("CELL_SOURCES_TEST_UNSET".into()));
        refused(
            &unset,
            &[
                "not set",
                "`export CELL_SOURCES_TEST_UNSET=…`",
                "another source",
            ],
        );
        set_env("CELL_SOURCES_TEST_EMPTY", "");
        let empty = token("envempty", Source::Env("CELL_SOURCES_TEST_EMPTY".into()));
        refused(&empty, &["empty", "`export CELL_SOURCES_TEST_EMPTY=…`"]);
    }

    /// A CR, LF or NUL inside a token is refused (from any source).
    #[test]
    fn a_line_break_or_nul_inside_a_token_is_refused() {
        set_env("CELL_SOURCES_TEST_CR", &format!("{SECRET}\rx"));
        let cr = token("envcr", Source::Env("CELL_SOURCES_TEST_CR".into()));
        refused(
            &cr,
            &["a value with a line break can't go in an HTTP header"],
        );
        let f = SecretFile::new();
        // Only one trailing newline is removed.
        let two = token("twonl", f.sh("cat \"$0\"; printf '\\n\\n'"));
        refused(&two, &["line break"]);
        let nul = token("nul", f.sh("cat \"$0\"; printf '\\0x'"));
        refused(&nul, &["NUL"]);
    }

    // ---- command ----

    /// A command's stdout is the value: run without a shell, one trailing
    /// `\n` or `\r\n` removed and no other whitespace, stdin closed.
    #[test]
    fn command_source_reads_stdout() {
        let f = SecretFile::new();
        let v = ok(&token("crlf", f.sh("cat \"$0\"; printf '\\r\\n'")));
        assert_eq!(v.expose(), SECRET);
        let v = ok(&token(
            "spaces",
            f.sh("printf ' '; cat \"$0\"; printf ' \\n'"),
        ));
        assert_eq!(v.expose(), format!(" {SECRET} "));
        // No shell: `$HOME` is an argument, not an expansion.
        let v = ok(&token("noshell", cmd(&["echo", "$HOME"])));
        assert_eq!(v.expose(), "$HOME");
        // stdin is /dev/null: `cat` ends at once, with nothing.
        let started = Instant::now();
        refused(&token("cat", cmd(&["cat"])), &["printed nothing"]);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A failing command is refused with its exit status and stderr, never
    /// its stdout.
    #[test]
    fn command_failure_shows_status_and_stderr_not_stdout() {
        let f = SecretFile::new();
        let d = token(
            "failing",
            f.sh("cat \"$0\"; echo 'op: not signed in' >&2; echo 'run op signin' >&2; exit 3"),
        );
        let shown = refused(
            &d,
            &[
                "exited with status 3",
                "op: not signed in",
                "run op signin",
                "run it yourself",
            ],
        );
        assert!(shown.contains("source.command `sh -c '"), "{shown}");
        let killed = token("killed", sh("kill -9 $$"));
        refused(&killed, &["killed by signal 9"]);
    }

    /// Only the last lines of a long stderr are shown, each truncated.
    #[test]
    fn command_stderr_is_shown_truncated() {
        let d = token(
            "noisy",
            sh("i=0; while [ $i -lt 100 ]; do echo line$i >&2; i=$((i+1)); done; exit 1"),
        );
        let shown = refused(
            &d,
            &["its stderr ended with:\n    line95\n", "\n    line99"],
        );
        assert!(!shown.contains("line94"), "{shown}");
        let long = token(
            "long",
            sh("head -c 5000 /dev/zero | tr '\\0' x >&2; echo >&2; exit 1"),
        );
        let shown = refused(&long, &[&format!("\n    {}…", "x".repeat(200))]);
        assert!(shown.len() < 1000, "{} bytes shown", shown.len());
    }

    /// A missing program and an empty output are refused with the fix.
    #[test]
    fn command_not_found_or_empty_is_refused_with_the_fix() {
        let d = token("missing", cmd(&["cell-no-such-tool", "x"]));
        refused(
            &d,
            &[
                "`cell-no-such-tool` was not found",
                "install it or give its absolute path",
            ],
        );
        refused(
            &token("empty", sh("echo >&2 'nothing stored'; echo")),
            &["printed nothing on stdout", "nothing stored"],
        );
    }

    /// More than 64 KiB on stdout: refused, the command stopped at once.
    #[test]
    fn command_oversized_output_is_refused() {
        let started = Instant::now();
        let f = SecretFile::new();
        let d = token("huge", f.sh("exec yes \"$(cat \"$0\")\""));
        refused(&d, &["more than 64 KiB", "value only"]);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Whether `pid` still runs (a zombie does not).
    fn running(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(stat) => {
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.split_whitespace().next());
                state != Some("Z")
            }
        }
    }

    /// A command past its timeout is killed with everything it started in
    /// its process group, and refused with the hint.
    #[test]
    fn command_timeout_kills_the_command_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let d = token(
            "slow",
            cmd(&[
                "sh",
                "-c",
                "echo $$ > \"$0\"; sleep 60 & echo $! >> \"$0\"; wait",
                pids.to_str().unwrap(),
            ]),
        );
        let started = Instant::now();
        let e = sources::read_with_timeout(&d, Duration::from_secs(1)).unwrap_err();
        let shown = e.to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{shown}");
        assert!(
            shown.contains("did not finish within 1s and was killed"),
            "{shown}"
        );
        assert!(shown.contains("unlock or sign in"), "{shown}");
        let text = std::fs::read_to_string(&pids).unwrap();
        let pids: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
        assert_eq!(pids.len(), 2, "{text}");
        // The kill is delivered before read returns; give the kernel a moment
        // to tear the grandchild down.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|p| running(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in pids {
            assert!(!running(p), "pid {p} (the shell or its sleep) still runs");
        }
    }

    // ---- file ----

    fn write_file(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn file(name: &str, path: &Path) -> SecretDecl {
        token(name, Source::File(path.to_str().unwrap().into()))
    }

    /// A file readable by its owner only gives its contents, one trailing
    /// newline removed.
    #[test]
    fn file_source_reads_an_owner_only_file() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400, 0o700] {
            let p = write_file(dir.path(), "key", format!("{SECRET}\n").as_bytes(), mode);
            assert_eq!(ok(&file("fileok", &p)).expose(), SECRET);
            std::fs::remove_file(&p).unwrap();
        }
    }

    /// Group- or world-readable files are refused with the `chmod` that
    /// fixes them; so are non-regular files and the Nix store.
    #[test]
    fn file_source_refuses_readable_special_and_store_files() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o640, 0o604, 0o620, 0o644, 0o666] {
            let p = write_file(dir.path(), "open", SECRET.as_bytes(), mode);
            let chmod = format!("`chmod 600 {}`", p.display());
            let m = format!("mode {mode:04o}");
            refused(
                &file("fileperm", &p),
                &["readable by its group or others", &chmod, &m],
            );
            std::fs::remove_file(&p).unwrap();
        }
        refused(
            &file("filedir", dir.path()),
            &["the path is a directory, not a regular file"],
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        refused(&file("filefifo", &fifo), &["FIFO, not a regular file"]);
        let store = Path::new("/nix/store/00000000000000000000000000000000-key");
        refused(
            &file("filestore", store),
            &["/nix/store", "outside the store"],
        );
        // A link into the store is the store.
        if Path::new("/nix/store").is_dir() {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink("/nix/store", &link).unwrap();
            refused(&file("filestorelink", &link), &["/nix/store"]);
        }
        let missing = dir.path().join("missing");
        refused(
            &file("filemissing", &missing),
            &["cannot open it", "install -m 600 /dev/null"],
        );
    }

    /// Empty, oversized, non-UTF-8 and multi-line files are refused.
    #[test]
    fn file_source_refuses_bad_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path(), "empty", b"\n", 0o600);
        refused(
            &file("fileempty", &p),
            &["empty", "write the value into it"],
        );
        let big = format!("{SECRET}{}", "x".repeat(64 * 1024));
        let p = write_file(dir.path(), "big", big.as_bytes(), 0o600);
        refused(&file("filebig", &p), &["larger than 64 KiB"]);
        let p = write_file(dir.path(), "exact", &[b'x'; 64 * 1024], 0o600);
        assert_eq!(ok(&file("fileexact", &p)).len(), 64 * 1024);
        let p = write_file(dir.path(), "latin1", b"sk-\xe9\xff", 0o600);
        refused(&file("filelatin1", &p), &["not valid UTF-8"]);
        let p = write_file(
            dir.path(),
            "twolines",
            format!("{SECRET}\nx\n").as_bytes(),
            0o600,
        );
        refused(&file("filelines", &p), &["can't go in an HTTP header"]);
    }

    // ---- aws ----

    /// An aws secret is the `credential_process` JSON: lines allowed, the two
    /// key fields required, nothing of it in an error.
    #[test]
    fn aws_value_is_checked_credential_process_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            "{{\n  \"Version\": 1,\n  \"AccessKeyId\": \"AKIAEXAMPLE\",\n  \"SecretAccessKey\": \"{SECRET}\",\n  \"SessionToken\": \"tok\"\n}}"
        );
        let p = write_file(dir.path(), "aws", format!("{json}\n").as_bytes(), 0o600);
        let aws = |n: &str, p: &Path| decl(n, Kind::Aws, Source::File(p.to_str().unwrap().into()));
        assert_eq!(ok(&aws("awsok", &p)).expose(), json);
        // The same multi-line text is no token.
        refused(&file("awsastoken", &p), &["line break"]);

        let bad = [
            (
                format!("{{\"AccessKeyId\": \"AKIA\", \"SecretAccessKey\": \"{SECRET}\""),
                "invalid JSON at line 1",
            ),
            (
                format!("{{\"AccessKeyId\": \"AKIA\", \"SecretAccessKey\": [\"{SECRET}\"]}}"),
                "must be strings",
            ),
            (
                format!("{{\"AccessKeyId\": 5, \"SecretAccessKey\": \"{SECRET}\"}}"),
                "must be strings",
            ),
            (format!("\"{SECRET}\""), "must be strings"),
            (
                format!("{{\"AccessKeyId\": \"AKIA\", \"Secret\": \"{SECRET}\"}}"),
                "no SecretAccessKey",
            ),
            (
                format!("{{\"AccessKeyId\": \"\", \"SecretAccessKey\": \"{SECRET}\"}}"),
                "no AccessKeyId",
            ),
            (SECRET.to_string(), "invalid JSON"),
        ];
        for (i, (text, why)) in bad.iter().enumerate() {
            let p = write_file(dir.path(), &format!("bad{i}"), text.as_bytes(), 0o600);
            refused(
                &aws(&format!("awsbad{i}"), &p),
                &[
                    why,
                    "not AWS credential_process JSON",
                    "aws configure export-credentials",
                ],
            );
        }
    }

    // ---- read_all ----

    /// read_all reads every secret in order; a failure stops nothing.
    #[test]
    fn read_all_reads_every_secret_despite_failures() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(dir.path(), "k", b"from-file\n", 0o600);
        let doc = SecretsDocument {
            version: 1,
            secrets: vec![
                token(
                    "first",
                    Source::Env("CELL_SOURCES_TEST_READ_ALL_UNSET".into()),
                ),
                file("second", &p),
                token("third", cmd(&["false"])),
                token("fourth", cmd(&["echo", "from-command"])),
            ],
        };
        let got = sources::read_all(&doc);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["first", "second", "third", "fourth"]);
        assert!(got[0].1.is_err());
        assert_eq!(got[1].1.as_ref().unwrap().expose(), "from-file");
        assert!(
            got[2]
                .1
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("status 1")
        );
        assert_eq!(got[3].1.as_ref().unwrap().expose(), "from-command");
    }

    // ---- keychain: the Secret Service ----

    /// The Secret Service round trip: Linux only, like the store.
    #[cfg(target_os = "linux")]
    mod secret_service {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        use std::process::{Child, Command, Stdio};
        use std::time::{Duration, Instant};

        use cell_policy::secrets::Source;

        use super::{SECRET, ok, refused, token};
        use crate::sources;

        /// Processes killed (their groups too) and reaped on drop, even when a
        /// test fails.
        struct Daemons(Vec<Child>);

        impl Drop for Daemons {
            fn drop(&mut self) {
                for c in self.0.iter_mut().rev() {
                    if let Ok(id) = i32::try_from(c.id()) {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(id),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }

        fn on_path(bin: &str) -> bool {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        }

        /// Runs `c` with `input` on stdin, killed after 20 s.
        fn run(c: &mut Command, input: &[u8]) -> std::process::Output {
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(input).unwrap();
            let id = child.id();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("{c:?} (pid {id}) did not finish within 20s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            child.wait_with_output().unwrap()
        }

        /// Keychain secrets on Linux, against the Secret Service the way users
        /// run it: no session bus → its own error; a bus but no provider → the
        /// same error; an item missing → the exact `secret-tool store` line that
        /// adds it, which this test then runs (value on stdin) before `read`
        /// finds the value. Everything runs on a private bus with a throwaway
        /// gnome-keyring (temp HOME and XDG dirs), killed at the end.
        ///
        /// One test, because the store finds the bus through this process's
        /// DBUS_SESSION_BUS_ADDRESS. Needs the Debian packages dbus-daemon,
        /// gnome-keyring and libsecret-tools; without them it prints SKIPPED.
        #[test]
        fn keychain_round_trip() {
            let tmp = tempfile::tempdir().unwrap();
            let dir = |n: &str| {
                let p = tmp.path().join(n);
                std::fs::create_dir_all(&p).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
                p
            };
            let (home, runtime, data, config) =
                (dir("home"), dir("run"), dir("data"), dir("config"));
            // A service name a shell must quote: the printed command must still work.
            let service = format!("cell test's key {}", std::process::id());
            let d = token("kc", Source::Keychain(service.clone()));

            // SAFETY: see set_env; only this test reads these variables.
            unsafe {
                std::env::remove_var("DBUS_SESSION_BUS_ADDRESS");
                // zbus falls back to $XDG_RUNTIME_DIR/bus: an empty directory.
                std::env::set_var("XDG_RUNTIME_DIR", &runtime);
            }
            refused(
                &d,
                &[
                    "no Secret Service on the session bus (DBUS_SESSION_BUS_ADDRESS unset)",
                    "use source.command or source.env, or start gnome-keyring/KeePassXC",
                ],
            );

            let missing: Vec<&str> = ["dbus-daemon", "gnome-keyring-daemon", "secret-tool"]
                .into_iter()
                .filter(|b| !on_path(b))
                .collect();
            if !missing.is_empty() {
                if std::env::var_os("CI").is_some() {
                    panic!(
                        "{} needed in CI (scripts/dev deps installs dbus-daemon gnome-keyring libsecret-tools)",
                        missing.join(", ")
                    );
                }
                println!(
                    "SKIPPED: {} not on PATH (Debian: dbus-daemon gnome-keyring libsecret-tools)",
                    missing.join(", ")
                );
                return;
            }

            // A session bus of our own, with no service activation, so nothing
            // outside this test can answer on it.
            let socket = tmp.path().join("bus");
            let conf = tmp.path().join("bus.conf");
            std::fs::write(
                &conf,
                format!(
                    r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
     "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
    <busconfig>
      <type>session</type>
      <listen>unix:path={}</listen>
      <auth>EXTERNAL</auth>
      <policy context="default">
        <allow send_destination="*" eavesdrop="true"/>
        <allow eavesdrop="true"/>
        <allow own="*"/>
      </policy>
    </busconfig>
    "#,
                    socket.display()
                ),
            )
            .unwrap();
            let mut daemons = Daemons(Vec::new());
            daemons.0.push(
                Command::new("dbus-daemon")
                    .arg(format!("--config-file={}", conf.display()))
                    .args(["--nofork", "--nopidfile"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .unwrap(),
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while !socket.exists() {
                assert!(Instant::now() < deadline, "dbus-daemon made no socket");
                std::thread::sleep(Duration::from_millis(20));
            }
            let address = format!("unix:path={}", socket.display());
            // SAFETY: as above.
            unsafe { std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &address) };
            refused(
                &d,
                &[
                    "no Secret Service on the session bus (nothing on it provides org.freedesktop.secrets)",
                ],
            );

            let env = |c: &mut Command| {
                c.env("DBUS_SESSION_BUS_ADDRESS", &address)
                    .env("HOME", &home)
                    .env("XDG_RUNTIME_DIR", &runtime)
                    .env("XDG_DATA_HOME", &data)
                    .env("XDG_CONFIG_HOME", &config)
                    .env_remove("DISPLAY")
                    .env_remove("WAYLAND_DISPLAY");
            };
            // A login keyring created and unlocked with a throwaway password.
            let mut gk = Command::new("gnome-keyring-daemon");
            gk.args(["--foreground", "--unlock", "--components=secrets"]);
            env(&mut gk);
            let mut gk = gk
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap();
            let mut pw = gk.stdin.take().unwrap();
            daemons.0.push(gk);
            pw.write_all(b"cell-test-keyring").unwrap();
            drop(pw);

            // Until gnome-keyring owns the name, the error is "no Secret Service".
            let deadline = Instant::now() + Duration::from_secs(15);
            let shown = loop {
                let e = sources::read(&d).unwrap_err().to_string();
                if !e.contains("no Secret Service") || Instant::now() > deadline {
                    break e;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(
                shown.contains(&format!(
                    "the Secret Service has no item with service `{service}` and account `cell`"
                )),
                "{shown}"
            );
            let add = shown
                .split("add it with `")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .unwrap_or_else(|| panic!("no command in: {shown}"));
            assert_eq!(
                add,
                format!(
                    "secret-tool store --label='cell cell test'\\''s key {pid}' service 'cell test'\\''s key {pid}' username cell",
                    pid = std::process::id()
                )
            );
            refused(&d, &["it prompts for the value"]);

            // The printed line, as a user would paste it, the value on stdin.
            let mut store = Command::new("sh");
            store.args(["-c", add]);
            env(&mut store);
            let out = run(&mut store, format!("{SECRET}\n").as_bytes());
            assert!(
                out.status.success(),
                "{add}: {}",
                String::from_utf8_lossy(&out.stderr)
            );

            let v = ok(&d);
            assert_eq!(v.expose(), SECRET);
            drop(daemons);
        }
    }
}
