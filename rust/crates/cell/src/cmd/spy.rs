//! `cell spy`: the exchanges the firewall recorded, decoded (see `crate::spy`):
//! printed (text, `--json`, `--raw`), browsed (`--tui`) or written as a
//! report (`--html`). The store is a file (`--file`) or the running cell's,
//! read over SSH.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::{existing, ssh_for};
use crate::cli::SpyArgs;
use crate::spy::tui::{self, Update};

/// The store in the firewall VM (cell.firewall.spy.enable).
const STORE: &str = "/var/lib/cell-proxy/spy.jsonl";
/// How many exchanges the text forms show by default.
const DEFAULT_LINES: usize = 20;
/// A store line longer than this is skipped (the recorder caps bodies far below).
const MAX_LINE: u64 = 64 << 20;
const NO_STORE: &str = "cell: the firewall keeps no spy store; set cell.firewall.spy.enable = true and spy = true on the provider's cell.policy.https entry, then `cell provision`";

#[derive(Clone, Copy)]
enum SpyForm {
    Text,
    Json,
    Raw,
}

fn print_exchange(ex: &Value, form: SpyForm) {
    match form {
        SpyForm::Raw => println!("{}", serde_json::to_string_pretty(ex).unwrap_or_default()),
        SpyForm::Json => println!("{}", crate::spy::to_json(&crate::spy::summarize(ex))),
        SpyForm::Text => {
            let width = std::env::var("COLUMNS")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(100);
            print!("{}", crate::spy::render(&crate::spy::summarize(ex), width));
        }
    }
}

pub(crate) fn spy(name: &str, args: SpyArgs) -> anyhow::Result<u8> {
    if args.tui {
        return browse(name, &args);
    }
    if let Some(out) = &args.html {
        return report(name, &args, out);
    }
    let form = if args.raw {
        SpyForm::Raw
    } else if args.json {
        SpyForm::Json
    } else {
        SpyForm::Text
    };
    let (n, follow) = (args.lines.unwrap_or(DEFAULT_LINES), args.follow);
    if let Some(path) = &args.file {
        let (list, offset) = read_file(path, n)?;
        if list.is_empty() && !follow {
            eprintln!(
                "cell: no exchanges in {} (hosts are recorded when their policy entry has spy = true)",
                path.display()
            );
        }
        for ex in &list {
            print_exchange(ex, form);
        }
        if follow {
            follow_file(path, offset, |ex| {
                print_exchange(&ex, form);
                true
            })?;
        }
        return Ok(0);
    }
    let (l, meta) = existing(name)?;
    let ssh = ssh_for(&l, &meta)?;
    match remote_last(&ssh, n)? {
        Some(list) => list.iter().for_each(|ex| print_exchange(ex, form)),
        None if !follow => {
            eprintln!("{NO_STORE}");
            return Ok(1);
        }
        None => {}
    }
    if follow {
        let mut child = ssh
            .firewall(&format!("tail -n 0 -F {STORE}"))
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("ssh stdout")?;
        for line in std::io::BufReader::new(stdout).lines() {
            for ex in crate::spy::exchanges(&line?, None) {
                print_exchange(&ex, form);
            }
        }
    }
    Ok(0)
}

/// The last `n` exchanges of a store file, and the offset just past its last
/// whole line (where following goes on: a line being written is read whole
/// later).
fn read_file(path: &Path, n: usize) -> anyhow::Result<(Vec<Value>, u64)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading the spy store {}", path.display()))?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..whole]);
    Ok((crate::spy::exchanges(&text, Some(n)), whole as u64))
}

/// Calls `each` with every exchange appended to the file after `offset`, until
/// `each` returns false. The store rotates by rename: a new file (another
/// inode, or a shorter one) is read from its start.
fn follow_file(
    path: &Path,
    mut offset: u64,
    mut each: impl FnMut(Value) -> bool,
) -> anyhow::Result<()> {
    use std::io::Seek;
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).map(|m| (m.ino(), m.len())).ok();
    let mut inode = ino(path).map(|(i, _)| i);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Some((now, len)) = ino(path) else {
            continue;
        };
        if Some(now) != inode || len < offset {
            inode = Some(now);
            offset = 0;
        }
        if len <= offset {
            continue;
        }
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("reading the spy store {}", path.display()))?;
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut more = Vec::new();
        f.take(len - offset).read_to_end(&mut more)?;
        // Only whole lines; the rest is read next time.
        let whole = more.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if whole == 0 && more.len() as u64 >= MAX_LINE {
            // One line past any size the recorder writes: skip it.
            offset += more.len() as u64;
            continue;
        }
        for ex in crate::spy::exchanges(&String::from_utf8_lossy(&more[..whole]), None) {
            if !each(ex) {
                return Ok(());
            }
        }
        offset += whole as u64;
    }
}

/// The exchanges for `--html`: the last `n` of the file or the VM's store.
fn stored(
    name: &str,
    file: Option<&PathBuf>,
    n: usize,
) -> anyhow::Result<Option<(Vec<Value>, String)>> {
    if let Some(path) = file {
        return Ok(Some((read_file(path, n)?.0, path.display().to_string())));
    }
    let (l, meta) = existing(name)?;
    let list = remote_last(&ssh_for(&l, &meta)?, n)?;
    Ok(list.map(|list| (list, format!("cell `{name}` (firewall {STORE})"))))
}

/// The last `n` exchanges of the firewall VM's store; None when it keeps none.
fn remote_last(ssh: &crate::remote::Ssh, n: usize) -> anyhow::Result<Option<Vec<Value>>> {
    let out = ssh
        .firewall(&format!("test -e {STORE} && tail -n {n} {STORE}"))
        .output()
        .context("running ssh")?;
    Ok(out
        .status
        .success()
        .then(|| crate::spy::exchanges(&String::from_utf8_lossy(&out.stdout), Some(n))))
}

/// `--html FILE`: the report, written atomically.
fn report(name: &str, args: &SpyArgs, out: &Path) -> anyhow::Result<u8> {
    let n = args.lines.unwrap_or(tui::MAX_ENTRIES);
    let Some((list, source)) = stored(name, args.file.as_ref(), n)? else {
        eprintln!("{NO_STORE}");
        return Ok(1);
    };
    let count = crate::spy::html::write(out, &list, &source)
        .with_context(|| format!("writing the report {}", out.display()))?;
    println!(
        "wrote {}: {count} exchange{} from {source}",
        out.display(),
        if count == 1 { "" } else { "s" }
    );
    Ok(0)
}

/// Kills and reaps the ssh that feeds the browser when the browser ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of `r`, each at most [`MAX_LINE`] bytes (longer ones are skipped),
/// until `each` returns false or the input ends.
fn bounded_lines(r: impl Read, mut each: impl FnMut(&str) -> bool) -> std::io::Result<()> {
    let mut r = std::io::BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let got = (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf)?;
        if got == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') && got as u64 >= MAX_LINE {
            // Skip to the end of this overlong line.
            loop {
                buf.clear();
                let got = (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf)?;
                if got == 0 || buf.last() == Some(&b'\n') {
                    break;
                }
            }
            continue;
        }
        if !each(&String::from_utf8_lossy(&buf)) {
            return Ok(());
        }
    }
}

/// `--tui`: the browser, fed by the file or by `tail -F` over SSH.
fn browse(name: &str, args: &SpyArgs) -> anyhow::Result<u8> {
    // Before any thread: SIGTERM and SIGHUP end the browser through its
    // normal exit, which puts the terminal back.
    let signals = crate::signals::Signals::install()?;
    let n = args.lines.unwrap_or(tui::MAX_ENTRIES);
    let (tx, rx) = mpsc::sync_channel::<Update>(1024);
    let mut _ssh = None;
    let app = match &args.file {
        Some(path) => {
            let (list, offset) = read_file(path, n)?;
            let mut app = tui::App::new(path.display().to_string(), args.follow);
            for ex in &list {
                app.push(ex);
            }
            let path = path.clone();
            std::thread::spawn(move || {
                let fed = follow_file(&path, offset, |ex| {
                    tx.send(Update::Exchange(Box::new(ex))).is_ok()
                });
                if let Err(e) = fed {
                    let _ = tx.send(Update::Ended(format!("{e:#}")));
                }
            });
            app
        }
        None => {
            let (l, meta) = existing(name)?;
            let ssh = ssh_for(&l, &meta)?;
            // One `tail` for the last n and what follows: nothing is missed
            // between the two. A store not there yet is waited for.
            let mut cmd = ssh.firewall(&format!("tail -n {n} -F {STORE} 2>/dev/null"));
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            crate::signals::unblocked(&mut cmd);
            let mut child = cmd.spawn().context("running ssh")?;
            let stdout = child.stdout.take().context("ssh stdout")?;
            let stderr = child.stderr.take().context("ssh stderr")?;
            _ssh = Some(KillOnDrop(child));
            std::thread::spawn(move || {
                // ssh's own complaints, the last line kept for the footer.
                let err = std::thread::spawn(move || {
                    let mut last = String::new();
                    let _ = bounded_lines(stderr, |l| {
                        if !l.trim().is_empty() {
                            last = l.trim().chars().take(200).collect();
                        }
                        true
                    });
                    last
                });
                let read = bounded_lines(stdout, |line| {
                    crate::spy::exchanges(line, None)
                        .into_iter()
                        .all(|ex| tx.send(Update::Exchange(Box::new(ex))).is_ok())
                });
                let last = err.join().unwrap_or_default();
                let why = match (read, last.is_empty()) {
                    (Err(e), _) => format!("reading from ssh: {e}"),
                    (Ok(()), false) => format!("ssh: {last}"),
                    (Ok(()), true) => "ssh to the firewall ended".to_string(),
                };
                let _ = tx.send(Update::Ended(why));
            });
            tui::App::new(format!("cell `{name}` · firewall {STORE}"), args.follow)
        }
    };
    let got = signals.got.clone();
    tui::run(app, Some(rx), &|| got.load(Ordering::SeqCst) != 0)?;
    Ok(signals.check().err().unwrap_or(0))
}
