//! `[apis.websocket]` as written: the limits of a WebSocket API's
//! connections (an API with `kind = "websocket"`). Shape and defaults only;
//! `plan::websocket` checks and compiles them. The defaults are Amazon API
//! Gateway's.

use serde::Deserialize;

/// AWS's frame limit: 32 KB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 32 * 1024;
/// AWS's message limit: 128 KB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// AWS's idle timeout: 10 minutes.
pub const DEFAULT_WS_IDLE_TIMEOUT_MS: u64 = 10 * 60 * 1000;
/// AWS's connection duration: 2 hours.
pub const DEFAULT_MAX_LIFETIME_MS: u64 = 2 * 60 * 60 * 1000;
/// AWS's new-connection rate: 500 per second.
pub const DEFAULT_NEW_CONNECTIONS_PER_SECOND: u32 = 500;
/// What may wait to be sent to one client (pushed or answered messages)
/// before further pushes get 429.
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 1024 * 1024;
pub const DEFAULT_ALLOW_BINARY: bool = false;
/// Largest accepted `max_message_bytes` (and `max_frame_bytes`): what the
/// admin listener reads of a pushed message.
pub const MAX_MESSAGE_LIMIT: usize = 16 * 1024 * 1024;

/// `[apis.websocket]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawWebsocket {
    pub max_frame_bytes: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
    pub max_lifetime_ms: Option<u64>,
    pub new_connections_per_second: Option<u32>,
    pub send_buffer_bytes: Option<usize>,
    /// Accept binary messages (routed to `$default`); else they close the
    /// connection with 1003.
    pub allow_binary: Option<bool>,
    /// The `[[authorizers]]` entry (of kind sigv4) whose credentials may
    /// use `@connections` on the API's own path; without it that path is
    /// not served.
    pub connections_authorizer: Option<String>,
}
