//! A summary of the JSON shape of keys or values: how many of each JSON
//! type, and for objects which fields, with their types.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

/// Fields of objects tracked by name; more are counted together.
const MAX_FIELDS: usize = 32;

#[derive(Debug, Default, Serialize)]
pub struct Shape {
    /// Entries looked at.
    pub sampled: u64,
    /// JSON type -> count.
    pub types: BTreeMap<&'static str, u64>,
    /// For objects: field -> (JSON type -> count).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Object fields beyond the first tracked ones.
    #[serde(skip_serializing_if = "is_zero")]
    pub other_fields: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Shape {
    pub fn add_value(&mut self, value: &Value) {
        self.sampled += 1;
        *self.types.entry(type_of(value)).or_default() += 1;
        if let Value::Object(object) = value {
            for (name, field) in object {
                if !self.fields.contains_key(name) && self.fields.len() >= MAX_FIELDS {
                    self.other_fields += 1;
                    continue;
                }
                *self
                    .fields
                    .entry(name.clone())
                    .or_default()
                    .entry(type_of(field))
                    .or_default() += 1;
            }
        }
    }

    /// A key is stored as text: one that reads as JSON other than a string
    /// (`42`, `[1,"a"]`) most likely came from a key of that type.
    pub fn add_key(&mut self, key: &str) {
        match serde_json::from_str::<Value>(key) {
            Ok(parsed) if !parsed.is_string() => self.add_value(&parsed),
            _ => {
                self.sampled += 1;
                *self.types.entry("string").or_default() += 1;
            }
        }
    }

    /// `object 990, null 10; fields: age (number 990), name (string 990)`.
    pub fn describe(&self) -> String {
        if self.sampled == 0 {
            return String::from("-");
        }
        let counts = |m: &BTreeMap<&'static str, u64>| {
            let mut parts: Vec<(&str, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
            parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            parts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = counts(&self.types);
        if !self.fields.is_empty() {
            out.push_str("; fields: ");
            let fields: Vec<String> = self
                .fields
                .iter()
                .map(|(name, types)| format!("{name} ({})", counts(types)))
                .collect();
            out.push_str(&fields.join(", "));
            if self.other_fields > 0 {
                let _ = write!(out, ", and {} more", self.other_fields);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shapes_count_types_and_fields() {
        let mut keys = Shape::default();
        keys.add_key("alice");
        keys.add_key("42");
        assert_eq!(keys.describe(), "number 1, string 1");
        let mut values = Shape::default();
        values.add_value(&json!({"age": 3, "name": "x"}));
        values.add_value(&json!({"age": null}));
        values.add_value(&json!(null));
        assert_eq!(
            values.describe(),
            "object 2, null 1; fields: age (null 1, number 1), name (string 1)"
        );
    }
}
