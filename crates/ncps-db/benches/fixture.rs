//! Fills a database with a generated cache (`ncps_db::fixtures`) for the scale benchmarks
//! (`scripts/bench-scale`), and writes the request path of every narinfo, shuffled, for a load
//! generator that must not find them in any memo.
//!
//! With `SECRET_KEY_FILE` (a Nix secret key, e.g. from `ncps generate-key`), each narinfo is
//! stored with a signature by that key, as `ncps serve` with that key stores it.
//!
//!   NCPS_BENCH_DATABASE_URL=sqlite:/tmp/x/db.sqlite?mode=rwc N=1000000 CHUNKED=1 \
//!     PATHS_FILE=/tmp/x/paths cargo bench -p ncps-db --features fixtures --bench fixture

use std::io::Write;

use ncps_db::Database;
use ncps_db::fixtures::{FixtureSpec, store_path_hash};
use ncps_nix::SecretKey;

#[tokio::main]
#[allow(clippy::print_stdout)] // a bench reports on stdout
async fn main() {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = env("NCPS_BENCH_DATABASE_URL").expect("NCPS_BENCH_DATABASE_URL names the database");
    let n: u64 = env("N").map_or(1_000_000, |v| v.parse().expect("N is a number"));
    let signed_by = env("SECRET_KEY_FILE").map(|file| {
        let text = std::fs::read_to_string(&file).expect("read SECRET_KEY_FILE");
        SecretKey::parse(text.trim()).expect("SECRET_KEY_FILE holds a Nix secret key")
    });
    let spec = FixtureSpec {
        chunked: env("CHUNKED").is_some_and(|v| v != "0"),
        signed_by,
        ..FixtureSpec::new(n)
    };
    let db = Database::open(&url).await.expect("open database");
    let report = db.fill_fixture(&spec).await.expect("fill");
    println!(
        "fixture N={n} chunked={} fill={:.1}s chunks={} chunk_references={} stored_bytes={}",
        spec.chunked,
        report.elapsed.as_secs_f64(),
        report.chunks,
        report.chunk_references,
        report.stored_bytes
    );
    if let Some(file) = env("PATHS_FILE") {
        // A fixed shuffle (a step coprime with n) visits every path once, in no useful order.
        let step = (0..)
            .map(|k| 0x9E37_79B9u64 + 2 * k)
            .find(|s| gcd(*s, n) == 1)
            .expect("a step");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).expect("paths file"));
        for k in 0..n {
            let i =
                u64::try_from(u128::from(k) * u128::from(step) % u128::from(n)).expect("below n");
            writeln!(out, "/{}.narinfo", store_path_hash(spec.seed, i)).expect("write paths");
        }
        out.flush().expect("write paths");
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
