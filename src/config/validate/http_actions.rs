//! What an `http[]` rule does to the request besides routing it: spec
//! items 18 (mirrors), 19 (redirect), 20 (rewrite), 21 (authority set
//! once), 22 (headers, via [`strings::header_operations`]) and 24
//! (directResponse).

use base64::Engine;

use super::fields::{self, is_set as set, one_of};
use super::http_route::destination;
use super::{strings, Report};
use crate::config::resources::{HttpDirectResponse, HttpMatchRequest, HttpRedirect, HttpRewrite, HttpRoute};

/// Direct-response bodies above this are refused, above [`BODY_WARN`] warned.
const BODY_MAX: usize = 1024 * 1024;
const BODY_WARN: usize = 100 * 1024;

/// Redirect codes istiod turns into a route action (spec §1.7).
const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

/// Checks mirrors, redirect, rewrite, headers and directResponse; `r` is
/// rooted at the rule.
pub(super) fn check(r: &mut Report<'_>, rule: &HttpRoute) {
    mirrors(r, rule);
    if let Some(redirect) = &rule.redirect {
        self::redirect(&mut r.at("redirect"), redirect, &rule.matches);
    }
    if let Some(rewrite) = &rule.rewrite {
        self::rewrite(&mut r.at("rewrite"), rewrite);
    }
    authority_once(r, rule);
    if let Some(headers) = &rule.headers {
        strings::header_operations(r, "headers", headers);
    }
    for (i, d) in rule.route.iter().enumerate() {
        if let Some(headers) = &d.headers {
            strings::header_operations(r, &format!("route[{i}].headers"), headers);
        }
    }
    if let Some(response) = &rule.direct_response {
        direct_response(&mut r.at("directResponse"), response);
    }
}

/// Item 18.
fn mirrors(r: &mut Report<'_>, rule: &HttpRoute) {
    if let Some(mirror) = &rule.mirror {
        destination(&mut r.at("mirror"), mirror);
    }
    if let Some(p) = &rule.mirror_percentage {
        fields::percent(r, "mirrorPercentage.value", p.value);
    }
    if let Some(p) = rule.mirror_percent {
        if p > 100 {
            r.error("mirrorPercent", format!("mirrorPercent must have a max value of 100 (it has {p})"));
        }
        r.warning("mirrorPercent", "mirrorPercent is deprecated; use mirrorPercentage");
    }
    for (i, m) in rule.mirrors.iter().enumerate() {
        let mut r = r.at(format!("mirrors[{i}]"));
        match &m.destination {
            None => r.error("", "destination is required for mirrors"),
            Some(dest) => destination(&mut r.at("destination"), dest),
        }
        if let Some(p) = &m.percentage {
            fields::percent(&mut r, "percentage.value", p.value);
        }
    }
}

/// Item 19; `r` is rooted at `redirect`.
fn redirect(r: &mut Report<'_>, redirect: &HttpRedirect, matches: &[HttpMatchRequest]) {
    one_of(r, "", &[("uri", set(&redirect.uri)), ("prefixRewrite", set(&redirect.prefix_rewrite))]);
    one_of(r, "", &[("port", redirect.port.is_some()), ("derivePort", redirect.derive_port.is_some())]);
    let targets = [set(&redirect.uri), set(&redirect.prefix_rewrite), set(&redirect.authority), set(&redirect.scheme)];
    if !targets.contains(&true) && redirect.port.is_none() && redirect.derive_port.is_none() {
        r.error("", "redirect must specify uri, prefixRewrite, authority, scheme, port or derivePort");
    }
    if set(&redirect.prefix_rewrite) && matches.iter().any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none())) {
        r.error("prefixRewrite", "prefixRewrite needs every uri match of the rule to be a prefix match");
    }
    match redirect.redirect_code {
        Some(code) if code != 0 && !(300..=399).contains(&code) => {
            r.error("redirectCode", format!("{code} is not a valid redirect code, must be 3xx"))
        }
        Some(code) if code != 0 && !REDIRECT_CODES.contains(&code) => r.error(
            "redirectCode",
            format!("redirect code {code} is not supported; expected 301, 302, 303, 307 or 308"),
        ),
        _ => {}
    }
    if let Some(scheme) = redirect.scheme.as_deref().filter(|s| !s.is_empty() && *s != "http" && *s != "https") {
        r.error("scheme", format!("invalid redirect scheme {scheme:?}, must be \"http\" or \"https\""));
    }
    if let Some(port) = redirect.port.filter(|p| *p != 0) {
        fields::port(r, "port", port);
    }
}

/// Item 20; `r` is rooted at `rewrite`.
fn rewrite(r: &mut Report<'_>, rewrite: &HttpRewrite) {
    if set(&rewrite.uri) && rewrite.uri_regex_rewrite.is_some() {
        r.error("", "rewrite may only contain one of uri or uriRegexRewrite");
    }
    if !set(&rewrite.uri) && !set(&rewrite.authority) && rewrite.uri_regex_rewrite.is_none() {
        r.error("", "rewrite must specify at least one of uri, uriRegexRewrite or authority");
    }
    if let Some(re) = &rewrite.uri_regex_rewrite {
        if re.match_.is_empty() || re.rewrite.is_empty() {
            r.error("uriRegexRewrite", "uriRegexRewrite requires both match and rewrite");
        }
        if !re.match_.is_empty() {
            strings::regex(r, "uriRegexRewrite.match", &re.match_);
        }
    }
}

/// Item 21: the authority is rewritten in one place only.
fn authority_once(r: &mut Report<'_>, rule: &HttpRoute) {
    let mut sources = Vec::new();
    if rule.rewrite.as_ref().is_some_and(|rw| set(&rw.authority)) {
        sources.push("rewrite.authority".to_owned());
    }
    if let Some(request) = rule.headers.as_ref().and_then(|h| h.request.as_ref()) {
        for (verb, map) in [("set", &request.set), ("add", &request.add)] {
            let names = map.keys().filter(|name| strings::is_authority_header(name));
            sources.extend(names.map(|name| format!("headers.request.{verb}.{name}")));
        }
    }
    if let [first, rest @ ..] = sources.as_slice() {
        for again in rest {
            r.error(again, format!("authority header cannot be set multiple times: already set by {first}"));
        }
    }
}

/// Item 24; `r` is rooted at `directResponse`.
fn direct_response(r: &mut Report<'_>, response: &HttpDirectResponse) {
    if !(200..=600).contains(&response.status) {
        r.error("status", format!("HTTP status {} is not in range 200..600", response.status));
    }
    let Some(body) = &response.body else { return };
    one_of(
        r,
        "body",
        &[("string", body.string.is_some()), ("bytes", body.bytes.is_some()), ("file", body.file.is_some())],
    );
    let size = match (&body.string, &body.bytes, &body.file) {
        (Some(s), _, _) => s.len(),
        (None, Some(b), _) => match base64::engine::general_purpose::STANDARD.decode(b.trim()) {
            Ok(bytes) => bytes.len(),
            Err(e) => {
                r.error("body.bytes", format!("body.bytes is not valid base64: {e}"));
                0
            }
        },
        // Read when the route is compiled: it must exist and fit.
        (None, None, Some(file)) => match std::fs::metadata(file) {
            Ok(meta) if meta.is_file() => usize::try_from(meta.len()).unwrap_or(usize::MAX),
            Ok(_) => {
                r.error("body.file", format!("{file} is not a file"));
                0
            }
            Err(e) => {
                r.error("body.file", format!("cannot read {file}: {e}"));
                0
            }
        },
        (None, None, None) => 0,
    };
    if size > BODY_MAX {
        r.error("body", format!("direct response body is {size} bytes; it must be at most 1MiB"));
    } else if size > BODY_WARN {
        r.warning("body", format!("direct response body is {size} bytes; bodies over 100KiB may impact performance"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    // Item 18.
    #[test]
    fn mirror_percentages() {
        let p = rule(&format!("{ROUTE}\nmirror: {{host: b}}\nmirrorPercentage: {{value: 101}}"));
        assert_error(&p, "spec.http[0].mirrorPercentage.value");
        let p = rule(&format!("{ROUTE}\nmirrors:\n- destination: {{host: b}}\n  percentage: {{value: -1}}"));
        assert_error(&p, "spec.http[0].mirrors[0].percentage.value");
        let p = rule(&format!("{ROUTE}\nmirror: {{host: b}}\nmirrorPercent: 101"));
        assert_error(&p, "spec.http[0].mirrorPercent");
        assert_error(&rule(&format!("{ROUTE}\nmirrors:\n- percentage: {{value: 5}}")), "spec.http[0].mirrors[0]");
    }

    // Item 19.
    #[test]
    fn redirects() {
        assert_error(&rule("redirect: {uri: /a, prefixRewrite: /b}"), "spec.http[0].redirect");
        assert_error(
            &rule("match:\n- uri: {exact: /a}\nredirect: {prefixRewrite: /b}"),
            "spec.http[0].redirect.prefixRewrite",
        );
        assert_error(&rule("redirect: {redirectCode: 301}"), "spec.http[0].redirect");
        assert_error(&rule("redirect: {uri: /a, redirectCode: 200}"), "spec.http[0].redirect.redirectCode");
        assert_error(&rule("redirect: {uri: /a, redirectCode: 304}"), "spec.http[0].redirect.redirectCode");
        assert_error(&rule("redirect: {uri: /a, scheme: ftp}"), "spec.http[0].redirect.scheme");
        assert_error(&rule("redirect: {uri: /a, port: 70000}"), "spec.http[0].redirect.port");
        assert_clean(&rule("match:\n- uri: {prefix: /a}\nredirect: {prefixRewrite: /b, redirectCode: 308, derivePort: FROM_REQUEST_PORT}"));
    }

    // Item 20.
    #[test]
    fn rewrites() {
        let both = format!("rewrite: {{uri: /a, uriRegexRewrite: {{match: a, rewrite: b}}}}\n{ROUTE}");
        assert_error(&rule(&both), "spec.http[0].rewrite");
        assert_error(&rule(&format!("rewrite: {{}}\n{ROUTE}")), "spec.http[0].rewrite");
        assert_error(
            &rule(&format!("rewrite: {{uriRegexRewrite: {{match: a}}}}\n{ROUTE}")),
            "spec.http[0].rewrite.uriRegexRewrite",
        );
        let bad = format!("rewrite: {{uriRegexRewrite: {{match: \"(\", rewrite: b}}}}\n{ROUTE}");
        assert_error(&rule(&bad), "spec.http[0].rewrite.uriRegexRewrite.match");
        assert_clean(&rule(&format!(
            "rewrite: {{uriRegexRewrite: {{match: \"^/v1/(.*)\", rewrite: \"/\\\\1\"}}}}\n{ROUTE}"
        )));
    }

    // Item 21.
    #[test]
    fn authority_only_once() {
        let p = rule(&format!("rewrite: {{authority: a}}\nheaders: {{request: {{set: {{host: b}}}}}}\n{ROUTE}"));
        assert_error(&p, "spec.http[0].headers.request.set.host");
        assert_clean(&rule(&format!("headers: {{request: {{set: {{host: b}}}}}}\n{ROUTE}")));
    }

    // Item 22.
    #[test]
    fn header_operations() {
        let p = rule(&format!("headers: {{request: {{set: {{\":path\": /x}}}}}}\n{ROUTE}"));
        assert_error(&p, "spec.http[0].headers.request.set");
        assert_error(
            &rule(&format!("headers: {{request: {{remove: [host]}}}}\n{ROUTE}")),
            "spec.http[0].headers.request.remove",
        );
        assert_error(
            &rule(&format!("headers: {{response: {{add: {{\":status\": \"1\"}}}}}}\n{ROUTE}")),
            "spec.http[0].headers.response.add",
        );
        assert_error(
            &rule(&format!("headers: {{response: {{set: {{x: \"50%\"}}}}}}\n{ROUTE}")),
            "spec.http[0].headers.response.set",
        );
        let p = rule("route:\n- destination: {host: a}\n  headers: {request: {set: {\":method\": GET}}}");
        assert_error(&p, "spec.http[0].route[0].headers.request.set");
        assert_clean(&rule(&format!("headers: {{request: {{set: {{x-a: \"%HOSTNAME%\"}}, remove: [x-b]}}}}\n{ROUTE}")));
    }

    // Item 24.
    #[test]
    fn direct_responses() {
        assert_error(&rule("directResponse: {status: 700}"), "spec.http[0].directResponse.status");
        let big = format!("directResponse: {{status: 200, body: {{string: \"{}\"}}}}", "a".repeat(200 * 1024));
        assert_warning(&rule(&big), "spec.http[0].directResponse.body");
        assert_no_error(&rule(&big));
        assert_error(
            &rule("directResponse: {status: 200, body: {string: a, bytes: YQ==}}"),
            "spec.http[0].directResponse.body",
        );
    }
}
