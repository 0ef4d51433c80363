//! An imported API merged into an existing config file's text
//! (`coregate openapi import FILE --into CONFIG`, docs/openapi.md,
//! "Merging into a config"). The file is edited with `toml_edit`, so its
//! comments and layout are kept wherever it is not changed.

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// The keys of an `[[apis]]` table that an import writes: on a merge they
/// replace the existing API's; its other keys (throttle, access_log,
/// api_key_required, ...) are kept.
const IMPORTED_API_KEYS: &[&str] = &["hosts", "base_path", "cors", "routes"];

/// The merged text, and what was done.
#[derive(Debug)]
pub struct Merged {
    pub text: String,
    /// The API replaced one of the same name (else it was added).
    pub replaced: bool,
    /// One line per thing the merge kept or added that the operator may
    /// want to know about.
    pub notes: Vec<String>,
}

/// Merges `imported` (the text `import` writes: one `[[apis]]`, and maybe
/// `[server] api_keys_file`, `[[upstreams]]`, `[[authorizers]]`) into
/// `existing`. An API of the same name is replaced (its keys an import
/// does not write are kept); upstreams and authorizers the file already
/// has by name are kept as they are; `server.api_keys_file` is set only
/// when the file has none.
pub fn merge(existing: &str, imported: &str) -> Result<Merged, String> {
    let mut doc: DocumentMut = existing
        .parse()
        .map_err(|e| format!("the config is not valid TOML: {e}"))?;
    let new: DocumentMut = imported
        .parse()
        .map_err(|e| format!("the imported config is not valid TOML: {e}"))?;
    let mut notes = Vec::new();

    let Some(new_api) = new
        .get("apis")
        .and_then(Item::as_array_of_tables)
        .and_then(|a| a.get(0))
    else {
        return Err("the imported config has no [[apis]]".into());
    };
    let name = new_api
        .get("name")
        .and_then(Item::as_str)
        .unwrap_or_default()
        .to_string();

    // [server] api_keys_file
    if let Some(file) = new
        .get("server")
        .and_then(|s| s.get("api_keys_file"))
        .and_then(Item::as_str)
    {
        let server = table_entry(&mut doc, "server")?;
        match server.get("api_keys_file").and_then(Item::as_str) {
            Some(own) => notes.push(format!(
                "the config's server.api_keys_file ({own:?}) is kept: the imported routes that require an API key use it"
            )),
            None => {
                server.insert("api_keys_file", toml_edit::value(file));
                notes.push(format!("server.api_keys_file = {file:?} added"));
            }
        }
    }

    // [[upstreams]] and [[authorizers]]: added unless the file has one of
    // the same name.
    for list in ["upstreams", "authorizers"] {
        let Some(items) = new.get(list).and_then(Item::as_array_of_tables) else {
            continue;
        };
        let own = array_entry(&mut doc, list)?;
        for t in items.iter() {
            let n = t.get("name").and_then(Item::as_str).unwrap_or_default();
            if own
                .iter()
                .any(|o| o.get("name").and_then(Item::as_str) == Some(n))
            {
                notes.push(format!(
                    "the config's [[{list}]] {n:?} is kept (the document's is not used)"
                ));
            } else {
                own.push(fresh(t));
                notes.push(format!("[[{list}]] {n:?} added"));
            }
        }
    }

    // [[apis]]: replace the one of the same name, or add it.
    let apis = array_entry(&mut doc, "apis")?;
    let existing_api = apis
        .iter_mut()
        .find(|a| a.get("name").and_then(Item::as_str) == Some(name.as_str()));
    let replaced = match existing_api {
        Some(old) => {
            let kept: Vec<String> = old
                .iter()
                .map(|(k, _)| k.to_string())
                .filter(|k| k != "name" && !IMPORTED_API_KEYS.contains(&k.as_str()))
                .collect();
            for k in IMPORTED_API_KEYS {
                old.remove(k);
            }
            for (k, v) in fresh(new_api).iter() {
                if k != "name" {
                    old.insert(k, v.clone());
                }
            }
            if !kept.is_empty() {
                notes.push(format!(
                    "api {name:?} replaced; its own {} kept",
                    kept.join(", ")
                ));
            }
            true
        }
        None => {
            apis.push(fresh(new_api));
            false
        }
    };
    Ok(Merged {
        text: doc.to_string(),
        replaced,
        notes,
    })
}

/// A copy of `t` without the positions its tables had in the imported
/// text: a table without one is written after the one before it in the
/// file (toml_edit orders headers by position), which is where it goes.
fn fresh(t: &Table) -> Table {
    let mut out = Table::new();
    out.set_implicit(t.is_implicit());
    for (k, item) in t.iter() {
        let copy = match item {
            Item::Table(sub) => Item::Table(fresh(sub)),
            Item::ArrayOfTables(a) => {
                let mut list = ArrayOfTables::new();
                for sub in a.iter() {
                    list.push(fresh(sub));
                }
                Item::ArrayOfTables(list)
            }
            other => other.clone(),
        };
        out.insert(k, copy);
    }
    out
}

/// The table at top-level `key`, made when absent.
fn table_entry<'d>(doc: &'d mut DocumentMut, key: &str) -> Result<&'d mut Table, String> {
    let item = doc.entry(key).or_insert_with(|| Item::Table(Table::new()));
    item.as_table_mut()
        .ok_or_else(|| format!("the config's {key} is not a table"))
}

/// The array of tables at top-level `key`, made when absent.
fn array_entry<'d>(doc: &'d mut DocumentMut, key: &str) -> Result<&'d mut ArrayOfTables, String> {
    let item = doc
        .entry(key)
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut()
        .ok_or_else(|| format!("the config's {key} is not an array of tables ([[{key}]])"))
}

#[cfg(test)]
mod tests {
    //! Unwraps: the inputs are fixed texts; a failure is the test's.
    use super::*;

    const EXISTING: &str = r#"# The gateway's config.
[server]
listen = ["127.0.0.1:8080"] # keep me

[[upstreams]]
name = "pets"
targets = [{ address = "127.0.0.1:9000" }]

# The pets API, throttled.
[[apis]]
name = "pets"
base_path = "/old"
throttle = { rate = 10, burst = 5 } # operator's

[[apis.routes]]
key = "GET /old"
integration = { type = "mock", body = "old" }

[[apis]]
name = "other"
[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = "x" }
"#;

    const IMPORTED: &str = r#"[server]
api_keys_file = "api-keys.toml"

[[upstreams]]
name = "pets"
targets = [{ address = "10.0.0.1:1" }]

[[upstreams]]
name = "fresh"
targets = [{ address = "10.0.0.2:2" }]

[[apis]]
name = "pets"
base_path = "/v1"

[[apis.routes]]
key = "GET /pets"
api_key_required = true
integration = { type = "http_proxy", url = "http://pets/pets" }
"#;

    #[test]
    fn an_api_of_the_same_name_is_replaced_keeping_the_rest_of_the_file() {
        let m = merge(EXISTING, IMPORTED).unwrap();
        assert!(m.replaced);
        let raw = crate::config::parse(&m.text).unwrap();
        assert_eq!(raw.apis.len(), 2);
        let pets = &raw.apis[0];
        assert_eq!(pets.base_path.as_deref(), Some("/v1"));
        assert_eq!(pets.routes.len(), 1);
        assert_eq!(pets.routes[0].key, "GET /pets");
        assert!(pets.throttle.is_some(), "{}", m.text);
        assert_eq!(raw.apis[1].name, "other");
        // The file's upstream of the same name wins; the new one is added.
        let ups: Vec<_> = raw
            .upstreams
            .iter()
            .map(|u| &u.targets[0].address)
            .collect();
        assert_eq!(ups, ["127.0.0.1:9000", "10.0.0.2:2"]);
        assert_eq!(raw.server.api_keys_file.as_deref(), Some("api-keys.toml"));
        for kept in ["# The gateway's config.", "# keep me", "# operator's"] {
            assert!(m.text.contains(kept), "{kept}: {}", m.text);
        }
        assert!(!m.text.contains("GET /old"), "{}", m.text);
    }

    #[test]
    fn a_new_api_is_added_at_the_end() {
        let imported = IMPORTED.replace("name = \"pets\"\nbase_path", "name = \"new\"\nbase_path");
        let m = merge(EXISTING, &imported).unwrap();
        assert!(!m.replaced);
        let raw = crate::config::parse(&m.text).unwrap();
        let names: Vec<_> = raw.apis.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["pets", "other", "new"]);
        for kept in [
            "# The gateway's config.",
            "# The pets API, throttled.",
            "# operator's",
        ] {
            assert!(m.text.contains(kept), "{kept}: {}", m.text);
        }
        // The new API's routes follow it, after the other APIs.
        let new_at = m.text.find("name = \"new\"").unwrap();
        assert!(m.text.find("name = \"other\"").unwrap() < new_at);
        assert!(m.text.find("GET /pets").unwrap() > new_at, "{}", m.text);
    }

    #[test]
    fn text_that_is_not_toml_or_of_the_wrong_shape_is_an_error() {
        assert!(merge("[[apis]\n", IMPORTED)
            .unwrap_err()
            .contains("not valid TOML"));
        assert!(merge("apis = 3\n", IMPORTED)
            .unwrap_err()
            .contains("not an array of tables"));
        assert!(merge("server = 3\n", IMPORTED)
            .unwrap_err()
            .contains("not a table"));
    }
}
