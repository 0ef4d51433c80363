//! Routing: the second step of a request's journey, right after its head is
//! parsed. Host and base path pick the API; the method and path pick a route in
//! that API's table, with Amazon API Gateway's precedence: an exact path beats a
//! `{param}`, a `{param}` beats a greedy `{name+}`, a method-specific route beats
//! `ANY` on the same path, and `$default` takes whatever no route matches.
//!
//! Each API keeps matchit routers per method slot: one for full matches
//! (literal and `{param}` segments), and, for routes ending in a greedy
//! `{name+}`, one per position of the greedy parameter. A slot holds the
//! routes for that method plus every `ANY` route whose path the method does
//! not claim, so a full match, else the most specific greedy match, else
//! `$default` is API Gateway's answer. Separate routers let `GET /pets/{id}`
//! beside `ANY /pets/{proxy+}`, and `ANY /{proxy+}` beside
//! `GET /{id}/{proxy+}`, coexist, which one matchit router refuses. The
//! other slots are only consulted to tell 405 (with `Allow`) from 404.
//! `tests.rs` checks lookups against a plain reference of these rules on
//! generated tables.

pub use crate::http::method::AllowSet;
use crate::http::method::{Method, METHOD_SLOTS, NAMED_METHODS};
use std::collections::BTreeMap;

/// Index into the plan's route list.
pub type RouteId = u32;

/// Path parameters of a match, borrowed from the router and the request path.
pub type Params<'t, 'p> = matchit::Params<'t, 'p>;

/// A parsed route key (`GET /pets/{id}`, `ANY /{proxy+}`, `$default`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKey {
    Default,
    Route {
        /// `None` is `ANY`.
        method: Option<Method>,
        /// The path as written in the key.
        path: String,
        /// The same path in matchit syntax (`{proxy+}` becomes `{*proxy}`).
        pattern: String,
        /// Parameter names in order; a greedy one is last.
        params: Vec<String>,
        greedy: bool,
    },
}

impl RouteKey {
    /// Parses a route key; the error says what is wrong and how to write it.
    pub fn parse(key: &str) -> Result<RouteKey, String> {
        if key == "$default" {
            return Ok(RouteKey::Default);
        }
        if key.trim() != key || key.contains("  ") || key.contains('\t') {
            return Err(format!(
                "route key {key:?} has extra spaces or a tab: write the method, one space, and the path, as \"GET /pets\""
            ));
        }
        let (method, path) = key.split_once(' ').ok_or_else(|| {
            format!("route key {key:?} must be \"METHOD /path\", \"ANY /path\" or \"$default\"")
        })?;
        let method = match method {
            "ANY" => None,
            m => match Method::from_bytes(m.as_bytes()) {
                Method::Other => {
                    return Err(format!(
                        "route key {key:?}: method {m:?} is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, ANY"
                    ))
                }
                known => Some(known),
            },
        };
        let (pattern, params, greedy) =
            parse_route_path(path).map_err(|e| format!("route key {key:?}: {e}"))?;
        Ok(RouteKey::Route {
            method,
            path: path.to_string(),
            pattern,
            params,
            greedy,
        })
    }
}

fn is_param_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn is_literal_segment_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'{' | b'}' | b'?' | b'#' | b'/' | b'\\')
}

/// Turns an API Gateway path (`/pets/{id}/{rest+}`) into a matchit pattern.
/// Parameters must span a whole segment; only the last segment may be greedy.
pub fn parse_route_path(path: &str) -> Result<(String, Vec<String>, bool), String> {
    if !path.starts_with('/') {
        return Err("the path must start with '/'".into());
    }
    if path == "/" {
        return Ok(("/".into(), Vec::new(), false));
    }
    let mut pattern = String::with_capacity(path.len() + 2);
    let mut params: Vec<String> = Vec::new();
    let mut greedy = false;
    let segments: Vec<&str> = path[1..].split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        pattern.push('/');
        if seg.is_empty() {
            return Err("empty path segment (a doubled '/' or a trailing '/')".into());
        }
        if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            let (name, is_greedy) = match inner.strip_suffix('+') {
                Some(n) => (n, true),
                None => (inner, false),
            };
            if !is_param_name(name) {
                return Err(format!(
                    "parameter {seg:?} needs a name of letters, digits, '_', '-' or '.'"
                ));
            }
            if params.iter().any(|p| p == name) {
                return Err(format!("parameter {name:?} appears twice"));
            }
            if is_greedy {
                if i + 1 != segments.len() {
                    return Err(format!("greedy parameter {seg:?} must be the last segment"));
                }
                greedy = true;
                pattern.push_str("{*");
            } else {
                pattern.push('{');
            }
            pattern.push_str(name);
            pattern.push('}');
            params.push(name.to_string());
        } else if seg.bytes().all(is_literal_segment_byte) {
            if *seg == "." || *seg == ".." {
                return Err("'.' and '..' segments are not allowed".into());
            }
            pattern.push_str(seg);
        } else {
            return Err(format!(
                "segment {seg:?} is neither a literal (visible ASCII without {{}}?#\\) nor a whole-segment {{param}}"
            ));
        }
    }
    Ok((pattern, params, greedy))
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup<'t, 'p> {
    Found {
        route: RouteId,
        params: Params<'t, 'p>,
    },
    /// The path exists for other methods: 405 with this `Allow` list.
    MethodNotAllowed {
        allow: AllowSet,
    },
    NotFound,
}

/// How an API is chosen by the Host header.
#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    /// Lower-case names; an entry starting with `*.` matches any subdomain.
    Names(Vec<String>),
}

impl HostMatch {
    /// How well `host` matches: 3 for an exact name, 2 for a wildcard (longer
    /// wildcards are not ranked against each other), 1 for an any-host API,
    /// `None` for no match.
    fn rank(&self, host: Option<&[u8]>) -> Option<u8> {
        let names = match self {
            HostMatch::Any => return Some(1),
            HostMatch::Names(n) => n,
        };
        let host = strip_port(host?);
        let mut best = None;
        for n in names {
            match n.strip_prefix('*') {
                Some(suffix) => {
                    if host.len() > suffix.len() && ends_with_ignore_case(host, suffix.as_bytes()) {
                        best = best.max(Some(2));
                    }
                }
                None => {
                    if host.eq_ignore_ascii_case(n.as_bytes()) {
                        return Some(3);
                    }
                }
            }
        }
        best
    }
}

fn ends_with_ignore_case(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// `example.com:8080` -> `example.com`, `[::1]:80` -> `[::1]`.
fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match memchr::memchr(b']', host) {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match memchr::memrchr(b':', host) {
        Some(i) => &host[..i],
        None => host,
    }
}

#[derive(Clone)]
struct ApiTable {
    /// The API's index in the config (and in `Plan::apis`).
    index: usize,
    hosts: HostMatch,
    /// Normalised base path without a trailing '/'; empty for the root.
    base_path: String,
    /// Full-match routers, one per method slot.
    slots: Vec<matchit::Router<RouteId>>,
    /// Routers of routes ending in a greedy parameter, per method slot, one
    /// per position of the greedy parameter (segments before it), in
    /// increasing position. One router cannot hold a greedy parameter and a
    /// `{param}` at the same position (`ANY /{proxy+}` beside
    /// `GET /{id}/{proxy+}`); routers of different positions can.
    greedy: Vec<Vec<GreedyRouter>>,
    default: Option<RouteId>,
}

/// The greedy routes of one method slot whose greedy parameter is at one
/// position; each value carries the route's [`specificity`].
#[derive(Clone)]
struct GreedyRouter {
    depth: usize,
    router: matchit::Router<(RouteId, u128)>,
}

/// How specific a route's path is, as one number: its segments from the
/// first, two bits each, a literal 2, a `{param}` 1, the greedy rest (and
/// everything after the path) 0, most significant first. A larger number
/// is a more specific path: literal beats parameter beats greedy at the
/// first segment where two paths differ. Segments past the 63rd do not
/// count.
fn specificity(pattern: &str) -> u128 {
    let mut n = 0u128;
    for (i, seg) in pattern.split('/').skip(1).take(63).enumerate() {
        let digit = if seg.starts_with("{*") {
            0
        } else if seg.starts_with('{') {
            1
        } else {
            2
        };
        n |= digit << (126 - 2 * i);
    }
    n
}

impl ApiTable {
    /// The route a request with method `slot` and API-relative path `rel`
    /// matches: a full match, else the most specific greedy one.
    fn find<'t, 'p>(&'t self, slot: usize, rel: &'p str) -> Option<(RouteId, Params<'t, 'p>)> {
        if let Ok(m) = self.slots[slot].at(rel) {
            return Some((*m.value, m.params));
        }
        let mut best: Option<(RouteId, Params<'t, 'p>, u128)> = None;
        for g in &self.greedy[slot] {
            if let Ok(m) = g.router.at(rel) {
                let (id, rank) = *m.value;
                if best.as_ref().is_none_or(|b| rank > b.2) {
                    best = Some((id, m.params, rank));
                }
            }
        }
        best.map(|(id, params, _)| (id, params))
    }

    /// The path relative to this API's base path, if the base path is a prefix
    /// of it on a segment boundary.
    fn relative<'p>(&self, path: &'p str) -> Option<&'p str> {
        if self.base_path.is_empty() {
            return Some(path);
        }
        let rest = path.strip_prefix(self.base_path.as_str())?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }
}

/// The compiled route table of every API.
#[derive(Clone, Default)]
pub struct RouteTable {
    /// Sorted so that the first API that accepts a request is the right one:
    /// host-specific before any-host, longer base paths first.
    apis: Vec<ApiTable>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteTable({} apis)", self.apis.len())
    }
}

/// One API as handed to [`RouteTable::build`].
pub struct ApiSpec<'a> {
    pub name: &'a str,
    pub hosts: Option<Vec<String>>,
    pub base_path: String,
    /// Parsed key and the id it routes to, plus the key as written for errors.
    pub routes: Vec<(RouteKey, RouteId, &'a str)>,
}

impl RouteTable {
    /// Builds the table; errors name the API and route keys involved.
    /// Each API's index is its position in `specs`.
    pub fn build(specs: &[ApiSpec<'_>]) -> Result<RouteTable, Vec<String>> {
        Self::build_from(specs.iter().enumerate())
    }

    /// [`Self::build`] with each API's index given (a table holding some
    /// of the plan's APIs: a stage's canary).
    pub fn build_indexed(specs: &[(usize, ApiSpec<'_>)]) -> Result<RouteTable, Vec<String>> {
        Self::build_from(specs.iter().map(|(i, s)| (*i, s)))
    }

    fn build_from<'s, 'a: 's>(
        specs: impl ExactSizeIterator<Item = (usize, &'s ApiSpec<'a>)>,
    ) -> Result<RouteTable, Vec<String>> {
        let mut errors = Vec::new();
        let mut apis = Vec::with_capacity(specs.len());
        let mut seen_scopes: BTreeMap<(Option<Vec<String>>, String), &str> = BTreeMap::new();
        for (index, spec) in specs {
            let hosts_key = spec.hosts.as_ref().map(|h| {
                let mut h: Vec<String> = h.iter().map(|s| s.to_ascii_lowercase()).collect();
                h.sort();
                h
            });
            if let Some(other) =
                seen_scopes.insert((hosts_key.clone(), spec.base_path.clone()), spec.name)
            {
                errors.push(format!(
                    "api {:?} has the same hosts and base_path as api {other:?}: requests could not be told apart; give one a different base_path or hosts",
                    spec.name
                ));
            }
            match build_api(index, spec) {
                Ok(t) => apis.push(t),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RouteTable { apis })
    }

    pub fn api_count(&self) -> usize {
        self.apis.len()
    }

    /// The API a request belongs to (its index in the config), whether or not
    /// one of its routes matches: for API-level answers such as CORS
    /// preflights to paths without an OPTIONS route.
    pub fn api_for(&self, host: Option<&[u8]>, path: &str) -> Option<usize> {
        self.select(host, path).map(|(a, _)| a.index)
    }

    /// The best host match wins, then the longest base path.
    fn select<'t, 'p>(
        &'t self,
        host: Option<&[u8]>,
        path: &'p str,
    ) -> Option<(&'t ApiTable, &'p str)> {
        let mut chosen: Option<(&ApiTable, &str, (u8, usize))> = None;
        for a in &self.apis {
            let Some(rank) = a.hosts.rank(host) else {
                continue;
            };
            let Some(rel) = a.relative(path) else {
                continue;
            };
            let score = (rank, a.base_path.len());
            if chosen.is_none_or(|(_, _, best)| score > best) {
                chosen = Some((a, rel, score));
            }
        }
        chosen.map(|(a, rel, _)| (a, rel))
    }

    /// Finds the route for a request. `path` is the raw (still percent-encoded)
    /// path without the query string.
    pub fn lookup<'t, 'p>(
        &'t self,
        host: Option<&[u8]>,
        method: Method,
        path: &'p str,
    ) -> Lookup<'t, 'p> {
        let Some((api, rel)) = self.select(host, path) else {
            return Lookup::NotFound;
        };
        if let Some((route, params)) = api.find(method.slot(), rel) {
            return Lookup::Found { route, params };
        }
        if let Some(route) = api.default {
            return Lookup::Found {
                route,
                params: Params::new(),
            };
        }
        let mut allow = AllowSet::default();
        for m in NAMED_METHODS {
            if api.find(m.slot(), rel).is_some() {
                allow.insert(m);
            }
        }
        if allow.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed { allow }
        }
    }
}

fn build_api(index: usize, spec: &ApiSpec<'_>) -> Result<ApiTable, Vec<String>> {
    let mut errors = Vec::new();
    let mut default = None;
    // Per pattern: the route for each method slot, and the ANY route.
    struct PatternRoutes<'a> {
        by_method: [Option<(RouteId, &'a str)>; METHOD_SLOTS],
        any: Option<(RouteId, &'a str)>,
        greedy: bool,
    }
    let mut patterns: BTreeMap<&str, PatternRoutes<'_>> = BTreeMap::new();
    let mut pattern_order: Vec<&str> = Vec::new();
    for (key, id, written) in &spec.routes {
        match key {
            RouteKey::Default => {
                if default.replace(*id).is_some() {
                    errors.push(format!(
                        "api {:?}: \"$default\" is defined twice",
                        spec.name
                    ));
                }
            }
            RouteKey::Route {
                method,
                pattern,
                greedy,
                ..
            } => {
                let entry = patterns.entry(pattern.as_str()).or_insert_with(|| {
                    pattern_order.push(pattern.as_str());
                    PatternRoutes {
                        by_method: [None; METHOD_SLOTS],
                        any: None,
                        greedy: *greedy,
                    }
                });
                let slot = match method {
                    Some(m) => &mut entry.by_method[m.slot()],
                    None => &mut entry.any,
                };
                if let Some((_, prev)) = slot.replace((*id, written)) {
                    errors.push(format!(
                        "api {:?}: route {written:?} duplicates route {prev:?}",
                        spec.name
                    ));
                }
            }
        }
    }
    let mut slots: Vec<matchit::Router<RouteId>> =
        (0..METHOD_SLOTS).map(|_| matchit::Router::new()).collect();
    let mut greedy: Vec<Vec<GreedyRouter>> = (0..METHOD_SLOTS).map(|_| Vec::new()).collect();
    let mut reported = std::collections::BTreeSet::new();
    for pattern in &pattern_order {
        let routes = &patterns[pattern];
        // Segments before the greedy parameter (the pattern's `/`s, less
        // the one before it).
        let depth = pattern.matches('/').count().saturating_sub(1);
        let rank = specificity(pattern);
        for slot_idx in 0..METHOD_SLOTS {
            // A method's own route wins; HEAD falls back to GET; then ANY.
            let chosen = routes.by_method[slot_idx]
                .or(if slot_idx == Method::Head.slot() {
                    routes.by_method[Method::Get.slot()]
                } else {
                    None
                })
                .or(routes.any);
            let Some((id, written)) = chosen else {
                continue;
            };
            let inserted = if routes.greedy {
                let list = &mut greedy[slot_idx];
                let at = match list.iter().position(|g| g.depth >= depth) {
                    Some(i) if list[i].depth == depth => i,
                    Some(i) => {
                        list.insert(
                            i,
                            GreedyRouter {
                                depth,
                                router: matchit::Router::new(),
                            },
                        );
                        i
                    }
                    None => {
                        list.push(GreedyRouter {
                            depth,
                            router: matchit::Router::new(),
                        });
                        list.len() - 1
                    }
                };
                list[at].router.insert(pattern.to_string(), (id, rank))
            } else {
                slots[slot_idx].insert(pattern.to_string(), id)
            };
            if let Err(e) = inserted {
                let msg = match e {
                    matchit::InsertError::Conflict { with } => {
                        let other = spec
                            .routes
                            .iter()
                            .find_map(|(k, _, w)| match k {
                                RouteKey::Route { pattern: p, .. } if *p == with => Some(*w),
                                _ => None,
                            })
                            .unwrap_or("another route");
                        format!(
                            "api {:?}: route {written:?} conflicts with route {other:?} (parameters at the same position must have the same name)",
                            spec.name
                        )
                    }
                    other => format!(
                        "api {:?}: route {written:?} cannot be added: {other}",
                        spec.name
                    ),
                };
                if reported.insert(msg.clone()) {
                    errors.push(msg);
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let hosts = match &spec.hosts {
        None => HostMatch::Any,
        Some(h) => HostMatch::Names(h.iter().map(|s| s.to_ascii_lowercase()).collect()),
    };
    let base_path = if spec.base_path == "/" {
        String::new()
    } else {
        spec.base_path.clone()
    };
    Ok(ApiTable {
        index,
        hosts,
        base_path,
        slots,
        greedy,
        default,
    })
}

#[cfg(test)]
mod tests;
