//! Istio's validation rules (spec §6) and cross-reference checks.
//!
//! One file per kind applies the rules of Istio's validating webhook to each
//! resource alone: `virtual_service`, `http_route`, `http_actions` and
//! `http_policy` (spec items 1–28), `destination_rule`, `policy_blocks` and
//! `load_balancer` (29–38), `service_entry` (39–51) and `gateway` (basic
//! server checks). `references` then looks across resources the way
//! `istioctl analyze` does and only ever warns, so a file validated on its
//! own never fails for what another file holds. `unapplied` names what this
//! version parses and checks but does not apply yet.
//!
//! Checks shared by several kinds live in `fields` (ports, durations,
//! percentages, labels, selectors, exportTo, IPs) and `strings`
//! (StringMatch, regexes, header names and values). Every check reports
//! through a `Report`, which knows the file, the resource and the dotted
//! field path it is looking at.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::resources::{Resource, ResourceId};
use super::{Config, Problem};

mod destination_rule;
mod fields;
mod gateway;
mod http_actions;
mod http_policy;
mod http_route;
mod load_balancer;
mod policy_blocks;
mod references;
mod service_entry;
mod strings;
mod unapplied;
mod virtual_service;

/// Collects the problems of one resource under a field-path prefix
/// (`spec`, `spec.http[0]`, …). Children made with [`Report::at`] extend the
/// prefix and push into the same list.
pub(super) struct Report<'a> {
    origin: &'a Origin,
    prefix: String,
    out: &'a mut Vec<Problem>,
}

/// The file and resource every problem of a [`Report`] names.
pub(super) struct Origin {
    file: Arc<Path>,
    id: ResourceId,
}

/// Every problem in `config`: errors refuse it, warnings do not.
pub fn validate(config: &Config) -> Vec<Problem> {
    let mut out = resources(config);
    references::check(config, &mut out);
    out
}

/// The problems of each resource on its own.
fn resources(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    each(&config.virtual_services, &mut out, |vs, r| virtual_service::check(&vs.spec, &vs.meta.namespace, r));
    each(&config.destination_rules, &mut out, |dr, r| destination_rule::check(&dr.spec, &dr.meta.namespace, r));
    each(&config.service_entries, &mut out, |se, r| service_entry::check(&se.spec, &se.meta.namespace, r));
    each(&config.workload_entries, &mut out, |we, r| service_entry::check_workload_entry(&we.spec, r));
    each(&config.gateways, &mut out, |gw, r| gateway::check(&gw.spec, r));
    out
}

/// One warning per resource that uses fields this meshd parses and checks
/// but does not apply yet.
pub fn unapplied(config: &Config) -> Vec<Problem> {
    unapplied::collect(config)
}

/// Runs `check` on every resource with a report rooted at `spec`.
fn each<T>(resources: &[Resource<T>], out: &mut Vec<Problem>, check: impl Fn(&Resource<T>, &mut Report<'_>)) {
    for resource in resources {
        let origin = Origin::of(resource);
        check(resource, &mut Report::new(&origin, out));
    }
}

/// `prefix` and `field` joined as a dotted path: `a` + `b` = `a.b`,
/// `a` + `[0]` = `a[0]`, either side empty = the other.
fn join(prefix: &str, field: &str) -> String {
    if field.is_empty() {
        prefix.to_owned()
    } else if prefix.is_empty() {
        field.to_owned()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

// === impl Origin ===

impl Origin {
    pub(super) fn of<T>(resource: &Resource<T>) -> Self {
        Origin { file: resource.source.file.clone(), id: resource.id() }
    }
}

// === impl Report ===

impl<'a> Report<'a> {
    /// A report rooted at `spec`.
    pub(super) fn new(origin: &'a Origin, out: &'a mut Vec<Problem>) -> Self {
        Report { origin, prefix: "spec".to_owned(), out }
    }

    /// A child report for `field` under this one's prefix.
    pub(super) fn at(&mut self, field: impl fmt::Display) -> Report<'_> {
        Report { origin: self.origin, prefix: join(&self.prefix, &field.to_string()), out: &mut *self.out }
    }

    /// An error at `field` (relative; empty means this report's prefix).
    pub(super) fn error(&mut self, field: &str, message: impl Into<String>) {
        let field = join(&self.prefix, field);
        let problem = Problem::error(Some(self.origin.file.clone()), Some(self.origin.id.clone()), field, message);
        self.out.push(problem);
    }

    /// A warning at `field` (relative; empty means this report's prefix).
    pub(super) fn warning(&mut self, field: &str, message: impl Into<String>) {
        let field = join(&self.prefix, field);
        let problem = Problem::warning(Some(self.origin.file.clone()), Some(self.origin.id.clone()), field, message);
        self.out.push(problem);
    }

    /// An error at `field` when `result` carries one.
    pub(super) fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(field, message);
        }
    }
}

/// Helpers for the unit tests of every check file: small YAML in, problems
/// out, asserted by exact field path and severity.
#[cfg(test)]
pub(super) mod testing {
    use std::path::Path;
    use std::sync::Arc;

    use crate::config::load::load_text;
    use crate::config::{Config, Problem, Severity};

    /// One object of `kind` named `name` in namespace `default` with `spec`
    /// (YAML, written without indentation).
    pub fn object(kind: &str, name: &str, spec: &str) -> String {
        let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
        format!("apiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}")
    }

    /// Loads `yaml` (documents separated by `---`), which must load without
    /// any problem.
    pub fn load(yaml: &str) -> Config {
        let mut config = Config { namespace: "default".into(), ..Config::default() };
        let mut loaded = Vec::new();
        load_text(yaml, &Arc::from(Path::new("test.yaml")), &mut config, &mut loaded);
        assert!(loaded.is_empty(), "test YAML must load cleanly: {loaded:#?}");
        config
    }

    /// Everything validation finds in `yaml`, cross-references included.
    pub fn problems(yaml: &str) -> Vec<Problem> {
        super::validate(&load(yaml))
    }

    /// What the checks of one object of `kind` with `spec` find on their
    /// own (no cross-references).
    pub fn of(kind: &str, spec: &str) -> Vec<Problem> {
        super::resources(&load(&object(kind, "r", spec)))
    }

    /// Checks of a VirtualService whose only `http` rule is `body` (YAML,
    /// written without indentation).
    pub fn rule(body: &str) -> Vec<Problem> {
        let body: String = body.lines().map(|l| format!("  {l}\n")).collect();
        of("VirtualService", &format!("hosts: [a]\nhttp:\n-{}", &body[1..]))
    }

    /// A minimal forwarding action for [`rule`] bodies.
    pub const ROUTE: &str = "route:\n- destination: {host: a}";

    /// Checks of a DestinationRule for `reviews` with the rest of `spec`.
    pub fn dr(spec: &str) -> Vec<Problem> {
        of("DestinationRule", &format!("host: reviews\n{spec}"))
    }

    /// Checks of a DestinationRule whose `trafficPolicy` is `p`.
    pub fn policy(p: &str) -> Vec<Problem> {
        dr(&format!("trafficPolicy: {p}"))
    }

    /// Asserts a problem of `severity` at exactly `field`.
    pub fn assert_at(problems: &[Problem], severity: Severity, field: &str) {
        assert!(
            problems.iter().any(|p| p.severity == severity && p.field == field),
            "expected a {severity:?} at {field}, got:\n{}",
            list(problems)
        );
    }

    pub fn assert_error(problems: &[Problem], field: &str) {
        assert_at(problems, Severity::Error, field);
    }

    pub fn assert_warning(problems: &[Problem], field: &str) {
        assert_at(problems, Severity::Warning, field);
    }

    /// Asserts that nothing is an error.
    pub fn assert_no_error(problems: &[Problem]) {
        assert!(!problems.iter().any(Problem::is_error), "expected no error, got:\n{}", list(problems));
    }

    /// Asserts that there is no problem at all.
    pub fn assert_clean(problems: &[Problem]) {
        assert!(problems.is_empty(), "expected no problem, got:\n{}", list(problems));
    }

    fn list(problems: &[Problem]) -> String {
        problems.iter().map(|p| format!("  {p}\n")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths() {
        assert_eq!(join("spec", "http"), "spec.http");
        assert_eq!(join("spec.http", "[0]"), "spec.http[0]");
        assert_eq!(join("spec", ""), "spec");
        assert_eq!(join("", "hosts"), "hosts");
    }

    #[test]
    fn problems_name_file_resource_and_path() {
        let problems =
            testing::of("VirtualService", "hosts: [a]\nhttp:\n- route:\n  - destination: {host: a}\n    weight: -1");
        let line = problems.iter().find(|p| p.is_error()).map(ToString::to_string).unwrap_or_default();
        assert_eq!(
            line,
            "test.yaml: VirtualService default/r: spec.http[0].route[0].weight: weight -1 must not be negative"
        );
    }
}
