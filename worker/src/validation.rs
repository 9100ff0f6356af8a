//! Response validation: an answer counts as a success only if it is usable. Empty output is a
//! failed attempt; when JSON was asked for, output that does not parse, was cut by the token
//! limit, or does not match the request's JSON Schema is a failed attempt too (retried, then
//! the next model), never a success; so is an answer that ignores the request's tool choice
//! (no call when one is required, another tool than the one named, a call when none is
//! allowed): OpenAI and Anthropic follow `tool_choice` themselves, Ollama takes none.
//!
//! The schema is compiled once per check (`llm_shared::json_schema`, the `jsonschema` crate),
//! and a violation is reported with its place in the answer (`$.party[1].name: ...`).
//!
//! Checking a JSON answer is CPU work that grows with the answer's size times the schema's
//! width, so the job loop does not do it itself: [`validate_off_runtime`] runs it on tokio's
//! blocking threads within a time bound (`VALIDATION_TIMEOUT_MS`), and a check that takes
//! longer stops and fails the request (`validation_timeout`). One heavy answer can then hold
//! neither the worker's heartbeats and lease renewals nor its other jobs.

use std::time::{Duration, Instant};

use llm_shared::generation::{GenerationOutput, GenerationParams, ToolChoice};
use llm_shared::json_schema::schema_violation_before;
use serde_json::Value;

use crate::providers::ProviderError;

/// How much longer than its bound the job waits for a check before it stops waiting (the check
/// looks at the clock itself; this only covers a thread pool too busy to start it).
const WAIT_GRACE: Duration = Duration::from_secs(1);

/// Validates `output` as [`validate_output`] does, a JSON answer off the async runtime and
/// within `limit`; on success, the output with the text to store.
pub async fn validate_off_runtime(
    output: GenerationOutput,
    params: &GenerationParams,
    limit: Duration,
) -> Result<GenerationOutput, ProviderError> {
    if let Some(unmet) = unmet_tool_choice(&output, params) {
        return Err(ProviderError::InvalidOutput { message: unmet });
    }
    // An answer of tool calls is the calls (their arguments are the client's to check), with
    // whatever text came along them, possibly none.
    if !output.tool_calls.is_empty() {
        return Ok(output);
    }
    if params.json_output().is_none() {
        let text = validate_output(&output, params)?;
        return Ok(GenerationOutput { text, ..output });
    }
    let params = params.clone();
    let check = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        validate_before(&output, &params, Some((deadline, limit)))
            .map(|text| GenerationOutput { text, ..output })
    });
    match tokio::time::timeout(limit + WAIT_GRACE, check).await {
        Ok(Ok(checked)) => checked,
        Ok(Err(panicked)) => Err(ProviderError::InvalidOutput {
            message: format!("the answer could not be validated: {panicked}"),
        }),
        Err(_) => Err(ProviderError::ValidationTimeout(limit)),
    }
}

/// How an answer ignores the request's `tool_choice`, if it does.
fn unmet_tool_choice(output: &GenerationOutput, params: &GenerationParams) -> Option<String> {
    let calls = &output.tool_calls;
    match params.tool_choice.as_ref()? {
        ToolChoice::Required if calls.is_empty() => {
            Some("the request requires a tool call and the answer makes none".into())
        }
        ToolChoice::Tool { name } => match calls.iter().find(|c| &c.name != name) {
            // The model's name for it, cut: it is the model's text, not a declared tool's.
            Some(other) => Some(format!(
                "the request requires a call of `{name}` and the answer calls `{}`",
                other.name.chars().take(64).collect::<String>()
            )),
            None if calls.is_empty() => Some(format!(
                "the request requires a call of `{name}` and the answer makes none"
            )),
            None => None,
        },
        ToolChoice::None if !calls.is_empty() => {
            Some("the request allows no tool call and the answer makes one".into())
        }
        _ => None,
    }
}

/// Validates an answer against what the request asked for. On success returns the text to
/// store: for JSON output, the JSON itself (a surrounding Markdown code fence is removed).
pub fn validate_output(
    output: &GenerationOutput,
    params: &GenerationParams,
) -> Result<String, ProviderError> {
    validate_before(output, params, None)
}

/// [`validate_output`], the schema check given up at `deadline` (`limit` after its start).
fn validate_before(
    output: &GenerationOutput,
    params: &GenerationParams,
    deadline: Option<(Instant, Duration)>,
) -> Result<String, ProviderError> {
    let invalid = |message: String| ProviderError::InvalidOutput { message };
    if output.text.trim().is_empty() {
        return Err(invalid("the provider returned empty output".into()));
    }
    let Some(schema) = params.json_output() else {
        return Ok(output.text.clone());
    };
    if output.finish_reason == "length" {
        return Err(invalid("JSON output was cut by the token limit".into()));
    }
    let text = strip_code_fence(output.text.trim());
    let value: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("output is not valid JSON: {e}")))?;
    let Some(schema) = schema else {
        return Ok(text.to_owned());
    };
    // Without a deadline: one far enough away never to be met.
    let (deadline, limit) =
        deadline.unwrap_or_else(|| (Instant::now() + Duration::from_secs(86_400), Duration::MAX));
    let violation = schema_violation_before(schema, &value, deadline)
        .map_err(|_| ProviderError::ValidationTimeout(limit))?;
    if let Some(violation) = violation {
        return Err(invalid(format!(
            "output does not match the JSON Schema: {violation}"
        )));
    }
    Ok(text.to_owned())
}

fn strip_code_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let Some(body_start) = rest.find('\n') else {
        return text;
    };
    rest[body_start + 1..]
        .strip_suffix("```")
        .map_or(text, str::trim)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn an_answer_of_tool_calls_without_text_is_not_empty() {
        let calls = GenerationOutput {
            text: String::new(),
            tool_calls: vec![llm_shared::generation::ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{}".into(),
            }],
            ..output("", "tool_calls")
        };
        let checked = validate_off_runtime(
            calls.clone(),
            &GenerationParams::default(),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(checked.ok(), Some(calls));
        let empty = validate_off_runtime(
            output("", "stop"),
            &GenerationParams::default(),
            Duration::from_secs(1),
        )
        .await;
        assert!(empty.is_err());
    }

    use super::*;
    use llm_shared::generation::ResponseFormat;
    use serde_json::json;

    /// An answer that ignores the request's tool choice is a failed attempt; one that follows
    /// it, or a request without a choice, passes.
    #[tokio::test]
    async fn an_answer_that_ignores_the_tool_choice_is_a_failed_attempt() {
        let call = |name: &str| GenerationOutput {
            tool_calls: vec![llm_shared::generation::ToolCall {
                id: "call_0".into(),
                name: name.into(),
                arguments: "{}".into(),
            }],
            ..output("", "tool_calls")
        };
        let text = output("It is sunny.", "stop");
        let named = |name: &str| ToolChoice::Tool { name: name.into() };
        let cases = [
            (Some(ToolChoice::Required), text.clone(), false),
            (Some(ToolChoice::Required), call("get_weather"), true),
            (Some(named("get_weather")), text.clone(), false),
            (Some(named("get_weather")), call("get_time"), false),
            (Some(named("get_weather")), call("get_weather"), true),
            (Some(ToolChoice::None), call("get_weather"), false),
            (Some(ToolChoice::None), text.clone(), true),
            (Some(ToolChoice::Auto), text.clone(), true),
            (Some(ToolChoice::Auto), call("get_weather"), true),
            (None, text, true),
        ];
        for (choice, answer, passes) in cases {
            let params = GenerationParams {
                tool_choice: choice.clone(),
                ..Default::default()
            };
            let checked =
                validate_off_runtime(answer.clone(), &params, Duration::from_secs(1)).await;
            assert_eq!(
                checked.is_ok(),
                passes,
                "{choice:?} answered by {answer:?}: {checked:?}"
            );
            if let Err(err) = checked {
                assert!(
                    matches!(err, ProviderError::InvalidOutput { .. }),
                    "{err:?}"
                );
            }
        }
    }

    fn output(text: &str, finish: &str) -> GenerationOutput {
        GenerationOutput {
            text: text.into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            finish_reason: finish.into(),
            upstream_model: "m".into(),
            tool_calls: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_schema_check_past_its_bound_fails_the_request() {
        // Every item matches one branch of many: each is checked against all of them.
        let mut branches = vec![json!({"type": "integer"})];
        branches.extend((0..500).map(|_| json!({"type": "null"})));
        let params = GenerationParams {
            response_format: Some(ResponseFormat::JsonSchema {
                schema: json!({"type": "array", "items": {"oneOf": branches}}),
                name: None,
                strict: None,
            }),
            ..Default::default()
        };
        let ones = format!("[{}1]", "1,".repeat(200_000));
        let slow = validate_off_runtime(output(&ones, "stop"), &params, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(slow.kind(), "validation_timeout");
        assert!(!slow.is_retryable() && !slow.falls_back(), "{slow}");
        let fine = validate_off_runtime(output("[1]", "stop"), &params, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(fine.text, "[1]");
    }

    #[test]
    fn a_violation_deep_in_a_referenced_definition_names_its_place() {
        let params = GenerationParams {
            response_format: Some(ResponseFormat::JsonSchema {
                schema: json!({
                    "$defs": {"Member": {"type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string", "pattern": "^[A-Z]"},
                                       "role": {"enum": ["tank", "healer"]}}}},
                    "type": "object",
                    "properties": {"party": {"type": "array", "items": {"$ref": "#/$defs/Member"}}}
                }),
                name: None,
                strict: None,
            }),
            ..Default::default()
        };
        let fine = r#"{"party": [{"name": "Vex", "role": "tank"}]}"#;
        assert!(validate_output(&output(fine, "stop"), &params).is_ok());
        for (answer, place) in [
            (
                r#"{"party": [{"name": "Vex"}, {"name": "vex"}]}"#,
                "$.party[1].name:",
            ),
            (
                r#"{"party": [{"name": "Vex", "role": "bard"}]}"#,
                "$.party[0].role:",
            ),
        ] {
            let err = validate_output(&output(answer, "stop"), &params).unwrap_err();
            assert_eq!(err.kind(), "invalid_output");
            assert!(err.to_string().contains(place), "{err}");
        }
    }

    #[test]
    fn outputs_are_validated_against_the_request() {
        let text = GenerationParams::default();
        assert!(validate_output(&output("  ", "stop"), &text).is_err());
        assert_eq!(
            validate_output(&output("hello", "length"), &text).unwrap(),
            "hello"
        );

        let json_any = GenerationParams {
            response_format: Some(ResponseFormat::JsonObject),
            ..Default::default()
        };
        assert!(validate_output(&output("not json", "stop"), &json_any).is_err());
        assert!(validate_output(&output("{\"a\": 1", "length"), &json_any).is_err());
        assert_eq!(
            validate_output(&output("```json\n{\"a\": 1}\n```", "stop"), &json_any).unwrap(),
            "{\"a\": 1}"
        );

        let with_schema = GenerationParams {
            response_format: Some(ResponseFormat::JsonSchema {
                schema: json!({"type": "object", "required": ["name", "level"]}),
                name: None,
                strict: None,
            }),
            ..Default::default()
        };
        let err =
            validate_output(&output("{\"name\": \"Vex\"}", "stop"), &with_schema).unwrap_err();
        assert!(!err.to_string().is_empty() && err.is_retryable());
        assert!(
            validate_output(
                &output("{\"name\": \"Vex\", \"level\": 4}", "stop"),
                &with_schema
            )
            .is_ok()
        );
    }
}
