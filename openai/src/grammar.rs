//! `response_format` as a llama.cpp grammar (GBNF): `json_object` is any JSON object,
//! `json_schema` a JSON Schema of the subset below, turned into a grammar whose every
//! sentence is valid under the schema. The engine samples only tokens the grammar allows,
//! so a completion that ends (rather than running out of tokens) is such a sentence.
//!
//! Supported: `type` (one or a list of `object`, `array`, `string`, `number`, `integer`,
//! `boolean`, `null`), `properties` (every property is emitted, in the order given: an
//! optional property present is still valid), `items`, `enum`, `const`, `anyOf`/`oneOf`,
//! `$ref` to `#/$defs/NAME` or `#/definitions/NAME`, and the annotations `title`,
//! `description`, `default`, `examples`, `$schema`, `$id`, `required`,
//! `additionalProperties`, `strict`. Any other keyword (`minLength`, `pattern`, `format`,
//! `minimum`, ...) would be a constraint the grammar does not enforce: it is refused by
//! name rather than silently ignored.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// Keywords that say nothing the grammar must enforce.
const ANNOTATIONS: [&str; 11] = [
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "required",
    "additionalProperties",
    "strict",
    "$defs",
];

/// Most rules a schema may make (nesting, `$defs`, alternatives).
const MAX_RULES: usize = 256;
/// Deepest nesting of schemas.
const MAX_DEPTH: usize = 32;

/// The rules every grammar shares: JSON's whitespace (bounded, so that a model cannot
/// spend its tokens on it), strings, numbers and any value.
const BASE: &str = r#"ws ::= | " " | "\n" [ \t]{0,20}
string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ws (member ("," ws member)*)? "}"
member ::= string ws ":" ws value ws
array ::= "[" ws (value ws ("," ws value ws)*)? "]"
"#;

/// A grammar for any JSON object (`response_format: {"type": "json_object"}`).
pub fn json_object() -> String {
    format!("root ::= object\n{BASE}")
}

/// A grammar for the JSON values valid under `schema`.
///
/// # Errors
/// A message naming the keyword (or `$ref`) that is not supported, or why the schema is
/// malformed.
pub fn json_schema(schema: &Value) -> Result<String, String> {
    let mut g = Grammar {
        root: schema,
        rules: BTreeMap::new(),
        defs: BTreeMap::new(),
    };
    let body = g.schema(schema, 0)?;
    let mut out = format!("root ::= {body}\n");
    for (name, rule) in &g.rules {
        let _ = writeln!(out, "{name} ::= {rule}");
    }
    out.push_str(BASE);
    Ok(out)
}

struct Grammar<'a> {
    root: &'a Value,
    /// Rule name → its body.
    rules: BTreeMap<String, String>,
    /// `$ref` target → its rule name.
    defs: BTreeMap<String, String>,
}

impl Grammar<'_> {
    /// A new rule's name.
    fn rule(&mut self, body: String) -> Result<String, String> {
        if self.rules.len() >= MAX_RULES {
            return Err(format!(
                "the schema needs more than {MAX_RULES} grammar rules"
            ));
        }
        let name = format!("r{}", self.rules.len());
        self.rules.insert(name.clone(), body);
        Ok(name)
    }

    /// The grammar expression for `schema`.
    fn schema(&mut self, schema: &Value, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err(format!("the schema nests deeper than {MAX_DEPTH} levels"));
        }
        let map = match schema {
            Value::Bool(true) => return Ok("value".into()),
            Value::Object(m) => m,
            _ => return Err("each schema must be an object".into()),
        };
        for key in map.keys() {
            let known = ANNOTATIONS.contains(&key.as_str())
                || matches!(
                    key.as_str(),
                    "type"
                        | "properties"
                        | "items"
                        | "enum"
                        | "const"
                        | "anyOf"
                        | "oneOf"
                        | "$ref"
                        | "definitions"
                );
            if !known {
                let key: String = key.chars().take(32).collect();
                return Err(format!(
                    "the schema keyword {key:?} is not supported (it would not be enforced)"
                ));
            }
        }
        if let Some(r) = map.get("$ref") {
            return self.reference(r, depth);
        }
        if let Some(c) = map.get("const") {
            return Ok(literal(c));
        }
        if let Some(e) = map.get("enum") {
            let Some(values) = e.as_array().filter(|v| !v.is_empty()) else {
                return Err("enum must be a non-empty array".into());
            };
            let alts: Vec<String> = values.iter().map(literal).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(v) = map.get(key) {
                let Some(subs) = v.as_array().filter(|v| !v.is_empty()) else {
                    return Err(format!("{key} must be a non-empty array"));
                };
                let mut alts = Vec::with_capacity(subs.len());
                for s in subs {
                    alts.push(self.schema(s, depth + 1)?);
                }
                return Ok(format!("({})", alts.join(" | ")));
            }
        }
        let types: Vec<&str> = match map.get("type") {
            None => return Ok("value".into()),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) if !ts.is_empty() && ts.iter().all(Value::is_string) => {
                ts.iter().filter_map(Value::as_str).collect()
            }
            Some(_) => return Err("type must be a name or a list of names".into()),
        };
        let mut alts = Vec::with_capacity(types.len());
        for t in types {
            alts.push(match t {
                "string" | "number" | "integer" | "boolean" | "null" => t.to_owned(),
                "object" => self.object(map, depth)?,
                "array" => self.array(map, depth)?,
                other => {
                    let other: String = other.chars().take(32).collect();
                    return Err(format!("unknown type {other:?}"));
                }
            });
        }
        Ok(if alts.len() == 1 {
            alts.remove(0)
        } else {
            format!("({})", alts.join(" | "))
        })
    }

    fn object(
        &mut self,
        map: &serde_json::Map<String, Value>,
        depth: usize,
    ) -> Result<String, String> {
        let Some(props) = map.get("properties") else {
            return Ok("object".into());
        };
        let Some(props) = props.as_object() else {
            return Err("properties must be an object".into());
        };
        if props.is_empty() {
            return Ok(r#""{" ws "}""#.into());
        }
        let mut members = Vec::with_capacity(props.len());
        for (name, sub) in props {
            let value = self.schema(sub, depth + 1)?;
            members.push(format!(
                r#"{} ws ":" ws {value} ws"#,
                literal(&Value::String(name.clone()))
            ));
        }
        let body = format!(r#""{{" ws {} "}}""#, members.join(r#" "," ws "#));
        self.rule(body)
    }

    fn array(
        &mut self,
        map: &serde_json::Map<String, Value>,
        depth: usize,
    ) -> Result<String, String> {
        let item = match map.get("items") {
            None => "value".to_owned(),
            Some(items) => self.schema(items, depth + 1)?,
        };
        let item = self.rule(item)?;
        self.rule(format!(r#""[" ws ({item} ws ("," ws {item} ws)*)? "]""#))
    }

    fn reference(&mut self, r: &Value, depth: usize) -> Result<String, String> {
        let Some(path) = r.as_str() else {
            return Err("$ref must be a string".into());
        };
        if let Some(name) = self.defs.get(path) {
            return Ok(name.clone());
        }
        let target = path
            .strip_prefix("#/$defs/")
            .map(|n| ("$defs", n))
            .or_else(|| {
                path.strip_prefix("#/definitions/")
                    .map(|n| ("definitions", n))
            })
            .and_then(|(section, n)| self.root.get(section)?.get(n));
        let Some(target) = target else {
            let path: String = path.chars().take(64).collect();
            return Err(format!(
                "$ref {path:?} is not supported (only #/$defs/NAME and #/definitions/NAME of the same schema)"
            ));
        };
        // Named before it is made, so that a recursive definition refers to itself.
        let name = self.rule(String::new())?;
        self.defs.insert(path.to_owned(), name.clone());
        let body = self.schema(target, depth + 1)?;
        self.rules.insert(name.clone(), body);
        Ok(name)
    }
}

/// `value` as a grammar literal: its compact JSON text, quoted for GBNF.
fn literal(value: &Value) -> String {
    let json = value.to_string();
    let mut out = String::with_capacity(json.len() + 2);
    out.push('"');
    for c in json.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_schema_becomes_rules_for_its_properties_in_order() {
        let g = json_schema(&json!({
            "type": "object", "title": "Answer",
            "properties": {
                "capital": { "type": "string", "description": "the city" },
                "population": { "type": ["integer", "null"] },
                "kind": { "enum": ["city", "town"] },
                "tags": { "type": "array", "items": { "type": "string" } }
            },
            "required": ["capital"]
        }))
        .expect("supported");
        assert!(g.starts_with("root ::= r"), "{g}");
        assert!(g.contains(r#""\"capital\"" ws ":" ws string ws"#), "{g}");
        assert!(g.contains("(integer | null)"), "{g}");
        assert!(g.contains(r#"("\"city\"" | "\"town\"")"#), "{g}");
        assert!(g.contains(r#""\"tags\"" ws ":" ws r"#), "{g}");
    }

    #[test]
    fn refs_to_defs_are_rules_and_may_recurse() {
        let g = json_schema(&json!({
            "$defs": { "Node": { "type": "object", "properties": {
                "name": { "type": "string" },
                "children": { "type": "array", "items": { "$ref": "#/$defs/Node" } } } } },
            "$ref": "#/$defs/Node"
        }))
        .expect("supported");
        assert!(g.starts_with("root ::= r0\n"), "{g}");
        assert!(g.contains("r0 ::= r"), "{g}");
    }

    #[test]
    fn constraints_the_grammar_would_not_enforce_are_refused_by_name() {
        for (schema, says) in [
            (json!({ "type": "string", "minLength": 3 }), "minLength"),
            (json!({ "type": "string", "format": "date-time" }), "format"),
            (json!({ "type": "integer", "minimum": 0 }), "minimum"),
            (
                json!({ "type": "object", "properties": { "a": { "pattern": "x" } } }),
                "pattern",
            ),
            (json!({ "$ref": "https://example.com/s.json" }), "$ref"),
            (json!({ "$ref": "#/$defs/Missing" }), "$ref"),
            (json!({ "type": "date" }), "unknown type"),
            (json!({ "enum": [] }), "enum"),
            (json!(7), "object"),
        ] {
            let e = json_schema(&schema).expect_err(says);
            assert!(e.contains(says), "{schema}: {e}");
        }
        let mut deep = json!({ "type": "string" });
        for _ in 0..40 {
            deep = json!({ "type": "array", "items": deep });
        }
        assert!(json_schema(&deep).expect_err("deep").contains("deeper"));
    }

    #[test]
    fn literals_are_quoted_for_the_grammar() {
        assert_eq!(literal(&json!("a\"b\\c")), r#""\"a\\\"b\\\\c\"""#);
        assert_eq!(literal(&json!(3)), r#""3""#);
        assert_eq!(literal(&json!(null)), r#""null""#);
    }
}
