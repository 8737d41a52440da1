//! Request extractors whose rejections are [`ApiError`]s naming the field or value at
//! fault, instead of axum's plain-text defaults.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use gantry_protocol::ErrorKind;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Display;
use std::str::FromStr;

/// A JSON request body. An empty body reads as `{}`, so optional fields take their
/// defaults and a missing required field is named. Errors name the path of the field
/// (`jobs[0].text`) and what was wrong with its value.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rej| body_rejection(rej.status(), rej.body_text()))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        parse_json(bytes).map(JsonBody)
    }
}

/// The error for a request body that could not be read: 413 `too_large` (the kind of
/// every size refusal) when it is over the route's limit, else 400 `bad_request`.
fn body_rejection(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            ErrorKind::TooLarge,
            format!("the request body is larger than this route accepts: {text}"),
        )
        .with_hint("send a smaller body (split a batch of jobs into several submissions)")
        .with_details(json!({ "field": "request body" }))
    } else {
        ApiError::new(status, ErrorKind::BadRequest, text)
    }
}

/// Parses a JSON document into `T`, with an error naming the field path.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("invalid request body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid request body: field `{path}`: {inner}"))
                .with_details(json!({ "field": path }))
        }
    })
}

/// The query string as name/value pairs, read by name with errors naming the parameter
/// and its value.
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    /// Refuses parameters not in `allowed` (a typo would otherwise be silently ignored)
    /// and parameters given more than once.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for (i, (name, _)) in self.0.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{name}` (expected one of: {})",
                    allowed.join(", ")
                ))
                .with_details(json!({ "field": name })));
            }
            if self.0[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{name}` is given more than once"
                ))
                .with_details(json!({ "field": name })));
            }
        }
        Ok(())
    }

    /// The parameter `name` parsed as `T`; `None` when absent or empty.
    pub fn get<T>(&self, name: &str) -> Result<Option<T>, ApiError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let Some((_, value)) = self.0.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        if value.is_empty() {
            return Ok(None);
        }
        value.parse::<T>().map(Some).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid value {value:?} for query parameter `{name}`: {e}"
            ))
            .with_details(json!({ "field": name, "value": value }))
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        query_pairs(&parts.uri).map(QueryParams)
    }
}

/// Decodes the query of `uri` (`a=1&b=x%20y`) into pairs.
fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|rej| {
            ApiError::bad_request(format!(
                "malformed query string {:?}: {}",
                uri.query().unwrap_or(""),
                rej.body_text()
            ))
        })
}

/// The single `{id}`/`{name}` segment of a route, parsed as `T` with an error naming
/// the segment's value.
pub struct PathParam<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParam<T>
where
    S: Send + Sync,
    T: FromStr,
    T::Err: Display,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|rej| ApiError::bad_request(rej.body_text()))?;
        raw.parse::<T>().map(PathParam).map_err(|e| {
            ApiError::bad_request(format!("invalid path segment {raw:?}: {e}"))
                .with_details(json!({ "value": raw }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_protocol::ClaimRequest;

    #[test]
    fn json_errors_name_the_field_and_value() {
        let e = parse_json::<ClaimRequest>(br#"{"wait_s": "soon"}"#).expect_err("bad type");
        assert!(e.body.message.contains("`wait_s`"), "{}", e.body.message);
        assert!(e.body.message.contains("soon"), "{}", e.body.message);
        assert_eq!(e.body.details["field"], "wait_s");

        let e = parse_json::<ClaimRequest>(b"{not json").expect_err("syntax");
        assert!(
            e.body.message.contains("not valid JSON"),
            "{}",
            e.body.message
        );
    }

    #[test]
    fn query_errors_name_the_parameter_and_value() {
        let q = QueryParams(
            query_pairs(&Uri::from_static("/v1/events?after=abc&limit=")).expect("pairs"),
        );
        let e = q.get::<i64>("after").expect_err("bad int");
        assert!(e.body.message.contains("`after`"), "{}", e.body.message);
        assert!(e.body.message.contains("\"abc\""), "{}", e.body.message);
        assert_eq!(q.get::<usize>("limit").expect("empty is absent"), None);
        assert_eq!(q.get::<usize>("job").expect("absent"), None);

        let e = q.only(&["limit"]).expect_err("unknown");
        assert!(e.body.message.contains("`after`"), "{}", e.body.message);
        let q = QueryParams(query_pairs(&Uri::from_static("/x?a=1&a=2")).expect("pairs"));
        assert!(
            q.only(&["a"])
                .expect_err("twice")
                .body
                .message
                .contains("more than once")
        );
    }
}
