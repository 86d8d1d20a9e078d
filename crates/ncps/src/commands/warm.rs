//! `ncps warm --url URL PATH…`: fills a running cache with closures before clients ask for
//! them. Every path's narinfo and NAR are fetched through the cache's own HTTP routes (so they
//! go through its verification, chunking and single-flight downloads, as a client's would), the
//! `References` of each narinfo are followed to cover whole closures, and at most
//! `--concurrency` paths are in flight. Needs no database or storage: it runs from any machine
//! that can reach the cache (with its read token when it has one).
//!
//! Progress (one line per path) goes to stderr, the summary to stdout; the exit status is 1 when
//! any path failed. A path no upstream has is reported as missing, not as a failure.
#![allow(clippy::print_stderr, clippy::print_stdout)] // progress and summary are the interface

use std::collections::HashSet;
use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ncps_core::maintenance::format_size;
use ncps_nix::{NarInfo, StorePath, StorePathHash};

use crate::cli::WarmArgs;
use crate::progress::Progress;

/// Longest wait for a narinfo; NARs stream as long as bytes keep coming.
const NARINFO_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest pause in a NAR download before it is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// What warming one path found.
enum Warmed {
    /// Fetched into the cache now: its NAR's size.
    Fetched(u64, Vec<StorePathHash>),
    /// The cache already stored it.
    Present(Vec<StorePathHash>),
    /// No upstream has it.
    Missing,
}

/// Counts for the summary.
#[derive(Default)]
struct Tally {
    warmed: u64,
    bytes: u64,
    present: u64,
    missing: u64,
    failed: u64,
}

/// Warms every closure named on the command line, in the file and on stdin.
pub async fn run(args: WarmArgs) -> Result<()> {
    let roots = roots(&args)?;
    if roots.is_empty() {
        bail!("no store paths given: name them, give --from-file, or `-` to read stdin");
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(READ_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")?;
    let base = with_trailing_slash(args.url.clone());
    let warm = Warm {
        client,
        base,
        token: args.cache_get_token.clone().filter(|t| !t.is_empty()),
    };
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut seen: HashSet<StorePathHash> = roots.iter().copied().collect();
    let mut queue: Vec<StorePathHash> = roots;
    let mut running = FuturesUnordered::new();
    let mut progress = Progress::new("warm", "paths", Some(seen.len() as u64), None);
    loop {
        while running.len() < args.concurrency as usize
            && let Some(hash) = queue.pop()
        {
            let warm = &warm;
            running.push(async move { (hash, warm.path(&hash).await) });
        }
        let Some((hash, result)) = running.next().await else {
            break;
        };
        let (references, bytes, line) = match result {
            Ok(Warmed::Fetched(bytes, references)) => {
                tally.warmed += 1;
                tally.bytes += bytes;
                (
                    references,
                    bytes,
                    format!("warmed {hash} ({})", format_size(bytes)),
                )
            }
            Ok(Warmed::Present(references)) => {
                tally.present += 1;
                (references, 0, format!("already present {hash}"))
            }
            Ok(Warmed::Missing) => {
                tally.missing += 1;
                let line = format!("MISSING {hash}: no upstream of the cache has it");
                (Vec::new(), 0, line)
            }
            Err(e) => {
                tally.failed += 1;
                (Vec::new(), 0, format!("FAILED {hash}: {e:#}"))
            }
        };
        for reference in references {
            if seen.insert(reference) {
                queue.push(reference);
            }
        }
        // The closure grows as references are found.
        progress.set_total(seen.len() as u64);
        progress.item(bytes, Some(line));
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64().max(0.001);
    println!(
        "warmed {} paths ({}, {:.1} MB/s), {} already present, {} missing upstream, {} failed",
        tally.warmed,
        format_size(tally.bytes),
        tally.bytes as f64 / 1e6 / secs,
        tally.present,
        tally.missing,
        tally.failed
    );
    if tally.failed > 0 {
        bail!(
            "{} paths could not be warmed (see FAILED lines)",
            tally.failed
        );
    }
    Ok(())
}

/// The store path hashes to start from: arguments (`-` meaning stdin) and `--from-file`.
fn roots(args: &WarmArgs) -> Result<Vec<StorePathHash>> {
    let mut lines: Vec<String> = Vec::new();
    for arg in &args.paths {
        if arg == "-" {
            for line in std::io::stdin().lock().lines() {
                lines.push(line.context("reading stdin")?);
            }
        } else {
            lines.push(arg.clone());
        }
    }
    if let Some(file) = &args.from_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        lines.extend(text.lines().map(str::to_owned));
    }
    let mut hashes = Vec::new();
    let mut seen = HashSet::new();
    for line in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
        let hash = parse_path(line)
            .with_context(|| format!("{line:?} is not a store path, `<hash>-<name>` or hash"))?;
        if seen.insert(hash) {
            hashes.push(hash);
        }
    }
    Ok(hashes)
}

/// `/nix/store/<hash>-<name>`, `<hash>-<name>` or `<hash>`.
fn parse_path(text: &str) -> Result<StorePathHash> {
    if let Ok(path) = StorePath::parse(text) {
        return Ok(*path.hash());
    }
    if let Ok(path) = StorePath::parse_base_name(text) {
        return Ok(*path.hash());
    }
    Ok(StorePathHash::parse(text)?)
}

/// `url` ending in `/`, so that joining keeps its path (`http://host/cache/` + `x.narinfo`).
fn with_trailing_slash(mut url: url::Url) -> url::Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// The HTTP side of a warm run.
struct Warm {
    client: reqwest::Client,
    base: url::Url,
    token: Option<String>,
}

impl Warm {
    fn get(&self, relative: &str) -> Result<reqwest::RequestBuilder> {
        let url = self
            .base
            .join(relative)
            .with_context(|| format!("bad URL {relative:?}"))?;
        let request = self.client.get(url);
        Ok(match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        })
    }

    /// Fetches one path's narinfo, then its NAR (read to the end, so the cache stores it).
    async fn path(&self, hash: &StorePathHash) -> Result<Warmed> {
        let response = self
            .get(&format!("{hash}.narinfo"))?
            .timeout(NARINFO_TIMEOUT)
            .send()
            .await
            .context("asking the cache for the narinfo")?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(Warmed::Missing),
            status => bail!("the narinfo answered HTTP {status}"),
        }
        let text = response.text().await.context("reading the narinfo")?;
        let narinfo = NarInfo::parse(&text).context("the cache sent an invalid narinfo")?;
        let references: Vec<StorePathHash> = narinfo
            .references
            .iter()
            .map(|r| *r.hash())
            .filter(|r| r != hash)
            .collect();
        let mut response = self
            .get(&narinfo.url)?
            .send()
            .await
            .context("asking the cache for the NAR")?;
        if !response.status().is_success() {
            bail!("the NAR answered HTTP {}", response.status().as_u16());
        }
        let stored = response
            .headers()
            .get("x-cache")
            .is_some_and(|v| v.as_bytes() == b"HIT");
        let mut bytes = 0u64;
        while let Some(piece) = response.chunk().await.context("reading the NAR")? {
            bytes += piece.len() as u64;
        }
        Ok(if stored {
            Warmed::Present(references)
        } else {
            Warmed::Fetched(bytes, references)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths_are_read_in_every_spelling() {
        let hash = "7rjj86a15146cq1d0ybgnwyqdwgv9lfh";
        for text in [
            format!("/nix/store/{hash}-hello-2.12"),
            format!("{hash}-hello-2.12"),
            hash.to_owned(),
        ] {
            assert_eq!(parse_path(&text).unwrap().to_string(), hash, "{text}");
        }
        assert!(parse_path("/etc/passwd").is_err());
        assert_eq!(
            with_trailing_slash(url::Url::parse("http://h:1/cache").unwrap()).as_str(),
            "http://h:1/cache/"
        );
    }
}
