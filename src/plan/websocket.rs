//! Compiling a WebSocket API (`kind = "websocket"`, docs/websocket.md):
//! its route selection expression, its `$connect`, `$disconnect`,
//! `$default` and custom routes with their `http` or `mock` integrations,
//! and `[apis.websocket]`'s limits, into the
//! [`WsApiPlan`] its handshake route carries. The compiler
//! (`plan::compile`) calls [`kind`] for every API, then [`compile`] for a
//! WebSocket one, and gives it the route table entry `GET /` under the
//! API's base path, whose policies are `$connect`'s: authorization covers
//! the whole connection.

use crate::config::raw::websocket::*;
use crate::config::raw::{RawApi, RawIntegration, RawRoute};
use crate::config::ConfigError;
use crate::integration::http_proxy::WsRelayLimits;
use crate::integration::websocket::{Selection, WsApiPlan, WsIntegration, WsLimits, WsRoute};
use crate::policy::auth::{AuthorizerKind, AuthorizerPlan};
use std::collections::BTreeMap;
use std::time::Duration;

/// The route selection expression when none is written.
pub const DEFAULT_ROUTE_SELECTION_EXPRESSION: &str = "$request.body.action";
/// Default and bounds of an `http` integration's `timeout_ms` (AWS's:
/// 50 ms to 29 s).
pub const DEFAULT_WS_INTEGRATION_TIMEOUT_MS: u64 = 29_000;
const MIN_WS_INTEGRATION_TIMEOUT_MS: u64 = 50;

/// Resolves an integration URL: (url, config key, errors) → the upstream's
/// index and the request target (path and query).
pub type ResolveUrl<'a> =
    dyn FnMut(&str, &str, &mut Vec<ConfigError>) -> Option<(usize, String)> + 'a;

/// Whether the API is a WebSocket API. Reports an unknown `kind`, and on
/// an HTTP API the keys only a WebSocket API takes.
pub fn kind(api: &RawApi, akey: &str, errors: &mut Vec<ConfigError>) -> bool {
    let ws = match api.kind.as_deref() {
        None | Some("http") => false,
        Some("websocket") => true,
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{akey}.kind"),
                format!("{other:?} is not one of \"http\", \"websocket\""),
            ));
            false
        }
    };
    if ws {
        return true;
    }
    let only_ws = "is for WebSocket APIs (kind = \"websocket\")";
    if api.route_selection_expression.is_some() {
        errors.push(ConfigError::new(
            format!("{akey}.route_selection_expression"),
            only_ws,
        ));
    }
    if let Some(w) = &api.websocket {
        // An HTTP API's table holds the limits of the WebSockets its
        // `http_proxy` routes relay ([`relay_limits`]); nothing else.
        let only_relay = "is for WebSocket APIs (kind = \"websocket\"); an HTTP API's [apis.websocket] takes only idle_timeout_ms and max_lifetime_ms (for the WebSockets its http_proxy routes relay)";
        for (name, set) in [
            ("max_frame_bytes", w.max_frame_bytes.is_some()),
            ("max_message_bytes", w.max_message_bytes.is_some()),
            (
                "new_connections_per_second",
                w.new_connections_per_second.is_some(),
            ),
            ("send_buffer_bytes", w.send_buffer_bytes.is_some()),
            ("allow_binary", w.allow_binary.is_some()),
            ("connections_authorizer", w.connections_authorizer.is_some()),
        ] {
            if set {
                errors.push(ConfigError::new(
                    format!("{akey}.websocket.{name}"),
                    only_relay,
                ));
            }
        }
    }
    for (ri, r) in api.routes.iter().enumerate() {
        if r.route_response.is_some() {
            errors.push(ConfigError::new(
                format!("{akey}.routes[{ri}].route_response"),
                only_ws,
            ));
        }
        if matches!(r.integration, RawIntegration::Http { .. }) {
            errors.push(ConfigError::new(
                format!("{akey}.routes[{ri}].integration.type"),
                "\"http\" is for WebSocket APIs (kind = \"websocket\"); an HTTP API's route takes \"http_proxy\" or \"mock\"",
            ));
        }
    }
    false
}

/// The index of the API's `$connect` route, if it has one.
pub fn connect_index(api: &RawApi) -> Option<usize> {
    api.routes.iter().position(|r| r.key == "$connect")
}

/// The route whose policies the handshake takes when the API has no
/// `$connect` route: the API's own settings, nothing of a route's.
pub fn connect_stand_in() -> RawRoute {
    RawRoute {
        key: "$connect".to_string(),
        integration: RawIntegration::Mock {
            status: None,
            headers: BTreeMap::new(),
            body: String::new(),
        },
        throttle: None,
        cache: None,
        ip_rules: None,
        api_key_required: None,
        authorizer: None,
        authorization_scopes: None,
        route_response: None,
        mapping: None,
        lifecycle: None,
        policies: None,
    }
}

/// The route keys of `@connections` on a WebSocket API's own path
/// (`[apis.websocket] connections_authorizer`), AWS's request URIs.
pub const CONNECTIONS_ROUTES: [&str; 3] = [
    "POST /@connections/{connectionId}",
    "GET /@connections/{connectionId}",
    "DELETE /@connections/{connectionId}",
];

/// `[apis.websocket] connections_authorizer`, checked: the name of the
/// `[[authorizers]]` entry it names, which must be a SigV4 one. None when
/// it is not set, or is wrong (reported).
pub fn connections_authorizer<'a>(
    api: &'a RawApi,
    akey: &str,
    authorizers: &[AuthorizerPlan],
    errors: &mut Vec<ConfigError>,
) -> Option<&'a str> {
    let name = api.websocket.as_ref()?.connections_authorizer.as_deref()?;
    let key = format!("{akey}.websocket.connections_authorizer");
    match authorizers.iter().find(|a| a.name == name).map(|a| &a.kind) {
        Some(AuthorizerKind::Sigv4(_)) => Some(name),
        Some(_) => {
            errors.push(ConfigError::new(
                key,
                format!("authorizer {name:?} is not a SigV4 one: @connections is authenticated with SigV4 ([authorizers.sigv4]), as AWS does"),
            ));
            None
        }
        None => {
            errors.push(ConfigError::new(
                key,
                format!("no [[authorizers]] entry is named {name:?}: name a SigV4 authorizer whose credentials may use @connections"),
            ));
            None
        }
    }
}

/// The API and route whose policies `@connections` on the API's path
/// takes: the SigV4 authorizer `authorizer` and nothing else. The API's
/// IP rules, API key, throttle, CORS and own authorizer are the clients';
/// AWS authenticates `@connections` with IAM alone.
pub fn connections_policies(api: &RawApi, authorizer: &str) -> (RawApi, RawRoute) {
    let mut bare = api.clone();
    bare.routes.clear();
    bare.throttle = None;
    bare.cache = None;
    bare.cors = None;
    bare.ip_rules = None;
    bare.api_key_required = None;
    bare.authorizer = None;
    bare.lifecycle = None;
    bare.policies = None;
    let mut route = connect_stand_in();
    route.key = CONNECTIONS_ROUTES[0].to_string();
    route.authorizer = Some(authorizer.to_string());
    (bare, route)
}

fn ms(errors: &mut Vec<ConfigError>, key: String, v: Option<u64>, default: u64) -> Duration {
    let v = v.unwrap_or(default);
    if v == 0 {
        errors.push(ConfigError::new(key, "must be at least 1 (milliseconds)"));
    }
    Duration::from_millis(v.max(1))
}

/// An HTTP API's limits for the WebSockets its `http_proxy` routes relay:
/// `[apis.websocket]`'s `idle_timeout_ms` and `max_lifetime_ms`, AWS's
/// defaults without them. A WebSocket API's are its own ([`compile`]).
pub fn relay_limits(
    api: &RawApi,
    akey: &str,
    websocket: bool,
    errors: &mut Vec<ConfigError>,
) -> WsRelayLimits {
    let Some(w) = api.websocket.as_ref().filter(|_| !websocket) else {
        return WsRelayLimits::default();
    };
    let k = |name: &str| format!("{akey}.websocket.{name}");
    WsRelayLimits {
        idle_timeout: ms(
            errors,
            k("idle_timeout_ms"),
            w.idle_timeout_ms,
            DEFAULT_WS_IDLE_TIMEOUT_MS,
        ),
        max_lifetime: ms(
            errors,
            k("max_lifetime_ms"),
            w.max_lifetime_ms,
            DEFAULT_MAX_LIFETIME_MS,
        ),
    }
}

fn limits(api: &RawApi, akey: &str, errors: &mut Vec<ConfigError>) -> WsLimits {
    let empty = RawWebsocket::default();
    let w = api.websocket.as_ref().unwrap_or(&empty);
    let k = |name: &str| format!("{akey}.websocket.{name}");
    let max_frame = w.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME_BYTES);
    let max_message = w.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    for (name, v) in [
        ("max_frame_bytes", max_frame),
        ("max_message_bytes", max_message),
    ] {
        if v == 0 || v > MAX_MESSAGE_LIMIT {
            errors.push(ConfigError::new(
                k(name),
                format!("must be between 1 and {MAX_MESSAGE_LIMIT}"),
            ));
        }
    }
    if max_frame > max_message {
        errors.push(ConfigError::new(
            k("max_frame_bytes"),
            format!("{max_frame} is more than max_message_bytes ({max_message}): a frame is part of a message"),
        ));
    }
    let send_buffer = w.send_buffer_bytes.unwrap_or(DEFAULT_SEND_BUFFER_BYTES);
    if send_buffer < max_message {
        errors.push(ConfigError::new(
            k("send_buffer_bytes"),
            format!("{send_buffer} is less than max_message_bytes ({max_message}): one message must fit"),
        ));
    }
    let new_per_second = w
        .new_connections_per_second
        .unwrap_or(DEFAULT_NEW_CONNECTIONS_PER_SECOND);
    if new_per_second == 0 {
        errors.push(ConfigError::new(
            k("new_connections_per_second"),
            "must be at least 1",
        ));
    }
    WsLimits {
        max_frame: max_frame.clamp(1, MAX_MESSAGE_LIMIT),
        max_message: max_message.clamp(1, MAX_MESSAGE_LIMIT),
        idle_timeout: ms(
            errors,
            k("idle_timeout_ms"),
            w.idle_timeout_ms,
            DEFAULT_WS_IDLE_TIMEOUT_MS,
        ),
        max_lifetime: ms(
            errors,
            k("max_lifetime_ms"),
            w.max_lifetime_ms,
            DEFAULT_MAX_LIFETIME_MS,
        ),
        new_per_second: new_per_second.max(1),
        send_buffer,
        allow_binary: w.allow_binary.unwrap_or(DEFAULT_ALLOW_BINARY),
    }
}

/// Compiles a WebSocket API. Every error names its key; None after one.
pub fn compile(
    api: &RawApi,
    akey: &str,
    resolve: &mut ResolveUrl<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<WsApiPlan> {
    let before = errors.len();
    let expr = api
        .route_selection_expression
        .as_deref()
        .unwrap_or(DEFAULT_ROUTE_SELECTION_EXPRESSION);
    let selection = match Selection::parse(expr) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(ConfigError::new(
                format!("{akey}.route_selection_expression"),
                e,
            ));
            None
        }
    };
    if api.cache.is_some() {
        errors.push(ConfigError::new(
            format!("{akey}.cache"),
            "a WebSocket API has no response cache",
        ));
    }
    let limits = limits(api, akey, errors);
    let mut plan_routes = Vec::new();
    let (mut connect, mut disconnect, mut default) = (None, None, None);
    let mut seen = std::collections::BTreeSet::new();
    for (ri, r) in api.routes.iter().enumerate() {
        let rkey = format!("{akey}.routes[{ri}]");
        let special = matches!(r.key.as_str(), "$connect" | "$disconnect" | "$default");
        if r.key.is_empty() {
            errors.push(ConfigError::new(format!("{rkey}.key"), "must not be empty"));
        } else if r.key.bytes().any(|b| b < 0x20 || b == 0x7f) {
            errors.push(ConfigError::new(
                format!("{rkey}.key"),
                format!("{:?}: a route key is printable text", r.key),
            ));
        } else if r.key.starts_with('$') && !special {
            errors.push(ConfigError::new(
                format!("{rkey}.key"),
                format!("{:?}: a custom route key may not start with '$' (the special keys are $connect, $disconnect and $default)", r.key),
            ));
        } else if !seen.insert(r.key.as_str()) {
            errors.push(ConfigError::new(
                format!("{rkey}.key"),
                format!("route {:?} is defined twice", r.key),
            ));
        }
        if r.key != "$connect" {
            let connect_only = "is set on the $connect route (or the API): authorization and admission cover the whole connection";
            for (name, set) in [
                ("api_key_required", r.api_key_required.is_some()),
                ("authorizer", r.authorizer.is_some()),
                ("authorization_scopes", r.authorization_scopes.is_some()),
                ("ip_rules", r.ip_rules.is_some()),
                ("throttle", r.throttle.is_some()),
            ] {
                if set {
                    errors.push(ConfigError::new(format!("{rkey}.{name}"), connect_only));
                }
            }
        }
        if r.cache.is_some() {
            errors.push(ConfigError::new(
                format!("{rkey}.cache"),
                "a WebSocket API has no response cache",
            ));
        }
        let route_response = r.route_response.unwrap_or(false);
        if route_response && matches!(r.key.as_str(), "$connect" | "$disconnect") {
            errors.push(ConfigError::new(
                format!("{rkey}.route_response"),
                "is for message routes ($default and custom keys): there is no message to answer",
            ));
        }
        let integration = match &r.integration {
            RawIntegration::Http { url, timeout_ms } => {
                let tkey = format!("{rkey}.integration.timeout_ms");
                let t = timeout_ms.unwrap_or(DEFAULT_WS_INTEGRATION_TIMEOUT_MS);
                if !(MIN_WS_INTEGRATION_TIMEOUT_MS..=DEFAULT_WS_INTEGRATION_TIMEOUT_MS).contains(&t)
                {
                    errors.push(ConfigError::new(
                        tkey,
                        format!("must be between {MIN_WS_INTEGRATION_TIMEOUT_MS} and {DEFAULT_WS_INTEGRATION_TIMEOUT_MS}"),
                    ));
                }
                resolve(url, &format!("{rkey}.integration.url"), errors).map(
                    |(upstream, target)| WsIntegration::Http {
                        upstream,
                        target,
                        timeout: Duration::from_millis(t),
                    },
                )
            }
            RawIntegration::Mock {
                status,
                headers,
                body,
            } => {
                let status = status.unwrap_or(200);
                if !(200..=599).contains(&status) {
                    errors.push(ConfigError::new(
                        format!("{rkey}.integration.status"),
                        format!("{status} is not a final status (200-599)"),
                    ));
                }
                if !headers.is_empty() {
                    errors.push(ConfigError::new(
                        format!("{rkey}.integration.headers"),
                        "a WebSocket route's mock answers with a status and a body only",
                    ));
                }
                Some(WsIntegration::Mock {
                    status,
                    body: body.as_bytes().to_vec(),
                })
            }
            RawIntegration::HttpProxy { .. } => {
                errors.push(ConfigError::new(
                    format!("{rkey}.integration.type"),
                    "\"http_proxy\" is for HTTP APIs; a WebSocket route takes \"http\" (each event POSTed to a backend) or \"mock\"",
                ));
                None
            }
        };
        let Some(integration) = integration else {
            continue;
        };
        let route = WsRoute {
            key: r.key.clone(),
            integration,
            route_response,
        };
        match r.key.as_str() {
            "$connect" => connect = Some(route),
            "$disconnect" => disconnect = Some(route),
            "$default" => default = Some(route),
            _ => plan_routes.push(route),
        }
    }
    let selection = selection?;
    (errors.len() == before).then(|| WsApiPlan {
        name: api.name.clone(),
        selection,
        connect,
        disconnect,
        default,
        routes: plan_routes,
        limits,
    })
}
