//! The error log: every line the gateway prints about itself, on stderr, in
//! one format (docs/access-logs.md, "Error log"):
//!
//! ```text
//! 2026-12-06T03:58:49.123Z warn shard=1 request=5f2c… upstream 127.0.0.1:9000 refused
//! ```
//!
//! time (UTC, milliseconds), level, the shard the line comes from (`-` for
//! the main thread and helper threads), the request id where the line is
//! about one request, and the message. Control characters in a message are
//! written as `\xHH`, so no text from a client can start a line of its
//! own. Each line is one `write` so threads never interleave. Lines below
//! the level set by `--log-level` (default `info`) are not formatted.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// Levels, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "error" => Level::Error,
            "warn" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

thread_local! {
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Lines above `level` (less severe) are left out from now on.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line at `level` is written. An unknown level name is written.
pub fn enabled(level: &str) -> bool {
    Level::parse(level).is_none_or(|l| l as u8 <= MAX_LEVEL.load(Ordering::Relaxed))
}

/// Names this thread's lines with shard `id`.
pub fn set_shard(id: usize) {
    SHARD.with(|s| s.set(Some(id)));
}

#[doc(hidden)]
pub fn write_line(level: &str, request_id: Option<&[u8]>, args: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let mut line = Vec::with_capacity(160);
    let _ = write!(
        line,
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z {level} shard=",
        s / 3600,
        s / 60 % 60,
        s % 60,
        now.subsec_millis()
    );
    match SHARD.with(Cell::get) {
        Some(id) => {
            let _ = write!(line, "{id}");
        }
        None => line.push(b'-'),
    }
    if let Some(id) = request_id {
        line.extend_from_slice(b" request=");
        escape_into(id, &mut line);
    }
    line.push(b' ');
    let message = args.to_string();
    escape_into(message.as_bytes(), &mut line);
    line.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&line);
}

/// Copies `v`, writing control characters as `\xHH`.
fn escape_into(v: &[u8], out: &mut Vec<u8>) {
    for &b in v {
        if b < 0x20 || b == 0x7f {
            let _ = write!(out, "\\x{b:02x}");
        } else {
            out.push(b);
        }
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `log!("warn", "upstream {} refused", addr)`: a line at a level (`error`,
/// `warn`, `info`, `debug`).
#[macro_export]
macro_rules! log {
    ($level:literal, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write_line($level, None, format_args!($($arg)*))
        }
    };
}

/// `log_request!("debug", request_id, "phase {} continues", p)`: a line
/// about one request, with its id.
#[macro_export]
macro_rules! log_request {
    ($level:literal, $id:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write_line($level, Some(&$id[..]), format_args!($($arg)*))
        }
    };
}

/// The message a panic carried, when it is text.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> Option<&str> {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_levels() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert!(Level::Debug > Level::Info);
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        let mut out = Vec::new();
        escape_into(b"a\nb\x1bc", &mut out);
        assert_eq!(out, b"a\\x0ab\\x1bc");
    }
}
