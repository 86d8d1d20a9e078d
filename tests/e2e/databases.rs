//! ncps on PostgreSQL and on MariaDB instead of the embedded SQLite: a Nix client substitutes a
//! closure through it, ncps restarts on the same database and serves the closure with the
//! upstream gone, and `ncps migrate` finds the schema current.
//!
//! `scripts/test` starts throwaway servers and names them in `NCPS_TEST_POSTGRES_URL` and
//! `NCPS_TEST_MYSQL_URL` (an administrator URL: each test creates its own database). A missing
//! server fails the test (`ncps-test-services` decides); `cargo nextest run --profile
//! no-services` leaves these tests out, reported as skipped.

use crate::harness::{Compression, Fixture, FixtureOptions, ServerDatabase, eventually};

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

async fn substitutes_and_survives_a_restart(server: String) {
    let db = ServerDatabase::create(server);
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

    // The metadata is in the server database, read with the server's own client, and no
    // SQLite database appeared beside the data.
    let paths = fx.closure.paths.len() as u64;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM narinfos"),
        paths,
        "narinfo rows in the server database"
    );
    // A NAR's row is written just after its last byte went out.
    eventually("a NAR row per path in the server database", || async {
        match db.count("SELECT COUNT(*) FROM nars") {
            n if n == paths => Ok(()),
            n => Err(format!("{n} NAR rows, {paths} paths")),
        }
    })
    .await;
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM narinfos WHERE hash = '{}'",
            crate::harness::narinfo::store_hash(&top)
        )),
        1
    );
    let sqlite_files: Vec<_> = walk(&fx.config.data_dir)
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "sqlite")
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("sqlite"))
        })
        .collect();
    assert!(
        sqlite_files.is_empty(),
        "SQLite files appeared with --cache-database-url: {sqlite_files:?}"
    );
    // Every request is logged: a line was lost after each query on a server database once
    // (sqlx asked the log filter about statements it then did not log).
    let log = fx.ncps.log();
    let nar_lines = log.matches(r#""route":"nar""#).count() as u64;
    assert!(
        nar_lines >= paths,
        "{nar_lines} NAR request lines logged for {paths} NARs downloaded:\n{log}"
    );
    let migrations = "SELECT version, installed_on FROM _sqlx_migrations ORDER BY version";
    let applied = db.query(migrations);
    assert!(
        !applied.is_empty(),
        "no migration recorded in the server database"
    );

    // A restarted ncps serves the closure alone, and applies no migration again.
    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");
    fx.ncps = fx.env.ncps(&fx.config).await;
    assert_eq!(
        db.query(migrations),
        applied,
        "the restart applied migrations again"
    );
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
    let latest = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../migrations/sqlite"
    ))
    .expect("migrations directory")
    .count();
    let current = format!("database schema at version {latest}");
    assert!(
        migrate.output.contains(&current),
        "want {current:?}: {}",
        migrate.output
    );
    drop(fx);
    drop(db);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_backed_cache_substitutes_and_survives_a_restart() {
    substitutes_and_survives_a_restart(ncps_test_services::postgres_url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_backed_cache_substitutes_and_survives_a_restart() {
    substitutes_and_survives_a_restart(ncps_test_services::mysql_url()).await;
}
