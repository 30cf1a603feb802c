//! Reading secret values from their host sources (`source` in the secrets
//! document): the OS keychain, a command, an environment variable or a file.
//! The values go to the firewall daemon's memory, never into the agent VM
//! (docs/secrets.md).
//!
//! Security rules enforced here:
//! - A value lives in a [`Value`], zeroized on drop, whose `Debug` and
//!   `Display` print its length only. Every buffer it passed through (a
//!   command's stdout, a file's contents, the keychain's answer) is zeroized
//!   on drop too.
//! - No error carries any part of a value or of a command's stdout. A
//!   command's stderr is shown (its last lines, truncated), since tools print
//!   their own errors there.
//! - Every read is bounded: [`MAX_VALUE`] bytes, [`COMMAND_TIMEOUT`] for a
//!   command (then its whole process group is killed), [`KEYCHAIN_TIMEOUT`]
//!   for the keychain (which may show an unlock prompt).
//! - A command runs without a shell, with stdin closed; the value is never
//!   put in anything's argv.
//! - A file must be a regular file outside /nix/store readable by its owner
//!   only.
//! - Every source: one trailing `\n` or `\r\n` is removed, nothing else. A
//!   token value with a NUL, CR or LF left in it is refused (it could not go
//!   in an HTTP header); an `aws` value is the `credential_process` JSON, may
//!   span lines, and must hold `AccessKeyId` and `SecretAccessKey` strings.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cell_policy::secrets::{Kind, SecretDecl, SecretsDocument, Source};
use zeroize::{Zeroize, Zeroizing};

/// The largest value (and command output, and file) read, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// How long a `source.command` may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the keychain may take, unlock prompt included.
pub const KEYCHAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The account (macOS) or `username` attribute (Secret Service) of every
/// keychain item cell reads; the item's service is `source.keychain`.
pub const ACCOUNT: &str = "cell";

/// How much of a command's stderr is kept (its end), and shown.
const STDERR_KEEP: usize = 4096;
const STDERR_LINES: usize = 5;
const STDERR_LINE_CHARS: usize = 200;

/// A secret value. Zeroized on drop; printing it shows its length only.
pub struct Value(Zeroizing<String>);

impl Value {
    /// The value itself: for the control socket, nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[allow(dead_code)] // the tests' (tests/sources.rs)
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[allow(dead_code)] // the tests'
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0.len())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A secret whose value could not be read: which secret, from which source,
/// what went wrong and how to fix it. Never any part of the value.
#[derive(Debug)]
pub struct SourceError {
    /// The secret's name.
    pub secret: String,
    /// The source, as the secrets document names it, e.g. `source.env `X``.
    pub source: String,
    pub problem: Problem,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secret `{}` ({}): {}",
            self.secret, self.source, self.problem
        )
    }
}

impl std::error::Error for SourceError {}

/// What went wrong, with the fix. No variant holds a value.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(
        "the variable is not set in cell's environment; `export {0}=…` in the shell that runs cell, or use another source (keychain, command, file)"
    )]
    EnvUnset(String),
    #[error(
        "the variable is set but empty; `export {0}=…` with the value in the shell that runs cell, or use another source (keychain, command, file)"
    )]
    EnvEmpty(String),

    #[error(
        "`{program}` was not found (it runs without a shell, looked up on PATH); install it or give its absolute path"
    )]
    CommandNotFound { program: String },
    #[error("cannot start `{program}`: {error}")]
    CommandSpawn { program: String, error: io::Error },
    #[error(
        "the command {status}; run it yourself to see why (is the tool unlocked or signed in?){stderr}"
    )]
    CommandFailed { status: String, stderr: StderrTail },
    #[error(
        "the command did not finish within {}s and was killed; it may wait for a prompt it cannot show (its stdin is closed): unlock or sign in to the tool first{stderr}",
        .timeout.as_secs()
    )]
    CommandTimeout {
        timeout: Duration,
        stderr: StderrTail,
    },
    #[error("the command printed more than 64 KiB and was stopped; it must print the value only")]
    CommandTooLarge,
    #[error("the command printed nothing on stdout; it must print the value{stderr}")]
    CommandEmpty { stderr: StderrTail },
    #[error("reading the command's output failed: {0}")]
    CommandIo(io::Error),

    #[error(
        "the file is in /nix/store, which every user can read; keep it outside the store (e.g. ~/.config/cell/) with `chmod 600`"
    )]
    FileInStore,
    #[error("the path is not absolute; give an absolute path")]
    FileRelative,
    #[error(
        "cannot open it: {error}; check the path (`install -m 600 /dev/null {path}` creates a file only you can read, then write the value into it)"
    )]
    FileOpen { path: String, error: io::Error },
    #[error(
        "the path is a {what}, not a regular file; point source.file at a file that holds the value"
    )]
    FileNotRegular { what: &'static str },
    #[error("the file is readable by its group or others (mode {mode:04o}); `chmod 600 {path}`")]
    FilePermissions { path: String, mode: u32 },
    #[error("the file is larger than 64 KiB; it must hold the value only")]
    FileTooLarge,
    #[error("the file is empty; write the value into it")]
    FileEmpty,
    #[error("reading the file failed: {0}")]
    FileRead(io::Error),

    #[error("the value is not valid UTF-8; store it as text")]
    NotUtf8,
    #[error(
        "the value has a line break or NUL inside (one trailing newline is removed, nothing else); a value with a line break can't go in an HTTP header: store it on one line"
    )]
    LineBreak,
    #[error(
        "the value is not AWS credential_process JSON ({0}); the source must print {{\"Version\": 1, \"AccessKeyId\": \"…\", \"SecretAccessKey\": \"…\", \"SessionToken\": \"…\"}}, as `aws configure export-credentials --format process` does"
    )]
    AwsJson(String),

    #[error(
        "{place} has no item with service `{service}` and account `{ACCOUNT}`; add it with `{add}` (it prompts for the value, so it stays out of your shell history)"
    )]
    KeychainNotFound {
        place: &'static str,
        service: String,
        add: String,
    },
    #[error(
        "no Secret Service on the session bus ({reason}); use source.command or source.env, or start gnome-keyring/KeePassXC"
    )]
    NoSecretService { reason: String },
    #[error("{place} is locked or refused access ({detail}); {fix}")]
    KeychainLocked {
        place: &'static str,
        detail: String,
        fix: &'static str,
    },
    #[error(
        "{count} items in {place} match service `{service}` and account `{ACCOUNT}`; keep one (delete the others in {place}'s UI)"
    )]
    KeychainAmbiguous {
        place: &'static str,
        service: String,
        count: usize,
    },
    #[error(
        "{place} did not answer within {}s (an unlock prompt may be waiting); unlock it and retry",
        KEYCHAIN_TIMEOUT.as_secs()
    )]
    KeychainTimeout { place: &'static str },
    #[error("{place} failed: {detail}")]
    KeychainFailed { place: &'static str, detail: String },
    #[error(
        "cell has no keychain support on this OS; use source.command, source.env or source.file"
    )]
    #[allow(dead_code)] // built where neither keychain store exists
    KeychainUnsupported,
}

/// The end of a command's stderr, for an error message: its last few lines,
/// each truncated. Displays as `; its stderr ended with:` and the lines
/// indented below, or as nothing; it ends a message.
#[derive(Debug, Default)]
pub struct StderrTail(Vec<String>);

impl StderrTail {
    fn from_bytes(bytes: &[u8]) -> Self {
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        let start = lines.len().saturating_sub(STDERR_LINES);
        StderrTail(
            lines[start..]
                .iter()
                .map(|l| {
                    let mut s: String = l.chars().take(STDERR_LINE_CHARS).collect();
                    if s.len() < l.len() {
                        s.push('…');
                    }
                    s
                })
                .collect(),
        )
    }
}

impl fmt::Display for StderrTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str("; its stderr ended with:")?;
        for l in &self.0 {
            write!(f, "\n    {l}")?;
        }
        Ok(())
    }
}

/// Reads the value of `decl` from its source.
pub fn read(decl: &SecretDecl) -> Result<Value, SourceError> {
    read_with_timeout(decl, COMMAND_TIMEOUT)
}

/// [`read`] with another timeout for a `source.command`.
pub fn read_with_timeout(decl: &SecretDecl, timeout: Duration) -> Result<Value, SourceError> {
    read_source(&decl.source, decl.kind, timeout).map_err(|problem| SourceError {
        secret: decl.name.clone(),
        source: describe(&decl.source),
        problem,
    })
}

/// Reads every secret of `doc`, in order; one that fails does not stop the
/// others, so every problem can be shown at once.
#[allow(dead_code)] // the tests'; the CLI reads secret by secret (secrets::push)
pub fn read_all(doc: &SecretsDocument) -> Vec<(String, Result<Value, SourceError>)> {
    doc.secrets
        .iter()
        .map(|d| (d.name.clone(), read(d)))
        .collect()
}

/// The source as the secrets document writes it, for error messages.
pub fn describe(source: &Source) -> String {
    match source {
        Source::Keychain(s) => format!("source.keychain `{s}`"),
        Source::Command(argv) => {
            let words: Vec<Cow<str>> = argv.iter().map(|a| shell_word(a)).collect();
            format!("source.command `{}`", words.join(" "))
        }
        Source::Env(n) => format!("source.env `{n}`"),
        Source::File(p) => format!("source.file `{p}`"),
    }
}

/// `s` as one shell word, quoted only when it needs to be.
fn shell_word(s: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._/:@%+=,-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

fn read_source(source: &Source, kind: Kind, timeout: Duration) -> Result<Value, Problem> {
    match source {
        Source::Env(name) => {
            let raw = match std::env::var_os(name) {
                None => return Err(Problem::EnvUnset(name.clone())),
                Some(v) => Zeroizing::new(v.into_encoded_bytes()),
            };
            let bytes = strip_newline(&raw);
            if bytes.is_empty() {
                return Err(Problem::EnvEmpty(name.clone()));
            }
            checked(bytes, kind)
        }
        Source::Command(argv) => {
            let out = run_command(argv, timeout)?;
            checked(strip_newline(&out.stdout), kind)
        }
        Source::File(path) => {
            let raw = read_file(Path::new(path))?;
            let bytes = strip_newline(&raw);
            if bytes.is_empty() {
                return Err(Problem::FileEmpty);
            }
            checked(bytes, kind)
        }
        Source::Keychain(service) => {
            let raw = read_keychain(service)?;
            checked(strip_newline(&raw), kind)
        }
    }
}

/// `bytes` without one trailing `\n` or `\r\n`.
fn strip_newline(bytes: &[u8]) -> &[u8] {
    let b = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if b.len() < bytes.len() {
        b.strip_suffix(b"\r").unwrap_or(b)
    } else {
        b
    }
}

/// The AWS `credential_process` fields checked; `Zeroizing` so the parsed
/// copies are wiped too. Other fields (`Version`, `SessionToken`,
/// `Expiration`) are skipped.
#[derive(serde::Deserialize)]
struct AwsProcess {
    #[serde(rename = "AccessKeyId", default)]
    access_key_id: Option<Zeroizing<String>>,
    #[serde(rename = "SecretAccessKey", default)]
    secret_access_key: Option<Zeroizing<String>>,
}

/// The value in `bytes` (already stripped), if it is one `kind` allows.
fn checked(bytes: &[u8], kind: Kind) -> Result<Value, Problem> {
    let text = std::str::from_utf8(bytes).map_err(|_| Problem::NotUtf8)?;
    match kind {
        Kind::Token => {
            if text.contains(['\0', '\r', '\n']) {
                return Err(Problem::LineBreak);
            }
        }
        Kind::Aws => {
            // serde_json's messages can quote the input: only its position
            // and category are shown.
            let parsed: AwsProcess = serde_json::from_str(text).map_err(|e| {
                Problem::AwsJson(match e.classify() {
                    serde_json::error::Category::Data => {
                        "AccessKeyId and SecretAccessKey must be strings in a JSON object".into()
                    }
                    _ => format!("invalid JSON at line {}, column {}", e.line(), e.column()),
                })
            })?;
            for (field, v) in [
                ("AccessKeyId", &parsed.access_key_id),
                ("SecretAccessKey", &parsed.secret_access_key),
            ] {
                if v.as_ref().is_none_or(|s| s.is_empty()) {
                    return Err(Problem::AwsJson(format!("no {field}")));
                }
            }
        }
    }
    Ok(Value(Zeroizing::new(text.to_owned())))
}

/// Reads `r` to its end into a zeroized buffer allocated once (so no
/// reallocation leaves a copy behind); `None` when it holds more than
/// `limit` bytes.
fn read_bounded(mut r: impl Read, limit: usize) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let mut buf = Zeroizing::new(vec![0u8; limit + 1]);
    let mut n = 0;
    loop {
        if n == buf.len() {
            return Ok(None);
        }
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(Some(buf))
}

// ---- file ----

fn read_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, Problem> {
    if !path.is_absolute() {
        return Err(Problem::FileRelative);
    }
    let in_store = |p: &Path| p.starts_with("/nix/store");
    if in_store(path) || std::fs::canonicalize(path).is_ok_and(|p| in_store(&p)) {
        return Err(Problem::FileInStore);
    }
    // O_NONBLOCK: opening a FIFO must not hang; the checks below run on the
    // opened file, so nothing can be swapped in between.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|error| Problem::FileOpen {
            path: path.display().to_string(),
            error,
        })?;
    let meta = file.metadata().map_err(Problem::FileRead)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "directory"
        } else if ft.is_fifo() {
            "FIFO"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "device"
        } else {
            "special file"
        };
        return Err(Problem::FileNotRegular { what });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Problem::FilePermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    read_bounded(file, MAX_VALUE)
        .map_err(Problem::FileRead)?
        .ok_or(Problem::FileTooLarge)
}

// ---- command ----

struct CommandOutput {
    stdout: Zeroizing<Vec<u8>>,
}

/// A command's process group, killed (and its leader reaped) on drop, so
/// nothing it started in its group outlives the read: not on a timeout, an
/// error or a panic.
struct Group {
    child: Child,
    reaped: bool,
}

impl Group {
    fn kill(&mut self) {
        if let Ok(id) = i32::try_from(self.child.id()) {
            // The group may be gone already (ESRCH): nothing to do then.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(id),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Event {
    Stdout(io::Result<Option<Zeroizing<Vec<u8>>>>),
    Stderr(Vec<u8>),
}

/// Keeps the last `STDERR_KEEP` bytes of `r`, reading it to its end.
fn stderr_tail(mut r: impl Read) -> Vec<u8> {
    let mut tail = Vec::with_capacity(2 * STDERR_KEEP);
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                tail.extend_from_slice(&chunk[..k]);
                if tail.len() > STDERR_KEEP {
                    tail.drain(..tail.len() - STDERR_KEEP);
                }
            }
        }
    }
    tail
}

fn exit_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended with {status}"),
    }
}

/// Runs `argv` (no shell, stdin closed, in its own process group), its
/// stdout captured up to [`MAX_VALUE`] and the end of its stderr kept,
/// killed after `timeout`.
fn run_command(argv: &[String], timeout: Duration) -> Result<CommandOutput, Problem> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Problem::CommandNotFound {
            program: String::new(),
        });
    };
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => Problem::CommandNotFound {
                program: program.clone(),
            },
            _ => Problem::CommandSpawn {
                program: program.clone(),
                error,
            },
        })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let mut group = Group {
        child,
        reaped: false,
    };
    let (tx, rx) = mpsc::channel();
    if let Some(out) = stdout {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // A send after the read gave up drops the buffer: zeroized.
            let _ = tx.send(Event::Stdout(read_bounded(out, MAX_VALUE)));
        });
    }
    if let Some(err) = stderr {
        std::thread::spawn(move || {
            let _ = tx.send(Event::Stderr(stderr_tail(err)));
        });
    } else {
        drop(tx);
    }

    let mut out: Option<Zeroizing<Vec<u8>>> = None;
    let mut err: Option<Vec<u8>> = None;
    let mut status: Option<ExitStatus> = None;
    while out.is_none() || err.is_none() || status.is_none() {
        if status.is_none() {
            match group.child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    group.reaped = true;
                }
                Ok(None) => {}
                Err(e) => return Err(Problem::CommandIo(e)),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            group.kill();
            // Killed, its pipes close: the stderr reader ends at once
            // (unless something left the group holding them).
            let stderr = err.or_else(|| {
                std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok()).find_map(
                    |e| match e {
                        Event::Stderr(b) => Some(b),
                        Event::Stdout(_) => None,
                    },
                )
            });
            return Err(Problem::CommandTimeout {
                timeout,
                stderr: StderrTail::from_bytes(&stderr.unwrap_or_default()),
            });
        }
        let wait = (deadline - now).min(Duration::from_millis(10));
        match rx.recv_timeout(wait) {
            Ok(Event::Stdout(Ok(Some(b)))) => out = Some(b),
            Ok(Event::Stdout(Ok(None))) => return Err(Problem::CommandTooLarge),
            Ok(Event::Stdout(Err(e))) => return Err(Problem::CommandIo(e)),
            Ok(Event::Stderr(b)) => err = Some(b),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Both readers are done: only the exit status is missing.
                out.get_or_insert_with(|| Zeroizing::new(Vec::new()));
                err.get_or_insert_with(Vec::new);
                if status.is_none() {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    let (Some(stdout), Some(stderr), Some(status)) = (out, err, status) else {
        unreachable!("the loop ends when all three are known");
    };
    drop(group);
    let tail = || StderrTail::from_bytes(&stderr);
    if !status.success() {
        return Err(Problem::CommandFailed {
            status: exit_text(status),
            stderr: tail(),
        });
    }
    if strip_newline(&stdout).is_empty() {
        return Err(Problem::CommandEmpty { stderr: tail() });
    }
    Ok(CommandOutput { stdout })
}

// ---- keychain ----

/// Asks the OS keychain on a thread, so an unlock prompt nobody answers
/// can't hang cell: after [`KEYCHAIN_TIMEOUT`] the read gives up.
fn read_keychain(service: &str) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let (tx, rx) = mpsc::channel();
    let owned = service.to_owned();
    std::thread::Builder::new()
        .name("cell-keychain".into())
        .spawn(move || {
            let answer = keychain::get(&owned).map(Zeroizing::new);
            // A late answer is dropped here, zeroized.
            let _ = tx.send(answer);
        })
        .map_err(|e| Problem::KeychainFailed {
            place: keychain::PLACE,
            detail: format!("cannot start a thread: {e}"),
        })?;
    match rx.recv_timeout(KEYCHAIN_TIMEOUT) {
        Ok(answer) => answer.map_err(|e| keychain_problem(service, e)),
        Err(_) => Err(Problem::KeychainTimeout {
            place: keychain::PLACE,
        }),
    }
}

/// The problem behind a keyring error. Its bytes (a `BadEncoding` carries
/// the value) are wiped, never shown.
fn keychain_problem(service: &str, e: keyring_core::Error) -> Problem {
    use keyring_core::Error as E;
    let place = keychain::PLACE;
    match e {
        E::NoEntry => Problem::KeychainNotFound {
            place,
            service: service.to_owned(),
            add: keychain::add_command(service),
        },
        E::BadEncoding(mut bytes) => {
            bytes.zeroize();
            Problem::NotUtf8
        }
        E::BadDataFormat(mut bytes, _) => {
            bytes.zeroize();
            Problem::KeychainFailed {
                place,
                detail: "the stored data is malformed".into(),
            }
        }
        E::Ambiguous(entries) => Problem::KeychainAmbiguous {
            place,
            service: service.to_owned(),
            count: entries.len(),
        },
        E::NoStorageAccess(inner) => Problem::KeychainLocked {
            place,
            detail: inner.to_string(),
            fix: keychain::UNLOCK,
        },
        E::PlatformFailure(inner) => {
            keychain::platform_problem(&*inner).unwrap_or_else(|| Problem::KeychainFailed {
                place,
                detail: inner.to_string(),
            })
        }
        other => Problem::KeychainFailed {
            place,
            detail: other.to_string(),
        },
    }
}

/// The Secret Service (freedesktop.org), over zbus.
#[cfg(target_os = "linux")]
mod keychain {
    use keyring_core::api::CredentialStoreApi;

    use super::{ACCOUNT, Problem, shell_word};

    pub(super) const PLACE: &str = "the Secret Service";
    pub(super) const UNLOCK: &str = "unlock the keyring (log in to the desktop session, or `gnome-keyring-daemon --unlock`) and retry";

    /// The secret of the item whose `service` attribute is `service` and
    /// `username` is [`ACCOUNT`] (keyring's Secret Service attributes).
    pub(super) fn get(service: &str) -> keyring_core::Result<Vec<u8>> {
        zbus_secret_service_keyring_store::Store::new()?
            .build(service, ACCOUNT, None)?
            .get_secret()
    }

    /// A command that creates the item [`get`] finds; it reads the value
    /// from the terminal (or stdin).
    pub(super) fn add_command(service: &str) -> String {
        format!(
            "secret-tool store --label={} service {} username {ACCOUNT}",
            shell_word(&format!("cell {service}")),
            shell_word(service)
        )
    }

    /// No session bus, or nothing on it owning org.freedesktop.secrets.
    pub(super) fn platform_problem(e: &(dyn std::error::Error + 'static)) -> Option<Problem> {
        use secret_service::Error as S;
        use zbus::Error as Z;
        let bus = |why: Option<&std::io::Error>| match std::env::var_os("DBUS_SESSION_BUS_ADDRESS")
        {
            None => "DBUS_SESSION_BUS_ADDRESS unset".to_owned(),
            Some(a) => {
                let why = why.map(|e| format!(": {e}")).unwrap_or_default();
                format!(
                    "cannot connect to DBUS_SESSION_BUS_ADDRESS={}{why}",
                    a.to_string_lossy()
                )
            }
        };
        let reason = match e.downcast_ref::<S>()? {
            S::Unavailable => bus(None),
            S::Zbus(Z::Connection(io, _)) => bus(Some(io)),
            S::Zbus(Z::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown" =>
            {
                "nothing on it provides org.freedesktop.secrets".to_owned()
            }
            S::ZbusFdo(zbus::fdo::Error::ServiceUnknown(_)) => {
                "nothing on it provides org.freedesktop.secrets".to_owned()
            }
            S::Zbus(Z::FDO(f)) if matches!(**f, zbus::fdo::Error::ServiceUnknown(_)) => {
                "nothing on it provides org.freedesktop.secrets".to_owned()
            }
            _ => return None,
        };
        Some(Problem::NoSecretService { reason })
    }
}

/// The login Keychain's generic passwords.
#[cfg(target_os = "macos")]
mod keychain {
    use keyring_core::api::CredentialStoreApi;

    use super::{ACCOUNT, Problem, shell_word};

    pub(super) const PLACE: &str = "the login Keychain";
    pub(super) const UNLOCK: &str =
        "unlock it (`security unlock-keychain`) and allow cell when macOS asks, then retry";

    /// The generic password with service `service` and account [`ACCOUNT`].
    pub(super) fn get(service: &str) -> keyring_core::Result<Vec<u8>> {
        apple_native_keyring_store::keychain::Store::new()?
            .build(service, ACCOUNT, None)?
            .get_secret()
    }

    /// `-w` last: `security` prompts for the value.
    pub(super) fn add_command(service: &str) -> String {
        format!(
            "security add-generic-password -s {} -a {ACCOUNT} -w",
            shell_word(service)
        )
    }

    pub(super) fn platform_problem(_: &(dyn std::error::Error + 'static)) -> Option<Problem> {
        None
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod keychain {
    use super::Problem;

    pub(super) const PLACE: &str = "the keychain";
    pub(super) const UNLOCK: &str = "unlock it and retry";

    pub(super) fn get(_: &str) -> keyring_core::Result<Vec<u8>> {
        Err(keyring_core::Error::PlatformFailure(
            "no keychain on this OS".into(),
        ))
    }

    pub(super) fn add_command(_: &str) -> String {
        String::new()
    }

    pub(super) fn platform_problem(_: &(dyn std::error::Error + 'static)) -> Option<Problem> {
        Some(Problem::KeychainUnsupported)
    }
}
