//! The request authorizer's call, awaited by the driver when the
//! authorizer phase has no cached answer for the caller's identity
//! ([`crate::policy::Decision::Authorize`]): one `POST` to the authorizer
//! service over the integration's HTTP client and upstream pools, or a wait
//! for the call already asking for the same identity on this shard. The
//! policy ([`crate::policy::request_auth`]) builds the request body, reads
//! the answer and caches it; this module does the I/O.

use super::{Exchange, Generation};
use crate::http::conn::Conn;
use crate::http::parse::RequestHead;
use crate::integration::client;
use crate::policy::auth::AuthorizerKind;
use crate::policy::request_auth::cache::{Failed, Outcome};
use crate::policy::request_auth::{apply, protocol, Call, RequestAuthorizer, MAX_ANSWER_BYTES};
use crate::policy::{Decision, Refusal};
use std::time::{Duration, Instant};

/// Waiters for another request's call give up this long after the call's
/// own timeout (which always ends the call first, unless its task died).
const FLIGHT_GRACE: Duration = Duration::from_millis(250);

/// Calls the route's request authorizer (or waits for the call already
/// asking for this identity on this shard) while the request head is still
/// at the start of `conn.unread()`, and applies its answer to the
/// exchange's state: `Continue` (allowed) or `Respond` (denied, or 500 for
/// a failed call, never an allow).
pub async fn call(
    call: Box<Call>,
    conn: &mut Conn,
    head: &RequestHead,
    x: &mut Exchange,
) -> Decision {
    let generation = x.generation.clone();
    let plan = &generation.plan;
    let az = match plan
        .policies
        .authorizers
        .get(call.authorizer)
        .map(|a| &a.kind)
    {
        Some(AuthorizerKind::Request(r)) => r,
        #[allow(unreachable_patterns)]
        _ => return refuse(500),
    };
    let Some(route) = plan.routes.get(call.route) else {
        return refuse(500);
    };
    let buf = conn.unread();
    let facts = protocol::Facts {
        authorizer: &az.name,
        api: &route.api,
        route_key: &route.key,
        method: std::str::from_utf8(head.method_span.get(buf)).unwrap_or("-"),
        path: std::str::from_utf8(head.path(buf)).unwrap_or("/"),
        source_ip: x.peer.ip(),
        request_id: std::str::from_utf8(&x.request_id).unwrap_or("-"),
    };
    let outcome = decide(az, &call, &generation, &facts).await;
    match &outcome {
        Ok(v) => apply(v, &mut x.state),
        Err(Failed) => refuse(500),
    }
}

fn refuse(status: u16) -> Decision {
    Decision::Respond(Refusal::json(
        status,
        match status {
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "Internal Server Error",
        },
    ))
}

/// The answer for a call: from a call of this request, or from one already
/// in flight for the same identity on this shard (coalescing).
async fn decide(
    az: &RequestAuthorizer,
    call: &Call,
    generation: &Generation,
    facts: &protocol::Facts<'_>,
) -> Outcome {
    let cache = generation.policies.auth.request.cache(call.authorizer);
    let (Some(cache), Some(key)) = (cache, call.key) else {
        return ask(az, call, generation, facts).await;
    };
    if let Some(flight) = cache.flight(&key) {
        let limit = az.timeout + FLIGHT_GRACE;
        let waited = futures_lite::future::or(flight.wait(), async {
            glommio::timer::sleep(limit).await;
            None
        })
        .await;
        if let Some(outcome) = waited {
            return outcome;
        }
        // The call we waited for vanished (its task was dropped): ask
        // ourselves, without registering, so waiters do not queue up.
        if let Some(v) = cache.get(&key, Instant::now()) {
            return Ok(v);
        }
        let outcome = ask(az, call, generation, facts).await;
        if let Ok(v) = &outcome {
            cache.insert(key, v.clone(), Instant::now());
        }
        return outcome;
    }
    let guard = cache.begin(key);
    let outcome = ask(az, call, generation, facts).await;
    if let Ok(v) = &outcome {
        // Allow and deny are both cached; failures never are.
        cache.insert(key, v.clone(), Instant::now());
    }
    guard.finish(outcome.clone());
    outcome
}

/// One call to the authorizer service, its answer checked. Failures are
/// logged here (the client only sees 500).
async fn ask(
    az: &RequestAuthorizer,
    call: &Call,
    generation: &Generation,
    facts: &protocol::Facts<'_>,
) -> Outcome {
    let body = protocol::request_body(az, &call.identity, facts);
    let (Some(uplan), Some(state)) = (
        generation.plan.upstreams.get(az.upstream),
        generation.upstreams.get(az.upstream),
    ) else {
        generation
            .policies
            .auth
            .request
            .note_failure(&az.name, || "its upstream is not in the plan".to_string());
        return Err(Failed);
    };
    let request = client::Request {
        target: &az.target,
        body: &body,
        request_id: facts.request_id.as_bytes(),
        timeout: az.timeout,
        max_answer: MAX_ANSWER_BYTES,
        headers: &[],
    };
    let answer = match client::call(uplan, state, &request).await {
        Ok(a) => a,
        Err(e) => {
            generation
                .policies
                .auth
                .request
                .note_failure(&az.name, || e.to_string());
            return Err(Failed);
        }
    };
    if answer.status != 200 {
        generation
            .policies
            .auth
            .request
            .note_failure(&az.name, || format!("answered {} (not 200)", answer.status));
        return Err(Failed);
    }
    match protocol::parse_answer(az, &answer.body) {
        Ok(v) => Ok(v),
        Err(why) => {
            generation
                .policies
                .auth
                .request
                .note_failure(&az.name, || format!("invalid answer: {why}"));
            Err(Failed)
        }
    }
}
