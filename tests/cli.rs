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
