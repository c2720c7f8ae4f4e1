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

/// The fields of a Go struct read from a JSON object: for each field name, the value of the
/// last key that matches it case-insensitively.
pub(crate) struct Fields<'a> {
    names: &'a [&'static str],
    found: Vec<(&'static str, &'a Value)>,
}

impl<'a> Fields<'a> {
    /// The value of field `name` (one of the names given to [`fields`]), if the object has it.
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        debug_assert!(
            self.names.contains(&name),
            "{name} is not a field asked for"
        );
        self.found
            .iter()
            .rev()
            .find(|(f, _)| *f == name)
            .map(|(_, v)| *v)
    }
}

/// Reads the keys of `obj` that match one of `names` (Go's field names); others are ignored.
pub(crate) fn fields<'a>(obj: &'a Map<String, Value>, names: &'a [&'static str]) -> Fields<'a> {
    let found = obj
        .iter()
        .filter_map(|(key, value)| {
            let name = names.iter().find(|f| f.eq_ignore_ascii_case(key))?;
            Some((*name, value))
        })
        .collect();
    Fields { names, found }
}

/// A JSON string's content, or the raw JSON text otherwise. Upstream's IP and CIDR types
/// strip quotes from the raw value before parsing, so `5` and `"5"` read alike there.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
