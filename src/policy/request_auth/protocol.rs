//! The wire format between the gateway and an authorizer service: the JSON
//! body of the call, and the answer (API Gateway's HTTP API "simple
//! response"). Pure functions, unit-tested in `tests.rs`;
//! docs/request-authorizer.md shows both with examples.
//!
//! Call (`POST`, `content-type: application/json`):
//!
//! ```json
//! {"version":"1.0","type":"REQUEST","authorizer":"tokens",
//!  "routeKey":"GET /pets/{id}","methodArn":"pets/GET/pets/7",
//!  "identity":{"header:Authorization":"Bearer abc"},
//!  "requestContext":{"apiName":"pets","routeKey":"GET /pets/{id}",
//!   "httpMethod":"GET","path":"/pets/7","sourceIp":"203.0.113.9",
//!   "requestId":"..."}}
//! ```
//!
//! Answer (status 200): `{"isAuthorized":true,"principalId":"user-1",
//! "context":{"tenant":"acme"}}`. Anything else is a failure.

use super::cache::{Allowed, Verdict};
use super::{
    IdentitySource, RequestAuthorizer, MAX_HEADER_VALUE_BYTES, MAX_PRINCIPAL_BYTES,
    MAX_UPSTREAM_HEADER_BYTES,
};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;

/// The request facts the call reports.
pub struct Facts<'a> {
    pub authorizer: &'a str,
    pub api: &'a str,
    pub route_key: &'a str,
    /// The request's method (an `ANY` route's actual method).
    pub method: &'a str,
    /// The path as received (still percent-encoded).
    pub path: &'a str,
    pub source_ip: IpAddr,
    pub request_id: &'a str,
}

#[derive(Serialize)]
struct Body<'a> {
    version: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    authorizer: &'a str,
    #[serde(rename = "routeKey")]
    route_key: &'a str,
    #[serde(rename = "methodArn")]
    method_arn: String,
    identity: Identity<'a>,
    #[serde(rename = "requestContext")]
    request_context: Context<'a>,
}

/// `{"header:Authorization": "...", ...}` in config order.
struct Identity<'a> {
    sources: &'a [IdentitySource],
    values: &'a [String],
}

impl Serialize for Identity<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.values.len()))?;
        for (src, value) in self.sources.iter().zip(self.values) {
            map.serialize_entry(&src.label, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Context<'a> {
    api_name: &'a str,
    route_key: &'a str,
    http_method: &'a str,
    path: &'a str,
    source_ip: String,
    request_id: &'a str,
}

/// The JSON body of a call. `identity` holds one value per identity source.
pub fn request_body(az: &RequestAuthorizer, identity: &[String], facts: &Facts<'_>) -> Vec<u8> {
    let body = Body {
        version: "1.0",
        kind: "REQUEST",
        authorizer: facts.authorizer,
        route_key: facts.route_key,
        // API Gateway's methodArn ends `.../METHOD/resource-path`; without
        // an account or a stage, the API name stands first.
        method_arn: format!(
            "{}/{}/{}",
            facts.api,
            facts.method,
            facts.path.strip_prefix('/').unwrap_or(facts.path)
        ),
        identity: Identity {
            sources: &az.sources,
            values: identity,
        },
        request_context: Context {
            api_name: facts.api,
            route_key: facts.route_key,
            http_method: facts.method,
            path: facts.path,
            source_ip: facts.source_ip.to_string(),
            request_id: facts.request_id,
        },
    };
    // Serializing strings into a Vec cannot fail; an empty body would be
    // refused by the authorizer, which is a failure, never an allow.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The answer as sent. Unknown fields are ignored (so an authorizer may
/// add its own); a field given twice is an error.
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "isAuthorized")]
    is_authorized: bool,
    #[serde(rename = "principalId", default)]
    principal_id: Option<String>,
    #[serde(default)]
    context: Option<BTreeMap<String, serde_json::Value>>,
}

/// Why an answer is refused (for the log; the client sees 500).
pub type Invalid = String;

/// Parses a 200 answer's body into a verdict. A deny ignores the rest of
/// the answer. An allow's `principalId` and mapped context values must be
/// printable (no control characters: CR/LF would inject header lines) and
/// within the size limits, or the whole answer is refused.
pub fn parse_answer(az: &RequestAuthorizer, body: &[u8]) -> Result<Verdict, Invalid> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("{e}"))?;
    if !answer.is_authorized {
        return Ok(Verdict::Deny);
    }
    let principal = match answer.principal_id {
        None => None,
        Some(p) if p.is_empty() => None,
        Some(p) => {
            if p.len() > MAX_PRINCIPAL_BYTES {
                return Err(format!(
                    "principalId is longer than {MAX_PRINCIPAL_BYTES} bytes"
                ));
            }
            if has_control(&p) {
                return Err("principalId has control characters".into());
            }
            Some(crate::policy::auth::Principal::from(p))
        }
    };
    let mut headers = Vec::new();
    if let (Some(h), Some(p)) = (&az.principal_header, &principal) {
        push_line(&mut headers, h, p.as_ref())?;
    }
    if let Some(context) = &answer.context {
        for (key, header) in &az.context_headers {
            let Some(value) = context.get(key) else {
                continue;
            };
            let text: std::borrow::Cow<'_, str> = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.as_str().into(),
                serde_json::Value::Bool(b) => if *b { "true" } else { "false" }.into(),
                serde_json::Value::Number(n) => n.to_string().into(),
                serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
                    return Err(format!(
                        "context key {key:?} holds an array or object; only strings, numbers and booleans pass as headers"
                    ))
                }
            };
            if text.len() > MAX_HEADER_VALUE_BYTES {
                return Err(format!(
                    "context key {key:?} is longer than {MAX_HEADER_VALUE_BYTES} bytes"
                ));
            }
            if has_control(&text) {
                return Err(format!(
                    "context key {key:?} has control characters (CR, LF, ...)"
                ));
            }
            push_line(&mut headers, header, &text)?;
        }
    }
    Ok(Verdict::Allow(Rc::new(Allowed {
        principal,
        headers: headers.into_boxed_slice(),
    })))
}

/// Control characters (C0, DEL): never valid in a header value we write.
/// Tab is refused too: a value is passed as the authorizer wrote it, and a
/// tab at either end would be trimmed by the backend's parser.
pub fn has_control(s: &str) -> bool {
    s.bytes().any(|b| b < 0x20 || b == 0x7f)
}

fn push_line(out: &mut Vec<u8>, name: &str, value: &str) -> Result<(), Invalid> {
    let value = value.trim_matches(' ');
    if out.len() + name.len() + value.len() + 4 > MAX_UPSTREAM_HEADER_BYTES {
        return Err(format!(
            "the context headers come to more than {MAX_UPSTREAM_HEADER_BYTES} bytes"
        ));
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
    Ok(())
}
