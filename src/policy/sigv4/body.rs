//! The asynchronous end of a SigV4 check: hashing the request body before
//! anything is forwarded.
//!
//! [`super::check`] runs with the head only. When the signature covers the
//! body (its hash is the last line of the canonical request) or the client
//! declared the body's hash in `x-amz-content-sha256`, it leaves a
//! [`BodyCheck`] in the request state, and the pipeline calls [`verify`]
//! after the policy phases and before the integration. `verify` reads the
//! whole body into the connection's read buffer behind the head (growing
//! it up to `max_body_bytes`; the head's bytes stay where they are, as the
//! cache phase reads them), hashes it, and finishes the check. The
//! integration then finds the body already buffered: `Conn::pump_body`
//! forwards buffered bytes first, so the proxy sends exactly the bytes
//! that were hashed. A chunked body is buffered with its framing and only
//! its chunk data is hashed; `pump_body` forwards that same data,
//! re-framed ([`crate::http::body`]).
//!
//! The throttle phase ran before this step: a request refused here for its
//! body has used a token (docs/sigv4.md).

use super::{BodyCheck, Failure};
use crate::config::Limits;
use crate::http::body::ChunkedDecoder;
use crate::http::conn::{BodyError, Conn, READ_BUF};
use crate::http::parse::{Framing, RequestHead};
use ring::digest;

/// Why the body step refused a request.
#[derive(Debug)]
pub enum BodyFailure {
    /// A SigV4 refusal (403, or 413 for a body over `max_body_bytes`).
    Refused(Failure),
    /// The body could not be read (timeout, framing, client gone).
    Body(BodyError),
}

impl From<BodyError> for BodyFailure {
    fn from(e: BodyError) -> Self {
        BodyFailure::Body(e)
    }
}

/// Reads and hashes the body that follows the head (`conn.rpos` is just
/// past the head) and finishes `check`. On success the whole body is in
/// `conn.rbuf[conn.rpos..]`, unconsumed.
pub async fn verify(
    conn: &mut Conn,
    head: &RequestHead,
    limits: &Limits,
    check: &BodyCheck,
) -> Result<(), BodyFailure> {
    let max = check.max_body_bytes.min(limits.max_body_bytes);
    let hash = match head.framing {
        Framing::None => digest::digest(&digest::SHA256, b""),
        Framing::Length(n) => {
            if n > max {
                return Err(BodyFailure::Refused(Failure::BodyTooLarge));
            }
            // n <= max <= MAX_MAX_BODY_BYTES, which fits any usize we run on.
            let n = usize::try_from(n).map_err(|_| BodyFailure::Refused(Failure::BodyTooLarge))?;
            let end = conn.rpos + n;
            if conn.buffered() == 0 && n > 0 && head.expect_continue {
                conn.send_continue().await?;
            }
            if conn.rbuf.len() < end {
                conn.rbuf.resize(end, 0);
            }
            while conn.rend < end {
                conn.read_more(limits, end).await?;
            }
            digest::digest(&digest::SHA256, &conn.rbuf[conn.rpos..end])
        }
        Framing::Chunked => {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            let mut dec = ChunkedDecoder::new(false, limits.max_header_bytes);
            let mut ctx = digest::Context::new(&digest::SHA256);
            let mut pos = conn.rpos;
            if conn.buffered() == 0 && head.expect_continue {
                conn.send_continue().await?;
            }
            loop {
                while pos < conn.rend && !dec.is_done() {
                    let step = dec
                        .step(&conn.rbuf[pos..conn.rend])
                        .map_err(|e| BodyError::Bad(e.0))?;
                    if step.forward {
                        ctx.update(&conn.rbuf[pos..pos + step.consumed]);
                    }
                    pos += step.consumed;
                }
                if dec.is_done() {
                    break;
                }
                // The whole chunked body, framing included, must fit.
                let held = conn.rend - conn.rpos;
                if held >= max {
                    return Err(BodyFailure::Refused(Failure::BodyTooLarge));
                }
                if conn.rend == conn.rbuf.len() {
                    let grown = (conn.rbuf.len() * 2)
                        .max(conn.rpos + READ_BUF)
                        .min(conn.rpos + max);
                    conn.rbuf.resize(grown, 0);
                }
                let upto = conn.rbuf.len();
                conn.read_more(limits, upto).await?;
            }
            ctx.finish()
        }
    };
    let mut sha = [0u8; 32];
    sha.copy_from_slice(hash.as_ref());
    check.finish(&sha).map_err(BodyFailure::Refused)
}
