//! Stages, deployments and canaries (docs/stages.md), in the plan layer:
//! before the plan compiler runs, [`expand`] turns each API with
//! `[[apis.stages]]` into one routed set per stage (its deployment's routes
//! under `<base path>/<stage>`, or the base path itself for `$default`,
//! with `${stageVariables.NAME}` substituted and the stage's throttle,
//! cache and access log), plus one per canary, so the compiler builds them
//! like any API and requests pay nothing at run time for stages they do not
//! use. A canary's set is left out of the main route table and gets a table
//! of its own ([`CanaryPlan`]); the driver picks between the two per
//! request ([`CanaryPlan::takes`]). Errors about the expanded sets are
//! given back under the keys the operator wrote ([`Expanded::finish`]).

use crate::config::raw::stages::{RawCanary, RawDeployment, RawStage, RawSticky};
use crate::config::raw::{RawApi, RawConfig, RawIntegration, RawRoute};
use crate::config::ConfigError;
use crate::http::parse::RequestHead;
use crate::route::RouteTable;
use std::collections::BTreeMap;

/// The response header naming the deployment that served a request.
pub const DEPLOYMENT_HEADER: &str = "x-coregate-deployment";
/// The stage served at the API's base path.
pub const DEFAULT_STAGE: &str = "$default";
/// What a stage variable is written as in integration URLs and mock bodies.
const VARIABLE_OPEN: &str = "${stageVariables.";
/// Longest stage or deployment name.
const MAX_NAME: usize = 128;

/// The stage and deployment a routed set serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageTag {
    pub stage: String,
    pub deployment: String,
    /// The set is the stage's canary.
    pub canary: bool,
    /// `x-coregate-deployment: NAME\r\n`, added to every response of the set.
    pub header: Box<[u8]>,
    /// The set's stage variables (a canary's overrides applied), sorted by
    /// name: what parameter mapping's `$stageVariables.NAME` reads.
    pub variables: Vec<(String, String)>,
}

impl StageTag {
    fn new(stage: &str, deployment: &str, canary: bool, scope: &VarScope<'_>) -> StageTag {
        let mut variables: BTreeMap<String, String> = scope.vars.clone();
        if let Some(o) = scope.overrides {
            variables.extend(o.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        StageTag {
            stage: stage.to_string(),
            deployment: deployment.to_string(),
            canary,
            variables: variables.into_iter().collect(),
            header: format!("{DEPLOYMENT_HEADER}: {deployment}\r\n")
                .into_bytes()
                .into(),
        }
    }
}

/// The stages' part of the plan: the canaries' route tables. Empty when no
/// stage has a canary, and then the driver never looks here.
#[derive(Debug, Clone, Default)]
pub struct StagesPlan {
    /// Indexed by `ApiPlan::canary`.
    pub canaries: Vec<CanaryPlan>,
}

/// A stage's canary: its deployment's routes, and how requests are split.
#[derive(Debug, Clone)]
pub struct CanaryPlan {
    /// The canary's routes at the stage's hosts and path.
    pub table: RouteTable,
    /// A request whose 32-bit draw is below this goes to the canary:
    /// `percent / 100 * 2^32` (2^32 at 100%, so every draw is below).
    pub threshold: u64,
    pub sticky: Sticky,
}

/// What keeps one client on one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// Each request is drawn at random.
    None,
    /// The value of this request header (lower-case name).
    Header(Box<[u8]>),
    /// The value of this cookie.
    Cookie(Box<[u8]>),
    /// The `x-api-key` header.
    ApiKey,
}

impl CanaryPlan {
    /// Whether the request goes to the canary. With a sticky value in the
    /// request, the draw is a hash of it, the same on every shard and after
    /// a restart; without one, `random()`.
    pub fn takes(&self, buf: &[u8], head: &RequestHead, random: impl FnOnce() -> u64) -> bool {
        let value = match &self.sticky {
            Sticky::None => None,
            Sticky::Header(name) => header_value(buf, head, name),
            Sticky::Cookie(name) => cookie_value(buf, head, name),
            Sticky::ApiKey => header_value(buf, head, crate::policy::api_key::HEADER.as_bytes()),
        };
        let draw = match value {
            Some(v) => stable_hash(v),
            None => random(),
        };
        draw >> 32 < self.threshold
    }
}

/// The first value of header `name`.
fn header_value<'b>(buf: &'b [u8], head: &RequestHead, name: &[u8]) -> Option<&'b [u8]> {
    head.headers
        .iter()
        .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(buf))
        .filter(|v| !v.is_empty())
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'b>(buf: &'b [u8], head: &RequestHead, name: &[u8]) -> Option<&'b [u8]> {
    head.headers
        .iter()
        .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"cookie"))
        .flat_map(|h| h.value.get(buf).split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = memchr::memchr(b'=', pair)?;
            (&pair[..eq] == name).then(|| pair[eq + 1..].trim_ascii())
        })
        .filter(|v| !v.is_empty())
}

/// FNV-1a, then SplitMix64's finaliser so that every bit depends on every
/// byte: a fixed function, so all shards and restarts agree.
pub fn stable_hash(value: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in value {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// `percent` (0–100) as a threshold for the draw's top 32 bits.
fn threshold(percent: f64) -> u64 {
    ((percent / 100.0) * 4_294_967_296.0).round() as u64
}

// === expansion ===

/// Whether any API has deployments or stages (else the config compiles as
/// it is).
pub fn used(raw: &RawConfig) -> bool {
    raw.apis
        .iter()
        .any(|a| !a.deployments.is_empty() || !a.stages.is_empty())
}

/// What one routed set of the expanded config is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An API without stages, as written.
    Plain,
    /// A stage's deployment; `Some(c)` when the stage has canary `c`.
    Stage(Option<u32>),
    /// Canary `c` of a stage: compiled into a table of its own.
    Canary(u32),
    /// An API with stages but no `$default`: its base path with no routes,
    /// so a path naming no stage is the API's 404.
    Stub,
}

/// One routed set of the expanded config (same index as in
/// [`Expanded::apis`] and the plan's `apis`).
#[derive(Debug, Clone)]
pub struct Variant {
    /// The API's index in the config as written.
    pub api: usize,
    pub kind: Kind,
    pub tag: Option<StageTag>,
    /// The first set of its API: the API's name is checked once.
    pub first: bool,
    /// The index the set's API-level buckets are kept under: a canary
    /// shares its stage's throttle.
    pub bucket_api: usize,
}

/// Where the parts of one set came from, to name the keys as written.
#[derive(Debug, Clone)]
struct Origin {
    /// `apis[A]`.
    api: String,
    /// Where `routes` are: `apis[A]` or `apis[A].deployments[D]`.
    routes: String,
    /// Per API-level key the stage or deployment replaces: its table.
    fields: Vec<(&'static str, String)>,
}

/// A canary as the compiler needs it, besides its routes.
#[derive(Debug, Clone)]
pub struct CanarySpec {
    pub threshold: u64,
    pub sticky: Sticky,
}

/// The config's APIs expanded into routed sets.
pub struct Expanded {
    pub apis: Vec<RawApi>,
    pub variants: Vec<Variant>,
    /// Indexed by canary number.
    pub canaries: Vec<CanarySpec>,
    errors: Vec<ConfigError>,
    origins: Vec<Origin>,
}

/// Expands every API with stages; checks deployments, stages, variables
/// and canaries (every error, under the key as written).
pub fn expand(raw: &RawConfig) -> Expanded {
    let mut x = Expanded {
        apis: Vec::new(),
        variants: Vec::new(),
        canaries: Vec::new(),
        errors: Vec::new(),
        origins: Vec::new(),
    };
    for (ai, api) in raw.apis.iter().enumerate() {
        let akey = format!("apis[{ai}]");
        if api.deployments.is_empty() && api.stages.is_empty() {
            x.push(
                api.clone(),
                Variant {
                    api: ai,
                    kind: Kind::Plain,
                    tag: None,
                    first: true,
                    bucket_api: x.apis.len(),
                },
                Origin {
                    api: akey.clone(),
                    routes: akey,
                    fields: Vec::new(),
                },
            );
            continue;
        }
        expand_api(&mut x, ai, api, &akey);
    }
    x
}

impl Expanded {
    fn push(&mut self, api: RawApi, variant: Variant, origin: Origin) {
        self.apis.push(api);
        self.variants.push(variant);
        self.origins.push(origin);
    }

    /// The compiler's result with its errors under the keys as written,
    /// after the expansion's own; each error once (two stages of one
    /// deployment compile its routes twice).
    pub fn finish<T>(self, compiled: Result<T, Vec<ConfigError>>) -> Result<T, Vec<ConfigError>> {
        let compiled_errors = match compiled {
            Ok(plan) if self.errors.is_empty() => return Ok(plan),
            Ok(_) => Vec::new(),
            Err(es) => es,
        };
        let mut out: Vec<ConfigError> = Vec::new();
        for e in self
            .errors
            .into_iter()
            .chain(compiled_errors.into_iter().map(|mut e| {
                e.key = remap(&self.origins, &e.key);
                e
            }))
        {
            if !out.iter().any(|o| o.key == e.key && o.message == e.message) {
                out.push(e);
            }
        }
        Err(out)
    }
}

impl Expanded {
    /// A key of the expanded config (`apis[V]...`) as written in the file.
    pub fn key_as_written(&self, key: &str) -> String {
        remap(&self.origins, key)
    }
}

/// `apis[V]...` of the expanded config as the key written in the file.
fn remap(origins: &[Origin], key: &str) -> String {
    let Some(rest) = key.strip_prefix("apis[") else {
        return key.to_string();
    };
    let Some(close) = rest.find(']') else {
        return key.to_string();
    };
    let Some(o) = rest[..close]
        .parse::<usize>()
        .ok()
        .and_then(|v| origins.get(v))
    else {
        return key.to_string();
    };
    let tail = &rest[close + 1..];
    // `tail` starts with `.field` followed by the end, `.` or `[`.
    let names = |field: &str| {
        tail.strip_prefix('.')
            .and_then(|t| t.strip_prefix(field))
            .filter(|t| t.is_empty() || t.starts_with('.') || t.starts_with('['))
            .map(str::to_string)
    };
    if let Some(t) = names("routes") {
        return format!("{}.routes{t}", o.routes);
    }
    for (field, table) in &o.fields {
        if let Some(t) = names(field) {
            return format!("{table}.{field}{t}");
        }
    }
    format!("{}{tail}", o.api)
}

/// A stage name: `$default`, or letters, digits, `-` and `_`.
fn stage_name_ok(name: &str) -> bool {
    name == DEFAULT_STAGE
        || (!name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// A deployment name: letters, digits, `.`, `-` and `_` (it is a header
/// value and a metric label).
fn deployment_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn variable_name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// AWS's rule for stage variable values.
fn variable_value_ok(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'_' | b'~' | b':' | b'/' | b'?' | b'#' | b'&' | b'=' | b','
                )
        })
}

fn check_variables(vars: &BTreeMap<String, String>, key: &str, errors: &mut Vec<ConfigError>) {
    for (name, value) in vars {
        if !variable_name_ok(name) {
            errors.push(ConfigError::new(
                format!("{key}.{name}"),
                "a stage variable name is letters, digits and '_'",
            ));
        }
        if !variable_value_ok(value) {
            errors.push(ConfigError::new(
                format!("{key}.{name}"),
                format!("{value:?} is not a stage variable value: one or more of A-Z a-z 0-9 - . _ ~ : / ? # & = ,"),
            ));
        }
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(crate::http::parse::is_token_byte)
}

fn compile_sticky(raw: Option<&RawSticky>, key: &str, errors: &mut Vec<ConfigError>) -> Sticky {
    let Some(s) = raw else {
        return Sticky::None;
    };
    let key = format!("{key}.sticky");
    let api_key = s.api_key == Some(true);
    let set =
        usize::from(s.header.is_some()) + usize::from(s.cookie.is_some()) + usize::from(api_key);
    if set != 1 {
        errors.push(ConfigError::new(
            key,
            "set exactly one of header = \"NAME\", cookie = \"NAME\" or api_key = true",
        ));
        return Sticky::None;
    }
    if let Some(h) = &s.header {
        if !is_token(h) {
            errors.push(ConfigError::new(
                format!("{key}.header"),
                format!("{h:?} is not a header name"),
            ));
        }
        return Sticky::Header(h.to_ascii_lowercase().into_bytes().into());
    }
    if let Some(c) = &s.cookie {
        if !is_token(c) {
            errors.push(ConfigError::new(
                format!("{key}.cookie"),
                format!("{c:?} is not a cookie name"),
            ));
        }
        return Sticky::Cookie(c.as_bytes().into());
    }
    Sticky::ApiKey
}

/// The base path of stage `stage` of an API at `base`.
fn stage_path(base: Option<&str>, stage: &str) -> Option<String> {
    if stage == DEFAULT_STAGE {
        return base.map(str::to_string);
    }
    let base = base.unwrap_or("/");
    let base = base.strip_suffix('/').unwrap_or(base);
    Some(format!("{base}/{stage}"))
}

/// Who a substitution error is about.
struct VarScope<'a> {
    who: String,
    vars: &'a BTreeMap<String, String>,
    overrides: Option<&'a BTreeMap<String, String>>,
}

impl VarScope<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.overrides
            .and_then(|o| o.get(name))
            .or_else(|| self.vars.get(name))
            .map(String::as_str)
    }

    fn names(&self) -> String {
        let mut all: Vec<&str> = self
            .vars
            .keys()
            .chain(self.overrides.into_iter().flat_map(|o| o.keys()))
            .map(String::as_str)
            .collect();
        all.sort_unstable();
        all.dedup();
        if all.is_empty() {
            "none".to_string()
        } else {
            all.join(", ")
        }
    }
}

/// `text` with every `${stageVariables.NAME}` replaced; an unknown name or
/// an unclosed `${` is an error at `key`.
fn substitute(
    text: &str,
    scope: &VarScope<'_>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> String {
    if !text.contains(VARIABLE_OPEN) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(VARIABLE_OPEN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + VARIABLE_OPEN.len()..];
        let Some(close) = after.find('}') else {
            errors.push(ConfigError::new(
                key,
                format!("{VARIABLE_OPEN}... is not closed with '}}'"),
            ));
            return out;
        };
        let name = &after[..close];
        match scope.get(name) {
            Some(v) => out.push_str(v),
            None => errors.push(ConfigError::new(
                key,
                format!(
                    "{VARIABLE_OPEN}{name}}}: {} has no variable {name:?} (it has: {})",
                    scope.who,
                    scope.names()
                ),
            )),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A deployment's routes with the scope's variables substituted.
fn routes_for(
    dep: &RawDeployment,
    dkey: &str,
    scope: &VarScope<'_>,
    errors: &mut Vec<ConfigError>,
) -> Vec<RawRoute> {
    dep.routes
        .iter()
        .enumerate()
        .map(|(ri, r)| {
            let mut r = r.clone();
            let ikey = format!("{dkey}.routes[{ri}].integration");
            match &mut r.integration {
                // `http` is a WebSocket route's integration: the compiler
                // refuses it on an HTTP API's route, substituted or not.
                RawIntegration::HttpProxy { url } | RawIntegration::Http { url, .. } => {
                    *url = substitute(url, scope, &format!("{ikey}.url"), errors);
                }
                RawIntegration::Mock { body, .. } => {
                    *body = substitute(body, scope, &format!("{ikey}.body"), errors);
                }
            }
            r
        })
        .collect()
}

/// The API as one stage serves one deployment: the deployment's routes and
/// access policies, the stage's path, throttle, cache and access log.
fn stage_api(
    api: &RawApi,
    stage: &RawStage,
    dep: &RawDeployment,
    routes: Vec<RawRoute>,
    base_path: Option<String>,
) -> RawApi {
    let mut a = api.clone();
    a.deployments = Vec::new();
    a.stages = Vec::new();
    a.routes = routes;
    a.base_path = base_path;
    if stage.throttle.is_some() {
        a.throttle = stage.throttle.clone();
    }
    if stage.cache.is_some() {
        a.cache = stage.cache.clone();
    }
    if stage.access_log.is_some() {
        a.access_log = stage.access_log.clone();
    }
    if dep.cors.is_some() {
        a.cors = dep.cors.clone();
    }
    if dep.ip_rules.is_some() {
        a.ip_rules = dep.ip_rules.clone();
    }
    if dep.api_key_required.is_some() {
        a.api_key_required = dep.api_key_required;
    }
    if dep.authorizer.is_some() {
        a.authorizer = dep.authorizer.clone();
    }
    if dep.lifecycle.is_some() {
        a.lifecycle = dep.lifecycle.clone();
    }
    // What the stage's policy sets give it replaces the API's and the
    // deployment's (plan::policy_sets).
    if let Some(o) = stage.from_sets.as_deref() {
        if o.authorizer.is_some() {
            a.authorizer = o.authorizer.clone();
        }
        if o.api_key_required.is_some() {
            a.api_key_required = o.api_key_required;
        }
        if o.cors.is_some() {
            a.cors = o.cors.clone();
        }
        if o.ip_rules.is_some() {
            a.ip_rules = o.ip_rules.clone();
        }
        if o.mapping.is_some() {
            a.mapping = o.mapping.clone();
        }
        if o.authorization_scopes.is_some() {
            for r in a
                .routes
                .iter_mut()
                .filter(|r| r.authorization_scopes.is_none())
            {
                r.authorization_scopes = o.authorization_scopes.clone();
            }
        }
    }
    a
}

/// Where each API-level key of a stage's set came from.
fn origin(akey: &str, skey: &str, stage: &RawStage, dkey: &str, dep: &RawDeployment) -> Origin {
    let mut fields = Vec::new();
    for (field, set) in [
        ("throttle", stage.throttle.is_some()),
        ("cache", stage.cache.is_some()),
        ("access_log", stage.access_log.is_some()),
    ] {
        if set {
            fields.push((field, skey.to_string()));
        }
    }
    if let Some(o) = stage.from_sets.as_deref() {
        for (field, set) in [
            ("authorizer", o.authorizer.is_some()),
            ("api_key_required", o.api_key_required.is_some()),
            ("cors", o.cors.is_some()),
            ("ip_rules", o.ip_rules.is_some()),
            ("mapping", o.mapping.is_some()),
        ] {
            if set {
                fields.push((field, skey.to_string()));
            }
        }
    }
    for (field, set) in [
        ("cors", dep.cors.is_some()),
        ("ip_rules", dep.ip_rules.is_some()),
        ("api_key_required", dep.api_key_required.is_some()),
        ("authorizer", dep.authorizer.is_some()),
        ("lifecycle", dep.lifecycle.is_some()),
    ] {
        if set {
            fields.push((field, dkey.to_string()));
        }
    }
    Origin {
        api: akey.to_string(),
        routes: dkey.to_string(),
        fields,
    }
}

fn expand_api(x: &mut Expanded, ai: usize, api: &RawApi, akey: &str) {
    let errors = &mut x.errors;
    if !api.routes.is_empty() {
        errors.push(ConfigError::new(
            format!("{akey}.routes"),
            "an api with deployments or stages serves the routes of its deployments: move these into an [[apis.deployments]] (docs/stages.md)",
        ));
    }
    if api.kind.as_deref() == Some("websocket") {
        errors.push(ConfigError::new(
            format!("{akey}.stages"),
            "deployments and stages are for HTTP APIs; a WebSocket API (kind = \"websocket\") has its routes in [[apis.routes]]",
        ));
        return;
    }
    if api.stages.is_empty() {
        errors.push(ConfigError::new(
            format!("{akey}.stages"),
            "an api with deployments needs at least one [[apis.stages]] naming the deployment it serves",
        ));
    }
    let mut seen = BTreeMap::new();
    for (di, d) in api.deployments.iter().enumerate() {
        let key = format!("{akey}.deployments[{di}]");
        if !deployment_name_ok(&d.name) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!("{:?} is not a deployment name: 1 to {MAX_NAME} letters, digits, '.', '-' or '_'", d.name),
            ));
        } else if let Some(first) = seen.insert(d.name.as_str(), di) {
            errors.push(ConfigError::new(
                format!("{key}.name"),
                format!(
                    "deployment {:?} is defined twice (first at {akey}.deployments[{first}])",
                    d.name
                ),
            ));
        }
        if d.routes.is_empty() {
            errors.push(ConfigError::new(
                format!("{key}.routes"),
                "a deployment needs at least one [[apis.deployments.routes]]",
            ));
        }
    }
    let find = |name: &str, key: String, errors: &mut Vec<ConfigError>| {
        let found = api.deployments.iter().position(|d| d.name == name);
        if found.is_none() {
            let names: Vec<&str> = api.deployments.iter().map(|d| d.name.as_str()).collect();
            errors.push(ConfigError::new(
                key,
                format!(
                    "no [[apis.deployments]] of api {:?} is named {name:?} (it has: {})",
                    api.name,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
        found
    };
    let mut stage_names = BTreeMap::new();
    let mut first = true;
    for (si, stage) in api.stages.iter().enumerate() {
        let errors = &mut x.errors;
        let skey = format!("{akey}.stages[{si}]");
        if !stage_name_ok(&stage.name) {
            errors.push(ConfigError::new(
                format!("{skey}.name"),
                format!(
                    "{:?} is not a stage name: \"$default\", or 1 to {MAX_NAME} letters, digits, '-' or '_'",
                    stage.name
                ),
            ));
        } else if let Some(prev) = stage_names.insert(stage.name.as_str(), si) {
            errors.push(ConfigError::new(
                format!("{skey}.name"),
                format!(
                    "stage {:?} is defined twice (first at {akey}.stages[{prev}])",
                    stage.name
                ),
            ));
            continue;
        }
        check_variables(&stage.variables, &format!("{skey}.variables"), errors);
        let primary = find(&stage.deployment, format!("{skey}.deployment"), errors);
        let canary = stage
            .canary
            .as_ref()
            .and_then(|c| check_canary(c, &format!("{skey}.canary"), &find, errors));
        let Some(di) = primary else { continue };
        if !stage_name_ok(&stage.name) {
            continue;
        }
        let dep = &api.deployments[di];
        let dkey = format!("{akey}.deployments[{di}]");
        let base_path = stage_path(api.base_path.as_deref(), &stage.name);
        let scope = VarScope {
            who: format!("stage {:?}", stage.name),
            vars: &stage.variables,
            overrides: None,
        };
        let routes = routes_for(dep, &dkey, &scope, errors);
        let canary_no = canary.as_ref().map(|_| x.canaries.len() as u32);
        let primary_index = x.apis.len();
        x.push(
            stage_api(api, stage, dep, routes, base_path.clone()),
            Variant {
                api: ai,
                kind: Kind::Stage(canary_no),
                tag: Some(StageTag::new(&stage.name, &dep.name, false, &scope)),
                first: std::mem::take(&mut first),
                bucket_api: primary_index,
            },
            origin(akey, &skey, stage, &dkey, dep),
        );
        if let (Some((ci, spec)), Some(c), Some(no)) = (canary, &stage.canary, canary_no) {
            let cdep = &api.deployments[ci];
            let cdkey = format!("{akey}.deployments[{ci}]");
            let scope = VarScope {
                who: format!("the canary of stage {:?}", stage.name),
                vars: &stage.variables,
                overrides: Some(&c.variables),
            };
            let routes = routes_for(cdep, &cdkey, &scope, &mut x.errors);
            x.canaries.push(spec);
            x.push(
                stage_api(api, stage, cdep, routes, base_path),
                Variant {
                    api: ai,
                    kind: Kind::Canary(no),
                    tag: Some(StageTag::new(&stage.name, &cdep.name, true, &scope)),
                    first: false,
                    bucket_api: primary_index,
                },
                origin(akey, &skey, stage, &cdkey, cdep),
            );
        }
    }
    if !api.stages.iter().any(|s| s.name == DEFAULT_STAGE) {
        // The API's base path still belongs to it: a path that names no
        // stage is its 404, not another API's.
        let mut stub = api.clone();
        stub.deployments = Vec::new();
        stub.stages = Vec::new();
        stub.routes = Vec::new();
        x.push(
            stub,
            Variant {
                api: ai,
                kind: Kind::Stub,
                tag: None,
                first,
                bucket_api: x.apis.len(),
            },
            Origin {
                api: akey.to_string(),
                routes: akey.to_string(),
                fields: Vec::new(),
            },
        );
    }
}

/// Looks a deployment up by name (reporting an unknown one at the key).
type FindDeployment<'a> = dyn Fn(&str, String, &mut Vec<ConfigError>) -> Option<usize> + 'a;

/// Checks a canary; its deployment's index and split when usable.
fn check_canary(
    c: &RawCanary,
    key: &str,
    find: &FindDeployment<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<(usize, CanarySpec)> {
    let before = errors.len();
    if !(0.0..=100.0).contains(&c.percent) {
        errors.push(ConfigError::new(
            format!("{key}.percent"),
            format!(
                "{} is not a share of traffic: a number from 0 to 100",
                c.percent
            ),
        ));
    }
    check_variables(&c.variables, &format!("{key}.variables"), errors);
    let sticky = compile_sticky(c.sticky.as_ref(), key, errors);
    let di = find(&c.deployment, format!("{key}.deployment"), errors);
    if errors.len() > before {
        return None;
    }
    Some((
        di?,
        CanarySpec {
            threshold: threshold(c.percent),
            sticky,
        },
    ))
}

#[cfg(test)]
mod tests;
