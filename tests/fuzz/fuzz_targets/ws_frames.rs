//! The WebSocket frame decoder on any bytes as a client's stream, with
//! limits the first byte picks: never a panic, and what it hands on is
//! within the limits and well formed.
#![no_main]
use libfuzzer_sys::fuzz_target;

include!("../checks.rs");

fuzz_target!(|data: &[u8]| ws_frames(data));
