//! Basic Gateway checks (the spec's §6 has no Gateway items; these follow
//! Istio's `ValidateGateway`): servers present, each with a port (number
//! 1..65535, a name, a known protocol), `ns/host` hosts, a known TLS mode,
//! TLS settings on HTTPS/TLS ports, and certificates for SIMPLE/MUTUAL.

use std::collections::BTreeSet;

use super::fields::{self, is_set};
use super::Report;
use crate::config::host;
use crate::config::resources::{Gateway, Server, ServerTlsSettings};

/// Server port protocols.
const PROTOCOLS: [&str; 10] = ["HTTP", "HTTPS", "HTTP2", "GRPC", "GRPC-WEB", "MONGO", "TCP", "TLS", "REDIS", "MYSQL"];

/// Server TLS modes.
const TLS_MODES: [&str; 6] = ["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"];

/// Checks one Gateway; `r` is rooted at `spec`.
pub(super) fn check(gateway: &Gateway, r: &mut Report<'_>) {
    if gateway.servers.is_empty() {
        r.error("servers", "gateway must have at least one server");
    }
    let mut port_names = BTreeSet::new();
    for (i, server) in gateway.servers.iter().enumerate() {
        let mut r = r.at(format!("servers[{i}]"));
        self::server(&mut r, server);
        if let Some(port) = server.port.as_ref().filter(|p| !p.name.is_empty()) {
            if !port_names.insert(port.name.as_str()) {
                r.error("port.name", format!("port names in servers must be unique: duplicate name {}", port.name));
            }
        }
    }
}

/// One server; `r` is rooted at it.
fn server(r: &mut Report<'_>, server: &Server) {
    if server.hosts.is_empty() {
        r.error("hosts", "server config must contain at least one host");
    }
    for (i, name) in server.hosts.iter().enumerate() {
        r.check(&format!("hosts[{i}]"), server_host(name));
    }
    let Some(port) = &server.port else {
        r.error("port", "port is required");
        return;
    };
    let unix_bind = server.bind.as_deref().is_some_and(|b| b.starts_with("unix://"));
    if port.number != 0 || !unix_bind {
        fields::port(r, "port.number", port.number);
    }
    if port.name.is_empty() {
        r.error("port.name", "port name must be set");
    }
    let protocol = port.protocol.to_ascii_uppercase();
    if !PROTOCOLS.contains(&protocol.as_str()) {
        r.error(
            "port.protocol",
            format!("invalid protocol {:?}: expected one of {}", port.protocol, PROTOCOLS.join(", ")),
        );
    }
    let needs_tls = protocol == "HTTPS" || protocol == "TLS";
    match &server.tls {
        None if needs_tls => r.error("tls", "server must have TLS settings for HTTPS/TLS protocols"),
        None => {}
        Some(tls) => self::tls(&mut r.at("tls"), tls),
    }
}

/// A server host: `[namespace/]dnsName`, where the namespace is `*`, `.`
/// or a DNS label and the name is `*`, an FQDN (wildcard prefix allowed) or
/// an IP.
fn server_host(value: &str) -> Result<(), String> {
    let name = match value.split_once('/') {
        Some((namespace, name)) => {
            if namespace.is_empty() || name.is_empty() {
                return Err(format!("host {value:?}: namespace and dnsName cannot be empty"));
            }
            if namespace != "*" && namespace != "." && !fields::is_label(namespace) {
                return Err(format!(
                    "host {value:?}: invalid namespace {namespace:?} (expected *, . or a DNS-1123 label)"
                ));
            }
            name
        }
        None => value,
    };
    if name != "*" && !name.contains('.') {
        return Err(format!("host {value:?}: short names (non FQDN) are not allowed"));
    }
    if !fields::is_ip(name) {
        host::check_wildcard_domain(name).map_err(|why| format!("host {value:?}: {why}"))?;
    }
    if name.contains('*') && name != "*" && !name.starts_with("*.") {
        return Err(format!("host {value:?}: partial wildcard not allowed"));
    }
    Ok(())
}

/// Server TLS settings; `r` is rooted at `tls`.
fn tls(r: &mut Report<'_>, tls: &ServerTlsSettings) {
    let mode = tls.mode.as_deref().unwrap_or("PASSTHROUGH");
    if !TLS_MODES.contains(&mode) {
        r.error("mode", format!("invalid TLS mode {mode:?}: expected one of {}", TLS_MODES.join(", ")));
        return;
    }
    let credential = is_set(&tls.credential_name) || !tls.credential_names.is_empty();
    if !matches!(mode, "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL") || credential {
        return;
    }
    if !is_set(&tls.server_certificate) {
        r.error("serverCertificate", format!("{mode} TLS requires a server certificate or a credentialName"));
    }
    if !is_set(&tls.private_key) {
        r.error("privateKey", format!("{mode} TLS requires a private key or a credentialName"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn gw(servers: &str) -> Vec<crate::config::Problem> {
        of("Gateway", &format!("selector: {{istio: ingressgateway}}\nservers:\n{servers}"))
    }

    #[test]
    fn servers_required() {
        assert_error(&of("Gateway", "selector: {istio: ingressgateway}"), "spec.servers");
    }

    #[test]
    fn ports_and_protocols() {
        let p = gw("- port: {number: 70000, name: http, protocol: HTTP}\n  hosts: [\"*\"]\n- port: {number: 80, protocol: FTP}\n  hosts: [\"*\"]\n- hosts: [\"*\"]");
        assert_error(&p, "spec.servers[0].port.number");
        assert_error(&p, "spec.servers[1].port.protocol");
        assert_error(&p, "spec.servers[1].port.name");
        assert_error(&p, "spec.servers[2].port");
    }

    #[test]
    fn hosts() {
        let p = gw("- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [reviews, \"bad_ns/a.com\", \"*.a.com\", \"ns/*\", \"./b.com\", \"a*.com\"]");
        assert_error(&p, "spec.servers[0].hosts[0]");
        assert_error(&p, "spec.servers[0].hosts[1]");
        assert_error(&p, "spec.servers[0].hosts[5]");
        assert!(
            !p.iter().any(|p| ["spec.servers[0].hosts[2]", "spec.servers[0].hosts[3]", "spec.servers[0].hosts[4]"]
                .contains(&p.field.as_str())),
            "{p:?}"
        );
        assert_error(&gw("- port: {number: 80, name: http, protocol: HTTP}\n  hosts: []"), "spec.servers[0].hosts");
    }

    #[test]
    fn tls_settings() {
        assert_error(
            &gw("- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [a.com]"),
            "spec.servers[0].tls",
        );
        let p = gw("- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [a.com]\n  tls: {mode: SIMPLE}");
        assert_error(&p, "spec.servers[0].tls.serverCertificate");
        assert_error(&p, "spec.servers[0].tls.privateKey");
        assert_error(
            &gw("- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [a.com]\n  tls: {mode: STRICT}"),
            "spec.servers[0].tls.mode",
        );
        assert_clean(&gw("- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [a.com]\n  tls: {mode: SIMPLE, credentialName: cert}"));
        assert_clean(&gw(
            "- port: {number: 443, name: tls, protocol: TLS}\n  hosts: [a.com]\n  tls: {mode: PASSTHROUGH}",
        ));
        assert!(server_host("10.0.0.1").is_ok());
    }
}
