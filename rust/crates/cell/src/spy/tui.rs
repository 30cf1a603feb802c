//! `cell spy --tui`: a terminal browser for the spy store. A list of
//! exchanges (time, provider, model, status, latency, tokens), a detail pane
//! for the selected one (system prompt folded, the messages the agent sent,
//! tool results, the model's text, tool calls with their arguments), search
//! with `/`, filters by model (`m`) and tool (`t`), and follow mode (`f`):
//! new exchanges are appended as the store grows, and when following the
//! newest is selected.
//!
//! The state and its key handling ([`App`]) know nothing of a terminal, and
//! [`draw`] renders onto any ratatui backend, so both are tested without one
//! (ratatui's `TestBackend`); [`run`] is the only part that owns the terminal.
//!
//! Everything shown is written by the agent (its prompts) or the provider:
//! control characters are replaced before a string reaches the screen, so a
//! body cannot move the cursor or retitle the terminal. The list is bounded
//! ([`MAX_ENTRIES`], [`MAX_BYTES`]): following a busy store for a day drops
//! the oldest exchanges, and says how many.

use std::io::IsTerminal;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use anyhow::Context;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState, Wrap};
use serde_json::Value;

use super::{Message, Summary, new_messages};

/// At most this many exchanges are kept (the oldest go first).
pub const MAX_ENTRIES: usize = 10_000;
/// At most about this many bytes of decoded text are kept.
pub const MAX_BYTES: usize = 256 << 20;

/// What the feed (the store being followed) sends to the browser.
pub enum Update {
    /// One line of the store that is an exchange.
    Exchange(Box<Value>),
    /// The feed stopped (the file could not be read, ssh exited): why.
    Ended(String),
}

/// One exchange as the browser shows it.
pub struct Entry {
    /// Arrival order in this session (stable while older entries are dropped).
    seq: u64,
    pub summary: Summary,
    pub messages: Vec<Message>,
    /// Everything searchable, lowercased.
    haystack: String,
    bytes: usize,
}

impl Entry {
    fn new(seq: u64, ex: &Value) -> Entry {
        let summary = super::summarize(ex);
        let messages = new_messages(ex, &summary);
        let mut hay = String::new();
        let s = &summary;
        for part in [
            s.provider,
            s.model.as_deref().unwrap_or(""),
            &s.host,
            &s.method,
            &s.path,
            s.system.as_deref().unwrap_or(""),
            &s.text,
            s.stop.as_deref().unwrap_or(""),
        ] {
            hay.push_str(part);
            hay.push('\n');
        }
        hay.push_str(&s.status.to_string());
        for m in &messages {
            hay.push('\n');
            hay.push_str(&m.text);
        }
        for (name, args) in &s.tool_calls {
            hay.push('\n');
            hay.push_str(name);
            hay.push(' ');
            hay.push_str(args);
        }
        let haystack = hay.to_lowercase();
        let bytes = haystack.len() * 2 + 256;
        Entry {
            seq,
            summary,
            messages,
            haystack,
            bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Browse,
    /// Typing a search after `/` (the list filters as you type).
    Search,
}

/// The browser's whole state; changed only by [`App::push`], [`App::ended`]
/// and [`App::on_key`].
pub struct App {
    pub source: String,
    entries: Vec<Entry>,
    bytes: usize,
    next_seq: u64,
    /// Older exchanges dropped to stay within the bounds.
    pub dropped: u64,
    /// Indices into `entries` that pass the search and filters, oldest first.
    visible: Vec<usize>,
    /// The selected entry's `seq`.
    selected: Option<u64>,
    pub mode: Mode,
    pub query: String,
    query_before: String,
    pub model_filter: Option<String>,
    pub tool_filter: Option<String>,
    pub follow: bool,
    pub unfold_system: bool,
    scroll: u16,
    /// The largest useful `scroll`, as last drawn.
    scroll_max: u16,
    /// Rows of the detail pane, as last drawn (for page up/down).
    page: u16,
    table: TableState,
    /// Why the feed stopped, once it has.
    pub feed_end: Option<String>,
    pub quit: bool,
}

impl App {
    pub fn new(source: impl Into<String>, follow: bool) -> App {
        App {
            source: source.into(),
            entries: Vec::new(),
            bytes: 0,
            next_seq: 0,
            dropped: 0,
            visible: Vec::new(),
            selected: None,
            mode: Mode::Browse,
            query: String::new(),
            query_before: String::new(),
            model_filter: None,
            tool_filter: None,
            follow,
            unfold_system: false,
            scroll: 0,
            scroll_max: 0,
            page: 10,
            table: TableState::default(),
            feed_end: None,
            quit: false,
        }
    }

    /// Adds one exchange (from the initial read or the feed).
    pub fn push(&mut self, ex: &Value) {
        let entry = Entry::new(self.next_seq, ex);
        self.next_seq += 1;
        self.bytes += entry.bytes;
        let shows = self.passes(&entry);
        let seq = entry.seq;
        self.entries.push(entry);
        if self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            // Drop a tenth at a time, so a full list costs one move per many pushes.
            let mut n = 0;
            let mut bytes = self.bytes;
            while n < self.entries.len() - 1
                && (self.entries.len() - n > MAX_ENTRIES * 9 / 10 || bytes > MAX_BYTES * 9 / 10)
            {
                bytes -= self.entries[n].bytes;
                n += 1;
            }
            self.entries.drain(..n);
            self.bytes = bytes;
            self.dropped += n as u64;
            self.refilter();
        } else if shows {
            self.visible.push(self.entries.len() - 1);
        }
        if shows && (self.follow || self.selected.is_none()) {
            self.select_seq(seq);
        } else if self.selected.is_none() {
            self.select_pos(0);
        }
    }

    /// The feed stopped: the browser stays, with the reason in its footer.
    pub fn ended(&mut self, why: String) {
        self.feed_end = Some(why);
    }

    pub fn update(&mut self, u: Update) {
        match u {
            Update::Exchange(ex) => self.push(&ex),
            Update::Ended(why) => self.ended(why),
        }
    }

    /// The exchanges that pass the search and filters, oldest first.
    pub fn visible(&self) -> impl Iterator<Item = &Entry> {
        self.visible.iter().map(|&i| &self.entries[i])
    }

    pub fn selected(&self) -> Option<&Entry> {
        let seq = self.selected?;
        self.entries.iter().find(|e| e.seq == seq)
    }

    /// The selected entry's place among the visible ones.
    fn position(&self) -> Option<usize> {
        let seq = self.selected?;
        self.visible
            .iter()
            .position(|&i| self.entries[i].seq == seq)
    }

    fn passes(&self, e: &Entry) -> bool {
        let s = &e.summary;
        if let Some(m) = &self.model_filter
            && s.model.as_deref() != Some(m.as_str())
        {
            return false;
        }
        if let Some(t) = &self.tool_filter
            && !s.tool_calls.iter().any(|(name, _)| name == t)
        {
            return false;
        }
        let q = self.query.trim().to_lowercase();
        q.is_empty() || e.haystack.contains(&q)
    }

    fn refilter(&mut self) {
        let visible: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.passes(&self.entries[i]))
            .collect();
        self.visible = visible;
        if self.position().is_none() {
            if self.follow {
                self.select_pos(self.visible.len().saturating_sub(1));
            } else {
                self.select_pos(0);
            }
        }
    }

    fn select_seq(&mut self, seq: u64) {
        if self.selected != Some(seq) {
            self.scroll = 0;
        }
        self.selected = Some(seq);
    }

    fn select_pos(&mut self, pos: usize) {
        match self.visible.get(pos) {
            Some(&i) => self.select_seq(self.entries[i].seq),
            None => self.selected = None,
        }
    }

    fn move_by(&mut self, delta: isize) {
        let Some(pos) = self.position() else {
            self.select_pos(0);
            return;
        };
        let last = self.visible.len().saturating_sub(1);
        let to = pos.saturating_add_signed(delta).min(last);
        // Moving away from the newest stops following, as in `less +F`.
        if to < last {
            self.follow = false;
        }
        self.select_pos(to);
    }

    /// The distinct values of a field, in order of first appearance.
    fn distinct(&self, of: impl Fn(&Summary) -> Vec<String>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in &self.entries {
            for v in of(&e.summary) {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    }

    /// None → the first value → the next … → None.
    fn cycle(current: &Option<String>, values: &[String]) -> Option<String> {
        match current {
            None => values.first().cloned(),
            Some(c) => {
                let at = values.iter().position(|v| v == c);
                at.and_then(|i| values.get(i + 1)).cloned()
            }
        }
    }

    pub fn on_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            self.quit = true;
            return;
        }
        if self.mode == Mode::Search {
            match key.code {
                KeyCode::Enter => self.mode = Mode::Browse,
                KeyCode::Esc => {
                    self.mode = Mode::Browse;
                    self.query = std::mem::take(&mut self.query_before);
                    self.refilter();
                }
                KeyCode::Backspace => {
                    self.query.pop();
                    self.refilter();
                }
                KeyCode::Char(c) if !ctrl => {
                    if self.query.len() < 200 {
                        self.query.push(c);
                    }
                    self.refilter();
                }
                KeyCode::Down | KeyCode::Up => {
                    self.mode = Mode::Browse;
                    self.on_key(key);
                }
                _ => {}
            }
            return;
        }
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Home | KeyCode::Char('g') => self.move_by(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_by(isize::MAX / 2),
            KeyCode::PageDown | KeyCode::Char(' ') => {
                self.scroll = self
                    .scroll
                    .saturating_add(self.page.max(2) - 1)
                    .min(self.scroll_max)
            }
            KeyCode::PageUp | KeyCode::Char('b') => {
                self.scroll = self.scroll.saturating_sub(self.page.max(2) - 1)
            }
            KeyCode::Char('/') => {
                self.mode = Mode::Search;
                self.query_before = self.query.clone();
            }
            KeyCode::Char('m') => {
                let models = self.distinct(|s| s.model.iter().cloned().collect());
                self.model_filter = Self::cycle(&self.model_filter, &models);
                self.refilter();
            }
            KeyCode::Char('t') => {
                let tools = self.distinct(|s| s.tool_calls.iter().map(|c| c.0.clone()).collect());
                self.tool_filter = Self::cycle(&self.tool_filter, &tools);
                self.refilter();
            }
            KeyCode::Char('s') => self.unfold_system = !self.unfold_system,
            KeyCode::Char('f') => {
                self.follow = !self.follow;
                if self.follow {
                    self.select_pos(self.visible.len().saturating_sub(1));
                }
            }
            KeyCode::Esc => {
                self.query.clear();
                self.model_filter = None;
                self.tool_filter = None;
                self.refilter();
            }
            _ => {}
        }
    }
}

/// A string as it may reach the terminal: control characters (escape
/// sequences, carriage returns) shown as `�`, tabs as spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// One line, at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let one = clean(&s.split_whitespace().collect::<Vec<_>>().join(" "));
    if one.chars().count() <= max {
        one
    } else {
        let mut cut: String = one.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

fn secs(ms: f64) -> String {
    format!("{:.2}s", ms / 1000.0)
}

fn provider_color(p: &str) -> Color {
    match p {
        "anthropic" => Color::Rgb(217, 119, 87),
        "openai" => Color::Rgb(16, 163, 127),
        "bedrock" => Color::Rgb(255, 153, 0),
        _ => Color::Gray,
    }
}

fn status_style(status: u64) -> Style {
    match status {
        200..=299 => Style::new().fg(Color::Green),
        0 => Style::new().fg(Color::DarkGray),
        400.. => Style::new().fg(Color::Red).bold(),
        _ => Style::new().fg(Color::Yellow),
    }
}

fn tokens(s: &Summary) -> String {
    match (s.usage.input, s.usage.output) {
        (None, None) => String::new(),
        (i, o) => format!(
            "{}→{}",
            i.map_or("?".into(), |v| v.to_string()),
            o.map_or("?".into(), |v| v.to_string())
        ),
    }
}

/// JSON arguments indented when they parse, as recorded when not.
fn pretty(args: &str) -> String {
    serde_json::from_str::<Value>(args)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| args.to_string())
}

const LABEL: Style = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);

/// The detail pane's text for one exchange.
fn detail(e: &Entry, unfold_system: bool, width: usize) -> Text<'static> {
    let s = &e.summary;
    let mut lines: Vec<Line> = Vec::new();
    let mut head = vec![
        Span::styled(
            format!("{} {}{}", s.method, s.host, s.path),
            Style::new().bold(),
        ),
        Span::raw("  "),
        Span::styled(s.status.to_string(), status_style(s.status)),
    ];
    if let Some(d) = s.duration_ms {
        head.push(Span::raw(format!("  {}", secs(d))));
    }
    if let (Some(f), true) = (s.first_byte_ms, s.stream) {
        head.push(Span::styled(format!(" (first token {})", secs(f)), DIM));
    }
    if let Some(stop) = &s.stop {
        head.push(Span::raw("  stop "));
        head.push(Span::styled(clean(stop), Style::new().bold()));
    }
    lines.push(Line::from(head).map_clean());
    let u = &s.usage;
    if u.input.is_some() || u.output.is_some() {
        let n = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        let mut t = format!("tokens in {} · out {}", n(u.input), n(u.output));
        if u.cache_read.is_some() || u.cache_write.is_some() {
            t.push_str(&format!(
                " · cache read {} · write {}",
                u.cache_read.unwrap_or(0),
                u.cache_write.unwrap_or(0)
            ));
        }
        lines.push(Line::from(Span::styled(t, DIM)));
    }
    let section = |lines: &mut Vec<Line<'static>>, title: String, style: Style| {
        lines.push(Line::raw(""));
        lines.push(Line::from(Span::styled(title, style)));
    };
    let body = |lines: &mut Vec<Line<'static>>, text: &str| {
        if text.trim().is_empty() {
            lines.push(Line::from(Span::styled("  (empty)", DIM)));
        }
        for l in text.trim_end().lines() {
            lines.push(Line::raw(format!("  {}", clean(l))));
        }
    };
    if let Some(sys) = &s.system {
        if unfold_system {
            section(&mut lines, "system  (s folds)".into(), LABEL);
            body(&mut lines, sys);
        } else {
            let n = sys.chars().count();
            let room = width.saturating_sub(36).max(20);
            lines.push(Line::raw(""));
            lines.push(Line::from(vec![
                Span::styled("system  ", LABEL),
                Span::raw(one_line(sys, room)),
                Span::styled(format!("  {n} chars · s unfolds"), DIM),
            ]));
        }
    }
    for m in &e.messages {
        match &m.tool_result {
            Some(id) => section(
                &mut lines,
                format!("tool result  {}", clean(id)),
                Style::new().fg(Color::Magenta).bold(),
            ),
            None => section(&mut lines, clean(&m.role), LABEL),
        }
        body(&mut lines, &m.text);
    }
    if !s.text.is_empty() {
        section(
            &mut lines,
            "assistant".into(),
            Style::new().fg(Color::Green).bold(),
        );
        body(&mut lines, &s.text);
    }
    for (name, args) in &s.tool_calls {
        section(
            &mut lines,
            format!("tool call  {}", clean(name)),
            Style::new().fg(Color::Yellow).bold(),
        );
        body(&mut lines, &pretty(args));
    }
    for p in &s.partial {
        lines.push(Line::raw(""));
        lines.push(Line::from(Span::styled(
            format!("(partial: {p})"),
            Style::new().fg(Color::Yellow),
        )));
    }
    Text::from(lines)
}

trait MapClean {
    fn map_clean(self) -> Self;
}

impl MapClean for Line<'static> {
    /// The line with every span's control characters replaced.
    fn map_clean(mut self) -> Self {
        for s in &mut self.spans {
            s.content = clean(&s.content).into();
        }
        self
    }
}

/// How many rows `text` takes wrapped to `width` (near enough for scrolling).
fn wrapped_rows(text: &Text, width: u16) -> u16 {
    let w = width.max(1) as usize;
    let n: usize = text
        .lines
        .iter()
        .map(|l| l.width().div_ceil(w).max(1))
        .sum();
    n.min(u16::MAX as usize) as u16
}

fn key_help(app: &App) -> Line<'static> {
    let k = |key: &'static str, what: &'static str| {
        [
            Span::styled(key, Style::new().fg(Color::Black).bg(Color::Gray)),
            Span::raw(format!(" {what}  ")),
        ]
    };
    if app.mode == Mode::Search {
        let mut v = vec![
            Span::styled("/", LABEL),
            Span::raw(clean(&app.query)),
            Span::styled("█", Style::new().fg(Color::Gray)),
            Span::raw("   "),
        ];
        v.extend(k("Enter", "keep"));
        v.extend(k("Esc", "cancel"));
        return Line::from(v);
    }
    let mut v = Vec::new();
    for (key, what) in [
        ("↑↓", "select"),
        ("PgUp/PgDn", "scroll"),
        ("/", "search"),
        ("m", "model"),
        ("t", "tool"),
        ("s", "system"),
        (
            "f",
            if app.follow {
                "stop following"
            } else {
                "follow"
            },
        ),
        ("Esc", "clear"),
        ("q", "quit"),
    ] {
        v.extend(k(key, what));
    }
    Line::from(v)
}

/// Renders the whole browser into `frame`.
pub fn draw(frame: &mut Frame, app: &mut App) {
    // The list takes what its rows need, up to 40% of the screen.
    let area = frame.area();
    let list_rows = (app.visible.len() as u16).saturating_add(3).max(6);
    let [top, list_area, detail_area, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(list_rows.min(area.height * 2 / 5)),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(area);

    // Title line: source, counts, active search and filters, follow state.
    let mut title = vec![
        Span::styled(
            " cell spy ",
            Style::new().fg(Color::Black).bg(Color::Cyan).bold(),
        ),
        Span::raw(format!(" {} ", clean(&app.source))),
        Span::styled(
            format!("· {} of {} exchanges", app.visible.len(), app.entries.len()),
            DIM,
        ),
    ];
    if app.dropped > 0 {
        title.push(Span::styled(
            format!(" ({} older dropped)", app.dropped),
            DIM,
        ));
    }
    if !app.query.is_empty() && app.mode == Mode::Browse {
        title.push(Span::raw("  "));
        title.push(Span::styled(format!("/{}", clean(&app.query)), LABEL));
    }
    if let Some(m) = &app.model_filter {
        title.push(Span::raw("  model "));
        title.push(Span::styled(clean(m), LABEL));
    }
    if let Some(t) = &app.tool_filter {
        title.push(Span::raw("  tool "));
        title.push(Span::styled(clean(t), LABEL));
    }
    if app.follow {
        title.push(Span::styled(
            "  ● following",
            Style::new().fg(Color::Green).bold(),
        ));
    }
    frame.render_widget(Line::from(title), top);

    // The list.
    let header = Row::new([
        "#", "time", "provider", "model", "status", "latency", "tokens", "tools",
    ])
    .style(
        Style::new()
            .bold()
            .fg(Color::Gray)
            .add_modifier(Modifier::UNDERLINED),
    );
    let rows: Vec<Row> = app
        .visible()
        .map(|e| {
            let s = &e.summary;
            let tools: Vec<&str> = s.tool_calls.iter().map(|c| c.0.as_str()).collect();
            let mut row = Row::new([
                Cell::from(s.id.to_string()),
                Cell::from(clean(s.at.get(11..19).unwrap_or(&s.at))),
                Cell::from(s.provider).style(Style::new().fg(provider_color(s.provider))),
                Cell::from(one_line(s.model.as_deref().unwrap_or("—"), 40)),
                Cell::from(s.status.to_string()).style(status_style(s.status)),
                Cell::from(s.duration_ms.map(secs).unwrap_or_default()),
                Cell::from(tokens(s)),
                Cell::from(one_line(&tools.join(" "), 60)),
            ]);
            if !s.partial.is_empty() {
                row = row.style(Style::new().fg(Color::Yellow));
            }
            row
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Fill(2),
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(12),
            Constraint::Fill(1),
        ],
    )
    .header(header)
    .row_highlight_style(Style::new().bg(Color::Rgb(40, 60, 90)).bold())
    .highlight_symbol("▶ ")
    .block(
        Block::new()
            .borders(Borders::TOP | Borders::BOTTOM)
            .border_style(DIM),
    );
    app.table.select(app.position());
    frame.render_stateful_widget(table, list_area, &mut app.table);
    if empty {
        let why = if app.entries.is_empty() {
            "no exchanges yet: new ones appear here as the store grows \
             (recorded when the firewall keeps a spy store, cell.firewall.spy.enable)"
        } else {
            "no exchange matches (Esc clears the search and filters)"
        };
        let inner = Rect {
            y: list_area.y + 2,
            height: list_area.height.saturating_sub(3),
            ..list_area
        };
        frame.render_widget(
            Paragraph::new(Span::styled(why, DIM)).wrap(Wrap { trim: true }),
            inner,
        );
    }

    // The detail pane.
    let inner_width = detail_area.width.saturating_sub(2);
    let (title, text) = match app.selected() {
        Some(e) => {
            let s = &e.summary;
            let title = Line::from(vec![
                Span::raw(format!(" #{} ", s.id)),
                Span::styled(s.provider, Style::new().fg(provider_color(s.provider))),
                Span::raw(format!(
                    " {} ",
                    one_line(s.model.as_deref().unwrap_or(""), 60)
                )),
            ]);
            (title, detail(e, app.unfold_system, inner_width as usize))
        }
        None => (Line::raw(" detail "), Text::raw("")),
    };
    let height = detail_area.height.saturating_sub(2);
    app.page = height;
    app.scroll_max = wrapped_rows(&text, inner_width).saturating_sub(height);
    app.scroll = app.scroll.min(app.scroll_max);
    let mut block = Block::bordered().title(title).border_style(DIM);
    if app.scroll_max > 0 {
        block = block.title_bottom(
            Line::from(format!(" {}/{} ", app.scroll, app.scroll_max)).right_aligned(),
        );
    }
    frame.render_widget(
        Paragraph::new(text)
            .block(block)
            .wrap(Wrap { trim: false })
            .scroll((app.scroll, 0)),
        detail_area,
    );

    // Footer: the keys, or why the feed stopped.
    let footer = match &app.feed_end {
        Some(why) if app.mode == Mode::Browse => Line::from(vec![
            Span::styled(
                format!(" no longer following: {} ", one_line(why, 80)),
                Style::new().fg(Color::Yellow),
            ),
            Span::styled(" q", Style::new().fg(Color::Black).bg(Color::Gray)),
            Span::raw(" quit"),
        ]),
        _ => key_help(app),
    };
    frame.render_widget(footer, foot);
}

/// Puts the terminal back (raw mode off, main screen) when dropped: on `q`,
/// on an error, and while a panic unwinds (ratatui's panic hook restores it
/// first, so the message is readable).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the browser on this terminal until `q` (or Ctrl-C), `stop()` says so
/// (a signal arrived), or an error. New exchanges come from `updates`.
pub fn run(
    mut app: App,
    updates: Option<Receiver<Update>>,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!("--tui needs a terminal (without one: cell spy, --json or --html FILE)");
    }
    let _restore = Restore;
    let mut terminal = ratatui::try_init().context("starting the terminal UI")?;
    let mut updates = updates;
    loop {
        terminal
            .draw(|f| draw(f, &mut app))
            .context("drawing the terminal UI")?;
        if app.quit || stop() {
            return Ok(());
        }
        if event::poll(Duration::from_millis(150)).context("reading the terminal")? {
            // Every key that is waiting, then one redraw.
            loop {
                if let Event::Key(k) = event::read().context("reading the terminal")? {
                    app.on_key(k);
                }
                if app.quit || !event::poll(Duration::ZERO).context("reading the terminal")? {
                    break;
                }
            }
        }
        if let Some(rx) = &updates {
            // A bounded batch per frame, so keys stay responsive under a flood.
            for _ in 0..2000 {
                match rx.try_recv() {
                    Ok(u) => app.update(u),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if app.feed_end.is_none() {
                            app.ended("the feed stopped".into());
                        }
                        updates = None;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn fixture(name: &str, id: u64, at: &str) -> Value {
        let mut v = crate::spy::fixture(name);
        v["id"] = id.into();
        v["at"] = at.into();
        v
    }

    /// The six fixtures as one run: Anthropic, then OpenAI Chat, then Responses.
    fn app() -> App {
        let mut app = App::new("run.jsonl", false);
        for (i, f) in [
            "anthropic-sse.json",
            "anthropic-json.json",
            "openai-sse.json",
            "openai-json.json",
            "responses-sse.json",
            "responses-json.json",
        ]
        .iter()
        .enumerate()
        {
            app.push(&fixture(
                f,
                i as u64 + 1,
                &format!("2026-12-02T15:01:0{i}.000Z"),
            ));
        }
        app
    }

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn typed(app: &mut App, s: &str) {
        for c in s.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    fn screen(app: &mut App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn selected_id(app: &App) -> Option<u64> {
        app.selected().map(|e| e.summary.id)
    }

    /// Up and down move the selection within the list and stop at its ends;
    /// the first exchange is selected at start.
    #[test]
    fn keys_move_the_selection() {
        let mut app = app();
        assert_eq!(selected_id(&app), Some(1));
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Char('j')));
        assert_eq!(selected_id(&app), Some(3));
        app.on_key(key(KeyCode::Up));
        assert_eq!(selected_id(&app), Some(2));
        app.on_key(key(KeyCode::End));
        assert_eq!(selected_id(&app), Some(6));
        app.on_key(key(KeyCode::Down));
        assert_eq!(selected_id(&app), Some(6));
        app.on_key(key(KeyCode::Home));
        assert_eq!(selected_id(&app), Some(1));
        app.on_key(key(KeyCode::Char('q')));
        assert!(app.quit);
    }

    /// `/` filters as you type (case-insensitively, over the model, the texts
    /// and the tool calls); Esc while typing puts the old search back, Esc
    /// while browsing clears it.
    #[test]
    fn search_filters_and_esc_restores() {
        let mut app = app();
        app.on_key(key(KeyCode::Char('/')));
        assert_eq!(app.mode, Mode::Search);
        typed(&mut app, "GPT-4.1");
        let ids: Vec<u64> = app.visible().map(|e| e.summary.id).collect();
        assert_eq!(ids, [3, 4, 5, 6], "the OpenAI exchanges");
        assert_eq!(
            selected_id(&app),
            Some(3),
            "selection moved into the matches"
        );
        typed(&mut app, "q");
        assert!(!app.quit, "q is typed into the search, it does not quit");
        assert_eq!(app.visible().count(), 0);
        app.on_key(key(KeyCode::Backspace));
        app.on_key(key(KeyCode::Enter));
        assert_eq!((app.mode, app.query.as_str()), (Mode::Browse, "GPT-4.1"));
        app.on_key(key(KeyCode::Char('/')));
        typed(&mut app, "zzz");
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.query, "GPT-4.1", "Esc while typing restores the search");
        assert_eq!(app.visible().count(), 4);
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.visible().count(), 6);
        // The search reaches the tool call's arguments too.
        app.on_key(key(KeyCode::Char('/')));
        typed(&mut app, "paris\"}");
        assert_eq!(app.visible().count(), 6);
    }

    /// `m` cycles through the models seen, `t` through the tools called, and
    /// back to none; both filters combine with the search.
    #[test]
    fn filters_cycle_by_model_and_tool() {
        let mut app = app();
        app.on_key(key(KeyCode::Char('m')));
        assert_eq!(app.model_filter.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(app.visible().count(), 2);
        app.on_key(key(KeyCode::Char('m')));
        assert_eq!(app.model_filter.as_deref(), Some("gpt-4.1"));
        assert_eq!(app.visible().count(), 2, "Chat Completions");
        app.on_key(key(KeyCode::Char('m')));
        assert_eq!(app.model_filter.as_deref(), Some("gpt-4.1-2025-04-14"));
        assert_eq!(app.visible().count(), 2, "Responses");
        app.on_key(key(KeyCode::Char('m')));
        assert_eq!(app.model_filter, None);
        assert_eq!(app.visible().count(), 6);
        app.on_key(key(KeyCode::Char('t')));
        assert_eq!(app.tool_filter.as_deref(), Some("get_weather"));
        assert_eq!(app.visible().count(), 6);
        let mut plain = fixture("anthropic-json.json", 7, "2026-12-02T15:02:00.000Z");
        plain["response"]["body"]["text"] = serde_json::json!({"model":"claude-haiku-4-5",
            "content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn"})
        .to_string()
        .into();
        app.push(&plain);
        assert_eq!(app.entries.len(), 7);
        assert_eq!(app.visible().count(), 6, "no tool call: filtered out");
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.visible().count(), 7);
    }

    /// New exchanges are appended; with follow on the newest is selected,
    /// without it the selection stays; moving up stops following.
    #[test]
    fn follow_selects_the_newest() {
        let mut app = app();
        app.push(&fixture("openai-json.json", 7, "2026-12-02T15:02:00.000Z"));
        assert_eq!(selected_id(&app), Some(1), "not following: stays");
        app.on_key(key(KeyCode::Char('f')));
        assert!(app.follow);
        assert_eq!(selected_id(&app), Some(7), "f jumps to the newest");
        app.push(&fixture("openai-json.json", 8, "2026-12-02T15:03:00.000Z"));
        assert_eq!(selected_id(&app), Some(8));
        app.on_key(key(KeyCode::Up));
        assert!(!app.follow, "moving up stops following");
        assert_eq!(selected_id(&app), Some(7));
        app.push(&fixture("openai-json.json", 9, "2026-12-02T15:04:00.000Z"));
        assert_eq!(selected_id(&app), Some(7), "not following: stays");
        app.update(Update::Ended("ssh exited with status 255".into()));
        assert!(screen(&mut app, 120, 30).contains("no longer following: ssh exited"));
    }

    /// The list is bounded: past MAX_ENTRIES the oldest go, counted.
    #[test]
    fn the_list_is_bounded() {
        let mut app = App::new("x", true);
        let ex = fixture("openai-json.json", 1, "2026-12-02T15:02:00.000Z");
        for _ in 0..MAX_ENTRIES + 5 {
            app.push(&ex);
        }
        assert!(app.entries.len() <= MAX_ENTRIES);
        assert_eq!(app.dropped as usize + app.entries.len(), MAX_ENTRIES + 5);
        assert_eq!(app.visible().count(), app.entries.len());
        assert_eq!(
            app.position(),
            Some(app.entries.len() - 1),
            "following: the newest"
        );
    }

    /// The rendered screen: the list's columns, the detail pane's sections for
    /// the selected exchange (which changes with the selection), the keys.
    #[test]
    fn the_screen_shows_list_detail_and_keys() {
        let mut app = app();
        let s = screen(&mut app, 120, 40);
        for want in [
            "cell spy",
            "run.jsonl",
            "6 of 6 exchanges",
            "provider",
            "latency",
            "claude-sonnet-4-5",
            "gpt-4.1",
            "412→38",
            "1.76s",
            "get_weather",
            "POST api.anthropic.com/v1/messages",
            "system  You are a helpful assistant.",
            "user",
            "What is the weather in Paris?",
            "assistant",
            "Let me check the weather.",
            "tool call  get_weather",
            "\"city\": \"Paris\"",
            "/ search",
            "q quit",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        app.on_key(key(KeyCode::End));
        let s = screen(&mut app, 120, 40);
        assert!(s.contains("POST api.openai.com/v1/responses"), "{s}");
        app.on_key(key(KeyCode::Char('/')));
        typed(&mut app, "nothing-like-this");
        let s = screen(&mut app, 120, 40);
        assert!(s.contains("no exchange matches"), "{s}");
        assert!(s.contains("/nothing-like-this"), "{s}");
        // Tiny terminals do not panic.
        screen(&mut app, 10, 3);
        screen(&mut app, 1, 1);
    }

    /// Tool results sent back are shown one by one with the call they answer.
    #[test]
    fn tool_results_are_shown() {
        let mut ex = fixture("anthropic-json.json", 1, "2026-12-02T15:01:00.000Z");
        let mut req: Value =
            serde_json::from_str(ex["request"]["body"]["text"].as_str().unwrap()).unwrap();
        req["messages"] = serde_json::json!([
            {"role":"user","content":"What is the weather in Paris?"},
            {"role":"assistant","content":[{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{"city":"Paris"}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01","content":"18°C, sunny"}]}
        ]);
        ex["request"]["body"]["text"] = req.to_string().into();
        let mut app = App::new("x", false);
        app.push(&ex);
        let s = screen(&mut app, 100, 40);
        assert!(s.contains("tool result  toolu_01"), "{s}");
        assert!(s.contains("18°C, sunny"), "{s}");
        assert!(
            !s.contains("What is the weather"),
            "only what is new since the model's answer: {s}"
        );
    }

    /// The new turn of each API: what follows the model's last answer, tool
    /// results with the id of the call they answer; a request that does not
    /// parse falls back to the summary's turn.
    #[test]
    fn new_messages_for_each_api() {
        let with_request = |name: &str, req: Value| {
            let mut ex = fixture(name, 1, "2026-12-02T15:01:00.000Z");
            ex["request"]["body"]["text"] = req.to_string().into();
            let s = super::super::summarize(&ex);
            new_messages(&ex, &s)
        };
        let tool = |text: &str, id: &str| Message {
            role: "tool".into(),
            text: text.into(),
            tool_result: Some(id.into()),
        };
        let user = |text: &str| Message {
            role: "user".into(),
            text: text.into(),
            tool_result: None,
        };
        let got = with_request(
            "openai-json.json",
            serde_json::json!({"model":"gpt-4.1","messages":[
                {"role":"system","content":"sys"},
                {"role":"user","content":"old question"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"18°C"},
                {"role":"tool","tool_call_id":"c2","content":[{"type":"text","text":"21°C"}]},
            ]}),
        );
        assert_eq!(got, [tool("18°C", "c1"), tool("21°C", "c2")]);
        let got = with_request(
            "responses-json.json",
            serde_json::json!({"model":"gpt-4.1","input":[
                {"role":"developer","content":"sys"},
                {"role":"user","content":[{"type":"input_text","text":"old"}]},
                {"type":"function_call","call_id":"fc1","name":"get_weather","arguments":"{}"},
                {"type":"function_call_output","call_id":"fc1","output":"18°C"},
                {"role":"user","content":[{"type":"input_text","text":"and tomorrow?"}]},
            ]}),
        );
        assert_eq!(got, [tool("18°C", "fc1"), user("and tomorrow?")]);
        let got = with_request(
            "anthropic-json.json",
            serde_json::json!({"model":"m","messages":[
                {"role":"user","content":"first"},
                {"role":"assistant","content":"answer"},
                {"role":"user","content":[{"type":"text","text":"second"},{"type":"image","source":{}}]},
            ]}),
        );
        assert_eq!(got, [user("second"), user("[image]")]);
        let mut ex = fixture("anthropic-json.json", 1, "2026-12-02T15:01:00.000Z");
        ex["request"]["body"]["text"] = "{not json".into();
        let s = super::super::summarize(&ex);
        assert_eq!(new_messages(&ex, &s), []);
    }

    /// Text from a body cannot reach the terminal as control sequences.
    #[test]
    fn control_characters_are_replaced() {
        let mut ex = fixture("anthropic-json.json", 1, "2026-12-02T15:01:00.000Z");
        ex["host"] = "evil\u{1b}]0;pwned\u{7}.example".into();
        let mut app = App::new("x\u{1b}[2J", false);
        app.push(&ex);
        let s = screen(&mut app, 120, 30);
        assert!(!s.contains('\u{1b}') && !s.contains('\u{7}'), "{s:?}");
        assert!(s.contains("evil\u{fffd}]0;pwned\u{fffd}.example"), "{s}");
        assert_eq!(clean("a\tb\rc"), "a b\u{fffd}c");
    }

    /// PgDn scrolls the detail pane, within what there is to see; a new
    /// selection starts at the top; `s` unfolds the system prompt.
    #[test]
    fn the_detail_pane_scrolls_and_unfolds() {
        let mut ex = fixture("anthropic-json.json", 1, "2026-12-02T15:01:00.000Z");
        let long = (0..200).map(|i| format!("rule {i}.")).collect::<Vec<_>>();
        let mut req: Value =
            serde_json::from_str(ex["request"]["body"]["text"].as_str().unwrap()).unwrap();
        req["system"] = long.join("\n").into();
        ex["request"]["body"]["text"] = req.to_string().into();
        let mut app = App::new("x", false);
        app.push(&ex);
        app.push(&fixture("openai-json.json", 2, "2026-12-02T15:01:01.000Z"));
        let s = screen(&mut app, 100, 30);
        assert!(s.contains("s unfolds") && !s.contains("rule 199."), "{s}");
        app.on_key(key(KeyCode::Char('s')));
        let s = screen(&mut app, 100, 30);
        assert!(s.contains("rule 0.") && !s.contains("rule 199."), "{s}");
        for _ in 0..100 {
            app.on_key(key(KeyCode::PageDown));
        }
        let s = screen(&mut app, 100, 30);
        assert!(s.contains("rule 199.") && !s.contains("rule 0."), "{s}");
        assert!(app.scroll > 0 && app.scroll == app.scroll_max);
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.scroll, 0);
    }
}
