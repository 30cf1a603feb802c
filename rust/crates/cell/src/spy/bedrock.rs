//! AWS Bedrock Runtime (`bedrock-runtime.<region>.amazonaws.com`): the four
//! model operations, `POST /model/{modelId}/{invoke, invoke-with-response-stream,
//! converse, converse-stream}`, the model id URL-encoded in the path (an ARN's
//! `:` and `/` as `%3A` and `%2F`).
//!
//! - **InvokeModel** carries the model's own format. Anthropic models
//!   (`anthropic_version` in the body, no `model`) are read by the Anthropic
//!   Messages decoders; models whose native format follows Converse (Amazon
//!   Nova: `messages` of `{text}` blocks, `output.message`, and stream
//!   chunks named `contentBlockDelta` …) by the Converse ones here.
//! - **InvokeModelWithResponseStream** answers `application/vnd.amazon.eventstream`:
//!   binary frames, each `chunk` event's payload `{"bytes":"<base64>"}` holding
//!   one native streaming event.
//! - **Converse / ConverseStream**: Bedrock's own shape (`system` list,
//!   `messages` of `text` / `toolUse` / `toolResult` blocks; `output.message`,
//!   `stopReason`, `usage`), streamed as frames whose `:event-type` names the
//!   event (`messageStart`, `contentBlockStart`, `contentBlockDelta`,
//!   `contentBlockStop`, `messageStop`, `metadata`).
//!
//! Frames are decoded (lengths, headers, both CRC32s) by the AWS SDK's own
//! `aws-smithy-eventstream`. A frame that fails its checksum, or does not
//! decode, ends the decoding there with a note; a cut body is decoded as far
//! as its whole frames go; an exception frame (`:message-type` `exception`)
//! is a note with its type and message. Never an error, never a panic.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::Message;
use serde_json::Value;

use super::Summary;

/// One of the Bedrock Runtime model operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Invoke,
    InvokeStream,
    Converse,
    ConverseStream,
}

impl Op {
    fn streams(self) -> bool {
        matches!(self, Op::InvokeStream | Op::ConverseStream)
    }
}

/// The operation and the (decoded) model id of a Bedrock Runtime path
/// (`/model/{modelId}/{operation}`, query already removed).
pub(super) fn route(path: &str) -> Option<(Op, String)> {
    let (id, op) = path.strip_prefix("/model/")?.split_once('/')?;
    let op = match op {
        "invoke" => Op::Invoke,
        "invoke-with-response-stream" => Op::InvokeStream,
        "converse" => Op::Converse,
        "converse-stream" => Op::ConverseStream,
        _ => return None,
    };
    if id.is_empty() {
        return None;
    }
    Some((op, percent_decode(id)))
}

/// `%XX` sequences decoded; anything malformed is kept as it was.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |at: usize| b.get(at).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fills `s` from a recorded Bedrock Runtime exchange.
pub(super) fn summarize(s: &mut Summary, ex: &Value, op: Op, model: String) {
    let req: Option<Value> =
        super::body_text(&ex["request"]).and_then(|t| serde_json::from_str(t).ok());
    if let Some(r) = &req {
        match op {
            Op::Invoke | Op::InvokeStream => native_request(s, r, &model),
            Op::Converse | Op::ConverseStream => converse_request(s, r),
        }
    }
    let body = body_bytes(s, &ex["response"]["body"]);
    let json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if json {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if s.status >= 400 => s.partial.push(format!(
                "the provider answered {}: {}",
                s.status,
                v["message"]
                    .as_str()
                    .or(v["Message"].as_str())
                    .unwrap_or("")
            )),
            Ok(v) => match op {
                Op::Invoke | Op::InvokeStream => native_response(s, &v),
                Op::Converse | Op::ConverseStream => converse_output(s, &v),
            },
            Err(_) if ex["response"]["body"]["cut"] == Value::Bool(true) => {}
            Err(_) => s.partial.push("the response body did not parse".into()),
        }
    } else if !body.is_empty() {
        let (frames, stopped) = frames(&body);
        let cut = ex["response"]["body"]["cut"] == Value::Bool(true);
        stream(s, op, &frames);
        match stopped {
            Stop::End => {}
            Stop::Inside if cut => {}
            Stop::Inside => s
                .partial
                .push("the event stream ended inside a frame".into()),
            Stop::Bad(why) => s.partial.push(format!(
                "event-stream frame {} did not decode ({why}); the frames after it are not shown",
                frames.len() + 1
            )),
        }
    }
    // Bedrock's own token counts (headers of InvokeModel), when the body had none.
    let h = &ex["response"]["headers"];
    let n = |k: &str| h[k].as_str().and_then(|v| v.trim().parse::<u64>().ok());
    s.usage.input = s.usage.input.or(n("x-amzn-bedrock-input-token-count"));
    s.usage.output = s.usage.output.or(n("x-amzn-bedrock-output-token-count"));
    s.model = Some(model);
    s.stream = op.streams();
}

/// A recorded body's bytes: its text, or its base64 decoded.
fn body_bytes(s: &mut Summary, body: &Value) -> Vec<u8> {
    if let Some(t) = body["text"].as_str() {
        return t.as_bytes().to_vec();
    }
    match body["base64"]
        .as_str()
        .map(aws_smithy_types::base64::decode)
    {
        Some(Ok(b)) => b,
        Some(Err(_)) => {
            s.partial
                .push("the recorded body is not valid base64".into());
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// Why the frame decoding stopped.
#[derive(Debug, PartialEq)]
enum Stop {
    /// At the end of the body, after a whole frame.
    End,
    /// Inside a frame: the body ends before it does.
    Inside,
    /// At a frame that does not decode (a checksum, a length, a header).
    Bad(String),
}

/// The whole frames at the start of `body`, and why decoding stopped.
fn frames(body: &[u8]) -> (Vec<Message>, Stop) {
    let mut buf = body;
    let mut decoder = MessageFrameDecoder::new();
    let mut out = Vec::new();
    loop {
        if buf.is_empty() {
            return (out, Stop::End);
        }
        match decoder.decode_frame(&mut buf) {
            Ok(DecodedFrame::Complete(m)) => out.push(m),
            Ok(DecodedFrame::Incomplete) => return (out, Stop::Inside),
            Err(e) => return (out, Stop::Bad(e.to_string())),
        }
    }
}

fn header<'a>(m: &'a Message, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|v| v.as_str())
}

/// The events of a stream's frames, in order; exceptions as notes.
fn stream(s: &mut Summary, op: Op, frames: &[Message]) {
    let mut native = Vec::new();
    let mut converse = ConverseStream::default();
    for m in frames {
        let payload = || serde_json::from_slice::<Value>(m.payload()).ok();
        match header(m, ":message-type").unwrap_or("event") {
            "exception" => {
                let message = payload()
                    .and_then(|p| p["message"].as_str().map(str::to_string))
                    .unwrap_or_default();
                s.partial.push(format!(
                    "the stream ended with {}: {message}",
                    header(m, ":exception-type").unwrap_or("an exception")
                ));
            }
            "error" => s.partial.push(format!(
                "the stream ended with {}: {}",
                header(m, ":error-code").unwrap_or("an error"),
                header(m, ":error-message").unwrap_or("")
            )),
            _ => {
                let event = header(m, ":event-type").unwrap_or("");
                let Some(p) = payload() else {
                    s.partial
                        .push(format!("a {event} event's payload did not parse"));
                    continue;
                };
                match op {
                    Op::ConverseStream => converse.event(s, event, &p),
                    _ if event == "chunk" => {
                        match p["bytes"]
                            .as_str()
                            .and_then(|b| aws_smithy_types::base64::decode(b).ok())
                            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        {
                            Some(v) => native.push(v),
                            None => s.partial.push("a chunk did not parse".into()),
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    if op == Op::ConverseStream {
        converse.finish(s);
    } else {
        native_events(s, native);
    }
}

/// An InvokeModel request: Anthropic Messages, a Converse-like native
/// format (Nova), or a plain `prompt` / `inputText`.
fn native_request(s: &mut Summary, r: &Value, model: &str) {
    if r["anthropic_version"].is_string() || model.contains("anthropic.") {
        super::anthropic_request(s, r);
    } else if r["messages"].is_array() {
        converse_request(s, r);
    } else if let Some(p) = r["prompt"].as_str().or(r["inputText"].as_str()) {
        s.sent.push(("user".into(), p.to_string()));
    }
}

fn native_response(s: &mut Summary, v: &Value) {
    if v["type"] == "message" || v["content"].is_array() {
        super::anthropic_message(s, v);
    } else if v["output"]["message"].is_object() {
        converse_output(s, v);
    }
}

/// The native events of an InvokeModelWithResponseStream answer: Anthropic
/// (`type`) or Converse-named (`{"contentBlockDelta": …}`), and Bedrock's
/// `amazon-bedrock-invocationMetrics` on the last one.
fn native_events(s: &mut Summary, events: Vec<Value>) {
    for ev in &events {
        let m = &ev["amazon-bedrock-invocationMetrics"];
        if m.is_object() {
            s.usage.input = s.usage.input.or(m["inputTokenCount"].as_u64());
            s.usage.output = s.usage.output.or(m["outputTokenCount"].as_u64());
        }
    }
    if events.iter().any(|e| e["type"].is_string()) {
        // Bedrock's metrics say the final counts; Anthropic's own events win.
        let (input, output) = (s.usage.input.take(), s.usage.output.take());
        super::anthropic_events(s, events);
        s.usage.input = s.usage.input.or(input);
        s.usage.output = s.usage.output.or(output);
        return;
    }
    let mut converse = ConverseStream::default();
    for (name, body) in events.iter().filter_map(Value::as_object).flatten() {
        converse.event(s, name, body);
    }
    converse.finish(s);
}

/// Text of Converse content: a string, or blocks (`text`, `toolResult`
/// with its own content, `json`, images and documents named).
fn converse_text(content: &Value) -> String {
    match content {
        Value::String(t) => t.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| {
                if let Some(t) = b["text"].as_str() {
                    Some(t.to_string())
                } else if b["toolResult"].is_object() {
                    let r = &b["toolResult"];
                    Some(format!(
                        "[tool result {}] {}",
                        r["toolUseId"].as_str().unwrap_or("?"),
                        converse_text(&r["content"])
                    ))
                } else if !b["json"].is_null() {
                    Some(b["json"].to_string())
                } else if b["image"].is_object() {
                    Some("[image]".into())
                } else if b["document"].is_object() {
                    Some("[document]".into())
                } else {
                    None
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn converse_request(s: &mut Summary, r: &Value) {
    let system = converse_text(&r["system"]);
    if !system.is_empty() {
        s.system = Some(system);
    }
    if let Some(m) = r["messages"].as_array().and_then(|m| m.last()) {
        s.sent.push((
            m["role"].as_str().unwrap_or("?").to_string(),
            converse_text(&m["content"]),
        ));
        if let Some(blocks) = m["content"].as_array() {
            s.tool_results = blocks
                .iter()
                .filter(|b| b["toolResult"].is_object())
                .count();
        }
    }
}

fn converse_usage(s: &mut Summary, u: &Value) {
    // Converse's names, then Nova's InvokeModel ones (`…TokenCount`).
    let n = |keys: &[&str]| keys.iter().find_map(|k| u[*k].as_u64());
    s.usage.input = n(&["inputTokens"]).or(s.usage.input);
    s.usage.output = n(&["outputTokens"]).or(s.usage.output);
    s.usage.cache_read =
        n(&["cacheReadInputTokens", "cacheReadInputTokenCount"]).or(s.usage.cache_read);
    s.usage.cache_write =
        n(&["cacheWriteInputTokens", "cacheWriteInputTokenCount"]).or(s.usage.cache_write);
}

/// A whole Converse answer: `output.message`, `stopReason`, `usage`.
fn converse_output(s: &mut Summary, v: &Value) {
    if let Some(stop) = v["stopReason"].as_str() {
        s.stop = Some(stop.to_string());
    }
    converse_usage(s, &v["usage"]);
    for b in v["output"]["message"]["content"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(t) = b["text"].as_str() {
            s.text.push_str(t);
        } else if b["toolUse"].is_object() {
            s.tool_calls.push((
                b["toolUse"]["name"].as_str().unwrap_or("?").to_string(),
                b["toolUse"]["input"].to_string(),
            ));
        }
    }
}

/// ConverseStream events as they come: text in order, tool inputs
/// assembled per content block.
#[derive(Default)]
struct ConverseStream {
    /// (content block index, tool name, input JSON so far)
    tools: Vec<(u64, String, String)>,
}

impl ConverseStream {
    fn event(&mut self, s: &mut Summary, name: &str, ev: &Value) {
        let index = ev["contentBlockIndex"].as_u64().unwrap_or(0);
        match name {
            "contentBlockStart" => {
                let t = &ev["start"]["toolUse"];
                if t.is_object() {
                    self.tools.push((
                        index,
                        t["name"].as_str().unwrap_or("?").to_string(),
                        String::new(),
                    ));
                }
            }
            "contentBlockDelta" => {
                let d = &ev["delta"];
                if let Some(t) = d["text"].as_str() {
                    s.text.push_str(t);
                } else if let Some(input) = d["toolUse"]["input"].as_str()
                    && let Some(t) = self.tools.iter_mut().rev().find(|t| t.0 == index)
                {
                    t.2.push_str(input);
                }
            }
            "messageStop" => {
                if let Some(stop) = ev["stopReason"].as_str() {
                    s.stop = Some(stop.to_string());
                }
            }
            "metadata" => converse_usage(s, &ev["usage"]),
            _ => {}
        }
    }

    fn finish(self, s: &mut Summary) {
        for (_, name, input) in self.tools {
            let input = if input.is_empty() { "{}".into() } else { input };
            s.tool_calls.push((name, input));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};
    use serde_json::json;

    fn data(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/spy")
            .join(name)
    }

    /// One event-stream frame, encoded (lengths, both CRC32s) by aws-smithy-eventstream.
    fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let headers = headers
            .iter()
            .map(|(n, v)| Header::new(n.to_string(), HeaderValue::String(v.to_string().into())))
            .collect();
        let mut out = Vec::new();
        write_message_to(
            &Message::new_from_parts(headers, payload.to_vec()),
            &mut out,
        )
        .expect("a frame encodes");
        out
    }

    /// An event frame as Bedrock sends it: `:event-type` names it, the payload is JSON.
    fn event(kind: &str, payload: &Value) -> Vec<u8> {
        frame(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        )
    }

    /// An InvokeModelWithResponseStream `chunk`: the native event, base64, in `bytes`.
    fn chunk(native: &Value) -> Vec<u8> {
        event(
            "chunk",
            &json!({"bytes": aws_smithy_types::base64::encode(native.to_string())}),
        )
    }

    /// The conversation of the other fixtures as Anthropic-on-Bedrock
    /// streaming events (Anthropic's events; Bedrock's metrics on the last).
    fn anthropic_events() -> Vec<Value> {
        vec![
            json!({"type": "message_start", "message": {"id": "msg_bdrk_03", "type": "message",
                "role": "assistant", "model": "claude-sonnet-4-5-20250929", "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 412,
                "output_tokens": 1, "cache_read_input_tokens": 1024, "cache_creation_input_tokens": 0}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check "}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "the weather."}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
                "id": "toolu_bdrk_03", "name": "get_weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 38}}),
            json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 412,
                "outputTokenCount": 38, "invocationLatency": 1650, "firstByteLatency": 398}}),
        ]
    }

    /// The same conversation as ConverseStream events.
    fn converse_events() -> Vec<(&'static str, Value)> {
        vec![
            ("messageStart", json!({"role": "assistant"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Let me check "}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "the weather."}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            (
                "contentBlockStart",
                json!({"contentBlockIndex": 1, "start": {"toolUse":
                {"toolUseId": "tooluse_bdrk_04", "name": "get_weather"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 1})),
            ("messageStop", json!({"stopReason": "tool_use"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 412, "outputTokens": 38, "totalTokens": 450,
                "cacheReadInputTokens": 1024, "cacheWriteInputTokens": 0}, "metrics": {"latencyMs": 1650}}),
            ),
        ]
    }

    fn tool_schema() -> Value {
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
    }

    fn stream_exchange(id: u64, path: &str, request: &Value, body: &[u8]) -> Value {
        let request = request.to_string();
        json!({
            "event": "exchange", "id": id,
            "at": format!("2026-12-02T15:{id:02}:02.345Z"), "time": format!("2026-12-02T15:{id:02}:04.101Z"),
            "host": "bedrock-runtime.us-east-1.amazonaws.com", "method": "POST", "path": path,
            "rule": "policy:https[0]", "status": 200, "durationMs": 1756.2, "firstByteMs": 412.9,
            "complete": true,
            "request": {
                "headers": {"content-type": "application/json", "accept": "application/vnd.amazon.eventstream",
                    "authorization": null, "x-amz-date": null, "x-amz-security-token": null},
                "body": {"bytes": request.len(), "text": request},
            },
            "response": {
                "headers": {"content-type": "application/vnd.amazon.eventstream",
                    "x-amzn-requestid": format!("5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8{id:02}")},
                "body": {"bytes": body.len(), "base64": aws_smithy_types::base64::encode(body)},
            },
        })
    }

    fn invoke_stream() -> Value {
        let request = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are a helpful assistant."}],
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [{"name": "get_weather", "description": "Current weather for a city",
                "input_schema": tool_schema()}]});
        let body: Vec<u8> = anthropic_events().iter().flat_map(chunk).collect();
        stream_exchange(
            8,
            "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
            &request,
            &body,
        )
    }

    fn converse_stream() -> Value {
        let request = json!({"system": [{"text": "You are a helpful assistant."}],
            "messages": [{"role": "user", "content": [{"text": "What is the weather in Paris?"}]}],
            "inferenceConfig": {"maxTokens": 1024},
            "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather",
                "description": "Current weather for a city", "inputSchema": {"json": tool_schema()}}}]}});
        let body: Vec<u8> = converse_events()
            .iter()
            .flat_map(|(kind, payload)| event(kind, payload))
            .collect();
        stream_exchange(
            10,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream",
            &request,
            &body,
        )
    }

    /// The binary stream fixtures are exactly what the descriptions above
    /// encode to (`CELL_BLESS=1` rewrites them): their frames and CRCs are
    /// the AWS SDK's, not hand-made.
    #[test]
    fn the_stream_fixtures_are_their_descriptions_encoded() {
        for (name, ex) in [
            ("bedrock-invoke-stream.json", invoke_stream()),
            ("bedrock-converse-stream.json", converse_stream()),
        ] {
            let mut text = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
            serde::Serialize::serialize(
                &ex,
                &mut serde_json::Serializer::with_formatter(&mut text, fmt),
            )
            .unwrap();
            text.push(b'\n');
            let path = data(name);
            if std::env::var_os("CELL_BLESS").is_some() {
                std::fs::write(&path, &text).unwrap();
            }
            let want = std::fs::read(&path)
                .unwrap_or_else(|_| panic!("{} missing; CELL_BLESS=1 writes it", path.display()));
            assert!(
                want == text,
                "{} differs from its description (CELL_BLESS=1 rewrites it)",
                path.display()
            );
        }
    }

    fn with_body(mut ex: Value, body: &[u8], cut: bool) -> Value {
        ex["response"]["body"] = json!({"bytes": body.len(),
            "base64": aws_smithy_types::base64::encode(body)});
        if cut {
            ex["response"]["body"]["cut"] = Value::Bool(true);
        }
        ex
    }

    fn body_of(ex: &Value) -> Vec<u8> {
        aws_smithy_types::base64::decode(ex["response"]["body"]["base64"].as_str().unwrap())
            .unwrap()
    }

    /// Any one flipped byte, anywhere in the stream, is a note and never a
    /// panic; what is shown is only ever what the good frames said. A flip
    /// in the last frame keeps everything the frames before it carried.
    #[test]
    fn a_flipped_byte_is_a_note_and_the_frames_before_it_stay() {
        let ex = converse_stream();
        let body = body_of(&ex);
        let want = "Let me check the weather.";
        for i in 0..body.len() {
            let mut bad = body.clone();
            bad[i] ^= 0x01;
            let s = super::super::summarize(&with_body(ex.clone(), &bad, false));
            assert!(!s.partial.is_empty(), "flip at {i}: no note: {s:?}");
            assert!(want.starts_with(&s.text), "flip at {i}: {s:?}");
        }
        let (kind, payload) = &converse_events()[9];
        let last = event(kind, payload).len();
        let mut bad = body.clone();
        bad[body.len() - last + 20] ^= 0x01;
        let s = super::super::summarize(&with_body(ex.clone(), &bad, false));
        assert_eq!(s.text, want);
        assert_eq!(
            s.tool_calls,
            vec![("get_weather".into(), r#"{"city":"Paris"}"#.into())]
        );
        assert_eq!(s.stop.as_deref(), Some("tool_use"));
        assert_eq!(s.usage.input, None, "the usage was in the bad frame");
        assert_eq!(s.partial.len(), 1, "{s:?}");
        assert!(
            s.partial[0].contains("frame 10 did not decode") && s.partial[0].contains("checksum"),
            "{s:?}"
        );
    }

    /// A body the recorder cut (or one that stopped) anywhere is decoded to
    /// its last whole frame: the text and calls before the cut stay.
    #[test]
    fn a_cut_stream_keeps_what_came_before_the_cut() {
        let ex = invoke_stream();
        let body = body_of(&ex);
        let frames: Vec<usize> = anthropic_events().iter().map(|e| chunk(e).len()).collect();
        for n in 0..body.len() {
            let s = super::super::summarize(&with_body(ex.clone(), &body[..n], true));
            assert!(
                s.partial.iter().any(|p| p.contains("cut")),
                "cut at {n}: {s:?}"
            );
            assert!(
                "Let me check the weather.".starts_with(&s.text),
                "cut at {n}: {s:?}"
            );
        }
        // Cut inside the second text delta: the first one is shown.
        let at = frames[..3].iter().sum::<usize>() + 10;
        let s = super::super::summarize(&with_body(ex.clone(), &body[..at], true));
        assert_eq!(s.text, "Let me check ");
        assert_eq!(
            s.model.as_deref(),
            Some("anthropic.claude-sonnet-4-5-20250929-v1:0")
        );
        assert_eq!(s.usage.input, Some(412));
        assert_eq!(s.partial, vec!["the response body was cut by the recorder"]);
        // Not marked cut (the stream stopped): said so.
        let s = super::super::summarize(&with_body(ex.clone(), &body[..at], false));
        assert_eq!(s.partial, vec!["the event stream ended inside a frame"]);
        // Cut before the last frame: the tool call is whole, the stop reason there.
        let at = body.len() - frames[10] - frames[9] + 3;
        let s = super::super::summarize(&with_body(ex, &body[..at], true));
        assert_eq!(
            s.tool_calls,
            vec![("get_weather".into(), r#"{"city":"Paris"}"#.into())]
        );
        assert_eq!(s.stop, None);
    }

    /// An exception frame ends the stream: its type and message are a note.
    #[test]
    fn an_exception_frame_is_a_note() {
        let ex = converse_stream();
        let mut body: Vec<u8> = converse_events()[..3]
            .iter()
            .flat_map(|(k, p)| event(k, p))
            .collect();
        body.extend(frame(
            &[
                (":exception-type", "throttlingException"),
                (":content-type", "application/json"),
                (":message-type", "exception"),
            ],
            br#"{"message":"Too many tokens, please wait before trying again."}"#,
        ));
        let s = super::super::summarize(&with_body(ex, &body, false));
        assert_eq!(s.text, "Let me check the weather.");
        assert_eq!(
            s.partial,
            vec![
                "the stream ended with throttlingException: Too many tokens, please wait before trying again."
            ]
        );
    }

    /// The model id is URL-decoded (an inference profile's ARN too); other
    /// paths under `/model/` are not Bedrock's model operations.
    #[test]
    fn the_model_id_is_decoded_from_the_path() {
        assert_eq!(
            route("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse"),
            Some((
                Op::Converse,
                "arn:aws:bedrock:us-east-1:1:inference-profile/x".into()
            ))
        );
        assert_eq!(
            route("/model/amazon.nova-pro-v1:0/invoke"),
            Some((Op::Invoke, "amazon.nova-pro-v1:0".into()))
        );
        assert_eq!(
            route("/model/a%zz%3/invoke").map(|r| r.1),
            Some("a%zz%3".into())
        );
        assert_eq!(route("/model//invoke"), None);
        assert_eq!(route("/model/x/y/invoke"), None);
        assert_eq!(route("/model/x/tokenize"), None);
        assert_eq!(route("/v1/messages"), None);
    }

    /// A native format shaped like Converse (Amazon Nova's InvokeModel):
    /// its request, and its stream chunks named by their one key.
    #[test]
    fn a_converse_shaped_native_stream_is_decoded() {
        let mut ex = invoke_stream();
        ex["path"] = "/model/amazon.nova-pro-v1%3A0/invoke-with-response-stream".into();
        ex["request"]["body"]["text"] = json!({"system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "inferenceConfig": {"maxTokens": 64}})
        .to_string()
        .into();
        let body: Vec<u8> = [
            json!({"messageStart": {"role": "assistant"}}),
            json!({"contentBlockDelta": {"delta": {"text": "Hello"}, "contentBlockIndex": 0}}),
            json!({"contentBlockStop": {"contentBlockIndex": 0}}),
            json!({"messageStop": {"stopReason": "end_turn"}}),
            json!({"metadata": {"usage": {"inputTokens": 5, "outputTokens": 1}},
                "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5, "outputTokenCount": 1}}),
        ]
        .iter()
        .flat_map(chunk)
        .collect();
        let s = super::super::summarize(&with_body(ex, &body, false));
        assert_eq!(s.model.as_deref(), Some("amazon.nova-pro-v1:0"));
        assert_eq!(s.system.as_deref(), Some("Be brief."));
        assert_eq!(s.sent, vec![("user".into(), "hi".into())]);
        assert_eq!(
            (s.text.as_str(), s.stop.as_deref()),
            ("Hello", Some("end_turn"))
        );
        assert_eq!((s.usage.input, s.usage.output), (Some(5), Some(1)));
        assert!(s.partial.is_empty(), "{s:?}");
    }
}
