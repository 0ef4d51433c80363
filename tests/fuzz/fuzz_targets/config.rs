//! The config loader on any text: an error list or a plan, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| config(data));
