//! The steps of a `script` job: what a job file says and how it is checked. The
//! `script` engine in `gantry-engine` compiles them to a shell program.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// One step of a script job.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Writes `content` to `path` (relative to the worktree), replacing the file and
    /// creating missing parent directories.
    Write {
        /// Relative path inside the worktree.
        path: String,
        /// The file's new content.
        content: String,
    },
    /// Appends `content` to `path`, creating it (and its parents) when missing.
    Append {
        /// Relative path inside the worktree.
        path: String,
        /// The text to append.
        content: String,
    },
    /// Runs `command` with `sh -c`.
    Run {
        /// The shell command.
        command: String,
    },
    /// Sleeps.
    Sleep {
        /// How long, in seconds (finite, not negative).
        seconds: f64,
    },
    /// Says a message.
    Say {
        /// The message.
        text: String,
    },
    /// Reports spent tokens and cost.
    Usage {
        /// Input tokens, cached included.
        tokens_in: u64,
        /// Output tokens.
        tokens_out: u64,
        /// Cache-read input tokens.
        tokens_cached: u64,
        /// Cost in USD.
        cost_usd: Option<f64>,
    },
    /// Fails the run with a message (exit code 1).
    Fail {
        /// Why.
        message: String,
    },
    /// Ends the run with an exit code.
    Exit {
        /// The exit code, 0 to 255.
        code: i32,
    },
}

/// A step that does not parse, named by its index and field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("step {index}: field `{field}`: {message}")]
pub struct StepError {
    /// The step's 0-based index in the list.
    pub index: usize,
    /// The field at fault (`step` when the step as a whole is malformed).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// The action keys a step may have.
const ACTIONS: [&str; 8] = [
    "write", "append", "run", "sleep", "say", "usage", "fail", "exit",
];

/// Parses a job's `steps:` list (as JSON, whatever format the job file was in).
pub fn parse_steps(v: &Value) -> Result<Vec<Step>, StepError> {
    let Some(items) = v.as_array() else {
        return Err(StepError {
            index: 0,
            field: "steps".to_string(),
            message: format!("expected a list of steps, found {}", type_name(v)),
        });
    };
    items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_step(index, item))
        .collect()
}

/// Parses one step at `index`.
fn parse_step(index: usize, v: &Value) -> Result<Step, StepError> {
    let err = |field: &str, message: String| StepError {
        index,
        field: field.to_string(),
        message,
    };
    let Some(map) = v.as_object() else {
        return Err(err(
            "step",
            format!(
                "expected a map like `run: make test`, found {}",
                type_name(v)
            ),
        ));
    };
    let actions: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| ACTIONS.contains(k))
        .collect();
    let action = match actions.as_slice() {
        [one] => *one,
        [] => {
            let unknown = map.keys().next().map(String::as_str).unwrap_or("step");
            return Err(err(
                unknown,
                format!(
                    "a step needs one action key, one of: {}",
                    ACTIONS.join(", ")
                ),
            ));
        }
        [_, second, ..] => {
            return Err(err(
                second,
                format!(
                    "a step has exactly one action, found {}",
                    actions.join(" and ")
                ),
            ));
        }
    };
    let allowed: &[&str] = match action {
        "write" | "append" => &["content"],
        _ => &[],
    };
    if let Some(extra) = map
        .keys()
        .find(|k| k.as_str() != action && !allowed.contains(&k.as_str()))
    {
        let expected = if allowed.is_empty() {
            format!("`{action}` takes no other key")
        } else {
            format!("`{action}` takes only `{}` beside it", allowed.join("`, `"))
        };
        return Err(err(extra, format!("unknown key: {expected}")));
    }
    let value = &map[action];
    let string = |field: &str, v: &Value| -> Result<String, StepError> {
        let s = match v {
            Value::String(s) => s.clone(),
            // YAML reads `say: 42` or `run: true` as scalars; they mean their text.
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(err(
                    field,
                    format!("expected a string, found {}", type_name(other)),
                ));
            }
        };
        if s.contains('\0') {
            return Err(err(field, "contains a NUL byte".to_string()));
        }
        Ok(s)
    };
    let step = match action {
        "write" | "append" => {
            let path = string(action, value)?;
            check_path(&path).map_err(|m| err(action, m))?;
            let content = match map.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(c) => string("content", c)?,
            };
            if action == "write" {
                Step::Write { path, content }
            } else {
                Step::Append { path, content }
            }
        }
        "run" => {
            let command = string("run", value)?;
            if command.trim().is_empty() {
                return Err(err("run", "the command is empty".to_string()));
            }
            Step::Run { command }
        }
        "sleep" => Step::Sleep {
            seconds: parse_seconds(value).map_err(|m| err("sleep", m))?,
        },
        "say" => Step::Say {
            text: string("say", value)?,
        },
        "usage" => parse_usage(value).map_err(|(field, m)| err(&field, m))?,
        "fail" => Step::Fail {
            message: match value {
                Value::Null => "failed".to_string(),
                v => string("fail", v)?,
            },
        },
        // The only action left is `exit`.
        _ => {
            let code = value
                .as_i64()
                .filter(|c| (0..=255).contains(c))
                .ok_or_else(|| {
                    err(
                        "exit",
                        format!("expected an exit code from 0 to 255, found {value}"),
                    )
                })?;
            // The range check above is the invariant that makes this conversion exact.
            Step::Exit { code: code as i32 }
        }
    };
    Ok(step)
}

/// Checks a write/append path: relative, inside the worktree, naming a file.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".to_string());
    }
    if path.starts_with('/') {
        return Err(format!(
            "`{path}` is absolute: paths are relative to the worktree"
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!(
            "`{path}` has a `..` component: it could leave the worktree"
        ));
    }
    if path.ends_with('/') || path.split('/').all(|c| c.is_empty() || c == ".") {
        return Err(format!("`{path}` names a directory, not a file"));
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".to_string());
    }
    Ok(())
}

/// Parses a sleep: a number of seconds, or a string with an `ms`, `s` or `m` unit.
fn parse_seconds(v: &Value) -> Result<f64, String> {
    let seconds = match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("`{n}` is not a number"))?,
        Value::String(s) => {
            let t = s.trim();
            let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = t.strip_suffix('s') {
                (n, 1.0)
            } else if let Some(n) = t.strip_suffix('m') {
                (n, 60.0)
            } else {
                (t, 1.0)
            };
            let n: f64 = number.trim().parse().map_err(|_| {
                format!("`{s}` is not a duration (write e.g. 2, \"2s\", \"500ms\", \"1m\")")
            })?;
            n * scale
        }
        other => {
            return Err(format!(
                "expected seconds or a duration string, found {}",
                type_name(other)
            ));
        }
    };
    if !seconds.is_finite() {
        return Err(format!("{seconds} is not a finite duration"));
    }
    if seconds < 0.0 {
        return Err(format!("{seconds} is negative"));
    }
    Ok(seconds)
}

/// Parses a `usage` map.
fn parse_usage(v: &Value) -> Result<Step, (String, String)> {
    let Some(map) = v.as_object() else {
        return Err((
            "usage".to_string(),
            format!(
                "expected a map like {{tokens_in: 100, tokens_out: 20}}, found {}",
                type_name(v)
            ),
        ));
    };
    const FIELDS: [&str; 4] = ["tokens_in", "tokens_out", "tokens_cached", "cost_usd"];
    if let Some(extra) = map.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err((
            format!("usage.{extra}"),
            format!("unknown key: usage takes {}", FIELDS.join(", ")),
        ));
    }
    let count = |key: &str| -> Result<u64, (String, String)> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(n) => n.as_u64().ok_or_else(|| {
                (
                    format!("usage.{key}"),
                    format!("expected a whole number of tokens, found {n}"),
                )
            }),
        }
    };
    let cost_usd = match map.get("cost_usd") {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_f64()
                .filter(|c| c.is_finite() && *c >= 0.0)
                .ok_or_else(|| {
                    (
                        "usage.cost_usd".to_string(),
                        format!("expected a cost in USD, not negative, found {n}"),
                    )
                })?,
        ),
    };
    let step = Step::Usage {
        tokens_in: count("tokens_in")?,
        tokens_out: count("tokens_out")?,
        tokens_cached: count("tokens_cached")?,
        cost_usd,
    };
    if let Step::Usage {
        tokens_in,
        tokens_cached,
        ..
    } = step
        && tokens_cached > tokens_in
    {
        return Err((
            "usage.tokens_cached".to_string(),
            format!(
                "{tokens_cached} cached tokens exceed the {tokens_in} input tokens they are part of"
            ),
        ));
    }
    Ok(step)
}

/// The JSON type of `v`, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = Map::new();
        match self {
            Step::Write { path, content } => {
                map.insert("write".into(), json!(path));
                map.insert("content".into(), json!(content));
            }
            Step::Append { path, content } => {
                map.insert("append".into(), json!(path));
                map.insert("content".into(), json!(content));
            }
            Step::Run { command } => {
                map.insert("run".into(), json!(command));
            }
            Step::Sleep { seconds } => {
                map.insert("sleep".into(), json!(seconds));
            }
            Step::Say { text } => {
                map.insert("say".into(), json!(text));
            }
            Step::Usage {
                tokens_in,
                tokens_out,
                tokens_cached,
                cost_usd,
            } => {
                let mut usage = Map::new();
                usage.insert("tokens_in".into(), json!(tokens_in));
                usage.insert("tokens_out".into(), json!(tokens_out));
                usage.insert("tokens_cached".into(), json!(tokens_cached));
                if let Some(c) = cost_usd {
                    usage.insert("cost_usd".into(), json!(c));
                }
                map.insert("usage".into(), Value::Object(usage));
            }
            Step::Fail { message } => {
                map.insert("fail".into(), json!(message));
            }
            Step::Exit { code } => {
                map.insert("exit".into(), json!(code));
            }
        }
        Value::Object(map).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        parse_step(0, &value).map_err(|e| {
            serde::de::Error::custom(format!("step field `{}`: {}", e.field, e.message))
        })
    }
}
