//! StringMatch, regex and header checks: spec items 11 (regexes), 12
//! (empty prefixes), 13 (header match names), 22 (header operations and
//! values) and the header names of 23 (CORS).
//!
//! Regexes are checked by compiling them with the `regex` crate, whose
//! syntax is RE2's, in the anchored full-match form routing uses.

use super::fields::one_of;
use super::{join, Report};
use crate::config::resources::{HeaderOperations, Headers, StringMatch};

/// Envoy's regex program-size guard, approximated by length as Istio does.
const MAX_REGEX_LEN: usize = 1024;

/// HTTP/2 pseudo-headers accepted as match keys.
const PSEUDO_HEADERS: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];

/// A `StringMatch`: at most one of exact/prefix/regex; `prefix: ""` only
/// where `empty_prefix_ok` (uri); a valid regex.
pub(super) fn string_match(r: &mut Report<'_>, field: &str, m: &StringMatch, empty_prefix_ok: bool) {
    one_of(r, field, &[("exact", m.exact.is_some()), ("prefix", m.prefix.is_some()), ("regex", m.regex.is_some())]);
    if !empty_prefix_ok && m.prefix.as_deref() == Some("") {
        r.error(&join(field, "prefix"), "prefix string match should not be empty");
    }
    if let Some(re) = &m.regex {
        regex(r, &join(field, "regex"), re);
    }
}

/// A regex: non-empty, at most 1024 characters, accepted by RE2 syntax.
pub(super) fn regex(r: &mut Report<'_>, field: &str, re: &str) {
    if re.is_empty() {
        r.error(field, "regex string match should not be empty");
    } else if re.len() > MAX_REGEX_LEN {
        r.error(field, format!("regex is too large, max length allowed is {MAX_REGEX_LEN}"));
    } else if let Err(e) = compile(re) {
        // The crate's messages span several lines (pattern, caret, reason);
        // the last one is the reason.
        let text = e.to_string();
        let why = text.lines().last().unwrap_or_default().trim_start_matches("error: ");
        r.error(field, format!("invalid regex {re:?}: {why}; Istio uses RE2 syntax"));
    }
}

/// Compiles `re` alone (so it cannot close the group it is wrapped in) and
/// as the full match `^(?:re)$` routing uses.
fn compile(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(re)?;
    regex::Regex::new(&format!("^(?:{re})$"))
}

/// `@request.auth.claims.<name>` and `@request.auth.claims[<name>]` keys.
pub(super) fn is_jwt_claim(name: &str) -> bool {
    name.strip_prefix("@request.auth.claims").is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// A header name in `match.headers` / `withoutHeaders`: an HTTP token, a
/// pseudo-header, or a JWT claim key.
pub(super) fn match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    if is_jwt_claim(name) || PSEUDO_HEADERS.contains(&name) || is_token(name) {
        return Ok(());
    }
    Err(format!("header name {name:?} is not a valid header name"))
}

/// A header name in CORS `allowHeaders` / `exposeHeaders`: a token or `*`.
pub(super) fn cors_header_name(name: &str) -> Result<(), String> {
    if name == "*" || is_token(name) {
        Ok(())
    } else {
        Err(format!("header name {name:?} is not a valid header name"))
    }
}

/// RFC 7230 `token` characters.
fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `host` or `:authority`, which request set/add turn into an authority
/// rewrite.
pub(super) fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority")
}

/// Route- or destination-level `headers` (spec item 22).
pub(super) fn header_operations(r: &mut Report<'_>, field: &str, headers: &Headers) {
    if let Some(request) = &headers.request {
        operations(r, &join(field, "request"), request, true);
    }
    if let Some(response) = &headers.response {
        operations(r, &join(field, "response"), response, false);
    }
}

fn operations(r: &mut Report<'_>, field: &str, ops: &HeaderOperations, request: bool) {
    for (verb, map) in [("set", &ops.set), ("add", &ops.add)] {
        let field = join(field, verb);
        for (name, value) in map {
            let named = if request && is_authority_header(name) { Ok(()) } else { operation_name(name) };
            r.check(&field, named);
            r.check(&field, header_value(value).map_err(|why| format!("header {name:?}: {why}")));
        }
    }
    for name in &ops.remove {
        r.check(&join(field, "remove"), operation_name(name));
    }
}

/// A header that may be added, set or removed: not `host`, no `:` prefix.
fn operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("header name cannot be empty".into())
    } else if name.eq_ignore_ascii_case("host") {
        Err(format!("invalid header {name:?}: cannot set or remove the Host header here"))
    } else if name.starts_with(':') {
        Err(format!("invalid header {name:?}: header cannot have \":\" prefix"))
    } else {
        Ok(())
    }
}

/// A header value: no control characters (tab allowed), and well-formed
/// Envoy `%VARIABLE%` / `%VAR(args)%` expressions with `%%` for a literal
/// `%` (a port of Envoy's header parser, as Istio does).
pub(super) fn header_value(value: &str) -> Result<(), String> {
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("header value {value:?} contains control characters"));
    }
    #[derive(PartialEq)]
    enum State {
        Literal,
        Name,
        ExpectArray,
        ExpectString,
        Str,
        ArrayDelimiterOrEnd,
        ArgsEnd,
        VariableEnd,
    }
    let bytes = value.as_bytes();
    let mut state = State::Literal;
    let mut i = 0;
    while i < bytes.len() {
        let ch = bytes[i];
        let next = bytes.get(i + 1).copied();
        state = match state {
            State::Literal if ch == b'%' => match next {
                None => return Err("un-escaped % at the end; write %% for a literal %".into()),
                Some(b'%') => {
                    i += 1;
                    State::Literal
                }
                Some(_) => State::Name,
            },
            State::Literal => State::Literal,
            State::Name if ch == b'%' => State::Literal,
            State::Name if ch == b'(' => State::ExpectArray,
            State::Name => State::Name,
            State::ExpectArray if ch == b'[' => State::ExpectString,
            State::ExpectArray if ch != b' ' => State::Str,
            State::ExpectArray => State::ExpectArray,
            State::ArrayDelimiterOrEnd if ch == b',' => State::ExpectString,
            State::ArrayDelimiterOrEnd if ch == b']' => State::ArgsEnd,
            State::ArrayDelimiterOrEnd if ch != b' ' => {
                return Err("expected ',', ']' or a space in a %VAR([...])% expression".into())
            }
            State::ArrayDelimiterOrEnd => State::ArrayDelimiterOrEnd,
            State::ExpectString if ch == b'"' => State::Str,
            State::ExpectString if ch != b' ' => return Err("expected '\"' in a %VAR([...])% expression".into()),
            State::ExpectString => State::ExpectString,
            State::Str if ch == b'\\' => {
                if next.is_none() {
                    return Err("unterminated backslash in a %VAR(...)% argument".into());
                }
                i += 1;
                State::Str
            }
            State::Str if ch == b')' => State::VariableEnd,
            State::Str if ch == b'"' => State::ArrayDelimiterOrEnd,
            State::Str => State::Str,
            State::ArgsEnd if ch == b')' => State::VariableEnd,
            State::ArgsEnd if ch != b' ' => return Err("expected ')' in a %VAR(...)% expression".into()),
            State::ArgsEnd => State::ArgsEnd,
            State::VariableEnd if ch == b'%' => State::Literal,
            State::VariableEnd if ch != b' ' => return Err("expected '%' after a %VAR(...) expression".into()),
            State::VariableEnd => State::VariableEnd,
        };
        i += 1;
    }
    if state != State::Literal {
        return Err(format!("unterminated variable expression in {value:?}; write %% for a literal %"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn vs_match(m: &str) -> Vec<crate::config::Problem> {
        of("VirtualService", &format!("hosts: [a]\nhttp:\n- match:\n  - {m}\n  route:\n  - destination: {{host: a}}"))
    }

    // Item 11.
    #[test]
    fn regexes_must_compile() {
        assert_error(&vs_match("uri: {regex: \"(\"}"), "spec.http[0].match[0].uri.regex");
        assert_error(&vs_match("uri: {regex: \"\"}"), "spec.http[0].match[0].uri.regex");
        assert_error(
            &vs_match(&format!("uri: {{regex: \"{}\"}}", "a".repeat(1025))),
            "spec.http[0].match[0].uri.regex",
        );
        assert_error(&vs_match("headers: {x: {regex: \"a(?=b)\"}}"), "spec.http[0].match[0].headers.x.regex");
        assert_error(&vs_match("queryParams: {q: {regex: \"[\"}}"), "spec.http[0].match[0].queryParams.q.regex");
        assert_error(&vs_match("authority: {regex: \"a)|(b\"}"), "spec.http[0].match[0].authority.regex");
        assert_clean(&vs_match("uri: {regex: \"/api/v[0-9]+/.*\"}"));
    }

    // Item 12.
    #[test]
    fn empty_prefix_only_on_uri() {
        assert_clean(&vs_match("uri: {prefix: \"\"}"));
        assert_error(&vs_match("method: {prefix: \"\"}"), "spec.http[0].match[0].method.prefix");
        assert_error(&vs_match("headers: {x: {prefix: \"\"}}"), "spec.http[0].match[0].headers.x.prefix");
        assert_error(&vs_match("queryParams: {q: {prefix: \"\"}}"), "spec.http[0].match[0].queryParams.q.prefix");
    }

    #[test]
    fn string_match_is_a_oneof() {
        assert_error(&vs_match("uri: {exact: /a, prefix: /b}"), "spec.http[0].match[0].uri");
    }

    #[test]
    fn header_values() {
        assert!(header_value("foo").is_ok());
        assert!(header_value("%HOSTNAME%").is_ok());
        assert!(header_value("100%%").is_ok());
        assert!(header_value("prefix %REQ(x-foo)% suffix").is_ok());
        assert!(header_value("%UPSTREAM_METADATA([\"a\", \"b\"])%").is_ok());
        assert!(header_value("abc%123").is_err());
        assert!(header_value("%START_TIME%%").is_err());
        assert!(header_value("a\nb").is_err());
        assert!(header_value("a\tb").is_ok());
    }

    #[test]
    fn header_names() {
        assert!(match_header_name("end-user").is_ok());
        assert!(match_header_name(":path").is_ok());
        assert!(match_header_name("@request.auth.claims.sub").is_ok());
        assert!(match_header_name("bad header").is_err());
        assert!(match_header_name("").is_err());
        assert!(cors_header_name("*").is_ok());
        assert!(cors_header_name("x y").is_err());
    }
}
