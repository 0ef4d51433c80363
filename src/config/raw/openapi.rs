//! `apis[N].openapi`: an OpenAPI document an API serves directly
//! (docs/openapi.md, "Serving a document"). Written as the file's path,
//! or as a table with the import's settings.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// `openapi = "pets.yaml"` or `openapi = { file = "pets.yaml", ... }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOpenApi {
    /// The document, relative to the config file's directory.
    pub file: String,
    /// `"ignore"` (the default), `"prepend"` or `"split"`: what the path of
    /// the document's first server URL becomes.
    pub base_path: Option<String>,
    /// Where operations without an `http_proxy` integration are proxied
    /// (`http://host:port[/prefix]`, then the route's path).
    pub upstream: Option<String>,
    /// A warning about the document is an error. Default: false.
    pub fail_on_warnings: Option<bool>,
}

/// The table form's keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    file: String,
    base_path: Option<String>,
    upstream: Option<String>,
    fail_on_warnings: Option<bool>,
}

impl<'de> Deserialize<'de> for RawOpenApi {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawOpenApi;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "the document's path, or a table { file, base_path, upstream, fail_on_warnings }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawOpenApi, E> {
                Ok(RawOpenApi {
                    file: v.to_string(),
                    ..RawOpenApi::default()
                })
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<RawOpenApi, M::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(RawOpenApi {
                    file: t.file,
                    base_path: t.base_path,
                    upstream: t.upstream,
                    fail_on_warnings: t.fail_on_warnings,
                })
            }
        }
        d.deserialize_any(V)
    }
}
