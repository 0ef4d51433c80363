//! Self-service API keys (docs/portal.md, "API keys"): sign-up, a
//! developer's view of their key (state, usage, quota left) and its
//! revocation, and the registry of sign-ups the admin API approves or
//! refuses pending keys in.
//!
//! The keys themselves are made, disabled and enabled by the main thread
//! in the keys file `server.api_keys_file` names, exactly as `POST /keys`
//! of the admin API makes them ([`crate::runtime::MainRequest::Keys`]):
//! stored as salted hashes, and the gateway reloaded. The registry
//! (`portal.signup.file`) holds no secret: for each key the portal made,
//! its name and id, usage plan, the developer's label, where the sign-up
//! came from, and its state. A developer comes back by presenting the key,
//! which is looked up by its id and checked against its stored hash.
//!
//! Sign-ups go through one thread, the desk, which holds the rate limits
//! (per source address and overall, over the last hour) and makes one key
//! at a time. Edits of the registry file take an exclusive `flock` on a
//! lock file beside it, so the desk and the admin API's threads never
//! interleave theirs.

use super::response::Response;
use crate::runtime::{KeyChange, MainRequest, Running};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The rate limits' window.
const WINDOW: Duration = Duration::from_secs(3600);
/// The longest label a developer may give.
const MAX_LABEL: usize = 100;
/// What the names of the keys the portal makes start with.
pub const NAME_PREFIX: &str = "portal-";

// === the registry ===

/// A key's state in the registry.
pub const PENDING: &str = "pending";
pub const ACTIVE: &str = "active";
pub const REFUSED: &str = "refused";
pub const REVOKED: &str = "revoked";

/// One sign-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signup {
    /// The key's name in the keys file.
    pub name: String,
    /// The key's public id.
    pub id: String,
    pub usage_plan: String,
    /// What the developer called themselves or their application.
    pub label: String,
    /// The source address of the sign-up.
    pub address: String,
    pub created: String,
    /// `pending`, `active`, `refused` or `revoked`.
    pub state: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    signups: Vec<Signup>,
}

/// Every sign-up of the registry at `file` (none when it does not exist).
pub fn list(file: &Path) -> Result<Vec<Signup>, String> {
    let text = match crate::config::read_text(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    toml::from_str::<RegistryFile>(&text)
        .map(|r| r.signups)
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// An exclusive lock on `<file>.lock`, held until dropped (closing the
/// file releases it).
struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    fn take(file: &Path) -> Result<Lock, String> {
        use std::os::fd::AsRawFd;
        let mut name = file.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; it blocks until
        // the lock is free and has no other effect.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Lock(f))
    }
}

/// Applies `edit` to the registry under its lock and writes it back.
fn edit<T>(
    file: &Path,
    edit: impl FnOnce(&mut Vec<Signup>) -> Result<T, String>,
) -> Result<T, String> {
    let _lock = Lock::take(file)?;
    let mut signups = list(file)?;
    let out = edit(&mut signups)?;
    let text = toml::to_string(&RegistryFile { signups })
        .map_err(|e| format!("cannot write the registry: {e}"))?;
    let text = format!(
        "# coregate developer portal: sign-ups (docs/portal.md). No secrets here: \
         the keys are in the keys file, hashed.\n{text}"
    );
    crate::config::write_atomic(file, &text)?;
    Ok(out)
}

/// Sets the state of sign-up `name` to `to` if it is in one of `from`;
/// returns the sign-up as it was.
pub fn set_state(file: &Path, name: &str, from: &[&str], to: &str) -> Result<Signup, String> {
    edit(file, |all| {
        let Some(s) = all.iter_mut().find(|s| s.name == name) else {
            return Err(format!("no sign-up named {name:?}"));
        };
        if !from.contains(&s.state.as_str()) {
            return Err(format!(
                "sign-up {name:?} is {}, not {}",
                s.state,
                from.join(" or ")
            ));
        }
        let was = s.clone();
        s.state = to.to_string();
        Ok(was)
    })
}

// === the desk: sign-ups one at a time, rate-limited ===

/// A sign-up for the desk.
pub struct DeskRequest {
    peer: IpAddr,
    plan: String,
    label: String,
    reply: Sender<Response>,
}

/// Sign-ups over the last hour: overall and per source address.
#[derive(Default)]
struct Limits {
    all: VecDeque<Instant>,
    by_address: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Limits {
    /// Counts a sign-up from `peer` unless a limit is reached; Err is the
    /// seconds until one frees up.
    fn admit(&mut self, peer: IpAddr, per_address: u32, overall: u32) -> Result<(), u64> {
        let now = Instant::now();
        let expire = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                q.pop_front();
            }
        };
        expire(&mut self.all);
        self.by_address.retain(|_, q| {
            expire(q);
            !q.is_empty()
        });
        let wait = |q: &VecDeque<Instant>| {
            q.front()
                .map(|t| (WINDOW.saturating_sub(now.duration_since(*t))).as_secs() + 1)
                .unwrap_or(1)
        };
        if self.all.len() >= overall as usize {
            return Err(wait(&self.all));
        }
        let mine = self.by_address.entry(peer).or_default();
        if mine.len() >= per_address as usize {
            return Err(wait(mine));
        }
        mine.push_back(now);
        self.all.push_back(now);
        Ok(())
    }
}

/// The desk's thread: runs until every sender is gone.
pub fn desk(main: Sender<MainRequest>, requests: Receiver<DeskRequest>) {
    let mut limits = Limits::default();
    for r in requests {
        let resp = sign_up(&main, &mut limits, r.peer, &r.plan, &r.label);
        let _ = r.reply.send(resp);
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::error(status, message)
}

fn sign_up(
    main: &Sender<MainRequest>,
    limits: &mut Limits,
    peer: IpAddr,
    plan: &str,
    label: &str,
) -> Response {
    let running = match super::running(main) {
        Ok(r) => r,
        Err((s, m)) => return error(s, &m),
    };
    let Some(su) = &running.plan.portal.signup else {
        return error(404, "Sign-up is not open on this portal");
    };
    if let Err(wait) = limits.admit(peer, su.per_address_per_hour, su.per_hour) {
        let mut r = error(429, "Too many sign-ups: try again later");
        r.headers.push_str(&format!("retry-after: {wait}\r\n"));
        return r;
    }
    if !su.plans.iter().any(|p| p == plan) {
        return error(
            403,
            &format!("The usage plan {plan:?} is not open for sign-up"),
        );
    }
    let label = label.trim();
    if label.is_empty() || label.chars().count() > MAX_LABEL || label.chars().any(char::is_control)
    {
        return error(
            400,
            &format!("\"label\": 1 to {MAX_LABEL} characters, no control characters"),
        );
    }
    let mut random = [0u8; 5];
    if let Err(e) = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
    {
        return error(500, &format!("cannot read /dev/urandom: {e}"));
    }
    let mut name = String::from(NAME_PREFIX);
    for b in random {
        name.push_str(&format!("{b:02x}"));
    }
    let who = format!("portal sign-up from {peer}");
    let pending = su.approval.iter().any(|p| p == plan);
    let created = match super::change_key(
        main,
        &who,
        KeyChange::Create {
            name: name.clone(),
            usage_plan: Some(plan.to_string()),
        },
    ) {
        Ok(a) => a.created,
        Err(e) => {
            crate::log!("error", "{who}: the key was not made: {e}");
            return error(
                500,
                "The key could not be made; the operator will find why in the gateway's log",
            );
        }
    };
    let Some((id, key)) = created else {
        return error(500, "The key could not be made");
    };
    // A key that waits for approval is disabled before anyone knows it.
    let undo = |why: String| {
        crate::log!("error", "{who}: {why}; disabling key {name:?}");
        if let Err(e) = super::change_key(main, &who, KeyChange::Disable(name.clone())) {
            crate::log!("error", "{who}: key {name:?} could not be disabled: {e}");
        }
        error(
            500,
            "The key could not be made; the operator will find why in the gateway's log",
        )
    };
    if pending {
        if let Err(e) = super::change_key(main, &who, KeyChange::Disable(name.clone())) {
            return undo(format!("the pending key could not be disabled: {e}"));
        }
    }
    let entry = Signup {
        name: name.clone(),
        id: id.clone(),
        usage_plan: plan.to_string(),
        label: label.to_string(),
        address: peer.to_string(),
        created: crate::policy::api_key::cli::now_rfc3339(),
        state: if pending { PENDING } else { ACTIVE }.to_string(),
    };
    if let Err(e) = edit(&su.file, |all| {
        all.push(entry);
        Ok(())
    }) {
        return undo(format!("the sign-up registry was not written: {e}"));
    }
    crate::log!(
        "info",
        "{who}: key {name:?} ({id}) on usage plan {plan:?}, {}",
        if pending {
            "waiting for approval"
        } else {
            "active"
        }
    );
    Response::json(
        201,
        &json!({
            "key": key,
            "name": name,
            "id": id,
            "usage_plan": plan,
            "state": if pending { PENDING } else { ACTIVE },
        }),
    )
}

/// `POST /signup {"plan": P, "label": L}`: hands the sign-up to the desk.
pub(super) fn signup(desk: &Sender<DeskRequest>, peer: IpAddr, body: &[u8]) -> Response {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(400, &format!("the body is not JSON: {e}")),
    };
    let (Some(plan), Some(label)) = (
        v.get("plan").and_then(Value::as_str),
        v.get("label").and_then(Value::as_str),
    ) else {
        return error(400, "the body needs \"plan\" and \"label\" (strings)");
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let asked = desk.send(DeskRequest {
        peer,
        plan: plan.to_string(),
        label: label.to_string(),
        reply: tx,
    });
    if asked.is_err() {
        return error(503, "The sign-up desk is not running");
    }
    rx.recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| error(503, "The sign-up took too long; try again"))
}

// === a developer's key ===

/// The key a body's `"key"` names, checked against its stored hash: the
/// keys file's entry (enabled or not). One answer for an unknown id and a
/// wrong secret.
fn presented(r: &Running, body: &[u8]) -> Result<crate::policy::api_key::ApiKey, Response> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| error(400, &format!("the body is not JSON: {e}")))?;
    let Some(key) = v.get("key").and_then(Value::as_str) else {
        return Err(error(400, "the body needs \"key\": your API key"));
    };
    let unknown = || error(404, "No such key (check that you copied all of it)");
    let Some(p) = crate::policy::api_key::parse_key(key.trim().as_bytes()) else {
        return Err(unknown());
    };
    let raw = crate::config::parse(&r.text)
        .map_err(|_| error(500, "the running config does not parse"))?;
    let Some(file) = raw.server.api_keys_file else {
        return Err(unknown());
    };
    let file = crate::config::resolve_path(&file, r.path.parent());
    let keys = crate::policy::api_key::cli::list(&file).map_err(|e| {
        crate::log!("error", "portal: {e}");
        error(500, "The keys cannot be read")
    })?;
    let found = keys.into_iter().find(|k| k.id.as_bytes() == p.id);
    match found {
        Some(k) if k.hash.verify(&p.secret) => Ok(k),
        _ => Err(unknown()),
    }
}

/// `POST /key {"key": K}`: the key's name, plan, state, and usage.
pub(super) fn show(r: &Running, body: &[u8]) -> Response {
    let k = match presented(r, body) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let signup = r
        .plan
        .portal
        .signup
        .as_ref()
        .and_then(|su| list(&su.file).ok())
        .and_then(|all| all.into_iter().find(|s| s.name == k.name));
    let state = match (&signup, k.enabled) {
        (Some(s), _) => s.state.clone(),
        (None, true) => ACTIVE.to_string(),
        (None, false) => "disabled".to_string(),
    };
    let (days, quota, usage_error) = usage(r, &k.name);
    Response::json(
        200,
        &json!({
            "name": k.name,
            "id": k.id,
            "usage_plan": k.usage_plan,
            "enabled": k.enabled,
            "state": state,
            "created": k.created,
            "issued_by_portal": signup.is_some(),
            "days": days,
            "quota": quota,
            "usage_error": usage_error,
        }),
    )
}

/// The key's requests per day and its quota this period, from the usage
/// store (`crate::observe::usage_report`).
fn usage(r: &Running, name: &str) -> (Value, Value, Value) {
    let opts = crate::observe::usage_report::Options {
        plan: Some(r.plan.clone()),
        data_dir: None,
        key: Some(name.to_string()),
        from: None,
        to: None,
    };
    let mut out = Vec::new();
    if let Err(e) = crate::observe::usage_report::run(&opts, &mut out) {
        return (json!([]), Value::Null, json!(e));
    }
    let text = String::from_utf8_lossy(&out);
    let mut tables = text.split("\n\n");
    let rows = |t: Option<&str>| -> Vec<Vec<String>> {
        t.unwrap_or("")
            .lines()
            .filter(|l| !l.is_empty())
            .skip(1)
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    };
    let days: Vec<Value> = rows(tables.next())
        .into_iter()
        .filter(|c| c.len() == 4)
        .map(|c| json!({ "day": c[2], "requests": c[3].parse::<u64>().unwrap_or(0) }))
        .collect();
    let quota = rows(tables.next())
        .into_iter()
        .find(|c| c.len() == 5)
        .map(|c| {
            let used = c[3].parse::<u64>().unwrap_or(0);
            let limit = c[4].parse::<u64>().unwrap_or(0);
            json!({
                "plan": c[1],
                "period": c[2],
                "used": used,
                "limit": limit,
                "left": limit.saturating_sub(used),
            })
        })
        .unwrap_or(Value::Null);
    (Value::Array(days), quota, Value::Null)
}

/// `POST /revoke {"key": K}`: revokes a key the portal made, for good, as
/// `DELETE /keys/{name}` does (a tombstone in the keys file: the key keeps
/// its place, so usage counters stay exact, and is refused from then on).
pub(super) fn revoke(main: &Sender<MainRequest>, r: &Running, body: &[u8], who: &str) -> Response {
    let k = match presented(r, body) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let Some(su) = &r.plan.portal.signup else {
        return error(403, "Keys are not managed on this portal: ask the operator");
    };
    let was = match set_state(&su.file, &k.name, &[ACTIVE, PENDING], REVOKED) {
        Ok(was) => was,
        Err(m) if m.starts_with("no sign-up") => {
            return error(
                403,
                "This key was not issued by the portal: ask the operator to revoke it",
            )
        }
        Err(m) => return error(409, &m),
    };
    if let Err(e) = super::change_key(main, who, KeyChange::Revoke(k.name.clone())) {
        // Put the registry back: the key is as it was.
        let _ = set_state(&su.file, &k.name, &[REVOKED], &was.state);
        crate::log!("error", "{who}: key {:?} was not revoked: {e}", k.name);
        return error(500, "The key could not be revoked; try again");
    }
    crate::log!("info", "{who} revoked portal key {:?}", k.name);
    Response::json(200, &json!({ "name": k.name, "state": REVOKED }))
}

/// For the admin API: approve (`true`) or refuse a pending sign-up named
/// `name` in the registry `file`. Approval enables its key.
pub fn decide(
    main: &Sender<MainRequest>,
    file: &Path,
    name: &str,
    approve: bool,
    who: &str,
) -> Result<Signup, (u16, String)> {
    let to = if approve { ACTIVE } else { REFUSED };
    let was = set_state(file, name, &[PENDING], to).map_err(|m| {
        let status = if m.starts_with("no sign-up") {
            404
        } else {
            409
        };
        (status, m)
    })?;
    if approve {
        if let Err(e) = super::change_key(main, who, KeyChange::Enable(name.to_string())) {
            let _ = set_state(file, name, &[to], PENDING);
            return Err((500, format!("the key was not enabled: {e}")));
        }
    }
    crate::log!(
        "info",
        "{who} {} portal sign-up {name:?}",
        if approve { "approved" } else { "refused" }
    );
    let mut now = was;
    now.state = to.to_string();
    Ok(now)
}

#[cfg(test)]
mod tests {
    // Unwraps on values the test made: a failure is the test's verdict.
    use super::Limits;
    use std::net::IpAddr;

    #[test]
    fn limits_per_address_and_overall() {
        let mut l = Limits::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(l.admit(a, 2, 3).is_ok());
        assert!(l.admit(a, 2, 3).is_ok());
        let wait = l.admit(a, 2, 3).unwrap_err();
        assert!(wait > 3500 && wait <= 3601, "{wait}");
        assert!(l.admit(b, 2, 3).is_ok());
        assert!(l.admit(c, 2, 3).is_err(), "the overall limit");
    }
}
