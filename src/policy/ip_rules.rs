//! IP allow and deny lists by CIDR, per API or route: the first policy phase,
//! run right after routing and before anything else looks at the request.
//!
//! `ip_rules = { allow = [...], deny = [...] }` may sit on an `[[apis]]`
//! entry, on a route, or on both. Both apply: a request must pass the API's
//! rules and then the route's, so a route can narrow what its API allows but
//! never widen it (an operator reading the API's rules knows nobody outside
//! them gets in). Within one set of rules, deny wins over allow, and when an
//! allow list is present only the addresses it lists pass. A refused request
//! gets 403 `{"message":"Forbidden"}`.
//!
//! Addresses and CIDRs are parsed here, by hand, into integers: a check is a
//! masked compare per listed CIDR, with no allocation. An IPv4-mapped IPv6
//! peer (`::ffff:a.b.c.d`, what a dual-stack socket reports for an IPv4
//! client) is checked as the IPv4 address it stands for, and a mapped CIDR in
//! the config (`::ffff:10.0.0.0/104`) becomes the IPv4 CIDR it stands for.

pub use crate::config::raw::ip_rules::RawIpRules;
use crate::config::ConfigError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// === impl Cidr ===

/// A parsed CIDR block: the network address (host bits zero) and the prefix
/// length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4 { net, len } => write!(f, "{}/{len}", Ipv4Addr::from(net)),
            Cidr::V6 { net, len } => write!(f, "{}/{len}", Ipv6Addr::from(net)),
        }
    }
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// The top 96 bits of an IPv4-mapped IPv6 address, `::ffff:0:0/96`.
const MAPPED_PREFIX: u128 = 0xffff_u128 << 32;

/// Parses a dotted-quad IPv4 address: exactly four decimal parts of 0 to
/// 255, without leading zeros (`010` is octal to some parsers and decimal to
/// others, so it is refused rather than guessed).
pub fn parse_ipv4(s: &[u8]) -> Option<u32> {
    let mut out: u32 = 0;
    let mut parts = 0;
    for part in s.split(|&b| b == b'.') {
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut v: u32 = 0;
        for &b in part {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(b - b'0');
        }
        if v > 255 {
            return None;
        }
        parts += 1;
        if parts > 4 {
            return None;
        }
        out = (out << 8) | v;
    }
    (parts == 4).then_some(out)
}

/// Parses the colon-separated groups on one side of a `::` into `out`,
/// returning how many 16-bit groups they make. An IPv4 dotted quad may end
/// the last side (it makes two groups).
fn parse_groups(s: &[u8], v4_tail: bool, out: &mut [u16; 8]) -> Option<usize> {
    if s.is_empty() {
        return Some(0);
    }
    let mut n = 0;
    let mut pieces = s.split(|&b| b == b':').peekable();
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        if last && v4_tail && piece.contains(&b'.') {
            let v4 = parse_ipv4(piece)?;
            if n + 2 > 8 {
                return None;
            }
            out[n] = (v4 >> 16) as u16;
            out[n + 1] = v4 as u16;
            n += 2;
            continue;
        }
        if piece.is_empty() || piece.len() > 4 || n >= 8 {
            return None;
        }
        let mut v: u16 = 0;
        for &b in piece {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return None,
            };
            v = (v << 4) | u16::from(d);
        }
        out[n] = v;
        n += 1;
    }
    Some(n)
}

/// Parses an IPv6 address in the text forms of RFC 4291 §2.2: eight groups
/// of 1 to 4 hex digits, one `::` standing for one or more zero groups, and
/// an optional trailing dotted IPv4 address. Zone ids (`%eth0`) are refused.
pub fn parse_ipv6(s: &[u8]) -> Option<u128> {
    let mut groups = [0u16; 8];
    match s.windows(2).position(|w| w == b"::") {
        Some(i) => {
            let (head, tail) = (&s[..i], &s[i + 2..]);
            if tail.windows(2).any(|w| w == b"::") {
                return None;
            }
            let mut h = [0u16; 8];
            let mut t = [0u16; 8];
            let hn = parse_groups(head, false, &mut h)?;
            let tn = parse_groups(tail, true, &mut t)?;
            if hn + tn > 7 {
                return None;
            }
            groups[..hn].copy_from_slice(&h[..hn]);
            groups[8 - tn..].copy_from_slice(&t[..tn]);
        }
        None => {
            if parse_groups(s, true, &mut groups)? != 8 {
                return None;
            }
        }
    }
    Some(
        groups
            .iter()
            .fold(0u128, |acc, &g| (acc << 16) | u128::from(g)),
    )
}

/// Parses `ADDRESS/PREFIX` or a bare address (a single host: /32 or /128).
/// Host bits set past the prefix are an error naming the network meant, and
/// an IPv4-mapped IPv6 CIDR of /96 or longer becomes the IPv4 CIDR it stands
/// for.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    const FORM: &str =
        "write an IPv4 or IPv6 CIDR such as \"10.0.0.0/8\" or \"2001:db8::/32\", or a single address";
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let v6 = addr.contains(':');
    let max: u8 = if v6 { 128 } else { 32 };
    let len = match prefix {
        None => max,
        Some(p) => {
            let ok = !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'));
            match p.parse::<u8>() {
                Ok(n) if ok && n <= max => n,
                _ => {
                    return Err(format!(
                        "{s:?} has an invalid prefix length {p:?}: it must be 0 to {max}"
                    ))
                }
            }
        }
    };
    let cidr = if v6 {
        let Some(a) = parse_ipv6(addr.as_bytes()) else {
            return Err(format!("{s:?} is not a valid IPv6 address or CIDR: {FORM}"));
        };
        let net = a & mask6(len);
        if net != a {
            return Err(format!(
                "{s:?} has host bits set past the /{len} prefix: write {} (the network address)",
                Cidr::V6 { net, len }
            ));
        }
        if len >= 96 && net & !((1u128 << 32) - 1) == MAPPED_PREFIX {
            Cidr::V4 {
                net: net as u32,
                len: len - 96,
            }
        } else {
            Cidr::V6 { net, len }
        }
    } else {
        let Some(a) = parse_ipv4(addr.as_bytes()) else {
            return Err(format!(
                "{s:?} is not a valid IPv4 address or CIDR (four decimal parts 0-255, no leading zeros): {FORM}"
            ));
        };
        let net = a & mask4(len);
        if net != a {
            return Err(format!(
                "{s:?} has host bits set past the /{len} prefix: write {} (the network address)",
                Cidr::V4 { net, len }
            ));
        }
        Cidr::V4 { net, len }
    };
    Ok(cidr)
}

// === impl CidrSet ===

/// A client address as the rules see it: IPv4-mapped IPv6 is IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    V4(u32),
    V6(u128),
}

impl From<IpAddr> for Ip {
    fn from(ip: IpAddr) -> Ip {
        match ip {
            IpAddr::V4(a) => Ip::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Ip::V4(u32::from(v4)),
                None => Ip::V6(u128::from(a)),
            },
        }
    }
}

/// CIDRs as (network, mask) pairs, one list per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    pub fn push(&mut self, c: Cidr) {
        match c {
            Cidr::V4 { net, len } => {
                let e = (net, mask4(len));
                if !self.v4.contains(&e) {
                    self.v4.push(e);
                }
            }
            Cidr::V6 { net, len } => {
                let e = (net, mask6(len));
                if !self.v6.contains(&e) {
                    self.v6.push(e);
                }
            }
        }
    }

    pub fn contains(&self, ip: Ip) -> bool {
        match ip {
            Ip::V4(a) => self.v4.iter().any(|&(net, mask)| a & mask == net),
            Ip::V6(a) => self.v6.iter().any(|&(net, mask)| a & mask == net),
        }
    }
}

// === impl IpRules ===

/// One `ip_rules` table, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layer {
    /// `None`: no allow list, every address not denied passes.
    allow: Option<CidrSet>,
    deny: CidrSet,
}

impl Layer {
    fn passes(&self, ip: Ip) -> bool {
        !self.deny.contains(ip) && self.allow.as_ref().is_none_or(|a| a.contains(ip))
    }
}

/// The rules that apply to one route: its API's, then its own. A request
/// must pass every layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRules {
    layers: Vec<Layer>,
}

impl IpRules {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = Ip::from(ip);
        self.layers.iter().all(|l| l.passes(ip))
    }
}

/// Compiles one `ip_rules` table; errors are keyed under `key`
/// (`apis[0].ip_rules` or `apis[0].routes[1].ip_rules`).
fn compile_layer(raw: &RawIpRules, key: &str, errors: &mut Vec<ConfigError>) -> Option<Layer> {
    let mut ok = true;
    let mut push = |errors: &mut Vec<ConfigError>, e: ConfigError| {
        ok = false;
        // API-level rules are compiled once per route of the API: say it once.
        if !errors.contains(&e) {
            errors.push(e);
        }
    };
    if raw.allow.is_none() && raw.deny.is_none() {
        push(
            errors,
            ConfigError::new(
                key,
                "names neither allow nor deny: give at least one list, or remove ip_rules",
            ),
        );
    }
    let mut list = |name: &str, items: &[String], errors: &mut Vec<ConfigError>| {
        let mut set = CidrSet::default();
        for (i, s) in items.iter().enumerate() {
            match parse_cidr(s) {
                Ok(c) => set.push(c),
                Err(m) => push(errors, ConfigError::new(format!("{key}.{name}[{i}]"), m)),
            }
        }
        set
    };
    let allow = raw.allow.as_ref().map(|a| list("allow", a, errors));
    let deny = raw
        .deny
        .as_ref()
        .map(|d| list("deny", d, errors))
        .unwrap_or_default();
    if raw.allow.as_ref().is_some_and(|a| a.is_empty()) {
        push(
            errors,
            ConfigError::new(
                format!("{key}.allow"),
                "an empty allow list lets no client in: list CIDRs (e.g. \"10.0.0.0/8\"), or leave allow out to let in every address not denied",
            ),
        );
    }
    ok.then_some(Layer { allow, deny })
}

/// The API's key (`apis[0]`) from one of its routes' (`apis[0].routes[1]`).
fn api_key(route_key: &str) -> &str {
    route_key
        .rsplit_once(".routes[")
        .map_or(route_key, |(api, _)| api)
}

/// Compiles the rules of one route from its API's and its own. `key` is the
/// route's key (`apis[0].routes[1]`); errors in the API's rules are named
/// under the API's key and reported once however many routes it has.
pub fn compile(
    api: Option<&RawIpRules>,
    route: Option<&RawIpRules>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<IpRules> {
    let mut layers = Vec::new();
    if let Some(a) = api {
        layers.extend(compile_layer(
            a,
            &format!("{}.ip_rules", api_key(key)),
            errors,
        ));
    }
    if let Some(r) = route {
        layers.extend(compile_layer(r, &format!("{key}.ip_rules"), errors));
    }
    (!layers.is_empty()).then_some(IpRules { layers })
}

/// The API-level rules alone (`key` is the API's, `apis[0]`), for requests
/// no route takes: with them the gateway refuses a denied client before it
/// learns whether a path exists.
pub fn compile_api(
    api: Option<&RawIpRules>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<IpRules> {
    let layer = compile_layer(api?, &format!("{key}.ip_rules"), errors)?;
    Some(IpRules {
        layers: vec![layer],
    })
}

#[cfg(test)]
mod tests;
