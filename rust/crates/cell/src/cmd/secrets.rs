//! `cell secrets [reload]`: what the firewall holds, never a value.

use super::{existing, secrets_document, ssh_for};
use crate::cli::SecretsAction;
use crate::secrets;

pub(crate) fn secrets(name: &str, action: Option<SecretsAction>, json: bool) -> anyhow::Result<u8> {
    let (l, meta) = existing(name)?;
    let ssh = ssh_for(&l, &meta)?;
    let channel = secrets::Channel::Vm(&ssh);
    if let Some(SecretsAction::Reload) = action {
        let doc = secrets_document(&meta)?;
        if doc.secrets.is_empty() {
            eprintln!("cell: this cell declares no secrets (cell.secrets; docs/secrets.md)");
            return Ok(0);
        }
        let pushed = secrets::push(&doc, None, &channel)?;
        secrets::report(&doc, &pushed, "cell");
        if !pushed.failed.is_empty() {
            return Ok(1);
        }
    }
    let status = channel.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", secrets::render(&status, std::time::SystemTime::now()));
    }
    Ok(0)
}
