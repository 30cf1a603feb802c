//! `cell spy`: the exchanges the firewall recorded (cell-proxy's spy store,
//! docs/spy.md), decoded per provider and formatted.
//!
//! Decoders read the wire formats from the providers' public API references:
//! Anthropic Messages (JSON, and SSE: `message_start`, `content_block_*`,
//! `message_delta`), OpenAI Chat Completions (JSON, and SSE chunks ending in
//! `data: [DONE]`), OpenAI Responses (JSON, and `response.*` SSE events),
//! AWS Bedrock Runtime (InvokeModel, Converse, and their AWS event-stream
//! answers: `bedrock.rs`). Anything else is shown generically (method, path,
//! status, sizes). A body the recorder cut, or one that does not parse, is
//! summarised as far as it goes and says so — never an error.

mod bedrock;
pub mod html;
pub mod tui;

use std::fmt::Write as _;

use serde_json::Value;

/// What one exchange says, whatever its provider.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub id: u64,
    pub at: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub status: u64,
    pub provider: &'static str,
    pub model: Option<String>,
    pub stream: bool,
    pub duration_ms: Option<f64>,
    pub first_byte_ms: Option<f64>,
    pub stop: Option<String>,
    pub usage: Usage,
    pub system: Option<String>,
    /// The last turn the agent sent (role, text).
    pub sent: Vec<(String, String)>,
    /// Tool calls the model made: name, arguments (JSON text).
    pub tool_calls: Vec<(String, String)>,
    /// Tool results the agent sent back in this request.
    pub tool_results: usize,
    /// The assistant's text, as it streamed.
    pub text: String,
    /// Something could not be read whole (a cut body, a bad line).
    pub partial: Vec<String>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
}

fn body_text(v: &Value) -> Option<&str> {
    v["body"]["text"].as_str()
}

/// Decodes one line of the spy store.
pub fn summarize(ex: &Value) -> Summary {
    let mut s = Summary {
        id: ex["id"].as_u64().unwrap_or(0),
        at: ex["at"].as_str().unwrap_or("").to_string(),
        host: ex["host"].as_str().unwrap_or("").to_string(),
        method: ex["method"].as_str().unwrap_or("").to_string(),
        path: ex["path"].as_str().unwrap_or("").to_string(),
        status: ex["status"].as_u64().unwrap_or(0),
        duration_ms: ex["durationMs"].as_f64(),
        first_byte_ms: ex["firstByteMs"].as_f64(),
        provider: "http",
        ..Summary::default()
    };
    for (side, what) in [("request", "request"), ("response", "response")] {
        if ex[side]["body"]["cut"] == Value::Bool(true) {
            s.partial
                .push(format!("the {what} body was cut by the recorder"));
        }
    }
    if ex["complete"] == Value::Bool(false) {
        s.partial
            .push("the response did not end (the agent went away)".into());
    }
    let req: Option<Value> = body_text(&ex["request"]).and_then(|t| serde_json::from_str(t).ok());
    let resp_text = body_text(&ex["response"]).unwrap_or("");
    let path = s.path.split('?').next().unwrap_or("").to_string();
    if let Some((op, model)) = bedrock::route(&path) {
        s.provider = "bedrock";
        bedrock::summarize(&mut s, ex, op, model);
    } else if path.ends_with("/v1/messages")
        || s.host.ends_with("anthropic.com") && path.ends_with("/messages")
    {
        s.provider = "anthropic";
        if let Some(r) = &req {
            anthropic_request(&mut s, r);
        }
        anthropic_response(&mut s, resp_text);
    } else if path.ends_with("/v1/responses") {
        s.provider = "openai";
        if let Some(r) = &req {
            responses_request(&mut s, r);
        }
        responses_response(&mut s, resp_text);
    } else if path.ends_with("/chat/completions") {
        s.provider = "openai";
        if let Some(r) = &req {
            openai_request(&mut s, r);
        }
        openai_response(&mut s, resp_text);
    }
    s
}

/// Text of an Anthropic content value: a string or a list of blocks.
fn anthropic_text(content: &Value) -> String {
    match content {
        Value::String(t) => t.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| match b["type"].as_str() {
                Some("text") => b["text"].as_str().map(str::to_string),
                Some("tool_result") => Some(format!(
                    "[tool result {}] {}",
                    b["tool_use_id"].as_str().unwrap_or("?"),
                    anthropic_text(&b["content"])
                )),
                Some("image") => Some("[image]".into()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn anthropic_request(s: &mut Summary, r: &Value) {
    s.model = r["model"].as_str().map(str::to_string);
    s.stream = r["stream"] == Value::Bool(true);
    let system = anthropic_text(&r["system"]);
    if !system.is_empty() {
        s.system = Some(system);
    }
    if let Some(msgs) = r["messages"].as_array() {
        // The new turn: the last message (the rest the model saw before).
        if let Some(m) = msgs.last() {
            s.sent.push((
                m["role"].as_str().unwrap_or("?").to_string(),
                anthropic_text(&m["content"]),
            ));
            if let Some(blocks) = m["content"].as_array() {
                s.tool_results = blocks.iter().filter(|b| b["type"] == "tool_result").count();
            }
        }
    }
}

fn anthropic_usage(s: &mut Summary, u: &Value) {
    let n = |k: &str| u[k].as_u64();
    s.usage.input = n("input_tokens").or(s.usage.input);
    s.usage.output = n("output_tokens").or(s.usage.output);
    s.usage.cache_read = n("cache_read_input_tokens").or(s.usage.cache_read);
    s.usage.cache_write = n("cache_creation_input_tokens").or(s.usage.cache_write);
}

fn anthropic_message(s: &mut Summary, m: &Value) {
    if let Some(model) = m["model"].as_str() {
        s.model = Some(model.to_string());
    }
    if let Some(stop) = m["stop_reason"].as_str() {
        s.stop = Some(stop.to_string());
    }
    anthropic_usage(s, &m["usage"]);
    for b in m["content"].as_array().into_iter().flatten() {
        match b["type"].as_str() {
            Some("text") => s.text.push_str(b["text"].as_str().unwrap_or("")),
            Some("tool_use") => s.tool_calls.push((
                b["name"].as_str().unwrap_or("?").to_string(),
                b["input"].to_string(),
            )),
            _ => {}
        }
    }
}

/// Each `data:` payload of an SSE body, parsed (the event name is in it too).
fn sse_data(body: &str, s: &mut Summary) -> Vec<Value> {
    let mut out = Vec::new();
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim_start();
        if data == "[DONE]" {
            continue;
        }
        match serde_json::from_str(data) {
            Ok(v) => out.push(v),
            Err(_) => s.partial.push("an SSE event did not parse".into()),
        }
    }
    out
}

fn anthropic_response(s: &mut Summary, body: &str) {
    if body.trim_start().starts_with('{') {
        if let Ok(m) = serde_json::from_str::<Value>(body) {
            anthropic_message(s, &m);
        }
        return;
    }
    let events = sse_data(body, s);
    anthropic_events(s, events);
}

/// Anthropic's streaming events (from SSE, or Bedrock's event-stream chunks):
/// tool inputs arrive as partial JSON, per content block.
fn anthropic_events(s: &mut Summary, events: Vec<Value>) {
    let mut blocks: Vec<(String, String, bool)> = Vec::new(); // (name, json, is_tool)
    for ev in events {
        match ev["type"].as_str() {
            Some("message_start") => anthropic_message(s, &ev["message"]),
            Some("content_block_start") => {
                let b = &ev["content_block"];
                let tool = b["type"] == "tool_use";
                blocks.push((
                    b["name"].as_str().unwrap_or("").to_string(),
                    String::new(),
                    tool,
                ));
                if b["type"] == "text" {
                    s.text.push_str(b["text"].as_str().unwrap_or(""));
                }
            }
            Some("content_block_delta") => {
                let d = &ev["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => s.text.push_str(d["text"].as_str().unwrap_or("")),
                    Some("input_json_delta") => {
                        if let Some(b) = blocks.last_mut() {
                            b.1.push_str(d["partial_json"].as_str().unwrap_or(""));
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(stop) = ev["delta"]["stop_reason"].as_str() {
                    s.stop = Some(stop.to_string());
                }
                anthropic_usage(s, &ev["usage"]);
            }
            _ => {}
        }
    }
    for (name, json, tool) in blocks {
        if tool {
            s.tool_calls
                .push((name, if json.is_empty() { "{}".into() } else { json }));
        }
    }
}

/// Text of an OpenAI content value (Chat or Responses): a string or a
/// list of parts with `text`.
fn parts_text(content: &Value) -> String {
    match content {
        Value::String(t) => t.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn openai_request(s: &mut Summary, r: &Value) {
    s.model = r["model"].as_str().map(str::to_string);
    s.stream = r["stream"] == Value::Bool(true);
    let msgs = r["messages"].as_array().cloned().unwrap_or_default();
    let system: Vec<String> = msgs
        .iter()
        .filter(|m| m["role"] == "system" || m["role"] == "developer")
        .map(|m| parts_text(&m["content"]))
        .collect();
    if !system.is_empty() {
        s.system = Some(system.join("\n"));
    }
    // The new turn: the trailing tool results, or the last message.
    let tail: Vec<&Value> = msgs
        .iter()
        .rev()
        .take_while(|m| m["role"] == "tool")
        .collect();
    s.tool_results = tail.len();
    if let Some(m) = msgs.last() {
        s.sent.push((
            m["role"].as_str().unwrap_or("?").to_string(),
            parts_text(&m["content"]),
        ));
    }
}

fn openai_usage(s: &mut Summary, u: &Value) {
    s.usage.input = u["prompt_tokens"].as_u64().or(s.usage.input);
    s.usage.output = u["completion_tokens"].as_u64().or(s.usage.output);
    s.usage.cache_read = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .or(s.usage.cache_read);
}

fn openai_response(s: &mut Summary, body: &str) {
    if body.trim_start().starts_with('{') {
        let Ok(m) = serde_json::from_str::<Value>(body) else {
            return;
        };
        if let Some(model) = m["model"].as_str() {
            s.model = Some(model.to_string());
        }
        let c = &m["choices"][0];
        s.stop = c["finish_reason"].as_str().map(str::to_string);
        s.text = parts_text(&c["message"]["content"]);
        for t in c["message"]["tool_calls"].as_array().into_iter().flatten() {
            s.tool_calls.push((
                t["function"]["name"].as_str().unwrap_or("?").to_string(),
                t["function"]["arguments"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            ));
        }
        openai_usage(s, &m["usage"]);
        return;
    }
    // SSE chunks: tool call arguments arrive in pieces, by index.
    let mut calls: Vec<(String, String)> = Vec::new();
    for ev in sse_data(body, s) {
        if let Some(model) = ev["model"].as_str() {
            s.model = Some(model.to_string());
        }
        openai_usage(s, &ev["usage"]);
        let c = &ev["choices"][0];
        if let Some(stop) = c["finish_reason"].as_str() {
            s.stop = Some(stop.to_string());
        }
        let d = &c["delta"];
        s.text.push_str(d["content"].as_str().unwrap_or(""));
        for t in d["tool_calls"].as_array().into_iter().flatten() {
            let i = t["index"].as_u64().unwrap_or(0) as usize;
            while calls.len() <= i {
                calls.push((String::new(), String::new()));
            }
            if let Some(n) = t["function"]["name"].as_str() {
                calls[i].0.push_str(n);
            }
            calls[i]
                .1
                .push_str(t["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    s.tool_calls.extend(calls);
}

fn responses_request(s: &mut Summary, r: &Value) {
    s.model = r["model"].as_str().map(str::to_string);
    s.stream = r["stream"] == Value::Bool(true);
    if let Some(i) = r["instructions"].as_str() {
        s.system = Some(i.to_string());
    }
    match &r["input"] {
        Value::String(t) => s.sent.push(("user".into(), t.clone())),
        Value::Array(items) => {
            s.tool_results = items
                .iter()
                .filter(|i| i["type"] == "function_call_output")
                .count();
            let system: Vec<String> = items
                .iter()
                .filter(|i| i["role"] == "system" || i["role"] == "developer")
                .map(|i| parts_text(&i["content"]))
                .collect();
            if !system.is_empty() && s.system.is_none() {
                s.system = Some(system.join("\n"));
            }
            if let Some(last) = items.iter().rev().find(|i| i["role"].is_string()) {
                s.sent.push((
                    last["role"].as_str().unwrap_or("?").to_string(),
                    parts_text(&last["content"]),
                ));
            }
        }
        _ => {}
    }
}

/// A whole Responses API `response` object: the final word when present.
fn responses_object(s: &mut Summary, r: &Value) {
    if let Some(model) = r["model"].as_str() {
        s.model = Some(model.to_string());
    }
    let u = &r["usage"];
    s.usage.input = u["input_tokens"].as_u64().or(s.usage.input);
    s.usage.output = u["output_tokens"].as_u64().or(s.usage.output);
    s.usage.cache_read = u["input_tokens_details"]["cached_tokens"]
        .as_u64()
        .or(s.usage.cache_read);
    let Some(output) = r["output"].as_array() else {
        return;
    };
    s.text.clear();
    s.tool_calls.clear();
    for item in output {
        match item["type"].as_str() {
            Some("message") => s.text.push_str(&parts_text(&item["content"])),
            Some("function_call") => s.tool_calls.push((
                item["name"].as_str().unwrap_or("?").to_string(),
                item["arguments"].as_str().unwrap_or("").to_string(),
            )),
            _ => {}
        }
    }
    s.stop = match (
        r["status"].as_str(),
        r["incomplete_details"]["reason"].as_str(),
    ) {
        (_, Some(why)) => Some(why.to_string()),
        (Some("completed"), _) if !s.tool_calls.is_empty() => Some("function_call".into()),
        (Some(st), _) => Some(st.to_string()),
        _ => s.stop.take(),
    };
}

fn responses_response(s: &mut Summary, body: &str) {
    if body.trim_start().starts_with('{') {
        if let Ok(r) = serde_json::from_str::<Value>(body) {
            responses_object(s, &r);
        }
        return;
    }
    // SSE: text and call arguments as deltas; `response.completed` (when the
    // stream got that far) carries the whole response.
    let mut calls: Vec<(u64, String, String)> = Vec::new();
    for ev in sse_data(body, s) {
        match ev["type"].as_str() {
            Some("response.created") | Some("response.in_progress") => {
                if let Some(m) = ev["response"]["model"].as_str() {
                    s.model = Some(m.to_string());
                }
            }
            Some("response.output_text.delta") => {
                s.text.push_str(ev["delta"].as_str().unwrap_or(""))
            }
            Some("response.output_item.added") if ev["item"]["type"] == "function_call" => {
                calls.push((
                    ev["output_index"].as_u64().unwrap_or(0),
                    ev["item"]["name"].as_str().unwrap_or("?").to_string(),
                    String::new(),
                ));
            }
            Some("response.function_call_arguments.delta") => {
                let i = ev["output_index"].as_u64().unwrap_or(0);
                if let Some(c) = calls.iter_mut().find(|c| c.0 == i) {
                    c.2.push_str(ev["delta"].as_str().unwrap_or(""));
                }
            }
            Some("response.completed") | Some("response.incomplete") | Some("response.failed") => {
                responses_object(s, &ev["response"]);
                return;
            }
            _ => {}
        }
    }
    s.tool_calls
        .extend(calls.into_iter().map(|(_, name, args)| (name, args)));
}

/// One line of text, at most `max` characters, with `…` when cut.
fn fold(text: &str, max: usize) -> String {
    let one: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() <= max {
        one
    } else {
        let cut: String = one.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn secs(ms: f64) -> String {
    format!("{:.2}s", ms / 1000.0)
}

/// The human form: a head line, then the system prompt (folded), what was
/// sent, the answer and its tool calls, each on its own indented line.
pub fn render(s: &Summary, width: usize) -> String {
    let mut out = String::new();
    let time = s.at.get(11..19).unwrap_or(&s.at);
    let _ = write!(out, "{time}  #{}  {}", s.id, s.provider);
    if let Some(m) = &s.model {
        let _ = write!(out, "  {m}");
    }
    let _ = write!(out, "  {} {} {}", s.status, s.method, s.path);
    if let Some(d) = s.duration_ms {
        let _ = write!(out, "  {}", secs(d));
    }
    if let (Some(f), true) = (s.first_byte_ms, s.stream) {
        let _ = write!(out, " (first token {})", secs(f));
    }
    if let Some(stop) = &s.stop {
        let _ = write!(out, "  {stop}");
    }
    let u = &s.usage;
    if u.input.is_some() || u.output.is_some() {
        let n = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        let _ = write!(out, "  tokens in {} out {}", n(u.input), n(u.output));
        if u.cache_read.is_some() || u.cache_write.is_some() {
            let _ = write!(
                out,
                " cache read {} write {}",
                u.cache_read.unwrap_or(0),
                u.cache_write.unwrap_or(0)
            );
        }
    }
    out.push('\n');
    let line = width.saturating_sub(14).max(20);
    if let Some(sys) = &s.system {
        let _ = writeln!(out, "  system     {}", fold(sys, line));
    }
    for (role, text) in &s.sent {
        let _ = writeln!(out, "  {:<10} {}", role, fold(text, line));
    }
    if s.tool_results > 0 {
        let _ = writeln!(out, "  {:<10} {} tool result(s) sent", "", s.tool_results);
    }
    if !s.text.is_empty() {
        let _ = writeln!(out, "  assistant  {}", fold(&s.text, line));
    }
    for (name, args) in &s.tool_calls {
        let _ = writeln!(
            out,
            "  tool call  {}",
            fold(&format!("{name} {args}"), line)
        );
    }
    for p in &s.partial {
        let _ = writeln!(out, "  (partial: {p})");
    }
    out
}

/// The `--json` form: one object per exchange, the summary's fields.
pub fn to_json(s: &Summary) -> Value {
    serde_json::json!({
        "id": s.id, "at": s.at, "host": s.host, "method": s.method, "path": s.path,
        "status": s.status, "provider": s.provider, "model": s.model, "stream": s.stream,
        "durationMs": s.duration_ms, "firstByteMs": s.first_byte_ms, "stop": s.stop,
        "usage": {"input": s.usage.input, "output": s.usage.output,
                  "cacheRead": s.usage.cache_read, "cacheWrite": s.usage.cache_write},
        "system": s.system,
        "sent": s.sent.iter().map(|(r, t)| serde_json::json!({"role": r, "text": t})).collect::<Vec<_>>(),
        "toolCalls": s.tool_calls.iter().map(|(n, a)| serde_json::json!({"name": n, "arguments": a})).collect::<Vec<_>>(),
        "toolResults": s.tool_results, "text": s.text, "partial": s.partial,
    })
}

/// The exchanges of a store's text (other lines — dropped-count notices —
/// are skipped), oldest first; the last `n` when given.
pub fn exchanges(text: &str, n: Option<usize>) -> Vec<Value> {
    let all: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "exchange")
        .collect();
    match n {
        Some(n) if all.len() > n => all[all.len() - n..].to_vec(),
        _ => all,
    }
}

/// One message of the turn the agent sent (`--tui` and `--html` show them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Message {
    pub role: String,
    pub text: String,
    /// For a tool result: the id of the call it answers.
    pub tool_result: Option<String>,
}

/// What the agent added to the conversation in this request: the messages
/// after the model's last answer (tool results one by one, then any user
/// text), from the recorded request. A provider without a decoder here, or a
/// request that does not parse, gives `s.sent`.
pub(crate) fn new_messages(ex: &Value, s: &Summary) -> Vec<Message> {
    let msg = |role: &str, text: String, tool_result: Option<String>| Message {
        role: role.to_string(),
        text,
        tool_result,
    };
    let fallback = || {
        s.sent
            .iter()
            .map(|(r, t)| msg(r, t.clone(), None))
            .collect::<Vec<_>>()
    };
    let Some(r) = body_text(&ex["request"]).and_then(|t| serde_json::from_str::<Value>(t).ok())
    else {
        return fallback();
    };
    let path = s.path.split('?').next().unwrap_or("");
    let after_answer = |items: &[Value], is_answer: &dyn Fn(&Value) -> bool| {
        let from = items.iter().rposition(is_answer).map_or(0, |i| i + 1);
        items[from..].to_vec()
    };
    let mut out = Vec::new();
    if s.provider == "anthropic" {
        let msgs = r["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for m in after_answer(msgs, &|m| m["role"] == "assistant") {
            let role = m["role"].as_str().unwrap_or("?");
            match &m["content"] {
                Value::Array(blocks) => {
                    for b in blocks {
                        match b["type"].as_str() {
                            Some("tool_result") => out.push(msg(
                                "tool",
                                anthropic_text(&b["content"]),
                                Some(b["tool_use_id"].as_str().unwrap_or("?").to_string()),
                            )),
                            Some("text") | Some("image") => out.push(msg(
                                role,
                                anthropic_text(&Value::from(vec![b.clone()])),
                                None,
                            )),
                            _ => {}
                        }
                    }
                }
                c => out.push(msg(role, anthropic_text(c), None)),
            }
        }
    } else if path.ends_with("/chat/completions") {
        let msgs = r["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for m in after_answer(msgs, &|m| m["role"] == "assistant") {
            match m["role"].as_str().unwrap_or("?") {
                "system" | "developer" => {}
                "tool" => out.push(msg(
                    "tool",
                    parts_text(&m["content"]),
                    Some(m["tool_call_id"].as_str().unwrap_or("?").to_string()),
                )),
                role => out.push(msg(role, parts_text(&m["content"]), None)),
            }
        }
    } else if path.ends_with("/v1/responses") {
        match &r["input"] {
            Value::String(t) => out.push(msg("user", t.clone(), None)),
            Value::Array(items) => {
                let answer = |i: &Value| i["role"] == "assistant" || i["type"] == "function_call";
                for i in after_answer(items, &answer) {
                    if i["type"] == "function_call_output" {
                        let text = match &i["output"] {
                            Value::String(t) => t.clone(),
                            o => parts_text(o),
                        };
                        let id = i["call_id"].as_str().unwrap_or("?").to_string();
                        out.push(msg("tool", text, Some(id)));
                    } else if let Some(role) = i["role"].as_str()
                        && role != "system"
                        && role != "developer"
                    {
                        out.push(msg(role, parts_text(&i["content"]), None));
                    }
                }
            }
            _ => {}
        }
    } else {
        return fallback();
    }
    out
}

/// A recorded exchange from tests/data/spy (the decoders', the TUI's and the
/// report's tests share them).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/spy")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("CELL_BLESS").is_some() {
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} missing; CELL_BLESS=1 writes it", path.display()));
        assert_eq!(
            got,
            want,
            "{} differs (CELL_BLESS=1 rewrites it)",
            path.display()
        );
    }

    #[test]
    fn every_provider_format_decodes_to_the_same_summary() {
        let anthropic_sse = summarize(&fixture("anthropic-sse.json"));
        let anthropic_json = summarize(&fixture("anthropic-json.json"));
        let openai_sse = summarize(&fixture("openai-sse.json"));
        let openai_json = summarize(&fixture("openai-json.json"));
        let responses_sse = summarize(&fixture("responses-sse.json"));
        let responses_json = summarize(&fixture("responses-json.json"));
        let bedrock_invoke = summarize(&fixture("bedrock-invoke.json"));
        let bedrock_invoke_stream = summarize(&fixture("bedrock-invoke-stream.json"));
        let bedrock_converse = summarize(&fixture("bedrock-converse.json"));
        let bedrock_converse_stream = summarize(&fixture("bedrock-converse-stream.json"));
        for s in [
            &anthropic_sse,
            &anthropic_json,
            &openai_sse,
            &openai_json,
            &responses_sse,
            &responses_json,
            &bedrock_invoke,
            &bedrock_invoke_stream,
            &bedrock_converse,
            &bedrock_converse_stream,
        ] {
            assert_eq!(
                s.tool_calls,
                vec![("get_weather".to_string(), r#"{"city":"Paris"}"#.to_string())],
                "{s:?}"
            );
            assert_eq!(s.text, "Let me check the weather.", "{s:?}");
            assert_eq!(
                s.sent,
                vec![(
                    "user".to_string(),
                    "What is the weather in Paris?".to_string()
                )]
            );
            assert_eq!(s.system.as_deref(), Some("You are a helpful assistant."));
            assert_eq!(
                (s.usage.input, s.usage.output),
                (Some(412), Some(38)),
                "{s:?}"
            );
            assert!(s.partial.is_empty(), "{s:?}");
        }
        assert_eq!(anthropic_sse.stop.as_deref(), Some("tool_use"));
        assert_eq!(anthropic_json.stop.as_deref(), Some("tool_use"));
        assert_eq!(openai_sse.stop.as_deref(), Some("tool_calls"));
        assert_eq!(anthropic_sse.usage.cache_read, Some(1024));
        assert_eq!(anthropic_sse.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(openai_json.model.as_deref(), Some("gpt-4.1"));
        assert!(anthropic_sse.stream && openai_sse.stream && !anthropic_json.stream);
        assert!(responses_sse.stream && !responses_json.stream);
        assert_eq!(responses_sse.stop.as_deref(), Some("function_call"));
        assert_eq!(responses_sse.usage.cache_read, Some(256));
        // Bedrock: the model from the path, URL-decoded (an inference profile's ARN too).
        let sonnet = "anthropic.claude-sonnet-4-5-20250929-v1:0";
        let profile = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.";
        for (s, model, stream) in [
            (&bedrock_invoke, sonnet.to_string(), false),
            (&bedrock_invoke_stream, sonnet.to_string(), true),
            (&bedrock_converse, format!("us.{sonnet}"), false),
            (&bedrock_converse_stream, format!("{profile}{sonnet}"), true),
        ] {
            assert_eq!(s.provider, "bedrock");
            assert_eq!(s.model.as_deref(), Some(model.as_str()), "{s:?}");
            assert_eq!(s.stream, stream, "{s:?}");
            assert_eq!(s.stop.as_deref(), Some("tool_use"), "{s:?}");
            assert_eq!(s.usage.cache_read, Some(1024), "{s:?}");
        }
        // Cut before `response.completed`: the deltas still give the call.
        let mut cut = fixture("responses-sse.json");
        let body = cut["response"]["body"]["text"]
            .as_str()
            .unwrap()
            .to_string();
        let before = body.find("event: response.completed").unwrap();
        cut["response"]["body"]["text"] = Value::from(&body[..before]);
        let s = summarize(&cut);
        assert_eq!(s.tool_calls, responses_sse.tool_calls);
        assert_eq!(s.text, "Let me check the weather.");
    }

    #[test]
    fn the_formatted_output_is_pinned() {
        let mut out = String::new();
        for f in [
            "anthropic-sse.json",
            "anthropic-json.json",
            "openai-sse.json",
            "openai-json.json",
            "responses-sse.json",
            "responses-json.json",
            "bedrock-invoke.json",
            "bedrock-invoke-stream.json",
            "bedrock-converse.json",
            "bedrock-converse-stream.json",
        ] {
            out.push_str(&render(&summarize(&fixture(f)), 100));
        }
        golden("spy-render.txt", &out);
    }

    #[test]
    fn a_cut_or_unknown_exchange_is_summarised_as_far_as_it_goes() {
        let mut ex = fixture("anthropic-sse.json");
        let body = ex["response"]["body"]["text"].as_str().unwrap().to_string();
        ex["response"]["body"]["text"] = Value::from(&body[..body.len() / 2]);
        ex["response"]["body"]["cut"] = Value::Bool(true);
        let s = summarize(&ex);
        assert_eq!(s.provider, "anthropic");
        assert!(s.partial.iter().any(|p| p.contains("cut")), "{s:?}");
        let other = serde_json::json!({"event":"exchange","id":1,"host":"pypi.org","method":"GET",
            "path":"/simple/","status":200,"request":{"body":{"bytes":0,"text":""}},
            "response":{"body":{"bytes":10,"base64":"AAAA"}}});
        let s = summarize(&other);
        assert_eq!(s.provider, "http");
        assert!(render(&s, 80).contains("200 GET /simple/"));
    }

    #[test]
    fn exchanges_skips_other_lines_and_keeps_the_last_n() {
        let text = "{\"event\":\"exchange\",\"id\":1}\n{\"event\":\"events-dropped\",\"count\":3}\nnot json\n{\"event\":\"exchange\",\"id\":2}\n";
        assert_eq!(exchanges(text, None).len(), 2);
        assert_eq!(exchanges(text, Some(1))[0]["id"], 2);
    }
}
