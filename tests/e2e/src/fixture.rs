//! Object fixtures kept as YAML files under `tests/e2e/manifests/fixtures/`, with `${NAME}`
//! placeholders filled in by [`render`]. Strings that YAML could read as another type are
//! quoted in the files; numbers are left bare so they stay numbers.

use std::fmt::Display;
use std::path::Path;

use serde_json::Value;

/// Every document of fixture `file` with each `${KEY}` replaced by its value. Panics (failing
/// the test) on a missing file, a placeholder without a value, a value no placeholder uses, or
/// YAML that does not parse: a fixture mistake must not turn into a silently different object.
pub fn render(file: &str, vars: &[(&str, &dyn Display)]) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/fixtures")
        .join(file);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    for (key, value) in vars {
        let placeholder = format!("${{{key}}}");
        assert!(
            text.contains(&placeholder),
            "fixture {file} has no {placeholder}"
        );
        text = text.replace(&placeholder, &value.to_string());
    }
    if let Some(at) = text.find("${") {
        let rest = &text[at..];
        let end = rest.find('}').map_or(rest.len(), |i| i + 1);
        panic!("fixture {file}: no value for {}", &rest[..end]);
    }
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("fixture {file} is not valid YAML: {e}"))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The single document of fixture `file` (see [`render`]).
pub fn render_one(file: &str, vars: &[(&str, &dyn Display)]) -> Value {
    let mut docs = render(file, vars);
    assert_eq!(docs.len(), 1, "fixture {file} holds one object");
    docs.remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_with_typed_values() {
        let md = render_one(
            "in-memory-pool.yaml",
            &[
                ("NAME", &"demo"),
                ("POOL", &"pool-a"),
                ("REPLICAS", &2),
                ("VERSION", &"v1.31.14-2"),
                ("TEMPLATE_SUFFIX", &"v131"),
            ],
        );
        assert_eq!(md["metadata"]["name"], "demo-pool-a");
        assert_eq!(md["spec"]["replicas"], 2);
        assert_eq!(md["spec"]["template"]["spec"]["version"], "v1.31.14-2");
    }

    #[test]
    #[should_panic(expected = "no value for ${TEMPLATE_SUFFIX}")]
    fn a_placeholder_without_a_value_fails() {
        render(
            "in-memory-pool.yaml",
            &[
                ("NAME", &"demo"),
                ("POOL", &"a"),
                ("REPLICAS", &1),
                ("VERSION", &"v1"),
            ],
        );
    }

    #[test]
    #[should_panic(expected = "has no ${COLOUR}")]
    fn a_value_without_a_placeholder_fails() {
        render(
            "dev-machine-template.yaml",
            &[("NAME", &"t"), ("COLOUR", &"red")],
        );
    }
}
