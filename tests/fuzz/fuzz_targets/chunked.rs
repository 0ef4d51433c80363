//! The chunked body decoder on any bytes, fed in pieces the first byte
//! chooses: never a panic, and every step makes progress until the body
//! ends or an error stops it.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| chunked(data));
