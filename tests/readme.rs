//! The README's command table against the binary's own `--help`: every subcommand has a row, and
//! its row names every flag the subcommand takes, so a new flag cannot go undocumented.

use std::process::Command;

/// `coinstream ARGS --help`, which must succeed.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_coinstream"))
        .args(args)
        .arg("--help")
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?} --help: {text}");
    text
}

/// The subcommands a `--help` text lists under `Commands:` (without `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        // A command's line is indented by two; a wrapped description, deeper.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// The long flags a `--help` text lists under `Options:` (`--config`, `--no-ui`).
fn flags(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Options:"))
        .filter_map(|l| {
            let l = l.trim_start();
            // `-h, --help`: the long form follows the short one.
            let l = match l.split_once(", ") {
                Some((short, long)) if short.len() == 2 && short.starts_with('-') => long,
                _ => l,
            };
            let flag = l.split_whitespace().next()?;
            flag.starts_with("--").then(|| flag.to_owned())
        })
        .collect()
}

/// The README row of the command table whose first cell starts with `` `coinstream {command} ``.
fn row<'a>(readme: &'a str, command: &str) -> &'a str {
    let start = format!("| `coinstream {command} ");
    readme
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("no row {start}… in README.md's command table"))
}

#[test]
fn the_readme_command_table_lists_every_flag_of_every_subcommand() {
    let readme = std::fs::read_to_string(testkit::env::repo().join("README.md")).unwrap();
    let top = help(&[]);
    let mut all: Vec<Vec<String>> = Vec::new();
    for command in commands(&top) {
        let nested = commands_of(&command);
        if nested.is_empty() {
            all.push(vec![command]);
        } else {
            all.extend(nested.into_iter().map(|n| vec![command.clone(), n]));
        }
    }
    assert!(all.len() >= 7, "{all:?}");
    // The flags every command takes are documented once, in the global row.
    let global = row(&readme, "[--log FILTER]");
    let global_flags = ["--log", "--log-format"];
    for flag in global_flags.iter().chain(&["--version"]) {
        assert!(global.contains(flag), "{flag} missing from {global}");
    }
    let mut missing = Vec::new();
    for command in &all {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let row = row(&readme, &command.join(" "));
        let flags = flags(&help(&args));
        assert!(flags.iter().any(|f| f == "--help"), "{args:?}: {flags:?}");
        for flag in flags {
            if flag == "--help" || global_flags.contains(&flag.as_str()) {
                continue;
            }
            // A whole word: `--to` is not found inside `--topic`.
            let named = row.match_indices(&flag).any(|(at, _)| {
                !row[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            });
            if !named {
                missing.push(format!("coinstream {} {flag}", command.join(" ")));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in README.md's command table: {missing:?}"
    );
}

/// The subcommands of `command` (`ingest coinbase`, `ingest gateio`), if it has any.
fn commands_of(command: &str) -> Vec<String> {
    commands(&help(&[command]))
}
