//! Configuration as written: the TOML file parsed into the raw structs of
//! [`raw`], with every unknown key reported, and the [`ConfigError`] every
//! layer reports problems with. Nothing here knows the gateway; the layer
//! that compiles these structs into the immutable plan is `crate::plan`.

pub mod canary;
pub mod raw;

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `apis[0].routes[2].key`.
    pub key: String,
    pub message: String,
    /// 1-based line, where the TOML parser gives one.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
            line: None,
        }
    }
}

const UNKNOWN_KEY: &str = "unknown key; see docs/configuration.md for the keys this section takes";

/// Parses TOML into the raw structs, listing every unknown key and every
/// bad value (not only the first) so one `coregate check` run shows all of
/// them.
pub fn parse(text: &str) -> Result<raw::RawConfig, Vec<ConfigError>> {
    let parsed = parse_all(text);
    match parsed.raw {
        Some(raw) if parsed.errors.is_empty() => Ok(raw),
        _ => Err(parsed.errors),
    }
}

/// What [`parse_all`] found.
pub struct Parsed {
    /// The config with every bad value left out (as if not written), or
    /// None when that still does not parse (a syntax error, or a required
    /// key whose value is bad).
    pub raw: Option<raw::RawConfig>,
    pub errors: Vec<ConfigError>,
    /// Keys (in the `apis[0].routes[1].key` form) whose values were left
    /// out; compile errors about them would be about the default instead.
    pub left_out: Vec<String>,
    /// Tables holding an unknown key (`apis[0].routes[0].ip_rules` for a
    /// misspelt `allow`): what compile says about such a table itself is
    /// most likely the typo's doing.
    pub unknown_in: Vec<String>,
}

/// How many bad values one parse reports before it gives up.
const MAX_VALUE_ERRORS: usize = 100;

/// Parses TOML into the raw structs, reporting every problem. A value of
/// the wrong type stops serde at once, so each such value is blanked out
/// (replaced by spaces, so offsets and lines stay true) and the text parsed
/// again, until it parses or nothing more can be left out.
pub fn parse_all(text: &str) -> Parsed {
    let doc = toml_edit::ImDocument::parse(text).ok();
    let mut work = text.to_string();
    let mut errors = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut left_out: Vec<String> = Vec::new();
    // The last value blanked: the text before, where it was, and the
    // serde message about it (which says what type was expected).
    let mut last: Option<(String, KeyValue, String)> = None;
    loop {
        let mut seen = Vec::new();
        let de = toml::Deserializer::new(&work);
        let result: Result<raw::RawConfig, _> = serde_ignored::deserialize(de, |path| {
            seen.push(path.to_string());
        });
        for k in seen {
            if !unknown.contains(&k) {
                unknown.push(k);
            }
        }
        let e = match result {
            Ok(raw) => {
                errors.extend(unknown_errors(text, doc.as_ref(), &unknown));
                return Parsed {
                    raw: Some(raw),
                    errors,
                    left_out,
                    unknown_in: unknown_tables(&unknown),
                };
            }
            Err(e) => e,
        };
        let offset = e.span().map(|s| s.start);
        let message = e.message().trim().to_string();
        if message.starts_with("missing field") {
            // Leaving out a required key's bad value makes it missing (that
            // was reported as the bad value already): put an empty value of
            // the expected type in its place instead, and go on.
            if let (Some((before, kv, why)), Some(named)) =
                (last.take(), key_from_message(&message))
            {
                if kv.path.rsplit('.').next() == Some(named.as_str()) {
                    match stand_in(&why) {
                        Some(v) if v.len() <= kv.value.len() => {
                            let mut out = before.into_bytes();
                            for b in &mut out[kv.value.clone()] {
                                if *b != b'\n' && *b != b'\r' {
                                    *b = b' ';
                                }
                            }
                            out[kv.value.start..kv.value.start + v.len()]
                                .copy_from_slice(v.as_bytes());
                            match String::from_utf8(out) {
                                Ok(w) => {
                                    work = w;
                                    continue;
                                }
                                Err(_) => break,
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        let kv = match (&doc, offset) {
            (Some(d), Some(o)) if !message.starts_with("missing field") => kv_at(d, o),
            _ => None,
        };
        let key = match (&kv, offset) {
            // The integration is read as a whole (an internally tagged
            // enum), so its errors point at it; a u16 in it is the status.
            (Some(kv), _)
                if kv.path.ends_with(".integration") && message.ends_with("expected u16") =>
            {
                format!("{}.status", kv.path)
            }
            (Some(kv), _) if message.starts_with("unknown field") => {
                match key_from_message(&message) {
                    Some(f) => format!("{}.{f}", kv.path),
                    None => kv.path.clone(),
                }
            }
            (Some(kv), _) => kv.path.clone(),
            (None, None) => "(toml)".into(),
            // "missing field `x`" / "unknown field `x`": the offset is
            // the table's header, or the key holding an inline table.
            (None, Some(o))
                if message.starts_with("missing field") || message.starts_with("unknown field") =>
            {
                match (
                    key_at(text, o).or_else(|| table_at(text, o)),
                    key_from_message(&message),
                ) {
                    (Some(t), Some(k)) => format!("{t}.{k}"),
                    (None, Some(k)) => k,
                    (_, None) => "(toml)".into(),
                }
            }
            (None, Some(o)) => key_at(text, o).unwrap_or_else(|| "(toml)".into()),
        };
        let mut told = humane(&message, &key).unwrap_or_else(|| message.clone());
        if doc.is_none() {
            // The file is not TOML: the parser stops at the first syntax
            // error, and so does the check. Its column helps find it.
            if let Some(o) = offset {
                told = format!(
                    "TOML syntax error at column {}: {told} (the file is read no further: fix it and check again)",
                    column_of(text, o)
                );
            }
        }
        errors.push(ConfigError {
            message: told,
            key,
            line: offset.map(|o| line_of(text, o)),
        });
        let Some(kv) = kv else { break };
        let before = work.clone();
        if errors.len() >= MAX_VALUE_ERRORS || !blank(&mut work, &kv) {
            break;
        }
        left_out.push(kv.path.clone());
        last = Some((before, kv, message));
    }
    errors.extend(unknown_errors(text, doc.as_ref(), &unknown));
    Parsed {
        raw: None,
        errors,
        left_out,
        unknown_in: unknown_tables(&unknown),
    }
}

/// The tables the unknown keys are in, in the `apis[0].ip_rules` form.
fn unknown_tables(unknown: &[String]) -> Vec<String> {
    unknown
        .iter()
        .map(|k| {
            let segs = path_segments(k);
            display_path(&segs[..segs.len().saturating_sub(1)])
        })
        .collect()
}

fn unknown_errors(
    text: &str,
    doc: Option<&toml_edit::ImDocument<&str>>,
    unknown: &[String],
) -> Vec<ConfigError> {
    unknown
        .iter()
        .map(|k| {
            let segs = path_segments(k);
            let mut message = UNKNOWN_KEY.to_string();
            if let Some(Seg::Key(name)) = segs.last() {
                let table: Vec<&str> = segs[..segs.len() - 1]
                    .iter()
                    .filter_map(|s| match s {
                        Seg::Key(k) => Some(*k),
                        Seg::Index(_) => None,
                    })
                    .collect();
                if let Some(m) = raw::known_keys(&table.join("."))
                    .and_then(|keys| did_you_mean(name, keys.iter().copied()))
                {
                    message = format!("unknown key; did you mean `{m}`? (docs/configuration.md lists the keys each section takes)");
                }
            }
            ConfigError {
                key: display_path(&segs),
                message,
                line: doc
                    .and_then(|d| key_offset(d, &segs))
                    .map(|o| line_of(text, o)),
            }
        })
        .collect()
}

/// The candidate closest to `word` by edit distance, if it is close
/// enough to be a likely typo (or differs only in case, `-` for `_`).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let w = norm(word);
    let limit = match w.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (edit_distance(&w, &norm(c)), c))
        .filter(|&(d, c)| d <= limit && c != word)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, with a swap of two neighbours counted as one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// A serde/TOML type error in words for someone writing a config: no Rust
/// type names. `key` picks the unit (`*_ms`, `*_bytes`).
fn humane(message: &str, key: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        // "unknown field `stauts`, expected one of `status`, `headers`, `body`"
        let (field, expected) = message.split_once(", expected ")?;
        let field = key_from_message(field)?;
        let options: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let m = did_you_mean(&field, options.iter().copied())?;
        return Some(format!("{message}; did you mean `{m}`?"));
    }
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    let (got, want) = rest?.rsplit_once(", expected ")?;
    let name = key.rsplit('.').next().unwrap_or(key);
    let name = name.split('[').next().unwrap_or(name);
    let whole = |range: &str| {
        if name.ends_with("_ms") {
            "a whole number of milliseconds, at least 1".to_string()
        } else if name.ends_with("_bytes") {
            format!("a whole number of bytes{range}")
        } else if name.ends_with("_seconds") {
            format!("a whole number of seconds{range}")
        } else {
            format!("a whole number{range}")
        }
    };
    let want = match want {
        "u8" => whole(" from 0 to 255"),
        "u16" if name == "status" => "an HTTP status code from 200 to 599".to_string(),
        "u16" => whole(" from 0 to 65535"),
        "u32" => whole(" from 0 to 4294967295"),
        "u64" | "usize" => whole(", 0 or more"),
        "i8" | "i16" | "i32" | "i64" | "isize" => whole(""),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" | "a borrowed string" | "a character" => "a string in quotes".to_string(),
        "a sequence" => "an array: [ ... ]".to_string(),
        w if w == "a map" || w.starts_with("struct ") || w.starts_with("a map") => {
            "a table: { ... } or a [section]".to_string()
        }
        w if w.contains("enum ") => "a table with a type: { type = \"...\", ... }".to_string(),
        w => w.to_string(),
    };
    let got = if let Some(v) = got.strip_prefix("string ") {
        format!("the string {v}")
    } else if let Some(v) = got
        .strip_prefix("integer ")
        .or_else(|| got.strip_prefix("floating point "))
        .or_else(|| got.strip_prefix("boolean "))
    {
        v.trim_matches('`').to_string()
    } else {
        match got {
            "sequence" => "an array".to_string(),
            "map" => "a table".to_string(),
            other => other.to_string(),
        }
    };
    Some(format!("must be {want}, not {got}"))
}

/// An empty value of the type a serde message expected, to stand in for a
/// required key's bad value.
fn stand_in(message: &str) -> Option<&'static str> {
    let (_, want) = message.rsplit_once(", expected ")?;
    Some(match want {
        "a sequence" => "[]",
        "a string" | "a borrowed string" => "\"\"",
        "a boolean" => "false",
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" => "1",
        _ => return None,
    })
}

/// A `key = value` pair of the document: where it is and its path.
struct KeyValue {
    /// From the key's first byte to the value's last.
    range: std::ops::Range<usize>,
    /// The value alone.
    value: std::ops::Range<usize>,
    /// Inside an inline table or array, where a comma separates it.
    inline: bool,
    /// `apis[0].routes[1].integration`.
    path: String,
}

/// The innermost `key = value` whose value holds `offset`.
fn kv_at(doc: &toml_edit::ImDocument<&str>, offset: usize) -> Option<KeyValue> {
    let mut best = None;
    walk_table(doc.as_table(), offset, "", false, &mut best);
    best
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk_table(
    t: &dyn toml_edit::TableLike,
    offset: usize,
    path: &str,
    inline: bool,
    best: &mut Option<KeyValue>,
) {
    use toml_edit::Item;
    for (k, _) in t.iter() {
        let Some((key, item)) = t.get_key_value(k) else {
            continue;
        };
        let here = join(path, k);
        match item {
            Item::Value(v) => {
                let (Some(ks), Some(vs)) = (key.span(), v.span()) else {
                    continue;
                };
                if ks.start <= offset && offset < vs.end {
                    *best = Some(KeyValue {
                        range: ks.start..vs.end,
                        value: vs.clone(),
                        inline,
                        path: here.clone(),
                    });
                    walk_value(v, offset, &here, best);
                }
            }
            Item::Table(t) => walk_table(t, offset, &here, false, best),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    walk_table(t, offset, &format!("{here}[{i}]"), false, best);
                }
            }
            Item::None => {}
        }
    }
}

fn walk_value(v: &toml_edit::Value, offset: usize, path: &str, best: &mut Option<KeyValue>) {
    match v {
        toml_edit::Value::InlineTable(t) => walk_table(t, offset, path, true, best),
        toml_edit::Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                if e.span().is_some_and(|s| s.contains(&offset)) {
                    walk_value(e, offset, &format!("{path}[{i}]"), best);
                }
            }
        }
        _ => {}
    }
}

/// What stands in for a route's integration with errors: it is required, so
/// leaving it out would only add "missing field".
const STAND_IN_INTEGRATION: &[u8] = b"integration={type=\"mock\"}";

/// Replaces `kv` (and the comma that separates it inside an inline table)
/// with spaces. False when there is nothing left to blank there.
fn blank(work: &mut String, kv: &KeyValue) -> bool {
    let bytes = work.as_bytes();
    let r = kv.range.clone();
    if r.end > bytes.len()
        || bytes[r.start..r.end]
            .iter()
            .all(|b| b.is_ascii_whitespace())
    {
        return false;
    }
    let mut out = bytes.to_vec();
    if kv.path.ends_with(".integration") && !kv.inline {
        if bytes[r.clone()] == *STAND_IN_INTEGRATION || r.len() < STAND_IN_INTEGRATION.len() {
            return false;
        }
        // One line: an integration spanning lines keeps them as blanks.
        for b in &mut out[r.clone()] {
            if *b != b'\n' && *b != b'\r' {
                *b = b' ';
            }
        }
        let first_line_end = out[r.start..r.end]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(r.end, |i| r.start + i);
        if first_line_end - r.start < STAND_IN_INTEGRATION.len() {
            return false;
        }
        out[r.start..r.start + STAND_IN_INTEGRATION.len()].copy_from_slice(STAND_IN_INTEGRATION);
        return match String::from_utf8(out) {
            Ok(s) => {
                *work = s;
                true
            }
            Err(_) => false,
        };
    }
    for b in &mut out[r.clone()] {
        if *b != b'\n' && *b != b'\r' {
            *b = b' ';
        }
    }
    if kv.inline {
        let after = out[r.end..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .map(|i| r.end + i);
        let before = out[..r.start]
            .iter()
            .rposition(|b| !b.is_ascii_whitespace());
        match (after, before) {
            (Some(i), _) if out[i] == b',' => out[i] = b' ',
            (_, Some(i)) if out[i] == b',' => out[i] = b' ',
            _ => {}
        }
    }
    match String::from_utf8(out) {
        Ok(s) => {
            *work = s;
            true
        }
        Err(_) => false,
    }
}

/// Gives each error a line where its key is found in the document: compile
/// errors name keys (`apis[0].routes[1].integration.url`) but carry no
/// position of their own.
pub fn locate(text: &str, errors: &mut [ConfigError]) {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return;
    };
    for e in errors.iter_mut().filter(|e| e.line.is_none()) {
        let path = e.key.replace('[', ".").replace(']', "");
        let segs = path_segments(&path);
        if segs.is_empty() {
            continue;
        }
        if let Some(o) = exact_offset(&doc, &segs) {
            e.line = Some(line_of(text, o));
        }
    }
}

/// Byte offset of the value `segs` names, only when every segment is found:
/// the key's own position, or an array element's value.
fn exact_offset(doc: &toml_edit::ImDocument<&str>, segs: &[Seg<'_>]) -> Option<usize> {
    use toml_edit::{Item, Value};
    enum Node<'d> {
        Item(&'d Item),
        Table(&'d toml_edit::Table),
        Value(&'d Value),
    }
    let mut node = Node::Table(doc.as_table());
    let mut at = None;
    for seg in segs {
        node = match (seg, &node) {
            (Seg::Key(k), _) => {
                let table: &dyn toml_edit::TableLike = match &node {
                    Node::Table(t) => *t,
                    Node::Item(i) => i.as_table_like()?,
                    Node::Value(v) => v.as_inline_table()?,
                };
                let (key, item) = table.get_key_value(k)?;
                at = key.span().map(|s| s.start).or(at);
                Node::Item(item)
            }
            (Seg::Index(i), Node::Item(item)) => match item.as_array_of_tables() {
                Some(aot) => {
                    let t = aot.get(*i)?;
                    at = t.span().map(|s| s.start).or(at);
                    Node::Table(t)
                }
                None => {
                    let v = item.as_array()?.get(*i)?;
                    at = v.span().map(|s| s.start).or(at);
                    Node::Value(v)
                }
            },
            (Seg::Index(i), Node::Value(v)) => {
                let v = v.as_array()?.get(*i)?;
                at = v.span().map(|s| s.start).or(at);
                Node::Value(v)
            }
            (Seg::Index(_), Node::Table(_)) => return None,
        };
    }
    // A whole `[[array]]` (e.g. `apis` for route table errors) has no one
    // line: its first header would point at one entry.
    if matches!(node, Node::Item(i) if i.is_array_of_tables()) {
        return None;
    }
    at
}

/// 1-based column of `offset`, in characters.
fn column_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    let Some(before) = text.get(..offset) else {
        return 1;
    };
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    before[start..].chars().count() + 1
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The field named in a serde message such as "missing field `name`".
fn key_from_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

#[derive(Debug, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `apis.0.routes.1.foo` (serde_ignored's form) into segments.
fn path_segments(path: &str) -> Vec<Seg<'_>> {
    path.split('.')
        // serde_ignored writes `?` for the inside of an Option.
        .filter(|p| !p.is_empty() && *p != "?")
        .map(|p| match p.parse::<usize>() {
            Ok(i) => Seg::Index(i),
            Err(_) => Seg::Key(p),
        })
        .collect()
}

/// `apis[0].routes[1].foo`, the form compile errors use too.
fn display_path(segs: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Byte offset of the last key of `segs` in the document, found by walking
/// the parsed document (so a key of the same name elsewhere cannot be
/// mistaken for it). Falls back to the deepest key that exists.
fn key_offset(doc: &toml_edit::ImDocument<&str>, segs: &[Seg<'_>]) -> Option<usize> {
    use toml_edit::{Item, Value};
    enum Node<'d> {
        Item(&'d Item),
        Table(&'d toml_edit::Table),
        Value(&'d Value),
    }
    let mut node = Node::Table(doc.as_table());
    let mut found = None;
    for seg in segs {
        let next = match (seg, &node) {
            (Seg::Key(k), _) => {
                let table: &dyn toml_edit::TableLike = match &node {
                    Node::Table(t) => *t,
                    Node::Item(i) => i.as_table_like()?,
                    Node::Value(v) => v.as_inline_table()?,
                };
                if let Some(span) = table.key(k).and_then(|k| k.span()) {
                    found = Some(span.start);
                }
                Node::Item(table.get(k)?)
            }
            (Seg::Index(i), Node::Item(item)) => match item.as_array_of_tables() {
                Some(aot) => Node::Table(aot.get(*i)?),
                None => Node::Value(item.as_array()?.get(*i)?),
            },
            (Seg::Index(i), Node::Value(v)) => Node::Value(v.as_array()?.get(*i)?),
            (Seg::Index(_), Node::Table(_)) => return found,
        };
        node = next;
    }
    found
}

/// The dotted key on the line at `offset`, qualified by the table header
/// above it: `server.limits.max_headers`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    Some(match table_at(text, line_start) {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

/// The name of the `[table]` or `[[array]]` header governing `offset` (the
/// line holding `offset` included).
fn table_at(text: &str, offset: usize) -> Option<String> {
    let end = text[offset.min(text.len())..]
        .find('\n')
        .map_or(text.len(), |i| offset + i);
    text[..end]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
}

/// A path from the config: a relative one is taken from the config file's
/// directory (`base_dir`).
pub fn resolve_path(file: &str, base_dir: Option<&Path>) -> PathBuf {
    let p = Path::new(file);
    match base_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// The largest file coregate reads as configuration: the config file and
/// every file it names (keys, certificates, OpenAPI documents, key sets,
/// credentials, the portal's files).
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a file that configures the gateway, whole. Only a regular file of
/// at most [`MAX_FILE_BYTES`] is read: a device (`/dev/zero`, which never
/// ends), a FIFO (whose open would wait for a writer, holding up a reload
/// and every admin change behind it), a directory or a socket is an error
/// that says what the path is, and so is a larger file. The open never
/// waits.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    let too_large = || {
        Error::new(
            ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
        )
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut out = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read is still cut off at the limit.
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(out)
}

/// [`read_file`], as UTF-8 text.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Writes `text` to a temp file next to `path` and renames it over `path`.
/// A new file is created readable by its owner only; an existing file's
/// permissions are kept. The file and its directory are synced: once
/// this returns, a crash leaves the old text or the new one, whole. When
/// `path` is a symbolic link, the file it leads to is the one replaced.
pub fn write_atomic(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // A symbolic link (a config deployed as a link to a versioned file) is
    // followed: the file it names is replaced and the link stays, rather
    // than the link being replaced by a file of its own.
    let resolved;
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            resolved = std::fs::canonicalize(path).map_err(|e| {
                format!(
                    "cannot write {}: it is a symbolic link that cannot be followed: {e}",
                    path.display()
                )
            })?;
            resolved.as_path()
        }
        _ => path,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}
