//! The signed-body phase: when a SigV4 signature covers the request body
//! (its hash is the last line of the canonical request) or the client
//! declared the body's hash in `x-amz-content-sha256`, the authorizer
//! phase leaves a [`BodyCheck`] in the request state, and the driver
//! awaits [`verify`] before the usage plan and throttle phases, so a
//! forged body costs no quota and no tokens.
//!
//! The whole body is read into the connection's read buffer behind the
//! head (`Conn::buffer_body`, growing it up to `max_body_bytes`; the head's
//! bytes stay where they are, as later phases and the cache read them),
//! hashed, and the check finished. The integration then finds the body
//! already buffered and forwards exactly the bytes that were hashed. A
//! chunked body is buffered with its framing and only its chunk data is
//! hashed.

use crate::http::body::ChunkedDecoder;
use crate::http::conn::{BodyError, Conn};
use crate::http::parse::{Framing, RequestHead};
use crate::http::Limits;
use crate::policy::sigv4::{BodyCheck, Failure};
use ring::digest;

/// Why the signed-body phase refused a request.
#[derive(Debug)]
pub enum BodyFailure {
    /// A SigV4 refusal (403, or 413 for a body over `max_body_bytes`).
    Refused(Failure),
    /// The body could not be read (timeout, framing, client gone).
    Body(BodyError),
}

/// Reads and hashes the body that follows the head (already consumed from
/// the connection's buffer) and finishes `check`. On success the whole
/// body is buffered, unconsumed.
pub async fn verify(
    conn: &mut Conn,
    head: &RequestHead,
    limits: &Limits,
    check: &BodyCheck,
) -> Result<(), BodyFailure> {
    let max = check.max_body_bytes.min(limits.max_body_bytes);
    let len = match conn
        .buffer_body(head.framing, max, limits, head.expect_continue)
        .await
    {
        Ok(len) => len,
        Err(BodyError::TooLarge) => return Err(BodyFailure::Refused(Failure::BodyTooLarge)),
        Err(e) => return Err(BodyFailure::Body(e)),
    };
    let body = &conn.unread()[..len];
    let hash = match head.framing {
        Framing::None | Framing::Length(_) => digest::digest(&digest::SHA256, body),
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new(false, limits.max_header_bytes);
            let mut ctx = digest::Context::new(&digest::SHA256);
            let mut pos = 0;
            while pos < body.len() && !dec.is_done() {
                let step = dec
                    .step(&body[pos..])
                    .map_err(|e| BodyFailure::Body(BodyError::Bad(e.0)))?;
                if step.forward {
                    ctx.update(&body[pos..pos + step.consumed]);
                }
                pos += step.consumed;
            }
            ctx.finish()
        }
    };
    let mut sha = [0u8; 32];
    sha.copy_from_slice(hash.as_ref());
    check.finish(&sha).map_err(BodyFailure::Refused)
}
