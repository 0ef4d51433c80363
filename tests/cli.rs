//! The binary's command line as a newcomer meets it: `--help` on every
//! subcommand, `usage` naming the store it reads and refusing an unknown
//! key, and `keys create` saying where it wrote.

mod support;

use support::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_on_every_subcommand_prints_its_usage_and_exits_0() {
    for (args, must) in [
        (&["--help"][..], "coregate serve"),
        (&["help"][..], "coregate usage"),
        (&["serve", "--help"][..], "coregate serve"),
        (&["serve", "-h"][..], "coregate serve"),
        (&["check", "--help"][..], "coregate check"),
        (
            &["check", "--config", "x.toml", "--help"][..],
            "coregate check",
        ),
        (&["keys", "--help"][..], "coregate keys create"),
        (&["keys", "create", "--help"][..], "coregate keys create"),
        (&["keys", "list", "--help"][..], "coregate keys list"),
        (&["keys", "revoke", "--help"][..], "coregate keys revoke"),
        (&["usage", "--help"][..], "coregate usage"),
        (&["help", "keys"][..], "coregate keys list"),
    ] {
        let out = run_coregate(args);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "coregate {args:?}: {}{stdout}",
            text(&out.stderr)
        );
        assert!(
            stdout.starts_with("usage:") && stdout.contains(must),
            "coregate {args:?} printed: {stdout}"
        );
    }
    // A subcommand's help is its own usage, not the whole list.
    let out = run_coregate(&["serve", "--help"]);
    assert!(
        !text(&out.stdout).contains("coregate keys"),
        "{}",
        text(&out.stdout)
    );
    // --help after an unknown command is still a usage error.
    assert_eq!(
        run_coregate(&["frobnicate", "--help"]).status.code(),
        Some(2)
    );
}

/// A fresh directory holding `config.toml` with `text`.
fn config_dir(text: &str) -> (std::path::PathBuf, String) {
    let dir = temp_path("d");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("config.toml");
    std::fs::write(&config, text).expect("write config");
    (dir, config.to_str().expect("utf-8 path").to_string())
}

const KEYS_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]
api_keys_file = "my-keys.toml"
data_dir = "state"

[[usage_plans]]
name = "basic"
apis = ["main"]
quota = { limit = 10, period = "DAY" }

[[apis]]
name = "main"
api_key_required = true

[[apis.routes]]
key = "GET /x"
integration = { type = "mock", body = 'ok' }
"#;

#[test]
fn keys_with_config_manage_the_keys_file_that_config_names_and_say_where() {
    let (dir, config) = config_dir(KEYS_CONFIG);
    let out = run_coregate(&[
        "keys",
        "create",
        "--config",
        &config,
        "--name",
        "alice",
        "--usage-plan",
        "basic",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let keys_file = dir.join("my-keys.toml");
    assert!(keys_file.exists(), "no {}: {stderr}", keys_file.display());
    assert!(
        stderr.contains(&format!("in {}, a new file", keys_file.display())),
        "{stderr}"
    );
    let out = run_coregate(&["keys", "list", "--config", &config]);
    assert!(
        text(&out.stdout).contains("\nalice\t"),
        "{}",
        text(&out.stdout)
    );
    // A second key goes to the same, now existing, file: not announced as new.
    let out = run_coregate(&["keys", "create", "--config", &config, "--name", "bob"]);
    assert!(
        !text(&out.stderr).contains("a new file"),
        "{}",
        text(&out.stderr)
    );

    // A config without a keys file: an error, not a file made up somewhere.
    let (_dir2, bare) = config_dir(
        "[[apis]]\nname = \"main\"\n[[apis.routes]]\nkey = \"GET /x\"\nintegration = { type = \"mock\" }\n",
    );
    let out = run_coregate(&["keys", "create", "--config", &bare, "--name", "alice"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("sets no server.api_keys_file"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_names_the_store_it_reads_and_refuses_an_unknown_key() {
    let (dir, config) = config_dir(KEYS_CONFIG);
    let out = run_coregate(&["keys", "create", "--config", &config, "--name", "alice"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = run_coregate(&["usage", "--config", &config, "--key", "bob"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "usage store {}",
            dir.join("state").join("usage.sqlite3").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("--key \"bob\" is no key of this config (its keys: alice)"),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_readme_tour_backend_serves_what_the_tour_curls() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let demo = std::fs::read_to_string(root.join("config/coregate.toml")).expect("demo config");
    // The demo maps /files/{proxy+} to the backend's /static/{proxy} ...
    assert!(
        demo.contains(r#"key = "ANY /files/{proxy+}""#)
            && demo.contains(r#"url = "http://petstore/static/{proxy}""#),
        "the demo config's /files route changed: update the README tour and this test"
    );
    // ... so the tour's curl of /files/pets/1 needs /static/pets/1 in the
    // directory the backend serves, and the backend on loopback only.
    assert!(readme.contains("curl -i localhost:8080/files/pets/1"));
    let setup: Vec<&str> = readme
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("mkdir -p /tmp/www") || l.starts_with("echo "))
        .collect();
    assert!(
        setup.iter().any(|l| l.contains("> /tmp/www/static/pets/1")),
        "the tour's setup does not write /tmp/www/static/pets/1: {setup:#?}"
    );
    assert!(
        setup.iter().any(|l| l.contains("/tmp/www/static/pets")),
        "{setup:#?}"
    );
    let backend = readme
        .lines()
        .find(|l| l.contains("python3 -m http.server"))
        .expect("the tour's backend line");
    assert!(backend.contains("--bind 127.0.0.1"), "{backend}");
    // Every `coregate` subcommand the README shows exists (answers --help).
    for sub in ["serve", "check", "reload", "keys", "usage"] {
        assert!(
            readme.contains(&format!("-- {sub} ")),
            "README shows no {sub}"
        );
        assert_eq!(run_coregate(&[sub, "--help"]).status.code(), Some(0));
    }
}

#[test]
fn production_doc_quotes_what_the_binary_says() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/production.md")).expect("docs/production.md");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    assert!(
        readme.contains("docs/production.md"),
        "README does not link it"
    );
    let mut source = String::new();
    for f in ["src/main.rs", "src/runtime/shard.rs", "src/runtime/mod.rs"] {
        source += &std::fs::read_to_string(root.join(f)).expect(f);
    }
    // Each log line the page promises is one the code writes.
    for line in [
        "SIGTERM/SIGINT: draining (a second signal exits at once)",
        "second signal: exiting without waiting for the drain",
        "reload asked by ",
        "SIGHUP ignored: draining, no reload",
        "accept failed:",
        "glommio needs a locked-memory limit (RLIMIT_MEMLOCK) of at least",
        "address in use",
    ] {
        assert!(
            doc.contains(line),
            "docs/production.md does not quote {line:?}"
        );
        assert!(source.contains(line), "the code no longer says {line:?}");
    }
    assert!(doc.contains("share_listen_addresses = true"));
    assert!(doc.contains("LimitMEMLOCK=") && doc.contains("LimitNOFILE="));
}
