//! Gateway server `hosts`: which VirtualService hosts (and SNI hosts) a
//! server admits, and from which namespaces (Istio's `Server.hosts`).
//!
//! An entry is `[namespace/]dnsName`:
//!
//! - `ns/host`: only VirtualServices of namespace `ns`;
//! - `./host`: only VirtualServices of the Gateway's own namespace;
//! - `*/host`, or plain `host`: VirtualServices of any namespace.
//!
//! The name part admits a host when either covers the other, as istiod
//! intersects server and VirtualService hosts: `*` admits everything,
//! `*.example.com` admits `shop.example.com` and `*.eu.example.com`, and a
//! server for `shop.example.com` admits a VirtualService for `*` or
//! `*.example.com` (which it then serves for `shop.example.com` only).

use crate::config::host;

/// One entry of a server's `hosts`, read for a Gateway's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ServerHost<'a> {
    /// The namespace whose VirtualServices it admits; `None`: any.
    namespace: Option<&'a str>,
    /// The name part: an FQDN, `*.suffix` or `*`.
    name: &'a str,
}

// === impl ServerHost ===

impl<'a> ServerHost<'a> {
    /// Reads `entry` of a server of a Gateway in `gateway_namespace`.
    pub(super) fn parse(entry: &'a str, gateway_namespace: &'a str) -> Self {
        match entry.split_once('/') {
            None | Some(("*", _)) => ServerHost { namespace: None, name: name(entry) },
            Some((".", name)) => ServerHost { namespace: Some(gateway_namespace), name },
            Some((namespace, name)) => ServerHost { namespace: Some(namespace), name },
        }
    }

    /// Whether the server serves `host` (a VirtualService host or an SNI
    /// host, lower case) of a VirtualService in `vs_namespace`.
    pub(super) fn admits(&self, vs_namespace: &str, host: &str) -> bool {
        self.namespace.map_or(true, |ns| ns == vs_namespace) && covers_either(self.name, host)
    }
}

/// A server `hosts` entry without its namespace part.
pub(super) fn name(entry: &str) -> &str {
    entry.split_once('/').map_or(entry, |(_, host)| host)
}

/// Whether `pattern` and `host` (either may be a wildcard) overlap.
fn covers_either(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    pattern == "*" || host == "*" || pattern == host || host::covers(&pattern, host) || host::covers(host, &pattern)
}

#[cfg(test)]
mod tests {
    use super::ServerHost;

    #[test]
    fn namespace_part_restricts_the_virtual_services_admitted() {
        let admits = |entry: &str, vs_ns: &str, host: &str| ServerHost::parse(entry, "gw-ns").admits(vs_ns, host);
        // Plain and `*/`: any namespace.
        assert!(admits("shop.example.com", "other", "shop.example.com"));
        assert!(admits("*/shop.example.com", "other", "shop.example.com"));
        // `ns/`: that namespace only.
        assert!(admits("shop/shop.example.com", "shop", "shop.example.com"));
        assert!(!admits("shop/shop.example.com", "other", "shop.example.com"));
        assert!(!admits("shop/shop.example.com", "gw-ns", "shop.example.com"));
        // `./`: the Gateway's namespace only.
        assert!(admits("./shop.example.com", "gw-ns", "shop.example.com"));
        assert!(!admits("./shop.example.com", "shop", "shop.example.com"));
        // `ns/*`: every host of that namespace.
        assert!(admits("shop/*", "shop", "anything.example.org"));
        assert!(!admits("shop/*", "other", "anything.example.org"));
    }

    #[test]
    fn name_part_admits_overlapping_hosts() {
        let admits = |entry: &str, host: &str| ServerHost::parse(entry, "default").admits("default", host);
        assert!(admits("*", "shop.example.com"));
        assert!(admits("*.example.com", "shop.example.com"));
        assert!(admits("*.example.com", "*.eu.example.com"));
        assert!(admits("shop.example.com", "*.example.com"));
        assert!(admits("Shop.Example.com", "shop.example.com"));
        assert!(admits("shop.example.com", "*"));
        assert!(!admits("shop.example.com", "cart.example.com"));
        assert!(!admits("*.example.com", "example.org"));
    }
}
