//! Host names as Istio treats them: short-name expansion (spec §1.2),
//! DNS-name validation, wildcard coverage, and the domain aliases a sidecar
//! generates for a Kubernetes-style service (spec §1.3).

/// The cluster domain Istio appends to short names.
pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Expands a short name (no dot, not `*`, not an IP) with `namespace`:
/// `reviews` in `foo` → `reviews.foo.svc.cluster.local`. Anything with a dot
/// is taken literally. The result is lower-cased.
pub fn expand(host: &str, namespace: &str) -> String {
    let host = host.trim_end_matches('.');
    if host.contains('.') || host == "*" || host.contains(':') || host.is_empty() {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{}.{}", host.to_ascii_lowercase(), namespace, CLUSTER_DOMAIN)
    }
}

/// Whether `pattern` (a host, `*`, or a wildcard such as `*.foo.com` or
/// `*foo.com`) covers `host`. `*.foo.com` covers `a.foo.com` and
/// `a.b.foo.com` but not `foo.com`. Both sides must already be lower-case.
/// `host:port` → (`host`, port); an IPv6 literal keeps its brackets, and
/// a bare IPv6 address or a port that does not parse is all host.
pub fn split_port(authority: &str) -> (&str, Option<u16>) {
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

pub fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            if let Some(inner) = host.strip_prefix('*') {
                // Wildcard against wildcard: the longer one is the subset.
                inner.ends_with(suffix)
            } else {
                host.len() > suffix.len() && host.ends_with(suffix)
            }
        }
        None => pattern == host,
    }
}

/// The `(name, namespace)` of a Kubernetes-style FQDN
/// `name.namespace.svc.cluster.local`, else `None`.
pub fn kube_service(fqdn: &str) -> Option<(&str, &str)> {
    let rest = fqdn.strip_suffix(CLUSTER_DOMAIN)?.strip_suffix('.')?;
    let (name, namespace) = rest.split_once('.')?;
    if name.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some((name, namespace))
}

/// The domains a sidecar in `proxy_namespace` answers for `fqdn`: the FQDN
/// itself and, for a Kubernetes-style name, `name.ns.svc`, `name.ns` and —
/// only from the same namespace — the bare `name`.
pub fn aliases(fqdn: &str, proxy_namespace: &str) -> Vec<String> {
    let mut out = vec![fqdn.to_owned()];
    if let Some((name, namespace)) = kube_service(fqdn) {
        out.push(format!("{name}.{namespace}.svc"));
        out.push(format!("{name}.{namespace}"));
        if namespace == proxy_namespace {
            out.push(name.to_owned());
        }
    }
    out
}

/// Checks a host as Istio's `ValidateWildcardDomain` does: a wildcard is
/// allowed only in the first label (`*`, `*.foo.com`, `*foo.com`,
/// `*-foo.com`); labels of 1–63 characters of `[a-z0-9-]` not starting or
/// ending with `-`; at most 255 characters; a top-level label that is not
/// all digits. Returns the reason on failure.
pub fn check_wildcard_domain(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host.len() > 255 {
        return Err(format!("domain name {host:?} too long (max 255)"));
    }
    if host == "*" {
        return Ok(());
    }
    let (first, rest) = host.split_once('.').unwrap_or((host, ""));
    let checked = match first.strip_prefix('*') {
        // `*.foo.com`: the rest is a plain name.
        Some("") if !rest.is_empty() => check_dns_name(rest),
        // `*foo.com`, `*-foo.com`: the label's remainder may start with `-`.
        Some(tail) => check_dns_label(tail.strip_prefix('-').unwrap_or(tail)).and_then(|()| {
            if rest.is_empty() {
                Ok(())
            } else {
                check_dns_name(rest)
            }
        }),
        None => check_dns_name(host),
    };
    checked.map_err(|why| format!("domain name {host:?} invalid ({why})"))
}

/// Checks a plain DNS name (no wildcard); a trailing dot is allowed.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        check_dns_label(label)?;
    }
    match labels.last() {
        Some(top) if top.bytes().all(|b| b.is_ascii_digit()) => Err("top-level label is all digits".into()),
        _ => Ok(()),
    }
}

/// Checks one DNS-1123 label (`[a-zA-Z0-9-]`, 1–63 chars, no leading or
/// trailing `-`); Istio accepts upper case in hosts.
pub fn check_dns_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > 63 {
        return Err(format!("label {label:?} longer than 63 characters"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("label {label:?} has characters other than [a-z0-9-]"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_short_names_only() {
        assert_eq!(expand("reviews", "foo"), "reviews.foo.svc.cluster.local");
        assert_eq!(expand("Reviews", "foo"), "reviews.foo.svc.cluster.local");
        assert_eq!(expand("reviews.prod", "foo"), "reviews.prod");
        assert_eq!(expand("*", "foo"), "*");
        assert_eq!(expand("*.example.com", "foo"), "*.example.com");
    }

    #[test]
    fn authority_ports() {
        assert_eq!(split_port("a:8080"), ("a", Some(8080)));
        assert_eq!(split_port("a"), ("a", None));
        assert_eq!(split_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(split_port("::1"), ("::1", None));
        assert_eq!(split_port("a:x"), ("a:x", None));
    }

    #[test]
    fn wildcard_coverage() {
        assert!(covers("*.foo.com", "a.foo.com"));
        assert!(covers("*.foo.com", "a.b.foo.com"));
        assert!(!covers("*.foo.com", "foo.com"));
        assert!(covers("*", "anything"));
        assert!(covers("*.foo.com", "*.a.foo.com"));
        assert!(!covers("*.a.foo.com", "*.foo.com"));
        assert!(covers("a.foo.com", "a.foo.com"));
    }

    #[test]
    fn kube_aliases() {
        let fqdn = "reviews.default.svc.cluster.local";
        assert_eq!(aliases(fqdn, "default"), vec![fqdn, "reviews.default.svc", "reviews.default", "reviews"]);
        assert_eq!(aliases(fqdn, "other").len(), 3);
        assert_eq!(aliases("www.example.com", "default"), vec!["www.example.com"]);
    }

    #[test]
    fn domain_checks() {
        assert!(check_wildcard_domain("*.foo.com").is_ok());
        assert!(check_wildcard_domain("*").is_ok());
        assert!(check_wildcard_domain("reviews").is_ok());
        assert!(check_wildcard_domain("foo_bar.com").is_err());
        assert!(check_wildcard_domain("*foo*.com").is_err());
        assert!(check_wildcard_domain("foo.123").is_err());
        assert!(check_wildcard_domain("123").is_err());
        assert!(check_wildcard_domain("*.123").is_err());
        assert!(check_wildcard_domain("*-foo.com").is_ok());
        assert!(check_wildcard_domain("*foo.com").is_ok());
        assert!(check_wildcard_domain("*.").is_err());
        assert!(check_wildcard_domain(&"a".repeat(64)).is_err());
    }
}
