//! `rewrite` of an HTTP rule (spec §1.9), and the path part of a
//! `redirect` (§1.7), which follows the same rules.
//!
//! - `uri` is Envoy's `prefix_rewrite`: the matched part of the path is
//!   replaced. With a `prefix` match that is the prefix; with `exact` or
//!   `regex` it is the whole path; a rule without a uri match has the
//!   implicit prefix `/`, so `rewrite.uri: /v1` turns `/foo` into `/v1foo`,
//!   as Istio does.
//! - `uriRegexRewrite` is Envoy's `regex_rewrite`: every match of the RE2
//!   pattern in the path is replaced; `\1` in the replacement is the first
//!   capture group.
//! - The query string is kept.

use regex::Regex;

use crate::config::resources::StringMatch;

/// How a path is rewritten.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// Replace the matched prefix (`prefix`, its length in bytes) with
    /// `with`.
    Prefix { prefix: usize, with: Box<str> },
    /// Replace the whole path.
    Whole(Box<str>),
    /// Replace every match of `regex` with `with` (`$1`-style groups).
    Regex { regex: Regex, with: Box<str> },
}

/// A regex validation should have refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid regex: {0}")]
pub struct InvalidRewrite(String);

// === impl InvalidRewrite ===

impl InvalidRewrite {
    pub fn new(why: String) -> Self {
        InvalidRewrite(why)
    }
}

// === impl PathRewrite ===

impl PathRewrite {
    /// Envoy's `prefix_rewrite` of `with`, for a route matching `uri`.
    pub fn replacing_match(uri: Option<&StringMatch>, with: &str) -> Self {
        let with: Box<str> = with.into();
        match uri {
            Some(StringMatch { prefix: Some(prefix), .. }) => PathRewrite::Prefix { prefix: prefix.len(), with },
            Some(StringMatch { exact: Some(_), .. }) | Some(StringMatch { regex: Some(_), .. }) => {
                PathRewrite::Whole(with)
            }
            _ => PathRewrite::Prefix { prefix: 1, with },
        }
    }

    /// Envoy's `regex_rewrite`: `rewrite` may name groups as `\1`.
    pub fn regex(pattern: &str, rewrite: &str) -> Result<Self, InvalidRewrite> {
        let regex = Regex::new(pattern).map_err(|e| InvalidRewrite(format!("uriRegexRewrite: {e}")))?;
        Ok(PathRewrite::Regex { regex, with: substitution(rewrite).into() })
    }

    /// The new path for `path` (no query string).
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::Prefix { prefix, with } => {
                let rest = path.get(*prefix..).unwrap_or("");
                format!("{with}{rest}")
            }
            PathRewrite::Whole(with) => with.to_string(),
            PathRewrite::Regex { regex, with } => regex.replace_all(path, &**with).into_owned(),
        }
    }
}

/// An RE2 substitution (`\1`, `\\`) as the `regex` crate writes it
/// (`${1}`, `$$` for a literal `$`).
fn substitution(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len() + 4);
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    chars.next();
                    out.push_str(&format!("${{{d}}}"));
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> StringMatch {
        StringMatch { prefix: Some(p.into()), ..StringMatch::default() }
    }

    #[test]
    fn prefix_exact_and_implicit_matches() {
        assert_eq!(PathRewrite::replacing_match(Some(&prefix("/foo")), "/bar").apply("/foo/baz"), "/bar/baz");
        assert_eq!(PathRewrite::replacing_match(Some(&prefix("/foo")), "/").apply("/foo/baz"), "//baz");
        let exact = StringMatch { exact: Some("/a".into()), ..StringMatch::default() };
        assert_eq!(PathRewrite::replacing_match(Some(&exact), "/b").apply("/a"), "/b");
        // The implicit prefix `/` of a rule without a uri match.
        assert_eq!(PathRewrite::replacing_match(None, "/v1").apply("/foo"), "/v1foo");
    }

    #[test]
    fn regex_rewrite_with_groups() {
        let rw = PathRewrite::regex("^/service/([^/]+)(/.*)$", "\\2/instance/\\1").unwrap();
        assert_eq!(rw.apply("/service/foo/v1/api"), "/v1/api/instance/foo");
        let all = PathRewrite::regex("a", "$b").unwrap();
        assert_eq!(all.apply("/aXa"), "/$bX$b");
        assert!(PathRewrite::regex("(", "x").is_err());
    }
}
