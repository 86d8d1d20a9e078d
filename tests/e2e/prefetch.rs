//! Closure prefetch: with `--cache-upstream-prefetch`, fetching a narinfo from upstream starts
//! its NAR's download at once; without it, nothing is downloaded until a client asks.

use std::time::Duration;

use crate::harness::{Compression, Fixture, FixtureOptions, eventually_within, http};

#[tokio::test(flavor = "multi_thread")]
async fn narinfo_fetch_starts_the_nar_download_only_with_prefetch() {
    for prefetch in [true, false] {
        let mut options = FixtureOptions::new(Compression::Zstd);
        if prefetch {
            options = options.ncps_args(&["--cache-upstream-prefetch"]);
        }
        let fx = Fixture::with(options).await;
        let blob = &fx.closure.blob;
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
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                fx.upstream.gets(&nar_path),
                0,
                "no prefetch without the flag"
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
