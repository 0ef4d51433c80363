//! The admin API's JSON endpoints besides metrics and the dashboard: the
//! running config (secrets redacted), validating and applying a config,
//! status, API keys, usage and an API's OpenAPI document. Anything that changes the gateway is done
//! by the main thread, which owns the running server
//! ([`crate::runtime::MainRequest`]); this module only asks and formats.
//! docs/admin-api.md lists every endpoint, status and error.

use super::Context;
use crate::http::method::Method;
use crate::http::percent::{percent_decode_str, query_value_decode};
use crate::runtime::{KeyChange, MainRequest, Running};
use serde_json::{json, Value};
use std::time::Duration;

/// How long a request waits for the main thread's answer about the
/// running config (it looks at its requests every 20 ms).
const RUNNING_TIMEOUT: Duration = Duration::from_secs(5);

/// Config keys whose values are secrets: shown as `"(redacted)"`.
const SECRET_KEYS: &[&str] = &["hash", "secret_access_key", "session_token"];

/// An answer: status and JSON body.
pub type Answer = Result<(u16, Value), (u16, Value)>;

/// The methods a path takes (GET implies HEAD), or None for an unknown
/// path.
pub fn allowed(path: &str) -> Option<&'static [Method]> {
    const GET: &[Method] = &[Method::Get];
    Some(match path {
        "/" | "/metrics" | "/dashboard" | "/dashboard/" | "/dashboard/data" | "/status"
        | "/usage" | "/openapi" => GET,
        "/reload" | "/config/validate" => &[Method::Post],
        "/config" => &[Method::Get, Method::Put],
        "/keys" => &[Method::Get, Method::Post],
        "/portal/signups" => GET,
        _ if canary_path(path).is_some() => &[Method::Post],
        _ if signup_path(path).is_some() => &[Method::Post],
        _ => match key_path(path) {
            Some((_, None)) => &[Method::Delete],
            Some((_, Some(_))) => &[Method::Post],
            None => return None,
        },
    })
}

/// `/keys/NAME` -> (NAME, None); `/keys/NAME/enable` -> (NAME, Some("enable")).
fn key_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/keys/")?;
    let (name, action) = match rest.split_once('/') {
        Some((n, a @ ("enable" | "disable"))) => (n, Some(a)),
        Some(_) => return None,
        None => (rest, None),
    };
    (!name.is_empty()).then_some((name, action))
}

/// `/portal/signups/NAME/approve` -> (NAME, true); `.../refuse` -> false.
fn signup_path(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("/portal/signups/")?;
    let (name, action) = rest.split_once('/')?;
    let approve = match action {
        "approve" => true,
        "refuse" => false,
        _ => return None,
    };
    (!name.is_empty()).then_some((name, approve))
}

/// `/stages/API/STAGE/canary` -> (API, STAGE).
fn canary_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/stages/")?.strip_suffix("/canary")?;
    let (api, stage) = rest.split_once('/')?;
    (!api.is_empty() && !stage.is_empty() && !stage.contains('/')).then_some((api, stage))
}

fn error(status: u16, message: &str) -> (u16, Value) {
    (status, json!({ "message": message }))
}

fn refused(errors: Vec<String>, message: &str) -> (u16, Value) {
    match errors.first().map(String::as_str) {
        Some(crate::runtime::STOPPING) => return error(503, crate::runtime::STOPPING),
        Some(crate::runtime::PARTLY) => {
            return (
                500,
                json!({ "message": crate::runtime::PARTLY, "errors": &errors[1..] }),
            )
        }
        _ => {}
    }
    (400, json!({ "message": message, "errors": errors }))
}

/// Answers a request for one of the API's paths; `who` is logged with
/// every change.
pub fn answer(
    ctx: &Context,
    method: Method,
    path: &str,
    query: &str,
    body: &[u8],
    who: &str,
) -> Answer {
    match (method, path) {
        (Method::Get, "/config") => {
            let r = running(ctx)?;
            Ok((
                200,
                json!({
                    "generation": r.generation,
                    "path": r.path.display().to_string(),
                    "config": redact(&r.text),
                }),
            ))
        }
        (Method::Post, "/config/validate") => validate(ctx, body),
        (Method::Post, "/reload") => install(
            ctx,
            who.to_string(),
            None,
            "The config was not reloaded; the gateway serves the one it had",
        ),
        (Method::Put, "/config") => install(
            ctx,
            who.to_string(),
            Some(config_text(body)?),
            "The config was not applied; the gateway serves the one it had",
        ),
        (Method::Get, "/status") => status(ctx),
        (Method::Get, "/keys") => list_keys(ctx),
        (Method::Post, "/keys") => {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| error(400, &format!("the body is not JSON: {e}")))?;
            let Some(name) = v.get("name").and_then(Value::as_str) else {
                return Err(error(400, "the body needs \"name\": the new key's name"));
            };
            let usage_plan = match v.get("usage_plan") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) => Some(p.clone()),
                Some(_) => return Err(error(400, "\"usage_plan\" must be a string")),
            };
            change_key(
                ctx,
                who,
                KeyChange::Create {
                    name: name.to_string(),
                    usage_plan,
                },
            )
        }
        (Method::Get, "/usage") => usage(ctx, query),
        (Method::Post, p) if canary_path(p).is_some() => {
            let Some((api, stage)) = canary_path(p) else {
                return Err(error(404, "Not Found"));
            };
            // Names are percent-decoded, as `/openapi?api=` decodes them:
            // an API named `the shop` is `/stages/the%20shop/...`.
            let (api, stage) = (percent_decode_str(api), percent_decode_str(stage));
            canary(ctx, who, &api, &stage, body)
        }
        (Method::Get, "/openapi") => openapi(ctx, query),
        (Method::Get, "/portal/signups") => portal_signups(ctx),
        (Method::Post, p) if signup_path(p).is_some() => {
            let Some((name, approve)) = signup_path(p) else {
                return Err(error(404, "Not Found"));
            };
            portal_decide(ctx, who, name, approve)
        }
        (Method::Delete, p) | (Method::Post, p) if p.starts_with("/keys/") => {
            let Some((name, action)) = key_path(p) else {
                return Err(error(404, "Not Found"));
            };
            // Percent-decoded, as clients encode a name's '@' and ':'.
            let name = percent_decode_str(name);
            let change = match action {
                None => KeyChange::Revoke(name),
                Some("enable") => KeyChange::Enable(name),
                _ => KeyChange::Disable(name),
            };
            change_key(ctx, who, change)
        }
        _ => Err(error(404, "Not Found")),
    }
}

/// Sends `req` to the main thread.
fn ask(ctx: &Context, req: MainRequest) -> Result<(), (u16, Value)> {
    ctx.main
        .send(req)
        .map_err(|_| error(503, crate::runtime::STOPPING))
}

/// Has the main thread reload the config file (`text` None), or install
/// `text` and write it to the file, and waits for its answer: 200 with
/// the generation; 400 with every error, `refusal` as the message; 503
/// while the gateway stops or when it does not answer.
fn install(ctx: &Context, who: String, text: Option<String>, refusal: &str) -> Answer {
    let (tx, rx) = crossbeam_channel::bounded(1);
    ask(
        ctx,
        MainRequest::Reload {
            who,
            text,
            reply: tx,
        },
    )?;
    let generation = answer_of(rx.recv_timeout(super::RELOAD_TIMEOUT), refusal)?;
    Ok((200, json!({ "generation": generation })))
}

/// The answer to a change the main thread was asked for: its value, or
/// its refusal.
fn answer_of<T>(
    got: Result<Result<T, Vec<String>>, crossbeam_channel::RecvTimeoutError>,
    refusal: &str,
) -> Result<T, (u16, Value)> {
    match got {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(errors)) => Err(refused(errors, refusal)),
        Err(_) => Err(error(
            503,
            "The gateway did not answer (it may be stopping)",
        )),
    }
}

/// The running config, from the main thread.
fn running(ctx: &Context) -> Result<Running, (u16, Value)> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    ask(ctx, MainRequest::Running { reply: tx })?;
    rx.recv_timeout(RUNNING_TIMEOUT)
        .map_err(|_| error(503, "The gateway did not answer (it may be stopping)"))
}

fn config_text(body: &[u8]) -> Result<String, (u16, Value)> {
    if body.is_empty() {
        return Err(error(400, "the body must be the config file (TOML)"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| error(400, "the config is not UTF-8"))
}

/// `POST /config/validate`: compiles the body as the config file (relative
/// paths from the running config's directory) without applying it, and
/// says whether a reload would take it.
fn validate(ctx: &Context, body: &[u8]) -> Answer {
    let text = config_text(body)?;
    let r = running(ctx)?;
    match crate::plan::load_text_in(&text, r.path.parent()) {
        Ok(plan) => {
            let restart = crate::runtime::restart_only(&r.plan, &plan);
            Ok((
                200,
                json!({
                    "valid": true,
                    "apis": plan.table_api_count(),
                    "routes": plan.routes.len(),
                    "upstreams": plan.upstreams.len(),
                    "reloadable": restart.is_empty(),
                    "restart_needed_for": restart,
                }),
            ))
        }
        Err(errors) => Err((
            400,
            json!({
                "valid": false,
                "message": "The config has errors",
                "errors": errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }),
        )),
    }
}

/// The config text with every secret value replaced (comments and layout
/// kept). Text that does not parse is not shown at all.
fn redact(text: &str) -> String {
    fn walk(item: &mut toml_edit::Item) {
        match item {
            toml_edit::Item::Table(t) => walk_table(t),
            toml_edit::Item::ArrayOfTables(a) => a.iter_mut().for_each(walk_table),
            toml_edit::Item::Value(v) => walk_value(v),
            toml_edit::Item::None => {}
        }
    }
    fn walk_table(t: &mut toml_edit::Table) {
        for (k, v) in t.iter_mut() {
            if SECRET_KEYS.contains(&k.get()) {
                *v = toml_edit::value("(redacted)");
            } else {
                walk(v);
            }
        }
    }
    fn walk_value(v: &mut toml_edit::Value) {
        match v {
            toml_edit::Value::InlineTable(t) => {
                for (k, v) in t.iter_mut() {
                    if SECRET_KEYS.contains(&k.get()) {
                        *v = toml_edit::Value::from("(redacted)");
                    } else {
                        walk_value(v);
                    }
                }
            }
            toml_edit::Value::Array(a) => a.iter_mut().for_each(walk_value),
            _ => {}
        }
    }
    match text.parse::<toml_edit::DocumentMut>() {
        Ok(mut doc) => {
            walk_table(doc.as_table_mut());
            doc.to_string()
        }
        Err(_) => "(the config does not parse, and is not shown)".to_string(),
    }
}

/// `GET /status`: generation, shards, listeners, upstream targets.
fn status(ctx: &Context) -> Answer {
    let r = running(ctx)?;
    let merged = super::scrape(&ctx.inboxes);
    let shards: Vec<Value> = merged
        .shards
        .iter()
        .map(|(id, c)| {
            json!({
                "shard": id,
                "open_connections": c.open,
                "idle_connections": c.idle,
                "parked_connections": c.parked,
                "accepted": c.accepted,
            })
        })
        .collect();
    let answering: Vec<usize> = merged.shards.iter().map(|(id, _)| *id).collect();
    let listeners: Vec<Value> = r
        .listeners
        .iter()
        .map(|(a, tls)| json!({ "address": a.to_string(), "tls": tls }))
        .collect();
    let targets: Vec<Value> = merged
        .targets
        .iter()
        .map(|t| {
            json!({
                "upstream": t.t.upstream,
                "target": t.t.target,
                "healthy": t.cooling_shards == 0,
                "cooling_down_on_shards": t.cooling_shards,
                "in_flight": t.t.in_flight,
                "idle_connections": t.t.idle,
                "connects": t.t.connects,
                "connect_failures": t.t.connect_failures,
            })
        })
        .collect();
    Ok((
        200,
        json!({
            "generation": r.generation,
            "config": r.path.display().to_string(),
            "version": ctx.version,
            "shards_expected": merged.shards_expected,
            "shards_answering": answering,
            "shards": shards,
            "listeners": listeners,
            "upstream_targets": targets,
        }),
    ))
}

/// `POST /stages/API/STAGE/canary`: promote the stage's canary, roll it
/// back, or set its share of traffic, as an edit of the running config that
/// is then applied as `PUT /config` applies a config (and written to the
/// file). The main thread makes the edit on the text it serves, so that
/// two changes asked at once (two stages' canaries, or a canary and a
/// `PUT /config`) do not start from the same text, the second undoing the
/// first.
fn canary(ctx: &Context, who: &str, api: &str, stage: &str, body: &[u8]) -> Answer {
    use crate::config::canary::{promote_canary, rollback_canary, set_canary_percent};
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| error(400, &format!("the body is not JSON: {e}")))?;
    let (api_name, stage_name) = (api.to_string(), stage.to_string());
    let edit: crate::runtime::ConfigEdit = match (
        v.get("action").and_then(Value::as_str),
        v.get("percent"),
    ) {
        (Some("promote"), None) => {
            Box::new(move |text: &str| promote_canary(text, &api_name, &stage_name))
        }
        (Some("rollback"), None) => {
            Box::new(move |text: &str| rollback_canary(text, &api_name, &stage_name))
        }
        (None, Some(p)) => match p.as_f64() {
            Some(p) => {
                Box::new(move |text: &str| set_canary_percent(text, &api_name, &stage_name, p))
            }
            None => {
                return Err(error(400, "\"percent\" must be a number from 0 to 100"));
            }
        },
        _ => return Err(error(
            400,
            "the body is {\"action\": \"promote\"}, {\"action\": \"rollback\"} or {\"percent\": N}",
        )),
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    ask(
        ctx,
        MainRequest::Edit {
            who: format!("{who} (canary of stage {stage:?} of api {api:?})"),
            edit,
            reply: tx,
        },
    )?;
    let generation = match rx.recv_timeout(super::RELOAD_TIMEOUT) {
        Ok(Err(why)) => return Err(error(400, &why)),
        Ok(Ok(reloaded)) => answer_of(
            Ok(reloaded),
            "The canary was not changed; the gateway serves the config it had",
        )?,
        Err(e) => answer_of::<u64>(Err(e), "")?,
    };
    Ok((200, json!({ "generation": generation })))
}

/// The keys file the running config names.
fn keys_file(r: &Running) -> Result<std::path::PathBuf, (u16, Value)> {
    let raw = crate::config::parse(&r.text)
        .map_err(|_| error(500, "the running config does not parse"))?;
    let file = raw.server.api_keys_file.ok_or_else(|| {
        error(
            404,
            "the running config names no keys file (server.api_keys_file)",
        )
    })?;
    Ok(crate::config::resolve_path(&file, r.path.parent()))
}

/// `GET /keys`: every key of the keys file, without hashes.
fn list_keys(ctx: &Context) -> Answer {
    let r = running(ctx)?;
    let file = keys_file(&r)?;
    let keys = crate::policy::api_key::cli::list(&file).map_err(|e| error(500, &e))?;
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            json!({
                "name": k.name,
                "id": k.id,
                "enabled": k.enabled,
                "usage_plan": k.usage_plan,
                "created": k.created,
                "revoked": k.revoked,
            })
        })
        .collect();
    Ok((200, json!({ "keys": keys })))
}

/// Creates, enables, disables or revokes a key, then reloads; the main
/// thread puts the file back when the reload is refused.
fn change_key(ctx: &Context, who: &str, change: KeyChange) -> Answer {
    let creating = matches!(change, KeyChange::Create { .. });
    let (tx, rx) = crossbeam_channel::bounded(1);
    ask(
        ctx,
        MainRequest::Keys {
            who: who.to_string(),
            change,
            reply: tx,
        },
    )?;
    let a = answer_of(
        rx.recv_timeout(super::RELOAD_TIMEOUT),
        "The keys were not changed; the gateway serves the ones it had",
    )?;
    let mut v = json!({ "generation": a.generation });
    if let Some((id, key)) = a.created {
        v["id"] = json!(id);
        v["key"] = json!(key);
    }
    if let Some((_, errors)) = a.partly.split_first() {
        // The change is in the file and serves on some shards: the 500
        // says which did not, and carries a created key, shown only here.
        v["message"] = json!(crate::runtime::PARTLY);
        v["errors"] = json!(errors);
        return Err((500, v));
    }
    Ok((if creating { 201 } else { 200 }, v))
}

/// The running config's portal sign-up registry.
fn signup_file(ctx: &Context) -> Result<std::path::PathBuf, (u16, Value)> {
    let r = running(ctx)?;
    r.plan
        .portal
        .signup
        .map(|s| s.file)
        .ok_or_else(|| error(404, "the running config has no [portal.signup]"))
}

/// `GET /portal/signups`: every sign-up of the developer portal.
fn portal_signups(ctx: &Context) -> Answer {
    let file = signup_file(ctx)?;
    let all = crate::portal::keys::list(&file).map_err(|e| error(500, &e))?;
    let list: Vec<Value> = all
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "id": s.id,
                "usage_plan": s.usage_plan,
                "label": s.label,
                "address": s.address,
                "created": s.created,
                "state": s.state,
            })
        })
        .collect();
    Ok((200, json!({ "signups": list })))
}

/// `POST /portal/signups/NAME/approve|refuse`: decides a pending sign-up.
fn portal_decide(ctx: &Context, who: &str, name: &str, approve: bool) -> Answer {
    let file = signup_file(ctx)?;
    let s = crate::portal::keys::decide(&ctx.main, &file, name, approve, who)
        .map_err(|(status, m)| error(status, &m))?;
    Ok((200, json!({ "name": s.name, "state": s.state })))
}

/// The value of `name` in a query string, as sent (callers decode what
/// may be encoded).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `GET /openapi?api=NAME[&stage=S][&extensions=false]`: the OpenAPI 3.0
/// document of one API (or one stage of it) of the running config, as
/// `coregate openapi export` writes it (docs/openapi.md). NAME and S are
/// percent-decoded.
fn openapi(ctx: &Context, query: &str) -> Answer {
    use crate::openapi::export::ExportError;
    let r = running(ctx)?;
    let Some(api) = query_value(query, "api").map(query_value_decode) else {
        return Err(error(400, "name the API: /openapi?api=NAME"));
    };
    let extensions = query_value(query, "extensions") != Some("false");
    let mut raw = crate::config::parse(&r.text)
        .map_err(|_| error(500, "the running config does not parse"))?;
    raw.base_dir = r.path.parent().map(std::path::Path::to_path_buf);
    let stage = query_value(query, "stage").map(query_value_decode);
    let opts = crate::openapi::export::Options { extensions };
    crate::plan::openapi::export(raw, &r.text, &api, stage.as_deref(), opts)
        .map(|doc| (200, doc))
        .map_err(|e| match e {
            ExportError::NotFound(m) => error(404, &m),
            ExportError::Refused(m) => error(400, &m),
        })
}

/// `GET /usage?key=K&from=DAY&to=DAY`: what `coregate usage` prints, as
/// JSON: requests per key per day, and each quota's use this period.
fn usage(ctx: &Context, query: &str) -> Answer {
    let r = running(ctx)?;
    let opts = crate::observe::usage_report::Options {
        plan: Some(r.plan),
        data_dir: None,
        key: query_value(query, "key").map(query_value_decode),
        from: query_value(query, "from").map(str::to_string),
        to: query_value(query, "to").map(str::to_string),
    };
    let mut out = Vec::new();
    crate::observe::usage_report::run(&opts, &mut out).map_err(|e| {
        error(
            400,
            &e.replace("--key", "key")
                .replace("--from", "from")
                .replace("--to", "to"),
        )
    })?;
    let text = String::from_utf8_lossy(&out);
    let mut tables = text.split("\n\n").map(tsv_to_json);
    Ok((
        200,
        json!({
            "days": tables.next().unwrap_or(Value::Array(Vec::new())),
            "quotas": tables.next().unwrap_or(Value::Array(Vec::new())),
        }),
    ))
}

/// A tab-separated table (a header line, then rows) as an array of objects;
/// whole numbers become numbers.
fn tsv_to_json(table: &str) -> Value {
    let mut lines = table.lines().filter(|l| !l.is_empty());
    let Some(header) = lines.next() else {
        return Value::Array(Vec::new());
    };
    let names: Vec<&str> = header.split('\t').collect();
    Value::Array(
        lines
            .map(|l| {
                let mut o = serde_json::Map::new();
                for (n, v) in names.iter().zip(l.split('\t')) {
                    let v = match v.parse::<u64>() {
                        Ok(n) => json!(n),
                        Err(_) => json!(v),
                    };
                    o.insert(n.to_string(), v);
                }
                Value::Object(o)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::{allowed, key_path, redact, tsv_to_json};
    use crate::http::method::Method;

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        let text = "# keys\n[[api_keys]]\nname = \"a\"\nhash = \"s1:abc\"\n\n[[authorizers]]\nname = \"iam\"\n[authorizers.sigv4]\ncredentials = [{ access_key_id = \"AKID\", secret_access_key = \"shh\", session_token = \"sessvalue\" }]\n";
        let out = redact(text);
        assert!(out.contains("# keys"), "{out}");
        assert!(out.contains("name = \"a\""), "{out}");
        assert!(out.contains("AKID"), "{out}");
        for secret in ["s1:abc", "shh", "sessvalue"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert_eq!(out.matches("(redacted)").count(), 3, "{out}");
        assert!(redact("not = [toml").contains("does not parse"));
    }

    /// A reload the shards refused is 400; one that serves on some shards
    /// only is the gateway's fault, 500, with the shards' errors.
    #[test]
    fn refusals_and_partial_installs_have_their_status() {
        use super::refused;
        use crate::runtime::{PARTLY, STOPPING};
        let (status, body) = refused(vec!["server.x: bad".into()], "Refused");
        assert_eq!(
            (status, body["errors"][0].as_str()),
            (400, Some("server.x: bad"))
        );
        let (status, body) = refused(vec![PARTLY.into(), "shard 1 is not running".into()], "R");
        assert_eq!(status, 500);
        assert_eq!(body["message"], PARTLY);
        assert_eq!(
            body["errors"],
            serde_json::json!(["shard 1 is not running"])
        );
        assert_eq!(refused(vec![STOPPING.into()], "R").0, 503);
    }

    #[test]
    fn canary_paths() {
        use super::canary_path;
        assert_eq!(
            canary_path("/stages/pets/prod/canary"),
            Some(("pets", "prod"))
        );
        assert_eq!(canary_path("/stages/pets/canary"), None);
        assert_eq!(canary_path("/stages/pets/a/b/canary"), None);
        assert_eq!(
            allowed("/stages/pets/prod/canary"),
            Some(&[Method::Post][..])
        );
    }

    #[test]
    fn key_paths_and_methods() {
        assert_eq!(key_path("/keys/alice"), Some(("alice", None)));
        assert_eq!(
            key_path("/keys/alice/enable"),
            Some(("alice", Some("enable")))
        );
        assert_eq!(key_path("/keys/alice/other"), None);
        assert_eq!(key_path("/keys/"), None);
        assert_eq!(allowed("/keys/alice"), Some(&[Method::Delete][..]));
        assert_eq!(allowed("/config"), Some(&[Method::Get, Method::Put][..]));
        assert_eq!(allowed("/nope"), None);
    }

    #[test]
    fn tables_become_objects() {
        let v = tsv_to_json("key\tday\trequests\na\t2026-01-01\t3\n");
        assert_eq!(
            v,
            serde_json::json!([{"key": "a", "day": "2026-01-01", "requests": 3}])
        );
    }
}
