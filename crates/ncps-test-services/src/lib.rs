//! Where ncps's tests find the throwaway servers and tools that `scripts/test` provides, and the
//! one place that decides what a missing one means: the test fails, naming what is missing and
//! how to get it. Nothing here ever lets a test pass without running.
//!
//! To run the suite without the servers, leave their tests out explicitly:
//! `cargo nextest run --workspace --profile no-services` (see `.config/nextest.toml`); nextest
//! then counts them as skipped, never as passed.

use std::path::PathBuf;

/// The PostgreSQL server URL (an administrator URL; tests create their own databases).
pub fn postgres_url() -> String {
    required("NCPS_TEST_POSTGRES_URL", "a PostgreSQL server")
}

/// The MySQL/MariaDB server URL (an administrator URL; tests create their own databases).
pub fn mysql_url() -> String {
    required("NCPS_TEST_MYSQL_URL", "a MariaDB/MySQL server")
}

/// The PostgreSQL server's Unix socket (`<dir>/.s.PGSQL.<port>`).
pub fn postgres_socket() -> String {
    required(
        "NCPS_TEST_POSTGRES_SOCKET",
        "a PostgreSQL server's Unix socket",
    )
}

/// The MySQL/MariaDB server's Unix socket.
pub fn mysql_socket() -> String {
    required(
        "NCPS_TEST_MYSQL_SOCKET",
        "a MariaDB/MySQL server's Unix socket",
    )
}

/// The Redis server as `host:port`.
pub fn redis_addr() -> String {
    required("NCPS_TEST_REDIS_ADDR", "a Redis server")
}

/// An S3 server (Garage) with a bucket-creating key.
#[derive(Clone, Debug)]
pub struct S3 {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Access key id.
    pub key_id: String,
    /// Secret access key.
    pub secret: String,
    /// Garage's configuration file, for its admin CLI (creating buckets).
    pub garage_config: String,
}

/// The S3 server.
pub fn s3() -> S3 {
    let what = "an S3 server (Garage)";
    S3 {
        endpoint: required("NCPS_TEST_S3_ENDPOINT", what),
        key_id: required("NCPS_TEST_S3_KEY_ID", what),
        secret: required("NCPS_TEST_S3_SECRET", what),
        garage_config: required("NCPS_TEST_GARAGE_CONFIG", what),
    }
}

/// The Azure Blob storage emulator (Azurite) `scripts/test` starts.
#[derive(Clone, Debug)]
pub struct Azurite {
    /// `http://127.0.0.1:<port>` (its account is the emulator's well-known one).
    pub url: String,
    /// `node_modules` holding `@azure/storage-blob`, which creates containers.
    pub node_modules: String,
}

/// The Azurite server.
pub fn azurite() -> Azurite {
    let what = "the Azure Blob storage emulator (Azurite)";
    Azurite {
        url: required("NCPS_TEST_AZURITE_URL", what),
        node_modules: required("NCPS_TEST_AZURE_NODE_MODULES", what),
    }
}

/// The Google Cloud Storage emulator `scripts/test` starts: `http://127.0.0.1:<port>`.
pub fn gcs_emulator() -> String {
    required("NCPS_TEST_GCS_URL", "a Google Cloud Storage emulator")
}

/// The path of a program the tests run (`nix`, `sqlite3`, `nix-instantiate`, …).
pub fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!(
            "this test needs `{name}` on PATH. Run scripts/test (it installs what the tests \
             need), or install it"
        )
    })
}

/// The first `name` on `PATH` that is a file.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The value of `var`, which names `what`; a missing or empty one fails the test.
fn required(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "this test needs {what}: {var} is not set. Run scripts/test (it starts throwaway \
             servers on 127.0.0.1), point {var} at one, or leave these tests out explicitly with \
             `cargo nextest run --profile no-services` (they are then reported as skipped)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_found_missing() {
        assert!(which("sh").is_some());
        assert!(which("surely-not-a-program-ncps-needs").is_none());
    }

    #[test]
    #[should_panic(expected = "NCPS_TEST_SURELY_UNSET is not set")]
    fn a_missing_service_fails_the_test() {
        required("NCPS_TEST_SURELY_UNSET", "nothing");
    }
}
