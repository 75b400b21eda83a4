//! Types shared by several Istio kinds: string matchers, durations,
//! percentages, port selectors and destinations.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Istio `StringMatch`: exactly one of `exact`, `prefix`, `regex` should be
/// set (validation checks it). All three absent (`{}`) means "present".
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A protobuf `Duration` as Istio YAML writes it: Go-style strings such as
/// `1s`, `0.5s`, `100ms`, `1m30s`, `1h`. Held as whole nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    pub nanos: u128,
}

/// Istio `Percent`: `{value: f64}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Istio `PortSelector`: `{number}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

/// Istio `Destination`: a service host, an optional subset and port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(default)]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// `workloadSelector: {labels: {...}}` as used by ServiceEntry and
/// DestinationRule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, rename = "labels", alias = "matchLabels")]
    pub labels: Labels,
}

/// Label maps keep their keys sorted so messages and dumps are stable.
/// A sorted vector, not a `BTreeMap`: workload labels are a handful of
/// entries, and a B-tree node costs ~540 bytes even for one (10,000
/// endpoints' labels took 11 MB as B-trees).
pub type Labels = litemap::LiteMap<String, String>;

/// Port name → number, sorted like [`Labels`] and for the same reason.
pub type PortMap = litemap::LiteMap<String, u32>;

/// The error for a duration string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected e.g. 1s, 0.5s, 250ms, 1m30s")]
pub struct DurationError(pub String);

// === impl Duration ===

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration { nanos: ms as u128 * 1_000_000 }
    }

    pub const fn from_secs(s: u64) -> Self {
        Duration { nanos: s as u128 * 1_000_000_000 }
    }

    /// Parses Go's duration syntax (which also covers protobuf JSON's
    /// `"1.5s"`): one or more `<decimal><unit>` pairs, units `ns`, `us`,
    /// `µs`, `ms`, `s`, `m`, `h`. A bare `0` is zero.
    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let err = || DurationError(text.to_owned());
        let s = text.trim();
        if s == "0" {
            return Ok(Duration::default());
        }
        if s.is_empty() || s.starts_with('-') {
            return Err(err());
        }
        let mut rest = s;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
            let (num, tail) = rest.split_at(num_len);
            let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let scale: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err()),
            };
            total = total.checked_add(scale_decimal(num, scale).ok_or_else(err)?).ok_or_else(err)?;
            rest = next;
        }
        Ok(Duration { nanos: total })
    }

    pub fn as_std(&self) -> std::time::Duration {
        let secs = (self.nanos / 1_000_000_000).min(u64::MAX as u128) as u64;
        std::time::Duration::new(secs, (self.nanos % 1_000_000_000) as u32)
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whether the value is a whole number of milliseconds (Istio rejects
    /// sub-millisecond precision for timeouts).
    pub fn is_whole_millis(&self) -> bool {
        self.nanos % 1_000_000 == 0
    }
}

/// `num` (digits with at most one '.') times `scale`, exactly.
fn scale_decimal(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(scale)?;
    let mut unit = scale;
    for digit in frac.bytes().take(18) {
        unit /= 10;
        value = value.checked_add(u128::from(digit - b'0') * unit)?;
    }
    Some(value)
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.nanos / 1_000_000;
        if self.nanos % 1_000_000_000 == 0 {
            write!(f, "{}s", self.nanos / 1_000_000_000)
        } else if self.nanos % 1_000_000 == 0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}ns", self.nanos)
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 1s or 250ms")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                // A bare number is only meaningful as zero; anything else
                // lacks a unit.
                if v == 0 {
                    Ok(Duration::default())
                } else {
                    Err(E::custom(DurationError(v.to_string())))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(Duration::parse("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(Duration::parse("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(Duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(Duration::parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(Duration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(Duration::parse("0"), Ok(Duration::default()));
        assert_eq!(Duration::parse("1.5us").map(|d| d.nanos), Ok(1500));
        assert!(Duration::parse("5").is_err());
        assert!(Duration::parse("-1s").is_err());
        assert!(Duration::parse("1x").is_err());
        assert!(Duration::parse("").is_err());
        assert!(Duration::parse("..s").is_err());
    }
}
