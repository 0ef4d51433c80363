//! A WebSocket API's compiled routes and integrations, and the route
//! selection expression that picks a route for each message
//! (docs/websocket.md). Compiled by `plan::websocket`; the connection's
//! session (`gateway::websocket`) calls [`Selection::route_key`] per text
//! message and the integrations through [`crate::integration::client`].

use std::time::Duration;

/// Event types a backend is told of (`x-coregate-event-type`).
pub const CONNECT: &str = "CONNECT";
pub const MESSAGE: &str = "MESSAGE";
pub const DISCONNECT: &str = "DISCONNECT";

/// One WebSocket API, as its `$connect` route carries it.
#[derive(Debug, Clone)]
pub struct WsApiPlan {
    pub name: String,
    pub selection: Selection,
    pub connect: Option<WsRoute>,
    pub disconnect: Option<WsRoute>,
    pub default: Option<WsRoute>,
    /// Custom route keys, in config order.
    pub routes: Vec<WsRoute>,
    pub limits: WsLimits,
}

impl WsApiPlan {
    /// The route a message with this selected key takes: the custom route
    /// of that key, else `$default`.
    pub fn route_for(&self, key: Option<&str>) -> Option<&WsRoute> {
        key.and_then(|k| self.routes.iter().find(|r| r.key == k))
            .or(self.default.as_ref())
    }
}

/// `@connections` on a WebSocket API's own path (`[apis.websocket]
/// connections_authorizer`): the integration of its `POST`, `GET` and
/// `DELETE` routes, which the SigV4 authorizer guards.
#[derive(Debug, Clone)]
pub struct WsConnectionsPlan {
    /// The API's name: a connection of another API is not this path's
    /// (410, as for one that does not exist).
    pub api: String,
    /// The API's `max_message_bytes`: a larger `POST` body is 413.
    pub max_message: usize,
}

/// `[apis.websocket]`, compiled.
#[derive(Debug, Clone)]
pub struct WsLimits {
    pub max_frame: usize,
    pub max_message: usize,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// New connections per second for the API, in all (each shard takes
    /// its share).
    pub new_per_second: u32,
    pub send_buffer: usize,
    pub allow_binary: bool,
}

#[derive(Debug, Clone)]
pub struct WsRoute {
    /// `$connect`, `$disconnect`, `$default` or a custom key.
    pub key: String,
    pub integration: WsIntegration,
    /// Send the integration's answer back to the client.
    pub route_response: bool,
}

#[derive(Debug, Clone)]
pub enum WsIntegration {
    /// POST each event to `target` (path and query) on the upstream.
    Http {
        upstream: usize,
        target: String,
        timeout: Duration,
    },
    /// A fixed answer: its status (on `$connect`, a non-2xx refuses the
    /// handshake) and body (sent back on a two-way route).
    Mock { status: u16, body: Vec<u8> },
}

/// A route selection expression, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A JSON path into the message: its member names.
    Body(Vec<String>),
}

/// `request.body.a.b` (without `$`) → `["a", "b"]`.
fn body_path(expr: &str) -> Result<Vec<String>, String> {
    let rest = expr
        .strip_prefix("request.body.")
        .ok_or_else(|| format!("{expr:?} is not of the form request.body.NAME"))?;
    let names: Vec<String> = rest.split('.').map(str::to_string).collect();
    if names.iter().any(|n| {
        n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return Err(format!(
            "{expr:?}: member names are letters, digits, '_' and '-', separated by '.'"
        ));
    }
    Ok(names)
}

impl Selection {
    /// `$request.body.PATH`, or a template of `${request.body.PATH}` parts
    /// and literal text.
    pub fn parse(expr: &str) -> Result<Selection, String> {
        if !expr.contains("${") {
            let Some(rest) = expr.strip_prefix('$') else {
                return Err(format!(
                    "{expr:?} is neither $request.body.NAME nor a template of ${{request.body.NAME}} parts"
                ));
            };
            return Ok(Selection {
                parts: vec![Part::Body(body_path(rest)?)],
            });
        }
        let mut parts = Vec::new();
        let mut rest = expr;
        while let Some(open) = rest.find("${") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{expr:?}: unclosed \"${{\""))?;
            parts.push(Part::Body(body_path(&after[..close])?));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        if parts
            .iter()
            .any(|p| matches!(p, Part::Literal(l) if l.contains(['$', '{', '}'])))
        {
            return Err(format!(
                "{expr:?}: stray '$', '{{' or '}}' outside ${{...}}"
            ));
        }
        Ok(Selection { parts })
    }

    /// The route key a message selects; None when it is not a JSON object
    /// (the message goes to `$default`). A path the message lacks
    /// resolves to `""`.
    pub fn route_key(&self, message: &[u8]) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(message).ok()?;
        if !v.is_object() {
            return None;
        }
        let mut key = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => key.push_str(l),
                Part::Body(path) => {
                    let mut at = Some(&v);
                    for name in path {
                        at = at.and_then(|x| x.get(name));
                    }
                    match at {
                        None | Some(serde_json::Value::Null) => {}
                        Some(serde_json::Value::String(s)) => key.push_str(s),
                        Some(other) => key.push_str(&other.to_string()),
                    }
                }
            }
        }
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    //! Unwraps are fine: the expressions are literals of the test.
    use super::*;

    #[test]
    fn selection_expressions() {
        let s = Selection::parse("$request.body.action").unwrap();
        assert_eq!(
            s.route_key(br#"{"action":"join"}"#).as_deref(),
            Some("join")
        );
        assert_eq!(s.route_key(br#"{"other":1}"#).as_deref(), Some(""));
        assert_eq!(s.route_key(br#"{"action":7}"#).as_deref(), Some("7"));
        assert_eq!(s.route_key(b"not json"), None);
        assert_eq!(s.route_key(b"[1,2]"), None);
        let t = Selection::parse("${request.body.service}/${request.body.action}").unwrap();
        assert_eq!(
            t.route_key(br#"{"service":"chat","action":"join"}"#)
                .as_deref(),
            Some("chat/join")
        );
        let n = Selection::parse("$request.body.a.b").unwrap();
        assert_eq!(n.route_key(br#"{"a":{"b":"x"}}"#).as_deref(), Some("x"));
        for bad in [
            "request.body.action",
            "$request.header.x",
            "$request.body.",
            "${request.body.a",
            "${request.body.a}$x",
            "$request.body.a b",
        ] {
            assert!(Selection::parse(bad).is_err(), "{bad}");
        }
    }
}
