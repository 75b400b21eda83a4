//! What one cluster's resolved Istio policy means for meshd: the balancer,
//! circuit-breaker thresholds, connection settings, outlier detection,
//! consistent hashing and slow start, with the defaults Istio and Envoy
//! apply when a field is omitted (spec §2.3–2.8, §8).
//!
//! These are plain values compiled once per reload; the stateful side
//! ([`crate::upstream`]) reads them.

use std::time::Duration;

use http::HeaderName;

use super::policy::ResolvedPolicy;
use crate::config::resources::{
    ConnectionPoolSettings, ConsistentHashLb, H2UpgradePolicy, HttpSettings, LoadBalancerSettings, OutlierDetection,
    PortProtocol, SimpleLb, TcpKeepalive,
};

/// Envoy's "unlimited" threshold, which Istio emits for every unset limit.
pub const UNLIMITED: u64 = u32::MAX as u64;

/// The traffic policy of one cluster after Istio's override rules
/// (spec §2.2), and what meshd derives from it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPolicy {
    pub lb: LbPolicy,
    /// `tcp.connectTimeout`, default 10 s.
    pub connect_timeout: Duration,
    /// Cluster-wide circuit-breaker thresholds.
    pub limits: CircuitBreakers,
    /// How upstream connections are opened, reused and retired.
    pub pool: PoolSettings,
    /// `outlierDetection`; `None` when the block is absent (no ejection).
    pub outlier: Option<OutlierConfig>,
    /// `consistentHash`: the request key and the hash table to look it up
    /// in. When set, [`lb`](Self::lb) is not used.
    pub hash: Option<HashPolicy>,
    /// Slow start for endpoints added to a live cluster.
    pub warmup: Option<Warmup>,
    /// The resolved Istio blocks, kept whole for `/config_dump` and for the
    /// parts of meshd that interpret them later (TLS).
    pub resolved: ResolvedPolicy,
}

/// `loadBalancer.simple`, with Istio's default `LEAST_REQUEST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// Original destination; until sidecar capture exists meshd balances
    /// over the endpoints like `LEAST_REQUEST`.
    Passthrough,
}

/// Envoy `circuit_breakers.thresholds[0]` (default priority), cluster-wide
/// per proxy. Every limit is [`UNLIMITED`] unless configured (> 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// `tcp.maxConnections`.
    pub max_connections: u64,
    /// `http.http1MaxPendingRequests`.
    pub max_pending_requests: u64,
    /// `http.http2MaxRequests`: concurrent requests to the cluster.
    pub max_requests: u64,
    /// `http.maxRetries`: concurrent retries to the cluster.
    pub max_retries: u64,
}

/// Per-connection behaviour of the upstream pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// `http.maxRequestsPerConnection`; `None` = unlimited (0).
    pub max_requests_per_connection: Option<u32>,
    /// `http.idleTimeout`, else `tcp.idleTimeout`, else 1 h; `None` when
    /// set to `0s` (never close idle connections).
    pub idle_timeout: Option<Duration>,
    /// `tcp.maxConnectionDuration`; `None` = no limit.
    pub max_connection_duration: Option<Duration>,
    /// `tcp.tcpKeepalive`: `Some` enables `SO_KEEPALIVE`; unset fields
    /// keep the OS defaults. Durations are whole seconds, as Envoy sends.
    pub tcp_keepalive: Option<Keepalive>,
    /// The HTTP version spoken upstream (set per service port: see
    /// [`UpstreamProtocol::for_port`]).
    pub protocol: UpstreamProtocol,
    /// `http.maxConcurrentStreams`: streams one HTTP/2 connection carries
    /// before the pool opens another (Envoy's default 2^31 − 1).
    pub max_concurrent_streams: u32,
    /// `http.http2KeepAlive`: PING `interval` and `timeout` on HTTP/2
    /// connections (`None` without an interval).
    pub http2_keepalive: Option<(Duration, Duration)>,
}

/// The HTTP version of upstream connections, as Istio sets a cluster's
/// protocol options (spec §2.4: `h2UpgradePolicy`, `useClientProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// `http2_protocol_options`: HTTP/2 (h2c, or ALPN `h2` over TLS).
    Http2,
    /// `use_downstream_protocol_config`: whatever the client spoke.
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub probes: Option<u32>,
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
}

/// `outlierDetection` with Istio's and Envoy's defaults applied
/// (spec §2.6). A detector whose threshold is `None` is disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierConfig {
    /// `consecutive5xxErrors`: absent ⇒ 5; explicit 0 ⇒ disabled.
    pub consecutive_5xx: Option<u32>,
    /// `consecutiveGatewayErrors`: absent or 0 ⇒ disabled.
    pub consecutive_gateway_failure: Option<u32>,
    /// `consecutiveLocalOriginFailures`: only with
    /// `split_external_local_origin_errors`; absent or 0 ⇒ Envoy's 5
    /// (istiod sets the field only when positive).
    pub consecutive_local_origin_failure: Option<u32>,
    /// `splitExternalLocalOriginErrors`: connect failures, timeouts and
    /// resets feed only the local-origin counter.
    pub split_external_local_origin_errors: bool,
    /// `interval`: the ejection sweep period, default 10 s.
    pub interval: Duration,
    /// `baseEjectionTime`, default 30 s.
    pub base_ejection_time: Duration,
    /// Envoy's `max_ejection_time`: 300 s, or the base time if larger.
    pub max_ejection_time: Duration,
    /// `maxEjectionPercent`, default 10, capped at 100.
    pub max_ejection_percent: u32,
    /// `minHealthPercent`: the panic threshold, default 0 (never panic).
    pub min_health_percent: u32,
    /// `outlierDetectionHttpErrorCodes`: statuses that count as errors
    /// besides 5xx.
    pub error_codes: Vec<u16>,
}

/// Consistent hashing: which part of a request is the key, and the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub key: HashKey,
    pub table: HashTableKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `httpHeaderName`: the header's value.
    Header(HeaderName),
    /// `httpCookie`: the cookie's value; when absent and `ttl` is set, a
    /// cookie is generated and set on the response (`ttl` zero: a session
    /// cookie).
    Cookie { name: String, path: Option<String>, ttl: Option<Duration> },
    /// `useSourceIp`: the downstream peer's IP address.
    SourceIp,
    /// `httpQueryParameterName`: the first value of the parameter.
    QueryParameter(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashTableKind {
    /// Ketama-style ring with at least `min_ring_size` entries (default
    /// 1024).
    Ring { min_ring_size: u64 },
    /// Maglev lookup table of `table_size` entries (prime, default 65537).
    Maglev { table_size: u64 },
}

/// Envoy slow start: a new endpoint's weight is scaled by
/// `max(min_weight_percent / 100, (age / duration) ^ (1 / aggression))`
/// while `age < duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    pub duration: Duration,
    pub min_weight_percent: f64,
    pub aggression: f64,
}

// === impl ClusterPolicy ===

impl ClusterPolicy {
    /// Derives everything from the resolved blocks.
    pub fn from_resolved(resolved: ResolvedPolicy) -> Self {
        let lb = resolved.load_balancer.as_ref();
        let pool = resolved.connection_pool.as_ref();
        ClusterPolicy {
            lb: lb_policy(lb),
            connect_timeout: connect_timeout(pool),
            limits: CircuitBreakers::from_istio(pool),
            pool: PoolSettings::from_istio(pool),
            outlier: resolved.outlier_detection.as_ref().map(OutlierConfig::from_istio),
            hash: lb.and_then(|lb| lb.consistent_hash.as_ref()).and_then(HashPolicy::from_istio),
            warmup: lb.and_then(Warmup::from_istio),
            resolved,
        }
    }
}

impl Default for ClusterPolicy {
    fn default() -> Self {
        ClusterPolicy::from_resolved(ResolvedPolicy::default())
    }
}

fn lb_policy(lb: Option<&LoadBalancerSettings>) -> LbPolicy {
    match lb.and_then(|lb| lb.simple) {
        None | Some(SimpleLb::Unspecified | SimpleLb::LeastRequest | SimpleLb::LeastConn) => LbPolicy::LeastRequest,
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::Passthrough) => LbPolicy::Passthrough,
    }
}

/// `tcp.connectTimeout`, default 10 s (a zero timeout also means the
/// default; validation refuses it anyway).
fn connect_timeout(pool: Option<&ConnectionPoolSettings>) -> Duration {
    pool.and_then(|p| p.tcp.as_ref())
        .and_then(|tcp| tcp.connect_timeout)
        .filter(|d| !d.is_zero())
        .map_or(Duration::from_secs(10), |d| d.as_std())
}

/// A limit that applies only when positive, as istiod emits it.
fn limit(value: Option<i64>) -> u64 {
    value.filter(|v| *v > 0).map_or(UNLIMITED, |v| v as u64)
}

// === impl CircuitBreakers ===

impl CircuitBreakers {
    fn from_istio(pool: Option<&ConnectionPoolSettings>) -> Self {
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        CircuitBreakers {
            max_connections: limit(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: limit(http.and_then(|h| h.http2_max_requests)),
            max_retries: limit(http.and_then(|h| h.max_retries)),
        }
    }
}

impl Default for CircuitBreakers {
    fn default() -> Self {
        CircuitBreakers::from_istio(None)
    }
}

// === impl PoolSettings ===

impl PoolSettings {
    /// Envoy's HTTP idle timeout default (Istio keeps it).
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

    fn from_istio(pool: Option<&ConnectionPoolSettings>) -> Self {
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        let idle = http.and_then(|h| h.idle_timeout).or_else(|| tcp.and_then(|t| t.idle_timeout));
        PoolSettings {
            max_requests_per_connection: http
                .and_then(|h| h.max_requests_per_connection)
                .filter(|n| *n > 0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            idle_timeout: match idle {
                None => Some(Self::DEFAULT_IDLE_TIMEOUT),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d.as_std()),
            },
            max_connection_duration: tcp
                .and_then(|t| t.max_connection_duration)
                .filter(|d| !d.is_zero())
                .map(|d| d.as_std()),
            tcp_keepalive: tcp.and_then(|t| t.tcp_keepalive.as_ref()).map(Keepalive::from_istio),
            protocol: UpstreamProtocol::Http1,
            max_concurrent_streams: http
                .and_then(|h| h.max_concurrent_streams)
                .filter(|n| *n > 0)
                .map_or(DEFAULT_MAX_STREAMS, |n| u32::try_from(n).unwrap_or(DEFAULT_MAX_STREAMS)),
            http2_keepalive: http.and_then(|h| h.http2_keep_alive.as_ref()).and_then(|k| {
                let interval = k.interval.filter(|d| !d.is_zero())?.as_std();
                let timeout = k.timeout.filter(|d| !d.is_zero()).map_or(Duration::from_secs(20), |d| d.as_std());
                Some((interval, timeout))
            }),
        }
    }
}

/// Envoy's default `max_concurrent_streams` (2^31 − 1).
const DEFAULT_MAX_STREAMS: u32 = i32::MAX as u32;

// === impl UpstreamProtocol ===

impl UpstreamProtocol {
    /// Istio's choice for a service port (`setUpstreamProtocol` in its
    /// cluster builder): `HTTP2` and `GRPC` ports speak HTTP/2; an `HTTP`
    /// port is upgraded with an explicit `h2UpgradePolicy: UPGRADE` (the
    /// mesh default is `DO_NOT_UPGRADE`); `useClientProtocol`, and ports
    /// whose protocol Istio sniffs, follow the client.
    pub fn for_port(port: PortProtocol, http: Option<&HttpSettings>) -> Self {
        let upgrade = http.and_then(|h| h.h2_upgrade_policy) == Some(H2UpgradePolicy::Upgrade);
        let client = http.and_then(|h| h.use_client_protocol) == Some(true);
        match port {
            PortProtocol::Http2 | PortProtocol::Grpc => UpstreamProtocol::Http2,
            PortProtocol::Http | PortProtocol::Unspecified if upgrade && !client => UpstreamProtocol::Http2,
            PortProtocol::Unspecified => UpstreamProtocol::Client,
            _ if client => UpstreamProtocol::Client,
            _ => UpstreamProtocol::Http1,
        }
    }

    /// Whether a request goes upstream over HTTP/2, given whether its
    /// client spoke HTTP/2.
    pub fn http2(self, client_http2: bool) -> bool {
        match self {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Client => client_http2,
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings::from_istio(None)
    }
}

// === impl Keepalive ===

impl Keepalive {
    fn from_istio(k: &TcpKeepalive) -> Self {
        let secs = |d: Option<crate::config::resources::Duration>| {
            d.map(|d| Duration::from_secs(d.as_std().as_secs())).filter(|d| !d.is_zero())
        };
        Keepalive { probes: k.probes.filter(|p| *p > 0), time: secs(k.time), interval: secs(k.interval) }
    }
}

// === impl OutlierConfig ===

impl OutlierConfig {
    fn from_istio(od: &OutlierDetection) -> Self {
        let split = od.split_external_local_origin_errors.unwrap_or(false);
        let base = od.base_ejection_time.filter(|d| !d.is_zero()).map_or(Duration::from_secs(30), |d| d.as_std());
        OutlierConfig {
            consecutive_5xx: enabled(od.consecutive_5xx_errors.unwrap_or(5)),
            consecutive_gateway_failure: od.consecutive_gateway_errors.and_then(enabled),
            consecutive_local_origin_failure: if split {
                Some(od.consecutive_local_origin_failures.filter(|v| *v > 0).unwrap_or(5))
            } else {
                None
            },
            split_external_local_origin_errors: split,
            interval: od.interval.filter(|d| !d.is_zero()).map_or(Duration::from_secs(10), |d| d.as_std()),
            base_ejection_time: base,
            max_ejection_time: base.max(Duration::from_secs(300)),
            max_ejection_percent: od.max_ejection_percent.filter(|p| *p > 0).map_or(10, |p| p.min(100) as u32),
            min_health_percent: od.min_health_percent.map_or(0, |p| p.clamp(0, 100) as u32),
            error_codes: od.outlier_detection_http_error_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
        }
    }

    /// Whether an upstream response status counts as an error for the
    /// 5xx detector.
    pub fn is_error(&self, status: u16) -> bool {
        status >= 500 || self.error_codes.contains(&status)
    }
}

fn enabled(threshold: u32) -> Option<u32> {
    (threshold > 0).then_some(threshold)
}

// === impl HashPolicy ===

impl HashPolicy {
    /// Envoy's defaults: ring of at least 1024 entries; Maglev of 65537.
    pub const DEFAULT_RING_SIZE: u64 = 1024;
    pub const DEFAULT_MAGLEV_SIZE: u64 = 65537;

    /// `None` when no key is set (validation refuses that; nothing to
    /// hash on means plain balancing).
    fn from_istio(ch: &ConsistentHashLb) -> Option<Self> {
        let key = if let Some(name) = &ch.http_header_name {
            HashKey::Header(HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()?)
        } else if let Some(cookie) = &ch.http_cookie {
            HashKey::Cookie {
                name: cookie.name.clone(),
                path: cookie.path.clone().filter(|p| !p.is_empty()),
                ttl: cookie.ttl.map(|d| d.as_std()),
            }
        } else if ch.use_source_ip == Some(true) {
            HashKey::SourceIp
        } else if let Some(name) = &ch.http_query_parameter_name {
            HashKey::QueryParameter(name.clone())
        } else {
            return None;
        };
        let table = match (&ch.maglev, &ch.ring_hash) {
            (Some(m), _) => HashTableKind::Maglev {
                table_size: m.table_size.filter(|s| *s > 0).unwrap_or(Self::DEFAULT_MAGLEV_SIZE),
            },
            (None, ring) => HashTableKind::Ring {
                min_ring_size: ring
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .filter(|s| *s > 0)
                    .unwrap_or(Self::DEFAULT_RING_SIZE),
            },
        };
        Some(HashPolicy { key, table })
    }
}

// === impl Warmup ===

impl Warmup {
    fn from_istio(lb: &LoadBalancerSettings) -> Option<Self> {
        if let Some(w) = &lb.warmup {
            let duration = w.duration.filter(|d| !d.is_zero())?.as_std();
            return Some(Warmup {
                duration,
                min_weight_percent: w.minimum_percent.unwrap_or(10.0).clamp(0.0, 100.0),
                aggression: w.aggression.filter(|a| *a > 0.0).unwrap_or(1.0),
            });
        }
        let duration = lb.warmup_duration_secs.filter(|d| !d.is_zero())?.as_std();
        Some(Warmup { duration, min_weight_percent: 10.0, aggression: 1.0 })
    }

    /// The weight factor of an endpoint `age` old, in `(0, 1]`.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.duration {
            return 1.0;
        }
        let progress = age.as_secs_f64() / self.duration.as_secs_f64();
        progress.powf(1.0 / self.aggression).max(self.min_weight_percent / 100.0)
    }
}
