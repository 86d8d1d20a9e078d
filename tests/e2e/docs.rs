//! The documentation and the Nix packaging against the built binary: every flag that
//! `ncps … --help` lists, for every command, is in the configuration reference
//! (docs/configuration.md) with its environment variable and config-file key, and every flag
//! the reference's tables name exists; `scripts/check-nix` (parse and evaluate the Nix files,
//! run the NixOS module's command lines against this binary) passes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

/// The repository's root (the e2e target belongs to crates/ncps).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference() -> String {
    let path = repo().join("docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `ncps ARGS… --help`.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ncps"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run ncps");
    assert!(
        out.status.success(),
        "ncps {args:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The commands `ncps --help` lists under "Commands:" (but `help`).
fn subcommands(top: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_commands = false;
    for line in top.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if !in_commands {
            continue;
        }
        if !line.starts_with("  ") {
            break;
        }
        // A command's line is indented by two; its wrapped description by more.
        if line.starts_with("   ") {
            continue;
        }
        let name = line.split_whitespace().next().expect("command name");
        if name != "help" {
            names.push(name.to_string());
        }
    }
    assert!(!names.is_empty(), "no commands found in:\n{top}");
    names
}

/// `--flag` tokens of `text`, each taken whole (so `--cache-cdc-min` is not found inside
/// `--cache-cdc-min-x`).
fn flag_tokens(text: &str) -> BTreeSet<String> {
    let mut tokens = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let starts = bytes[i] == b'-'
            && bytes[i + 1] == b'-'
            && bytes[i + 2].is_ascii_lowercase()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'-'));
        if !starts {
            i += 1;
            continue;
        }
        let mut end = i + 2;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'-') {
            end += 1;
        }
        tokens.insert(text[i..end].trim_end_matches('-').to_string());
        i = end;
    }
    tokens
}

/// The long flags of the options a `--help` lists: lines such as `  -h, --help` and
/// `      --cache-hostname <CACHE_HOSTNAME>` (descriptions are indented further).
fn long_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        if !(2..=6).contains(&indent) || !text.starts_with('-') {
            continue;
        }
        let text = match text.split_once(", ") {
            Some((short, long)) if !short.starts_with("--") => long,
            _ => text,
        };
        if let Some(name) = text.strip_prefix("--") {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

/// The environment variables a `--help` names (`[env: NAME=]`, possibly wrapped).
fn env_vars(help: &str) -> BTreeSet<String> {
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// Every command's help, by command ("" for the top level).
fn all_help() -> Vec<(String, String)> {
    let top = help(&[]);
    let mut all = vec![(String::new(), top.clone())];
    for name in subcommands(&top) {
        let text = help(&[&name]);
        all.push((name, text));
    }
    all
}

#[test]
fn every_flag_is_in_the_configuration_reference() {
    let documented = flag_tokens(&reference());
    let mut missing = Vec::new();
    let mut seen = 0;
    for (command, text) in all_help() {
        let flags = long_flags(&text);
        assert!(
            flags.contains("--help"),
            "no flags parsed from `ncps {command} --help`:\n{text}"
        );
        for flag in flags {
            seen += 1;
            if !documented.contains(&flag) {
                missing.push(format!("ncps {command} {flag}"));
            }
        }
    }
    assert!(
        seen > 50,
        "only {seen} flags found: is the help format still parsed?"
    );
    assert!(
        missing.is_empty(),
        "flags missing from docs/configuration.md:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_environment_variable_is_in_the_configuration_reference() {
    let doc = reference();
    let mut missing = BTreeSet::new();
    for (command, text) in all_help() {
        for var in env_vars(&text) {
            if !doc.contains(&format!("`{var}`")) {
                missing.insert(format!("{var} (ncps {command})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "environment variables missing from docs/configuration.md:\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

/// The config-file keys, read from `CONFIG_KEYS` in crates/ncps/src/cli.rs (every flag's key:
/// a unit test there checks that each flag has one).
#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let cli = std::fs::read_to_string(repo().join("crates/ncps/src/cli.rs")).expect("read cli.rs");
    let start = cli
        .find("const CONFIG_KEYS")
        .expect("CONFIG_KEYS in crates/ncps/src/cli.rs (update this test if it moved)");
    let table = &cli[start..];
    let table = &table[..table.find("];").expect("end of CONFIG_KEYS")];
    // String literals alternate: clap id, config key.
    let literals: Vec<&str> = table.split('"').skip(1).step_by(2).collect();
    let keys: Vec<&str> = literals.iter().skip(1).step_by(2).copied().collect();
    assert!(
        keys.len() > 30,
        "only {} keys parsed from CONFIG_KEYS",
        keys.len()
    );
    let doc = reference();
    let missing: Vec<&str> = keys
        .into_iter()
        .filter(|key| !doc.contains(&format!("`{key}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "config keys missing from docs/configuration.md:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_flag_the_reference_tables_name_exists() {
    let mut existing = BTreeSet::new();
    for (_, text) in all_help() {
        existing.extend(long_flags(&text));
    }
    let mut stale = Vec::new();
    for line in reference().lines() {
        let Some(row) = line.strip_prefix("| `--") else {
            continue;
        };
        let first_cell = row.split('|').next().unwrap_or_default();
        for flag in flag_tokens(&format!("--{first_cell}")) {
            if !existing.contains(&flag) {
                stale.push(flag);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents flags no command has: {stale:?}"
    );
}

#[test]
#[allow(clippy::print_stderr)] // the note that the check was skipped
fn nix_packaging_checks_pass() {
    if Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("note: nix-instantiate not found: scripts/check-nix skipped");
        return;
    }
    let out = Command::new("bash")
        .arg(repo().join("scripts/check-nix"))
        .env("NCPS_BIN", env!("CARGO_BIN_EXE_ncps"))
        .output()
        .expect("run scripts/check-nix");
    assert!(
        out.status.success(),
        "scripts/check-nix failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_parsing_finds_flags_and_commands() {
    let sample = "Usage: ncps serve [OPTIONS]\n\nOptions:\n      --cache-cdc-min <CACHE_CDC_MIN>\n          Minimum chunk size, see --not-a-flag [env:\n          CACHE_CDC_MIN=] [default: 16384]\n  -h, --help\n          Print help\n";
    assert_eq!(
        long_flags(sample).into_iter().collect::<Vec<_>>(),
        ["--cache-cdc-min", "--help"]
    );
    assert_eq!(
        env_vars(sample).into_iter().collect::<Vec<_>>(),
        ["CACHE_CDC_MIN"]
    );
    assert_eq!(
        flag_tokens("`--cache-cdc-min` / `--cache-cdc-max`, a-- b")
            .into_iter()
            .collect::<Vec<_>>(),
        ["--cache-cdc-max", "--cache-cdc-min"]
    );
    let top = "Commands:\n  serve  Serve it [alias: s]\n  migrate-narinfo  Import a\n                   file cache\n  help   Print this\n\nOptions:\n";
    assert_eq!(subcommands(top), ["serve", "migrate-narinfo"]);
}
