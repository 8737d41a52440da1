//! An untyped YAML tree with the source location of every node.
//!
//! The front matter is read into this tree first and validated field by field
//! afterwards, so every error can name the line it comes from and the value found,
//! instead of the generic "invalid type" message a derived struct would give.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// A YAML node with its location in the front-matter text.
pub(super) type Node = Spanned<Value>;

/// An untyped YAML value.
///
/// Mappings keep their entries in file order, duplicates included: the parser is
/// configured to pass repeated keys through so the validator can name both lines.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    /// `null`, `~` or nothing at all.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer. `i128` holds every YAML integer that `u64` or `i64` can.
    Int(i128),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, entries in file order.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short description of the value's type and the value itself, for errors:
    /// `integer 12`, `string "x"`, `a list [a, b]`.
    pub(super) fn describe(&self) -> String {
        match self {
            Value::Null => "null".to_string(),
            Value::Bool(b) => format!("boolean `{b}`"),
            Value::Int(i) => format!("integer `{i}`"),
            Value::Float(x) => format!("number `{x}`"),
            Value::Str(s) => format!("string {}", quote(s)),
            Value::Seq(_) => format!("a list `{}`", self.compact()),
            Value::Map(_) => format!("a map `{}`", self.compact()),
        }
    }

    /// A one-line rendering of the value, cut short when long.
    fn compact(&self) -> String {
        let mut out = String::new();
        self.render(&mut out);
        truncate(&out, 60)
    }

    fn render(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(&b.to_string()),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Float(x) => out.push_str(&x.to_string()),
            Value::Str(s) => out.push_str(&format!("{s:?}")),
            Value::Seq(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.value.render(out);
                }
                out.push(']');
            }
            Value::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.value.render(out);
                    out.push_str(": ");
                    v.value.render(out);
                }
                out.push('}');
            }
        }
    }
}

/// A string quoted for an error message, cut short when long.
pub(super) fn quote(s: &str) -> String {
    truncate(&format!("{s:?}"), 80)
}

/// `s` cut to at most `max` characters, with `...` marking the cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut cut: String = s.chars().take(max).collect();
        cut.push_str("...");
        cut
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        i128::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported in job files"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

/// A front-matter YAML error: the 1-based line within the YAML text, when known, and
/// the message without any location suffix.
pub(super) struct YamlError {
    pub(super) line: Option<usize>,
    pub(super) message: String,
}

/// Parses front-matter text into a located tree.
pub(super) fn parse(text: &str) -> Result<Node, YamlError> {
    use serde_saphyr::MessageFormatter;
    let options = serde_saphyr::options! {
        // Repeated keys reach the validator, which names both lines.
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::PassThrough,
        // YAML 1.1 booleans (`yes`, `on`, `n`) turn words into booleans by surprise.
        strict_booleans: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let line = e.location().map(|l| l.line() as usize).filter(|l| *l > 0);
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(e.without_snippet())
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        YamlError { line, message }
    })
}

/// The exact source text of a node, when the parser recorded its byte span.
///
/// Used for non-string scalars in places that take text (argv items, env values), so
/// `1.50` stays `1.50` instead of becoming the float's rendering `1.5`.
pub(super) fn source_text<'a>(text: &'a str, node: &Node) -> Option<&'a str> {
    let span = node.referenced.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let raw = text.get(start..start.checked_add(len)?)?;
    // A span that does not hold a plain scalar (quotes, tags, anchors, aliases) is not
    // trusted: the caller falls back to the parsed value.
    let plain = !raw.is_empty()
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    plain.then_some(raw)
}
