//! Response validation: an answer counts as a success only if it is usable. Empty output is a
//! failed attempt; when JSON was asked for, output that does not parse, was cut by the token
//! limit, or does not match the request's JSON Schema is a failed attempt too (retried, then
//! the next model), never a success.

use llm_shared::generation::{GenerationOutput, GenerationParams};
use llm_shared::json_schema::schema_violation;
use serde_json::Value;

use crate::providers::ProviderError;

/// Validates an answer against what the request asked for. On success returns the text to
/// store: for JSON output, the JSON itself (a surrounding Markdown code fence is removed).
pub fn validate_output(
    output: &GenerationOutput,
    params: &GenerationParams,
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
    if let Some(schema) = schema
        && let Some(violation) = schema_violation(schema, &value)
    {
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
    use super::*;
    use llm_shared::generation::ResponseFormat;
    use serde_json::json;

    fn output(text: &str, finish: &str) -> GenerationOutput {
        GenerationOutput {
            text: text.into(),
            prompt_tokens: 1,
            completion_tokens: 1,
            finish_reason: finish.into(),
            upstream_model: "m".into(),
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
