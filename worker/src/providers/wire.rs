//! What the HTTP providers share: one `reqwest` client per upstream, the classification of
//! HTTP statuses into retryable and permanent errors, `Retry-After`, and the two streaming
//! framings (server-sent events, newline-delimited JSON).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use super::ProviderError;
use llm_shared::generation::ToolCall;
use llm_shared::models::UpstreamSettings;

/// Longest error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 300;

/// A chat message of the OpenAI-style APIs (OpenAI, Ollama): text, an assistant's tool calls
/// (`tool_calls`, in the provider's own shape), or a tool's result (`role: tool`).
#[derive(Debug, serde::Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
    /// The assistant's tool calls, for the provider to write as `tool_calls`.
    #[serde(skip)]
    pub calls: &'a [ToolCall],
}

impl<'a> ChatMessage<'a> {
    fn new(role: &'static str, content: &'a str) -> Self {
        Self {
            role,
            content,
            tool_calls: None,
            tool_call_id: None,
            calls: &[],
        }
    }
}

/// The request's optional system prompt, then its conversation (see [`conversation`]), the
/// assistant's tool calls written by `call` in the provider's shape.
pub fn chat_messages<'a>(
    input: &'a super::GenerationInput,
    call: impl Fn(&ToolCall) -> serde_json::Value,
) -> Vec<ChatMessage<'a>> {
    let mut messages = Vec::with_capacity(2 + history_len(input));
    if let Some(system) = &input.params.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.extend(conversation(input).into_iter().map(|mut m| {
        if !m.calls.is_empty() {
            m.tool_calls = Some(m.calls.iter().map(&call).collect());
        }
        m
    }));
    messages
}

/// The request's earlier turns (`history`), then its prompt as the user's message (none when
/// the prompt is empty after a tool's result): the `messages` of every chat API, without the
/// system prompt (which Anthropic takes apart).
pub fn conversation(input: &super::GenerationInput) -> Vec<ChatMessage<'_>> {
    let mut messages = Vec::with_capacity(1 + history_len(input));
    for turn in input.params.history.iter().flatten() {
        messages.push(ChatMessage {
            calls: turn.calls(),
            tool_call_id: turn.tool_call_id.as_deref(),
            ..ChatMessage::new(turn.role.as_str(), &turn.content)
        });
    }
    if !(input.prompt.is_empty() && input.params.ends_with_tool_result()) {
        messages.push(ChatMessage::new("user", &input.prompt));
    }
    messages
}

fn history_len(input: &super::GenerationInput) -> usize {
    input.params.history.as_ref().map_or(0, Vec::len)
}

/// The client of one endpoint (its own connection pool), sending the endpoint's extra headers
/// with every call.
pub fn client(settings: &UpstreamSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(settings.timeouts.connect())
        .pool_idle_timeout(Duration::from_secs(90))
        .default_headers(extra_headers(&settings.headers))
        .build()
        // Building only fails when the TLS backend cannot initialise; fall back to defaults.
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The registry checked the headers as it loaded; one that still does not parse is left out
/// (logged), never a reason to fail every call.
fn extra_headers(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        match (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                map.insert(name, value);
            }
            _ => tracing::warn!(header = %name, "extra header left out: not a valid HTTP header"),
        }
    }
    map
}

/// A transport failure (no HTTP answer, or a body that could not be read).
pub fn transport_error(err: &reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout(Duration::ZERO)
    } else {
        let what = if err.is_connect() {
            "could not connect to the provider"
        } else {
            "the provider connection failed"
        };
        ProviderError::Transient {
            message: what.to_owned(),
            http_status: None,
            retry_after: None,
        }
    }
}

/// The longest `Retry-After` honoured: a provider's (or a proxy's) absurd value must neither
/// overflow a `Duration` nor park a request for years; the request is rescheduled instead.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

fn capped_secs(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.clamp(0.0, MAX_RETRY_AFTER.as_secs_f64()))
}

/// `Retry-After` (seconds or an HTTP date), or OpenAI's `retry-after-ms`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Some(capped_secs(ms / 1000.0));
    }
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| capped_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
        .map(|wait| wait.min(MAX_RETRY_AFTER))
        .or(Some(Duration::ZERO))
}

/// Maps an HTTP error answer onto the error classes: 408/409/429/5xx/529 retry; 401/403/404
/// mean this provider cannot serve us (fall back); other 4xx reject the request itself.
pub fn status_error(status: u16, headers: &HeaderMap, message: String) -> ProviderError {
    let message = format!("HTTP {status}: {message}");
    match status {
        408 | 409 | 425 | 429 | 500..=599 => ProviderError::Transient {
            message,
            http_status: Some(status),
            retry_after: retry_after(headers),
        },
        401 | 403 | 404 => ProviderError::Unavailable {
            message,
            http_status: Some(status),
        },
        _ => ProviderError::Rejected {
            message,
            http_status: Some(status),
        },
    }
}

/// The error message of a provider error body, whatever its shape, shortened.
/// The message of an error answer, shortened for storing; `secret` (the provider's key, which
/// providers echo in their 401 bodies) is replaced before the cut, so that no prefix of it can
/// survive at the end of the shortened text.
pub fn error_message(body: &[u8], secret: Option<&str>) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    let text = message.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    match secret {
        Some(secret) if !secret.is_empty() => shorten(text.replace(secret, "[redacted]").trim()),
        _ => shorten(text.trim()),
    }
}

pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Sends a request and returns the body of a 2xx answer, or the classified error.
pub async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderError> {
    send_redacting(request, None).await
}

/// [`send`], with `secret` replaced in an error answer's message before it is shortened.
async fn send_redacting(
    request: reqwest::RequestBuilder,
    secret: Option<&str>,
) -> Result<reqwest::Response, ProviderError> {
    let response = request.send().await.map_err(|e| transport_error(&e))?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    Err(status_error(status, &headers, error_message(&body, secret)))
}

/// [`send`] for providers with an API key: the key is redacted from any error message
/// (providers echo keys in their 401 bodies).
pub async fn send_keyed(
    request: reqwest::RequestBuilder,
    key: Option<&secrecy::SecretString>,
) -> Result<reqwest::Response, ProviderError> {
    use secrecy::ExposeSecret;
    let secret = key.map(ExposeSecret::expose_secret);
    // The call's span goes on upstream (W3C trace context), when spans are exported.
    let request = llm_shared::telemetry::current_trace_headers()
        .into_iter()
        .fold(request, |request, (name, value)| {
            request.header(name, value)
        });
    // The answer's body is redacted before it is shortened; the rest of the error (a transport
    // error's text) after.
    send_redacting(request, secret)
        .await
        .map_err(|err| match secret {
            Some(secret) => err.redact(secret),
            None => err,
        })
}

/// Parses a whole JSON answer; a body that does not parse is a (retryable) malformed answer.
pub async fn json_body<T: DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ProviderError> {
    let body = response.bytes().await.map_err(|e| transport_error(&e))?;
    serde_json::from_slice(&body).map_err(|e| malformed(&e.to_string()))
}

pub fn malformed(detail: &str) -> ProviderError {
    ProviderError::Transient {
        message: format!("malformed answer from the provider: {}", shorten(detail)),
        http_status: None,
        retry_after: None,
    }
}

pub fn cut_stream() -> ProviderError {
    ProviderError::Transient {
        message: "the provider's stream ended before its end marker".into(),
        http_status: None,
        retry_after: None,
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a byte stream into server-sent events (`event:` / `data:` lines, blank-line
/// separated; comments and other fields ignored).
pub fn sse_events(
    body: impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, ProviderError>> + Send + 'static {
    lines(body).filter_map({
        let mut current = SseEvent::default();
        let mut has_data = false;
        move |line| {
            let out = match line {
                Err(e) => Some(Err(e)),
                Ok(line) if line.is_empty() => {
                    if has_data || current.event.is_some() {
                        has_data = false;
                        Some(Ok(std::mem::take(&mut current)))
                    } else {
                        None
                    }
                }
                Ok(line) => {
                    if let Some(value) = field(&line, "data") {
                        if has_data {
                            current.data.push('\n');
                        }
                        current.data.push_str(value);
                        has_data = true;
                    } else if let Some(value) = field(&line, "event") {
                        current.event = Some(value.to_owned());
                    }
                    None
                }
            };
            futures::future::ready(out)
        }
    })
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// Splits a byte stream into lines (without their `\n` / `\r\n`). A last line without its
/// newline is still yielded.
pub fn lines(
    body: impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
) -> impl Stream<Item = Result<String, ProviderError>> + Send + 'static {
    let body = Box::pin(body);
    futures::stream::unfold(
        (body, BytesMut::new(), false),
        |(mut body, mut buf, mut ended)| async move {
            loop {
                if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let mut line = buf.split_to(pos + 1);
                    line.truncate(pos);
                    if line.last() == Some(&b'\r') {
                        line.truncate(pos - 1);
                    }
                    let text = String::from_utf8_lossy(&line).into_owned();
                    return Some((Ok(text), (body, buf, ended)));
                }
                if ended {
                    if buf.is_empty() {
                        return None;
                    }
                    let text = String::from_utf8_lossy(&buf.split()).into_owned();
                    return Some((Ok(text), (body, buf, ended)));
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        ended = true;
                        buf.clear();
                        return Some((Err(transport_error(&e)), (body, buf, ended)));
                    }
                    None => ended = true,
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(
        chunks: &[&'static str],
    ) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static {
        futures::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes())))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn sse_events_across_chunk_boundaries() {
        let events: Vec<_> = sse_events(body(&[
            ": comment\n\nevent: message_start\nda",
            "ta: {\"a\":1}\n\ndata: line1\r\ndata: line2\r\n\r\n",
            "data: [DONE]\n\n",
        ]))
        .collect()
        .await;
        let events: Vec<_> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "line1\nline2".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[tokio::test]
    async fn lines_keep_a_last_line_without_newline() {
        let got: Vec<_> = lines(body(&["{\"a\":", "1}\n{\"b\"", ":2}"]))
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(got, vec!["{\"a\":1}".to_owned(), "{\"b\":2}".to_owned()]);
    }

    #[test]
    fn retry_after_in_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert("retry-after", later.parse().unwrap());
        let got = retry_after(&headers).unwrap();
        assert!(
            got > Duration::from_secs(25) && got <= Duration::from_secs(30),
            "{got:?}"
        );
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn absurd_retry_after_values_are_capped_not_a_panic() {
        for (name, value) in [
            ("retry-after", "1e300"),
            ("retry-after-ms", "1.7976931348623157e308"),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 +0000"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            assert_eq!(
                retry_after(&headers),
                Some(MAX_RETRY_AFTER),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        for s in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(status_error(s, &h, String::new()).is_retryable(), "{s}");
        }
        for s in [401, 403, 404] {
            let e = status_error(s, &h, String::new());
            assert!(!e.is_retryable() && e.falls_back(), "{s}");
        }
        for s in [400, 413, 422] {
            let e = status_error(s, &h, String::new());
            assert!(!e.is_retryable() && !e.falls_back(), "{s}");
        }
    }

    #[test]
    fn error_messages_from_each_provider_shape() {
        assert_eq!(
            error_message(br#"{"error":{"message":"bad key","type":"x"}}"#, None),
            "bad key"
        );
        assert_eq!(
            error_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                None
            ),
            "Overloaded"
        );
        assert_eq!(
            error_message(br#"{"error":"model 'x' not found"}"#, None),
            "model 'x' not found"
        );
        assert_eq!(
            error_message(b"<html>bad gateway</html>", None),
            "<html>bad gateway</html>"
        );
    }

    #[test]
    fn a_key_across_the_cut_is_redacted_before_the_message_is_shortened() {
        let key = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyz";
        for before in [250, 280, 295, 299, 300] {
            let body = format!(
                r#"{{"error":{{"message":"{}Incorrect API key provided: {key}. See the docs."}}}}"#,
                "x".repeat(before)
            );
            let message = error_message(body.as_bytes(), Some(key));
            assert!(!message.contains(&key[..8]), "{before}: {message}");
        }
        // Without the key nothing is redacted (a cut prefix shows what the test guards).
        let body = format!(r#"{{"error":{{"message":"{}{key}"}}}}"#, "x".repeat(290));
        assert!(error_message(body.as_bytes(), None).contains(&key[..8]));
    }
}
