//! The request head parser on any bytes: never a panic; an accepted head's
//! spans lie inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| request_head(data));
