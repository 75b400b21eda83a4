//! The fuzz targets' properties (`fuzz/fuzz_targets/`) on stable Rust: each
//! test feeds seeded random bytes to the same property as its cargo-fuzz
//! target, for about two seconds by default.
//!
//! - `MESHD_FUZZ_ITERATIONS=N`: run N inputs per property (no time limit).
//! - `MESHD_FUZZ_SECONDS=S`: run for S seconds per property.
//! - `MESHD_FUZZ_SEED=X`: the base seed (default: random, printed); a
//!   failing input prints its seed and iteration I, and
//!   `MESHD_FUZZ_SEED=X MESHD_FUZZ_REPLAY=I` runs that input alone.

#[path = "fuzz_props/props.rs"]
mod props;

use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Prints the failing input's seed when a property panics.
struct Report {
    name: &'static str,
    seed: u64,
    iteration: u64,
}

impl Drop for Report {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}: failed at MESHD_FUZZ_SEED={} MESHD_FUZZ_REPLAY={}", self.name, self.seed, self.iteration);
        }
    }
}

/// The input of `iteration`: its own generator, so any one replays alone.
fn input(seed: u64, iteration: u64, buf: &mut Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(seed ^ iteration.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let len = match rng.u8(..) {
        0..=127 => rng.usize(0..256),
        128..=239 => rng.usize(256..2048),
        _ => rng.usize(2048..16384),
    };
    buf.clear();
    buf.extend((0..len).map(|_| rng.u8(..)));
}

fn run(name: &'static str, property: fn(&[u8])) {
    let seed = env("MESHD_FUZZ_SEED").unwrap_or_else(|| fastrand::u64(..));
    let iterations: Option<u64> = env("MESHD_FUZZ_ITERATIONS");
    let budget = Duration::from_secs_f64(env("MESHD_FUZZ_SECONDS").unwrap_or(2.0));
    let start = Instant::now();
    let mut report = Report { name, seed, iteration: 0 };
    let mut buf = Vec::new();
    if let Some(i) = env::<u64>("MESHD_FUZZ_REPLAY") {
        report.iteration = i;
        input(seed, i, &mut buf);
        property(&buf);
        return;
    }
    loop {
        let done = match iterations {
            Some(n) => report.iteration >= n,
            None => start.elapsed() >= budget,
        };
        if done {
            break;
        }
        input(seed, report.iteration, &mut buf);
        property(&buf);
        report.iteration += 1;
    }
    eprintln!("{name}: {} inputs in {:.1?} (MESHD_FUZZ_SEED={seed})", report.iteration, start.elapsed());
}

#[test]
fn fuzz_config_loader() {
    run("config_loader", props::config_loader);
}

#[test]
fn fuzz_route_matcher() {
    run("route_matcher", props::route_matcher);
}

#[test]
fn fuzz_outlier_detector() {
    run("outlier_detector", props::outlier_detector);
}

/// Edge inputs of each property.
#[test]
fn properties_take_edge_inputs() {
    // Not YAML at all: loads with an error, never panics.
    props::config_loader(b"\x00\xff: [");
    // An empty input is a valid (empty) run of each.
    props::route_matcher(&[]);
    props::outlier_detector(&[]);
}

/// Inputs libFuzzer found (`fuzz/run.sh`), kept as regression tests.
#[test]
fn inputs_the_fuzzers_found() {
    // route_matcher, 2026-12-06: a seed table with a ':' typed into a
    // VirtualService host validated; the host could never be routed to.
    props::route_matcher(b"\x14\xff\xff\xff\x080#[\xff\xff\xff\xff\xff:\"");
}
