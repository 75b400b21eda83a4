//! `fault` of an HTTP rule (spec §1.13), Envoy's fault filter: it runs
//! before the router, so an injected delay is not counted against the
//! route timeout and an aborted request never reaches an upstream.
//!
//! Percentages are kept in parts per million (Istio's resolution) and
//! sampled independently for the delay and the abort. A delay or an abort
//! without `percentage` never fires (Istio: 0 %), except that the
//! deprecated integer `delay.percent` still counts.

use std::time::Duration;

use http::StatusCode;

use crate::config::resources::{FaultAbort, FaultDelay, HttpFaultInjection, Percent, GRPC_STATUS_NAMES};

use super::sampled;

/// A compiled fault.
#[derive(Debug, Clone, Default)]
pub struct Fault {
    /// The delay and the share of requests it applies to.
    pub delay: Option<(Duration, u32)>,
    /// The abort and the share of requests it applies to.
    pub abort: Option<(Abort, u32)>,
}

/// What an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// This status, with the body `fault filter abort`.
    Http(StatusCode),
    /// A gRPC trailers-only response (HTTP 200) with this `grpc-status`.
    Grpc(u8),
}

/// What sampling decided for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injection {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

// === impl Fault ===

impl Fault {
    /// `None` when nothing could ever fire.
    pub fn compile(fault: &HttpFaultInjection) -> Option<Self> {
        let delay = fault.delay.as_ref().and_then(delay);
        let abort = fault.abort.as_ref().and_then(abort);
        (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
    }

    /// Samples the delay and the abort with `roll`, which returns a uniform
    /// value in `0..MILLION` each time it is called.
    pub fn sample(&self, mut roll: impl FnMut() -> u32) -> Injection {
        Injection {
            delay: self.delay.and_then(|(d, share)| sampled(share, &mut roll).then_some(d)),
            abort: self.abort.and_then(|(a, share)| sampled(share, &mut roll).then_some(a)),
        }
    }
}

fn delay(delay: &FaultDelay) -> Option<(Duration, u32)> {
    let fixed = delay.fixed_delay?;
    let share = match (&delay.percentage, delay.percent) {
        (Some(p), _) => ppm(p),
        (None, Some(percent)) => u32::try_from(percent.clamp(0, 100)).unwrap_or(0) * 10_000,
        (None, None) => 0,
    };
    let nanos = u64::try_from(fixed.nanos).unwrap_or(u64::MAX);
    (share > 0).then_some((Duration::from_nanos(nanos), share))
}

fn abort(abort: &FaultAbort) -> Option<(Abort, u32)> {
    let share = abort.percentage.as_ref().map_or(0, ppm);
    let kind = match (abort.http_status, abort.grpc_status.as_deref()) {
        (Some(status), _) => Abort::Http(StatusCode::from_u16(u16::try_from(status).ok()?).ok()?),
        (None, Some(name)) => Abort::Grpc(grpc_code(name)?),
        (None, None) => return None,
    };
    (share > 0).then_some((kind, share))
}

/// A `Percent` in parts per million, clamped to 0..=100 %.
pub(super) fn ppm(p: &Percent) -> u32 {
    let value = if p.value.is_finite() { p.value.clamp(0.0, 100.0) } else { 0.0 };
    (value * 10_000.0).round() as u32
}

/// The numeric code of a gRPC status name.
fn grpc_code(name: &str) -> Option<u8> {
    GRPC_STATUS_NAMES.iter().position(|n| *n == name).and_then(|i| u8::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(json: &str) -> Option<Fault> {
        Fault::compile(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn without_percentage_nothing_fires() {
        assert!(fault(r#"{"delay": {"fixedDelay": "7s"}}"#).is_none());
        assert!(fault(r#"{"abort": {"httpStatus": 500}}"#).is_none());
        assert!(fault(r#"{"abort": {"httpStatus": 500, "percentage": {"value": 0}}}"#).is_none());
        let legacy = fault(r#"{"delay": {"fixedDelay": "1s", "percent": 50}}"#).unwrap();
        assert_eq!(legacy.delay, Some((Duration::from_secs(1), 500_000)));
    }

    #[test]
    fn full_percentages_always_fire_and_shares_are_sampled() {
        let f = fault(r#"{"delay": {"fixedDelay": "7s", "percentage": {"value": 100}}, "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}"#).unwrap();
        let hit = f.sample(|| unreachable!("100 % needs no roll"));
        assert_eq!(hit, Injection { delay: Some(Duration::from_secs(7)), abort: Some(Abort::Grpc(14)) });
        let f = fault(r#"{"abort": {"httpStatus": 503, "percentage": {"value": 0.5}}}"#).unwrap();
        assert_eq!(f.abort, Some((Abort::Http(StatusCode::SERVICE_UNAVAILABLE), 5_000)));
        assert!(f.sample(|| 4_999).abort.is_some());
        assert!(f.sample(|| 5_000).abort.is_none());
    }
}
