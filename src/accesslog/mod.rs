//! Access logs (docs/access-logs.md). This layer sits on `config` and
//! `log`: it compiles `access_log` tables into formats and destinations
//! ([`LogPlan`], part of the plan), formats one line per finished request
//! into a per-shard buffer ([`shard::ShardLog`]), and writes full buffers
//! from one thread per destination ([`writer`]). Nothing here waits on the
//! request path: a shard hands buffers over a bounded channel, and when the
//! writer is behind, the lines are dropped and counted.

pub mod format;
pub mod shard;
pub mod writer;

use crate::config::raw::access_log::RawAccessLog;
use crate::config::raw::{RawApi, RawConfig};
use crate::config::ConfigError;
pub use format::{Escape, Fields, Format, Var};
use std::path::PathBuf;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    /// Opened for appending (created if missing), reopened on SIGUSR1.
    File(PathBuf),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stdout => f.write_str("stdout"),
            Destination::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One configured access log.
#[derive(Debug, Clone)]
pub struct AccessLog {
    pub format: Format,
    /// Index into [`LogPlan::destinations`].
    pub destination: usize,
}

/// Per API (and per route): its access log and its debug switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Logged {
    /// Index into [`LogPlan::logs`].
    pub log: Option<u16>,
    /// `debug = true` on the API: each phase's decision is logged.
    pub debug: bool,
}

/// Every access log of a config, compiled.
#[derive(Debug, Clone, Default)]
pub struct LogPlan {
    pub logs: Vec<AccessLog>,
    /// Each distinct destination once: one writer thread each.
    pub destinations: Vec<Destination>,
    /// `[server.access_log]`: requests no API takes.
    pub server: Option<u16>,
    /// Per API, in config order.
    pub apis: Vec<Logged>,
    /// Per route of the plan (set by [`LogPlan::bind_routes`]).
    pub routes: Vec<Logged>,
    /// Any access log at all: the driver keeps what a line needs only then.
    pub any: bool,
    /// What some log's format takes from the request head: only that is
    /// copied when a head is parsed.
    pub captures: Captures,
}

/// The request-head values some access log of the plan names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Captures {
    pub method: bool,
    pub path: bool,
    pub user_agent: bool,
}

impl LogPlan {
    /// Gives each route its API's settings; `apis` names each route's API.
    pub fn bind_routes(&mut self, apis: impl Iterator<Item = usize>) {
        self.routes = apis
            .map(|a| self.apis.get(a).copied().unwrap_or_default())
            .collect();
    }

    /// What applies to a request: its route's, else its API's (a request
    /// under an API's base path that no route takes), else the server's.
    pub fn logged(&self, route: Option<usize>, api: Option<usize>) -> Logged {
        if let Some(r) = route.and_then(|r| self.routes.get(r)) {
            return *r;
        }
        if let Some(a) = api.and_then(|a| self.apis.get(a)) {
            return *a;
        }
        Logged {
            log: self.server,
            debug: false,
        }
    }
}

/// Compiles `[server.access_log]` and the `access_log` of every API of
/// `apis` (the config's, or the plan's expansion of them into stages).
pub fn compile(raw: &RawConfig, apis: &[RawApi], errors: &mut Vec<ConfigError>) -> LogPlan {
    let mut plan = LogPlan::default();
    if let Some(a) = &raw.server.access_log {
        plan.server = compile_one(a, "server.access_log", raw, &mut plan, errors);
    }
    for (i, api) in apis.iter().enumerate() {
        let key = format!("apis[{i}].access_log");
        let log = api
            .access_log
            .as_ref()
            .and_then(|a| compile_one(a, &key, raw, &mut plan, errors));
        plan.apis.push(Logged {
            log,
            debug: api.debug.unwrap_or(false),
        });
    }
    plan.any = !plan.logs.is_empty();
    let any_uses = |v| plan.logs.iter().any(|l| l.format.uses(v));
    plan.captures = Captures {
        method: any_uses(Var::HttpMethod),
        path: any_uses(Var::Path),
        user_agent: any_uses(Var::UserAgent),
    };
    plan
}

fn compile_one(
    a: &RawAccessLog,
    key: &str,
    raw: &RawConfig,
    plan: &mut LogPlan,
    errors: &mut Vec<ConfigError>,
) -> Option<u16> {
    let before = errors.len();
    let escape = match a.escape.as_deref().map(|e| (e, Escape::parse(e))) {
        None => None,
        Some((_, Some(e))) => Some(e),
        Some((e, None)) => {
            errors.push(ConfigError::new(
                format!("{key}.escape"),
                format!("{e:?} is not an escaping: json, xml, csv or text"),
            ));
            None
        }
    };
    let format = match (&a.format, &a.preset) {
        (Some(_), Some(_)) => {
            errors.push(ConfigError::new(key, "set format or preset, not both"));
            None
        }
        (None, None) => {
            errors.push(ConfigError::new(
                key,
                "needs a format (with $context variables) or a preset (clf, json, xml or csv)",
            ));
            None
        }
        (None, Some(p)) => match format::preset(p) {
            Some((text, e)) => Format::compile(text, escape.unwrap_or(e)).ok(),
            None => {
                errors.push(ConfigError::new(
                    format!("{key}.preset"),
                    format!("unknown preset {p:?}: clf, json, xml or csv"),
                ));
                None
            }
        },
        (Some(f), None) => {
            let inferred = match f.trim_start().as_bytes().first() {
                Some(b'{') => Escape::Json,
                Some(b'<') => Escape::Xml,
                _ => Escape::Text,
            };
            match Format::compile(f, escape.unwrap_or(inferred)) {
                Ok(f) => Some(f),
                Err(e) => {
                    errors.push(ConfigError::new(format!("{key}.format"), e));
                    None
                }
            }
        }
    };
    let destination = match a.destination.as_deref() {
        None => {
            errors.push(ConfigError::new(
                format!("{key}.destination"),
                "is required: \"stdout\" or a file path",
            ));
            None
        }
        Some("") => {
            errors.push(ConfigError::new(
                format!("{key}.destination"),
                "must not be empty: \"stdout\" or a file path",
            ));
            None
        }
        Some("stdout") => Some(Destination::Stdout),
        Some(p) => {
            let path = PathBuf::from(p);
            let path = match &raw.base_dir {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path,
            };
            match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
                    errors.push(ConfigError::new(
                        format!("{key}.destination"),
                        format!("the directory {} does not exist", dir.display()),
                    ));
                    None
                }
                _ => Some(Destination::File(path)),
            }
        }
    };
    if errors.len() > before {
        return None;
    }
    let (format, destination) = (format?, destination?);
    let destination = match plan.destinations.iter().position(|d| *d == destination) {
        Some(i) => i,
        None => {
            plan.destinations.push(destination);
            plan.destinations.len() - 1
        }
    };
    plan.logs.push(AccessLog {
        format,
        destination,
    });
    u16::try_from(plan.logs.len() - 1).ok()
}
