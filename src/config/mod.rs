//! Configuration as written: the TOML file parsed into the raw structs of
//! [`raw`], with every unknown key reported, and the [`ConfigError`] every
//! layer reports problems with. Nothing here knows the gateway; the layer
//! that compiles these structs into the immutable plan is `crate::plan`.

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

/// Parses TOML into the raw structs, listing every unknown key (not only the
/// first) so one `coregate check` run shows all of them.
pub fn parse(text: &str) -> Result<raw::RawConfig, Vec<ConfigError>> {
    // serde_ignored reports every key the structs do not know; a hard error
    // (syntax, type, missing key) stops the parse, and unknown keys met before
    // it are reported with it.
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let result: Result<raw::RawConfig, _> = serde_ignored::deserialize(de, |path| {
        unknown.push(path.to_string());
    });
    let doc = toml_edit::ImDocument::parse(text).ok();
    let unknown_errors = unknown.iter().map(|k| {
        let segs = path_segments(k);
        ConfigError {
            key: display_path(&segs),
            message: UNKNOWN_KEY.into(),
            line: doc
                .as_ref()
                .and_then(|d| key_offset(d, &segs))
                .map(|o| line_of(text, o)),
        }
    });
    match result {
        Ok(raw) if unknown.is_empty() => Ok(raw),
        Ok(_) => Err(unknown_errors.collect()),
        Err(e) => {
            let offset = e.span().map(|s| s.start);
            let message = e.message().trim().to_string();
            let named = key_from_message(&message);
            let key = match offset {
                None => "(toml)".into(),
                // "missing field `x`" / "unknown field `x`": the offset is
                // the table's header, or the key holding an inline table.
                Some(o)
                    if message.starts_with("missing field")
                        || message.starts_with("unknown field") =>
                {
                    match (key_at(text, o).or_else(|| table_at(text, o)), named) {
                        (Some(t), Some(k)) => format!("{t}.{k}"),
                        (None, Some(k)) => k,
                        (_, None) => "(toml)".into(),
                    }
                }
                Some(o) => key_at(text, o).unwrap_or_else(|| "(toml)".into()),
            };
            let mut errors = vec![ConfigError {
                key,
                message,
                line: offset.map(|o| line_of(text, o)),
            }];
            errors.extend(unknown_errors);
            Err(errors)
        }
    }
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
