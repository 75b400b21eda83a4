//! The one place that touches the YAML parser.
//!
//! `serde_yaml` is deprecated upstream; every other module sees YAML only as
//! [`serde_json::Value`] documents, so swapping in a same-API fork (or
//! another parser) changes this file alone.

use std::ops::ControlFlow;

use serde_json::Value;

/// A YAML syntax or structure error, with the position the parser gives.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub message: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
}

/// Parses a multi-document YAML text into one JSON value per non-empty
/// document. Anchors and aliases are expanded by the parser, which bounds
/// the expansion (a "billion laughs" text is refused, not expanded).
///
/// Hands each non-empty document of `text` to `f` as soon as it is parsed,
/// so only one document's tree is alive at a time (a 2 MB file of 3,000
/// resources peaked ~20 MB higher as a whole `Vec`). Stops at the first
/// error, or when `f` breaks; the documents before have been handed over.
pub fn for_each_document(text: &str, mut f: impl FnMut(Value) -> ControlFlow<()>) -> Result<(), YamlError> {
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| YamlError { line: e.location().map(|l| l.line()), message: e.to_string() })?;
        if !value.is_null() && f(value).is_break() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
        let mut out = Vec::new();
        for_each_document(text, |value| {
            out.push(value);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    #[test]
    fn splits_documents_and_skips_empty_ones() {
        let docs = parse_documents("a: 1\n---\n---\nb: [x, y]\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["b"][1], "y");
    }

    #[test]
    fn refuses_bad_yaml_with_a_line() {
        let err = parse_documents("a: 1\nb: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err}");
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("repetition limit exceeded"), "{err}");
    }

    #[test]
    fn refuses_deep_nesting() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("recursion limit exceeded"), "{err}");
    }
}
