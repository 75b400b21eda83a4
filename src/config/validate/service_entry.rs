//! ServiceEntry and WorkloadEntry: spec items 39 (hosts), 40 (selector vs
//! endpoints), 41 (addresses), 42 (ports), 43–45 (resolution and
//! endpoints), 46–47 (endpoint addresses, ports, labels, unix sockets), 48
//! (several hosts on opaque ports), 49 (exportTo, via
//! [`fields::export_to`]), 50 (DYNAMIC_DNS) and 51 (missing addresses,
//! standalone WorkloadEntry addresses).

use std::collections::BTreeSet;

use super::fields::{self, Export};
use super::Report;
use crate::config::host;
use crate::config::resources::{PortProtocol, Resolution, ServiceEntry, ServicePort, WorkloadEntry};

/// Protocol names Istio parses (case-insensitive).
const PROTOCOLS: [&str; 12] =
    ["HTTP", "HTTPS", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB", "TCP", "TLS", "UDP", "MONGO", "REDIS", "MYSQL"];

/// The scheme of unix-socket endpoint addresses.
const UNIX: &str = "unix://";

/// How an endpoint address is read.
#[derive(Clone, Copy, Debug)]
enum Endpoint<'a> {
    /// STATIC resolution: an IP or a unix socket, checked against the
    /// ServiceEntry's ports.
    Static(&'a [ServicePort]),
    /// DNS resolutions: an IP or an FQDN.
    Dns(&'a [ServicePort]),
    /// A standalone WorkloadEntry: any of those, ports unknown.
    Standalone,
}

/// Checks one ServiceEntry in `namespace`; `r` is rooted at `spec`.
pub(super) fn check(se: &ServiceEntry, namespace: &str, r: &mut Report<'_>) {
    let resolution = se.resolution.unwrap_or_default();
    hosts(r, se, resolution);
    if let Some(selector) = &se.workload_selector {
        fields::workload_selector(r, "workloadSelector", selector);
        if !se.endpoints.is_empty() {
            r.error("", "only one of workloadSelector or endpoints is allowed in a service entry");
        }
    }
    for (i, address) in se.addresses.iter().enumerate() {
        let field = format!("addresses[{i}]");
        r.check(&field, fields::ip_or_cidr(address));
        if address.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
            r.error(&field, "CIDR addresses are allowed only for NONE/STATIC resolution types");
        }
    }
    ports(r, se);
    endpoints(r, se, resolution);
    if resolution != Resolution::None && se.hosts.len() > 1 && !se.ports.iter().all(http_or_tls) {
        r.error("hosts", "multiple hosts provided with non-HTTP, non-TLS ports");
    }
    if resolution == Resolution::DynamicDns {
        dynamic_dns(r, se);
    }
    fields::export_to(r, namespace, &se.export_to, Export::ServiceEntry);
}

/// Item 39.
fn hosts(r: &mut Report<'_>, se: &ServiceEntry, resolution: Resolution) {
    if se.hosts.is_empty() {
        r.error("hosts", "service entry must have at least one host");
    }
    for (i, name) in se.hosts.iter().enumerate() {
        let field = format!("hosts[{i}]");
        if name == "*" {
            r.error(&field, "invalid host *: a service entry cannot match every host");
            continue;
        }
        r.check(&field, host::check_wildcard_domain(name));
        let partial = name.contains('*') && !name.starts_with("*.");
        if partial && resolution != Resolution::DynamicDns {
            r.warning(
                &field,
                format!("partial wildcard {name:?} not allowed; use a wildcard label such as *.example.com"),
            );
        }
    }
}

/// Items 42 and 51 (missing addresses).
fn ports(r: &mut Report<'_>, se: &ServiceEntry) {
    let (mut names, mut numbers) = (BTreeSet::new(), BTreeSet::new());
    for (i, port) in se.ports.iter().enumerate() {
        let mut r = r.at(format!("ports[{i}]"));
        if !names.insert(port.name.as_str()) {
            r.error("name", format!("service entry port name {:?} already defined", port.name));
        }
        if !numbers.insert(port.number) {
            r.error("number", format!("service entry port {} already defined", port.number));
        }
        if !fields::is_label(&port.name) {
            r.error("name", format!("invalid port name {:?}: expected a DNS-1123 label", port.name));
        }
        fields::port(&mut r, "number", port.number);
        if let Some(target) = port.target_port.filter(|t| *t != 0) {
            fields::port(&mut r, "targetPort", target);
        }
        let protocol = port.protocol.as_deref().unwrap_or_default();
        if !protocol.is_empty() && !PROTOCOLS.iter().any(|p| p.eq_ignore_ascii_case(protocol)) {
            r.error("protocol", format!("unsupported protocol {protocol:?}: expected one of {}", PROTOCOLS.join(", ")));
        }
        let tcp = matches!(port.protocol(), PortProtocol::Tcp | PortProtocol::Unspecified);
        if tcp && se.addresses.is_empty() {
            r.warning(
                "",
                "addresses are required for ports serving TCP (or unset) protocol when IP autoallocation is not enabled; \
                 the port alone identifies the service",
            );
        }
    }
}

/// Items 43–47 (and the endpoint part of 40 and 50).
fn endpoints(r: &mut Report<'_>, se: &ServiceEntry, resolution: Resolution) {
    let mode = match resolution {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                r.error("endpoints", "no endpoints should be provided for resolution type NONE");
            }
            if se.workload_selector.is_some() {
                r.warning("workloadSelector", "workloadSelector should not be set when resolution mode is NONE");
            }
            return;
        }
        Resolution::DynamicDns => return,
        Resolution::Static => Endpoint::Static(&se.ports),
        Resolution::Dns | Resolution::DnsRoundRobin => Endpoint::Dns(&se.ports),
    };
    if matches!(mode, Endpoint::Dns(_)) && se.endpoints.is_empty() {
        let name = if resolution == Resolution::Dns { "DNS" } else { "DNS_ROUND_ROBIN" };
        for (i, h) in se.hosts.iter().enumerate() {
            if host::check_dns_name(h).is_err() {
                r.error(
                    &format!("hosts[{i}]"),
                    format!("hosts must be FQDN if no endpoints are provided for resolution mode {name}"),
                );
            }
        }
    }
    if resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
        r.error("endpoints", "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN");
    }
    for (i, endpoint) in se.endpoints.iter().enumerate() {
        workload_entry(&mut r.at(format!("endpoints[{i}]")), endpoint, mode);
    }
}

/// Item 50.
fn dynamic_dns(r: &mut Report<'_>, se: &ServiceEntry) {
    for (i, name) in se.hosts.iter().enumerate().filter(|(_, h)| !h.starts_with('*')) {
        r.error(&format!("hosts[{i}]"), format!("host {name:?} must be a wildcard for resolution DYNAMIC_DNS"));
    }
    if !se.addresses.is_empty() {
        r.error("addresses", "addresses are not allowed for resolution DYNAMIC_DNS");
    }
    if !se.endpoints.is_empty() {
        r.error("endpoints", "endpoints are not allowed for resolution DYNAMIC_DNS");
    }
    for (i, port) in se.ports.iter().enumerate() {
        if !http_or_tls(port) {
            r.error(
                &format!("ports[{i}].protocol"),
                "resolution DYNAMIC_DNS supports only HTTP, HTTP2, GRPC, HTTPS and TLS ports",
            );
        }
    }
}

/// A port whose protocol tells hosts apart (Host header or SNI). An unset
/// protocol does not: Istio counts it as unknown.
fn http_or_tls(port: &ServicePort) -> bool {
    let http_proxy = port.protocol.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("HTTP_PROXY"));
    http_proxy
        || matches!(
            port.protocol(),
            PortProtocol::Http | PortProtocol::Http2 | PortProtocol::Grpc | PortProtocol::Https | PortProtocol::Tls
        )
}

/// Checks a standalone WorkloadEntry; `r` is rooted at `spec`.
pub(super) fn check_workload_entry(we: &WorkloadEntry, r: &mut Report<'_>) {
    workload_entry(r, we, Endpoint::Standalone);
}

/// Items 46, 47 and the WorkloadEntry part of 51; `r` is rooted at the entry.
fn workload_entry(r: &mut Report<'_>, we: &WorkloadEntry, mode: Endpoint<'_>) {
    let address = we.address.as_str();
    match (address.strip_prefix(UNIX), mode) {
        _ if address.is_empty() => match (we.network.as_deref().filter(|n| !n.is_empty()), mode) {
            (_, Endpoint::Dns(_)) => r.error("address", "endpoint address \"\" is not a valid FQDN or an IP address"),
            (Some(network), _) => r.warning("address", format!("address is unset with network {network:?}")),
            (None, _) => r.error("address", "address is required"),
        },
        (Some(path), Endpoint::Static(_) | Endpoint::Standalone) => {
            r.check("address", unix_path(path));
            if !we.ports.is_empty() {
                r.error("ports", format!("unix endpoint {address} must not include ports"));
            }
            if matches!(mode, Endpoint::Static(ports) if ports.len() != 1) {
                r.error("address", "exactly 1 service port required for unix endpoints");
            }
        }
        (_, Endpoint::Static(_)) if !fields::is_ip(address) => {
            r.error("address", format!("endpoint address {address:?} is not an IP address or a unix:// path"))
        }
        _ if !fields::is_ip(address) && host::check_dns_name(address).is_err() => {
            r.error("address", format!("endpoint address {address:?} is not a valid FQDN or an IP address"))
        }
        _ => {}
    }
    let declared = match mode {
        Endpoint::Static(ports) | Endpoint::Dns(ports) => Some(ports),
        Endpoint::Standalone => None,
    };
    for (name, number) in &we.ports {
        let field = format!("ports.{name}");
        if declared.is_some_and(|ports| !ports.iter().any(|p| &p.name == name)) {
            r.error(&field, format!("endpoint port {name:?} is not defined by the service entry"));
        }
        if !fields::is_label(name) {
            r.error(&field, format!("invalid port name {name:?}: expected a DNS-1123 label"));
        }
        fields::port(r, &field, *number);
    }
    fields::labels(r, "labels", &we.labels);
}

/// A unix socket path: absolute and not a directory, or `@abstract`.
fn unix_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        Err("unix address must not be empty".into())
    } else if path.starts_with('@') || (path.starts_with('/') && !path.ends_with('/')) {
        Ok(())
    } else {
        Err(format!("{path} is not an absolute path to a file"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    fn se(spec: &str) -> Vec<crate::config::Problem> {
        of("ServiceEntry", spec)
    }

    const PORTS: &str = "ports: [{number: 443, name: https, protocol: HTTPS}]";

    // Item 39.
    #[test]
    fn hosts() {
        assert_error(&se(PORTS), "spec.hosts");
        assert_error(&se(&format!("hosts: [\"*\"]\n{PORTS}")), "spec.hosts[0]");
        assert_error(&se(&format!("hosts: [foo_bar.com]\n{PORTS}")), "spec.hosts[0]");
        let p = se(&format!("hosts: [\"*foo.com\"]\n{PORTS}"));
        assert_warning(&p, "spec.hosts[0]");
        assert_no_error(&p);
    }

    // Item 40.
    #[test]
    fn selector_or_endpoints() {
        let p = se(&format!("hosts: [a.com]\n{PORTS}\nresolution: STATIC\nworkloadSelector: {{labels: {{app: \"*\"}}}}\nendpoints: [{{address: 1.1.1.1}}]"));
        assert_error(&p, "spec");
        assert_error(&p, "spec.workloadSelector");
    }

    // Item 41.
    #[test]
    fn addresses() {
        let p = se(&format!("hosts: [a.com]\n{PORTS}\nresolution: DNS\naddresses: [10.0.0.0/8, nope]"));
        assert_error(&p, "spec.addresses[0]");
        assert_error(&p, "spec.addresses[1]");
        assert_clean(&se(&format!(
            "hosts: [a.com]\n{PORTS}\nresolution: STATIC\naddresses: [10.0.0.0/8]\nendpoints: [{{address: 10.0.0.1}}]"
        )));
    }

    // Item 42.
    #[test]
    fn ports() {
        let spec = "hosts: [a.com]\nresolution: DNS\naddresses: [10.1.1.1]\nports:\n- {number: 80, name: http, protocol: HTTP}\n- {number: 80, name: http, protocol: BOGUS}\n- {number: 0, name: Bad_Name, targetPort: 70000}";
        let p = se(spec);
        assert_error(&p, "spec.ports[1].name");
        assert_error(&p, "spec.ports[1].number");
        assert_error(&p, "spec.ports[1].protocol");
        assert_error(&p, "spec.ports[2].name");
        assert_error(&p, "spec.ports[2].number");
        assert_error(&p, "spec.ports[2].targetPort");
    }

    // Item 43.
    #[test]
    fn resolution_none() {
        assert_error(&se(&format!("hosts: [a.com]\n{PORTS}\nendpoints: [{{address: 1.1.1.1}}]")), "spec.endpoints");
        let p = se(&format!("hosts: [a.com]\n{PORTS}\nworkloadSelector: {{labels: {{app: a}}}}"));
        assert_warning(&p, "spec.workloadSelector");
        assert_no_error(&p);
    }

    // Items 44 and 45.
    #[test]
    fn dns_resolutions() {
        assert_error(&se(&format!("hosts: [\"*.a.com\"]\n{PORTS}\nresolution: DNS")), "spec.hosts[0]");
        let p = se(&format!(
            "hosts: [a.com]\n{PORTS}\nresolution: DNS_ROUND_ROBIN\nendpoints: [{{address: b.com}}, {{address: c.com}}]"
        ));
        assert_error(&p, "spec.endpoints");
        assert_clean(&se(&format!("hosts: [\"*.a.com\"]\n{PORTS}\nresolution: DNS\nendpoints: [{{address: b.com}}]")));
    }

    // Item 46.
    #[test]
    fn endpoint_addresses_ports_labels() {
        let spec = format!("hosts: [a.com]\n{PORTS}\nresolution: STATIC\nendpoints:\n- {{address: b.com}}\n- {{address: 1.1.1.1, ports: {{tcp: 80}}, labels: {{\"-x\": y}}}}");
        let p = se(&spec);
        assert_error(&p, "spec.endpoints[0].address");
        assert_error(&p, "spec.endpoints[1].ports.tcp");
        assert_error(&p, "spec.endpoints[1].labels");
        let p = se(&format!("hosts: [a.com]\n{PORTS}\nresolution: DNS\nendpoints: [{{address: \"b_c.com\"}}]"));
        assert_error(&p, "spec.endpoints[0].address");
    }

    // Item 47.
    #[test]
    fn unix_endpoints() {
        let two = "ports: [{number: 80, name: http, protocol: HTTP}, {number: 81, name: http2, protocol: HTTP}]";
        let p = se(&format!("hosts: [a.com]\n{two}\nresolution: STATIC\nendpoints: [{{address: \"unix:///sock\", ports: {{http: 80}}}}]"));
        assert_error(&p, "spec.endpoints[0].ports");
        assert_error(&p, "spec.endpoints[0].address");
        assert_clean(&se(&format!(
            "hosts: [a.com]\n{PORTS}\nresolution: STATIC\nendpoints: [{{address: \"unix:///var/run/a.sock\"}}]"
        )));
    }

    // Item 48.
    #[test]
    fn several_hosts_need_http_or_tls() {
        let tcp = "addresses: [10.0.0.1]\nports: [{number: 5432, name: pg, protocol: TCP}]";
        assert_error(&se(&format!("hosts: [a.com, b.com]\n{tcp}\nresolution: DNS")), "spec.hosts");
        assert_no_error(&se(&format!("hosts: [a.com, b.com]\n{tcp}")));
        assert_clean(&se(&format!("hosts: [a.com, b.com]\n{PORTS}\nresolution: DNS")));
    }

    // Item 49.
    #[test]
    fn export_to_none_alone() {
        assert_error(&se(&format!("hosts: [a.com]\n{PORTS}\nexportTo: [\"~\", \".\"]")), "spec.exportTo");
        assert_clean(&se(&format!("hosts: [a.com]\n{PORTS}\nexportTo: [\"~\"]")));
    }

    // Item 50.
    #[test]
    fn dynamic_dns() {
        let spec = "hosts: [a.com]\nresolution: DYNAMIC_DNS\naddresses: [1.1.1.1]\nports: [{number: 5432, name: pg, protocol: TCP}]";
        let p = se(spec);
        assert_error(&p, "spec.hosts[0]");
        assert_error(&p, "spec.addresses");
        assert_error(&p, "spec.ports[0].protocol");
        assert_clean(&se(&format!("hosts: [\"*.a.com\"]\n{PORTS}\nresolution: DYNAMIC_DNS")));
    }

    // Item 51.
    #[test]
    fn missing_addresses_and_workload_entries() {
        let p = se("hosts: [a.com]\nports: [{number: 22, name: ssh, protocol: tcp}]\nresolution: DNS");
        assert_warning(&p, "spec.ports[0]");
        assert_no_error(&p);
        assert_error(&of("WorkloadEntry", "labels: {app: a}"), "spec.address");
        let p = of("WorkloadEntry", "network: n1");
        assert_warning(&p, "spec.address");
        assert_no_error(&p);
        assert_clean(&of("WorkloadEntry", "address: vm.example.com\nports: {http: 8080}\nlabels: {app: a}"));
        assert_error(&of("WorkloadEntry", "address: \"unix://rel\""), "spec.address");
    }
}
