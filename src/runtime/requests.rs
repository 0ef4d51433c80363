//! The main thread's answers to the requests of the admin listener's and
//! the portal's threads ([`MainRequest`]): reloads, config edits, the
//! running config, key changes.

use super::{reload_config, KeyAnswer, KeyChange, MainRequest, Running, Server};

/// Answers one request of the admin listener's threads.
pub fn answer(server: &mut Server, path: &std::path::Path, text: &mut String, asked: MainRequest) {
    match asked {
        // The loop looks at the flags next.
        MainRequest::Signal => {}
        MainRequest::Reload {
            who,
            text: given,
            reply,
        } => {
            let write = given.is_some();
            let _ = reply.send(reload_config(server, path, text, &who, given, write));
        }
        MainRequest::Edit { who, edit, reply } => {
            let outcome = edit(text)
                .map(|edited| reload_config(server, path, text, &who, Some(edited), true));
            let _ = reply.send(outcome);
        }
        MainRequest::Running { reply } => {
            if let Some(plan) = server.plan() {
                let _ = reply.send(Running {
                    generation: server.generation(),
                    path: path.to_path_buf(),
                    text: text.clone(),
                    plan: plan.clone(),
                    listeners: server.listeners(),
                });
            }
        }
        MainRequest::Keys { who, change, reply } => {
            let _ = reply.send(change_keys(server, path, text, &who, change));
        }
    }
}

/// Changes the API keys file the running config names, then reloads the
/// running config (not the file on disk, which may hold edits nobody has
/// asked to apply). A refused reload puts the keys file back as it was; one
/// that reached only some shards keeps it, and is answered with the change
/// (a created key with it) and the reload's errors ([`KeyAnswer::partly`]).
fn change_keys(
    server: &mut Server,
    path: &std::path::Path,
    text: &mut String,
    who: &str,
    change: KeyChange,
) -> Result<KeyAnswer, Vec<String>> {
    use crate::policy::api_key::cli;
    let raw = crate::config::parse(text)
        .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let Some(file) = raw.server.api_keys_file else {
        return Err(vec![
            "server.api_keys_file: the running config names no keys file, so keys cannot be managed here"
                .to_string(),
        ]);
    };
    let file = crate::config::resolve_path(&file, path.parent());
    let before = crate::config::read_text(&file).ok();
    let mut created = None;
    let done = match &change {
        KeyChange::Create { name, usage_plan } => cli::create(&file, name, usage_plan.as_deref())
            .map(|k| {
                created = Some((k.id, k.full));
            }),
        KeyChange::Enable(name) => cli::set_enabled(&file, name, true),
        KeyChange::Disable(name) => cli::set_enabled(&file, name, false),
        KeyChange::Revoke(name) => cli::revoke(&file, name),
    };
    done.map_err(|e| vec![e])?;
    let what = match &change {
        KeyChange::Create { name, .. } => format!("created API key {name:?}"),
        KeyChange::Enable(name) => format!("enabled API key {name:?}"),
        KeyChange::Disable(name) => format!("disabled API key {name:?}"),
        KeyChange::Revoke(name) => format!("revoked API key {name:?}"),
    };
    let running = text.clone();
    match reload_config(server, path, text, who, Some(running), false) {
        Ok(generation) => {
            crate::log!("info", "{who} {what} in {}", file.display());
            Ok(KeyAnswer {
                generation,
                created,
                partly: Vec::new(),
            })
        }
        // The shards that answered serve the new keys: the file stays,
        // and a created key is handed over, or nobody could ever use it.
        Err(errors) if errors.first().is_some_and(|e| e == super::PARTLY) => {
            crate::log!(
                "info",
                "{who} {what} in {}, serving on some shards only",
                file.display()
            );
            Ok(KeyAnswer {
                generation: server.generation(),
                created,
                partly: errors,
            })
        }
        Err(errors) => {
            let restored = match &before {
                Some(old) => crate::config::write_atomic(&file, old),
                None => std::fs::remove_file(&file).map_err(|e| e.to_string()),
            };
            if let Err(e) = restored {
                crate::log!(
                    "error",
                    "{who}: the keys file {} could not be put back after a refused reload: {e}",
                    file.display()
                );
            }
            Err(errors)
        }
    }
}
