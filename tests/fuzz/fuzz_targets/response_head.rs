//! The upstream response head parser on any bytes: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| response_head(data));
