//! The configuration file: YAML, TOML or JSON with the Go ncps's nested keys
//! (`cache.upstream.urls`, `server.addr`, …), flattened to dotted keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// `$XDG_CONFIG_HOME/ncps/config.yaml` (or `~/.config/…`): read when it exists.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ncps").join("config.yaml"))
}

/// Reads a config file into dotted keys, each with its value(s) as strings.
pub fn load(path: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let value: Value = if is_toml {
        let v: toml::Value = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        serde_json::to_value(v)?
    } else {
        // YAML is a superset of JSON, so this reads .json files too.
        let v: serde_yaml::Value = serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not valid YAML/JSON", path.display()))?;
        serde_json::to_value(v)?
    };
    let mut out = BTreeMap::new();
    match value {
        Value::Object(_) => flatten("", &value, &mut out)?,
        Value::Null => {}
        _ => bail!("{}: the top level must be a mapping", path.display()),
    }
    Ok(out)
}

fn scalar(key: &str, v: &Value) -> Result<String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => bail!("config key {key}: expected a string, number or boolean"),
    })
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Vec<String>>) -> Result<()> {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out)?;
            }
        }
        Value::Array(items) => {
            let vals = items
                .iter()
                .map(|v| scalar(prefix, v))
                .collect::<Result<Vec<_>>>()?;
            out.insert(prefix.to_string(), vals);
        }
        Value::Null => {}
        other => {
            out.insert(prefix.to_string(), vec![scalar(prefix, other)?]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_toml_and_json_flatten_alike() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            (
                "c.yaml",
                "cache:\n  hostname: h\n  upstream:\n    urls: [\"http://a\"]\n  max-size: 10\n",
            ),
            (
                "c.toml",
                "[cache]\nhostname = \"h\"\nmax-size = 10\n[cache.upstream]\nurls = [\"http://a\"]\n",
            ),
            (
                "c.json",
                "{\"cache\":{\"hostname\":\"h\",\"max-size\":10,\"upstream\":{\"urls\":[\"http://a\"]}}}",
            ),
        ];
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let m = load(&p).unwrap();
            assert_eq!(m["cache.hostname"], ["h"], "{name}");
            assert_eq!(m["cache.upstream.urls"], ["http://a"], "{name}");
            assert_eq!(m["cache.max-size"], ["10"], "{name}");
        }
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "- a\n- b\n").unwrap();
        assert!(load(&bad).is_err());
    }
}
