//! `headers.request` / `headers.response` of an HTTP rule or of one of its
//! destinations (spec §1.10), prepared once at compile time.
//!
//! Envoy's order (`HeaderParser::evaluateHeaders`): removals first, then
//! each `set` (Istio's `OVERWRITE_IF_EXISTS_OR_ADD`), then each `add`
//! (`APPEND_IF_EXISTS_OR_ADD`), in key order as istiod writes them. A
//! request `set`/`add` of `host` or `:authority` is not a header operation
//! but an authority rewrite; the rule compiler takes it out first
//! ([`HeaderOps::compile`] returns it).
//!
//! Values: `%%` is a literal `%`; Envoy's other `%VARIABLE%` forms are
//! sent as written (meshd expands none of them).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::resources::HeaderOperations;

/// Prepared header operations; empty for a rule that has none.
#[derive(Debug, Default, Clone)]
pub struct HeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// A header name or value validation should have refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid header operation on {0:?}")]
pub struct InvalidHeader(pub String);

// === impl HeaderOps ===

impl HeaderOps {
    /// Prepares `ops`. Returns the authority a request `set`/`add` of
    /// `host` or `:authority` asks for beside them (the last one wins).
    pub fn compile(ops: &HeaderOperations) -> Result<(Self, Option<HeaderValue>), InvalidHeader> {
        let mut out = HeaderOps::default();
        let mut authority = None;
        for name in &ops.remove {
            out.remove.push(name_of(name)?);
        }
        for (map, into) in [(&ops.set, &mut out.set), (&ops.add, &mut out.add)] {
            for (name, value) in map {
                let value = value_of(name, value)?;
                if is_authority(name) {
                    authority = Some(value);
                } else {
                    into.push((name_of(name)?, value));
                }
            }
        }
        Ok((out, authority))
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the operations to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn is_authority(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name == ":authority"
}

fn name_of(name: &str) -> Result<HeaderName, InvalidHeader> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| InvalidHeader(name.to_owned()))
}

/// The header value `value` stands for: `%%` unescaped to `%`.
fn value_of(name: &str, value: &str) -> Result<HeaderValue, InvalidHeader> {
    HeaderValue::from_str(&value.replace("%%", "%")).map_err(|_| InvalidHeader(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(set: &[(&str, &str)], add: &[(&str, &str)], remove: &[&str]) -> HeaderOperations {
        let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HeaderOperations { set: pairs(set), add: pairs(add), remove: remove.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn removes_then_sets_then_adds() {
        let (ops, authority) =
            HeaderOps::compile(&ops(&[("x-a", "1")], &[("x-a", "2"), ("x-b", "50%%")], &["x-c", "x-b"])).unwrap();
        assert!(authority.is_none());
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("0"));
        headers.insert("x-b", HeaderValue::from_static("old"));
        headers.insert("x-c", HeaderValue::from_static("gone"));
        ops.apply(&mut headers);
        let all = |n: &str| headers.get_all(n).iter().map(|v| v.to_str().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(all("x-a"), ["1", "2"]);
        assert_eq!(all("x-b"), ["50%"]);
        assert!(headers.get("x-c").is_none());
    }

    #[test]
    fn host_is_an_authority_rewrite() {
        let (ops, authority) = HeaderOps::compile(&ops(&[("Host", "new.example")], &[], &[])).unwrap();
        assert!(ops.is_empty());
        assert_eq!(authority.unwrap(), "new.example");
    }
}
