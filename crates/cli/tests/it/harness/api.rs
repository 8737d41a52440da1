//! Raw HTTP calls to a test server's API, and reading its metrics.

use super::*;

/// A small blocking HTTP client of one server's API, with a bearer token.
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    token: String,
}

impl Api {
    /// A client of `base` with `token`.
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            client: reqwest::Client::builder()
                .timeout(CALL_TIMEOUT)
                .build()
                .expect("an HTTP client"),
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    /// `GET path`: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let resp = self
                .client
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = resp.status().as_u16();
            let text = resp
                .text()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
            Ok((status, text))
        })
    }

    /// `GET path`, which must answer 200 with JSON.
    #[track_caller]
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, text) = self.get(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "GET {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// `POST path` with a JSON body: status and body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, String), String> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let resp = self
                .client
                .post(&url)
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
                .map_err(|e| format!("POST {url}: {e}"))?;
            let status = resp.status().as_u16();
            let text = resp
                .text()
                .await
                .map_err(|e| format!("POST {url}: reading the body: {e}"))?;
            Ok((status, text))
        })
    }

    /// The raw text of the event stream (`GET path` as `text/event-stream`) from its
    /// start until the frame of event `last_id` arrived: every frame a client of the
    /// stream would have received for those events.
    #[track_caller]
    pub fn sse_until(&self, path: &str, last_id: i64) -> String {
        let url = format!("{}{path}", self.base);
        let marker = format!("id: {last_id}\n");
        let read = self.rt.block_on(async {
            let mut resp = self
                .client
                .get(&url)
                .bearer_auth(&self.token)
                .header("accept", "text/event-stream")
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let mut bytes: Vec<u8> = Vec::new();
            while !String::from_utf8_lossy(&bytes).contains(&marker) {
                match resp.chunk().await {
                    Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                    Ok(None) => return Err(format!("GET {url}: the stream ended early")),
                    Err(e) => return Err(format!("GET {url}: reading the stream: {e}")),
                }
            }
            Ok::<_, String>(String::from_utf8_lossy(&bytes).into_owned())
        });
        read.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every event after `after`, in id order, read page by page.
    #[track_caller]
    pub fn all_events(&self, job: Option<&str>) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = Vec::new();
        let mut after = 0;
        loop {
            let path = match job {
                Some(j) => format!("/v1/events?job={j}&after={after}&limit=10000"),
                None => format!("/v1/events?after={after}&limit=10000"),
            };
            let page = self.get_json(&path);
            let page = page.as_array().expect("an array of events").clone();
            let Some(last) = page.last() else {
                return out;
            };
            after = last["id"].as_i64().expect("an event id");
            out.extend(page);
        }
    }

    /// Every job, newest first, read page by page with the `before` cursor.
    #[track_caller]
    pub fn all_jobs(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = Vec::new();
        loop {
            let path = match out.last() {
                Some(last) => format!("/v1/jobs?limit=1000&before={}", last["id"]),
                None => "/v1/jobs?limit=1000".to_string(),
            };
            let page = self.get_json(&path);
            let page = page.as_array().expect("an array of jobs").clone();
            let full = page.len() == 1000;
            out.extend(page);
            if !full {
                return out;
            }
        }
    }

    /// The sum of a counter over its labels in `GET /metrics` (0 when absent).
    #[track_caller]
    pub fn counter(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "GET /metrics: HTTP {status}: {text}");
        gantry_testkit::metric_sum(&text, name, "")
    }

    /// Waits until a factory has asked for a job, and found none, after this call
    /// began: `factories + 1` more empty claims, since each factory may have one claim
    /// under way already (see the server tests' `wait_claims_found_nothing`).
    #[track_caller]
    pub fn wait_claims_found_nothing(&self, factories: u64) {
        let empty = || {
            let (status, text) = self.get("/metrics").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status, 200, "GET /metrics: HTTP {status}: {text}");
            let (name, label) = gantry_testkit::EMPTY_CLAIMS;
            gantry_testkit::metric_sum(&text, name, label) as u64
        };
        let before = empty();
        gantry_testkit::wait_for(
            "a factory to ask for a job and find none",
            Duration::from_secs(30),
            || (empty() > before + factories).then_some(()),
        );
    }
}

/// A free TCP port on 127.0.0.1 (free when this returns; bind it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
