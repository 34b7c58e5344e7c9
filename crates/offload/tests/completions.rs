//! `offload completions` and `offload man`: generated from the command line's definition,
//! so every subcommand the binary has appears in them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn offload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offload"))
        .args(args)
        .output()
        .expect("offload runs")
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

/// The subcommands `offload --help` lists (or `offload admin --help`, ...).
fn subcommands(of: &[&str]) -> Vec<String> {
    let mut args = of.to_vec();
    args.push("--help");
    let help = text(&offload(&args));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|name| name != "help")
        .collect()
}

#[test]
fn completion_scripts_name_every_subcommand_and_bash_parses_its_own() {
    let top = subcommands(&[]);
    assert!(top.len() > 20, "{top:?}");
    let admin = subcommands(&["admin"]);
    assert!(admin.contains(&"audit".to_owned()), "{admin:?}");
    for shell in ["bash", "zsh", "fish"] {
        let script = text(&offload(&["completions", shell]));
        for name in top.iter().chain(&admin) {
            assert!(script.contains(name.as_str()), "{shell}: {name} missing");
        }
    }
    let script = text(&offload(&["completions", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offload.bash");
    std::fs::write(&path, &script).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // An unknown shell is a usage error that names the ones there are.
    let out = offload(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("bash") && said.contains("zsh"), "{said}");
    assert!(out.stdout.is_empty());
}

#[test]
fn the_man_page_has_a_section_for_every_subcommand_and_their_options() {
    let page = text(&offload(&["man"]));
    assert!(page.contains(".TH offload 1"));
    for name in subcommands(&[]) {
        let section = format!(".SH \"OFFLOAD {}\"", name.to_uppercase());
        assert!(page.contains(&section), "{section} missing");
    }
    for name in subcommands(&["admin"]) {
        let section = format!(".SH \"OFFLOAD ADMIN {}\"", name.to_uppercase());
        assert!(page.contains(&section), "{section} missing");
    }
    // Options of a subcommand are listed under it, with roff's escaped dashes.
    let logs = page.split(".SH \"OFFLOAD LOGS\"").nth(1).unwrap();
    let logs = logs.split(".SH").next().unwrap();
    assert!(logs.contains("\\-\\-follow"), "{logs}");
    assert!(logs.contains("\\-\\-tail"), "{logs}");
    // No line of text is taken for a roff request.
    for line in page.lines().filter(|l| !l.starts_with('.')) {
        assert!(!line.starts_with('\''), "{line}");
    }
}
