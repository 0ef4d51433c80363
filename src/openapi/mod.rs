//! OpenAPI import and export (docs/openapi.md). This layer sits just
//! below `plan`: it reads and writes the config's shape (`config::raw`)
//! and route keys (`route`) only, and the plan's loader uses [`import`]
//! for an API that serves a document (`plan::openapi`).
//!
//! [`import`] turns an OpenAPI 3.0 or 3.1 document (YAML or JSON) into
//! coregate config text, grading what it meets as AWS does: info (valid but
//! unsupported, ignored), warning (the import goes on), error (the import
//! stops). Every finding names its place in the document as a JSON pointer.
//! [`export`] writes an OpenAPI 3.0 document of one API of a config, with
//! the `x-amazon-apigateway-*` extensions (and a few `x-coregate-*` ones)
//! that let the import give back the same routes and integrations.
//! [`merge`] puts an imported API into an existing config file's text.

pub mod export;
pub mod import;
pub mod merge;

use std::fmt;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    /// Valid OpenAPI that coregate does not use; ignored.
    Info,
    /// Imported differently from what the document asks, or left out; the
    /// import goes on unless `--fail-on-warnings`.
    Warning,
    /// The document cannot be imported.
    Error,
}

/// One thing the importer has to say about a place in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub grade: Grade,
    /// A JSON pointer (RFC 6901) into the document; `""` is the whole of it.
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grade = match self.grade {
            Grade::Info => "info",
            Grade::Warning => "warning",
            Grade::Error => "error",
        };
        let pointer = if self.pointer.is_empty() {
            "(document)"
        } else {
            &self.pointer
        };
        write!(f, "{grade}: {pointer}: {}", self.message)
    }
}

/// Escapes one JSON pointer token (`~` → `~0`, `/` → `~1`).
pub fn escape_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// `base` + `/` + the escaped `token`.
pub fn pointer(base: &str, token: &str) -> String {
    format!("{base}/{}", escape_token(token))
}

/// The largest document read, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
