//! The walk over a schema's subschemas that [`check_schema`](super::check_schema) does before
//! the `jsonschema` crate compiles it: nesting depth, references that stay inside the schema,
//! pattern lengths, and the smallest value the schema demands (references followed).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use super::{MAX_INSTANCE_SIZE, MAX_PATTERN_CHARS, MAX_SCHEMA_DEPTH};

/// Where a keyword keeps its subschemas.
#[derive(Clone, Copy)]
pub(super) enum Holds {
    /// One subschema (`not`, `additionalProperties`, ...).
    One,
    /// An array of them (`anyOf`, `prefixItems`, ...).
    List,
    /// An object of them by name (`properties`, `$defs`, ...).
    Named,
    /// `items`: one, or (before draft 2020-12) an array of them.
    OneOrList,
    /// `dependencies` (draft 7 and before): by name, each a subschema or a list of names.
    NamedOrNames,
}

/// The keywords whose values are subschemas, in every draft the crate knows.
pub(super) fn holds(keyword: &str) -> Option<Holds> {
    Some(match keyword {
        "additionalProperties"
        | "additionalItems"
        | "contains"
        | "propertyNames"
        | "not"
        | "if"
        | "then"
        | "else"
        | "unevaluatedItems"
        | "unevaluatedProperties"
        | "contentSchema" => Holds::One,
        "allOf" | "anyOf" | "oneOf" | "prefixItems" => Holds::List,
        "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
            Holds::Named
        }
        "items" => Holds::OneOrList,
        "dependencies" => Holds::NamedOrNames,
        _ => return None,
    })
}

/// Keywords that name or resolve resources by something other than a JSON pointer into this
/// schema: refused, so that every reference is one [`Walk`] can follow.
const REFUSED: &[&str] = &[
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
    "$anchor",
];

/// What the walk found: each subschema by its JSON pointer, and each `$ref` (where it is,
/// the pointer it names).
#[derive(Default)]
pub(super) struct Walk<'a> {
    subschemas: HashMap<String, &'a Value>,
    refs: Vec<(String, String)>,
}

impl<'a> Walk<'a> {
    /// Walks `schema`, refusing what [`check_schema`](super::check_schema) documents.
    pub(super) fn of(schema: &'a Value) -> Result<Self, String> {
        let mut walk = Self::default();
        walk.visit(schema, String::new(), 0)?;
        for (at, target) in &walk.refs {
            if !walk.subschemas.contains_key(target) {
                return Err(format!(
                    "#{at}/$ref: `#{target}` is not a subschema of this schema"
                ));
            }
        }
        Ok(walk)
    }

    fn visit(&mut self, schema: &'a Value, at: String, depth: usize) -> Result<(), String> {
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!(
                "#{at}: subschemas nest deeper than {MAX_SCHEMA_DEPTH} levels"
            ));
        }
        let map = match schema {
            Value::Bool(_) => {
                self.subschemas.insert(at, schema);
                return Ok(());
            }
            Value::Object(map) => map,
            _ => return Err(format!("#{at}: a schema must be an object or a boolean")),
        };
        for (key, value) in map {
            let here = format!("{at}/{}", escape(key));
            match key.as_str() {
                "$ref" => {
                    let target = value.as_str().and_then(local_pointer).ok_or_else(|| {
                        format!(
                            "#{here}: only references within this schema (`#` or `#/...`) \
                                 are supported, not {value}"
                        )
                    })?;
                    self.refs.push((at.clone(), target));
                }
                "$id" if !at.is_empty() => {
                    return Err(format!(
                        "#{here}: `$id` is only allowed at the schema's root"
                    ));
                }
                k if REFUSED.contains(&k) => {
                    return Err(format!(
                        "#{at}: the keyword `{k}` is not supported (references are `$ref` to \
                         `#/...`)"
                    ));
                }
                "pattern" => check_pattern(value.as_str(), &here)?,
                _ => {}
            }
            if key == "patternProperties"
                && let Some(patterns) = value.as_object()
            {
                for name in patterns.keys() {
                    check_pattern(Some(name), &format!("{here}/{}", escape(name)))?;
                }
            }
            match holds(key) {
                None => {}
                Some(Holds::One) => self.visit(value, here, depth + 1)?,
                Some(Holds::OneOrList) if !value.is_array() => {
                    self.visit(value, here, depth + 1)?;
                }
                Some(Holds::List | Holds::OneOrList) => {
                    let Value::Array(list) = value else {
                        return Err(format!("#{here}: must be an array of schemas"));
                    };
                    for (i, sub) in list.iter().enumerate() {
                        self.visit(sub, format!("{here}/{i}"), depth + 1)?;
                    }
                }
                Some(kind @ (Holds::Named | Holds::NamedOrNames)) => {
                    let Value::Object(named) = value else {
                        return Err(format!("#{here}: must be an object of schemas"));
                    };
                    for (name, sub) in named {
                        if matches!(kind, Holds::NamedOrNames) && sub.is_array() {
                            continue;
                        }
                        self.visit(sub, format!("{here}/{}", escape(name)), depth + 1)?;
                    }
                }
            }
        }
        self.subschemas.insert(at, schema);
        Ok(())
    }

    /// The size of the smallest value the schema allows, refused above [`MAX_INSTANCE_SIZE`] or
    /// when its references demand a value with no end.
    pub(super) fn check_smallest(&self, schema: &'a Value) -> Result<(), String> {
        let mut sizer = Sizer {
            walk: self,
            open: HashSet::new(),
            known: HashMap::new(),
            steps: 0,
        };
        let (size, _) = sizer.size(schema)?;
        if size == INFINITE {
            return Err(
                "#: the schema's references demand a value with no end (a required property \
                 or item that must contain itself)"
                    .into(),
            );
        }
        if size > MAX_INSTANCE_SIZE {
            return Err(format!(
                "#: the smallest value this schema allows has over {MAX_INSTANCE_SIZE} elements \
                 (minLength, minItems, minProperties, required)"
            ));
        }
        Ok(())
    }
}

/// The smallest size of a value that must contain itself.
const INFINITE: u64 = u64::MAX;
/// Most subschemas the size computation visits: references can make a small schema expand
/// exponentially, and one that expands this far is refused instead of computed.
const MAX_SIZE_STEPS: u32 = 100_000;

/// Computes smallest sizes, following `$ref`s: a reference back into one being followed
/// counts as infinite (a smallest value never contains a value of its own schema), so a
/// schema whose every value contains itself has an infinite size.
struct Sizer<'w, 'a> {
    walk: &'w Walk<'a>,
    /// The references being followed.
    open: HashSet<&'w str>,
    /// Sizes of references computed without meeting an open one (valid wherever they are met).
    known: HashMap<&'w str, u64>,
    steps: u32,
}

impl<'w, 'a> Sizer<'w, 'a> {
    /// A lower bound of the size of the smallest value `schema` allows, counted in strings'
    /// characters and in arrays', objects' and scalars' elements, and whether it met an open
    /// reference (then it holds only where that reference is open).
    fn size(&mut self, schema: &'a Value) -> Result<(u64, bool), String> {
        self.steps += 1;
        if self.steps > MAX_SIZE_STEPS {
            return Err(format!(
                "#: the schema's references expand to over {MAX_SIZE_STEPS} subschemas"
            ));
        }
        let Value::Object(map) = schema else {
            return Ok((1, false));
        };
        let mut cyclic = false;
        let mut size = self.own_size(map, &mut cyclic)?;
        if let Some(target) = map
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(local_pointer)
        {
            let (n, c) = self.follow(&target)?;
            size = size.max(n);
            cyclic |= c;
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            let Some(list) = map.get(key).and_then(Value::as_array) else {
                continue;
            };
            let mut sizes = Vec::with_capacity(list.len());
            for sub in list {
                let (n, c) = self.size(sub)?;
                cyclic |= c;
                sizes.push(n);
            }
            // Every allOf branch must hold, at least one of the others.
            let n = if key == "allOf" {
                sizes.into_iter().max()
            } else {
                sizes.into_iter().min()
            };
            size = size.max(n.unwrap_or(0));
        }
        Ok((size, cyclic))
    }

    fn follow(&mut self, target: &str) -> Result<(u64, bool), String> {
        let Some((key, schema)) = self.walk.subschemas.get_key_value(target) else {
            return Ok((1, false));
        };
        if let Some(&n) = self.known.get(key.as_str()) {
            return Ok((n, false));
        }
        if !self.open.insert(key.as_str()) {
            return Ok((INFINITE, true));
        }
        let result = self.size(schema);
        self.open.remove(key.as_str());
        let (n, cyclic) = result?;
        if !cyclic {
            self.known.insert(key.as_str(), n);
        }
        Ok((n, cyclic))
    }

    /// The smallest size the keywords of this schema object allow by themselves: the least
    /// over the types it allows (or the values of `enum` / `const`).
    fn own_size(&mut self, map: &'a Map<String, Value>, cyclic: &mut bool) -> Result<u64, String> {
        let count = |key: &str| map.get(key).and_then(Value::as_u64).unwrap_or(0);
        let allows = |t: &str| match map.get("type") {
            None => true,
            Some(Value::String(only)) => only == t,
            Some(Value::Array(list)) => list.iter().any(|x| x.as_str() == Some(t)),
            Some(_) => true,
        };
        let mut least = INFINITE;
        if allows("string") {
            least = least.min(count("minLength").max(1));
        }
        if ["number", "integer", "boolean", "null"]
            .into_iter()
            .any(allows)
        {
            least = least.min(1);
        }
        if allows("object") {
            let props = map.get("properties").and_then(Value::as_object);
            let mut n = 1_u64;
            let required = map.get("required").and_then(Value::as_array);
            for name in required.into_iter().flatten().filter_map(Value::as_str) {
                let sub = props
                    .and_then(|p| p.get(name))
                    .or_else(|| map.get("additionalProperties"));
                let each = match sub {
                    Some(sub) => {
                        let (size, c) = self.size(sub)?;
                        *cyclic |= c;
                        size
                    }
                    None => 1,
                };
                n = n.saturating_add(each);
            }
            least = least.min(n.max(count("minProperties").saturating_add(1)));
        }
        if allows("array") {
            let wanted = count("minItems");
            let (prefix, rest) = match (map.get("prefixItems"), map.get("items")) {
                (Some(Value::Array(prefix)), rest) => (prefix.as_slice(), rest),
                (None, Some(Value::Array(prefix))) => {
                    (prefix.as_slice(), map.get("additionalItems"))
                }
                (_, rest) => (&[][..], rest),
            };
            let mut n = 1_u64;
            for sub in prefix
                .iter()
                .take(usize::try_from(wanted).unwrap_or(usize::MAX))
            {
                let (size, c) = self.size(sub)?;
                *cyclic |= c;
                n = n.saturating_add(size);
            }
            let beyond = wanted.saturating_sub(prefix.len() as u64);
            if beyond > 0 {
                let each = match rest {
                    Some(sub) => {
                        let (size, c) = self.size(sub)?;
                        *cyclic |= c;
                        size
                    }
                    None => 1,
                };
                n = n.saturating_add(beyond.saturating_mul(each));
            }
            least = least.min(n);
        }
        let value_size = |v: &Value| json_size(v);
        if let Some(value) = map.get("const") {
            least = least.max(value_size(value));
        } else if let Some(values) = map.get("enum").and_then(Value::as_array) {
            let smallest = values.iter().map(value_size).min().unwrap_or(INFINITE);
            least = least.max(smallest);
        }
        Ok(least)
    }
}

/// A value's size as [`Sizer`] counts it.
fn json_size(value: &Value) -> u64 {
    match value {
        Value::String(s) => (s.chars().count() as u64).max(1),
        Value::Array(items) => items.iter().fold(1, |n, v| n.saturating_add(json_size(v))),
        Value::Object(map) => map.values().fold(1, |n, v| n.saturating_add(json_size(v))),
        _ => 1,
    }
}

fn check_pattern(pattern: Option<&str>, at: &str) -> Result<(), String> {
    match pattern {
        None => Err(format!("#{at}: must be a string")),
        Some(p) if p.chars().count() > MAX_PATTERN_CHARS => Err(format!(
            "#{at}: a pattern is at most {MAX_PATTERN_CHARS} characters"
        )),
        Some(_) => Ok(()),
    }
}

/// The JSON pointer (escaped, as [`Walk`] keys subschemas) a local reference names: `#` or
/// `#/...`, percent-decoded as a URI fragment is.
pub(super) fn local_pointer(reference: &str) -> Option<String> {
    let fragment = reference.strip_prefix('#')?;
    if !(fragment.is_empty() || fragment.starts_with('/')) {
        return None;
    }
    percent_decode(fragment)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A JSON pointer segment: `~` as `~0`, `/` as `~1`.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}
