//! YAML bytes in: the config loader and validator (and, for an accepted config, compile and a lookup).
#![no_main]

#[allow(dead_code)]
#[path = "../../tests/fuzz_props/props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::config_loader(data));
