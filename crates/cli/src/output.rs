//! The output layer: the only place in Gantry that prints. Answers go to stdout (plain
//! lines, aligned tables, pretty JSON, raw bytes); notes, progress and errors go to
//! stderr. A closed pipe (`gantry ls | head -1`) is not an error: output just stops.
//!
//! Text that reaches a terminal through [`line`], [`note`], [`Table`] and [`error`]
//! has its control characters shown escaped (`\x1b`, `\r`, `\u{9b}`): titles,
//! labels, repos, factory names and error messages come from whoever submitted a job
//! or runs a factory, and an escape sequence printed raw could clear the screen,
//! retitle the window or overwrite what was printed before it. JSON stays valid JSON
//! ([`json`] escapes what serde leaves raw as `\u` escapes); [`raw`] is for bytes
//! that are the answer themselves (logs, diffs), printed as they are.

use crate::error::CliError;
use gantry_core::time::Millis;
use serde::Serialize;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};

/// Whether `c` is shown escaped; line breaks and tabs only when `keep_layout` is off
/// (a table cell or a one-line field, where they would break the layout or forge a
/// line).
fn is_unsafe(c: char, keep_layout: bool) -> bool {
    match c {
        '\n' | '\t' => !keep_layout,
        // C0 controls, DEL and the C1 controls (U+009B is CSI on some terminals).
        c if c.is_control() => true,
        // Bidirectional overrides and isolates, which reorder what is shown.
        '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

fn escape(text: &str, keep_layout: bool) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c, keep_layout)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !is_unsafe(c, keep_layout) {
            out.push(c);
            continue;
        }
        // Writing to a String cannot fail.
        let _ = match c {
            '\n' => write!(out, "\\n"),
            '\r' => write!(out, "\\r"),
            '\t' => write!(out, "\\t"),
            c if c.is_ascii() => write!(out, "\\x{:02x}", u32::from(c)),
            c => write!(out, "\\u{{{:x}}}", u32::from(c)),
        };
    }
    Cow::Owned(out)
}

/// `text` safe to print on a terminal: control characters shown escaped, line breaks
/// and tabs kept.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    escape(text, true)
}

/// A one-line value (a title, a name, a table cell) safe to print on a terminal:
/// control characters, line breaks and tabs shown escaped.
pub fn field(text: &str) -> Cow<'_, str> {
    escape(text, false)
}

/// JSON text with the characters serde writes raw but a terminal acts on (DEL, the
/// C1 controls, bidirectional controls) written as `\u` escapes. Such characters only
/// occur inside JSON strings, where the escape means the same character, so the JSON
/// is unchanged as data.
pub fn json_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| is_unsafe(c, true)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_unsafe(c, true) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes `text` and a newline to stdout, control characters escaped.
pub fn line(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the reader went away) is not worth an error.
    let _ = writeln!(out, "{}", terminal_safe(text.as_ref()));
}

/// Writes JSON text and a newline to stdout (see [`json_safe`]).
fn json_text(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", json_safe(text));
}

/// Writes raw bytes to stdout, as they are.
pub fn raw(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes);
    let _ = out.flush();
}

/// Writes `value` to stdout as pretty JSON.
pub fn json<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => json_text(&s),
        // Serializing our own API types cannot fail (no maps with non-string keys);
        // if it ever does, say so rather than print nothing.
        Err(e) => note(format!("error: cannot print JSON: {e}")),
    }
}

/// Writes `value` to stdout as one line of compact JSON (for streams).
pub fn json_line<T: Serialize + ?Sized>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => json_text(&s),
        Err(e) => note(format!("error: cannot print JSON: {e}")),
    }
}

/// Writes a note (progress, remarks next to the answer) to stderr, control characters
/// escaped.
pub fn note(text: impl AsRef<str>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", terminal_safe(text.as_ref()));
}

/// Writes an error to stderr, jj style: the message, its causes, then hints.
pub fn error(e: &CliError) {
    if let Some(r) = &e.rendered {
        // Text clap rendered from our own arguments and help, colored by clap.
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{r}");
        return;
    }
    // Written as it is: render_error escaped the parts and added the colors itself.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", render_error(e, color_stderr()));
}

fn color_stderr() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// The text of an error as [`error`] prints it: message, causes and hints (which may
/// quote a server's answer, and so a job's title) with control characters escaped,
/// then colored when `color`.
pub fn render_error(e: &CliError, color: bool) -> String {
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let mut out = format!("{} {}", paint("1;31", "Error:"), terminal_safe(&e.message));
    match e.causes.len() {
        0 => {}
        1 => out.push_str(&format!(
            "\n{} {}",
            paint("1", "Caused by:"),
            terminal_safe(&e.causes[0])
        )),
        _ => {
            out.push_str(&format!("\n{}", paint("1", "Caused by:")));
            for (i, c) in e.causes.iter().enumerate() {
                out.push_str(&format!("\n{}: {}", i + 1, terminal_safe(c)));
            }
        }
    }
    for h in &e.hints {
        out.push_str(&format!(
            "\n{} {}",
            paint("1;36", "Hint:"),
            terminal_safe(h)
        ));
    }
    out
}

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// An aligned table with a header row.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (a header ending in `>` is right-aligned; the
    /// `>` is not shown).
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers
                .iter()
                .map(|h| h.trim_end_matches('>').to_string())
                .collect(),
            align: headers
                .iter()
                .map(|h| {
                    if h.ends_with('>') {
                        Align::Right
                    } else {
                        Align::Left
                    }
                })
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra cells are dropped). Each cell is one
    /// line: control characters, line breaks and tabs are shown escaped (see
    /// [`field`]), so the widths are those of what is printed.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells
            .into_iter()
            .map(|c| match field(&c) {
                Cow::Borrowed(_) => c,
                Cow::Owned(escaped) => escaped,
            })
            .collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text: columns separated by two spaces, no trailing spaces.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(width(c));
            }
        }
        let last = self.headers.len().saturating_sub(1);
        let fmt_row = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i] - width(c);
                if i > 0 {
                    s.push_str("  ");
                }
                match self.align[i] {
                    Align::Right => {
                        s.push_str(&" ".repeat(pad));
                        s.push_str(c);
                    }
                    Align::Left => {
                        s.push_str(c);
                        if i != last {
                            s.push_str(&" ".repeat(pad));
                        }
                    }
                }
            }
            s.trim_end().to_string()
        };
        let mut out = fmt_row(&self.headers);
        for r in &self.rows {
            out.push('\n');
            out.push_str(&fmt_row(r));
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        line(self.render());
    }
}

/// A timestamp shortened for tables, relative to `now` (both UTC): `14:03:12` today,
/// `11-20 14:03` this year, `2024-11-20` before. `-` for none.
pub fn short_time(t: Option<Millis>, now: Millis) -> String {
    let Some(t) = t else { return "-".to_string() };
    let full = gantry_core::time::rfc3339(t); // 2026-11-22T05:09:00.123Z
    let now_s = gantry_core::time::rfc3339(now);
    let (date, time) = (&full[..10], &full[11..19]);
    if date == &now_s[..10] {
        time.to_string()
    } else if full[..4] == now_s[..4] {
        format!("{} {}", &full[5..10], &full[11..16])
    } else {
        date.to_string()
    }
}

/// A timestamp with milliseconds, `14:03:12.345` (UTC), for timelines.
pub fn clock_ms(t: Millis) -> String {
    let full = gantry_core::time::rfc3339(t);
    full[11..23].to_string()
}

/// A duration in milliseconds, shortened: `850ms`, `2.3s`, `4m05s`, `2h10m`.
pub fn short_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["ID>", "STATE", "TITLE"]);
        t.row(vec!["1".into(), "running".into(), "short".into()]);
        t.row(vec!["12".into(), "queued".into(), "a longer title".into()]);
        assert_eq!(
            t.render(),
            "ID  STATE    TITLE\n 1  running  short\n12  queued   a longer title"
        );
    }

    #[test]
    fn times_are_shortened_relative_to_now() {
        let now = gantry_core::time::parse_rfc3339("2026-11-22T15:00:00Z").expect("ts");
        let today = gantry_core::time::parse_rfc3339("2026-11-22T05:09:03.5Z").expect("ts");
        let earlier = gantry_core::time::parse_rfc3339("2026-03-01T08:30:00Z").expect("ts");
        let old = gantry_core::time::parse_rfc3339("2024-03-01T08:30:00Z").expect("ts");
        assert_eq!(short_time(Some(today), now), "05:09:03");
        assert_eq!(short_time(Some(earlier), now), "03-01 08:30");
        assert_eq!(short_time(Some(old), now), "2024-03-01");
        assert_eq!(short_time(None, now), "-");
        assert_eq!(clock_ms(today), "05:09:03.500");
    }

    #[test]
    fn durations_are_shortened() {
        assert_eq!(short_duration(850), "850ms");
        assert_eq!(short_duration(2345), "2.3s");
        assert_eq!(short_duration(245_000), "4m05s");
        assert_eq!(short_duration(7_800_000), "2h10m");
    }

    /// Issue 15: a title with a screen clear, an OSC window title, a bell and a carriage
    /// return was printed raw by `gantry ls` and `gantry show`.
    #[test]
    fn issue15_control_characters_are_shown_escaped() {
        let title = "a\x1b[2J\x1b]0;pwned\x07b\rc\u{9b}31m\u{202e}d\x7f";
        assert_eq!(
            field(title),
            "a\\x1b[2J\\x1b]0;pwned\\x07b\\rc\\u{9b}31m\\u{202e}d\\x7f"
        );
        assert_eq!(field("two\nlines\tand a tab"), "two\\nlines\\tand a tab");
        assert_eq!(terminal_safe("two\nlines\tkept"), "two\nlines\tkept");
        assert_eq!(terminal_safe("\x1b[2J"), "\\x1b[2J");
        assert!(matches!(field("plain, ünïcode ✓"), Cow::Borrowed(_)));

        let mut t = Table::new(&["ID>", "TITLE"]);
        t.row(vec!["1".into(), "x\x1b[2Jy\nz".into()]);
        let out = t.render();
        assert_eq!(out, "ID  TITLE\n 1  x\\x1b[2Jy\\nz");
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");

        // JSON stays JSON with the same data, and nothing a terminal acts on.
        let value = serde_json::json!({ "title": title });
        let text = serde_json::to_string(&value).expect("json");
        let safe = json_safe(&text);
        assert!(!safe.chars().any(|c| is_unsafe(c, true)), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back, value);
    }

    #[test]
    fn errors_escape_what_they_quote_but_keep_their_colors() {
        let e = CliError::new(Kind::Unreachable, "job \x1b]0;x\x07 refused")
            .cause("c\rd")
            .hint("h\x1b[2J");
        assert_eq!(
            render_error(&e, false),
            "Error: job \\x1b]0;x\\x07 refused\nCaused by: c\\rd\nHint: h\\x1b[2J"
        );
        assert!(render_error(&e, true).starts_with("\x1b[1;31mError:\x1b[0m job \\x1b]0;x"));
    }

    #[test]
    fn errors_render_jj_style() {
        let e = CliError::new(
            Kind::Unreachable,
            "cannot reach the Gantry server at http://x",
        )
        .cause("connection refused")
        .hint("start it with `gantry serve`, or pass --url");
        assert_eq!(
            render_error(&e, false),
            "Error: cannot reach the Gantry server at http://x\nCaused by: connection refused\nHint: start it with `gantry serve`, or pass --url"
        );
    }
}
