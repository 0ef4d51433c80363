//! `lifecycle` as written in the config file (on an API or a route): is it
//! active, deprecated or retired, since when, until when, and where its
//! documentation is. `policy::lifecycle` compiles it into header bytes.

use serde::Deserialize;

/// `[apis.lifecycle]` or `[apis.routes.lifecycle]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawLifecycle {
    /// `"active"` (default), `"deprecated"` or `"retired"`.
    pub status: Option<String>,
    /// When it was (or will be) deprecated: `"YYYY-MM-DD"` or
    /// `"YYYY-MM-DDTHH:MM:SSZ"` (UTC). Required when deprecated.
    pub deprecated_at: Option<String>,
    /// When it stops answering, in the same form: the `Sunset` header.
    pub sunset: Option<String>,
    /// An http(s) URL documenting the deprecation (a `Link` header).
    pub documentation: Option<String>,
}
