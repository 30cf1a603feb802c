//! `cell spy`: the exchanges the firewall recorded, decoded (see `crate::spy`).

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;

use super::{existing, ssh_for};
use crate::cli::SpyArgs;

#[derive(Clone, Copy)]
enum SpyForm {
    Text,
    Json,
    Raw,
}

fn print_exchange(ex: &serde_json::Value, form: SpyForm) {
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
    let form = if args.raw {
        SpyForm::Raw
    } else if args.json {
        SpyForm::Json
    } else {
        SpyForm::Text
    };
    let (file, n, follow) = (args.file, args.lines, args.follow);
    const STORE: &str = "/var/lib/cell-proxy/spy.jsonl";
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the spy store {}", path.display()))?;
        let list = crate::spy::exchanges(&text, Some(n));
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
            // New lines as they are appended (the store rotates by rename:
            // a shorter file means a new one, read from its start).
            let mut offset = text.len() as u64;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0;
                }
                if len > offset {
                    use std::io::{Read, Seek};
                    let mut f = std::fs::File::open(&path)?;
                    f.seek(std::io::SeekFrom::Start(offset))?;
                    let mut more = String::new();
                    f.read_to_string(&mut more)?;
                    // Only whole lines; the rest is read next time.
                    let whole = more.rfind('\n').map_or(0, |i| i + 1);
                    for ex in crate::spy::exchanges(&more[..whole], None) {
                        print_exchange(&ex, form);
                    }
                    offset += whole as u64;
                }
            }
        }
        return Ok(0);
    }
    let (l, meta) = existing(name)?;
    let ssh = ssh_for(&l, &meta)?;
    let out = ssh
        .firewall(&format!("test -e {STORE} && tail -n {n} {STORE}"))
        .output()
        .context("running ssh")?;
    if !out.status.success() && !follow {
        eprintln!(
            "cell: the firewall keeps no spy store; set cell.firewall.spy.enable = true and spy = true on the provider's cell.policy.https entry, then `cell provision`"
        );
        return Ok(1);
    }
    for ex in crate::spy::exchanges(&String::from_utf8_lossy(&out.stdout), Some(n)) {
        print_exchange(&ex, form);
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
