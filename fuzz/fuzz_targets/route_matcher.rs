//! Request parts in: RouteTable::find against the examples' table or a fuzzed one.
#![no_main]

#[allow(dead_code)]
#[path = "../../tests/fuzz_props/props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::route_matcher(data));
