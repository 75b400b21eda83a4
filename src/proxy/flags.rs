//! Envoy's response flags (`%RESPONSE_FLAGS%`, spec §4.1).

use std::fmt;

/// A set of response flags, printed in Envoy's fixed order joined by `,`,
/// or `-` when empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

/// Flags in Envoy's print order (`ResponseFlagUtils::toShortString`).
const ORDER: [(ResponseFlags, &str); 17] = [
    (ResponseFlags::UH, "UH"),
    (ResponseFlags::UT, "UT"),
    (ResponseFlags::LR, "LR"),
    (ResponseFlags::UR, "UR"),
    (ResponseFlags::UF, "UF"),
    (ResponseFlags::UC, "UC"),
    (ResponseFlags::UO, "UO"),
    (ResponseFlags::NR, "NR"),
    (ResponseFlags::DI, "DI"),
    (ResponseFlags::FI, "FI"),
    (ResponseFlags::RL, "RL"),
    (ResponseFlags::DC, "DC"),
    (ResponseFlags::URX, "URX"),
    (ResponseFlags::SI, "SI"),
    (ResponseFlags::DPE, "DPE"),
    (ResponseFlags::UPE, "UPE"),
    (ResponseFlags::NC, "NC"),
];

// === impl ResponseFlags ===

impl ResponseFlags {
    pub const NONE: Self = Self(0);
    /// No healthy upstream.
    pub const UH: Self = Self(1 << 0);
    /// Upstream request timeout.
    pub const UT: Self = Self(1 << 1);
    /// Local reset.
    pub const LR: Self = Self(1 << 2);
    /// Upstream remote reset.
    pub const UR: Self = Self(1 << 3);
    /// Upstream connection failure.
    pub const UF: Self = Self(1 << 4);
    /// Upstream connection termination.
    pub const UC: Self = Self(1 << 5);
    /// Upstream overflow (circuit breaking).
    pub const UO: Self = Self(1 << 6);
    /// No route.
    pub const NR: Self = Self(1 << 7);
    /// Delay injected.
    pub const DI: Self = Self(1 << 8);
    /// Fault injected.
    pub const FI: Self = Self(1 << 9);
    /// Rate limited.
    pub const RL: Self = Self(1 << 10);
    /// Downstream connection terminated.
    pub const DC: Self = Self(1 << 11);
    /// Upstream retry limit exceeded.
    pub const URX: Self = Self(1 << 12);
    /// Stream idle timeout.
    pub const SI: Self = Self(1 << 13);
    /// Downstream protocol error.
    pub const DPE: Self = Self(1 << 14);
    /// Upstream protocol error.
    pub const UPE: Self = Self(1 << 15);
    /// No cluster.
    pub const NC: Self = Self(1 << 16);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The short string. Single flags and none are static; combinations
    /// allocate (rare: retries exhausted after a failure, and the like).
    pub fn as_str(self) -> std::borrow::Cow<'static, str> {
        if self.is_empty() {
            return "-".into();
        }
        let mut names = ORDER.iter().filter(|(f, _)| self.contains(*f)).map(|(_, n)| *n);
        match (names.next(), names.next()) {
            (Some(one), None) => one.into(),
            _ => ORDER.iter().filter(|(f, _)| self.contains(*f)).map(|(_, n)| *n).collect::<Vec<_>>().join(",").into(),
        }
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_in_envoy_order() {
        assert_eq!(ResponseFlags::NONE.as_str(), "-");
        assert_eq!(ResponseFlags::NR.as_str(), "NR");
        assert_eq!((ResponseFlags::URX | ResponseFlags::UF).as_str(), "UF,URX");
    }
}
