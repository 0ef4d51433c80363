//! The `mock` integration: a response fixed in the config, rendered to
//! bytes when the plan compiles; per request only the date, the request id
//! and the connection header are added.

#[derive(Debug, Clone)]
pub struct MockPlan {
    pub status: u16,
    /// Status line, configured headers and content-length, without the blank
    /// line: the per-request headers follow it.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}
