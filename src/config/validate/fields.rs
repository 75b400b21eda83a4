//! Field checks shared by several kinds: port ranges, durations,
//! percentages, DNS labels, label maps, workload selectors, gateway names,
//! IPs and CIDRs, `exportTo` (spec items 27, 38, 49), and "only one of"
//! groups for the fields Istio's protos declare as `oneof`.
//!
//! The range checks carry Istio's wording and back items 10, 14–19, 32–34,
//! 40–42 and 46.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::Report;
use crate::config::host;
use crate::config::resources::{Duration, Labels, WorkloadSelector};

/// Which kind's `exportTo` rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Export {
    /// VirtualService, or DestinationRule without a workload selector:
    /// `.`, `*` or namespaces.
    Rule,
    /// DestinationRule with a workload selector: its own namespace only.
    SelectorRule,
    /// ServiceEntry: `~` (no one) is allowed too, but alone.
    ServiceEntry,
}

/// Port numbers: 1..65535.
pub(super) fn port(r: &mut Report<'_>, field: &str, number: u32) {
    if !(1..=65535).contains(&number) {
        r.error(field, format!("port number {number} must be in the range 1..65535"));
    }
}

/// Durations: at least 1ms, whole milliseconds (Istio's `ValidateDuration`).
pub(super) fn duration(r: &mut Report<'_>, field: &str, value: &Duration) {
    if value.nanos < 1_000_000 {
        r.error(field, format!("duration {value} must be at least 1ms"));
    } else if !value.is_whole_millis() {
        r.error(
            field,
            format!("duration {value} has sub-millisecond precision; only whole milliseconds are supported"),
        );
    }
}

/// Percentages: 0..100.
pub(super) fn percent(r: &mut Report<'_>, field: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        r.error(field, format!("percentage {value} is not in range 0..100"));
    }
}

/// Counts that must not be negative.
pub(super) fn non_negative(r: &mut Report<'_>, field: &str, value: Option<i64>) {
    if let Some(value) = value.filter(|v| *v < 0) {
        r.error(field, format!("{value} must not be negative"));
    }
}

/// At most one of a protobuf `oneof` group may be set.
pub(super) fn one_of(r: &mut Report<'_>, field: &str, group: &[(&str, bool)]) {
    if group.iter().filter(|(_, set)| *set).count() > 1 {
        let names: Vec<&str> = group.iter().map(|(name, _)| *name).collect();
        r.error(field, format!("only one of {} may be set", names.join(", ")));
    }
}

/// A string field that is present and non-empty (proto3 cannot tell
/// "empty" from "unset", so Istio treats both alike).
pub(super) fn is_set(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| !v.is_empty())
}

/// A DNS-1123 label as Istio checks it (`labels.IsDNS1123Label`: letters of
/// either case, digits and `-`, 1–63 characters, alphanumeric at both ends).
pub(super) fn is_label(value: &str) -> bool {
    host::check_dns_label(value).is_ok()
}

pub(super) fn is_ip(value: &str) -> bool {
    value.parse::<IpAddr>().is_ok()
}

/// An IP, or a CIDR block when the value has one `/`.
pub(super) fn ip_or_cidr(value: &str) -> Result<(), String> {
    if value.matches('/').count() == 1 {
        return value.parse::<ipnet::IpNet>().map(drop).map_err(|_| format!("{value} is not a valid CIDR block"));
    }
    if is_ip(value) {
        Ok(())
    } else {
        Err(format!("{value} is not a valid IP"))
    }
}

/// Kubernetes label keys (`[prefix/]name`) and values.
pub(super) fn labels(r: &mut Report<'_>, field: &str, labels: &Labels) {
    for (key, value) in labels {
        if let Err(why) = label_key(key) {
            r.error(field, format!("invalid label key {key:?}: {why}"));
        }
        if !value.is_empty() && !is_qualified_name(value) {
            r.error(field, format!("invalid label value {value:?} for key {key:?}: expected alphanumerics, '-', '_' or '.', starting and ending alphanumeric"));
        }
    }
}

fn label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.len() > 253 {
                return Err("prefix longer than 253 characters".into());
            }
            prefix.split('.').try_for_each(host::check_dns_label).map_err(|why| format!("prefix {why}"))?;
            name
        }
        None => key,
    };
    if name.len() > 63 {
        return Err("name longer than 63 characters".into());
    }
    if !is_qualified_name(name) {
        return Err("expected alphanumerics, '-', '_' or '.', starting and ending alphanumeric".into());
    }
    Ok(())
}

/// `(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `workloadSelector`: no empty keys, no `*`; no labels at all selects
/// every workload of the namespace (a warning).
pub(super) fn workload_selector(r: &mut Report<'_>, field: &str, selector: &WorkloadSelector) {
    for (key, value) in &selector.labels {
        if key.is_empty() {
            r.error(field, format!("empty key is not supported in selector: \"{key}={value}\""));
        }
        if key.contains('*') || value.contains('*') {
            r.error(field, format!("wildcard is not supported in selector: \"{key}={value}\""));
        }
    }
    if selector.labels.is_empty() {
        r.warning(field, "workload selector specified without labels; it selects every workload in the namespace");
    }
}

/// Gateway references: `ns/name` with both parts DNS labels, or a bare
/// name (`mesh`, a same-namespace gateway, legacy `name.ns` with a warning).
pub(super) fn gateway_names(r: &mut Report<'_>, field: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        let field = format!("{field}[{i}]");
        match name.split_once('/') {
            None => {
                if let Some((gateway, namespace)) = name.split_once('.') {
                    r.warning(
                        &field,
                        format!(
                            "legacy gateway name format {name:?}; prefer namespace/name: \"{namespace}/{gateway}\""
                        ),
                    );
                }
                r.check(
                    &field,
                    host::check_dns_name(name).map_err(|why| format!("invalid gateway name {name:?}: {why}")),
                );
            }
            Some((namespace, gateway)) => {
                if !is_label(namespace) {
                    r.error(&field, format!("invalid gateway namespace {namespace:?}: expected a DNS-1123 label"));
                }
                if !is_label(gateway) {
                    r.error(&field, format!("invalid gateway name {gateway:?}: expected a DNS-1123 label"));
                }
            }
        }
    }
}

/// `exportTo` entries of a resource in `namespace` (spec items 27, 38, 49).
pub(super) fn export_to(r: &mut Report<'_>, namespace: &str, entries: &[String], kind: Export) {
    let mut seen = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("exportTo[{i}]");
        let key = if entry == "." { namespace } else { entry.as_str() };
        if seen.contains(key) {
            let message = if key == entry {
                format!("duplicate entries in exportTo for entry {entry}")
            } else {
                format!("duplicate entries in exportTo: . and current namespace {namespace}")
            };
            r.error(&field, message);
        } else if key == "~" && kind != Export::ServiceEntry {
            r.error(&field, "exportTo ~ (none) is only allowed for ServiceEntry");
        } else if key != "*" && key != "~" && !is_label(key) {
            r.error(
                &field,
                format!("invalid exportTo entry {entry:?}: expected ., *, or a namespace (DNS-1123 label)"),
            );
        } else {
            seen.insert(key);
        }
    }
    if kind == Export::SelectorRule && !seen.is_empty() {
        if !seen.contains(namespace) {
            r.error(
                "exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        } else if seen.len() > 1 {
            r.error("exportTo", "destination rule with workload selector cannot have multiple entries in exportTo");
        }
    }
    if seen.contains("*") && entries.len() > 1 {
        r.error("exportTo", "cannot have both public (*) and non-public exportTo values for a resource");
    }
    if seen.contains("~") && entries.len() > 1 {
        r.error("exportTo", "cannot export service entry to no one (~) and someone");
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn labels_follow_kubernetes_rules() {
        assert!(label_key("version").is_ok());
        assert!(label_key("topology.kubernetes.io/region").is_ok());
        assert!(label_key("a_b.c-d").is_ok());
        assert!(label_key("-a").is_err());
        assert!(label_key("a/").is_err());
        assert!(label_key("bad_prefix/a").is_err());
        assert!(label_key(&"a".repeat(64)).is_err());
        assert!(is_qualified_name("v1.0"));
        assert!(!is_qualified_name("v1 "));
    }

    #[test]
    fn ips_and_cidrs() {
        assert!(ip_or_cidr("10.0.0.1").is_ok());
        assert!(ip_or_cidr("10.0.0.0/8").is_ok());
        assert!(ip_or_cidr("2001:db8::/32").is_ok());
        assert!(ip_or_cidr("10.0.0.0/33").is_err());
        assert!(ip_or_cidr("example.com").is_err());
    }

    // Item 27.
    #[test]
    fn export_to_rules() {
        let p =
            of("VirtualService", "hosts: [a]\nexportTo: [\".\", default]\nhttp:\n- route:\n  - destination: {host: a}");
        assert_error(&p, "spec.exportTo[1]");
        let p = of("VirtualService", "hosts: [a]\nexportTo: [\"*\", foo]\nhttp:\n- route:\n  - destination: {host: a}");
        assert_error(&p, "spec.exportTo");
        let p = of("VirtualService", "hosts: [a]\nexportTo: [\"~\"]\nhttp:\n- route:\n  - destination: {host: a}");
        assert_error(&p, "spec.exportTo[0]");
        let p = of("VirtualService", "hosts: [a]\nexportTo: [Foo_Bar]\nhttp:\n- route:\n  - destination: {host: a}");
        assert_error(&p, "spec.exportTo[0]");
        let p =
            of("VirtualService", "hosts: [a]\nexportTo: [\".\", other]\nhttp:\n- route:\n  - destination: {host: a}");
        assert_no_error(&p);
    }

    // Item 14 (gateway names).
    #[test]
    fn gateway_name_forms() {
        let p = of("VirtualService", "hosts: [a.com]\ngateways: [istio-system/gw, gw, mesh, \"bad/na_me\"]\nhttp:\n- route:\n  - destination: {host: a}");
        assert_error(&p, "spec.gateways[3]");
        assert!(!p.iter().any(|p| p.field == "spec.gateways[0]" || p.field == "spec.gateways[1]"), "{p:?}");
        let p = of(
            "VirtualService",
            "hosts: [a.com]\ngateways: [gw.istio-system]\nhttp:\n- route:\n  - destination: {host: a}",
        );
        assert_warning(&p, "spec.gateways[0]");
        assert_no_error(&p);
    }
}
