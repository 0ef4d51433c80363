//! Promotion, rollback and re-weighting of a stage's canary as edits of the
//! config file's text (docs/stages.md, "Promotion and rollback"). Pure
//! functions from text to text, so `coregate` commands and the admin API
//! can apply them and then write the file; comments and layout outside the
//! edited keys are kept. The result is checked by compiling it, as any
//! config is: these functions only find the stage and change its keys.

use toml_edit::{DocumentMut, Item, TableLike, Value};

/// The stage's canary deployment and variables become the stage's, and the
/// canary takes 0% of the traffic (its `deployment` is now the stage's;
/// its `variables` are dropped, having been applied; `sticky` stays).
pub fn promote_canary(text: &str, api: &str, stage: &str) -> Result<String, String> {
    edit(text, api, stage, |stage_t, what| {
        let canary = canary_of(stage_t, what)?;
        let deployment = canary
            .get("deployment")
            .and_then(Item::as_str)
            .ok_or_else(|| format!("{what}: the canary has no deployment"))?
            .to_string();
        let overrides: Vec<(String, Value)> = match canary.get("variables") {
            None => Vec::new(),
            Some(v) => v
                .as_table_like()
                .ok_or_else(|| format!("{what}: the canary's variables are not a table"))?
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.as_value()?.clone())))
                .collect(),
        };
        canary.remove("variables");
        canary.insert("percent", toml_edit::value(0.0));
        canary.insert("deployment", toml_edit::value(deployment.clone()));
        stage_t.insert("deployment", toml_edit::value(deployment));
        if !overrides.is_empty() {
            if stage_t.get("variables").is_none() {
                stage_t.insert(
                    "variables",
                    Item::Value(Value::InlineTable(Default::default())),
                );
            }
            let vars = stage_t
                .get_mut("variables")
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| format!("{what}: the stage's variables are not a table"))?;
            for (k, v) in overrides {
                vars.insert(&k, Item::Value(v));
            }
        }
        Ok(())
    })
}

/// The canary takes 0% of the traffic; its deployment stays named, so it
/// can be raised again with [`set_canary_percent`].
pub fn rollback_canary(text: &str, api: &str, stage: &str) -> Result<String, String> {
    set_canary_percent(text, api, stage, 0.0)
}

/// Sets the share of the stage's traffic its canary takes (0 to 100).
pub fn set_canary_percent(
    text: &str,
    api: &str,
    stage: &str,
    percent: f64,
) -> Result<String, String> {
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!(
            "{percent} is not a share of traffic: a number from 0 to 100"
        ));
    }
    edit(text, api, stage, |stage_t, what| {
        canary_of(stage_t, what)?.insert("percent", toml_edit::value(percent));
        Ok(())
    })
}

fn canary_of<'t>(
    stage: &'t mut dyn TableLike,
    what: &str,
) -> Result<&'t mut dyn TableLike, String> {
    stage
        .get_mut("canary")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| format!("{what} has no canary"))
}

/// Parses `text`, finds stage `stage` of API `api`, applies `f` to it.
fn edit(
    text: &str,
    api: &str,
    stage: &str,
    f: impl FnOnce(&mut dyn TableLike, &str) -> Result<(), String>,
) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e| format!("the config is not valid TOML: {e}"))?;
    let what = format!("stage {stage:?} of api {api:?}");
    let api_t = find_named(doc.get_mut("apis"), api)
        .ok_or_else(|| format!("no [[apis]] is named {api:?}"))?;
    let stage_t = find_named(api_t.get_mut("stages"), stage)
        .ok_or_else(|| format!("api {api:?} has no stage {stage:?}"))?;
    f(stage_t, &what)?;
    Ok(doc.to_string())
}

/// The table with `name = NAME` in an array of tables, written as
/// `[[...]]` or as an inline array.
fn find_named<'d>(item: Option<&'d mut Item>, name: &str) -> Option<&'d mut dyn TableLike> {
    let named = |t: &dyn TableLike| t.get("name").and_then(Item::as_str) == Some(name);
    match item? {
        Item::ArrayOfTables(a) => a
            .iter_mut()
            .find(|t| named(&**t))
            .map(|t| t as &mut dyn TableLike),
        Item::Value(Value::Array(a)) => a.iter_mut().find_map(|v| match v {
            Value::InlineTable(t) if named(&*t) => Some(t as &mut dyn TableLike),
            _ => None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    // Test code only: the unwraps are on fixtures written here, so a
    // failure is a failing test; nothing a client or a config controls.
    use super::*;

    const CONFIG: &str = r#"
# The pets API.
[[apis]]
name = "pets"
base_path = "/pets"

[[apis.deployments]]
name = "v1"
[[apis.deployments.routes]]
key = "GET /"
integration = { type = "mock", body = "${stageVariables.who}" }

[[apis.deployments]]
name = "v2"
[[apis.deployments.routes]]
key = "GET /"
integration = { type = "mock", body = "${stageVariables.who}" }

[[apis.stages]]
name = "prod"
deployment = "v1"
variables = { who = "one", keep = "k" }

[apis.stages.canary]
deployment = "v2"
percent = 25
variables = { who = "two" }
sticky = { header = "x-user" }

[[apis.stages]]
name = "beta"
deployment = "v2"
variables = { who = "b" }
"#;

    fn raw(text: &str) -> crate::config::raw::RawConfig {
        crate::config::parse(text).unwrap()
    }

    #[test]
    fn promotion_moves_deployment_and_variables_and_zeroes_the_share() {
        let out = promote_canary(CONFIG, "pets", "prod").unwrap();
        let r = raw(&out);
        let s = &r.apis[0].stages[0];
        assert_eq!(s.deployment, "v2");
        assert_eq!(s.variables["who"], "two");
        assert_eq!(s.variables["keep"], "k");
        let c = s.canary.as_ref().unwrap();
        assert_eq!(c.deployment, "v2");
        assert_eq!(c.percent, 0.0);
        assert!(c.variables.is_empty());
        assert_eq!(c.sticky.as_ref().unwrap().header.as_deref(), Some("x-user"));
        // The other stage and the comments are untouched.
        assert_eq!(r.apis[0].stages[1].deployment, "v2");
        assert!(out.contains("# The pets API."));
        // And it still compiles.
        crate::plan::load_str(&out).unwrap();
    }

    #[test]
    fn promotion_creates_the_stage_variables_when_missing() {
        let text = CONFIG.replace("variables = { who = \"one\", keep = \"k\" }\n", "");
        let text = text.replace("body = \"${stageVariables.who}\"", "body = \"x\"");
        let out = promote_canary(&text, "pets", "prod").unwrap();
        assert_eq!(raw(&out).apis[0].stages[0].variables["who"], "two");
    }

    #[test]
    fn rollback_and_reweighting_change_only_the_share() {
        let out = rollback_canary(CONFIG, "pets", "prod").unwrap();
        let r = raw(&out);
        let s = &r.apis[0].stages[0];
        assert_eq!(s.deployment, "v1");
        let c = s.canary.as_ref().unwrap();
        assert_eq!((c.deployment.as_str(), c.percent), ("v2", 0.0));
        assert_eq!(c.variables["who"], "two");
        let out = set_canary_percent(CONFIG, "pets", "prod", 12.5).unwrap();
        assert_eq!(
            raw(&out).apis[0].stages[0].canary.as_ref().unwrap().percent,
            12.5
        );
    }

    #[test]
    fn what_cannot_be_edited_is_said() {
        assert_eq!(
            promote_canary(CONFIG, "dogs", "prod").unwrap_err(),
            "no [[apis]] is named \"dogs\""
        );
        assert_eq!(
            promote_canary(CONFIG, "pets", "gamma").unwrap_err(),
            "api \"pets\" has no stage \"gamma\""
        );
        assert_eq!(
            promote_canary(CONFIG, "pets", "beta").unwrap_err(),
            "stage \"beta\" of api \"pets\" has no canary"
        );
        for bad in [101.0, -1.0, f64::NAN] {
            assert!(set_canary_percent(CONFIG, "pets", "prod", bad).is_err());
        }
        assert!(promote_canary("[[apis]\n", "pets", "prod")
            .unwrap_err()
            .starts_with("the config is not valid TOML"));
    }

    #[test]
    fn inline_arrays_are_found_too() {
        let text = r#"
apis = [{ name = "a", deployments = [{ name = "d1", routes = [{ key = "GET /", integration = { type = "mock" } }] }, { name = "d2", routes = [{ key = "GET /", integration = { type = "mock" } }] }], stages = [{ name = "s", deployment = "d1", canary = { deployment = "d2", percent = 5 } }] }]
"#;
        let out = promote_canary(text, "a", "s").unwrap();
        assert_eq!(raw(&out).apis[0].stages[0].deployment, "d2");
    }
}
