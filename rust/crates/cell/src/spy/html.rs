//! `cell spy --html FILE`: one agent run as a self-contained HTML page — the
//! totals, a chart of the exchanges over time (when each ran, its tokens, its
//! latency and time to first token), the models and tools used, the distinct
//! system prompts once each, and every exchange as a `<details>` element.
//!
//! The page opens in any browser without a network: no script, no font, no
//! image is loaded from anywhere; the chart is inline SVG written here. The
//! bodies are the agent's and the provider's words, so they are hostile
//! input: every string goes through [`esc`] before it reaches the page (no
//! value is ever interpolated raw, in text or attribute), and the page's
//! Content-Security-Policy forbids scripts and every remote load anyway, so
//! a mistake in escaping still cannot run code or call out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use serde_json::Value;

use super::{Message, Summary, new_messages};

/// Nothing but the inline `<style>` may load or run.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// Each text block shows at most this many characters (`--raw` has them all).
const MAX_TEXT: usize = 64 * 1024;

/// Text safe in HTML content and in quoted attribute values; other control
/// characters than newline and tab become `�`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// One exchange, decoded, with its place in time.
struct Item {
    s: Summary,
    messages: Vec<Message>,
    /// Start, milliseconds since the epoch (when `at` parses).
    start: Option<f64>,
}

fn epoch_ms(at: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(at)
        .or_else(|_| humantime::parse_rfc3339_weak(at))
        .ok()?;
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64() * 1000.0)
}

/// `HH:MM:SS` (UTC) of an epoch time in milliseconds.
fn clock(ms: f64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0.0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..19).unwrap_or(&s).to_string()
}

fn secs(ms: f64) -> String {
    if ms < 10_000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms < 120_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!(
            "{}m {:02}s",
            (ms / 60_000.0) as u64,
            ((ms / 1000.0) as u64) % 60
        )
    }
}

/// 1234567 → `1,234,567`.
fn num(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Short form for axis labels: 950, 1.2k, 34k, 1.5M.
fn short(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 10e3 {
        format!("{:.0}k", n / 1e3)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// A round step for about `ticks` intervals over `0..max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Some text, cut to [`MAX_TEXT`] characters with a note saying so.
fn capped(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        None => esc(text),
        Some((i, _)) => format!(
            "{}<span class=\"cut\">… {} more characters (cell spy --raw shows them)</span>",
            esc(&text[..i]),
            num((text.chars().count() - MAX_TEXT) as u64)
        ),
    }
}

fn pretty(args: &str) -> String {
    serde_json::from_str::<Value>(args)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| args.to_string())
}

/// A CSS class for a provider's badge (a fixed set: never the value itself).
fn provider_class(p: &str) -> &'static str {
    match p {
        "anthropic" => "p-anthropic",
        "openai" => "p-openai",
        "bedrock" => "p-bedrock",
        _ => "p-other",
    }
}

/// Distinct, readable colours for the models, in order of first appearance.
const PALETTE: [&str; 8] = [
    "#4f6bed", "#e8743b", "#19a979", "#945ecf", "#ed4a7b", "#13a4b4", "#d1a000", "#6c7a89",
];

/// Writes the report of `exchanges` to `path` atomically (a temporary file
/// beside it, then a rename: a reader never sees half a page). Returns how
/// many exchanges it holds.
pub fn write(path: &Path, exchanges: &[Value], source: &str) -> anyhow::Result<usize> {
    let html = report(exchanges, source, SystemTime::now());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(html.as_bytes())
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| exchanges.len())
}

/// The whole page.
pub fn report(exchanges: &[Value], source: &str, now: SystemTime) -> String {
    let items: Vec<Item> = exchanges
        .iter()
        .map(|ex| {
            let s = super::summarize(ex);
            let messages = new_messages(ex, &s);
            let start = epoch_ms(&s.at);
            Item { s, messages, start }
        })
        .collect();
    let mut models: Vec<String> = Vec::new();
    for it in &items {
        let m = it.s.model.clone().unwrap_or_else(|| "(no model)".into());
        if !models.contains(&m) {
            models.push(m);
        }
    }
    let color = |s: &Summary| {
        let m = s.model.as_deref().unwrap_or("(no model)");
        let i = models.iter().position(|x| x == m).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };

    let mut h = String::with_capacity(64 * 1024);
    let n = items.len();
    let title = format!(
        "cell spy · {} · {} exchange{}",
        source,
        n,
        if n == 1 { "" } else { "s" }
    );
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{}\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"cell spy --html\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(CSP),
        esc(&title)
    );

    // Header: what this is and when.
    let starts: Vec<f64> = items.iter().filter_map(|i| i.start).collect();
    let first = starts.iter().copied().fold(f64::INFINITY, f64::min);
    let last_end = items
        .iter()
        .filter_map(|i| Some(i.start? + i.s.duration_ms.unwrap_or(0.0)))
        .fold(f64::NEG_INFINITY, f64::max);
    let when = if first.is_finite() && last_end.is_finite() {
        let day = items
            .iter()
            .find(|i| i.start.is_some())
            .and_then(|i| i.s.at.get(..10))
            .unwrap_or("");
        format!(
            "{} · {} – {} UTC · {} wall time",
            esc(day),
            clock(first),
            clock(last_end),
            secs(last_end - first)
        )
    } else {
        String::from("no timestamps")
    };
    let generated = humantime::format_rfc3339_seconds(now).to_string();
    let name = Path::new(source)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| source.contains('/') && !n.is_empty())
        .unwrap_or_else(|| source.to_string());
    let _ = write!(
        h,
        "<header><div class=\"brand\"><span class=\"logo\">cell</span> spy report</div>\
         <h1>{}</h1><p class=\"sub\">{when}</p><p class=\"sub small\">{}generated {}</p></header>\n<main>\n",
        esc(&name),
        if name == source {
            String::new()
        } else {
            format!("{} · ", esc(source))
        },
        esc(&generated)
    );

    // Totals.
    let sum =
        |f: &dyn Fn(&Summary) -> Option<u64>| items.iter().filter_map(|i| f(&i.s)).sum::<u64>();
    let tin = sum(&|s| s.usage.input);
    let tout = sum(&|s| s.usage.output);
    let tcr = sum(&|s| s.usage.cache_read);
    let tcw = sum(&|s| s.usage.cache_write);
    let calls: usize = items.iter().map(|i| i.s.tool_calls.len()).sum();
    let errors = items
        .iter()
        .filter(|i| i.s.status >= 400 || i.s.status == 0)
        .count();
    let partial = items.iter().filter(|i| !i.s.partial.is_empty()).count();
    let model_ms: f64 = items.iter().filter_map(|i| i.s.duration_ms).sum();
    h.push_str("<section class=\"stats\">");
    let mut stat = |label: &str, value: String, note: String, class: &str| {
        let _ = write!(
            h,
            "<div class=\"stat {class}\"><div class=\"label\">{}</div><div class=\"value\">{}</div><div class=\"note\">{}</div></div>",
            esc(label),
            value,
            note
        );
    };
    stat(
        "Exchanges",
        num(n as u64),
        format!(
            "{} model{}",
            models.len(),
            if models.len() == 1 { "" } else { "s" }
        ),
        "",
    );
    stat(
        "Input tokens",
        num(tin),
        if tcw > 0 {
            format!(
                "cache read {} · write {}",
                short(tcr as f64),
                short(tcw as f64)
            )
        } else {
            format!("cache read {}", num(tcr))
        },
        "",
    );
    stat("Output tokens", num(tout), String::from("&nbsp;"), "");
    let results: usize = items
        .iter()
        .map(|i| {
            i.messages
                .iter()
                .filter(|m| m.tool_result.is_some())
                .count()
        })
        .sum();
    stat(
        "Tool calls",
        num(calls as u64),
        format!(
            "{} result{} sent back",
            num(results as u64),
            if results == 1 { "" } else { "s" }
        ),
        "",
    );
    stat(
        "Model time",
        secs(model_ms),
        match items.iter().filter_map(|i| i.s.duration_ms).count() {
            0 => String::from("&nbsp;"),
            k => format!("mean {}", secs(model_ms / k as f64)),
        },
        "",
    );
    stat(
        "Errors",
        num(errors as u64),
        if partial > 0 {
            format!("{partial} partial")
        } else {
            String::from("&nbsp;")
        },
        if errors > 0 { "bad" } else { "" },
    );
    h.push_str("</section>\n");

    // The chart.
    h.push_str("<section class=\"card\"><h2>Over time</h2>");
    if items.is_empty() {
        h.push_str("<p class=\"empty\">No exchanges in this store.</p>");
    } else {
        chart(&mut h, &items, &color);
        h.push_str("<div class=\"legend\"><span>Colour by model:</span>");
        for (i, m) in models.iter().enumerate() {
            let _ = write!(
                h,
                "<span class=\"ell\" title=\"{}\"><i style=\"background:{}\"></i>{}</span>",
                esc(m),
                PALETTE[i % PALETTE.len()],
                esc(m)
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</section>\n");

    // Models and tools.
    if !items.is_empty() {
        h.push_str("<div class=\"two\"><section class=\"card\"><h2>Models</h2><table><thead><tr><th>model</th><th>provider</th><th class=\"r\">exchanges</th><th class=\"r\">input</th><th class=\"r\">output</th><th class=\"r\">mean latency</th></tr></thead><tbody>");
        for (i, m) in models.iter().enumerate() {
            let of: Vec<&Item> = items
                .iter()
                .filter(|it| it.s.model.as_deref().unwrap_or("(no model)") == m)
                .collect();
            let lat: Vec<f64> = of.iter().filter_map(|it| it.s.duration_ms).collect();
            let _ = write!(
                h,
                "<tr><td><div class=\"ell\" title=\"{}\"><i class=\"dot\" style=\"background:{}\"></i>{}</div></td><td><span class=\"badge {}\">{}</span></td><td class=\"r\">{}</td><td class=\"r\">{}</td><td class=\"r\">{}</td><td class=\"r\">{}</td></tr>",
                esc(m),
                PALETTE[i % PALETTE.len()],
                esc(m),
                provider_class(of[0].s.provider),
                esc(of[0].s.provider),
                of.len(),
                num(of.iter().filter_map(|it| it.s.usage.input).sum()),
                num(of.iter().filter_map(|it| it.s.usage.output).sum()),
                if lat.is_empty() {
                    String::new()
                } else {
                    secs(lat.iter().sum::<f64>() / lat.len() as f64)
                }
            );
        }
        h.push_str("</tbody></table></section>");
        let mut tools: BTreeMap<&str, usize> = BTreeMap::new();
        for it in &items {
            for (name, _) in &it.s.tool_calls {
                *tools.entry(name.as_str()).or_default() += 1;
            }
        }
        h.push_str("<section class=\"card\"><h2>Tools called</h2>");
        if tools.is_empty() {
            h.push_str("<p class=\"empty\">The model called no tool.</p>");
        } else {
            let most = tools.values().copied().max().unwrap_or(1).max(1);
            let mut by: Vec<(&str, usize)> = tools.into_iter().collect();
            by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            h.push_str("<table class=\"tools\"><tbody>");
            for (name, k) in by {
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code></td><td class=\"bar\"><span style=\"width:{:.1}%\"></span></td><td class=\"r\">{}</td></tr>",
                    esc(name),
                    k as f64 / most as f64 * 100.0,
                    k
                );
            }
            h.push_str("</tbody></table>");
        }
        h.push_str("</section></div>\n");
    }

    // System prompts: each distinct one once; exchanges refer to it.
    let mut systems: Vec<(&str, Vec<u64>)> = Vec::new();
    for it in &items {
        if let Some(sys) = it.s.system.as_deref() {
            match systems.iter_mut().find(|(t, _)| *t == sys) {
                Some((_, ids)) => ids.push(it.s.id),
                None => systems.push((sys, vec![it.s.id])),
            }
        }
    }
    if !systems.is_empty() {
        h.push_str("<section class=\"card\"><h2>System prompts</h2>");
        for (i, (text, ids)) in systems.iter().enumerate() {
            let _ = write!(
                h,
                "<details id=\"sys-{}\" class=\"sys\"><summary><b>System prompt {}</b> <span class=\"muted\">{} characters · sent in {} exchange{}</span><span class=\"fold\">{}</span></summary><pre>{}</pre></details>",
                i + 1,
                i + 1,
                num(text.chars().count() as u64),
                ids.len(),
                if ids.len() == 1 { "" } else { "s" },
                esc(&fold(text, 110)),
                capped(text)
            );
        }
        h.push_str("</section>\n");
    }

    // Every exchange.
    h.push_str("<section class=\"card\"><h2>Exchanges</h2>");
    if items.is_empty() {
        h.push_str("<p class=\"empty\">No exchanges in this store (hosts are recorded when their policy entry has spy = true).</p>");
    }
    for it in &items {
        let s = &it.s;
        let sys_no = s
            .system
            .as_deref()
            .and_then(|t| systems.iter().position(|(x, _)| *x == t));
        exchange(&mut h, it, color(s), sys_no);
    }
    h.push_str("</section>\n</main>\n");
    let _ = write!(
        h,
        "<footer>Written by <code>cell spy --html</code> from the firewall's spy store. Secret values were replaced by their placeholders before they were stored; header values are kept only for a safe list. This page loads nothing and runs no script.</footer>\n</body>\n</html>\n"
    );
    h
}

/// One line of at most `max` characters.
fn fold(text: &str, max: usize) -> String {
    let one = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        let mut cut: String = one.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

fn exchange(h: &mut String, it: &Item, color: &str, sys_no: Option<usize>) {
    let s = &it.s;
    let time = s.at.get(11..19).unwrap_or(&s.at);
    let status_class = match s.status {
        200..=299 => "ok",
        0 | 400.. => "bad",
        _ => "warn",
    };
    let _ = write!(
        h,
        "<details class=\"ex\" id=\"ex-{}\"><summary><span class=\"id\">#{}</span><span class=\"time\">{}</span><span class=\"badge {}\">{}</span><span class=\"model\" title=\"{}\"><i class=\"dot\" style=\"background:{color}\"></i>{}</span><span class=\"status {status_class}\">{}</span><span class=\"lat\">{}</span><span class=\"tok\">{}</span><span class=\"calls\">",
        s.id,
        s.id,
        esc(time),
        provider_class(s.provider),
        esc(s.provider),
        esc(s.model.as_deref().unwrap_or("")),
        esc(s.model.as_deref().unwrap_or("—")),
        s.status,
        s.duration_ms.map(secs).unwrap_or_default(),
        match (s.usage.input, s.usage.output) {
            (None, None) => String::new(),
            (i, o) => format!(
                "{} → {}",
                i.map_or("?".into(), num),
                o.map_or("?".into(), num)
            ),
        },
    );
    for (name, _) in s.tool_calls.iter().take(4) {
        let _ = write!(h, "<code>{}</code>", esc(name));
    }
    if s.tool_calls.len() > 4 {
        let _ = write!(
            h,
            "<span class=\"muted\">+{}</span>",
            s.tool_calls.len() - 4
        );
    }
    if s.tool_calls.is_empty()
        && let Some(first) = it.messages.last().or(it.messages.first())
    {
        let _ = write!(
            h,
            "<span class=\"muted\">{}</span>",
            esc(&fold(&first.text, 70))
        );
    }
    h.push_str("</span></summary><div class=\"body\">");

    // Request line and numbers.
    let _ = write!(
        h,
        "<p class=\"meta\"><code>{} {}{}</code>",
        esc(&s.method),
        esc(&s.host),
        esc(&s.path)
    );
    if s.stream {
        h.push_str(" · streamed");
    }
    if let (Some(f), true) = (s.first_byte_ms, s.stream) {
        let _ = write!(h, " · first token {}", secs(f));
    }
    if let Some(stop) = &s.stop {
        let _ = write!(h, " · stop <b>{}</b>", esc(stop));
    }
    let u = &s.usage;
    if u.input.is_some() || u.output.is_some() {
        let _ = write!(
            h,
            " · tokens in {} out {}",
            u.input.map_or("?".into(), num),
            u.output.map_or("?".into(), num)
        );
        if u.cache_read.is_some() || u.cache_write.is_some() {
            let _ = write!(
                h,
                " (cache read {} write {})",
                num(u.cache_read.unwrap_or(0)),
                num(u.cache_write.unwrap_or(0))
            );
        }
    }
    h.push_str("</p>");
    if let (Some(sys), Some(i)) = (&s.system, sys_no) {
        let _ = write!(
            h,
            "<p class=\"sysref\"><a href=\"#sys-{}\">system prompt {}</a> <span class=\"muted\">{}</span></p>",
            i + 1,
            i + 1,
            esc(&fold(sys, 140))
        );
    }
    for m in &it.messages {
        match &m.tool_result {
            Some(id) => {
                let _ = write!(
                    h,
                    "<div class=\"msg tool\"><div class=\"role\">tool result <code>{}</code></div><pre>{}</pre></div>",
                    esc(id),
                    capped(&m.text)
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<div class=\"msg\"><div class=\"role\">{}</div><pre>{}</pre></div>",
                    esc(&m.role),
                    capped(&m.text)
                );
            }
        }
    }
    if !s.text.is_empty() {
        let _ = write!(
            h,
            "<div class=\"msg assistant\"><div class=\"role\">assistant</div><pre>{}</pre></div>",
            capped(&s.text)
        );
    }
    for (name, args) in &s.tool_calls {
        let _ = write!(
            h,
            "<div class=\"msg call\"><div class=\"role\">tool call <code>{}</code></div><pre>{}</pre></div>",
            esc(name),
            capped(&pretty(args))
        );
    }
    for p in &s.partial {
        let _ = write!(h, "<p class=\"partial\">partial: {}</p>", esc(p));
    }
    h.push_str("</div></details>\n");
}

/// The SVG: a lane chart of when each exchange ran (coloured by model), the
/// tokens of each (input and output stacked) and its latency (time to first
/// token darker), all on one time axis. Without usable timestamps the
/// exchanges are spaced evenly in order.
fn chart(h: &mut String, items: &[Item], color: &dyn Fn(&Summary) -> &'static str) {
    const W: f64 = 1000.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 52.0;
    let plot = W - LEFT - RIGHT;
    let n = items.len();
    let dur = |i: &Item| i.s.duration_ms.unwrap_or(0.0).max(0.0);
    let t0 = items
        .iter()
        .filter_map(|i| i.start)
        .fold(f64::INFINITY, f64::min);
    let t1 = items
        .iter()
        .filter_map(|i| Some(i.start? + dur(i)))
        .fold(f64::NEG_INFINITY, f64::max);
    let timed = items.iter().all(|i| i.start.is_some()) && t1 - t0 >= 1.0;
    // x of an exchange's start and end.
    let span = if timed { t1 - t0 } else { n as f64 };
    let x_of = |k: usize, it: &Item| -> (f64, f64) {
        if timed {
            let a = LEFT + (it.start.unwrap_or(t0) - t0) / span * plot;
            let b = LEFT + (it.start.unwrap_or(t0) + dur(it) - t0) / span * plot;
            (a, b.max(a + 1.5))
        } else {
            let slot = plot / n as f64;
            (
                LEFT + k as f64 * slot + slot * 0.15,
                LEFT + (k as f64 + 0.85) * slot,
            )
        }
    };
    let bar_w = if timed {
        (plot / n as f64 * 0.7).clamp(2.0, 14.0)
    } else {
        (plot / n as f64 * 0.7).clamp(2.0, 40.0)
    };

    // Lanes: an exchange goes in the first lane free at its start.
    let mut lane_end: Vec<f64> = Vec::new();
    let mut lanes = Vec::with_capacity(n);
    for (k, it) in items.iter().enumerate() {
        let (a, b) = x_of(k, it);
        let lane = match lane_end.iter().position(|&e| e <= a) {
            Some(l) => l,
            None => {
                lane_end.push(0.0);
                lane_end.len() - 1
            }
        };
        lane_end[lane] = b + 1.0;
        lanes.push(lane);
    }
    let lane_n = lane_end.len().clamp(1, 6) as f64;
    let lane_h = 12.0;

    let top1 = 26.0;
    let h1 = lane_n * lane_h + 6.0;
    let top2 = top1 + h1 + 34.0;
    let h2 = 150.0;
    let top3 = top2 + h2 + 34.0;
    let h3 = 100.0;
    let axis = top3 + h3;
    let height = axis + 28.0;

    // Input tokens on the left axis, output (far fewer) on the right.
    let max_tok = items
        .iter()
        .filter_map(|i| i.s.usage.input)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let step_tok = nice_step(max_tok, 4.0);
    let top_tok = (max_tok / step_tok).ceil() * step_tok;
    let max_out = items
        .iter()
        .filter_map(|i| i.s.usage.output)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let top_out = (top_tok / step_tok).round().max(1.0) * nice_step(max_out, top_tok / step_tok);
    let max_lat = items.iter().map(dur).fold(0.0, f64::max).max(1.0) / 1000.0;
    let step_lat = nice_step(max_lat, 3.0);
    let top_lat = (max_lat / step_lat).ceil() * step_lat;

    let _ = write!(
        h,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {height:.0}\" role=\"img\" aria-label=\"exchanges, tokens and latency over time\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let _ = write!(
        h,
        "<text class=\"ptitle\" x=\"{LEFT}\" y=\"{:.1}\">When each exchange ran</text>",
        top1 - 10.0
    );
    let key = |h: &mut String, x: f64, y: f64, class: &str, dot: bool, label: &str| {
        if dot {
            let _ = write!(
                h,
                "<circle class=\"{class}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\"/>",
                x + 5.0,
                y - 4.0
            );
        } else {
            let _ = write!(
                h,
                "<rect class=\"{class}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" rx=\"2\"/>",
                y - 9.0
            );
        }
        let _ = write!(
            h,
            "<text class=\"key\" x=\"{:.1}\" y=\"{y:.1}\">{label}</text>",
            x + 15.0
        );
    };
    // Each panel's title, then its keys (about 7 px a character at 12 px).
    let panel = |h: &mut String, y: f64, title: &str, keys: &[(&str, bool, &str)]| {
        let _ = write!(
            h,
            "<text class=\"ptitle\" x=\"{LEFT}\" y=\"{y:.1}\">{title}</text>"
        );
        let mut x = LEFT + title.len() as f64 * 7.0 + 14.0;
        for (class, dot, label) in keys {
            key(h, x, y, class, *dot, label);
            x += 15.0 + label.len() as f64 * 6.2 + 18.0;
        }
    };
    panel(
        h,
        top2 - 12.0,
        "Tokens per exchange",
        &[
            ("in", false, "input (left axis)"),
            ("outdot", true, "output (right axis)"),
        ],
    );
    panel(
        h,
        top3 - 12.0,
        "Latency",
        &[
            ("lat", false, "until the response ended"),
            ("ttft", false, "until the first token"),
        ],
    );
    // Grids and y labels.
    let _ = write!(
        h,
        "<rect class=\"lanebg\" x=\"{LEFT}\" y=\"{top1}\" width=\"{plot}\" height=\"{h1:.1}\" rx=\"3\"/>"
    );
    let mut v = 0.0;
    while v <= top_tok + 0.5 {
        let y = top2 + h2 - v / top_tok * h2;
        let _ = write!(
            h,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"ylab\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LEFT + plot,
            LEFT - 8.0,
            y + 4.0,
            short(v)
        );
        let _ = write!(
            h,
            "<text class=\"ylab2\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LEFT + plot + 8.0,
            y + 4.0,
            short(v / top_tok * top_out)
        );
        v += step_tok;
    }
    let mut v = 0.0;
    while v <= top_lat + 1e-9 {
        let y = top3 + h3 - v / top_lat * h3;
        let _ = write!(
            h,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"ylab\" x=\"{:.1}\" y=\"{:.1}\">{} s</text>",
            LEFT + plot,
            LEFT - 8.0,
            y + 4.0,
            if step_lat < 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        );
        v += step_lat;
    }
    // x axis: clock times, or exchange numbers.
    if timed {
        let secs_span = span / 1000.0;
        let step = [
            1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
            7200.0, 10800.0, 21600.0, 43200.0, 86400.0,
        ]
        .into_iter()
        .find(|s| secs_span / s <= 8.0)
        .unwrap_or(86400.0)
            * 1000.0;
        let mut t = (t0 / step).ceil() * step;
        while t <= t1 {
            let x = LEFT + (t - t0) / span * plot;
            let _ = write!(
                h,
                "<line class=\"tick\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top1}\" y2=\"{axis:.1}\"/><text class=\"xlab\" x=\"{x:.1}\" y=\"{:.1}\">{}</text>",
                axis + 18.0,
                clock(t)
            );
            t += step;
        }
    } else {
        let every = n.div_ceil(12).max(1);
        for (k, it) in items.iter().enumerate().step_by(every) {
            let (a, b) = x_of(k, it);
            let _ = write!(
                h,
                "<text class=\"xlab\" x=\"{:.1}\" y=\"{:.1}\">#{}</text>",
                (a + b) / 2.0,
                axis + 18.0,
                it.s.id
            );
        }
    }
    let _ = write!(
        h,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><line class=\"axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{axis:.1}\" y2=\"{axis:.1}\"/>",
        LEFT + plot,
        top2 + h2,
        top2 + h2,
        LEFT + plot
    );

    // The marks, each a link to its exchange with a tooltip.
    let mut outs: Vec<(f64, f64)> = Vec::new();
    for (k, it) in items.iter().enumerate() {
        let s = &it.s;
        let (a, b) = x_of(k, it);
        let mid = if timed { a } else { (a + b) / 2.0 };
        let bx = mid - if timed { 0.0 } else { bar_w / 2.0 };
        let tip = format!(
            "#{} {} · {} · {} · {} status {}{}",
            s.id,
            s.at.get(11..19).unwrap_or(""),
            s.model.as_deref().unwrap_or(s.provider),
            s.duration_ms.map(secs).unwrap_or_default(),
            match (s.usage.input, s.usage.output) {
                (None, None) => String::new(),
                (i, o) => format!(
                    "tokens in {} out {} ·",
                    i.map_or("?".into(), num),
                    o.map_or("?".into(), num)
                ),
            },
            s.status,
            if s.tool_calls.is_empty() {
                String::new()
            } else {
                format!(
                    " · {}",
                    s.tool_calls
                        .iter()
                        .map(|c| c.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        let _ = write!(h, "<a href=\"#ex-{}\"><title>{}</title>", s.id, esc(&tip));
        let lane = lanes[k].min(5) as f64;
        let _ = write!(
            h,
            "<rect class=\"run{}\" x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"2\" fill=\"{}\"/>",
            if s.status >= 400 || s.status == 0 {
                " err"
            } else {
                ""
            },
            top1 + 3.0 + lane * lane_h,
            (b - a).max(1.5),
            lane_h - 3.0,
            color(s)
        );
        // Tokens: input as a bar, output as a point on its own scale.
        let base = top2 + h2;
        let hi = s.usage.input.unwrap_or(0) as f64 / top_tok * h2;
        if hi > 0.0 {
            let _ = write!(
                h,
                "<rect class=\"in\" x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{hi:.1}\"/>",
                base - hi
            );
        }
        if let Some(o) = s.usage.output {
            let p = (bx + bar_w / 2.0, base - o as f64 / top_out * h2);
            let _ = write!(
                h,
                "<circle class=\"outdot\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\"/>",
                p.0, p.1
            );
            outs.push(p);
        }
        // Latency, with time to first token.
        let hl = dur(it) / 1000.0 / top_lat * h3;
        let base = top3 + h3;
        if hl > 0.0 {
            let _ = write!(
                h,
                "<rect class=\"lat{}\" x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{hl:.1}\"/>",
                if s.status >= 400 || s.status == 0 {
                    " err"
                } else {
                    ""
                },
                base - hl
            );
        }
        let failed = s.status >= 400 || s.status == 0;
        if let (Some(f), true, false) = (s.first_byte_ms, s.stream, failed) {
            let hf = (f / 1000.0 / top_lat * h3).min(hl);
            if hf > 0.0 {
                let _ = write!(
                    h,
                    "<rect class=\"ttft\" x=\"{bx:.1}\" y=\"{:.1}\" width=\"{bar_w:.1}\" height=\"{hf:.1}\"/>",
                    base - hf
                );
            }
        }
        h.push_str("</a>");
    }
    if outs.len() > 1 {
        h.push_str("<polyline class=\"outline\" points=\"");
        for (x, y) in &outs {
            let _ = write!(h, "{x:.1},{y:.1} ");
        }
        h.push_str("\"/>");
    }
    h.push_str("</svg>");
}

const STYLE: &str = r#"
:root{--bg:#f5f6f8;--card:#fff;--text:#1b2130;--muted:#697386;--line:#e4e7ec;--soft:#f1f3f6;
--in:#4f6bed;--out:#f29d38;--lat:#a48be8;--ttft:#6a4fc9;--ok:#128a5a;--bad:#d23c3c;--warn:#b7791f;
--mono:ui-monospace,"SF Mono",SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace}
@media (prefers-color-scheme:dark){:root{--bg:#12151c;--card:#1b1f29;--text:#e3e7ef;--muted:#939cae;
--line:#2c3241;--soft:#232836;--in:#7088f5;--out:#f3ab52;--lat:#8f78d9;--ttft:#b9a6ff}}
*{box-sizing:border-box}
html{background:var(--bg);color:var(--text);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Helvetica Neue",Arial,"DejaVu Sans",sans-serif}
body{margin:0 auto;max-width:1180px;padding:28px 28px 40px}
header{margin-bottom:20px}
.brand{font-size:13px;color:var(--muted);letter-spacing:.02em}
.logo{display:inline-block;background:var(--text);color:var(--bg);font-weight:700;border-radius:5px;padding:0 7px;margin-right:4px}
h1{font-size:26px;margin:6px 0 2px;font-weight:650;word-break:break-all}
h2{font-size:15px;margin:0 0 12px;font-weight:650}
.sub,.muted{color:var(--muted)}
.sub{margin:0}
.sub.small{font-size:12px;word-break:break-all}
.ell{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:330px}
.legend .ell{max-width:300px}
.stats{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin-bottom:16px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.stat .label{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.stat .value{font-size:24px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.stat .note{font-size:12px;color:var(--muted)}
.stat.bad .value{color:var(--bad)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin-bottom:16px}
.two{display:grid;grid-template-columns:3fr 2fr;gap:16px}
.two .card{margin-bottom:16px}
.chart{width:100%;height:auto;display:block}
.chart text{font-size:11px;fill:var(--muted)}
.chart .ptitle{font-size:12px;font-weight:600;fill:var(--text)}
.chart .ylab{text-anchor:end;font-variant-numeric:tabular-nums}
.chart .ylab2{text-anchor:start;font-variant-numeric:tabular-nums;fill:var(--out)}
.chart .key{font-size:11.5px;fill:var(--muted)}
.chart .outdot{fill:var(--out);stroke:var(--card);stroke-width:1.5}
.chart .outline{fill:none;stroke:var(--out);stroke-width:1.5;stroke-opacity:.7;pointer-events:none}
.chart .xlab{text-anchor:middle;font-variant-numeric:tabular-nums}
.chart .grid{stroke:var(--line);stroke-width:1}
.chart .tick{stroke:var(--line);stroke-width:1;stroke-dasharray:2 3}
.chart .axis{stroke:var(--muted);stroke-width:1}
.chart .lanebg{fill:var(--soft)}
.chart .in{fill:var(--in)}
.chart .out{fill:var(--out)}
.chart .lat{fill:var(--lat)}
.chart .ttft{fill:var(--ttft)}
.chart .err{fill:var(--bad)}
.chart a:hover rect{opacity:.75}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin-top:8px;font-size:12px;color:var(--muted)}
.legend i,.dot{display:inline-block;width:10px;height:10px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.k-in{background:var(--in)}.k-out{background:var(--out)}.k-lat{background:var(--lat)}.k-ttft{background:var(--ttft)}
table{width:100%;border-collapse:collapse;font-variant-numeric:tabular-nums}
th{font-size:12px;color:var(--muted);font-weight:500;text-align:left;border-bottom:1px solid var(--line);padding:4px 8px}
td{padding:6px 8px;border-bottom:1px solid var(--line)}
tr:last-child td{border-bottom:0}
.r{text-align:right}
.tools td.bar{width:50%}
.tools td.bar span{display:block;height:8px;border-radius:4px;background:var(--in);min-width:3px}
.badge{display:inline-block;font-size:11px;font-weight:600;border-radius:999px;padding:0 8px;line-height:18px;color:#fff;background:#8a93a3}
.p-anthropic{background:#c96442}.p-openai{background:#10a37f}.p-bedrock{background:#e68a00}
code,pre{font-family:var(--mono);font-size:12.5px}
pre{white-space:pre-wrap;word-break:break-word;margin:0;background:var(--soft);border-radius:6px;padding:8px 10px;max-height:480px;overflow:auto}
details.ex{border-top:1px solid var(--line)}
details.ex:first-of-type{border-top:0}
details.ex>summary{display:grid;grid-template-columns:52px 70px 88px minmax(150px,1.3fr) 42px 64px 118px minmax(0,2fr);gap:10px;align-items:center;padding:8px 4px;cursor:pointer;list-style:none;font-variant-numeric:tabular-nums}
details.ex>summary::-webkit-details-marker{display:none}
details.ex>summary:hover{background:var(--soft)}
details.ex[open]>summary{background:var(--soft)}
summary .id{color:var(--muted)}
summary .id::before{content:"▸";display:inline-block;width:14px;color:var(--muted);transition:transform .15s}
details[open]>summary .id::before{transform:rotate(90deg)}
summary .time{font-family:var(--mono);font-size:12.5px}
summary .badge{justify-self:start}
summary .model{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
summary .calls{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
summary .calls code{background:var(--soft);border:1px solid var(--line);border-radius:4px;padding:0 5px;margin-right:4px}
.status{font-weight:650}.status.ok{color:var(--ok)}.status.bad{color:var(--bad)}.status.warn{color:var(--warn)}
.lat,.tok{text-align:right}
.body{padding:6px 4px 16px 66px}
.meta{margin:6px 0 10px;color:var(--muted)}
.meta code{color:var(--text)}
.sysref{margin:0 0 10px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
a{color:var(--in)}
.msg{margin:8px 0}
.role{font-size:12px;font-weight:650;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);margin-bottom:3px}
.msg.assistant .role{color:var(--ok)}
.msg.call .role{color:var(--warn)}
.msg.tool .role{color:#9b4dca}
.role code{text-transform:none;letter-spacing:0;color:var(--text)}
.partial{color:var(--warn)}
.cut{color:var(--muted);font-style:italic}
details.sys{border-top:1px solid var(--line);padding:6px 0}
details.sys:first-of-type{border-top:0}
details.sys>summary{cursor:pointer}
details.sys .fold{display:block;color:var(--muted);white-space:nowrap;overflow:hidden;text-overflow:ellipsis;font-size:12.5px}
details.sys[open] .fold{display:none}
details.sys pre{margin-top:8px}
.empty{color:var(--muted);margin:0}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
@media (max-width:900px){.stats{grid-template-columns:repeat(3,1fr)}.two{grid-template-columns:1fr}
details.ex>summary{grid-template-columns:36px 64px 1fr 40px 60px;}
summary .badge,summary .tok,summary .calls{display:none}.body{padding-left:8px}}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::spy::fixture;

    /// Markup in any field — host, path, model, prompts, tool names and
    /// arguments — comes out as text: no tag the agent wrote survives.
    #[test]
    fn hostile_text_is_escaped_everywhere() {
        let evil = "</script><img src=x onerror=alert(1)>\"'&";
        let mut ex = fixture("anthropic-json.json");
        ex["host"] = evil.into();
        ex["path"] = format!("/v1/messages?{evil}").into();
        ex["at"] = evil.into();
        let mut req: Value =
            serde_json::from_str(ex["request"]["body"]["text"].as_str().unwrap()).unwrap();
        req["model"] = evil.into();
        req["system"] = evil.into();
        req["messages"][0]["content"] = evil.into();
        ex["request"]["body"]["text"] = req.to_string().into();
        let mut resp: Value =
            serde_json::from_str(ex["response"]["body"]["text"].as_str().unwrap()).unwrap();
        resp["model"] = evil.into();
        resp["content"] = serde_json::json!([{"type":"text","text":evil},
            {"type":"tool_use","id":"t","name":evil,"input":{"x":evil}}]);
        ex["response"]["body"]["text"] = resp.to_string().into();
        let html = report(&[ex], evil, SystemTime::UNIX_EPOCH);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("</script>"));
        assert!(!html.contains("onerror=alert(1)>\""));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"));
        assert!(!html.to_lowercase().contains("<script"));
        assert_eq!(esc("a\u{1b}b\u{0}c\nd"), "a\u{fffd}b\u{fffd}c\nd");
    }

    /// The page forbids scripts and remote loads, and needs nothing remote.
    #[test]
    fn the_page_loads_nothing() {
        let html = report(
            &[fixture("openai-sse.json")],
            "run.jsonl",
            SystemTime::UNIX_EPOCH,
        );
        assert!(html.contains(&format!(
            "http-equiv=\"Content-Security-Policy\" content=\"{}\"",
            esc(CSP)
        )));
        assert!(CSP.contains("default-src 'none'"));
        assert!(!CSP.contains("script-src"));
        for remote in ["src=", "<link", "@import", "url(", "https://"] {
            assert!(!html.contains(remote), "{remote} in the page");
        }
        // The SVG namespace is a name, not a load.
        assert_eq!(
            html.matches("http://").count(),
            html.matches("http://www.w3.org/2000/svg").count()
        );
    }

    /// Totals, the chart's marks (one per exchange, each linking to it), and
    /// each exchange as a details element with its tool call.
    #[test]
    fn the_report_has_totals_chart_and_exchanges() {
        let mut list = Vec::new();
        for (i, f) in [
            "anthropic-sse.json",
            "openai-json.json",
            "responses-sse.json",
        ]
        .iter()
        .enumerate()
        {
            let mut ex = fixture(f);
            ex["id"] = (i as u64 + 1).into();
            ex["at"] = format!("2026-12-02T15:01:{:02}.000Z", i * 5).into();
            list.push(ex);
        }
        let html = report(&list, "run.jsonl", SystemTime::UNIX_EPOCH);
        assert_eq!(html.matches("<details class=\"ex\"").count(), 3);
        assert_eq!(html.matches("<a href=\"#ex-").count(), 3);
        for id in 1..=3 {
            assert!(html.contains(&format!("id=\"ex-{id}\"")));
        }
        assert!(html.contains("<svg class=\"chart\""));
        assert!(
            html.contains("15:01:00") && html.contains("15:01:10"),
            "clock ticks"
        );
        assert!(html.contains("1,236"), "input tokens summed: {}", 412 * 3);
        assert!(html.contains("tool call <code>get_weather</code>"));
        assert!(html.contains("&quot;city&quot;: &quot;Paris&quot;"));
        assert_eq!(
            html.matches("<details id=\"sys-").count(),
            1,
            "one system prompt, once"
        );
        // No timestamps: spaced in order, still one mark each.
        for ex in &mut list {
            ex["at"] = "".into();
        }
        let html = report(&list, "run.jsonl", SystemTime::UNIX_EPOCH);
        assert!(html.contains(">#3</text>"));
        let empty = report(&[], "none.jsonl", SystemTime::UNIX_EPOCH);
        assert!(empty.contains("No exchanges"));
    }

    /// The file appears whole, by rename; nothing is left beside it.
    #[test]
    fn write_is_atomic_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.html");
        std::fs::write(&path, "old").unwrap();
        let n = write(&path, &[fixture("anthropic-json.json")], "x").unwrap();
        assert_eq!(n, 1);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .starts_with("<!doctype html>")
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("r.html")]);
        assert!(write(&dir.path().join("no/such/dir.html"), &[], "x").is_err());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234567), "1,234,567");
        assert_eq!(num(12), "12");
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(25_000.0), "25k");
        assert_eq!(nice_step(1000.0, 4.0), 250.0);
        assert_eq!(nice_step(7.0, 3.0), 2.5);
        assert_eq!(secs(1756.2), "1.76 s");
        assert_eq!(secs(185_000.0), "3m 05s");
    }
}
