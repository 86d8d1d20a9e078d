//! The documentation and the Nix packaging against the built binary: every flag that
//! `ncps … --help` lists, for every command, is in the configuration reference
//! (docs/configuration.md) with its environment variable and the default `--help` shows; every
//! flag the reference's tables name exists, and the binary reads every config-file key they
//! name; `scripts/check-nix` (parse and evaluate the Nix files, run the NixOS module's command
//! lines against this binary) passes.

use std::collections::{BTreeMap, BTreeSet};
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

/// The long flag an option line of a `--help` names: lines such as `  -h, --help` and
/// `      --cache-hostname <CACHE_HOSTNAME>` (descriptions are indented further).
fn option_line_flag(line: &str) -> Option<String> {
    let text = line.trim_start();
    let indent = line.len() - text.len();
    if !(2..=6).contains(&indent) || !text.starts_with('-') {
        return None;
    }
    let text = match text.split_once(", ") {
        Some((short, long)) if !short.starts_with("--") => long,
        _ => text,
    };
    let name: String = text
        .strip_prefix("--")?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    Some(format!("--{name}"))
}

/// The long flags of the options a `--help` lists.
fn long_flags(help: &str) -> BTreeSet<String> {
    help.lines().filter_map(option_line_flag).collect()
}

/// The default each option of a `--help` shows (`[default: X]`, possibly wrapped; clap quotes
/// a value with spaces), by long flag.
fn help_defaults(help: &str) -> BTreeMap<String, String> {
    let mut options: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        match option_line_flag(line) {
            Some(flag) => options.push((flag, line.to_string())),
            None => {
                if let Some((_, text)) = options.last_mut() {
                    text.push(' ');
                    text.push_str(line);
                }
            }
        }
    }
    options
        .into_iter()
        .filter_map(|(flag, text)| {
            let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let rest = flat.split_once("[default: ")?.1;
            let value = &rest[..rest.find(']')?];
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((flag, value.to_string()))
        })
        .collect()
}

/// The rows of the reference's tables, each as (column name, cell) pairs: a table is a header
/// row, a `|---|` row and the rows up to the first line that is not one.
fn table_rows(doc: &str) -> Vec<BTreeMap<String, String>> {
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_string()).collect()
    };
    let lines: Vec<&str> = doc.lines().collect();
    let mut rows = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        if !(lines[i].starts_with('|') && lines[i + 1].starts_with("|---")) {
            i += 1;
            continue;
        }
        let header = cells(lines[i]);
        i += 2;
        while i < lines.len() && lines[i].starts_with('|') {
            rows.push(header.iter().cloned().zip(cells(lines[i])).collect());
            i += 1;
        }
    }
    rows
}

/// The rows of the reference's flag tables (columns flag, env var, config key, default, what;
/// not the NixOS module's table, which maps options to flags), each with the flags its first
/// cell names (one, or several such as `--help` (`-h`)).
fn flag_rows(doc: &str) -> Vec<(BTreeSet<String>, BTreeMap<String, String>)> {
    table_rows(doc)
        .into_iter()
        .filter(|row| row.contains_key("config key") && row.contains_key("default"))
        .filter_map(|row| {
            let flags = flag_tokens(row.get("flag")?);
            (!flags.is_empty()).then_some((flags, row))
        })
        .collect()
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
    let mut seen = BTreeSet::new();
    for (command, text) in all_help() {
        for var in env_vars(&text) {
            if !doc.contains(&format!("`{var}`")) {
                missing.insert(format!("{var} (ncps {command})"));
            }
            seen.insert(var);
        }
    }
    assert!(
        seen.len() >= 50,
        "only {} environment variables found: is the help format still parsed?",
        seen.len()
    );
    assert!(
        missing.is_empty(),
        "environment variables missing from docs/configuration.md:\n  {}",
        missing.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

/// The defaults `--help` shows are the reference's: every row of a flag whose help shows
/// `[default: X]` has `X` (as code) in its default column.
#[test]
fn every_default_help_shows_is_the_one_the_reference_gives() {
    let rows = flag_rows(&reference());
    // By flag: each command that has it, with the default its help shows there.
    let mut shown: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (command, text) in all_help() {
        for (flag, value) in help_defaults(&text) {
            shown
                .entry(flag)
                .or_default()
                .push((command.clone(), value));
        }
    }
    assert!(
        shown.len() >= 30,
        "only {} flags with a default found in --help: is its format still parsed?",
        shown.len()
    );
    let mut wrong = Vec::new();
    let mut checked = BTreeSet::new();
    for (flag, (command, value)) in shown
        .iter()
        .flat_map(|(flag, seen)| seen.iter().map(move |s| (flag, s)))
    {
        let expected = format!("`{value}`");
        for (_, row) in rows.iter().filter(|(flags, _)| flags.contains(flag)) {
            let cell = row.get("default").map(String::as_str).unwrap_or_default();
            if cell != expected {
                wrong.push(format!(
                    "{flag}: `ncps {command} --help` shows {expected}, the reference {cell:?}"
                ));
            }
            checked.insert(flag);
        }
    }
    assert!(
        wrong.is_empty(),
        "defaults in docs/configuration.md differ from --help:\n  {}",
        wrong.join("\n  ")
    );
    let unchecked: Vec<&String> = shown.keys().filter(|f| !checked.contains(f)).collect();
    assert!(
        unchecked.is_empty(),
        "flags with a default but no row in docs/configuration.md: {unchecked:?}"
    );
}

/// Every config-file key the reference's tables name is one the binary reads: a config file
/// with all of them (at their documented defaults where the reference gives one) draws no
/// "unknown key" warning but for a made-up key put in as a control.
#[test]
fn every_config_key_in_the_configuration_reference_is_read() {
    const CONTROL: &str = "cache.no-such-key";
    let mut values = BTreeMap::new();
    for (_, row) in flag_rows(&reference()) {
        let Some(key) = row.get("config key") else {
            continue;
        };
        if key == "—" {
            continue;
        }
        let key = key
            .strip_prefix('`')
            .and_then(|k| k.strip_suffix('`'))
            .unwrap_or_else(|| panic!("config key cell {key:?} is not one `key`"));
        // Only the keys of `generate-key`'s flags are parsed below; any value does for the rest.
        let default = row.get("default").map(String::as_str).unwrap_or_default();
        let value = default
            .strip_prefix('`')
            .and_then(|v| v.strip_suffix('`'))
            .filter(|v| !v.contains('`'))
            .unwrap_or("x");
        values.insert(key.to_string(), value.to_string());
    }
    assert!(
        values.len() >= 50,
        "only {} config keys found in the reference's tables",
        values.len()
    );
    values.insert(CONTROL.to_string(), "x".to_string());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, nested_json(&values)).unwrap();
    // The lightest command that reads the file: it logs unknown keys, then writes a key pair
    // into the temporary directory.
    let out = Command::new(env!("CARGO_BIN_EXE_ncps"))
        .arg("--config")
        .arg(&config)
        .args(["generate-key", "--name", "docs-test"])
        .arg("--secret-key-path")
        .arg(dir.path().join("secret.key"))
        .env_remove("RUST_LOG")
        .env_remove("LOG_LEVEL")
        .output()
        .expect("run ncps");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ncps with every documented key failed:\n{}\n{logs}",
        String::from_utf8_lossy(&out.stdout)
    );
    // JSON log lines on stderr (not a terminal), with the key in a "key" field.
    let unknown: BTreeSet<&str> = logs
        .lines()
        .filter(|line| line.contains("unknown key in the config file"))
        .filter_map(|line| {
            let rest = line.split_once("\"key\":\"")?.1;
            Some(&rest[..rest.find('"')?])
        })
        .collect();
    assert_eq!(
        unknown,
        BTreeSet::from([CONTROL]),
        "docs/configuration.md names config keys ncps does not read (the control {CONTROL} \
         must be the only unknown one):\n{logs}"
    );
}

/// `key.path: value` pairs as the nested mappings a config file holds (as JSON: ncps reads
/// JSON as the YAML it is), every value a string.
fn nested_json(values: &BTreeMap<String, String>) -> String {
    let mut root = serde_json::Map::new();
    for (key, value) in values {
        let parts: Vec<&str> = key.split('.').collect();
        let (leaf, parents) = parts.split_last().expect("a key");
        let mut map = &mut root;
        for part in parents {
            map = map
                .entry(*part)
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
                .as_object_mut()
                .unwrap_or_else(|| panic!("{key}: a parent is also a key"));
        }
        let old = map.insert(leaf.to_string(), value.as_str().into());
        assert!(old.is_none(), "{key}: also a parent of other keys");
    }
    serde_json::Value::Object(root).to_string()
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
fn nix_packaging_checks_pass() {
    // scripts/check-nix parses and evaluates the Nix files with it: missing, the test fails.
    ncps_test_services::tool("nix-instantiate");
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
    let wrapped = "      --a <A>\n          When [default:\n          \"@every 5m\"]\n      --b\n          [default: 3s] x\n      --c\n";
    assert_eq!(
        help_defaults(wrapped).into_iter().collect::<Vec<_>>(),
        [
            ("--a".into(), "@every 5m".into()),
            ("--b".into(), "3s".into())
        ]
    );
}

#[test]
fn reference_parsing_finds_rows_and_nests_keys() {
    let doc = "text | not a table\n\n| flag | env var | config key | default | what |\n|---|---|---|---|---|\n| `--x-y` (repeatable) | `X_Y` | `x.y` | `1h` | a `|` b |\n| `--z` |\n\n| option | flag |\n|---|---|\n| `o` | `--x-y` |\n";
    let rows = flag_rows(doc);
    assert_eq!(rows.len(), 1);
    let (flags, row) = &rows[0];
    assert_eq!(flags.iter().collect::<Vec<_>>(), ["--x-y"]);
    assert_eq!(row["config key"], "`x.y`");
    assert_eq!(row["default"], "`1h`");
    let values = BTreeMap::from([
        ("a.b.c".to_string(), "1".to_string()),
        ("a.b-x".to_string(), "q\"".to_string()),
        ("a.e".to_string(), "@x".to_string()),
        ("f".to_string(), String::new()),
    ]);
    assert_eq!(
        nested_json(&values),
        r#"{"a":{"b":{"c":"1"},"b-x":"q\"","e":"@x"},"f":""}"#
    );
}
