//! The `coregate` binary: `serve` runs the gateway, `check` validates a
//! config, `keys` manages an API keys file, `openapi` imports and exports
//! OpenAPI documents. Exit codes: 0 success, 1 invalid
//! config, start-up failure, a shard that stopped while serving or failed
//! `keys` command, 2 bad usage.

use coregate::plan;
use coregate::runtime::requests::answer;
use coregate::runtime::{reload_config, MainRequest, Server};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const DEFAULT_CONFIG: &str = "config/coregate.toml";

/// How often the draining main thread looks at the signal flag.
const SIGNAL_POLL: std::time::Duration = std::time::Duration::from_millis(20);
/// The longest the serving main thread waits between two looks at its
/// signal flags when no wake came: a wake comes with every signal (through
/// the signal pipe) and every admin request, so this only bounds how long
/// a lost wake could hold a signal up.
const SIGNAL_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

const SERVE_USAGE: &str = "  coregate serve [--config PATH] [--log-level LEVEL]
                                   run the gateway (default config: config/coregate.toml);
                                   LEVEL: error, warn, info (default) or debug;
                                   SIGTERM or SIGINT drains and exits 0, SIGHUP reloads
                                   the config, SIGUSR1 reopens the access log files;
                                   a shard that stops drains the others and exits 1";
const CHECK_USAGE: &str = "  coregate check [--config PATH]   validate a config and exit 0, or print every error and exit 1";
const RELOAD_USAGE: &str =
    "  coregate reload [--config PATH]  ask the running gateway (through the admin listener PATH
                                   names) to reload its config; waits until every shard
                                   serves it and prints its generation (exit 0), or prints
                                   why it was refused (exit 1)";
const KEYS_USAGE: &str = "  coregate keys create --file F --name N [--usage-plan P]
                                   add a key to the keys file F (created if missing);
                                   the key is printed once, on stdout
  coregate keys list --file F      name, id, enabled, usage plan, created, revoked of every key
  coregate keys revoke --file F --name N
                                   revoke a key for good (a tombstone: revoked = NOW,
                                   enabled = false; the entry keeps its place)
                                   (--config PATH instead of --file F: the keys file that
                                   config names in server.api_keys_file)";
const USAGE_USAGE: &str =
    "  coregate usage [--config PATH | --data-dir DIR] [--key NAME|ID] [--from DAY] [--to DAY]
                                   requests per key per UTC day from the usage store
                                   (days YYYY-MM-DD, inclusive; default: the last 30 days),
                                   and with a config, each quota's use this period";
const OPENAPI_USAGE: &str =
    "  coregate openapi import FILE [--base-path ignore|prepend|split] [--fail-on-warnings]
                         [--name NAME] [--upstream URL] [--api-keys-file F]
                         [--out PATH | --into CONFIG]
                                   an OpenAPI 3.0/3.1 document (YAML or JSON) as coregate
                                   config (stdout, or PATH; --into adds or replaces the API
                                   in CONFIG, written only if the result passes its check);
                                   findings on stderr; exit 1 on an error (or a warning
                                   with --fail-on-warnings)
  coregate openapi export [--config PATH] --api NAME [--stage S] [--format json|yaml]
                         [--no-extensions]
                                   an OpenAPI 3.0 document of the API (of its stage S), on stdout";

/// The usage of one subcommand (`coregate SUB --help`), or of all of them.
fn usage_text(sub: Option<&str>) -> String {
    let one = match sub {
        Some("serve") => SERVE_USAGE,
        Some("check") => CHECK_USAGE,
        Some("reload") => RELOAD_USAGE,
        Some("keys") => KEYS_USAGE,
        Some("usage") => USAGE_USAGE,
        Some("openapi") => OPENAPI_USAGE,
        _ => {
            return format!(
            "usage:\n{SERVE_USAGE}\n{CHECK_USAGE}\n{RELOAD_USAGE}\n{KEYS_USAGE}\n{USAGE_USAGE}\n{OPENAPI_USAGE}\n  \
                 coregate --version\n  coregate [SUBCOMMAND] --help"
        )
        }
    };
    format!("usage:\n{one}")
}

fn main() -> ExitCode {
    // Before any thread allocates: memory a burst freed goes back to the
    // kernel (see the function).
    coregate::http::conn::fix_malloc_thresholds();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        None => ("serve", &args[..]),
        Some((c, rest)) => (c.as_str(), rest),
    };
    match cmd {
        "--version" | "-V" => {
            println!("coregate {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        "--help" | "-h" | "help" => {
            println!("{}", usage_text(rest.first().map(String::as_str)));
            return ExitCode::SUCCESS;
        }
        // `coregate SUB --help` (anywhere after SUB, e.g. `keys create
        // --help`) prints SUB's usage and exits 0, whatever else is given.
        sub if rest.iter().any(|a| a == "--help" || a == "-h") => {
            return match sub {
                "serve" | "check" | "reload" | "keys" | "usage" | "openapi" => {
                    println!("{}", usage_text(Some(sub)));
                    ExitCode::SUCCESS
                }
                other => usage(&format!("unknown command {other:?}")),
            };
        }
        "keys" => return keys(rest),
        "usage" => return usage_cmd(rest),
        "openapi" => return openapi(rest),
        _ => {}
    }
    let mut config_path = PathBuf::from(DEFAULT_CONFIG);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(p) => config_path = PathBuf::from(p),
                None => return usage("--config needs a path"),
            },
            "--log-level" if cmd == "serve" => match it.next().map(|l| log_level(l)) {
                Some(Ok(())) => {}
                Some(Err(code)) => return code,
                None => return usage("--log-level needs a level: error, warn, info or debug"),
            },
            other => match other.strip_prefix("--config=") {
                Some(p) => config_path = PathBuf::from(p),
                None => match other.strip_prefix("--log-level=") {
                    Some(l) if cmd == "serve" => {
                        if let Err(code) = log_level(l) {
                            return code;
                        }
                    }
                    _ => return usage(&format!("unexpected argument {other:?}")),
                },
            },
        }
    }
    match cmd {
        "serve" => serve(&config_path),
        "check" => check(&config_path),
        "reload" => coregate::cli::reload::run(&config_path),
        other => usage(&format!("unknown command {other:?}")),
    }
}

// === impl openapi ===

/// `coregate openapi import|export`.
fn openapi(args: &[String]) -> ExitCode {
    match args.split_first() {
        Some((sub, rest)) if sub == "import" => openapi_import(rest),
        Some((sub, rest)) if sub == "export" => openapi_export(rest),
        Some((sub, _)) => usage(&format!(
            "unknown openapi command {sub:?}: import or export"
        )),
        None => usage("openapi needs a command: import or export"),
    }
}

/// Splits `--flag=value` and `--flag value`; `Err` is the usage error.
fn flag_value(
    flag: &str,
    inline: Option<String>,
    it: &mut std::slice::Iter<'_, String>,
) -> Result<String, ExitCode> {
    match inline.or_else(|| it.next().cloned()) {
        Some(v) => Ok(v),
        None => Err(usage(&format!("{flag} needs a value"))),
    }
}

fn openapi_import(args: &[String]) -> ExitCode {
    use coregate::openapi::import::{import, BasePath, Options};
    use coregate::openapi::Grade;
    let mut opts = Options {
        base_path: BasePath::Ignore,
        name: None,
        upstream: None,
        api_keys_file: "api-keys.toml".to_string(),
    };
    let (mut file, mut out, mut fail_on_warnings) = (None, None, false);
    let mut into: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let value = match flag {
            "--base-path" | "--name" | "--upstream" | "--out" | "--into" | "--api-keys-file" => {
                match flag_value(flag, inline, &mut it) {
                    Ok(v) => v,
                    Err(code) => return code,
                }
            }
            "--fail-on-warnings" => {
                fail_on_warnings = true;
                continue;
            }
            f if f.starts_with('-') => return usage(&format!("unexpected argument {f:?}")),
            _ if file.is_none() => {
                file = Some(PathBuf::from(a));
                continue;
            }
            _ => return usage(&format!("unexpected argument {a:?}")),
        };
        match flag {
            "--base-path" => match BasePath::parse(&value) {
                Some(b) => opts.base_path = b,
                None => return usage(&format!("--base-path {value:?}: ignore, prepend or split")),
            },
            "--name" => opts.name = Some(value),
            "--api-keys-file" => opts.api_keys_file = value,
            "--upstream" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return usage(&format!("--upstream {value:?}: an http:// or https:// URL"));
                }
                opts.upstream = Some(value)
            }
            "--into" => into = Some(PathBuf::from(value)),
            _ => out = Some(PathBuf::from(value)),
        }
    }
    let Some(file) = file else {
        return usage("openapi import needs a FILE");
    };
    if into.is_some() && out.is_some() {
        return usage("openapi import: give --out or --into, not both");
    }
    // The existing config is read before anything is done: a missing or
    // unreadable one stops the import.
    let into = match into {
        None => None,
        Some(path) => match coregate::config::read_text(&path) {
            Ok(t) => Some((path, t)),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::from(1);
            }
        },
    };
    let text = match coregate::config::read_file(&file) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    let result = import(&text, &opts);
    for f in &result.findings {
        eprintln!("{f}");
    }
    let count = |g| result.findings.iter().filter(|f| f.grade == g).count();
    let (errors, warnings, infos) = (
        count(Grade::Error),
        count(Grade::Warning),
        count(Grade::Info),
    );
    eprintln!(
        "{}: {errors} error(s), {warnings} warning(s), {infos} info",
        file.display()
    );
    let Some(mut config) = result.config else {
        return ExitCode::from(1);
    };
    if fail_on_warnings && warnings > 0 {
        eprintln!("not written: --fail-on-warnings");
        return ExitCode::from(1);
    }
    // --into: the API goes into the existing file, which is then checked
    // and written in place of the import's own text.
    let mut merged_note = None;
    if let Some((path, existing)) = &into {
        match coregate::openapi::merge::merge(existing, &config) {
            Ok(m) => {
                for n in &m.notes {
                    eprintln!("note: {n}");
                }
                merged_note = Some(if m.replaced { "replaced" } else { "added" });
                config = m.text;
            }
            Err(e) => {
                eprintln!(
                    "error: cannot merge into {}: {e}; nothing written",
                    path.display()
                );
                return ExitCode::from(1);
            }
        }
        out = Some(path.clone());
    }
    let what = if into.is_some() { "merged" } else { "imported" };
    // Routes that require an API key need the keys file to exist: with
    // --out (or --into) it is made (empty) beside the config when missing,
    // once the config has passed its check.
    let base_dir = match out.as_deref().map(std::path::Path::parent) {
        Some(Some(d)) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // The keys file the config names (a merged config may name its own).
    let keys_file = coregate::config::parse(&config)
        .ok()
        .and_then(|r| r.server.api_keys_file)
        .unwrap_or_else(|| opts.api_keys_file.clone());
    let keys_path = coregate::config::resolve_path(&keys_file, Some(&base_dir));
    let keys_missing = result.needs_api_keys && !keys_path.exists();
    // The config must pass the same checks as `coregate check`.
    if let Err(errs) = plan::load_text_in(&config, Some(&base_dir)) {
        let mut failed = false;
        for e in &errs {
            if keys_missing && e.key == "server.api_keys_file" {
                if out.is_none() {
                    eprintln!(
                        "note: {keys_file} does not exist yet: create it with `coregate keys create --file {keys_file}`"
                    );
                }
                continue;
            }
            failed = true;
            eprintln!("error: the {what} config fails its check: {e}");
        }
        if failed {
            if let Some((path, _)) = &into {
                eprintln!("{} is unchanged", path.display());
            }
            return ExitCode::from(1);
        }
    }
    if keys_missing && out.is_some() {
        let header = "# coregate API keys: managed by `coregate keys create|list|revoke`.\n";
        if let Err(e) = coregate::config::write_atomic(&keys_path, header) {
            eprintln!("error: cannot create {}: {e}", keys_path.display());
            return ExitCode::from(1);
        }
        eprintln!(
            "created {}, an empty keys file: add keys with `coregate keys create --file {}`",
            keys_path.display(),
            keys_path.display()
        );
    }
    match out {
        None => {
            print!("{config}");
            ExitCode::SUCCESS
        }
        Some(path) => match coregate::config::write_atomic(&path, &config) {
            Ok(()) => {
                match merged_note {
                    Some(how) => eprintln!("wrote {} (api {how})", path.display()),
                    None => eprintln!("wrote {}", path.display()),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                ExitCode::from(1)
            }
        },
    }
}

fn openapi_export(args: &[String]) -> ExitCode {
    use coregate::openapi::export::{render, Options};
    let (mut config, mut api, mut yaml) = (PathBuf::from(DEFAULT_CONFIG), None, false);
    let mut stage = None;
    let mut opts = Options { extensions: true };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        if flag == "--no-extensions" {
            opts.extensions = false;
            continue;
        }
        if !matches!(flag, "--config" | "-c" | "--api" | "--stage" | "--format") {
            return usage(&format!("unexpected argument {a:?}"));
        }
        let value = match flag_value(flag, inline, &mut it) {
            Ok(v) => v,
            Err(code) => return code,
        };
        match flag {
            "--api" => api = Some(value),
            "--stage" => stage = Some(value),
            "--format" => match value.as_str() {
                "json" => yaml = false,
                "yaml" => yaml = true,
                other => return usage(&format!("--format {other:?}: json or yaml")),
            },
            _ => config = PathBuf::from(value),
        }
    }
    let Some(api) = api else {
        return usage("openapi export needs --api NAME");
    };
    // Only a config that passes its checks is exported.
    if let Err(code) = load(&config) {
        return code;
    }
    let text = match coregate::config::read_text(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", config.display());
            return ExitCode::from(1);
        }
    };
    let mut raw = match coregate::config::parse(&text) {
        Ok(r) => r,
        Err(errs) => {
            for e in &errs {
                eprintln!("error: {e}");
            }
            return ExitCode::from(1);
        }
    };
    raw.base_dir = config.parent().map(std::path::Path::to_path_buf);
    let doc =
        plan::openapi::export(raw, &text, &api, stage.as_deref(), opts).map_err(|e| e.to_string());
    match doc.and_then(|d| render(&d, yaml)) {
        Ok(doc) => {
            print!("{doc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

// === impl keys ===

/// `coregate keys create|list|revoke`.
fn keys(args: &[String]) -> ExitCode {
    use coregate::policy::api_key::cli;
    let Some((sub, rest)) = args.split_first() else {
        return usage("keys needs a command: create, list or revoke");
    };
    let (mut file, mut name, mut plan, mut config) = (None, None, None, None);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let slot = match flag {
            "--file" | "-f" => &mut file,
            "--config" | "-c" => &mut config,
            "--name" | "-n" => &mut name,
            "--usage-plan" => &mut plan,
            other => return usage(&format!("keys {sub}: unexpected argument {other:?}")),
        };
        match inline.or_else(|| it.next().cloned()) {
            Some(v) => *slot = Some(v),
            None => return usage(&format!("keys {sub}: {flag} needs a value")),
        }
    }
    let file = match (file, config) {
        (Some(f), None) => PathBuf::from(f),
        (None, Some(c)) => match keys_file_of(std::path::Path::new(&c)) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("coregate: keys {sub}: {e}");
                return ExitCode::from(1);
            }
        },
        (Some(_), Some(_)) => return usage(&format!("keys {sub}: give --file or --config, not both")),
        (None, None) => {
            return usage(&format!(
                "keys {sub}: --file F (a keys file) or --config PATH (its server.api_keys_file) is required"
            ))
        }
    };
    let fail = |e: String| {
        eprintln!("coregate: {e}");
        ExitCode::from(1)
    };
    match (sub.as_str(), name, plan) {
        ("create", Some(name), plan) => {
            let existed = file.exists();
            match cli::create(&file, &name, plan.as_deref()) {
                Ok(k) => {
                    println!("{}", k.full);
                    eprintln!(
                    "coregate: created key {name:?} (id {}) in {}{}.\n\
                     coregate: the key above is shown this once and cannot be recovered: store it now.",
                    k.id,
                    file.display(),
                    if existed {
                        ""
                    } else {
                        ", a new file: a gateway uses it once its config's server.api_keys_file names it"
                    }
                );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        ("create", None, _) => usage("keys create: --name is required"),
        ("list", None, None) => match cli::list(&file) {
            Ok(keys) => {
                println!("name\tid\tenabled\tusage_plan\tcreated\trevoked");
                for k in keys {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        k.name,
                        k.id,
                        k.enabled,
                        k.usage_plan.as_deref().unwrap_or("-"),
                        k.created.as_deref().unwrap_or("-"),
                        k.revoked.as_deref().unwrap_or("-")
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        ("list", _, _) => usage("keys list takes only --file or --config"),
        ("revoke", Some(name), None) => match cli::revoke(&file, &name) {
            Ok(()) => {
                println!("revoked {name:?} in {}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        ("revoke", _, _) => usage("keys revoke takes --file (or --config) and --name"),
        (other, _, _) => usage(&format!(
            "unknown keys command {other:?} (create, list or revoke)"
        )),
    }
}

/// The keys file a config names (`server.api_keys_file`, relative to the
/// config's directory), for `keys ... --config PATH`.
fn keys_file_of(config: &std::path::Path) -> Result<PathBuf, String> {
    let text = coregate::config::read_text(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let raw = coregate::config::parse(&text).map_err(|errors| {
        let mut m = format!("{} is not a valid config:", config.display());
        for e in errors {
            m.push_str(&format!("\n  {e}"));
        }
        m
    })?;
    let file = raw.server.api_keys_file.ok_or_else(|| {
        format!(
            "{} sets no server.api_keys_file: give --file, and set api_keys_file to it",
            config.display()
        )
    })?;
    Ok(coregate::config::resolve_path(&file, config.parent()))
}

/// `coregate usage`.
fn usage_cmd(args: &[String]) -> ExitCode {
    use coregate::cli::usage as cli;
    let mut opts = cli::Options::default();
    let mut config_path = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let slot = match flag {
            "--config" | "-c" => &mut config_path,
            "--data-dir" => {
                let v = inline.or_else(|| it.next().cloned());
                let Some(v) = v else {
                    return usage("--data-dir needs a value");
                };
                opts.data_dir = Some(PathBuf::from(v));
                continue;
            }
            "--key" => &mut opts.key,
            "--from" => &mut opts.from,
            "--to" => &mut opts.to,
            other => return usage(&format!("unexpected argument {other:?} to usage")),
        };
        match inline.or_else(|| it.next().cloned()) {
            Some(v) => *slot = Some(v),
            None => return usage(&format!("{flag} needs a value")),
        }
    }
    if opts.data_dir.is_none() || config_path.is_some() {
        let path = PathBuf::from(config_path.unwrap_or_else(|| DEFAULT_CONFIG.to_string()));
        match load(&path) {
            Ok(p) => opts.plan = Some(p),
            Err(code) => return code,
        }
    }
    // Say which store is read: a config's data_dir is relative to the config.
    if let Some(dir) = opts.data_dir.as_ref().or_else(|| {
        opts.plan
            .as_ref()
            .and_then(|p| p.policies.usage.data_dir.as_ref())
    }) {
        eprintln!(
            "coregate: usage store {}",
            dir.join(coregate::policy::usage::store::FILE_NAME)
                .display()
        );
    }
    match cli::run(&opts, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coregate: {e}");
            ExitCode::from(1)
        }
    }
}

/// Sets the error log's level from `--log-level`.
fn log_level(level: &str) -> Result<(), ExitCode> {
    match coregate::log::Level::parse(level) {
        Some(l) => {
            coregate::log::set_level(l);
            Ok(())
        }
        None => Err(usage(&format!(
            "--log-level {level:?}: the levels are error, warn, info and debug"
        ))),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("coregate: {problem}\n{}", usage_text(None));
    ExitCode::from(2)
}

fn load(path: &std::path::Path) -> Result<plan::Plan, ExitCode> {
    load_with_text(path).map(|(_, plan)| plan)
}

/// The config file's text and its plan; every error is printed.
fn load_with_text(path: &std::path::Path) -> Result<(String, plan::Plan), ExitCode> {
    plan::load_file(path).map_err(|errors| {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{}: {} error(s)", path.display(), errors.len());
        ExitCode::from(1)
    })
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok(plan) => {
            println!(
                "ok: {}: {} api(s), {} route(s), {} upstream(s), {} shard(s) on {:?}{}{}",
                path.display(),
                plan.table_api_count(),
                plan.routes.len(),
                plan.upstreams.len(),
                plan.server.shards,
                plan.server.listen,
                match &plan.server.tls {
                    Some(t) => format!(", TLS on {:?}", t.listen),
                    None => String::new(),
                },
                match plan.admin.listen {
                    Some(a) => format!(", admin on {a}"),
                    None => ", no admin listener".to_string(),
                }
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    // The text is kept: the admin API shows the running config.
    let (mut text, plan) = match load_with_text(path) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    // Register signals before the shards start, so none is missed. A flag
    // polled by this thread, rather than signal-hook's blocking iterator,
    // which panics on an unexpected errno (seen under a debugger).
    let signalled = Arc::new(AtomicBool::new(false));
    // SIGHUP reloads the config.
    let hangup = Arc::new(AtomicBool::new(false));
    // SIGUSR1 reopens the access-log files (logrotate).
    let reopen = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (SIGTERM, &signalled),
        (SIGINT, &signalled),
        (SIGHUP, &hangup),
        (SIGUSR1, &reopen),
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(flag)) {
            eprintln!("coregate: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    let shards = plan.server.shards;
    // The admin listener binds first: a bad address stops the start-up
    // before any shard runs.
    let admin = match coregate::admin::bind(&plan.admin, plan.server.share_listen_addresses) {
        Ok(a) => a,
        // The default address is taken (most often by another gateway on
        // this host): serve without an admin listener rather than refuse
        // a config that never asked for one.
        Err(e) if !plan.admin.explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            coregate::log!(
                "warn",
                "{e}; serving without an admin listener (set admin.listen to choose its address)"
            );
            None
        }
        Err(e) => {
            eprintln!("coregate: {e}");
            return ExitCode::from(1);
        }
    };
    // The developer portal (off unless [portal] asks for it) binds before
    // the shards start too.
    let portal = match coregate::portal::bind(&plan.portal, plan.server.share_listen_addresses) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("coregate: {e}");
            return ExitCode::from(1);
        }
    };
    let started = std::time::SystemTime::now();
    let mut server = match Server::start(plan) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coregate: {e}");
            return ExitCode::from(1);
        }
    };
    for addr in &server.local_addrs {
        println!("coregate: listening on {addr}");
    }
    for addr in &server.tls_addrs {
        println!("coregate: listening on {addr} (tls)");
    }
    let (reload_tx, requests) = crossbeam_channel::unbounded::<MainRequest>();
    // Each of those signals also wakes this thread: its handler writes a
    // byte to a socket pair, and a thread reading the other end sends a
    // wake on `requests`. The loop below then needs no timer to see a flag.
    if let Err(e) = forward_signals(reload_tx.clone()) {
        coregate::log!(
            "warn",
            "cannot wake on signals ({e}): looking at the signal flags every {} ms instead",
            SIGNAL_LOOK.as_millis()
        );
    }
    if let Some(portal) = portal {
        let addr = portal.addr;
        if let Err(e) = portal.serve(reload_tx.clone()) {
            eprintln!("coregate: cannot start the portal's threads: {e}");
            server.shutdown();
            server.join();
            return ExitCode::from(1);
        }
        println!("coregate: portal listening on {addr}");
    }
    if let Some(admin) = admin {
        let addr = admin.addr;
        let (tls_tx, tls_updates) = crossbeam_channel::unbounded();
        server.send_admin_tls_to(tls_tx);
        let ctx = coregate::admin::Context {
            inboxes: server.inboxes(),
            started,
            version: env!("CARGO_PKG_VERSION"),
            main: reload_tx,
            tls_updates,
        };
        if let Err(e) = admin.serve(ctx) {
            eprintln!("coregate: cannot start the admin listener's threads: {e}");
            server.shutdown();
            server.join();
            return ExitCode::from(1);
        }
        println!("coregate: admin listening on {addr}");
    }
    coregate::log!(
        "info",
        "coregate {} serving {} with {shards} shard(s)",
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    // A shard that stops while serving (a panic outside a connection task)
    // is noticed at once: the process drains the others and exits 1, so
    // that a service manager starts it again with every shard.
    let ended = server.ended();
    let mut lost = None;
    while !signalled.swap(false, Ordering::SeqCst) {
        if hangup.swap(false, Ordering::SeqCst) {
            let _ = reload_config(&mut server, path, &mut text, "SIGHUP", None, false);
        }
        while let Ok(asked) = requests.try_recv() {
            answer(&mut server, path, &mut text, asked);
        }
        if reopen.swap(false, Ordering::SeqCst) {
            server.reopen_logs();
        }
        let mut select = crossbeam_channel::Select::new();
        let on_request = select.recv(&requests);
        select.recv(&ended);
        match select.select_timeout(SIGNAL_LOOK) {
            Ok(op) if op.index() == on_request => match op.recv(&requests) {
                Ok(asked) => answer(&mut server, path, &mut text, asked),
                // Every sender gone (no signal thread, no admin listener,
                // no portal): look at the flags every SIGNAL_POLL instead.
                Err(_) => std::thread::sleep(SIGNAL_POLL),
            },
            // Disconnected only once every shard's thread has ended.
            Ok(op) => {
                lost = Some(match op.recv(&ended) {
                    Ok(id) => server.lost_shard(id),
                    Err(_) => "every shard has stopped".to_string(),
                });
                break;
            }
            Err(_) => {}
        }
    }
    match &lost {
        Some(why) => coregate::log!(
            "error",
            "{why}; draining the other shards, then exiting with status 1 so that a service \
             manager starts coregate again"
        ),
        None => coregate::log!(
            "info",
            "SIGTERM/SIGINT: draining (a second signal exits at once)"
        ),
    }
    server.shutdown();
    // A second signal while draining ends the process at once.
    std::thread::spawn(move || loop {
        if signalled.swap(false, Ordering::SeqCst) {
            coregate::log!(
                "warn",
                "second signal: exiting without waiting for the drain"
            );
            std::process::exit(1);
        }
        if hangup.swap(false, Ordering::SeqCst) {
            coregate::log!("warn", "SIGHUP ignored: draining, no reload");
        }
        while let Ok(asked) = requests.try_recv() {
            let stopping = vec![coregate::runtime::STOPPING.to_string()];
            match asked {
                MainRequest::Reload { reply, .. } => {
                    let _ = reply.send(Err(stopping));
                }
                MainRequest::Keys { reply, .. } => {
                    let _ = reply.send(Err(stopping));
                }
                MainRequest::Edit { reply, .. } => {
                    let _ = reply.send(Ok(Err(stopping)));
                }
                // Dropped: the admin thread answers 503.
                MainRequest::Running { .. } | MainRequest::Signal => {}
            }
        }
        std::thread::sleep(SIGNAL_POLL);
    });
    server.join();
    match lost {
        Some(why) => {
            coregate::log!("error", "stopped: {why}; exit status 1");
            ExitCode::from(1)
        }
        None => {
            coregate::log!("info", "stopped");
            ExitCode::SUCCESS
        }
    }
}

/// Wakes the main thread on SIGTERM, SIGINT, SIGHUP and SIGUSR1: each
/// signal's handler (besides setting its flag) writes a byte to one end of
/// a socket pair, and a thread of its own reads the other end and sends
/// [`MainRequest::Signal`]. The pipe is read before the wake is sent, so a
/// signal that comes while the main thread acts on an earlier one wakes it
/// again.
fn forward_signals(tx: crossbeam_channel::Sender<MainRequest>) -> std::io::Result<()> {
    use std::io::Read;
    let (mut rx, wx) = std::os::unix::net::UnixStream::pair()?;
    for sig in [SIGTERM, SIGINT, SIGHUP, SIGUSR1] {
        signal_hook::low_level::pipe::register(sig, wx.try_clone()?)?;
    }
    drop(wx);
    std::thread::Builder::new()
        .name("coregate-signals".to_string())
        .spawn(move || {
            let mut b = [0u8; 64];
            loop {
                match rx.read(&mut b) {
                    Ok(n) if n > 0 => {
                        if tx.send(MainRequest::Signal).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The write ends are never closed while the process
                    // runs; should the read fail, the main thread still
                    // looks at its flags every SIGNAL_LOOK.
                    _ => return,
                }
            }
        })?;
    Ok(())
}
