//! Log lines on stderr: one `write` per line so shards never interleave.
//! Structured access logs and metrics arrive with their own issue; this is for
//! operators reading errors (upstream failures, start-up, shutdown).

use std::io::Write;

#[doc(hidden)]
pub fn write_line(level: &str, args: std::fmt::Arguments<'_>) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let line = format!("{secs:.3} {level} {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `log!("warn", "upstream {} refused", addr)`
#[macro_export]
macro_rules! log {
    ($level:literal, $($arg:tt)*) => {
        $crate::log::write_line($level, format_args!($($arg)*))
    };
}
