//! Named policy sets (`[[policies]]`, docs/policy-sets.md): before the
//! plan is compiled, each set an API, a stage or a route attaches by name
//! (`policies = ["a", "b"]`) is merged into that API's or route's raw
//! settings, as if written there. A setting the API or route writes itself
//! wins; among sets, a later one in the list wins. Tables are taken whole
//! (a set's `throttle` replaces nothing but an absent `throttle`), except
//! `mapping`, merged key by key. What each setting then means is what it
//! means when written directly (an API's settings are its routes'
//! defaults). A stage's sets give the stage API-level settings that
//! replace the API's (and its deployment's), as a stage's own `throttle`
//! and `cache` do; `plan::stages` applies them when it expands the stage.
//!
//! Errors in a set's settings are found by the compiler where the set is
//! attached; [`Sets::blame`] gives them the set's key
//! (`policies[1].throttle.rate`) and reports each once.

use crate::config::raw::mapping::RawMapping;
use crate::config::raw::policy_set::RawPolicySet;
use crate::config::raw::RawConfig;
use crate::config::ConfigError;

/// Where merged settings came from: (key where it was merged, set's key).
#[derive(Debug, Default)]
pub struct Sets {
    origins: Vec<(String, String)>,
}

impl Sets {
    /// Errors whose key is a merged setting are told at the set's key
    /// instead; duplicates (a set attached several times) are dropped.
    pub fn blame(&self, errors: Vec<ConfigError>) -> Vec<ConfigError> {
        let mut out: Vec<ConfigError> = Vec::with_capacity(errors.len());
        for mut e in errors {
            // A stage's mapping entry may come from its API, and the API's
            // from a set: a few steps at most.
            for _ in 0..4 {
                let origin = self.origins.iter().find(|(at, _)| {
                    e.key
                        .strip_prefix(at.as_str())
                        .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with('['))
                });
                let Some((at, from)) = origin else { break };
                e.key = format!("{from}{}", &e.key[at.len()..]);
            }
            if !out.contains(&e) {
                out.push(e);
            }
        }
        out
    }
}

/// Merges the attached sets into `raw`. Unknown set names, sets defined
/// twice and `cors` attached to a route are errors.
pub fn apply(raw: &mut RawConfig, errors: &mut Vec<ConfigError>) -> Sets {
    let mut sets = Sets::default();
    let mut names = std::collections::BTreeSet::new();
    for (i, s) in raw.policies.iter().enumerate() {
        if s.name.is_empty() {
            errors.push(ConfigError::new(
                format!("policies[{i}].name"),
                "must not be empty",
            ));
        } else if !names.insert(s.name.as_str()) {
            errors.push(ConfigError::new(
                format!("policies[{i}].name"),
                format!("policy set {:?} is defined twice", s.name),
            ));
        }
    }
    let policies = std::mem::take(&mut raw.policies);
    for (ai, api) in raw.apis.iter_mut().enumerate() {
        let akey = format!("apis[{ai}]");
        let attached = resolve(&policies, api.policies.as_deref(), &akey, errors);
        let mut m = Merge {
            at: &akey,
            sets: &attached,
            origins: &mut sets.origins,
        };
        m.take(&mut api.authorizer, |s| &s.authorizer, "authorizer");
        m.take(
            &mut api.api_key_required,
            |s| &s.api_key_required,
            "api_key_required",
        );
        m.take(&mut api.throttle, |s| &s.throttle, "throttle");
        m.take(&mut api.cache, |s| &s.cache, "cache");
        m.take(&mut api.cors, |s| &s.cors, "cors");
        m.take(&mut api.ip_rules, |s| &s.ip_rules, "ip_rules");
        m.mapping(&mut api.mapping);
        for (si, st) in api.stages.iter_mut().enumerate() {
            let skey = format!("{akey}.stages[{si}]");
            let own = resolve(&policies, st.policies.as_deref(), &skey, errors);
            stage(
                st,
                &skey,
                &own,
                &attached,
                api.mapping.as_ref(),
                &akey,
                &mut sets.origins,
            );
        }
        let ak = akey.as_str();
        let deployment_routes = api.deployments.iter_mut().enumerate().flat_map(|(di, d)| {
            d.routes
                .iter_mut()
                .enumerate()
                .map(move |(ri, r)| (format!("{ak}.deployments[{di}].routes[{ri}]"), r, false))
        });
        let routes = api
            .routes
            .iter_mut()
            .enumerate()
            .map(|(ri, r)| (format!("{akey}.routes[{ri}]"), r, true))
            .chain(deployment_routes);
        for (rkey, r, plain) in routes {
            let own = resolve(&policies, r.policies.as_deref(), &rkey, errors);
            for (j, (idx, s)) in own.iter().enumerate() {
                if s.cors.is_some() {
                    errors.push(ConfigError::new(
                        format!("{rkey}.policies[{j}]"),
                        format!("policy set {:?} (policies[{idx}]) has cors, which is set per API: attach it to the API", s.name),
                    ));
                }
            }
            let mut m = Merge {
                at: &rkey,
                sets: &own,
                origins: &mut sets.origins,
            };
            m.take(&mut r.authorizer, |s| &s.authorizer, "authorizer");
            m.take(
                &mut r.authorization_scopes,
                |s| &s.authorization_scopes,
                "authorization_scopes",
            );
            m.take(
                &mut r.api_key_required,
                |s| &s.api_key_required,
                "api_key_required",
            );
            m.take(&mut r.throttle, |s| &s.throttle, "throttle");
            m.take(&mut r.cache, |s| &s.cache, "cache");
            m.take(&mut r.ip_rules, |s| &s.ip_rules, "ip_rules");
            m.mapping(&mut r.mapping);
            // Scopes are a route setting: an API's sets give them to the
            // routes that have none (a deployment's routes get them, or
            // their stage's sets' scopes, when the stage is expanded).
            if !plain {
                continue;
            }
            let mut m = Merge {
                at: &rkey,
                sets: &attached,
                origins: &mut sets.origins,
            };
            m.take(
                &mut r.authorization_scopes,
                |s| &s.authorization_scopes,
                "authorization_scopes",
            );
        }
    }
    raw.policies = policies;
    sets
}

/// Merges the sets a stage attaches (`own`) into the stage: `throttle`
/// and `cache` into its own fields (its own win), the rest into
/// `from_sets`, which `plan::stages` lays over the API's settings. The
/// scopes of the API's sets (`api_sets`) are there too, for the
/// deployment's routes with none, unless the stage's sets give some.
fn stage(
    st: &mut crate::config::raw::stages::RawStage,
    skey: &str,
    own: &[(usize, &RawPolicySet)],
    api_sets: &[(usize, &RawPolicySet)],
    api_mapping: Option<&RawMapping>,
    akey: &str,
    origins: &mut Vec<(String, String)>,
) {
    if own.is_empty() && api_sets.is_empty() {
        return;
    }
    let mut over = RawPolicySet::default();
    let mut m = Merge {
        at: skey,
        sets: own,
        origins,
    };
    m.take(&mut st.throttle, |s| &s.throttle, "throttle");
    m.take(&mut st.cache, |s| &s.cache, "cache");
    m.take(&mut over.authorizer, |s| &s.authorizer, "authorizer");
    m.take(
        &mut over.api_key_required,
        |s| &s.api_key_required,
        "api_key_required",
    );
    m.take(&mut over.cors, |s| &s.cors, "cors");
    m.take(&mut over.ip_rules, |s| &s.ip_rules, "ip_rules");
    m.take(
        &mut over.authorization_scopes,
        |s| &s.authorization_scopes,
        "authorization_scopes",
    );
    m.mapping(&mut over.mapping);
    // The API's own entries (and its sets') where the stage's sets have
    // none; an error in one is told where it was written.
    if let (Some(mine), Some(theirs)) = (over.mapping.as_mut(), api_mapping) {
        for (k, v) in theirs.request.iter().flatten() {
            let req = mine.request.get_or_insert_with(Default::default);
            if !req.contains_key(k) {
                req.insert(k.clone(), v.clone());
                origins.push((
                    format!("{skey}.mapping.request.{k:?}"),
                    format!("{akey}.mapping.request.{k:?}"),
                ));
            }
        }
        for (status, entries) in theirs.response.iter().flatten() {
            let resp = mine.response.get_or_insert_with(Default::default);
            let stage_has = resp.contains_key(status);
            let merged = resp.entry(status.clone()).or_default();
            for (k, v) in entries {
                if !merged.contains_key(k) {
                    merged.insert(k.clone(), v.clone());
                    origins.push((
                        format!("{skey}.mapping.response.{status}.{k:?}"),
                        format!("{akey}.mapping.response.{status}.{k:?}"),
                    ));
                }
            }
            if !stage_has {
                origins.push((
                    format!("{skey}.mapping.response.{status}"),
                    format!("{akey}.mapping.response.{status}"),
                ));
            }
        }
    }
    let mut m = Merge {
        at: skey,
        sets: api_sets,
        origins,
    };
    m.take(
        &mut over.authorization_scopes,
        |s| &s.authorization_scopes,
        "authorization_scopes",
    );
    st.from_sets = Some(Box::new(over));
}

/// The sets `names` attach, in order, with their index; unknown names are
/// errors at `{key}.policies[j]`.
fn resolve<'p>(
    policies: &'p [RawPolicySet],
    names: Option<&[String]>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<(usize, &'p RawPolicySet)> {
    let mut out = Vec::new();
    for (j, n) in names.unwrap_or_default().iter().enumerate() {
        match policies.iter().position(|s| s.name == *n) {
            Some(i) => out.push((i, &policies[i])),
            None => {
                let hint = crate::config::did_you_mean(n, policies.iter().map(|s| s.name.as_str()));
                errors.push(ConfigError::new(
                    format!("{key}.policies[{j}]"),
                    match hint {
                        Some(h) => {
                            format!("no [[policies]] set is named {n:?}: did you mean {h:?}?")
                        }
                        None => format!("no [[policies]] set is named {n:?}"),
                    },
                ));
            }
        }
    }
    out
}

struct Merge<'a, 'p> {
    /// The key of the API or route merged into.
    at: &'a str,
    sets: &'a [(usize, &'p RawPolicySet)],
    origins: &'a mut Vec<(String, String)>,
}

impl Merge<'_, '_> {
    /// An absent setting takes the last attached set's.
    fn take<T: Clone>(
        &mut self,
        own: &mut Option<T>,
        field: impl Fn(&RawPolicySet) -> &Option<T>,
        name: &str,
    ) {
        if own.is_some() {
            return;
        }
        if let Some((i, v)) = self
            .sets
            .iter()
            .rev()
            .find_map(|(i, s)| field(s).as_ref().map(|v| (i, v)))
        {
            *own = Some(v.clone());
            self.origins.push((
                format!("{}.{name}", self.at),
                format!("policies[{i}].{name}"),
            ));
        }
    }

    /// Mapping entries merge one by one: the own ones win, then later
    /// sets over earlier ones.
    fn mapping(&mut self, own: &mut Option<RawMapping>) {
        if !self.sets.iter().any(|(_, s)| s.mapping.is_some()) {
            return;
        }
        let m = own.get_or_insert_with(RawMapping::default);
        for (i, s) in self.sets.iter().rev() {
            let Some(sm) = &s.mapping else { continue };
            for (k, v) in sm.request.iter().flatten() {
                let req = m.request.get_or_insert_with(Default::default);
                if !req.contains_key(k) {
                    req.insert(k.clone(), v.clone());
                    self.origins.push((
                        format!("{}.mapping.request.{k:?}", self.at),
                        format!("policies[{i}].mapping.request.{k:?}"),
                    ));
                }
            }
            for (status, entries) in sm.response.iter().flatten() {
                let resp = m.response.get_or_insert_with(Default::default);
                let existed = resp.contains_key(status);
                let mine = resp.entry(status.clone()).or_default();
                for (k, v) in entries {
                    if !mine.contains_key(k) {
                        mine.insert(k.clone(), v.clone());
                        self.origins.push((
                            format!("{}.mapping.response.{status}.{k:?}", self.at),
                            format!("policies[{i}].mapping.response.{status}.{k:?}"),
                        ));
                    }
                }
                // A status key that is itself bad is told at the set.
                if !existed {
                    self.origins.push((
                        format!("{}.mapping.response.{status}", self.at),
                        format!("policies[{i}].mapping.response.{status}"),
                    ));
                }
            }
        }
    }
}
