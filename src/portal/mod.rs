//! The developer portal (docs/portal.md): a listener of its own, off by
//! default, that shows developers the APIs, each route's documentation
//! (rendered from the OpenAPI document `crate::openapi::export` writes,
//! with the operator's descriptions merged in), how to authenticate, a
//! "try it" form, and, where the operator allows it, self-service API
//! keys. It sits above `runtime` (it asks the main thread, which owns the
//! running server, for the running config and for key changes, as the
//! admin API does) and below `admin` (whose API approves or refuses
//! pending sign-ups through [`keys`]). It never serves an admin endpoint
//! and runs on plain threads, never on a shard: requests that do not use
//! it pay nothing for it.
//!
//! Threads: one accepts; each connection gets its own (at most
//! [`MAX_CONNECTIONS`] at once); one, the sign-up desk, owns the sign-up
//! rate limits and makes keys one at a time ([`keys::desk`]).

pub mod keys;
mod pages;
mod response;
mod serve;
mod try_it;

use crate::http::percent::query_value_decode;
use crate::runtime::{MainRequest, Running};
use crossbeam_channel::Sender;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// Portal connections served at once; further ones get a 503.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a page waits for the main thread's answer about the running
/// config (it looks at its requests every 20 ms).
const RUNNING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a key change (a reload) may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// The portal listener, bound and not yet serving.
pub struct Bound {
    listener: TcpListener,
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
}

/// Binds the portal's listener when the plan has one. Like the admin
/// listener, an address someone already listens on is refused by a probe
/// bind without `SO_REUSEPORT` unless `share` is set.
pub fn bind(plan: &crate::plan::portal::PortalPlan, share: bool) -> io::Result<Option<Bound>> {
    let Some(addr) = plan.listen else {
        return Ok(None);
    };
    let named = |e: io::Error| {
        let why = if e.kind() == io::ErrorKind::AddrInUse {
            "address in use: choose another portal.listen".to_string()
        } else {
            e.to_string()
        };
        io::Error::new(e.kind(), format!("cannot listen on {addr} (portal): {why}"))
    };
    let listener = crate::net::bind_blocking(addr, share, 128).map_err(named)?;
    let addr = listener.local_addr()?;
    Ok(Some(Bound { listener, addr }))
}

/// What the portal's threads share; read-only.
struct Shared {
    main: Sender<MainRequest>,
    /// The sign-up desk.
    desk: Sender<keys::DeskRequest>,
}

impl Bound {
    /// Starts the portal's threads; they run until the process exits.
    /// `main` is where the main thread takes requests.
    pub fn serve(self, main: Sender<MainRequest>) -> io::Result<()> {
        let (desk_tx, desk_rx) = crossbeam_channel::unbounded();
        let desk_main = main.clone();
        std::thread::Builder::new()
            .name("coregate-portal-desk".into())
            .spawn(move || keys::desk(desk_main, desk_rx))?;
        let shared = Arc::new(Shared {
            main,
            desk: desk_tx,
        });
        let listener = self.listener;
        std::thread::Builder::new()
            .name("coregate-portal".into())
            .spawn(move || serve::accept_loop(listener, shared))?;
        Ok(())
    }
}

/// The running config, from the main thread.
fn running(main: &Sender<MainRequest>) -> Result<Running, (u16, String)> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    main.send(MainRequest::Running { reply: tx })
        .map_err(|_| (503, crate::runtime::STOPPING.to_string()))?;
    rx.recv_timeout(RUNNING_TIMEOUT).map_err(|_| {
        (
            503,
            "The gateway did not answer (it may be stopping)".to_string(),
        )
    })
}

/// Has the main thread change the keys file and reload, as `POST /keys`
/// of the admin API does. A change that serves on some shards only is
/// made (it is in the keys file, and a created key works there): it is
/// `Ok`, and the shards' errors are logged.
pub fn change_key(
    main: &Sender<MainRequest>,
    who: &str,
    change: crate::runtime::KeyChange,
) -> Result<crate::runtime::KeyAnswer, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    main.send(MainRequest::Keys {
        who: who.to_string(),
        change,
        reply: tx,
    })
    .map_err(|_| crate::runtime::STOPPING.to_string())?;
    match rx.recv_timeout(CHANGE_TIMEOUT) {
        Ok(Ok(a)) => {
            if !a.partly.is_empty() {
                crate::log!("error", "{who}: {}", a.partly.join("; "));
            }
            Ok(a)
        }
        Ok(Err(errors)) => Err(errors.join("; ")),
        Err(_) => Err("the gateway did not answer (it may be stopping)".to_string()),
    }
}

/// `s` with `& < > " '` escaped: safe as HTML text and inside a quoted
/// attribute. Everything a page shows that comes from the config or an
/// OpenAPI document goes through this.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a query value (unreserved characters kept).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of `name` in a query string, percent-decoded.
fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| query_value_decode(v))
}

#[cfg(test)]
mod tests {
    // Unwraps on fixed inputs: a failure is the test's verdict.
    use super::{escape, url_encode};
    use crate::http::percent::query_value_decode as percent_decode;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(
            escape("<img src=x onerror='a()'>&\""),
            "&lt;img src=x onerror=&#39;a()&#39;&gt;&amp;&quot;"
        );
        assert_eq!(url_encode("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(percent_decode(&url_encode("a b/é<>")), "a b/é<>");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a+b%41"), "a bA");
    }
}
