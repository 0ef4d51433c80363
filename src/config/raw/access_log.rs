//! `access_log` as written in the config file, on `[server]` and on an API:
//! shape only; `crate::accesslog` compiles and checks it.

use serde::Deserialize;

/// `[server.access_log]` or `[apis.access_log]`: one line per request, in
/// `format` (AWS `$context` variables) or one of the `preset`s, written to
/// `destination`.
#[derive(Debug, Clone, Deserialize)]
pub struct RawAccessLog {
    /// A format string with `$context.*` variables. Either this or `preset`.
    pub format: Option<String>,
    /// `clf`, `json`, `xml` or `csv`: AWS's formats of those names.
    pub preset: Option<String>,
    /// How variable values are escaped in `format`: `json`, `xml`, `csv` or
    /// `text`. Default: `json` when the format starts with `{`, `xml` when
    /// it starts with `<`, else `text`.
    pub escape: Option<String>,
    /// `stdout`, or a file path (appended to; a relative path is taken from
    /// the config file's directory).
    pub destination: Option<String>,
}
