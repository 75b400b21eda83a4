//! Istio's validation rules (spec §6) and cross-reference checks.

use super::{Config, Problem};

/// Every problem in `config`: errors refuse it, warnings do not.
pub fn validate(config: &Config) -> Vec<Problem> {
    let _ = config;
    Vec::new()
}

/// One warning per resource that uses fields this meshd parses and checks
/// but does not apply yet.
pub fn unapplied(config: &Config) -> Vec<Problem> {
    let _ = config;
    Vec::new()
}
