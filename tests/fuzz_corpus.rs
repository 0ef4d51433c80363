//! Replays the fuzzers' kept corpus (tests/fuzz/corpus/TARGET/*, every
//! input that reached new code, and every crash once fixed) through the
//! same checks the fuzz targets run (tests/fuzz/checks.rs), in the normal
//! test run: an input that once found a bug keeps proving it fixed.
//! docs/fuzzing.md says how to run the fuzzers themselves.

#[path = "fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// A fuzz target's check.
type Check = fn(&[u8]);

#[test]
fn every_kept_fuzz_input_passes_its_target_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let targets: [(&str, Check); 8] = [
        ("request_head", checks::request_head),
        ("chunked", checks::chunked),
        ("response_head", checks::response_head),
        ("route", checks::route),
        ("config", checks::config),
        ("sigv4_canonical", checks::sigv4_canonical),
        ("jwt", checks::jwt),
        ("ws_frames", checks::ws_frames),
    ];
    for (name, check) in targets {
        let dir = root.join(name);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| check(&data));
            assert!(result.is_ok(), "{name}: {} fails its check", path.display());
            n += 1;
        }
        assert!(n > 0, "{name}: the corpus is empty");
    }
}
