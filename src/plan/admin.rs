//! The admin listener's compiled settings (`[admin]`): where it listens,
//! and the bearer token its requests must carry. The token is read here,
//! once, so `coregate check` reports an unreadable or empty file; an admin
//! listener on an address other hosts can reach is refused without one
//! (an open admin port is how hundreds of Kong admin APIs were exposed,
//! Kong/kong#3016). `[admin.tls]` serves it over TLS (`tls::compile_admin`),
//! and with `client_ca` only to clients with a certificate signed by that
//! CA (mutual TLS), which authenticates them as a token does.

use crate::config::raw::admin::{
    RawAdmin, RawAdminTls, DEFAULT_ADMIN_ENABLED, DEFAULT_ADMIN_LISTEN,
};
use crate::config::ConfigError;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// The shortest token accepted: anything shorter could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct AdminPlan {
    /// Where to listen; `None` when `enabled = false`.
    pub listen: Option<SocketAddr>,
    /// `listen` was written in the file. A default address that cannot be
    /// bound (another gateway on this host has it) is logged and skipped;
    /// one the operator asked for stops the start-up.
    pub explicit: bool,
    /// The bearer token, from `token_file`.
    pub token: Option<AdminToken>,
    /// `[admin.tls]`, compiled.
    pub tls: Option<AdminTls>,
}

/// The admin listener's TLS: its rustls config, and the settings as
/// written (a reload compares them: they apply only at start).
#[derive(Debug, Clone)]
pub struct AdminTls {
    pub config: Arc<rustls::ServerConfig>,
    /// `client_ca` is set: every client presents a verified certificate.
    pub mutual: bool,
    pub raw: RawAdminTls,
}

impl AdminPlan {
    /// Whether admin requests are authenticated (a token, or client
    /// certificates).
    pub fn authenticated(&self) -> bool {
        self.token.is_some() || self.tls.as_ref().is_some_and(|t| t.mutual)
    }
}

/// A secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub Vec<u8>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Compiles `[admin]`; `traffic` are the plain and TLS listen addresses,
/// which the admin listener may not share.
pub fn compile(
    raw: Option<&RawAdmin>,
    base_dir: Option<&Path>,
    traffic: &[SocketAddr],
    errors: &mut Vec<ConfigError>,
) -> AdminPlan {
    let default = RawAdmin::default();
    let raw = raw.unwrap_or(&default);
    let token = raw
        .token_file
        .as_deref()
        .and_then(|f| read_token(f, base_dir, errors));
    let tls = raw.tls.as_ref().and_then(|t| {
        crate::tls::compile_admin(t, base_dir, errors).map(|config| AdminTls {
            config,
            mutual: t.client_ca.is_some(),
            raw: t.clone(),
        })
    });
    if !raw.enabled.unwrap_or(DEFAULT_ADMIN_ENABLED) {
        return AdminPlan {
            listen: None,
            explicit: raw.listen.is_some(),
            token,
            tls,
        };
    }
    let text = raw.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let listen = match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            errors.push(ConfigError::new(
                "admin.listen",
                format!(
                    "{text:?} is not an IP:port address (e.g. \"127.0.0.1:9901\"); \
                     to serve no admin listener, set admin.enabled = false"
                ),
            ));
            None
        }
    };
    if let Some(addr) = listen {
        if addr.port() != 0 && traffic.contains(&addr) {
            errors.push(ConfigError::new(
                "admin.listen",
                format!(
                    "{text:?} is also a traffic listen address; give the admin listener its own"
                ),
            ));
        }
        let mutual = raw.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !addr.ip().is_loopback() && raw.token_file.is_none() && !mutual {
            errors.push(ConfigError::new(
                "admin.token_file",
                format!(
                    "is required because admin.listen ({text:?}) is not a loopback address: \
                     anyone who can reach it could read the metrics and the dashboard and reload the config. \
                     Put a token of at least {MIN_TOKEN_LEN} characters in a file \
                     and name it here, or require client certificates ([admin.tls] client_ca), \
                     or listen on 127.0.0.1"
                ),
            ));
        }
    }
    AdminPlan {
        listen,
        explicit: raw.listen.is_some(),
        token,
        tls,
    }
}

fn read_token(
    file: &str,
    base_dir: Option<&Path>,
    errors: &mut Vec<ConfigError>,
) -> Option<AdminToken> {
    let path = crate::config::resolve_path(file, base_dir);
    let mut fail = |m: String| errors.push(ConfigError::new("admin.token_file", m));
    let text = match crate::config::read_file(&path) {
        Ok(t) => t,
        Err(e) => {
            fail(format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let token = text.trim_ascii();
    if token.len() < MIN_TOKEN_LEN {
        fail(format!(
            "{} holds {} character(s); a token needs at least {MIN_TOKEN_LEN}",
            path.display(),
            token.len()
        ));
        return None;
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        fail(format!(
            "{}: the token may hold only visible ASCII characters (no spaces or line breaks inside it)",
            path.display()
        ));
        return None;
    }
    Some(AdminToken(token.to_vec()))
}

#[cfg(test)]
mod tests {
    // Test code only: every `unwrap()`/`expect()` here is on a fixture the
    // test builds itself, so a failure is a failing test; nothing a client
    // or a config file controls reaches them.
    use super::*;

    fn raw(listen: Option<&str>, token_file: Option<&str>, enabled: Option<bool>) -> RawAdmin {
        RawAdmin {
            enabled,
            listen: listen.map(str::to_string),
            token_file: token_file.map(str::to_string),
            tls: None,
        }
    }

    #[test]
    fn the_default_is_loopback_without_a_token() {
        let mut errors = Vec::new();
        let p = compile(None, None, &[], &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(p.listen, Some(DEFAULT_ADMIN_LISTEN.parse().unwrap()));
        assert!(!p.explicit);
        assert!(p.token.is_none());
    }

    #[test]
    fn a_reachable_address_needs_a_token_and_ipv6_loopback_does_not() {
        for addr in ["0.0.0.0:9901", "[::]:9901", "10.1.2.3:9901"] {
            let mut errors = Vec::new();
            compile(Some(&raw(Some(addr), None, None)), None, &[], &mut errors);
            assert_eq!(errors.len(), 1, "{addr}: {errors:?}");
            assert_eq!(errors[0].key, "admin.token_file");
        }
        let mut errors = Vec::new();
        let p = compile(
            Some(&raw(Some("[::1]:0"), None, None)),
            None,
            &[],
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert!(p.explicit);
    }

    #[test]
    fn disabled_serves_nothing_and_traffic_addresses_are_refused() {
        let mut errors = Vec::new();
        let p = compile(Some(&raw(None, None, Some(false))), None, &[], &mut errors);
        assert!(errors.is_empty() && p.listen.is_none());
        let traffic: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        compile(
            Some(&raw(Some("127.0.0.1:8080"), None, None)),
            None,
            &[traffic],
            &mut errors,
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("traffic listen address"));
    }

    #[test]
    fn the_token_is_trimmed_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("coregate-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tok"), "  0123456789abcdef\n").unwrap();
        let mut errors = Vec::new();
        let p = compile(
            Some(&raw(Some("0.0.0.0:0"), Some("tok"), None)),
            Some(&dir),
            &[],
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let token = p.token.expect("token");
        assert_eq!(token.0, b"0123456789abcdef");
        assert!(!format!("{token:?}").contains("0123"));
        std::fs::write(dir.join("tok"), "abc def ghi jkl mno").unwrap();
        compile(
            Some(&raw(Some("0.0.0.0:0"), Some("tok"), None)),
            Some(&dir),
            &[],
            &mut errors,
        );
        assert!(errors[0].message.contains("visible ASCII"), "{errors:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
