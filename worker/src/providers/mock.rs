//! The built-in `mock` provider: deterministic text derived from the prompt, with latency and
//! failures controllable per request, so the service runs, is tested and is benchmarked with
//! no API key and no network. It goes through the same trait and worker path as real providers.
//!
//! Tools: when a request requires a call (`tool_choice` `required`, or a named tool), the mock
//! answers one call of that tool (the first one for `required`) with the arguments `{}`, the id
//! `call_mock_0` and no text; otherwise it answers text as usual.

use std::time::Duration;

use futures::StreamExt;

use super::{
    ChunkStream, GenerationInput, GenerationOutput, MAX_MOCK_LATENCY_MS, MockFailure, Provider,
    ProviderError, StreamEvent, ToolCall, ToolCallDelta, estimate_tokens,
};

const DEFAULT_COMPLETION_WORDS: u32 = 24;
const WORDS: &[&str] = &[
    "the", "dragon", "ranger", "tavern", "sword", "ancient", "elf", "dwarf", "quest", "shadow",
    "ember", "rune", "keep", "storm", "wizard", "oath", "silver", "forest", "crypt", "bard",
    "goblin", "crown", "moon", "river", "paladin", "whisper", "tower", "gold", "mist", "hero",
    "of", "and",
];

#[derive(Debug, Clone, Default)]
pub struct MockProvider {
    allow_crash: bool,
}

impl MockProvider {
    pub fn new(allow_crash: bool) -> Self {
        Self { allow_crash }
    }
}

impl Provider for MockProvider {
    fn name(&self) -> &'static str {
        "mock"
    }

    async fn generate(&self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        self.answer(input).await
    }

    async fn stream(&self, input: &GenerationInput) -> Result<ChunkStream, ProviderError> {
        let output = self.answer(input).await?;
        let mut events: Vec<Result<StreamEvent, ProviderError>> = Vec::new();
        for (index, call) in (0..).zip(&output.tool_calls) {
            // As the providers stream a call: its id and name, then its arguments.
            events.push(Ok(StreamEvent::ToolCall(ToolCallDelta {
                index,
                id: Some(call.id.clone()),
                name: Some(call.name.clone()),
                arguments: String::new(),
            })));
            events.push(Ok(StreamEvent::ToolCall(ToolCallDelta {
                index,
                id: None,
                name: None,
                arguments: call.arguments.clone(),
            })));
        }
        for (i, word) in output.text.split(' ').enumerate() {
            if output.text.is_empty() {
                break;
            }
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            events.push(Ok(StreamEvent::Delta(piece)));
        }
        events.push(Ok(StreamEvent::Finished {
            finish_reason: output.finish_reason,
            prompt_tokens: Some(output.prompt_tokens),
            completion_tokens: Some(output.completion_tokens),
        }));
        let delay = Duration::from_millis(
            input
                .mock
                .as_ref()
                .map_or(0, |m| m.token_delay_ms.min(MAX_MOCK_LATENCY_MS)),
        );
        let stream = futures::stream::iter(events);
        if delay.is_zero() {
            return Ok(stream.boxed());
        }
        Ok(stream
            .then(move |event| async move {
                tokio::time::sleep(delay).await;
                event
            })
            .boxed())
    }
}

impl MockProvider {
    /// The whole answer (or the requested failure) after the requested latency.
    async fn answer(&self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        let behaviour = input.mock.clone().unwrap_or_default();
        if behaviour.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(
                behaviour.latency_ms.min(MAX_MOCK_LATENCY_MS),
            ))
            .await;
        }
        let failing = behaviour.fail_attempts.is_none_or(|n| input.attempt <= n);
        match behaviour.fail {
            Some(MockFailure::Transient) if failing => {
                return Err(ProviderError::Transient {
                    message: format!("mock transient failure on attempt {}", input.attempt),
                    http_status: Some(503),
                    retry_after: None,
                });
            }
            Some(MockFailure::Permanent) if failing => {
                return Err(ProviderError::Rejected {
                    message: "mock permanent failure".into(),
                    http_status: Some(400),
                });
            }
            Some(MockFailure::Crash) if failing => {
                if self.allow_crash {
                    tracing::error!(
                        attempt = input.attempt,
                        "mock provider crashing the worker on request"
                    );
                    std::process::abort();
                }
                return Err(ProviderError::Rejected {
                    message: "mock crash requested but this worker does not allow it".into(),
                    http_status: None,
                });
            }
            _ => {}
        }
        let words = input
            .params
            .max_tokens
            .unwrap_or(DEFAULT_COMPLETION_WORDS)
            .clamp(1, 4096);
        // The whole conversation seeds the text: another history, another answer.
        let conversation = super::wire::conversation(input);
        let seed: String = match conversation.as_slice() {
            [only] => only.content.to_owned(),
            turns => turns
                .iter()
                .map(|t| format!("{}: {}\n", t.role, t.content))
                .collect(),
        };
        let prompt_tokens = conversation
            .iter()
            .fold(0u32, |n, t| n.saturating_add(estimate_tokens(t.content)));
        if let Some(tool) = input.params.forced_tool() {
            return Ok(GenerationOutput {
                prompt_tokens,
                completion_tokens: 1,
                finish_reason: "tool_calls".into(),
                upstream_model: input.upstream_model.clone(),
                text: String::new(),
                tool_calls: vec![ToolCall {
                    id: "call_mock_0".into(),
                    name: tool.name.clone(),
                    arguments: "{}".into(),
                }],
            });
        }
        let prose = deterministic_text(&seed, words);
        let mut finish_reason = "stop";
        let text = match input.params.json_output() {
            Some(_) if behaviour.fail == Some(MockFailure::InvalidJson) && failing => {
                format!("Sure! Here it is: {prose}")
            }
            Some(Some(schema)) => {
                // Like a model, the mock writes no more than its token budget allows: a
                // schema demanding more gets an answer cut at the limit.
                let limit = max_chars(words);
                let mut budget = limit;
                let value = instance_of(schema, schema, &prose, &mut budget, 0).to_string();
                if budget == 0 || value.len() > limit {
                    finish_reason = "length";
                    value.chars().take(limit).collect()
                } else {
                    value
                }
            }
            Some(None) => serde_json::json!({ "text": prose }).to_string(),
            None => prose,
        };
        Ok(GenerationOutput {
            prompt_tokens,
            completion_tokens: words,
            finish_reason: finish_reason.into(),
            upstream_model: input.upstream_model.clone(),
            text,
            tool_calls: Vec::new(),
        })
    }
}

/// The most characters the mock writes for `words` tokens of output: generous (its prose is
/// at most 8 characters a word; JSON adds keys and punctuation), yet bounded by `max_tokens`.
pub(crate) fn max_chars(words: u32) -> usize {
    (words as usize).saturating_mul(MAX_CHARS_PER_TOKEN)
}

const MAX_CHARS_PER_TOKEN: usize = 64;

/// References the mock follows within one another: a recursive schema (a tree) would
/// otherwise nest without end.
const MAX_REF_DEPTH: usize = 8;

/// A deterministic value that matches `schema` (a part of `root`, whose local `$ref`s it
/// follows, at most [`MAX_REF_DEPTH`] deep), built from the mock's words, spending at most
/// `budget` characters (roughly: JSON punctuation aside). A schema that asks for more gets
/// less than it asked for, and `budget` ends at 0.
fn instance_of(
    schema: &serde_json::Value,
    root: &serde_json::Value,
    words: &str,
    budget: &mut usize,
    depth: usize,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let spend = |budget: &mut usize, n: usize| *budget = budget.saturating_sub(n);
    let Some(map) = schema.as_object() else {
        spend(budget, 2);
        return json!({});
    };
    if let Some(pointer) = map
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
    {
        return match root.pointer(pointer) {
            Some(target) if depth < MAX_REF_DEPTH => {
                instance_of(target, root, words, budget, depth + 1)
            }
            _ => {
                *budget = 0;
                Value::Null
            }
        };
    }
    if let Some(value) = map.get("const") {
        spend(budget, value.to_string().len());
        return value.clone();
    }
    if let Some(first) = map
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.first())
    {
        spend(budget, first.to_string().len());
        return first.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = map
            .get(key)
            .and_then(Value::as_array)
            .and_then(|e| e.first())
        {
            return instance_of(first, root, words, budget, depth);
        }
    }
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(list)) => list.first().and_then(Value::as_str).unwrap_or("object"),
        _ if map.contains_key("properties") => "object",
        _ => "string",
    };
    let number = |default: f64| {
        map.get("minimum")
            .and_then(Value::as_f64)
            .or_else(|| map.get("maximum").and_then(Value::as_f64))
            .unwrap_or(default)
    };
    let scalar = |budget: &mut usize, value: Value| {
        spend(budget, value.to_string().len());
        value
    };
    match kind {
        "object" => {
            let mut object = serde_json::Map::new();
            if let Some(props) = map.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    if *budget == 0 {
                        break;
                    }
                    spend(budget, name.len() + 4);
                    object.insert(name.clone(), instance_of(sub, root, words, budget, depth));
                }
            }
            Value::Object(object)
        }
        "array" => {
            let wanted = map
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .max(1);
            let before = *budget;
            let item = match map.get("items") {
                Some(sub) => instance_of(sub, root, words, budget, depth),
                None => scalar(budget, json!(words)),
            };
            // Every copy costs what the first did.
            let each = before.saturating_sub(*budget).max(1) + 1;
            let affordable = (before / each).max(1) as u64;
            let count = wanted.min(affordable);
            spend(budget, each.saturating_mul(count as usize - 1));
            if count < wanted {
                *budget = 0;
            }
            Value::Array(vec![item; count as usize])
        }
        "integer" => scalar(budget, json!(number(1.0).ceil() as i64)),
        "number" => scalar(budget, json!(number(1.0))),
        "boolean" => scalar(budget, json!(true)),
        "null" => scalar(budget, Value::Null),
        _ => {
            let max = map
                .get("maxLength")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX) as usize;
            let min = map.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
            let mut text: String = words.chars().take(max.min(*budget)).collect();
            let missing = min.saturating_sub(text.chars().count());
            let padding = missing.min(budget.saturating_sub(text.len()));
            text.extend(std::iter::repeat_n('!', padding));
            spend(budget, text.len() + 2);
            if padding < missing {
                *budget = 0;
            }
            json!(text)
        }
    }
}

/// `words` words chosen by a seeded xorshift over the prompt's FNV-1a hash: same prompt, same
/// text, on every machine and every run.
fn deterministic_text(prompt: &str, words: u32) -> String {
    let mut state = prompt.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut out = String::with_capacity(words as usize * 7);
    for i in 0..words {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{GenerationParams, MockBehaviour};

    fn input(prompt: &str, attempt: u32, mock: Option<MockBehaviour>) -> GenerationInput {
        GenerationInput {
            prompt: prompt.into(),
            params: GenerationParams {
                max_tokens: Some(8),
                ..Default::default()
            },
            upstream_model: "mock-1".into(),
            attempt,
            mock,
        }
    }

    #[tokio::test]
    async fn output_is_deterministic_and_prompt_dependent() {
        let p = MockProvider::default();
        let a = p.generate(&input("a hero", 1, None)).await.unwrap();
        let b = p.generate(&input("a hero", 1, None)).await.unwrap();
        let c = p.generate(&input("a villain", 1, None)).await.unwrap();
        assert_eq!(a, b);
        assert_ne!(a.text, c.text);
        assert_eq!(a.text.split(' ').count(), 8);
        assert_eq!(a.completion_tokens, 8);
    }

    #[tokio::test]
    async fn schema_shaped_output_follows_local_references() {
        use llm_shared::generation::ResponseFormat;
        let schema = serde_json::json!({
            "$defs": {"Stats": {"type": "object", "required": ["strength"],
                                "properties": {"strength": {"type": "integer", "minimum": 3}}},
                      "Class": {"enum": ["bard", "rogue"]}},
            "type": "object", "required": ["stats", "class", "party"],
            "properties": {"stats": {"$ref": "#/$defs/Stats"},
                           "class": {"$ref": "#/$defs/Class"},
                           "party": {"type": "array", "items": {"$ref": "#/$defs/Stats"}}}});
        let mut asking = input("a hero", 1, None);
        asking.params.max_tokens = Some(64);
        asking.params.response_format = Some(ResponseFormat::JsonSchema {
            schema: schema.clone(),
            name: None,
            strict: None,
        });
        let out = MockProvider::default().generate(&asking).await.unwrap();
        assert_eq!(out.finish_reason, "stop");
        let value: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        assert_eq!(
            llm_shared::json_schema::schema_violation(&schema, &value),
            None,
            "{value}"
        );
        // A schema that refers to itself ends, cut.
        asking.params.response_format = Some(ResponseFormat::JsonSchema {
            schema: serde_json::json!({"type": "object", "properties": {"next": {"$ref": "#"}}}),
            name: None,
            strict: None,
        });
        let out = MockProvider::default().generate(&asking).await.unwrap();
        assert_eq!(out.finish_reason, "length");
    }

    #[tokio::test]
    async fn schema_shaped_output_is_bounded_by_max_tokens() {
        use llm_shared::generation::ResponseFormat;
        let p = MockProvider::default();
        let asking = |schema: serde_json::Value| {
            let mut input = input("a hero", 1, None);
            input.params.response_format = Some(ResponseFormat::JsonSchema {
                schema,
                name: None,
                strict: None,
            });
            input
        };
        let huge = [
            serde_json::json!({"type": "array", "minItems": 1_000_000, "items": {"type": "integer"}}),
            serde_json::json!({"type": "string", "minLength": 900_000}),
            serde_json::json!({"type": "array", "minItems": 1000,
                "items": {"type": "array", "minItems": 1000, "items": {"type": "string"}}}),
        ];
        for schema in huge {
            let out = p.generate(&asking(schema.clone())).await.unwrap();
            assert!(
                out.text.len() <= max_chars(8),
                "{schema}: {} chars",
                out.text.len()
            );
            assert_eq!(out.finish_reason, "length", "{schema}");
        }
        let small = serde_json::json!({"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "level": {"type": "integer"}}});
        let out = p.generate(&asking(small)).await.unwrap();
        assert_eq!(out.finish_reason, "stop");
        let value: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        assert_eq!(
            value["name"].as_str().map(|s| s.split(' ').count()),
            Some(8)
        );
        assert_eq!(value["level"], 1);
    }

    #[tokio::test]
    async fn failures_follow_the_requested_behaviour() {
        let p = MockProvider::default();
        let flaky = MockBehaviour {
            fail: Some(MockFailure::Transient),
            fail_attempts: Some(1),
            ..Default::default()
        };
        let err = p
            .generate(&input("x", 1, Some(flaky.clone())))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert!(p.generate(&input("x", 2, Some(flaky))).await.is_ok());
        let broken = MockBehaviour {
            fail: Some(MockFailure::Permanent),
            ..Default::default()
        };
        assert!(
            !p.generate(&input("x", 9, Some(broken)))
                .await
                .unwrap_err()
                .is_retryable()
        );
        let crash = MockBehaviour {
            fail: Some(MockFailure::Crash),
            ..Default::default()
        };
        assert!(
            !p.generate(&input("x", 1, Some(crash)))
                .await
                .unwrap_err()
                .is_retryable()
        );
    }
}
