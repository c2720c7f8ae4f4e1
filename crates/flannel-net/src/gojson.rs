//! Reading JSON objects the way Go's `encoding/json` fills a struct: each key of the object is
//! matched to a field name case-insensitively, in document order (a later key wins), and keys
//! that match no field are ignored. Values keep their JSON form for the caller to check.

use serde_json::{Map, Value};

/// The JSON kind named as Go names it in "cannot unmarshal <kind> into ..." errors.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Collects, for each of `fields`, the value of the last key that matches it.
/// The result is indexed like `fields`.
pub(crate) fn fields<'a>(obj: &'a Map<String, Value>, fields: &[&str]) -> Vec<Option<&'a Value>> {
    let mut found = vec![None; fields.len()];
    for (key, value) in obj {
        if let Some(i) = fields.iter().position(|f| f.eq_ignore_ascii_case(key)) {
            found[i] = Some(value);
        }
    }
    found
}

/// A JSON string's content, or the raw JSON text otherwise. Upstream's IP and CIDR types
/// strip quotes from the raw value before parsing, so `5` and `"5"` read alike there.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
