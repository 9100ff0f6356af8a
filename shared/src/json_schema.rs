//! JSON Schema, as far as the service checks it: a request's `response_format` schema and a
//! template's output schema are checked at submit ([`check_schema`]), and answers are checked
//! against them ([`schema_violation`], used by the worker's response validation).
//!
//! The support is the structural core that generation schemas use: `type` (one or a
//! list), `properties`, `required`, `additionalProperties`, `items`, `minItems`, `maxItems`,
//! `enum`, `const`, `minLength`, `maxLength`, `minimum`, `maximum`, `exclusiveMinimum`,
//! `exclusiveMaximum`, `anyOf`, `oneOf`, `allOf`, `not`, and annotations. A schema using any
//! other keyword is refused at submit ([`check_schema`]) rather than half-checked.

use serde_json::Value;

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

/// Deepest nesting of subschemas accepted.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Largest "smallest value" a schema may demand, counted in strings' characters and in
/// arrays', objects' and scalars' elements: no generation writes more (a model's output is
/// bounded by its max tokens), and checking or producing such a value would only cost a worker
/// CPU and memory.
pub const MAX_INSTANCE_SIZE: u64 = 1_000_000;

/// Checks that a schema only uses supported keywords, is well-formed, at most
/// [`MAX_SCHEMA_DEPTH`] deep, and can be met by a value of at most [`MAX_INSTANCE_SIZE`]; the
/// error says where.
pub fn check_schema(schema: &Value) -> Result<(), String> {
    check_at(schema, "#", 0)?;
    let size = min_instance_size(schema);
    if size > MAX_INSTANCE_SIZE {
        return Err(format!(
            "#: the smallest value this schema allows has over {MAX_INSTANCE_SIZE} elements \
             (minLength, minItems)"
        ));
    }
    Ok(())
}

/// The size of the smallest value `schema` allows (as the mock provider builds it: every
/// property, at least one item), saturating; only for schemas [`check_at`] accepted.
fn min_instance_size(schema: &Value) -> u64 {
    let Value::Object(map) = schema else {
        return 1;
    };
    let count = |key: &str| map.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mut size = 1_u64.max(count("minLength"));
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        size = props
            .values()
            .fold(size, |n, sub| n.saturating_add(min_instance_size(sub)));
    }
    if let Some(items) = map.get("items") {
        let each = min_instance_size(items);
        size = size.saturating_add(count("minItems").max(1).saturating_mul(each));
    } else {
        size = size.saturating_add(count("minItems"));
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = map.get(key).and_then(Value::as_array) {
            let largest = list.iter().map(min_instance_size).max().unwrap_or(0);
            size = size.saturating_add(largest);
        }
    }
    size
}

fn check_at(schema: &Value, at: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_SCHEMA_DEPTH {
        return Err(format!(
            "{at}: subschemas nest deeper than {MAX_SCHEMA_DEPTH} levels"
        ));
    }
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
                    check_at(sub, &format!("{here}/{name}"), depth + 1)?;
                }
            }
            "items" | "additionalProperties" | "not" => check_at(value, &here, depth + 1)?,
            "anyOf" | "oneOf" | "allOf" => {
                let Value::Array(list) = value else {
                    return Err(format!("{here}: must be an array"));
                };
                for (i, sub) in list.iter().enumerate() {
                    check_at(sub, &format!("{here}/{i}"), depth + 1)?;
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
    violation_at(schema, value, "$", &mut Clock::unbounded())
}

/// The check of [`schema_violation`] ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("checking the value against its schema took too long")]
pub struct TooSlow;

/// [`schema_violation`], given up once `deadline` has passed. A large value checked against a
/// wide schema (many `anyOf` / `oneOf` branches at every item) costs their product, so the
/// check looks at the clock as it goes and stops, instead of holding its thread for minutes.
pub fn schema_violation_before(
    schema: &Value,
    value: &Value,
    deadline: std::time::Instant,
) -> Result<Option<String>, TooSlow> {
    let mut clock = Clock {
        deadline: Some(deadline),
        steps: 0,
        expired: false,
    };
    let violation = violation_at(schema, value, "$", &mut clock);
    if clock.expired {
        return Err(TooSlow);
    }
    Ok(violation)
}

/// Steps of a check and its deadline; once expired, every step fails at once so that the
/// check unwinds quickly.
struct Clock {
    deadline: Option<std::time::Instant>,
    steps: u32,
    expired: bool,
}

impl Clock {
    /// Looks at the time every this many steps (reading the clock is not free).
    const EVERY: u32 = 1024;

    fn unbounded() -> Self {
        Self {
            deadline: None,
            steps: 0,
            expired: false,
        }
    }

    /// One more step; `true` once the deadline has passed.
    fn expired(&mut self) -> bool {
        if self.expired {
            return true;
        }
        self.steps = self.steps.wrapping_add(1);
        if self.steps.is_multiple_of(Self::EVERY)
            && let Some(deadline) = self.deadline
        {
            self.expired = std::time::Instant::now() >= deadline;
        }
        self.expired
    }
}

fn violation_at(schema: &Value, value: &Value, at: &str, clock: &mut Clock) -> Option<String> {
    if clock.expired() {
        return Some(format!("{at}: not checked in time"));
    }
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
                        if let Some(v) = violation_at(sub, item, &here, clock) {
                            return Some(v);
                        }
                    }
                    None => {
                        if let Some(extra) = map.get("additionalProperties")
                            && let Some(v) = violation_at(extra, item, &here, clock)
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
                    if let Some(v) = violation_at(sub, item, &format!("{at}[{i}]"), clock) {
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
            if let Some(v) = violation_at(sub, value, at, clock) {
                return Some(v);
            }
        }
    }
    if let Some(any) = map.get("anyOf").and_then(Value::as_array)
        && !any
            .iter()
            .any(|sub| violation_at(sub, value, at, clock).is_none())
    {
        return Some(format!("{at}: matches none of anyOf"));
    }
    if let Some(one) = map.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|sub| violation_at(sub, value, at, clock).is_none())
            .count();
        if matching != 1 {
            return Some(format!(
                "{at}: matches {matching} of oneOf, not exactly one"
            ));
        }
    }
    if let Some(not) = map.get("not")
        && violation_at(not, value, at, clock).is_none()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn schemas_demanding_huge_or_deeply_nested_values_are_refused() {
        let long = json!({"type": "string", "minLength": 50_000_000});
        assert!(check_schema(&long).unwrap_err().contains("smallest value"));
        let many = json!({"type": "array", "minItems": 1_000_000_000_000_u64});
        assert!(check_schema(&many).is_err());
        // Each level is modest; together they multiply.
        let nested = json!({"type": "array", "minItems": 2000,
            "items": {"type": "array", "minItems": 2000, "items": {"type": "string"}}});
        assert!(check_schema(&nested).is_err());
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(check_schema(&deep).unwrap_err().contains("deeper"));
        // Ordinary schemas, with generous upper bounds, pass.
        let fine = json!({"type": "array", "minItems": 3, "maxItems": 1_000_000_000_u64,
            "items": {"type": "string", "minLength": 1000, "maxLength": 50_000_000}});
        assert!(check_schema(&fine).is_ok());
    }

    #[test]
    fn a_check_past_its_deadline_stops_and_says_so() {
        // Every item matches one branch of many: each is checked against all of them.
        let mut branches = vec![json!({"type": "integer"})];
        branches.extend((0..200).map(|_| json!({"type": "null"})));
        let schema = json!({"type": "array", "items": {"oneOf": branches}});
        let value = Value::Array(vec![json!(1); 2_000]);
        let past = std::time::Instant::now();
        assert_eq!(schema_violation_before(&schema, &value, past), Err(TooSlow));
        let later = std::time::Instant::now() + std::time::Duration::from_secs(600);
        assert_eq!(schema_violation_before(&schema, &value, later), Ok(None));
        let wrong = Value::Array(vec![json!("a")]);
        assert!(schema_violation_before(&schema, &wrong, later).is_ok_and(|v| v.is_some()));
    }
}
