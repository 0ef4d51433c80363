//! Route keys and lookups: the first line is a request (`METHOD PATH`), the
//! others route keys. Parsing keys, building a table and looking the
//! request up never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| route(data));
