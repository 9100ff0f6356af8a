//! JSON Schema: a request's `response_format` schema and a template's output schema are
//! checked at submit ([`check_schema`]), and answers are checked against them
//! ([`schema_violation_before`], used by the worker's response validation).
//!
//! The `jsonschema` crate compiles and applies them: draft 2020-12 unless the schema's
//! `$schema` names another draft, every keyword (`$defs` and `$ref`, `anyOf`, `pattern`,
//! `enum`, `const`, ...), `format` as an annotation only, as OpenAI's structured outputs and
//! Pydantic's schemas use them. What a hostile schema could make expensive is bounded here:
//! - references stay inside the schema: `$ref` is `#` or a JSON pointer `#/...` to one of its
//!   subschemas (the crate is built without its HTTP and file retrieval, and compiles offline);
//!   `$id` only at the root; `$anchor`, `$dynamicRef` and their kin are refused;
//! - subschemas nest at most [`MAX_SCHEMA_DEPTH`] deep, and a schema's smallest allowed value
//!   is at most [`MAX_INSTANCE_SIZE`] (references followed; one that must contain itself is
//!   refused);
//! - patterns run on the `regex` crate, whose matching time is linear in the text (no
//!   backtracking: `(a+)+$` is harmless; look-around and back-references are refused), each
//!   at most [`MAX_PATTERN_CHARS`] long and its compiled form bounded;
//! - a check of an answer stops at its deadline ([`schema_violation_before`]).
//!
//! The schema's size in bytes is bounded by the request body's limit (`MAX_BODY_BYTES`).

mod walk;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use jsonschema::paths::{Location, LocationSegment};
use jsonschema::{Keyword, PatternOptions, ValidationError, ValidationOptions, Validator};
use serde_json::{Map, Value};

use walk::{Holds, Walk, holds};

// A check past its deadline unwinds ([`schema_violation_before`]): built to abort on a panic,
// the process would stop instead.
#[cfg(panic = "abort")]
compile_error!("json_schema's deadline needs panic = \"unwind\"");

/// Deepest nesting of subschemas accepted.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Largest "smallest value" a schema may demand, counted in strings' characters and in
/// arrays', objects' and scalars' elements: no generation writes more (a model's output is
/// bounded by its max tokens), and checking or producing such a value would only cost a worker
/// CPU and memory.
pub const MAX_INSTANCE_SIZE: u64 = 1_000_000;
/// Longest `pattern` (and `patternProperties` name) accepted, in characters.
pub const MAX_PATTERN_CHARS: usize = 1_000;
/// Bound of one compiled pattern's size and of its lazy DFA's cache, in bytes: a short
/// pattern can still compile to a large automaton (`\w{1000}`).
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest description of a violation kept: the crate's messages quote the value.
const MAX_VIOLATION_CHARS: usize = 300;

/// Checks that a schema is well-formed for its draft, keeps its references inside itself, is
/// at most [`MAX_SCHEMA_DEPTH`] deep, has patterns the linear-time engine takes, and can be met
/// by a value of at most [`MAX_INSTANCE_SIZE`]; the error says where (`#/...`).
pub fn check_schema(schema: &Value) -> Result<(), String> {
    let walk = Walk::of(schema)?;
    compile(schema, None).map_err(|e| {
        let at = e.instance_path();
        format!("#{at}: {}", shorten(&e.to_string()))
    })?;
    walk.check_smallest(schema)
}

/// Where a value breaks a (checked) schema, or `None` when it matches.
pub fn schema_violation(schema: &Value, value: &Value) -> Option<String> {
    match compile(schema, None) {
        Ok(validator) => first_violation(&validator, value),
        Err(e) => Some(uncompiled(&e)),
    }
}

/// The check of [`schema_violation`] ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("checking the value against its schema took too long")]
pub struct TooSlow;

/// [`schema_violation`], given up once `deadline` has passed. A large value checked against a
/// wide schema (many `anyOf` / `oneOf` branches at every item, references into them) costs
/// their product, and describing its failure (the crate gathers every branch's errors) costs
/// as much again, so the check looks at the clock as it goes and stops, instead of holding its
/// thread for minutes: every subschema gets a clock keyword in an `allOf` of its own, which
/// runs at each visit of the subschema and, once the deadline has passed, unwinds the whole
/// check at once ([`std::panic::resume_unwind`]: no panic hook runs, no message is printed),
/// caught right here.
pub fn schema_violation_before(
    schema: &Value,
    value: &Value,
    deadline: Instant,
) -> Result<Option<String>, TooSlow> {
    let clock = Arc::new(Clock::until(deadline));
    let validator = match compile(&with_clocks(schema), Some(clock)) {
        Ok(validator) => validator,
        Err(e) => return Ok(Some(uncompiled(&e))),
    };
    match std::panic::catch_unwind(AssertUnwindSafe(|| first_violation(&validator, value))) {
        Ok(violation) => Ok(violation),
        Err(payload) if payload.is::<PastDeadline>() => Err(TooSlow),
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// The keyword [`with_clocks`] adds; its factory is registered only by
/// [`schema_violation_before`], so elsewhere it is an unknown keyword (ignored).
const CLOCK_KEYWORD: &str = "x-deadline";

/// The options every schema is compiled with; `clock` registers [`CLOCK_KEYWORD`].
fn compile(
    schema: &Value,
    clock: Option<Arc<Clock>>,
) -> Result<Validator, ValidationError<'static>> {
    let patterns = PatternOptions::regex()
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT);
    let mut options: ValidationOptions = jsonschema::options()
        .offline()
        .with_pattern_options(patterns)
        .should_validate_formats(false);
    if let Some(clock) = clock {
        options = options.with_keyword(CLOCK_KEYWORD, move |_, _, _| {
            Ok(Box::new(ClockKeyword(Arc::clone(&clock))))
        });
    }
    options.build(schema)
}

fn first_violation(validator: &Validator, value: &Value) -> Option<String> {
    let error = validator.validate(value).err()?;
    Some(format!(
        "{}: {}",
        value_path(error.instance_path()),
        shorten(&error.to_string())
    ))
}

fn uncompiled(error: &ValidationError<'_>) -> String {
    format!(
        "the schema does not compile: {}",
        shorten(&error.to_string())
    )
}

/// A value's location as the service reports it: `$`, `.name` for a property, `[i]` for an
/// item (`$.party[2].name`).
fn value_path(location: &Location) -> String {
    let mut path = String::from("$");
    for segment in location {
        match segment {
            LocationSegment::Property(name) => {
                path.push('.');
                path.push_str(&name);
            }
            LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    path
}

fn shorten(message: &str) -> String {
    if message.chars().count() <= MAX_VIOLATION_CHARS {
        return message.to_owned();
    }
    let mut short: String = message.chars().take(MAX_VIOLATION_CHARS).collect();
    short.push('…');
    short
}

/// `schema` with `{"x-deadline": true}` appended to the `allOf` of every subschema object
/// (existing `allOf` entries keep their indices, so references into them still hold).
fn with_clocks(schema: &Value) -> Value {
    let mut copy = schema.clone();
    add_clocks(&mut copy);
    copy
}

fn add_clocks(schema: &mut Value) {
    let Value::Object(map) = schema else {
        return;
    };
    for (key, value) in map.iter_mut() {
        match (holds(key), value) {
            (Some(Holds::One | Holds::OneOrList), value @ Value::Object(_)) => add_clocks(value),
            (Some(Holds::List | Holds::OneOrList), Value::Array(list)) => {
                list.iter_mut().for_each(add_clocks);
            }
            (Some(Holds::Named | Holds::NamedOrNames), Value::Object(named)) => {
                named.values_mut().for_each(add_clocks);
            }
            _ => {}
        }
    }
    let clock = Value::Object(Map::from_iter([(
        CLOCK_KEYWORD.to_owned(),
        Value::Bool(true),
    )]));
    match map.get_mut("allOf") {
        Some(Value::Array(list)) => list.push(clock),
        _ => {
            map.insert("allOf".into(), Value::Array(vec![clock]));
        }
    }
}

/// A check's deadline, read every [`Clock::EVERY`] steps.
struct Clock {
    deadline: Instant,
    steps: AtomicU32,
}

impl Clock {
    /// Looks at the time every this many steps (reading the clock is not free).
    const EVERY: u32 = 256;

    fn until(deadline: Instant) -> Self {
        Self {
            deadline,
            steps: AtomicU32::new(0),
        }
    }

    /// One more step; unwinds the check once the deadline has passed.
    fn tick(&self) {
        let step = self.steps.fetch_add(1, Ordering::Relaxed);
        if step.is_multiple_of(Self::EVERY) && Instant::now() >= self.deadline {
            std::panic::resume_unwind(Box::new(PastDeadline));
        }
    }
}

/// What a check past its deadline unwinds with.
struct PastDeadline;

/// The clock keyword: every value is valid; it only ticks the clock.
struct ClockKeyword(Arc<Clock>);

impl<'i> Keyword<'i> for ClockKeyword {
    fn validate(&self, _instance: &'i Value) -> Result<(), ValidationError<'i>> {
        self.0.tick();
        Ok(())
    }

    fn is_valid(&self, _instance: &'i Value) -> bool {
        self.0.tick();
        true
    }
}

#[cfg(test)]
mod tests;
