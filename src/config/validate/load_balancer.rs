//! A DestinationRule `loadBalancer` block: spec items 34 (consistent hash,
//! warmup, locality vs zone-aware) and 35 (locality load balancing).

use std::collections::BTreeSet;

use super::fields::{self, one_of};
use super::Report;
use crate::config::resources::{ConsistentHashLb, LoadBalancerSettings, LocalityLbSetting};

/// Envoy's bound on the maglev table size.
const MAGLEV_MAX: u64 = 5_000_011;

/// Labels that may not be combined with `failover` in `failoverPriority`.
const TOPOLOGY_LABELS: [&str; 3] =
    ["topology.kubernetes.io/region", "topology.kubernetes.io/zone", "topology.istio.io/subzone"];

/// Checks one `loadBalancer`; `r` is rooted at it. `has_outlier` says
/// whether the same policy level sets `outlierDetection` (failover needs it).
pub(super) fn check(r: &mut Report<'_>, lb: &LoadBalancerSettings, has_outlier: bool) {
    one_of(r, "", &[("simple", lb.simple.is_some()), ("consistentHash", lb.consistent_hash.is_some())]);
    one_of(
        r,
        "",
        &[
            ("localityLbSetting", lb.locality_lb_setting.is_some()),
            ("zoneAwareLbSetting", lb.zone_aware_lb_setting.is_some()),
        ],
    );
    one_of(r, "", &[("warmup", lb.warmup.is_some()), ("warmupDurationSecs", lb.warmup_duration_secs.is_some())]);
    if let Some(hash) = &lb.consistent_hash {
        consistent_hash(&mut r.at("consistentHash"), hash);
    }
    if let Some(locality) = &lb.locality_lb_setting {
        if let Err(why) = self::locality(locality) {
            r.error(&format!("localityLbSetting.{}", why.0), why.1);
        }
        let fails_over = !locality.failover.is_empty() || !locality.failover_priority.is_empty();
        if fails_over && !has_outlier {
            r.warning(
                "localityLbSetting",
                "locality failover needs outlierDetection on the same policy; without it there is no failover",
            );
        }
    }
    if let Some(warmup) = &lb.warmup {
        let mut r = r.at("warmup");
        match &warmup.duration {
            None => r.error("duration", "duration is required"),
            Some(duration) => fields::duration(&mut r, "duration", duration),
        }
        if let Some(min) = warmup.minimum_percent {
            fields::percent(&mut r, "minimumPercent", min);
        }
        if let Some(aggression) = warmup.aggression.filter(|a| *a <= 0.0) {
            r.error("aggression", format!("aggression {aggression} must be greater than 0"));
        }
    }
}

/// Item 34 for `consistentHash`; `r` is rooted at it.
fn consistent_hash(r: &mut Report<'_>, hash: &ConsistentHashLb) {
    let keys = [
        ("httpHeaderName", hash.http_header_name.is_some()),
        ("httpCookie", hash.http_cookie.is_some()),
        ("useSourceIp", hash.use_source_ip.is_some()),
        ("httpQueryParameterName", hash.http_query_parameter_name.is_some()),
    ];
    one_of(r, "", &keys);
    one_of(r, "", &[("ringHash", hash.ring_hash.is_some()), ("maglev", hash.maglev.is_some())]);
    if let Some(cookie) = &hash.http_cookie {
        if cookie.name.is_empty() {
            r.error("httpCookie.name", "name required for HttpCookie");
        }
        let mut names = BTreeSet::new();
        for (i, attribute) in cookie.attributes.iter().enumerate() {
            let field = format!("httpCookie.attributes[{i}].name");
            if attribute.name.is_empty() {
                r.error(&field, "cookie attribute name cannot be empty");
            } else if !names.insert(attribute.name.as_str()) {
                r.error(&field, format!("duplicate cookie attribute name {:?}", attribute.name));
            }
        }
    }
    if hash.minimum_ring_size.unwrap_or(0) != 0 {
        if hash.ring_hash.is_some() || hash.maglev.is_some() {
            r.error("minimumRingSize", "only one of minimumRingSize or maglev/ringHash can be specified");
        } else {
            r.warning("minimumRingSize", "minimumRingSize is deprecated; use ringHash.minimumRingSize");
        }
    }
    if let Some(maglev) = &hash.maglev {
        let size = maglev.table_size.unwrap_or(0);
        let why = if size == 0 {
            Some("tableSize must be set for maglev".to_owned())
        } else if size >= MAGLEV_MAX {
            Some(format!("tableSize must be less than {MAGLEV_MAX} for maglev"))
        } else if !is_prime(size) {
            Some(format!("tableSize {size} must be a prime number for maglev"))
        } else {
            None
        };
        if let Some(why) = why {
            r.error("maglev.tableSize", why);
        }
    }
}

/// Envoy's primality test for maglev table sizes.
fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n > 1;
    }
    if n % 2 == 0 {
        return false;
    }
    (3..).step_by(2).take_while(|f| f * f <= n).all(|f| n % f != 0)
}

/// Item 35. Returns the first problem as (relative field, message), the way
/// Istio stops at the first locality error.
fn locality(lb: &LocalityLbSetting) -> Result<(), (String, String)> {
    let err = |field: &str, message: String| Err((field.to_owned(), message));
    if !lb.distribute.is_empty() && !lb.failover.is_empty() {
        return err("failover", "can not simultaneously specify 'distribute' and 'failover'".into());
    }
    if !lb.failover.is_empty() {
        if let Some(label) = lb.failover_priority.iter().find(|l| TOPOLOGY_LABELS.contains(&l.as_str())) {
            return err(
                "failoverPriority",
                format!("can not simultaneously set 'failover' and topology label '{label}' in 'failoverPriority'"),
            );
        }
    }
    for (i, d) in lb.distribute.iter().enumerate() {
        let field = format!("distribute[{i}].to");
        if let Some((locality, weight)) = d.to.iter().find(|(_, w)| !(1..=100).contains(*w)) {
            return err(&field, format!("locality weight {weight} of {locality} must be in range [1, 100]"));
        }
        let total: u32 = d.to.values().sum();
        if total != 100 {
            return err(&field, format!("total locality weight {total} != 100"));
        }
        localities(d.to.keys()).or_else(|why| err(&field, why))?;
    }
    localities(lb.distribute.iter().map(|d| &d.from)).or_else(|why| err("distribute", why))?;
    for (i, f) in lb.failover.iter().enumerate() {
        let field = format!("failover[{i}]");
        if f.from == f.to {
            return err(&field, "locality lb failover settings must specify different regions".into());
        }
        if f.from.contains('/') || f.to.contains('/') {
            return err(&field, "locality lb failover only specifies regions (no '/')".into());
        }
        if f.from.contains('*') || f.to.contains('*') {
            return err(&field, "locality lb failover region should not contain '*' wildcard".into());
        }
    }
    Ok(())
}

/// `region[/zone[/subzone]]` with an optional trailing `*`, no empty
/// segment, none overlapping another.
fn localities<'a>(list: impl Iterator<Item = &'a String>) -> Result<(), String> {
    let mut seen: Vec<Vec<&str>> = Vec::new();
    for locality in list {
        let stars = locality.matches('*').count();
        if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
            return Err(format!("locality {locality} wildcard '*' number can not exceed 1 and must be in the end"));
        }
        let segments: Vec<&str> = locality.splitn(3, '/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!("locality {locality} must not contain empty region/zone/subzone info"));
        }
        if seen.iter().any(|prev| overlap(prev, &segments)) {
            return Err(format!("locality {locality} overlap with previous specified ones"));
        }
        seen.push(segments);
    }
    Ok(())
}

/// Two localities overlap when one is, segment for segment, a prefix of the
/// other or a `*` stands where they differ.
fn overlap(a: &[&str], b: &[&str]) -> bool {
    for (x, y) in a.iter().zip(b) {
        if *x == "*" || *y == "*" {
            return true;
        }
        if x != y {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn lb(spec: &str) -> Vec<crate::config::Problem> {
        of("DestinationRule", &format!("host: reviews\ntrafficPolicy:\n  loadBalancer: {spec}"))
    }

    const AT: &str = "spec.trafficPolicy.loadBalancer";

    // Item 34.
    #[test]
    fn consistent_hash_and_warmup() {
        assert_error(&lb("{consistentHash: {httpCookie: {ttl: 0s}}}"), &format!("{AT}.consistentHash.httpCookie.name"));
        let p = lb("{consistentHash: {httpCookie: {name: c, attributes: [{name: a}, {name: a}, {name: \"\"}]}}}");
        assert_error(&p, &format!("{AT}.consistentHash.httpCookie.attributes[1].name"));
        assert_error(&p, &format!("{AT}.consistentHash.httpCookie.attributes[2].name"));
        assert_error(
            &lb("{consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}}"),
            &format!("{AT}.consistentHash.maglev.tableSize"),
        );
        assert_error(
            &lb("{consistentHash: {useSourceIp: true, maglev: {}}}"),
            &format!("{AT}.consistentHash.maglev.tableSize"),
        );
        assert_error(
            &lb("{consistentHash: {useSourceIp: true, maglev: {tableSize: 5000011}}}"),
            &format!("{AT}.consistentHash.maglev.tableSize"),
        );
        let p = lb("{consistentHash: {useSourceIp: true, minimumRingSize: 10, ringHash: {minimumRingSize: 10}}}");
        assert_error(&p, &format!("{AT}.consistentHash.minimumRingSize"));
        assert_warning(
            &lb("{consistentHash: {useSourceIp: true, minimumRingSize: 10}}"),
            &format!("{AT}.consistentHash.minimumRingSize"),
        );
        assert_error(&lb("{localityLbSetting: {enabled: true}, zoneAwareLbSetting: {}}"), AT);
        assert_error(&lb("{warmup: {minimumPercent: 101, aggression: 0}}"), &format!("{AT}.warmup.duration"));
        assert_error(&lb("{warmup: {duration: 1s, minimumPercent: 101}}"), &format!("{AT}.warmup.minimumPercent"));
        assert_error(&lb("{warmup: {duration: 1s, aggression: 0}}"), &format!("{AT}.warmup.aggression"));
        assert_error(&lb("{warmup: {duration: 1s}, warmupDurationSecs: 10s}"), AT);
        assert_clean(&lb("{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}}"));
        assert_clean(&lb("{simple: LEAST_REQUEST, warmup: {duration: 30s, aggression: 1.5}}"));
        assert!(is_prime(2) && is_prime(65537) && !is_prime(1) && !is_prime(9));
    }

    // Item 35.
    #[test]
    fn locality_settings() {
        let both = "{localityLbSetting: {distribute: [{from: a, to: {b: 100}}], failover: [{from: a, to: b}]}}";
        assert_error(&lb(both), &format!("{AT}.localityLbSetting.failover"));
        assert_error(
            &lb("{localityLbSetting: {distribute: [{from: a, to: {b: 60, c: 30}}]}}"),
            &format!("{AT}.localityLbSetting.distribute[0].to"),
        );
        assert_error(
            &lb("{localityLbSetting: {distribute: [{from: a, to: {b: 0, c: 100}}]}}"),
            &format!("{AT}.localityLbSetting.distribute[0].to"),
        );
        assert_error(
            &lb("{localityLbSetting: {distribute: [{from: \"a/*/c\", to: {b: 100}}]}}"),
            &format!("{AT}.localityLbSetting.distribute"),
        );
        assert_error(
            &lb("{localityLbSetting: {distribute: [{from: \"a//c\", to: {b: 100}}]}}"),
            &format!("{AT}.localityLbSetting.distribute"),
        );
        assert_error(
            &lb("{localityLbSetting: {distribute: [{from: a, to: {b: 100}}, {from: a/z, to: {b: 100}}]}}"),
            &format!("{AT}.localityLbSetting.distribute"),
        );
        assert_error(
            &lb("{localityLbSetting: {failover: [{from: a, to: a}]}}"),
            &format!("{AT}.localityLbSetting.failover[0]"),
        );
        assert_error(
            &lb("{localityLbSetting: {failover: [{from: a/z, to: b}]}}"),
            &format!("{AT}.localityLbSetting.failover[0]"),
        );
        let p = lb(
            "{localityLbSetting: {failover: [{from: a, to: b}], failoverPriority: [topology.kubernetes.io/region]}}",
        );
        assert_error(&p, &format!("{AT}.localityLbSetting.failoverPriority"));
        let p = lb("{localityLbSetting: {failover: [{from: a, to: b}]}}");
        assert_warning(&p, &format!("{AT}.localityLbSetting"));
        assert_no_error(&p);
        let good = "host: reviews\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 1}\n  loadBalancer: {localityLbSetting: {distribute: [{from: \"us/*\", to: {\"us/a/*\": 80, \"eu/*\": 20}}]}}";
        assert_clean(&of("DestinationRule", good));
    }
}
