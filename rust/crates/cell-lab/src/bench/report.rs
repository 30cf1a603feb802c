//! The bench's results as Markdown tables, and how far each target of
//! issue 16 is.

use serde_json::Value;

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f.abs() >= 1000.0 {
                thousands(f as i64)
            } else if f.fract() == 0.0 {
                format!("{}", f as i64)
            } else {
                n.to_string()
            }
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn thousands(n: i64) -> String {
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn row(r: &Value, keys: &[&str]) -> String {
    let mut cols = vec![cell(&r["target"]), cell(&r["proto"])];
    if let Some(na) = r["na"].as_str() {
        cols.push(format!("n/a: {na}"));
        cols.extend(std::iter::repeat_n(String::new(), keys.len() - 1));
    } else {
        cols.extend(keys.iter().map(|k| cell(&r[*k])));
    }
    format!("| {} |\n", cols.join(" | "))
}

/// Markdown tables of the results, with the targets' distances.
pub fn table(results: &Value) -> String {
    let mut out = String::new();
    let transparent = results["transparent"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let explicit = results["explicit"].as_array().cloned().unwrap_or_default();
    out.push_str(
        "Transparent (nftables redirect), median of the runs; CPU = the proxy's processes\n\n",
    );
    out.push_str("| target | client | requests/s (keep-alive) | CPU µs/request | new TLS conn/s | CPU ms/conn | bulk MB/s | CPU ms/MB | p50 ms | p99 ms | stream first byte p50 ms | RSS MB (1,000 idle) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let tkeys = [
        "requests_per_sec",
        "cpu_us_per_request",
        "new_connections_per_sec",
        "cpu_ms_per_new_connection",
        "bulk_mb_per_sec",
        "cpu_ms_per_mb",
        "latency_ms_p50",
        "latency_ms_p99",
        "stream_first_byte_ms_p50",
        "rss_mb_with_idle",
    ];
    for r in &transparent {
        out.push_str(&row(r, &tkeys));
    }
    out.push_str("\nExplicit proxy (CONNECT), median of the runs\n\n");
    out.push_str("| target | client | requests/s (keep-alive) | CPU µs/request | new TLS conn/s | CPU ms/conn | bulk MB/s | CPU ms/MB |\n|---|---|---|---|---|---|---|---|\n");
    for r in &explicit {
        out.push_str(&row(r, &tkeys[..6]));
    }
    let jail = &results["jail_startup"];
    out.push_str("\nJails (hyperfine): start-up, and one curl making in-jail requests\n\n");
    if let Some(na) = jail["na"].as_str() {
        out.push_str(&format!("n/a: {na}\n"));
    } else {
        out.push_str("| command | mean ms | σ ms | median ms | min ms | max ms | runs |\n|---|---|---|---|---|---|---|\n");
        for r in jail["results"].as_array().into_iter().flatten() {
            let ms = |k: &str| {
                r[k].as_f64()
                    .map(|s| format!("{:.1}", s * 1e3))
                    .unwrap_or_else(|| "—".into())
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                cell(&r["command"]),
                ms("mean"),
                ms("stddev"),
                ms("median"),
                ms("min"),
                ms("max"),
                r["times"].as_array().map(|t| t.len()).unwrap_or(0)
            ));
        }
    }
    if let Some(per) = jail["in_jail_ms_per_request"].as_object() {
        let ms = |k: &str| {
            per.get(k)
                .and_then(|v| v.as_f64())
                .map(|x| format!("{x:.2} ms"))
                .unwrap_or_else(|| "—".into())
        };
        out.push_str(&format!(
            "\nIn-jail requests ({} in one curl, (curl − true) / requests): cell jail {}, srt {}\n",
            super::peers::JAIL_REQUESTS,
            ms("cell jail"),
            ms("srt")
        ));
    }
    out.push_str("\nAgainst issue 16's targets\n\n");
    for line in targets(&transparent, &explicit) {
        out.push_str(&format!("- {line}\n"));
    }
    if let Some(dir) = results["logs_kept_in"].as_str() {
        out.push_str(&format!(
            "\nSome peers failed or did not start; the lab's logs are kept in {dir}\n"
        ));
    }
    out
}

fn find<'a>(rows: &'a [Value], target: &str, proto: &str) -> Option<&'a Value> {
    rows.iter()
        .find(|r| r["target"] == target && r["proto"] == proto && r["na"].is_null())
}

/// One line per target: measured, limit, and the distance.
fn targets(transparent: &[Value], explicit: &[Value]) -> Vec<String> {
    let mut lines = Vec::new();
    let at_most = |what: &str, got: Option<f64>, limit: f64, unit: &str| match got {
        None => format!("{what}: not measured"),
        Some(g) if g <= limit => format!("{what}: {g} {unit} ≤ {limit} {unit}: met"),
        Some(g) => format!(
            "{what}: {g} {unit}, target ≤ {limit} {unit}: {:.2}× the target ({:+.1}%)",
            g / limit,
            (g / limit - 1.0) * 100.0
        ),
    };
    let f = |r: Option<&Value>, k: &str| r.and_then(|r| r[k].as_f64());
    for (section, rows) in [("explicit", explicit), ("transparent", transparent)] {
        for proto in ["http/1.1", "h2"] {
            let r = find(rows, "cell-proxy", proto);
            if r.is_none() {
                continue;
            }
            lines.push(at_most(
                &format!("CPU per kept-alive request ({section}, {proto})"),
                f(r, "cpu_us_per_request"),
                40.0,
                "µs",
            ));
            lines.push(at_most(
                &format!("CPU per new TLS connection ({section}, {proto})"),
                f(r, "cpu_ms_per_new_connection"),
                0.4,
                "ms",
            ));
        }
    }
    lines.push(at_most(
        "RSS with 1,000 idle intercepted TLS connections (transparent)",
        f(
            find(transparent, "cell-proxy", "http/1.1"),
            "rss_mb_with_idle",
        ),
        25.0,
        "MB",
    ));
    match (
        f(
            find(transparent, "cell-proxy", "http/1.1"),
            "bulk_mb_per_sec",
        ),
        f(find(transparent, "direct", "http/1.1"), "bulk_mb_per_sec"),
    ) {
        (Some(c), Some(d)) if d > 0.0 => {
            let pct = c / d * 100.0;
            lines.push(format!(
                "bulk through the transparent proxy: {c} / {d} MB/s = {pct:.1}% of direct, target ≥ 45%: {}",
                if pct >= 45.0 {
                    "met".to_string()
                } else {
                    format!("{:.1} points short", 45.0 - pct)
                }
            ));
        }
        _ => lines.push("bulk vs direct: not measured".into()),
    }
    let p99 = |t: &str| f(find(transparent, t, "http/1.1"), "latency_ms_p99");
    if let (Some(s), Some(d), Some(c)) = (
        p99("cell-proxy+secret+spy"),
        p99("direct"),
        p99("cell-proxy"),
    ) {
        let added = s - d;
        lines.push(format!(
            "added p99 at 200 requests/s with injection and spy: {s} − {d} (direct) = {added:+.3} ms, target ≤ 1 ms: {} (plain cell-proxy {:+.3} ms over direct)",
            if added <= 1.0 {
                "met".to_string()
            } else {
                format!("{:.3} ms over", added - 1.0)
            },
            c - d
        ));
    } else {
        lines.push("added p99 with injection and spy: not measured".into());
    }
    lines
}
