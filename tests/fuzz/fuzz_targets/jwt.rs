//! JWT verification and JWKS parsing on any bytes: the token is checked
//! against an empty key set (every path up to the signature check runs),
//! and the same bytes are parsed as a JWKS document. Never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| jwt(data));
