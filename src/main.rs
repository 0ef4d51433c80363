//! The `coregate` binary: `serve` runs the gateway, `check` validates a
//! config. Exit codes: 0 success, 1 invalid config or start-up failure,
//! 2 bad usage.

use coregate::config;
use coregate::runtime::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_CONFIG: &str = "config/coregate.toml";

const USAGE: &str = "usage:
  coregate serve [--config PATH]   run the gateway (default config: config/coregate.toml)
  coregate check [--config PATH]   validate a config and exit 0, or print every error and exit 1
  coregate --version";

fn main() -> ExitCode {
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
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
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
            other => match other.strip_prefix("--config=") {
                Some(p) => config_path = PathBuf::from(p),
                None => return usage(&format!("unexpected argument {other:?}")),
            },
        }
    }
    match cmd {
        "serve" => serve(&config_path),
        "check" => check(&config_path),
        other => usage(&format!("unknown command {other:?}")),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("coregate: {problem}\n{USAGE}");
    ExitCode::from(2)
}

fn load(path: &std::path::Path) -> Result<config::Plan, ExitCode> {
    config::load(path).map_err(|errors| {
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
                "ok: {}: {} api(s), {} route(s), {} upstream(s), {} shard(s) on {:?}",
                path.display(),
                plan.table_api_count(),
                plan.routes.len(),
                plan.upstreams.len(),
                plan.server.shards,
                plan.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let plan = match load(path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Register signals before the shards start, so none is missed.
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coregate: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let shards = plan.server.shards;
    let server = match Server::start(plan) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coregate: {e}");
            return ExitCode::from(1);
        }
    };
    for addr in &server.local_addrs {
        println!("coregate: listening on {addr}");
    }
    coregate::log!(
        "info",
        "coregate {} serving {} with {shards} shard(s)",
        env!("CARGO_PKG_VERSION"),
        path.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    if let Some(sig) = signals.forever().next() {
        coregate::log!(
            "info",
            "signal {sig}: draining (a second signal exits at once)"
        );
    }
    server.shutdown();
    // A second signal while draining ends the process at once.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            coregate::log!(
                "warn",
                "second signal: exiting without waiting for the drain"
            );
            std::process::exit(1);
        }
    });
    server.join();
    coregate::log!("info", "stopped");
    ExitCode::SUCCESS
}
