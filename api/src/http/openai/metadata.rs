//! OpenAI's `metadata` (Responses, Batch API): at most 16 pairs of strings, keys of at most 64
//! and values of at most 512 characters, as OpenAI refuses more.

use serde_json::{Map, Value};

use super::error::OpenAiError;

const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

/// OpenAI's rules for `metadata`: an object of at most 16 string pairs, keys up to 64 and
/// values up to 512 characters.
pub(super) fn checked(metadata: Option<Value>) -> Result<Map<String, Value>, OpenAiError> {
    let map = match metadata {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(map)) => map,
        Some(_) => {
            return Err(OpenAiError::invalid(
                "metadata must be an object of string keys and string values",
                Some("metadata"),
            ));
        }
    };
    if map.len() > METADATA_MAX_PAIRS {
        return Err(OpenAiError::invalid(
            format!("metadata has at most {METADATA_MAX_PAIRS} pairs"),
            Some("metadata"),
        ));
    }
    for (key, value) in &map {
        if key.chars().count() > METADATA_MAX_KEY {
            return Err(OpenAiError::invalid(
                format!("metadata keys are at most {METADATA_MAX_KEY} characters"),
                Some("metadata"),
            ));
        }
        match value.as_str() {
            Some(v) if v.chars().count() <= METADATA_MAX_VALUE => {}
            Some(_) => {
                return Err(OpenAiError::invalid(
                    format!("metadata values are at most {METADATA_MAX_VALUE} characters"),
                    Some("metadata"),
                ));
            }
            None => {
                return Err(OpenAiError::invalid(
                    "metadata values must be strings",
                    Some("metadata"),
                ));
            }
        }
    }
    Ok(map)
}
