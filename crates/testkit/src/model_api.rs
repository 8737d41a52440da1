//! A scripted model API on a TCP port, so that the real agent CLIs (Claude Code, Codex)
//! can run under test with no network: the test says what the "model" answers to each
//! turn of the agent's main loop (a tool call, then a final message), points the CLI at
//! [`ScriptedModel::base_url`], and afterwards reads what the CLI sent
//! ([`ScriptedModel::requests`]) and how many tokens were served
//! ([`ScriptedModel::served`]).
//!
//! Two wire formats: the Anthropic Messages API (`POST /v1/messages`, streamed as
//! server-sent events) for Claude Code, and the OpenAI Responses API (`POST
//! /v1/responses`, streamed) for Codex. A request that carries tools is a turn of the
//! agent's main loop and takes the next [`Turn`] of the script; one without tools is a
//! side request (Claude Code asks for a title, say) and gets a short text answer with
//! [`SIDE_USAGE`], so the script need not know about them. `GET` and `HEAD` of any path
//! answer 200 with an empty body (Claude Code checks that its base URL answers); a
//! token count (`/v1/messages/count_tokens`) answers a fixed count.
//!
//! The server is bounded: at most [`MAX_REQUESTS`] requests, bodies of at most
//! [`MAX_BODY`] bytes, headers of at most [`MAX_HEAD`] bytes, [`IO_TIMEOUT`] per read
//! or write, and one response per connection (`Connection: close`). A main-loop request
//! past the end of the script, or past the request bound, is answered `400
//! invalid_request_error` naming why: the CLIs do not retry a 400, so a test whose
//! script is wrong fails at once instead of retrying for minutes. It stops when
//! dropped.

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Most requests one server answers; later ones get a 400.
pub const MAX_REQUESTS: usize = 200;
/// Largest request body read (the CLIs send their whole system prompt and tools:
/// about 60 KB for Codex, more for Claude Code).
pub const MAX_BODY: usize = 16 << 20;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 64 << 10;
/// Bound on every read and write of one connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The usage every side request is answered with.
pub const SIDE_USAGE: Usage = Usage {
    input: 11,
    output: 2,
    cache_read: 0,
    cache_write: 0,
};

/// Which API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Anthropic's Messages API (Claude Code).
    Anthropic,
    /// OpenAI's Responses API (Codex).
    Responses,
}

/// Tokens one answer reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens not read from the cache and not written to it.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache (Anthropic only).
    pub cache_write: u64,
}

impl Usage {
    fn add(&mut self, other: &Usage) {
        self.input += other.input;
        self.output += other.output;
        self.cache_read += other.cache_read;
        self.cache_write += other.cache_write;
    }
}

/// What the model answers in one turn of the agent's main loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Call the tool `name` with `input` (a JSON object): Claude Code's `Write`, say,
    /// or Codex's `exec_command`.
    Tool {
        /// The tool's name as the CLI offered it.
        name: String,
        /// Its arguments.
        input: Value,
    },
    /// A final message: the agent's turn ends.
    Text(String),
}

/// One scripted main-loop turn: the reply and the usage it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// What the model says.
    pub reply: Reply,
    /// The tokens the answer reports.
    pub usage: Usage,
}

impl Turn {
    /// A tool call reporting `usage`.
    pub fn tool(name: &str, input: Value, usage: Usage) -> Turn {
        Turn {
            reply: Reply::Tool {
                name: name.to_string(),
                input,
            },
            usage,
        }
    }

    /// A final message reporting `usage`.
    pub fn text(text: &str, usage: Usage) -> Turn {
        Turn {
            reply: Reply::Text(text.to_string()),
            usage,
        }
    }
}

/// How a logged request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// With the next turn of the script (its index).
    Turn(usize),
    /// As a side request.
    Side,
    /// With something that is no model answer (a `GET`, a token count, a 404).
    Other(u16),
    /// Refused with this status, for the reason given.
    Refused(u16, String),
}

/// One request the server read.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `GET`, `POST`...
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// How it was answered.
    pub answer: Answer,
}

impl Logged {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct State {
    api: Api,
    script: VecDeque<Turn>,
    next_turn: usize,
    log: Vec<Logged>,
    served: Usage,
}

/// A running scripted model API; stops when dropped.
#[derive(Debug)]
pub struct ScriptedModel {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedModel {
    /// Starts a server speaking `api` on `bind` (`127.0.0.1:0` for a port of its own on
    /// loopback) that answers the main loop's turns with `script`, in order.
    pub async fn start(api: Api, bind: &str, script: Vec<Turn>) -> std::io::Result<ScriptedModel> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            api,
            script: script.into(),
            next_turn: 0,
            log: Vec::new(),
            served: Usage::default(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    // A connection that breaks or stalls is the client's business;
                    // what was read of it is in the log.
                    let _ = serve(stream, &state).await;
                });
            }
        });
        Ok(ScriptedModel { addr, state, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `http://ADDR:PORT`. The Anthropic SDK adds `/v1/messages` itself;
    /// Codex's provider wants the `/v1` added.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request read so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// The tokens of every answer served so far, side requests included.
    pub fn served(&self) -> Usage {
        self.lock().served
    }

    /// Turns of the script not served yet.
    pub fn turns_left(&self) -> usize {
        self.lock().script.len()
    }

    /// A short account of the requests, for assertion messages: method, path and
    /// answer of each.
    pub fn summary(&self) -> String {
        self.lock()
            .log
            .iter()
            .map(|l| format!("{} {} -> {:?}", l.method, l.path, l.answer))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("scripted model lock")
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one request from `stream`, answers it and closes.
async fn serve(mut stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let (status, content_type, body) = match read_request(&mut stream).await? {
        Ok(req) => answer(req, state),
        Err((status, why)) => (status, "application/json", error_body(&why)),
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    tokio::time::timeout(IO_TIMEOUT, stream.write_all(&out))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    stream.shutdown().await
}

/// Reads a request head and its `content-length` body, within the bounds. The inner
/// error is a status and reason to answer with.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Result<Request, (u16, String)>> {
    let mut buf = Vec::with_capacity(8192);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err((431, format!("request head over {MAX_HEAD} bytes"))));
        }
        if read_some(stream, &mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if value("transfer-encoding").is_some() {
        return Ok(Err((
            411,
            "chunked request bodies are not supported".into(),
        )));
    }
    if let Some(enc) = value("content-encoding") {
        return Ok(Err((
            415,
            format!("request content-encoding {enc} is not supported"),
        )));
    }
    let len = match value("content-length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(_) => return Ok(Err((413, format!("request body over {MAX_BODY} bytes")))),
    };
    let mut body = buf.split_off(head_end + 4);
    while body.len() < len {
        if read_some(stream, &mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    body.truncate(len);
    Ok(Ok(Request {
        method,
        path,
        headers,
        body,
    }))
}

async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16384];
    let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// An error body both SDKs parse (Anthropic's shape; OpenAI's reads `error.message`).
fn error_body(message: &str) -> Vec<u8> {
    json!({
        "type": "error",
        "error": { "type": "invalid_request_error", "message": format!("scripted model: {message}") },
    })
    .to_string()
    .into_bytes()
}

/// Whether a request body is a turn of the agent's main loop: it offers tools (Codex
/// may put them in an `additional_tools` input item).
fn is_main_loop(body: &Value) -> bool {
    let has = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
    has(&body["tools"])
        || body["input"].as_array().is_some_and(|items| {
            items
                .iter()
                .any(|i| i["type"] == "additional_tools" && has(&i["tools"]))
        })
}

/// Decides the answer to `req` and logs it.
fn answer(req: Request, state: &Mutex<State>) -> (u16, &'static str, Vec<u8>) {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let mut st = state.lock().expect("scripted model lock");
    let api = st.api;
    let route = req.path.split('?').next().unwrap_or_default().to_string();
    let model_path = match api {
        Api::Anthropic => "/v1/messages",
        Api::Responses => "/v1/responses",
    };
    let (answer, status, content_type, out) = if st.log.len() >= MAX_REQUESTS {
        let why = format!("more than {MAX_REQUESTS} requests");
        (
            Answer::Refused(400, why.clone()),
            400,
            "application/json",
            error_body(&why),
        )
    } else if req.method == "GET" || req.method == "HEAD" {
        (Answer::Other(200), 200, "text/plain", Vec::new())
    } else if req.method == "POST" && route == "/v1/messages/count_tokens" {
        let out = json!({ "input_tokens": 1000 }).to_string().into_bytes();
        (Answer::Other(200), 200, "application/json", out)
    } else if req.method != "POST" || route != model_path {
        (
            Answer::Other(404),
            404,
            "application/json",
            error_body("no such endpoint"),
        )
    } else if is_main_loop(&body) {
        match st.script.pop_front() {
            Some(turn) => {
                let n = st.next_turn;
                st.next_turn += 1;
                st.served.add(&turn.usage);
                let model = body["model"].as_str().unwrap_or("scripted").to_string();
                let sse = sse(api, n, &model, &turn);
                (Answer::Turn(n), 200, "text/event-stream", sse)
            }
            None => {
                let why = "the script has no more turns".to_string();
                (
                    Answer::Refused(400, why.clone()),
                    400,
                    "application/json",
                    error_body(&why),
                )
            }
        }
    } else {
        st.served.add(&SIDE_USAGE);
        let model = body["model"].as_str().unwrap_or("scripted").to_string();
        let turn = Turn::text("Scripted title", SIDE_USAGE);
        let n = 1000 + st.log.len();
        (
            Answer::Side,
            200,
            "text/event-stream",
            sse(api, n, &model, &turn),
        )
    };
    // A side request that asked for no stream gets the message as JSON instead.
    let (content_type, out) = if answer == Answer::Side && body["stream"] != true {
        let text = json!({
            "id": "msg_side", "type": "message", "role": "assistant",
            "model": body["model"], "content": [{ "type": "text", "text": "Scripted title" }],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": { "input_tokens": SIDE_USAGE.input, "output_tokens": SIDE_USAGE.output },
        });
        ("application/json", text.to_string().into_bytes())
    } else {
        (content_type, out)
    };
    st.log.push(Logged {
        method: req.method,
        path: req.path,
        headers: req.headers,
        body,
        answer,
    });
    (status, content_type, out)
}

/// The streamed answer of turn `n` in `api`'s format.
fn sse(api: Api, n: usize, model: &str, turn: &Turn) -> Vec<u8> {
    let events = match api {
        Api::Anthropic => anthropic_events(n, model, turn),
        Api::Responses => responses_events(n, model, turn),
    };
    let mut out = String::new();
    for (name, data) in events {
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    out.into_bytes()
}

/// The Messages API's stream: `message_start` (input usage), one content block (a
/// `tool_use` whose input arrives as one JSON delta, or a text), `message_delta` (stop
/// reason and output tokens), `message_stop`.
fn anthropic_events(n: usize, model: &str, turn: &Turn) -> Vec<(&'static str, Value)> {
    let u = &turn.usage;
    let (block, delta, stop) = match &turn.reply {
        Reply::Tool { name, input } => (
            json!({ "type": "tool_use", "id": format!("toolu_scripted_{n}"), "name": name, "input": {} }),
            json!({ "type": "input_json_delta", "partial_json": input.to_string() }),
            "tool_use",
        ),
        Reply::Text(text) => (
            json!({ "type": "text", "text": "" }),
            json!({ "type": "text_delta", "text": text }),
            "end_turn",
        ),
    };
    vec![
        (
            "message_start",
            json!({ "type": "message_start", "message": {
                "id": format!("msg_scripted_{n}"), "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {
                    "input_tokens": u.input, "cache_creation_input_tokens": u.cache_write,
                    "cache_read_input_tokens": u.cache_read, "output_tokens": 1,
                },
            }}),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": block }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        (
            "message_delta",
            json!({ "type": "message_delta",
                "delta": { "stop_reason": stop, "stop_sequence": null },
                "usage": { "output_tokens": u.output } }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ]
}

/// The Responses API's stream: `response.created`, one output item (a
/// `function_call`, or a `message` with its text delta) added and done, and
/// `response.completed` with the usage.
fn responses_events(n: usize, model: &str, turn: &Turn) -> Vec<(&'static str, Value)> {
    let u = &turn.usage;
    let id = format!("resp_scripted_{n}");
    let mut events = vec![(
        "response.created",
        json!({ "type": "response.created", "response": {
            "id": id, "object": "response", "created_at": 0, "status": "in_progress",
            "model": model, "output": [],
        }}),
    )];
    let item = match &turn.reply {
        Reply::Tool { name, input } => {
            let call = |arguments: &str, status: &str| {
                json!({ "type": "function_call", "id": format!("fc_scripted_{n}"),
                    "call_id": format!("call_scripted_{n}"), "name": name,
                    "arguments": arguments, "status": status })
            };
            events.push((
                "response.output_item.added",
                json!({ "type": "response.output_item.added", "output_index": 0,
                    "item": call("", "in_progress") }),
            ));
            call(&input.to_string(), "completed")
        }
        Reply::Text(text) => {
            let msg_id = format!("msg_scripted_{n}");
            events.push((
                "response.output_item.added",
                json!({ "type": "response.output_item.added", "output_index": 0,
                    "item": { "type": "message", "id": msg_id, "role": "assistant",
                        "status": "in_progress", "content": [] } }),
            ));
            events.push((
                "response.output_text.delta",
                json!({ "type": "response.output_text.delta", "item_id": msg_id,
                    "output_index": 0, "content_index": 0, "delta": text }),
            ));
            json!({ "type": "message", "id": msg_id, "role": "assistant",
                "status": "completed",
                "content": [{ "type": "output_text", "text": text, "annotations": [] }] })
        }
    };
    events.push((
        "response.output_item.done",
        json!({ "type": "response.output_item.done", "output_index": 0, "item": item }),
    ));
    let input = u.input + u.cache_read;
    events.push((
        "response.completed",
        json!({ "type": "response.completed", "response": {
            "id": id, "object": "response", "created_at": 0, "status": "completed",
            "model": model, "output": [item],
            "usage": {
                "input_tokens": input,
                "input_tokens_details": { "cached_tokens": u.cache_read },
                "output_tokens": u.output,
                "output_tokens_details": { "reasoning_tokens": 0 },
                "total_tokens": input + u.output,
            },
        }}),
    ));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one raw request and returns the status and body of the answer.
    async fn send(model: &ScriptedModel, head: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(model.addr()).await.expect("connect");
        let req = format!("{head}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("a head");
        let status = head
            .split(' ')
            .nth(1)
            .expect("status")
            .parse()
            .expect("a number");
        (status, body.to_string())
    }

    fn usage(input: u64) -> Usage {
        Usage {
            input,
            output: 5,
            cache_read: 3,
            cache_write: 2,
        }
    }

    /// The `data:` payloads of an SSE body.
    fn events(body: &str) -> Vec<Value> {
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("JSON data"))
            .collect()
    }

    const MESSAGES: &str = "POST /v1/messages?beta=true HTTP/1.1\r\nhost: x";
    const MAIN: &str = r#"{"model":"m","stream":true,"tools":[{"name":"Write"}],"messages":[]}"#;

    #[tokio::test]
    async fn main_loop_turns_follow_the_script_and_side_requests_do_not_use_it() {
        let script = vec![
            Turn::tool(
                "Write",
                json!({ "file_path": "/w/a", "content": "x" }),
                usage(100),
            ),
            Turn::text("done", usage(200)),
        ];
        let model = ScriptedModel::start(Api::Anthropic, "127.0.0.1:0", script)
            .await
            .expect("start");
        assert_eq!(send(&model, "HEAD / HTTP/1.1\r\nhost: x", "").await.0, 200);
        let (status, side) = send(&model, MESSAGES, r#"{"model":"m","stream":true}"#).await;
        assert_eq!(status, 200);
        assert!(side.contains("Scripted title"), "{side}");

        let (status, first) = send(&model, MESSAGES, MAIN).await;
        assert_eq!(status, 200);
        let first = events(&first);
        assert_eq!(first[0]["message"]["usage"]["input_tokens"], 100);
        assert_eq!(first[1]["content_block"]["name"], "Write");
        let input: Value = serde_json::from_str(
            first[2]["delta"]["partial_json"]
                .as_str()
                .expect("partial json"),
        )
        .expect("the tool input as JSON");
        assert_eq!(input["file_path"], "/w/a");
        assert_eq!(first[4]["delta"]["stop_reason"], "tool_use");

        let (_, second) = send(&model, MESSAGES, MAIN).await;
        assert_eq!(events(&second)[2]["delta"]["text"], "done");
        // Past the script: a 400 the CLIs do not retry, saying why.
        let (status, past) = send(&model, MESSAGES, MAIN).await;
        assert_eq!(status, 400);
        assert!(past.contains("no more turns"), "{past}");

        assert_eq!(model.turns_left(), 0);
        let served = model.served();
        assert_eq!(served.input, 100 + 200 + SIDE_USAGE.input);
        assert_eq!(served.output, 5 + 5 + SIDE_USAGE.output);
        let answers: Vec<Answer> = model.requests().into_iter().map(|l| l.answer).collect();
        assert_eq!(
            answers,
            [
                Answer::Other(200),
                Answer::Side,
                Answer::Turn(0),
                Answer::Turn(1),
                Answer::Refused(400, "the script has no more turns".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn the_responses_api_streams_a_function_call_with_its_usage() {
        let script = vec![Turn::tool(
            "exec_command",
            json!({ "cmd": "true" }),
            usage(10),
        )];
        let model = ScriptedModel::start(Api::Responses, "127.0.0.1:0", script)
            .await
            .expect("start");
        // Codex may offer its tools in an input item instead of `tools`.
        let body =
            r#"{"model":"m","input":[{"type":"additional_tools","tools":[{"name":"exec"}]}]}"#;
        let (status, out) = send(&model, "POST /v1/responses HTTP/1.1\r\nhost: x", body).await;
        assert_eq!(status, 200);
        let events = events(&out);
        let done = &events[2]["item"];
        assert_eq!(done["name"], "exec_command");
        assert_eq!(done["arguments"], r#"{"cmd":"true"}"#);
        let usage = &events[3]["response"]["usage"];
        assert_eq!(usage["input_tokens"], 13, "cached tokens count as input");
        assert_eq!(usage["input_tokens_details"]["cached_tokens"], 3);
        // The other API's path is no endpoint here.
        assert_eq!(send(&model, MESSAGES, MAIN).await.0, 404);
    }

    #[tokio::test]
    async fn requests_past_the_bounds_are_refused_with_the_reason() {
        let model = ScriptedModel::start(Api::Anthropic, "127.0.0.1:0", Vec::new())
            .await
            .expect("start");
        let mut s = TcpStream::connect(model.addr()).await.expect("connect");
        let head = format!("{MESSAGES}\r\ncontent-length: {}\r\n\r\n", MAX_BODY + 1);
        s.write_all(head.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        let chunked = format!("{MESSAGES}\r\ntransfer-encoding: chunked");
        assert_eq!(send(&model, &chunked, "").await.0, 411);
        let zstd = format!("{MESSAGES}\r\ncontent-encoding: zstd");
        let (status, body) = send(&model, &zstd, "x").await;
        assert_eq!(status, 415);
        assert!(body.contains("zstd"), "{body}");
    }
}
