//! SigV4 canonicalisation of a path and a query string, and the AMZ date
//! parser, on any bytes: never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| sigv4_canonical(data));
