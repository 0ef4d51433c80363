//! `coregate reload`: asks a running gateway to reload its config, through
//! its admin listener (`POST /reload`), and waits for the answer. The
//! config file given names the admin listener and its token; the gateway
//! reloads the file it was started with.

use crate::plan;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How long to wait for the gateway's answer: a little more than the
/// admin listener waits for its own.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(65);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the subcommand; exit 0 when the gateway serves the new config, 1
/// otherwise (every reason printed on stderr).
pub fn run(path: &Path) -> ExitCode {
    match ask(path) {
        Ok(generation) => {
            println!("reloaded: generation {generation} serves on every shard");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            ExitCode::from(1)
        }
    }
}

/// Where to reach an admin listener bound to `addr`: a wildcard address
/// is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn ask(path: &Path) -> Result<u64, Vec<String>> {
    let plan = plan::load(path).map_err(|errors| {
        let mut out: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        out.push(format!(
            "{}: {} error(s): the admin listener's address is read from this file, and a \
             running gateway would refuse it the same way",
            path.display(),
            errors.len()
        ));
        out
    })?;
    let Some(listen) = plan.admin.listen else {
        return Err(vec![format!(
            "{}: the admin listener is disabled (admin.enabled = false); send SIGHUP to the \
             coregate process instead",
            path.display()
        )]);
    };
    if listen.port() == 0 {
        return Err(vec![format!(
            "{}: admin.listen has port 0, so the running gateway's admin port is whatever the \
             kernel chose (it prints it at start: `coregate: admin listening on ...`); \
             coregate reload needs a fixed port there, or send SIGHUP to the process instead",
            path.display()
        )]);
    }
    if plan.admin.tls.is_some() {
        return Err(vec![format!(
            "{}: the admin listener speaks TLS ([admin.tls]), which coregate reload does not; \
             send SIGHUP to the coregate process, or POST /reload with a TLS client \
             (curl --cacert CA --cert CERT --key KEY -X POST https://ADDR/reload)",
            path.display()
        )]);
    }
    let addr = reachable(listen);
    let fail = |what: &str, e: std::io::Error| {
        vec![format!(
            "cannot {what} the admin listener at {addr}: {e} (is coregate running with {}?)",
            path.display()
        )]
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| fail("reach", e))?;
    let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CONNECT_TIMEOUT));
    let auth = match &plan.admin.token {
        Some(t) => format!(
            "authorization: Bearer {}\r\n",
            String::from_utf8_lossy(&t.0)
        ),
        None => String::new(),
    };
    let request = format!(
        "POST /reload HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\n{auth}connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail("write to", e))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| fail("read from", e))?;
    parse_answer(&answer)
}

/// The generation from an answer of `POST /reload`, or every error it
/// gives.
fn parse_answer(answer: &[u8]) -> Result<u64, Vec<String>> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| vec![format!("the admin listener's answer is not HTTP: {head:?}")])?;
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    if status == 200 {
        return json["generation"]
            .as_u64()
            .ok_or_else(|| vec![format!("the answer names no generation: {body}")]);
    }
    let mut errors: Vec<String> = json["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let message = json["message"].as_str().unwrap_or(body.trim());
    errors.push(format!("{status}: {message}"));
    Err(errors)
}

#[cfg(test)]
mod tests {
    use super::parse_answer;

    #[test]
    fn answers_are_read_as_the_admin_listener_writes_them() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"generation\":7}";
        assert_eq!(parse_answer(ok), Ok(7));
        let refused = b"HTTP/1.1 400 Bad Request\r\n\r\n{\"message\":\"not reloaded\",\"errors\":[\"a: b\",\"c: d\"]}";
        assert_eq!(
            parse_answer(refused),
            Err(vec![
                "a: b".into(),
                "c: d".into(),
                "400: not reloaded".into()
            ])
        );
        let unauthorized = b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"message\":\"Unauthorized\"}";
        assert_eq!(
            parse_answer(unauthorized),
            Err(vec!["401: Unauthorized".into()])
        );
        assert!(parse_answer(b"garbage").is_err());
    }
}
