//! The usage report of `coregate usage` and the admin API's `GET /usage`:
//! recorded usage per key per day from the store, and where the config
//! gives a key a quota, what is used of it this period; and the
//! dashboard's table of the keys with the most use ([`top_keys`]).

use crate::policy::usage::clock::{self, format_day, parse_day};
use crate::policy::usage::store::Store;
use crate::policy::usage::UsagePlans;
use std::path::PathBuf;

/// Options of `coregate usage`.
#[derive(Debug, Default)]
pub struct Options {
    pub plan: Option<crate::plan::Plan>,
    pub data_dir: Option<PathBuf>,
    pub key: Option<String>,
    /// Inclusive days.
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Runs the command; Err is the message for stderr (exit 1).
pub fn run(opts: &Options, out: &mut impl std::io::Write) -> Result<(), String> {
    let dir = match (&opts.data_dir, &opts.plan) {
        (Some(d), _) => d.clone(),
        (None, Some(p)) => p.policies.usage.data_dir.clone().ok_or(
            "the config sets no server.data_dir, so no usage is recorded (or give --data-dir)",
        )?,
        (None, None) => return Err("give --config or --data-dir".into()),
    };
    if let (Some(want), Some(plan)) = (&opts.key, &opts.plan) {
        let u = &plan.policies.usage;
        if !u.key_ids.iter().chain(&u.key_names).any(|k| k == want) {
            return Err(format!(
                "--key {want:?} is no key of this config (its keys: {}); give a key's name or id",
                if u.key_names.is_empty() {
                    "none".to_string()
                } else {
                    u.key_names.join(", ")
                }
            ));
        }
    }
    let today = clock::today();
    let day = |s: &Option<String>, default: i64, what: &str| -> Result<i64, String> {
        match s {
            None => Ok(default),
            Some(s) => parse_day(s).ok_or(format!("--{what} {s:?} is not a date (YYYY-MM-DD)")),
        }
    };
    let from = day(&opts.from, today - 30, "from")?;
    let to = day(&opts.to, today, "to")?;
    if to < from {
        return Err("--to is before --from".into());
    }
    let store = Store::open_read_only(&dir)?;
    if let (Some(want), None) = (&opts.key, &opts.plan) {
        // Without a config the keys are known only by what was recorded.
        if store
            .rows(Some(want), i64::MIN / 2, i64::MAX / 2)?
            .is_empty()
        {
            return Err(format!(
                "--key {want:?}: no usage of such a key is recorded in {} (give a key's name or id, or --config to check it against the config's keys)",
                dir.join(crate::policy::usage::store::FILE_NAME).display()
            ));
        }
    }
    let rows = store.rows(opts.key.as_deref(), from, to + 1)?;
    let w = |out: &mut dyn std::io::Write, s: String| {
        out.write_all(s.as_bytes())
            .map_err(|e| format!("cannot write output: {e}"))
    };
    w(out, "key\tid\tday\trequests\n".into())?;
    for r in &rows {
        w(
            out,
            format!(
                "{}\t{}\t{}\t{}\n",
                r.key_name,
                r.key_id,
                format_day(r.day),
                r.count
            ),
        )?;
    }
    if let Some(plan) = &opts.plan {
        let quotas = quota_uses(&plan.policies.usage, &store, opts.key.as_deref(), today)?;
        if !quotas.is_empty() {
            w(out, "\nkey\tplan\tperiod\tused\tlimit\n".into())?;
        }
        for q in &quotas {
            w(
                out,
                format!(
                    "{}\t{}\t{}..{}\t{}\t{}\n",
                    q.key,
                    q.plan,
                    format_day(q.start),
                    format_day(q.end - 1),
                    q.used,
                    q.limit
                ),
            )?;
        }
    }
    Ok(())
}

/// One key's quota in the period that holds `today`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUse {
    pub key: String,
    pub key_id: String,
    pub plan: String,
    /// The period's days, `start..end`.
    pub start: i64,
    pub end: i64,
    /// Requests recorded in the period (what the shards have not reported
    /// yet, at most one flush interval's, is not in it).
    pub used: u64,
    pub limit: u64,
}

/// The quota use of every key of `u` whose plan has a quota (or only of
/// `key`, by name or id), in config order.
pub fn quota_uses(
    u: &UsagePlans,
    store: &Store,
    key: Option<&str>,
    today: i64,
) -> Result<Vec<QuotaUse>, String> {
    let mut out = Vec::new();
    for k in 0..u.key_plan.len() {
        let (Some(Some(p)), Some(id), Some(name)) =
            (u.key_plan.get(k), u.key_ids.get(k), u.key_names.get(k))
        else {
            continue;
        };
        if key.is_some_and(|want| want != id && want != name) {
            continue;
        }
        let Some(plan) = u.plans.get(*p as usize) else {
            continue;
        };
        let Some(q) = plan.quota else { continue };
        let start = q.period.start(today);
        let end = q.period.end(start);
        let used = store.sum(id, start, end)?;
        // The offset applies to the plan's first period only.
        let limit = match store.recorded_first_period(&plan.name)? {
            Some(first) if first == start => q.limit.saturating_sub(q.offset),
            _ => q.limit,
        };
        out.push(QuotaUse {
            key: name.clone(),
            key_id: id.clone(),
            plan: plan.name.clone(),
            start,
            end,
            used,
            limit,
        });
    }
    Ok(out)
}

/// One key's use, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUse {
    pub key: String,
    pub plan: Option<String>,
    /// Requests recorded today (UTC).
    pub today: u64,
    /// The key's quota this period, if its plan has one.
    pub quota: Option<QuotaUse>,
}

/// The `top` keys of `u` with the most use (quota used this period, then
/// requests today), from the store in `u.data_dir`; `Ok(None)` when the
/// config records no usage.
pub fn top_keys(u: &UsagePlans, top: usize) -> Result<Option<Vec<KeyUse>>, String> {
    let Some(dir) = &u.data_dir else {
        return Ok(None);
    };
    let store = Store::open_read_only(dir)?;
    let today = clock::today();
    let days = store.rows(None, today, today + 1)?;
    let mut quotas = quota_uses(u, &store, None, today)?;
    let mut keys: Vec<KeyUse> = Vec::with_capacity(u.key_ids.len());
    for (k, (id, name)) in u.key_ids.iter().zip(&u.key_names).enumerate() {
        let plan = u
            .key_plan
            .get(k)
            .copied()
            .flatten()
            .and_then(|p| u.plans.get(p as usize))
            .map(|p| p.name.clone());
        let quota = quotas
            .iter()
            .position(|q| &q.key_id == id)
            .map(|i| quotas.swap_remove(i));
        keys.push(KeyUse {
            key: name.clone(),
            plan,
            today: days
                .iter()
                .filter(|r| &r.key_id == id)
                .map(|r| r.count)
                .sum(),
            quota,
        });
    }
    keys.sort_by(|a, b| {
        let used = |k: &KeyUse| k.quota.as_ref().map_or(0, |q| q.used);
        (used(b), b.today)
            .cmp(&(used(a), a.today))
            .then_with(|| a.key.cmp(&b.key))
    });
    keys.truncate(top);
    Ok(Some(keys))
}
