//! The JSON Schema checks against what providers emit and what hostile tenants send: references,
//! patterns, recursion, sizes and deadlines.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

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

/// What `client.chat.completions.parse(response_format=Character)` sends for a Pydantic model
/// nesting another, a list of models, an Optional and an Enum (openai-python's
/// `to_strict_json_schema`).
fn pydantic_character() -> Value {
    json!({
        "$defs": {
            "Class": {"enum": ["bard", "rogue", "wizard"], "title": "Class", "type": "string"},
            "Item": {
                "additionalProperties": false,
                "properties": {
                    "name": {"title": "Name", "type": "string", "pattern": "^[A-Z][a-z]+$"},
                    "weight": {"title": "Weight", "type": "number"}
                },
                "required": ["name", "weight"], "title": "Item", "type": "object"
            },
            "Stats": {
                "additionalProperties": false,
                "properties": {"strength": {"title": "Strength", "type": "integer"}},
                "required": ["strength"], "title": "Stats", "type": "object"
            }
        },
        "additionalProperties": false,
        "properties": {
            "name": {"title": "Name", "type": "string"},
            "class_": {"$ref": "#/$defs/Class"},
            "stats": {"$ref": "#/$defs/Stats"},
            "inventory": {"items": {"$ref": "#/$defs/Item"}, "title": "Inventory", "type": "array"},
            "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Nickname"},
            "born": {"type": "string", "format": "date"}
        },
        "required": ["name", "class_", "stats", "inventory", "nickname", "born"],
        "title": "Character",
        "type": "object"
    })
}

fn vex() -> Value {
    json!({"name": "Vex", "class_": "rogue", "stats": {"strength": 9},
           "inventory": [{"name": "Rope", "weight": 1.5}], "nickname": null, "born": "not a date"})
}

#[test]
fn schemas_with_local_references_are_accepted_and_applied() {
    let s = pydantic_character();
    assert_eq!(check_schema(&s), Ok(()));
    assert_eq!(
        schema_violation(&s, &vex()),
        None,
        "format is an annotation"
    );
    let mut wrong = vex();
    wrong["inventory"][0]["name"] = json!("rope");
    let violation = schema_violation(&s, &wrong).unwrap();
    assert!(violation.starts_with("$.inventory[0].name:"), "{violation}");
    let mut wrong = vex();
    wrong["class_"] = json!("monk");
    let violation = schema_violation(&s, &wrong).unwrap();
    assert!(violation.starts_with("$.class_:"), "{violation}");
    let mut wrong = vex();
    wrong["stats"]["hp"] = json!(3);
    assert!(
        schema_violation(&s, &wrong)
            .unwrap()
            .starts_with("$.stats:")
    );
}

#[test]
fn references_outside_the_schema_are_refused() {
    for reference in [
        "http://127.0.0.1:9/schema.json",
        "https://example.com/s#/$defs/a",
        "file:///etc/passwd",
        "other.json",
        "#anchor",
        "#/$defs/missing",
        "#/properties/a/type",
    ] {
        let s = json!({"type": "object", "$defs": {"a": {"type": "string"}},
                       "properties": {"a": {"$ref": reference}}});
        let err = check_schema(&s).unwrap_err();
        assert!(err.contains("#/properties/a/$ref"), "{reference}: {err}");
    }
    let nested_id = json!({"$defs": {"a": {"$id": "http://127.0.0.1:9/", "type": "string"}}});
    assert!(check_schema(&nested_id).unwrap_err().contains("$id"));
    let dynamic = json!({"$dynamicRef": "#meta"});
    assert!(check_schema(&dynamic).unwrap_err().contains("$dynamicRef"));
    let meta = json!({"$schema": "http://127.0.0.1:9/meta", "type": "string"});
    assert!(check_schema(&meta).is_err());
    // A root `$id` names the schema; its local references still resolve inside it.
    let named = json!({"$id": "https://example.com/character", "$defs": {"a": {"type": "string"}},
                       "properties": {"a": {"$ref": "#/$defs/a"}}});
    assert_eq!(check_schema(&named), Ok(()));
    assert!(schema_violation(&named, &json!({"a": 1})).is_some());
}

#[test]
fn malformed_schemas_are_refused_with_where() {
    assert!(check_schema(&schema()).is_ok());
    let err = check_schema(&json!({"type": "thing"})).unwrap_err();
    assert!(err.starts_with("#/type"), "{err}");
    assert!(check_schema(&json!(3)).is_err());
    let err = check_schema(&json!({"properties": {"a": {"minLength": -1}}})).unwrap_err();
    assert!(err.starts_with("#/properties/a"), "{err}");
    // The linear-time engine has no look-around or back-references.
    let err = check_schema(&json!({"pattern": "(a)\\1"})).unwrap_err();
    assert!(err.starts_with("#"), "{err}");
}

#[test]
fn catastrophic_patterns_are_harmless_and_long_ones_refused() {
    let s = json!({"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^(a+)+$"},
        "b": {"type": "string", "pattern": "(x+x+)+y"}}});
    assert_eq!(check_schema(&s), Ok(()));
    let hostile = format!("{}!", "a".repeat(100_000));
    let checked = schema_violation_before(
        &s,
        &json!({"a": hostile, "b": "x".repeat(100_000)}),
        Instant::now() + Duration::from_secs(600),
    );
    assert!(checked.is_ok_and(|v| v.is_some_and(|v| v.starts_with("$.a:"))));
    let long = json!({"pattern": "a".repeat(MAX_PATTERN_CHARS + 1)});
    assert!(check_schema(&long).unwrap_err().contains("at most"));
    let long_name = json!({"patternProperties": {"b".repeat(MAX_PATTERN_CHARS + 1): {}}});
    assert!(check_schema(&long_name).is_err());
    // Short, but its automaton would be huge.
    for wide in ["([^a]b){3000}", "((((a{10}){10}){10}){10}){10}"] {
        let err = check_schema(&json!({"pattern": wide})).unwrap_err();
        assert!(err.starts_with("#/pattern"), "{err}");
    }
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
            .starts_with("$.level:")
    );
    assert!(
        schema_violation(&s, &json!({"name": "Vex", "level": 2.5}))
            .unwrap()
            .contains("integer")
    );
    assert!(schema_violation(&s, &json!({"name": "Vex", "level": 2, "class": "monk"})).is_some());
    assert!(schema_violation(&s, &json!({"name": "Vex", "level": 2, "hp": 9})).is_some());
    let many = json!({"name": "Vex", "level": 2, "traits": ["a", "b", "c", "d"]});
    assert!(
        schema_violation(&s, &many)
            .unwrap()
            .starts_with("$.traits:")
    );
    let any = json!({"anyOf": [{"type": "string"}, {"type": "integer"}]});
    assert_eq!(schema_violation(&any, &json!(4)), None);
    assert!(schema_violation(&any, &json!(true)).is_some());
    // A violation quoting a large value is cut.
    let big = json!({"name": "x".repeat(10_000), "level": 2, "hp": 1});
    assert!(schema_violation(&s, &big).unwrap().chars().count() < 400);
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
    // So they do through references.
    let referenced = json!({"$defs": {"row": {"type": "array", "minItems": 2000,
                                              "items": {"type": "string", "minLength": 2000}}},
                            "type": "object", "required": ["a"],
                            "properties": {"a": {"$ref": "#/$defs/row"}}});
    assert!(
        check_schema(&referenced)
            .unwrap_err()
            .contains("smallest value")
    );
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
fn recursive_schemas_pass_unless_every_value_must_contain_itself() {
    // A tree: children are optional, or an empty list, or null.
    let tree = json!({"type": "object", "required": ["name", "children"],
        "properties": {"name": {"type": "string"},
                       "children": {"type": "array", "items": {"$ref": "#"}}}});
    assert_eq!(check_schema(&tree), Ok(()));
    let leaf = json!({"name": "a", "children": [{"name": "b", "children": []}]});
    assert_eq!(schema_violation(&tree, &leaf), None);
    assert!(schema_violation(&tree, &json!({"name": "a", "children": [{"name": 1}]})).is_some());
    let linked = json!({"$defs": {"node": {"type": "object", "required": ["next"],
        "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}}},
        "$ref": "#/$defs/node"});
    assert_eq!(check_schema(&linked), Ok(()));
    // Every node needs a next node: no finite value matches.
    let endless = json!({"$defs": {"node": {"type": "object", "required": ["next"],
        "properties": {"next": {"$ref": "#/$defs/node"}}}}, "$ref": "#/$defs/node"});
    assert!(check_schema(&endless).unwrap_err().contains("no end"));
    let endless_list = json!({"type": "array", "minItems": 1, "items": {"$ref": "#"}});
    assert!(check_schema(&endless_list).unwrap_err().contains("no end"));
    let mutual = json!({"$defs": {
        "a": {"type": "object", "required": ["b"], "properties": {"b": {"$ref": "#/$defs/b"}}},
        "b": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/a"}}},
        "$ref": "#/$defs/a"});
    assert!(check_schema(&mutual).unwrap_err().contains("no end"));
}

#[test]
fn references_that_expand_exponentially_are_refused() {
    // Each definition refers twice to the one before: 2^40 paths.
    let mut defs = serde_json::Map::new();
    defs.insert("d0".into(), json!({"type": "string"}));
    for i in 1..40 {
        let before = format!("#/$defs/d{}", i - 1);
        let pair = json!({"type": "array", "minItems": 2,
            "prefixItems": [{"$ref": before}, {"$ref": before}]});
        defs.insert(format!("d{i}"), pair);
    }
    let s = json!({"$defs": defs, "$ref": "#/$defs/d39"});
    // Sizes of definitions met without a cycle are remembered: computed once each.
    let err = check_schema(&s).unwrap_err();
    assert!(err.contains("smallest value"), "{err}");
}

#[test]
fn a_check_past_its_deadline_stops_and_says_so() {
    // Every item matches one branch of many: each is checked against all of them.
    let mut branches = vec![json!({"type": "integer"})];
    branches.extend((0..200).map(|_| json!({"type": "null"})));
    let schema = json!({"type": "array", "items": {"oneOf": branches}});
    let value = Value::Array(vec![json!(1); 2_000]);
    let past = Instant::now();
    assert_eq!(schema_violation_before(&schema, &value, past), Err(TooSlow));
    let later = Instant::now() + Duration::from_secs(600);
    assert_eq!(schema_violation_before(&schema, &value, later), Ok(None));
    let wrong = Value::Array(vec![json!("a")]);
    assert!(schema_violation_before(&schema, &wrong, later).is_ok_and(|v| v.is_some()));
}

#[test]
fn nested_alternatives_stop_at_the_deadline_however_many_paths_remain() {
    // 12 levels of 8 references to the level below, all failing at the bottom: 8^12 paths
    // per item, from a schema of a few hundred bytes.
    let mut defs = serde_json::Map::new();
    defs.insert("l0".into(), json!({"type": "integer", "minimum": 10}));
    for i in 1..=12 {
        let below = json!({"$ref": format!("#/$defs/l{}", i - 1)});
        defs.insert(format!("l{i}"), json!({"anyOf": vec![below; 8]}));
    }
    let s = json!({"$defs": defs, "type": "array", "items": {"$ref": "#/$defs/l12"}});
    assert_eq!(check_schema(&s), Ok(()));
    let checked = schema_violation_before(
        &s,
        &json!([1, 2, 3]),
        Instant::now() + Duration::from_millis(50),
    );
    assert_eq!(checked, Err(TooSlow));
}
