//! The usage report of `coregate usage` and the admin API's `GET /usage`:
//! recorded usage per key per day from the store, and where the config
//! gives a key a quota, what is used of it this period.

use crate::policy::usage::clock::{self, format_day, parse_day};
use crate::policy::usage::store::Store;
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
        let u = &plan.policies.usage;
        let mut header = false;
        for k in 0..u.key_plan.len() as u32 {
            let (Some(Some(p)), Some(id), Some(name)) = (
                u.key_plan.get(k as usize),
                u.key_ids.get(k as usize),
                u.key_names.get(k as usize),
            ) else {
                continue;
            };
            if let Some(want) = &opts.key {
                if want != id && want != name {
                    continue;
                }
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
            if !header {
                header = true;
                w(out, "\nkey\tplan\tperiod\tused\tlimit\n".into())?;
            }
            w(
                out,
                format!(
                    "{name}\t{}\t{}..{}\t{used}\t{}\n",
                    plan.name,
                    format_day(start),
                    format_day(end - 1),
                    limit
                ),
            )?;
        }
    }
    Ok(())
}
