//! Event sequences in: the outlier detector's invariants (maxEjectionPercent, every ejection ends).
#![no_main]

#[allow(dead_code)]
#[path = "../../tests/fuzz_props/props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::outlier_detector(data));
