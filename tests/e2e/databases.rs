//! ncps on PostgreSQL and on MariaDB instead of the embedded SQLite: a Nix client substitutes a
//! closure through it, ncps restarts on the same database and serves the closure with the
//! upstream gone, and `ncps migrate` finds the schema current.
//!
//! `scripts/test` starts throwaway servers and names them in `NCPS_TEST_POSTGRES_URL` and
//! `NCPS_TEST_MYSQL_URL` (an administrator URL: each test creates its own database). Outside
//! CI a missing server skips the test with a note; with `CI=true` or
//! `NCPS_TEST_REQUIRE_ALL_ENGINES=1` it fails it.

use std::process::Command;

use crate::harness::{Compression, Fixture, FixtureOptions, random_hex};

/// A database created for one test on a server from the environment, dropped at the end.
struct ServerDatabase {
    /// `psql` or `mariadb`, with the flags that reach the server as its administrator.
    admin: Vec<String>,
    name: String,
    /// The URL ncps gets.
    url: String,
}

impl ServerDatabase {
    /// `None` (after a note) when `var` is unset and CI does not require the engine.
    #[allow(clippy::print_stderr)] // the skip note is for whoever runs the tests
    fn create(var: &str) -> Option<ServerDatabase> {
        let Some(server) = std::env::var(var).ok().filter(|v| !v.is_empty()) else {
            let required = std::env::var("CI").as_deref() == Ok("true")
                || std::env::var("NCPS_TEST_REQUIRE_ALL_ENGINES").as_deref() == Ok("1");
            assert!(
                !required,
                "{var} is not set, and CI requires the database end-to-end tests: run \
                 scripts/test (it starts throwaway PostgreSQL and MariaDB servers)"
            );
            eprintln!("note: {var} is not set; skipping (scripts/test starts the server)");
            return None;
        };
        let parsed = url::Url::parse(&server).expect("database server URL");
        let name = format!("ncps_e2e_{}", random_hex(6));
        let admin = match parsed.scheme() {
            "postgres" | "postgresql" => vec!["psql".to_owned(), server.clone(), "-q".to_owned()],
            _ => {
                let mut admin = vec![
                    "mariadb".to_owned(),
                    "--no-defaults".to_owned(),
                    "--protocol=tcp".to_owned(),
                    "-h".to_owned(),
                    parsed.host_str().expect("server host").to_owned(),
                    "-P".to_owned(),
                    parsed.port().unwrap_or(3306).to_string(),
                    "-u".to_owned(),
                    parsed.username().to_owned(),
                ];
                if let Some(password) = parsed.password() {
                    admin.push(format!("-p{password}"));
                }
                admin
            }
        };
        let mut url = parsed.clone();
        url.set_path(&format!("/{name}"));
        let db = ServerDatabase {
            admin,
            name,
            url: url.to_string(),
        };
        db.admin_sql(&format!("CREATE DATABASE {}", db.name));
        Some(db)
    }

    fn admin_sql(&self, sql: &str) {
        let flag = if self.is_postgres() { "-c" } else { "-e" };
        let out = Command::new(&self.admin[0])
            .args(&self.admin[1..])
            .args([flag, sql])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.admin[0]));
        assert!(
            out.status.success(),
            "{} {sql:?}: {}",
            self.admin[0],
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn is_postgres(&self) -> bool {
        self.admin[0] == "psql"
    }
}

impl Drop for ServerDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return; // kept for inspection; the throwaway server goes away anyway
        }
        let drop = if self.is_postgres() {
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
        } else {
            format!("DROP DATABASE IF EXISTS {}", self.name)
        };
        self.admin_sql(&drop);
    }
}

async fn substitutes_and_survives_a_restart(var: &str) {
    let Some(db) = ServerDatabase::create(var) else {
        return;
    };
    let mut fx = Fixture::with(
        FixtureOptions::new(Compression::Xz).ncps_args(&["--cache-database-url", &db.url]),
    )
    .await;
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    let top = fx.closure.top.clone();
    let narinfo = fx.ncps_narinfo(&top).await;
    assert!(
        narinfo
            .all("Sig")
            .iter()
            .any(|s| s.starts_with("ncps-e2e.test:")),
        "narinfo of {top} is not signed by ncps: {:?}",
        narinfo.all("Sig")
    );

    // The metadata is in the server database: a restarted ncps serves the closure alone.
    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");
    fx.ncps = fx.env.ncps(&fx.config).await;
    fx.upstream.stop().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    assert_eq!(
        fx.ncps_narinfo(&top).await.field("URL"),
        narinfo.field("URL")
    );

    // `ncps migrate` on a running cache's database finds the schema current.
    let migrate = fx
        .env
        .ncps_admin("migrate", &fx.config, &["--cache-database-url", &db.url])
        .await
        .expect_success();
    assert!(
        migrate.output.contains("database schema at version 2"),
        "{}",
        migrate.output
    );
    drop(fx);
    drop(db);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backed_cache_substitutes_and_survives_a_restart() {
    substitutes_and_survives_a_restart("NCPS_TEST_POSTGRES_URL").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_backed_cache_substitutes_and_survives_a_restart() {
    substitutes_and_survives_a_restart("NCPS_TEST_MYSQL_URL").await;
}
