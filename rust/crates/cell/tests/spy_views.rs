//! `cell spy --tui` and `cell spy --html`, each in the real thing that shows
//! it: the built binary in a tmux terminal, driven with send-keys and read
//! with capture-pane; the report in headless Chromium, read back as the DOM it
//! parsed and as a screenshot. The store is built from the recorded-exchange
//! fixtures in tests/data/spy/.
//!
//! tmux and chromium come from Debian (scripts/dev deps installs them). When
//! one is missing the test says SKIPPED, or fails when CI is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CELL: &str = env!("CARGO_BIN_EXE_cell");

/// Whether `tool` is on PATH; without it the test is skipped (CI: fails).
fn have(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed (apt-get install {package}; scripts/dev deps does)"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install {package})");
    }
    found
}

fn fixtures() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spy");
    let mut list: Vec<Value> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
        .collect();
    list.sort_by_key(|v| v["id"].as_u64());
    assert!(list.len() >= 6, "the spy fixtures");
    list
}

/// Replaces text inside the exchange's readable bodies (not in base64 ones).
fn edit_bodies(ex: &mut Value, edit: impl Fn(&str) -> String) {
    for side in ["request", "response"] {
        if let Some(t) = ex[side]["body"]["text"].as_str() {
            let t = edit(t);
            ex[side]["body"]["text"] = t.into();
        }
    }
}

/// 2026-12-02T15:00:00Z plus `secs`, as the recorder writes times.
fn at(secs: f64) -> String {
    let t =
        std::time::UNIX_EPOCH + Duration::from_secs(1_796_223_600) + Duration::from_secs_f64(secs);
    humantime::format_rfc3339_millis(t).to_string()
}

const CITIES: [&str; 15] = [
    "Paris", "Oslo", "Lisbon", "Kyoto", "Lima", "Cairo", "Quito", "Dakar", "Hanoi", "Perth",
    "Turin", "Accra", "Bergen", "Porto", "Seoul",
];
/// What a tool result could bring back from a web page: markup.
const INJECTION: &str = "<p>18°C</p></script><img src=x onerror=alert(1)> and <b>bold</b>";

/// `text` with `from` replaced where no digit follows it (so 38 is not the
/// start of 3802).
fn replace_number(text: &str, from: &str, to: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        out.push_str(&rest[..i]);
        if after.starts_with(|c: char| c.is_ascii_digit()) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Makes `ex` a later turn of an agent loop: the model asked for the tool
/// before, the request sends its result back.
fn with_tool_result(ex: &mut Value, k: usize, city: &str, result: &str) {
    let Some(text) = ex["request"]["body"]["text"].as_str() else {
        return;
    };
    let mut req: Value = serde_json::from_str(text).unwrap();
    let question = format!("What is the weather in {city}?");
    let id = format!("call_{k:02}");
    let args = serde_json::json!({ "city": city });
    if ex["path"] == "/v1/messages" {
        req["messages"] = serde_json::json!([
            {"role": "user", "content": question},
            {"role": "assistant", "content": [{"type": "tool_use", "id": id, "name": "get_weather", "input": args}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": result}]},
        ]);
    } else if ex["path"] == "/v1/chat/completions" {
        let system = req["messages"][0].clone();
        req["messages"] = serde_json::json!([
            system,
            {"role": "user", "content": question},
            {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                "function": {"name": "get_weather", "arguments": args.to_string()}}]},
            {"role": "tool", "tool_call_id": id, "content": result},
        ]);
    } else {
        panic!("no tool-result form for {}", ex["path"]);
    }
    ex["request"]["body"]["text"] = req.to_string().into();
}

/// An agent run built from the fixtures: every fixture once (those whose
/// response is binary first, as their token counts cannot be changed), a
/// rate-limit error as #7, then four later turns that send tool results
/// back, the last one's result carrying markup. Ids 1…15; each starts when
/// the one before ended plus the time its tool took; the context grows; a
/// different city each time.
fn run() -> Vec<Value> {
    let mut fx = fixtures();
    fx.sort_by_key(|v| (v["response"]["body"]["text"].is_string(), v["id"].as_u64()));
    let by_path = |p: &str| fx.iter().find(|v| v["path"] == p).unwrap().clone();
    let mut plan: Vec<Value> = fx.clone();
    let mut error = by_path("/v1/messages");
    error["status"] = 429.into();
    error["response"] = serde_json::json!({"headers": {"content-type": "application/json"},
        "body": {"bytes": 133, "text": "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"Number of request tokens has exceeded your per-minute rate limit\"}}"}});
    plan.insert(6, error);
    for p in [
        "/v1/messages",
        "/v1/messages",
        "/v1/chat/completions",
        "/v1/chat/completions",
    ] {
        plan.push(by_path(p));
    }
    let tool_turns = plan.len() - 4;
    let mut out = Vec::new();
    let mut t = 0.0;
    for (i, mut ex) in plan.into_iter().enumerate() {
        let k = i + 1;
        let input = if k <= 2 {
            412
        } else {
            412 + ((k - 2) as f64).powf(1.6) as u64 * 610 + (k as u64 % 3) * 170
        };
        let output = 38 + (k as u64 * 37) % 190;
        let city = CITIES[(k - 1) % CITIES.len()];
        edit_bodies(&mut ex, |b| {
            let mut b = b.replace("Paris", city);
            for (from, to) in [(412, input), (38, output)] {
                for key in ["tokens\": ", "tokens\":", "Tokens\": ", "Tokens\":"] {
                    b = replace_number(&b, &format!("{key}{from}"), &format!("{key}{to}"));
                }
            }
            b
        });
        if k > tool_turns {
            let result = if k == tool_turns + 4 {
                INJECTION.to_string()
            } else {
                format!(
                    "{}°C, {}",
                    9 + k * 3 % 17,
                    ["sunny", "overcast", "light rain"][k % 3]
                )
            };
            with_tool_result(&mut ex, k, CITIES[(k - 2) % CITIES.len()], &result);
        }
        let duration = if ex["status"] == 429 {
            212.0
        } else {
            900.0 + (k as f64 * 613.0) % 2_600.0 + output as f64 * 9.0
        };
        ex["id"] = k.into();
        ex["at"] = at(t).into();
        ex["durationMs"] = duration.into();
        ex["firstByteMs"] = (280.0 + (k as f64 * 97.0) % 500.0).into();
        t += duration / 1000.0 + 0.4 + (k % 4) as f64 * 0.9;
        out.push(ex);
    }
    assert!(
        out.last().unwrap()["request"]["body"]["text"]
            .as_str()
            .unwrap()
            .contains("onerror"),
        "the markup reached a request body"
    );
    out
}

fn write_store(path: &Path, list: &[Value]) {
    let mut text = String::new();
    for ex in list {
        text.push_str(&serde_json::to_string(ex).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Tmux {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let t = Tmux {
            socket: format!("cell-spy-test-{}-{nanos}", std::process::id()),
        };
        let out = t
            .cmd()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "spy", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg("sh")
            .env("PS1", "$ ")
            .env("TERM", "xterm-256color")
            .env_remove("TMUX")
            .output()
            .expect("running tmux");
        assert!(out.status.success(), "tmux new-session: {out:?}");
        t.tmux(&["set-option", "-g", "status", "off"]);
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("running tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", "spy"];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }

    fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-t", "spy", "-l", text]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "spy"])
    }

    /// Polls the screen until `ok` holds on a settled screen (the same in two
    /// captures in a row: a capture can fall between the writes of one
    /// frame); panics with the screen after 20 s.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut before = String::new();
        loop {
            let s = self.screen();
            if s == before && ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            before = s;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// The detail pane: the lines from its top border down.
fn detail(screen: &str) -> String {
    let from = screen.find('┌').unwrap_or(0);
    screen[from..].to_string()
}

/// `cell spy --file F --tui` in a 120×40 terminal: the list shows the
/// exchanges, moving down changes the detail pane, `/` filters, follow mode
/// shows an exchange appended to the file afterwards, and `q` leaves the
/// alternate screen with the terminal back in cooked mode (the shell reads a
/// line again, `stty` says icanon and echo).
#[test]
fn tui_in_tmux() {
    if !have("tmux", "tmux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("spy.jsonl");
    let mut list = run();
    let appended = list.pop().unwrap();
    write_store(&store, &list);

    let t = Tmux::start(120, 40);
    let command = format!(
        "{} spy --file {} --tui; echo EXITED $?",
        sh_quote(CELL),
        sh_quote(&store.to_string_lossy())
    );
    t.type_text(&command);
    t.keys(&["Enter"]);

    // The list, with the first exchange in the detail pane.
    let s = t.wait("the list", |s| s.contains("14 of 14 exchanges"));
    for want in ["claude-sonnet-4-5", "gpt-4.1", "429", "provider", "tokens"] {
        assert!(s.contains(want), "{want:?} not in\n{s}");
    }
    assert!(s.contains("q quit"), "the footer shows the keys:\n{s}");
    assert_eq!(
        t.tmux(&["display-message", "-p", "-t", "spy", "#{alternate_on}"])
            .trim(),
        "1"
    );
    assert!(detail(&s).contains("#1 bedrock"), "{s}");
    assert!(detail(&s).contains("What is the weather in Paris?"), "{s}");

    // Down: the detail pane follows the selection.
    t.keys(&["Down", "Down"]);
    let s = t.wait("#3 in the detail pane", |s| {
        detail(s).contains("#3 anthropic")
    });
    assert!(detail(&s).contains("What is the weather in Lisbon?"), "{s}");
    assert!(
        detail(&s).contains("POST api.anthropic.com/v1/messages"),
        "{s}"
    );
    assert!(!detail(&s).contains("Paris"), "{s}");

    // `/` filters the list as typed; Enter keeps it.
    t.keys(&["/"]);
    t.type_text("kyoto");
    t.keys(&["Enter"]);
    let s = t.wait("the search", |s| s.contains("1 of 14 exchanges"));
    assert!(detail(&s).contains("What is the weather in Kyoto?"), "{s}");
    assert!(s.contains("/kyoto"), "{s}");
    assert!(!s.contains("Lisbon"), "{s}");

    // Esc clears; `f` follows; an exchange appended to the file appears and
    // is selected.
    t.keys(&["Escape"]);
    t.wait("the search cleared", |s| s.contains("14 of 14 exchanges"));
    t.keys(&["f"]);
    let s = t.wait("following", |s| s.contains("following"));
    assert!(detail(&s).contains("#14 "), "f selects the newest:\n{s}");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&store)
            .unwrap();
        writeln!(f, "{}", serde_json::to_string(&appended).unwrap()).unwrap();
    }
    let s = t.wait("the appended exchange, selected", |s| {
        s.contains("15 of 15 exchanges") && detail(s).contains("#15 ")
    });
    let d = detail(&s);
    assert!(d.contains("tool result  call_15"), "{s}");
    assert!(
        d.contains("</script><img src=x onerror=alert(1)>"),
        "the markup a tool brought back is shown as text:\n{s}"
    );
    assert!(d.contains("\"city\": \"Seoul\""), "{s}");

    // q: back to the shell, main screen, cooked mode.
    t.keys(&["q"]);
    let s = t.wait("cell to exit", |s| s.contains("EXITED 0"));
    assert!(
        !s.contains("exchanges"),
        "the browser is gone from the screen:\n{s}"
    );
    t.assert_restored();

    // SIGTERM ends it the same way (exit status 128 + 15).
    t.clear();
    t.type_text(&command);
    t.keys(&["Enter"]);
    t.wait("the browser again", |s| s.contains("15 of 15 exchanges"));
    let shell = t.tmux(&["display-message", "-p", "-t", "spy", "#{pane_pid}"]);
    let ps = Command::new("ps")
        .args(["-o", "pid=", "--ppid", shell.trim()])
        .output()
        .expect("running ps");
    let pid: i32 = String::from_utf8_lossy(&ps.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("cell runs under the pane's shell");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let s = t.wait("cell to exit on SIGTERM", |s| s.contains("EXITED 143"));
    assert!(!s.contains("exchanges"), "{s}");
    t.assert_restored();
}

impl Tmux {
    /// The pane is on the main screen and its terminal in cooked mode:
    /// `stty` says icanon and echo (not -icanon, -echo).
    fn assert_restored(&self) {
        assert_eq!(
            self.tmux(&["display-message", "-p", "-t", "spy", "#{alternate_on}"])
                .trim(),
            "0",
            "left the alternate screen"
        );
        // The marker is computed, so the echoed command line never matches.
        self.type_text(
            "stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)' | tr '\\n' ' '; echo STTY-$((6*7))",
        );
        self.keys(&["Enter"]);
        let s = self.wait("stty", |s| {
            s.lines().any(|l| l.trim_end().ends_with("STTY-42"))
        });
        let line = s
            .lines()
            .find(|l| l.trim_end().ends_with("STTY-42"))
            .unwrap();
        assert_eq!(
            line.trim_end(),
            "icanon echo STTY-42",
            "the terminal is back in cooked mode"
        );
    }

    /// An empty screen (and history), so old output cannot match.
    fn clear(&self) {
        self.type_text("clear");
        self.keys(&["Enter"]);
        self.wait("a clear screen", |s| !s.contains("STTY-42"));
        self.tmux(&["clear-history", "-t", "spy"]);
    }
}

fn chromium(profile: &Path, args: &[&str]) -> Output {
    let mut c = Command::new("chromium");
    c.arg("--headless")
        .arg(format!("--user-data-dir={}", profile.display()))
        .args([
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            // No network: every request goes to a proxy that is not there.
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
        ]);
    if nix::unistd::geteuid().is_root() {
        c.arg("--no-sandbox");
    }
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("running chromium");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "chromium did not finish in 90 s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// `cell spy --file F --html R` writes one page that headless Chromium, with
/// no network, shows as: the run's 15 exchanges, the models, a tool call with
/// its arguments, the chart as SVG with one mark per exchange, and the
/// agent's `<img onerror>` as text (no such element in the DOM). A
/// screenshot is kept in the target directory (docs/img/spy-report.png is
/// one of these).
#[test]
fn html_in_chromium() {
    if !have("chromium", "chromium") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("run.jsonl");
    let list = run();
    let n = list.len();
    write_store(&store, &list);
    let report = dir.path().join("report.html");
    // Relative paths, as typed (and as the report then names its source).
    let out = Command::new(CELL)
        .args(["spy", "--file", "run.jsonl", "--html", "report.html"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout.trim(),
        format!("wrote report.html: {n} exchanges from run.jsonl")
    );
    let page = std::fs::read_to_string(&report).unwrap();
    assert!(
        !page.contains("<img") && !page.contains("<script"),
        "nothing the agent wrote is markup"
    );

    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", report.display());
    let dom = chromium(profile.path(), &["--dump-dom", &url]);
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success() && dom_text.contains("</html>"),
        "chromium --dump-dom: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert_eq!(
        dom_text.matches("<details class=\"ex\"").count(),
        n,
        "every exchange"
    );
    assert!(dom_text.contains(&format!("{n} exchanges</title>")));
    assert!(dom_text.contains("claude-sonnet-4-5") && dom_text.contains("gpt-4.1"));
    assert!(dom_text.contains("tool call <code>get_weather</code>"));
    assert!(
        dom_text.contains("&quot;city&quot;: &quot;Kyoto&quot;")
            || dom_text.contains("\"city\": \"Kyoto\"")
    );
    let svg = dom_text
        .split("<svg class=\"chart\"")
        .nth(1)
        .and_then(|s| s.split("</svg>").next())
        .expect("the chart is an inline SVG");
    assert_eq!(
        svg.matches("<a href=\"#ex-").count(),
        n,
        "one mark per exchange"
    );
    assert!(svg.contains("<rect class=\"in\"") && svg.contains("<rect class=\"lat"));
    // The agent's markup: text, not elements.
    assert!(!dom_text.contains("<img"), "an <img> element was created");
    assert!(!dom_text.contains("<b>bold</b>"));
    assert!(dom_text.contains("&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"));

    // The screenshot, with #15 opened as a click would.
    let shot_page = dir.path().join("shot.html");
    std::fs::write(
        &shot_page,
        page.replacen(
            "<details class=\"ex\" id=\"ex-15\">",
            "<details class=\"ex\" id=\"ex-15\" open>",
            1,
        ),
    )
    .unwrap();
    let png = dir.path().join("report.png");
    let shot = chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2340",
            &format!("file://{}", shot_page.display()),
        ],
    );
    let bytes = std::fs::read(&png)
        .unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&shot.stderr)));
    assert_eq!(png_size(&bytes), (1280, 2340));
    assert!(
        bytes.len() > 30_000,
        "the screenshot shows something ({} bytes)",
        bytes.len()
    );
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::copy(&png, keep.join("spy-report.png")).unwrap();
    std::fs::copy(&shot_page, keep.join("spy-report.html")).unwrap();
    eprintln!("screenshot: {}", keep.join("spy-report.png").display());
}

/// `--html` writes a report and exits: with `-f` or `--tui` it makes no
/// sense, and clap says so.
#[test]
fn html_conflicts_with_follow_and_tui() {
    for extra in [["-f"].as_slice(), &["--tui"], &["--json"]] {
        let out = Command::new(CELL)
            .args(["spy", "--file", "/nonexistent", "--html", "/tmp/x.html"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
            "{out:?}"
        );
    }
    // --tui without a terminal says so instead of drawing into a pipe.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.jsonl");
    write_store(&store, &run());
    let out = Command::new(CELL)
        .args(["spy", "--tui", "--file"])
        .arg(&store)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tui needs a terminal"));
}
