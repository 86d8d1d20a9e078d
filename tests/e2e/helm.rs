//! The Helm chart (charts/ncps), rendered by the real Helm engine (scripts/render-helm, Helm v4
//! as a library; no cluster) with values in the Go chart's names, and its pods' commands run:
//! the single-instance shape starts and serves from what the chart renders, the replica shape
//! renders for PostgreSQL + S3 + Redis and its migration Job migrates a real PostgreSQL
//! database, and shapes that would corrupt a shared cache are refused with a message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_yaml::Value;

use crate::harness::server_db::ServerDatabase;
use crate::harness::{Compression, TestEnv, http};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The chart rendered with `values`: every manifest document, or the error Helm printed.
fn render(values: serde_json::Value) -> Result<Vec<Value>, String> {
    let python = std::env::var("NCPS_HELM_PYTHON").unwrap_or_else(|_| {
        panic!(
            "this test needs NCPS_HELM_PYTHON, a Python with the helm-python-sdk wheel. Run \
             scripts/test (it installs one)"
        )
    });
    let out = Command::new(python)
        .arg(repo().join("scripts/render-helm"))
        .arg(repo().join("charts/ncps"))
        .arg(values.to_string())
        .output()
        .expect("run scripts/render-helm");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let templates: BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).expect("the rendered templates");
    Ok(templates
        .iter()
        .filter(|(name, _)| name.ends_with(".yaml"))
        .flat_map(|(_, text)| {
            text.split("\n---")
                .map(|doc| serde_yaml::from_str::<Value>(doc).expect("a YAML manifest"))
                .collect::<Vec<_>>()
        })
        .filter(|doc| !doc.is_null())
        .collect())
}

/// The one manifest of `kind`.
fn manifest<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{kind} manifests: {found:?}");
    found[0]
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| d["kind"].as_str()).collect()
}

/// A container's argument list.
fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("an argument").to_owned())
        .collect()
}

/// A container's environment, secrets resolved from the rendered Secret.
fn env_of(container: &Value, secret: Option<&Value>) -> Vec<(String, String)> {
    container["env"]
        .as_sequence()
        .map(|env| {
            env.iter()
                .map(|e| {
                    let name = e["name"].as_str().expect("env name").to_owned();
                    let value = match e["value"].as_str() {
                        Some(v) => v.to_owned(),
                        None => {
                            let key = e["valueFrom"]["secretKeyRef"]["key"]
                                .as_str()
                                .expect("a secret key");
                            let data = secret.expect("the chart's Secret")["data"][key]
                                .as_str()
                                .unwrap_or_else(|| panic!("no {key} in the Secret"));
                            String::from_utf8(
                                base64::engine::general_purpose::STANDARD
                                    .decode(data)
                                    .expect("base64"),
                            )
                            .expect("utf-8")
                        }
                    };
                    (name, value)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The ConfigMap's config.yaml.
fn config_yaml(docs: &[Value]) -> String {
    manifest(docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml")
        .to_owned()
}

/// Values in the Go chart's names for one cache in front of `upstream`.
fn single_values(upstream: &str, key: &str) -> serde_json::Value {
    serde_json::json!({
        "config": {
            "hostname": "cache.example.lan",
            "upstream": {"caches": [{"url": upstream, "publicKey": key}]},
            "cache": {"maxSize": "10G", "lruSchedule": "0 2 * * *"},
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_single_instance_chart_runs_as_rendered() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let docs = render(single_values(&upstream.url(), &key.public)).expect("the default chart");
    let mut found = kinds(&docs);
    found.sort_unstable();
    assert_eq!(
        found,
        ["ConfigMap", "Service", "ServiceAccount", "StatefulSet"],
        "no Secret without secrets, no PVC beside the volume claim template"
    );
    let set = manifest(&docs, "StatefulSet");
    assert_eq!(set["spec"]["replicas"], 1);
    assert_eq!(
        set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "storage"
    );
    let pod = &set["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    let main = &pod["containers"][0];
    assert_eq!(
        args(init),
        ["--config", "/etc/ncps/config.yaml", "migrate", "up"]
    );
    assert_eq!(args(main), ["--config", "/etc/ncps/config.yaml", "serve"]);
    assert_eq!(main["ports"][0]["containerPort"], 8501);

    // Run the pod's two containers as the chart wrote them, on this machine: only the
    // directories the pod mounts (/storage, /tmp/ncps, /etc/ncps) are moved under the test's.
    let root = env.path().join("pod");
    let (storage, temp) = (root.join("storage"), root.join("tmp"));
    let moved = |text: &str| {
        text.replace("\"/tmp/ncps\"", &format!("\"{}\"", temp.display()))
            .replace("\"/storage", &format!("\"{}", storage.display()))
            .replace("sqlite:/storage", &format!("sqlite:{}", storage.display()))
    };
    let config = root.join("etc/config.yaml");
    std::fs::create_dir_all(config.parent().expect("dir")).expect("mkdir");
    std::fs::write(&config, moved(&config_yaml(&docs))).expect("write config.yaml");
    let pod_env: Vec<(String, String)> = env_of(main, None)
        .into_iter()
        .map(|(k, v)| (k, moved(&v)))
        .collect();
    let container_args = |c: &Value| -> Vec<String> {
        args(c)
            .into_iter()
            .map(|a| a.replace("/etc/ncps/config.yaml", &config.display().to_string()))
            .collect()
    };
    let migrate = Command::new(env!("CARGO_BIN_EXE_ncps"))
        .args(container_args(init))
        .envs(pod_env.iter().cloned())
        .output()
        .expect("run the init container's command");
    assert!(
        migrate.status.success(),
        "migrate up: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(
        root.join("storage/db/ncps.db").is_file(),
        "the SQLite file is not on the volume"
    );

    let mut ncps_config = env.ncps_config(&[], &[]);
    ncps_config.config_file = Some(config.clone());
    ncps_config.extra_env = pod_env;
    let ncps = env.ncps(&ncps_config).await;
    let narinfo = ncps.narinfo_eventually(&closure.top).await;
    http::get(&ncps.url_for(narinfo.field("URL")))
        .await
        .expect_status(200, "the NAR");
    assert!(ncps.pubkey().await.starts_with("cache.example.lan:"));
    let log = ncps.log();
    assert!(
        !log.contains("unknown key"),
        "the chart writes a key ncps does not know:\n{log}"
    );
}

/// Values in the Go chart's names for three replicas on PostgreSQL, S3 and Redis.
fn replica_values() -> serde_json::Value {
    serde_json::json!({
        "replicaCount": 3,
        "mode": "deployment",
        "migration": {"mode": "job"},
        "config": {
            "hostname": "cache.example.lan",
            "signing": {"secretKey": "cache.example.lan:ZXhhbXBsZQ=="},
            "permissions": {"allowPut": true, "putToken": "write-secret"},
            "storage": {"type": "s3", "s3": {
                "bucket": "nars", "endpoint": "http://garage:3900", "forcePathStyle": true,
                "accessKeyId": "GKexample", "secretAccessKey": "s3-secret"}},
            "database": {"type": "postgresql", "postgresql": {
                "host": "db", "username": "ncps", "password": "p@ss word", "database": "ncps"}},
            "redis": {"enabled": true, "addresses": ["redis-0:6379", "redis-1:6379"],
                "password": "redis-secret"},
            "lock": {"backend": "redis"},
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replica_chart_renders_for_postgres_s3_and_redis() {
    let docs = render(replica_values()).expect("the replica chart");
    let deployment = manifest(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pod = &deployment["spec"]["template"]["spec"];
    assert!(
        pod["initContainers"].is_null(),
        "replicas migrating at once"
    );
    assert_eq!(
        pod["volumes"][2]["emptyDir"],
        Value::Mapping(Default::default())
    );
    let secret = manifest(&docs, "Secret");
    let main = &pod["containers"][0];
    let pod_env: BTreeMap<String, String> = env_of(main, Some(secret)).into_iter().collect();
    assert_eq!(
        pod_env["CACHE_DATABASE_URL"],
        "postgres://ncps:p%40ss+word@db:5432/ncps?sslmode=disable"
    );
    assert_eq!(pod_env["CACHE_STORAGE_S3_SECRET_ACCESS_KEY"], "s3-secret");
    assert_eq!(pod_env["CACHE_REDIS_PASSWORD"], "redis-secret");
    assert_eq!(pod_env["CACHE_PUT_TOKEN"], "write-secret");
    let config: Value = serde_yaml::from_str(&config_yaml(&docs)).expect("config.yaml");
    let cache = &config["cache"];
    assert_eq!(cache["storage"]["s3"]["bucket"], "nars");
    assert_eq!(cache["lock"]["backend"], "redis");
    assert_eq!(cache["redis"]["addrs"][1], "redis-1:6379");
    assert_eq!(cache["secret-key-path"], "/etc/ncps-key/secret-key");
    for secret in [
        "s3-secret",
        "redis-secret",
        "write-secret",
        "p@ss",
        "ZXhhbXBsZQ",
    ] {
        assert!(
            !config_yaml(&docs).contains(secret),
            "{secret} in the ConfigMap: {}",
            config_yaml(&docs)
        );
    }
    let job = manifest(&docs, "Job");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    assert_eq!(
        args(&job["spec"]["template"]["spec"]["containers"][0]),
        ["--config", "/etc/ncps/config.yaml", "migrate", "up"]
    );
}

/// The migration Job of the replica chart, run against a real PostgreSQL database: only the
/// server's address in the rendered URL is this test's.
#[tokio::test(flavor = "multi_thread")]
async fn the_replica_charts_migration_job_migrates_postgres() {
    let db = ServerDatabase::create(ncps_test_services::postgres_url());
    let env = TestEnv::new();
    let docs = render(replica_values()).expect("the replica chart");
    let job = manifest(&docs, "Job");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let config = env.path().join("config.yaml");
    std::fs::write(&config, config_yaml(&docs)).expect("write config.yaml");
    let mut pod_env = env_of(container, Some(manifest(&docs, "Secret")));
    for (name, value) in &mut pod_env {
        if name == "CACHE_DATABASE_URL" {
            *value = db.url.clone();
        }
    }
    let run = Command::new(env!("CARGO_BIN_EXE_ncps"))
        .args(
            args(container)
                .into_iter()
                .map(|a| a.replace("/etc/ncps/config.yaml", &config.display().to_string())),
        )
        .envs(pod_env)
        .output()
        .expect("run the Job's command");
    let said =
        String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the migration Job failed: {said}");
    assert!(said.contains("database schema at version"), "{said}");
    assert!(!said.contains("unknown key"), "{said}");
    assert!(db.count("SELECT COUNT(*) FROM narinfos") == 0);
}

#[test]
fn shapes_that_would_corrupt_a_shared_cache_are_refused() {
    let with = |patch: serde_json::Value| {
        let mut values = replica_values();
        merge(&mut values, patch);
        values
    };
    for (patch, message) in [
        (
            serde_json::json!({"config": {"database": {"type": "sqlite"}}}),
            "needs config.database.type postgresql or mysql",
        ),
        (
            serde_json::json!({"config": {"storage": {"type": "local"}}}),
            "needs config.storage.type s3",
        ),
        (
            serde_json::json!({"config": {"lock": {"backend": "local"}}}),
            "needs config.lock.backend redis or postgres",
        ),
        (
            serde_json::json!({"config": {"signing": {"secretKey": ""}}}),
            "every replica must sign with the same key",
        ),
        (
            serde_json::json!({"replicaCount": 1, "config": {"database": {"type": "sqlite"}}}),
            "a Job cannot reach the SQLite file",
        ),
    ] {
        let refused = render(with(patch.clone())).expect_err(&format!("{patch} rendered"));
        assert!(refused.contains(message), "{patch}: {refused}");
    }
}

/// Merges `patch` into `value` (objects key by key).
fn merge(value: &mut serde_json::Value, patch: serde_json::Value) {
    match (value, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}
