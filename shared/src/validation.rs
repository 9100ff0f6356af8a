//! Response validation: an answer counts as a success only if it is usable. Empty output is a
//! failed attempt; when JSON was asked for, output that does not parse, was cut by the token
//! limit, or does not match the request's JSON Schema is a failed attempt too (retried, then
//! the next model), never a success.
//!
//! JSON Schema support is the structural core that generation schemas use: `type` (one or a
//! list), `properties`, `required`, `additionalProperties`, `items`, `minItems`, `maxItems`,
//! `enum`, `const`, `minLength`, `maxLength`, `minimum`, `maximum`, `exclusiveMinimum`,
//! `exclusiveMaximum`, `anyOf`, `oneOf`, `allOf`, `not`, and annotations. A schema using any
//! other keyword is refused at submit ([`check_schema`]) rather than half-checked.

use serde_json::Value;

use crate::providers::{GenerationOutput, GenerationParams, ProviderError};

const KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
];
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "$comment",
];
const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Checks that a schema only uses supported keywords and is well-formed; the error says where.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_at(schema, "#")
}

fn check_at(schema: &Value, at: &str) -> Result<(), String> {
    let Value::Object(map) = schema else {
        return match schema {
            Value::Bool(_) => Ok(()),
            _ => Err(format!("{at}: a schema must be an object or a boolean")),
        };
    };
    for (key, value) in map {
        let here = format!("{at}/{key}");
        match key.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "type" => {
                let names: Vec<&Value> = match value {
                    Value::Array(list) => list.iter().collect(),
                    other => vec![other],
                };
                for name in names {
                    if !name.as_str().is_some_and(|n| TYPES.contains(&n)) {
                        return Err(format!("{here}: unknown type {name}"));
                    }
                }
            }
            "properties" => {
                let Value::Object(props) = value else {
                    return Err(format!("{here}: must be an object"));
                };
                for (name, sub) in props {
                    check_at(sub, &format!("{here}/{name}"))?;
                }
            }
            "items" | "additionalProperties" | "not" => check_at(value, &here)?,
            "anyOf" | "oneOf" | "allOf" => {
                let Value::Array(list) = value else {
                    return Err(format!("{here}: must be an array"));
                };
                for (i, sub) in list.iter().enumerate() {
                    check_at(sub, &format!("{here}/{i}"))?;
                }
            }
            "required" => {
                if !value
                    .as_array()
                    .is_some_and(|l| l.iter().all(Value::is_string))
                {
                    return Err(format!("{here}: must be an array of strings"));
                }
            }
            "enum" => {
                if !value.is_array() {
                    return Err(format!("{here}: must be an array"));
                }
            }
            "minItems" | "maxItems" | "minLength" | "maxLength" => {
                if !value.is_u64() {
                    return Err(format!("{here}: must be a non-negative integer"));
                }
            }
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                if !value.is_number() {
                    return Err(format!("{here}: must be a number"));
                }
            }
            "const" => {}
            other => {
                let supported = KEYWORDS.join(", ");
                return Err(format!(
                    "{at}: the keyword `{other}` is not supported (supported: {supported})"
                ));
            }
        }
    }
    Ok(())
}

/// Where a value breaks a (checked) schema, or `None` when it matches.
pub fn schema_violation(schema: &Value, value: &Value) -> Option<String> {
    violation_at(schema, value, "$")
}

fn violation_at(schema: &Value, value: &Value, at: &str) -> Option<String> {
    let map = match schema {
        Value::Bool(true) => return None,
        Value::Bool(false) => return Some(format!("{at}: no value is allowed here")),
        Value::Object(map) => map,
        _ => return None,
    };
    if let Some(types) = map.get("type") {
        let allowed: Vec<&str> = match types {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            Value::String(t) => vec![t.as_str()],
            _ => vec![],
        };
        if !allowed.iter().any(|t| has_type(value, t)) {
            return Some(format!(
                "{at}: expected {}, found {}",
                allowed.join(" or "),
                type_name(value)
            ));
        }
    }
    if let Some(options) = map.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        return Some(format!("{at}: not one of the allowed values"));
    }
    if let Some(expected) = map.get("const")
        && expected != value
    {
        return Some(format!("{at}: must equal {expected}"));
    }
    match value {
        Value::Object(object) => {
            let props = map.get("properties").and_then(Value::as_object);
            for name in map
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !object.contains_key(name) {
                    return Some(format!("{at}: missing required property `{name}`"));
                }
            }
            for (name, item) in object {
                let here = format!("{at}.{name}");
                match props.and_then(|p| p.get(name)) {
                    Some(sub) => {
                        if let Some(v) = violation_at(sub, item, &here) {
                            return Some(v);
                        }
                    }
                    None => {
                        if let Some(extra) = map.get("additionalProperties")
                            && let Some(v) = violation_at(extra, item, &here)
                        {
                            return Some(v);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if map
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|min| len < min)
            {
                return Some(format!("{at}: fewer items than allowed"));
            }
            if map
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|max| len > max)
            {
                return Some(format!("{at}: more items than allowed"));
            }
            if let Some(sub) = map.get("items") {
                for (i, item) in items.iter().enumerate() {
                    if let Some(v) = violation_at(sub, item, &format!("{at}[{i}]")) {
                        return Some(v);
                    }
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if map
                .get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|min| len < min)
            {
                return Some(format!("{at}: shorter than allowed"));
            }
            if map
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|max| len > max)
            {
                return Some(format!("{at}: longer than allowed"));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let bound = |k: &str| map.get(k).and_then(Value::as_f64);
            if bound("minimum").is_some_and(|m| x < m)
                || bound("maximum").is_some_and(|m| x > m)
                || bound("exclusiveMinimum").is_some_and(|m| x <= m)
                || bound("exclusiveMaximum").is_some_and(|m| x >= m)
            {
                return Some(format!("{at}: {x} is out of range"));
            }
        }
        _ => {}
    }
    if let Some(all) = map.get("allOf").and_then(Value::as_array) {
        for sub in all {
            if let Some(v) = violation_at(sub, value, at) {
                return Some(v);
            }
        }
    }
    if let Some(any) = map.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|sub| violation_at(sub, value, at).is_none())
    {
        return Some(format!("{at}: matches none of anyOf"));
    }
    if let Some(one) = map.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|sub| violation_at(sub, value, at).is_none())
            .count();
        if matching != 1 {
            return Some(format!(
                "{at}: matches {matching} of oneOf, not exactly one"
            ));
        }
    }
    if let Some(not) = map.get("not")
        && violation_at(not, value, at).is_none()
    {
        return Some(format!("{at}: matches a schema it must not match"));
    }
    None
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.as_f64().is_some_and(|x| x.fract() == 0.0),
        _ => false,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

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
    use crate::providers::ResponseFormat;
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

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["name", "level"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "level": {"type": "integer", "minimum": 1, "maximum": 20},
                "class": {"enum": ["bard", "rogue"]},
                "traits": {"type": "array", "items": {"type": "string"}, "maxItems": 3}
            },
            "additionalProperties": false
        })
    }

    #[test]
    fn schemas_are_checked_for_supported_keywords() {
        assert!(check_schema(&schema()).is_ok());
        let err = check_schema(&json!({"type": "object", "properties": {"a": {"$ref": "#/x"}}}))
            .unwrap_err();
        assert!(
            err.contains("#/properties/a") && err.contains("$ref"),
            "{err}"
        );
        assert!(check_schema(&json!({"type": "thing"})).is_err());
        assert!(check_schema(&json!(3)).is_err());
    }

    #[test]
    fn values_are_validated_against_schemas() {
        let s = schema();
        assert_eq!(
            schema_violation(&s, &json!({"name": "Vex", "level": 3, "traits": ["sly"]})),
            None
        );
        assert!(
            schema_violation(&s, &json!({"name": "Vex"}))
                .unwrap()
                .contains("level")
        );
        assert!(
            schema_violation(&s, &json!({"name": "Vex", "level": 30}))
                .unwrap()
                .contains("out of range")
        );
        assert!(
            schema_violation(&s, &json!({"name": "Vex", "level": 2.5}))
                .unwrap()
                .contains("integer")
        );
        assert!(
            schema_violation(&s, &json!({"name": "Vex", "level": 2, "class": "monk"})).is_some()
        );
        assert!(schema_violation(&s, &json!({"name": "Vex", "level": 2, "hp": 9})).is_some());
        assert!(
            schema_violation(
                &s,
                &json!({"name": "Vex", "level": 2, "traits": ["a", "b", "c", "d"]})
            )
            .is_some()
        );
        let any = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
        assert_eq!(schema_violation(&any, &json!(4)), None);
        assert!(schema_violation(&any, &json!(true)).is_some());
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
            response_format: Some(ResponseFormat::JsonSchema { schema: schema() }),
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
