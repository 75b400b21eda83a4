//! The three fuzzed properties, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, nightly) and the stable randomized test
//! (`tests/fuzz_props.rs`): each takes raw bytes, turns them into a
//! structured input with `arbitrary::Unstructured`, and panics when an
//! invariant breaks.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::{Result, Unstructured};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use meshd::config::load::load_text;
use meshd::config::{validate_loaded, Config};
use meshd::routing::{compile, Compiled, Lookup, OutlierConfig, RequestView};
use meshd::upstream::outlier::{Outcome, OutlierDetector, OutlierState};
use tokio::time::Instant;

/// Real configurations, mutated by [`config_loader`].
const SEEDS: &[&str] = &[
    include_str!("../../config/examples/matches.yaml"),
    include_str!("../../config/examples/resilience.yaml"),
    include_str!("../../config/examples/external-dns.yaml"),
    include_str!("../../config/examples/workload-entries.yaml"),
    include_str!("../../config/demo/reviews.yaml"),
];

/// Fragments spliced into YAML: syntax, anchors, odd scalars, Istio fields.
const TOKENS: &[&str] = &[
    ":",
    "- ",
    "\n",
    " ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "#",
    "'",
    "\"",
    "---\n",
    "&a ",
    "*a",
    "!!binary ",
    "~",
    "null",
    "0",
    "-1",
    "4294967296",
    "1e999",
    "0x1F",
    ".inf",
    "true",
    "\u{0}",
    "\u{feff}",
    "é",
    "*",
    "*.",
    "prefix: ",
    "exact: /",
    "regex: \"(a+)+$\"",
    "regex: \"[\"",
    "weight: ",
    "port: 70000",
    "number: 0",
    "subset: ",
    "host: ",
    "hosts: [\"*\"]",
    "timeout: 1h",
    "timeout: -1s",
    "attempts: 1000000",
    "kind: List\nitems:\n",
    "kind: ",
    "apiVersion: networking.istio.io/v1\n",
    "metadata: {name: x}\n",
    "spec: ",
    "maxEjectionPercent: 101",
    "baseEjectionTime: 0s",
    "consecutive5xxErrors: 0",
    "0.0.0.0",
    "::1",
    "10.0.0.1:80",
];

fn token(u: &mut Unstructured) -> Result<&'static str> {
    u.choose(TOKENS).copied()
}

/// YAML text from bytes: raw bytes as text, or a seed configuration with a
/// few mutations (byte changes, deletions, duplicated ranges, tokens).
pub fn yaml_text(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 8)? {
        let bytes: &[u8] = u.arbitrary()?;
        return Ok(String::from_utf8_lossy(bytes).into_owned());
    }
    let mut text = u.choose(SEEDS)?.as_bytes().to_vec();
    for _ in 0..u.int_in_range(0..=8)? {
        let len = text.len();
        let at = u.int_in_range(0..=len)?;
        match u.int_in_range(0..=4)? {
            0 if at < len => text[at] = u.arbitrary()?,
            1 => {
                let end = (at + u.int_in_range(0..=64)?).min(len);
                text.drain(at..end);
            }
            2 => {
                let end = (at + u.int_in_range(0..=256)?).min(len);
                let copy = text[at..end].to_vec();
                let to = u.int_in_range(0..=len)?;
                text.splice(to..to, copy);
            }
            3 => text.truncate(at),
            _ => {
                let t = token(u)?;
                text.splice(at..at, t.bytes());
            }
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn load(text: &str) -> (Config, Vec<meshd::config::Problem>) {
    let mut config = Config { namespace: "default".into(), ..Config::default() };
    let mut problems = Vec::new();
    load_text(text, &Arc::from(Path::new("fuzz.yaml")), &mut config, &mut problems);
    (config, problems)
}

/// (a) Config loader + validator: never panics; a refusal carries an error;
/// an accepted configuration compiles, routes and serializes.
pub fn config_loader(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(text) = yaml_text(&mut u) else { return };
    let (config, problems) = load(&text);
    match validate_loaded(config, problems) {
        Err(refused) => assert!(refused.problems.iter().any(|p| p.is_error()), "refused without an error"),
        Ok((config, problems)) => {
            assert!(!problems.iter().any(|p| p.is_error()), "accepted with an error: {problems:?}");
            serde_json::to_string(&config).expect("an accepted config serializes");
            let compiled = compile(&config);
            let _ = route_one(&compiled, &mut u);
        }
    }
}

/// The table [`route_matcher`] routes against: the matching examples and
/// the demo, compiled once.
fn fixed_table() -> &'static Compiled {
    static TABLE: OnceLock<Compiled> = OnceLock::new();
    TABLE.get_or_init(|| {
        let text = [SEEDS[0], "\n---\n", SEEDS[1]].concat();
        let (config, problems) = load(&text);
        let (config, _) = validate_loaded(config, problems).expect("the example configuration is valid");
        compile(&config)
    })
}

/// (b) Route matcher: request parts in, against the fixed table or (one
/// input in four) a table compiled from fuzzed YAML.
pub fn route_matcher(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let fuzzed = if u.ratio(1, 4).unwrap_or(false) {
        let Ok(text) = yaml_text(&mut u) else { return };
        if std::env::var_os("MESHD_FUZZ_PRINT").is_some() {
            eprintln!("{text}");
        }
        let (config, problems) = load(&text);
        match validate_loaded(config, problems) {
            Ok((config, _)) => Some(compile(&config)),
            Err(_) => None,
        }
    } else {
        None
    };
    let compiled = fuzzed.as_ref().unwrap_or_else(|| fixed_table());
    for _ in 0..4 {
        if route_one(compiled, &mut u).is_err() {
            break;
        }
    }
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "get", "X-CUSTOM"];
const SEGMENTS: &[&str] =
    &["", "api", "v1", "v2", "reviews", "ratings", "Checkout", "checkout", "..", ".", "%2F", "%00", "*", "a", "é", "/"];
const HEADERS: &[&str] =
    &["x-beta", "x-opt-out", "end-user", "x-user-id", "cookie", "user-agent", "x-version", "host", "x-canary"];
const VALUES: &[&str] = &["", "1", "0", "true", "jason", "v2", "Mozilla/5.0 Chrome", "a=b; c=d", "\t x \t"];

fn pick_str(u: &mut Unstructured, list: &[&'static str]) -> Result<String> {
    Ok(if u.ratio(1, 6)? { u.arbitrary::<String>()? } else { u.choose(list)?.to_string() })
}

/// Routes one request built from `u` and checks the lookup's invariants.
fn route_one(compiled: &Compiled, u: &mut Unstructured) -> Result<()> {
    let table = &compiled.table;
    let names: Vec<&str> =
        table.virtual_hosts.iter().map(|v| &*v.name).filter(|n| !n.starts_with('*') && !n.is_empty()).collect();
    let known = !names.is_empty() && u.ratio(3, 4)?;
    let host = if known { u.choose(&names)?.to_string() } else { u.arbitrary::<String>()? };
    let method = Method::from_bytes(pick_str(u, METHODS)?.as_bytes()).unwrap_or(Method::GET);
    let mut path = String::new();
    for _ in 0..u.int_in_range(0..=5)? {
        path.push('/');
        path.push_str(&pick_str(u, SEGMENTS)?);
    }
    let query = if u.arbitrary()? {
        Some(pick_str(u, &["preview=true", "preview=false", "a=1&preview=true", ""])?)
    } else {
        None
    };
    let mut headers = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=4)? {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(pick_str(u, HEADERS)?.as_bytes()),
            HeaderValue::from_bytes(pick_str(u, VALUES)?.as_bytes()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let port: u16 = if u.arbitrary()? { u.choose(&[80, 443, 8080, 9080])?.to_owned() } else { u.arbitrary()? };
    let scheme = if u.arbitrary()? { "http" } else { "https" };
    let req = |authority: &str| {
        let req = RequestView {
            method: &method,
            scheme,
            authority,
            port,
            path: &path,
            query: query.as_deref(),
            headers: &headers,
        };
        vhost_and_route(table, &req)
    };
    let found = req(&host);
    // Lookups are pure.
    assert_eq!(found, req(&host), "two lookups of one request differ");
    if known {
        // A virtual host's own name finds a virtual host, whatever the
        // case, a port or a trailing dot.
        assert!(found.0.is_some(), "no virtual host for its own name {host:?}");
        for other in [host.to_ascii_uppercase(), format!("{host}:{port}"), format!("{host}.")] {
            assert_eq!(req(&other).0, found.0, "{other:?} and {host:?} find different virtual hosts");
        }
    }
    Ok(())
}

/// (virtual host index, route index) of a lookup; the route is the first
/// whose matcher accepts the request.
fn vhost_and_route(table: &meshd::routing::RouteTable, req: &RequestView) -> (Option<usize>, Option<usize>) {
    match table.find(req) {
        Lookup::NoVirtualHost => (None, None),
        Lookup::NoRoute(vh) => {
            assert!(vh.routes.iter().all(|r| r.matcher.as_ref().is_some_and(|m| !m.matches(req))), "a route matched");
            (Some(index_of(table, vh)), None)
        }
        Lookup::Route(vh, route) => {
            let at = vh.routes.iter().position(|r| std::ptr::eq(r, route)).expect("the route is the host's");
            assert!(
                vh.routes[..at].iter().all(|r| r.matcher.as_ref().is_some_and(|m| !m.matches(req))),
                "an earlier route matches too: first match must win"
            );
            assert!(route.matcher.as_ref().map_or(true, |m| m.matches(req)), "the route found does not match");
            (Some(index_of(table, vh)), Some(at))
        }
    }
}

fn index_of(table: &meshd::routing::RouteTable, vh: &meshd::routing::VirtualHost) -> usize {
    table.virtual_hosts.iter().position(|v| std::ptr::eq(v, vh)).expect("the virtual host is the table's")
}

/// (c) Outlier detector: a random configuration and cluster size, then a
/// sequence of results, sweeps and clock steps. Invariants: never more
/// than `maxEjectionPercent` of the hosts ejected; `ejections_active` is the
/// number ejected; every ejection ends at the first sweep at least
/// `max_ejection_time` after it; at the end, every host is back.
pub fn outlier_detector(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = outlier_run(&mut u);
}

fn threshold(u: &mut Unstructured) -> Result<Option<u32>> {
    Ok(if u.arbitrary()? { Some(u.int_in_range(0..=6)?) } else { None })
}

fn outlier_run(u: &mut Unstructured) -> Result<()> {
    let base = Duration::from_millis(u.int_in_range(1..=60_000)?);
    let config = OutlierConfig {
        consecutive_5xx: threshold(u)?,
        consecutive_gateway_failure: threshold(u)?,
        consecutive_local_origin_failure: threshold(u)?,
        split_external_local_origin_errors: u.arbitrary()?,
        interval: Duration::from_millis(u.int_in_range(1..=20_000)?),
        base_ejection_time: base,
        max_ejection_time: base.max(Duration::from_millis(u.int_in_range(1..=600_000)?)),
        max_ejection_percent: u.int_in_range(0..=120)?,
        min_health_percent: u.int_in_range(0..=100)?,
        error_codes: if u.arbitrary()? { vec![404, 429] } else { vec![] },
    };
    let n = u.int_in_range(1..=24usize)?;
    let hosts: Vec<OutlierState> = (0..n).map(|_| OutlierState::new()).collect();
    let detector = OutlierDetector::new();
    let mut ejected_at: Vec<Option<Instant>> = vec![None; n];
    let t0 = Instant::now();
    let mut now = t0;
    let limit = u64::from(config.max_ejection_percent.min(100));
    let check = |hosts: &[OutlierState], what: &str| {
        let active = hosts.iter().filter(|h| h.is_ejected()).count() as u64;
        assert!(100 * active <= limit * n as u64, "{what}: {active} of {n} ejected at maxEjectionPercent {limit}");
        assert_eq!(detector.stats().ejections_active, active, "{what}: ejections_active");
    };
    let steps = u.int_in_range(0..=400)?;
    for _ in 0..steps {
        match u.int_in_range(0..=9)? {
            0..=5 => {
                let i = u.int_in_range(0..=n - 1)?;
                let outcome = match u.int_in_range(0..=5)? {
                    0 => Outcome::Response(*u.choose(&[200, 404, 429, 500, 502, 503, 504])?),
                    1 => Outcome::Response(u.arbitrary()?),
                    2 => Outcome::ConnectFailure,
                    3 => Outcome::Timeout,
                    4 => Outcome::Reset,
                    _ => Outcome::ConnectSuccess,
                };
                if let Some(trigger) = hosts[i].record(&config, outcome) {
                    let was = hosts[i].is_ejected();
                    let ejected = detector.report(&config, hosts.iter(), &hosts[i], trigger, now);
                    assert!(!(was && ejected), "an ejected host was ejected again");
                    assert_eq!(ejected, hosts[i].is_ejected() && !was, "report's answer");
                    if ejected {
                        ejected_at[i] = Some(now);
                    }
                    check(&hosts, "after report");
                }
            }
            6..=7 => now += Duration::from_millis(u.int_in_range(0..=120_000)?),
            _ => {
                detector.sweep(&config, hosts.iter(), now);
                check(&hosts, "after sweep");
                sweep_check(&config, &hosts, &mut ejected_at, now);
            }
        }
    }
    // Every ejection ends: one sweep after the longest ejection returns all.
    now += config.max_ejection_time;
    detector.sweep(&config, hosts.iter(), now);
    sweep_check(&config, &hosts, &mut ejected_at, now);
    assert!(hosts.iter().all(|h| !h.is_ejected()), "a host is still ejected after max_ejection_time");
    check(&hosts, "final sweep");
    Ok(())
}

fn sweep_check(config: &OutlierConfig, hosts: &[OutlierState], ejected_at: &mut [Option<Instant>], now: Instant) {
    for (i, h) in hosts.iter().enumerate() {
        if !h.is_ejected() {
            ejected_at[i] = None;
            continue;
        }
        let at = ejected_at[i].expect("an ejected host was ejected by a report");
        assert!(
            now.saturating_duration_since(at) < config.max_ejection_time,
            "host {i} still ejected {:?} after its ejection (max {:?})",
            now.saturating_duration_since(at),
            config.max_ejection_time
        );
        let left = h.status(config, now).time_left.expect("an ejected host has time left");
        assert!(left <= config.max_ejection_time, "time left {left:?} beyond max_ejection_time");
    }
}
