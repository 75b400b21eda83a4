//! Validation against Istio's own sample and analyzer YAML.
//!
//! - Every Bookinfo sample file is valid Istio configuration: validated on
//!   its own (cross-references to other files missing), it must yield no
//!   error.
//! - The analyzer test files hold invalid and non-networking objects on
//!   purpose: loading and validating them must not panic, and every error
//!   must say where it is (a file, and a resource unless the problem is
//!   with the file or a YAML document as a whole).

use std::path::{Path, PathBuf};

use meshd::config::load::load;
use meshd::config::validate::validate;
use meshd::config::{load_and_validate, Problem, Sources};

const BOOKINFO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/istio/bookinfo");
const ANALYZERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/istio/analyzers");

/// The `*.yaml` files of `dir`, sorted; `None` (with a note) if the corpus
/// is not there.
fn corpus(dir: &str) -> Option<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!("note: corpus {dir} not found; skipping");
        return None;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    Some(files)
}

fn sources(file: &Path) -> Sources {
    Sources { paths: vec![file.to_path_buf()], namespace: "default".into() }
}

fn listing(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}\n")).collect()
}

#[test]
fn bookinfo_files_validate_alone_without_errors() {
    let Some(files) = corpus(BOOKINFO) else { return };
    assert!(!files.is_empty(), "no files in {BOOKINFO}");
    let mut failures = String::new();
    for file in &files {
        match load_and_validate(&sources(file)) {
            Ok((config, _warnings)) => assert!(!config.is_empty(), "{}: nothing loaded", file.display()),
            Err(refused) => {
                let errors: Vec<Problem> = refused.problems.into_iter().filter(Problem::is_error).collect();
                failures.push_str(&format!("{}:\n{}", file.display(), listing(&errors)));
            }
        }
    }
    assert!(failures.is_empty(), "Bookinfo files refused:\n{failures}");
}

#[test]
fn analyzer_files_validate_without_panics_and_errors_say_where() {
    let Some(files) = corpus(ANALYZERS) else { return };
    assert!(!files.is_empty(), "no files in {ANALYZERS}");
    let mut vague = Vec::new();
    for file in &files {
        let (config, mut problems) = load(&sources(file));
        let found = validate(&config);
        for p in &found {
            if p.resource.is_none() {
                vague.push(p.clone());
            }
        }
        problems.extend(found);
        for p in problems.iter().filter(|p| p.is_error()) {
            let file_level = p.field.is_empty() || p.field.starts_with("line ") || p.field.starts_with("document ");
            if p.file.is_none() || (p.resource.is_none() && !file_level) {
                vague.push(p.clone());
            }
        }
        for p in &problems {
            assert!(
                !p.message.trim().is_empty() && !p.message.contains('\n'),
                "{}: bad message in {p}",
                file.display()
            );
        }
    }
    assert!(vague.is_empty(), "problems that do not say where they are:\n{}", listing(&vague));
}

#[test]
fn analyzer_corpus_findings_are_those_expected() {
    let Some(_) = corpus(ANALYZERS) else { return };
    let check = |name: &str| {
        let (config, _) = load(&sources(&Path::new(ANALYZERS).join(name)));
        validate(&config)
    };
    let has = |problems: &[Problem], resource: &str, field: &str, error: bool| {
        problems.iter().any(|p| {
            p.is_error() == error && p.field == field && p.resource.as_ref().is_some_and(|r| r.name == resource)
        })
    };
    // A route entry with no destination is refused; an unknown host warns.
    let p = check("virtualservice_destinationhosts.yaml");
    assert!(has(&p, "reviews-bogushost", "spec.http[0].route[0]", true), "{}", listing(&p));
    assert!(has(&p, "reviews-bogushost", "spec.http[0].route[1].destination.host", false), "{}", listing(&p));
    assert!(has(&p, "reviews-mirror-bogushost", "spec.http[0].mirror.host", false), "{}", listing(&p));
    assert!(!p.iter().any(|p| p.resource.as_ref().is_some_and(|r| r.name == "reviews-bookinfo-eu")), "{}", listing(&p));
    assert!(has(&p, "reviews-bookinfo-other", "spec.http[0].route[0].destination.host", false), "{}", listing(&p));
    // Subsets no DestinationRule defines warn.
    let p = check("virtualservice_destinationrules.yaml");
    assert!(has(&p, "reviews-bogussubset", "spec.http[0].route[0].destination.subset", false), "{}", listing(&p));
    assert!(has(&p, "reviews-mirror-bogussubset", "spec.http[0].mirror.subset", false), "{}", listing(&p));
    assert!(!p.iter().any(|p| p.resource.as_ref().is_some_and(|r| r.name == "reviews-fqdn")), "{}", listing(&p));
    // JWT-claim routing is fine on a gateway-bound VirtualService.
    let p = check("virtualservice_jwtclaimroute.yaml");
    assert!(!p.iter().any(Problem::is_error), "{}", listing(&p));
    // Overlapping prefixes warn.
    let p = check("virtualservice_overlappingmatches.yaml");
    assert!(has(&p, "non-method-get", "spec.http[0].match[1]", false), "{}", listing(&p));
    assert!(has(&p, "overlapping-in-two-matches", "spec.http[1].match[0]", false), "{}", listing(&p));
}

/// Scenario: the configurations the repository ships (the demo and the
/// commented examples) are valid together, with no warning either: they
/// are what users copy.
#[test]
fn shipped_configs_validate_without_problems() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let sources = Sources { paths: vec![root.join("demo"), root.join("examples")], namespace: "default".into() };
    let problems = match load_and_validate(&sources) {
        Ok((config, warnings)) => {
            assert!(config.len() >= 10, "expected the demo and the examples, got {} resources", config.len());
            warnings
        }
        Err(refused) => refused.problems,
    };
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    assert!(lines.is_empty(), "shipped configs must validate cleanly:\n{}", lines.join("\n"));
}
