//! Closure prefetch: with `--cache-upstream-prefetch`, fetching a narinfo from upstream starts
//! its NAR's download at once; without it, nothing is downloaded until a client asks. The run
//! with the flag measures how long the prefetch took to reach the upstream and store the NAR;
//! the run without waits several times that long and finds nothing asked and nothing stored.

use std::time::{Duration, Instant};

use crate::harness::{Compression, Fixture, FixtureOptions, eventually_within, http};

#[tokio::test(flavor = "multi_thread")]
async fn narinfo_fetch_starts_the_nar_download_only_with_prefetch() {
    let mut prefetch_took = None;
    for prefetch in [true, false] {
        let mut options = FixtureOptions::new(Compression::Zstd);
        if prefetch {
            options = options.ncps_args(&["--cache-upstream-prefetch"]);
        }
        let fx = Fixture::with(options).await;
        let blob = &fx.closure.blob;
        let asked = Instant::now();
        http::get(&fx.narinfo_url(blob))
            .await
            .expect_status(200, "narinfo");
        let nar_path = fx.upstream.nar_path(blob);
        if prefetch {
            eventually_within(
                "the NAR is prefetched and stored",
                Duration::from_secs(20),
                || {
                    let gets = fx.upstream.gets(&nar_path);
                    let stored = fx.config.whole_nar_files().len();
                    async move {
                        if gets == 1 && stored == 1 {
                            Ok(())
                        } else {
                            Err(format!("{gets} upstream GETs, {stored} stored files"))
                        }
                    }
                },
            )
            .await;
            prefetch_took = Some(asked.elapsed());
        } else {
            let took = prefetch_took.expect("the run with prefetch comes first");
            let wait = (took * 5).max(Duration::from_secs(2));
            tokio::time::sleep(wait.saturating_sub(asked.elapsed())).await;
            assert_eq!(
                fx.upstream.gets(&nar_path),
                0,
                "no prefetch without the flag (waited {wait:?}; a prefetch took {took:?})"
            );
            assert!(
                fx.config.whole_nar_files().is_empty(),
                "nothing is stored without the flag before a client asks"
            );
        }
        // Either way the client's own request gets the NAR, without a second upstream GET.
        let narinfo = fx.ncps_narinfo(blob).await;
        http::get(&fx.nar_url(&narinfo))
            .await
            .expect_status(200, "NAR");
        assert_eq!(fx.upstream.gets(&nar_path), 1);
    }
}
