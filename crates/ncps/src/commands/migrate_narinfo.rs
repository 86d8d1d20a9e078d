//! `ncps migrate-narinfo DIR`: import a file binary cache, as `nix copy --to file://DIR` writes
//! it (`DIR/<hash>.narinfo`, `DIR/nar/<file>`), or the Go ncps's local storage (narinfos and
//! NARs sharded as `<a>/<ab>/<file>` below `store/narinfo/` and `store/nar/`).
//!
//! Every NAR is verified against its narinfo (FileHash, FileSize, NarHash, NarSize) before it
//! is stored, the narinfo is recorded after its NAR, and paths already cached are skipped: a
//! run can be interrupted and started again, and a server may serve the cache meanwhile. Bad
//! or missing NAR files are reported and skipped; the command then fails at the end.
#![allow(clippy::print_stderr)] // progress output is this command's interface

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use ncps_core::CacheError;
use ncps_core::maintenance::Imported;
use ncps_nix::{MAX_TEXT_LEN, NarInfo, PublicKey, StorePathHash};

use super::go_import;
use crate::cli::MigrateNarinfoArgs;
use crate::progress::Progress;
use crate::setup;
use ncps_core::maintenance::format_size;
use ncps_core::maintenance::{Maintenance, files_source};

/// The narinfo files below a binary cache directory, in a stable order (a resumed run walks
/// the same way), with the hash each file name claims. Subdirectories are searched too (the Go
/// ncps keeps `store/narinfo/<a>/<ab>/<hash>.narinfo`), except `nar/` ones, which hold NARs.
fn narinfo_files(dir: &Path) -> Result<Vec<(StorePathHash, PathBuf)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("cannot read {}", current.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if entry.file_type()?.is_dir() {
                if name != "nar" {
                    pending.push(entry.path());
                }
                continue;
            }
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".narinfo")) else {
                continue;
            };
            if let Ok(hash) = StorePathHash::parse(stem) {
                found.push((hash, entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Where the NAR file a narinfo's `URL` names may be, inside `dir`: where `nix copy` puts it
/// (`DIR/<URL>`), then the Go ncps's sharded places (`nar/<a>/<ab>/<file>`, under `DIR` or
/// `DIR/store`). Only plain relative URLs are accepted, so a hostile narinfo cannot point
/// outside the directory.
fn nar_candidates(dir: &Path, url: &str) -> Result<Vec<PathBuf>, String> {
    let rel = Path::new(url);
    let plain = !url.is_empty()
        && !url.contains("://")
        && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "URL {url:?} is not a file inside the cache directory"
        ));
    }
    let mut candidates = vec![dir.join(rel)];
    if let Some(file) = url
        .strip_prefix("nar/")
        .filter(|f| f.len() >= 2 && !f.contains('/'))
        && let (Some(a), Some(ab)) = (file.get(..1), file.get(..2))
    {
        for root in [dir.join("nar"), dir.join("store/nar")] {
            candidates.push(root.join(a).join(ab).join(file));
        }
        candidates.push(dir.join("store/nar").join(file));
    }
    Ok(candidates)
}

/// The first candidate that exists, else the first (whose absence is then reported).
fn nar_file(dir: &Path, url: &str) -> Result<PathBuf, String> {
    let candidates = nar_candidates(dir, url)?;
    Ok(candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or(&candidates[0])
        .clone())
}

/// Why a path was skipped, or `Ok` with its narinfo and NAR file.
fn read_entry(
    dir: &Path,
    claimed: &StorePathHash,
    path: &Path,
    keys: &[PublicKey],
) -> Result<(NarInfo, PathBuf), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_TEXT_LEN as u64 {
        return Err(format!("larger than {MAX_TEXT_LEN} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let narinfo = NarInfo::parse(&text).map_err(|e| format!("not a narinfo: {e}"))?;
    if narinfo.store_path.hash() != claimed {
        return Err(format!(
            "describes {}, not the path its file name says",
            narinfo.store_path
        ));
    }
    if !keys.is_empty() && !narinfo.verify(keys) {
        return Err("not signed by any of the given --public-key".into());
    }
    let nar = nar_file(dir, &narinfo.url)?;
    Ok((narinfo, nar))
}

/// Counts of what a run did.
#[derive(Default)]
struct Tally {
    imported: u64,
    shared: u64,
    present: u64,
    skipped: u64,
    bytes: u64,
}

/// Imports (or with `--dry-run`, reports) every narinfo of the directory, or without one what
/// a Go ncps left in this cache's database and storage.
pub async fn run(args: MigrateNarinfoArgs) -> Result<()> {
    let keys = args
        .public_keys
        .iter()
        .map(|k| PublicKey::parse(k).with_context(|| format!("invalid --public-key {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    let parts = setup::open(&args.storage, setup::Create::No).await?;
    let (db, data_dir, store) = (
        parts.db.clone(),
        parts.data_dir.clone(),
        parts.store.clone(),
    );
    let maintenance = super::maintenance(parts)?;
    let mut tally = Tally::default();
    match &args.dir {
        Some(dir) => {
            if !dir.is_dir() {
                bail!("{} is not a directory", dir.display());
            }
            import_files(&maintenance, dir, dir, &keys, args.dry_run, &mut tally).await?;
        }
        None => {
            let mut progress = Progress::new("migrate-narinfo", "paths", None, None);
            let go = {
                let mut report = |skipped: bool, line: String| {
                    if skipped {
                        progress.println(&format!("SKIPPED {line}"));
                    } else {
                        progress.item(0, Some(line));
                    }
                };
                go_import::run(&maintenance, &db, &store, &keys, args.dry_run, &mut report).await?
            };
            progress.finish();
            eprintln!(
                "Go ncps database: {} paths imported, {} already cached, {} skipped, {} pins \
                 kept, {} build traces kept",
                go.imported, go.present, go.skipped, go.pins, go.build_traces
            );
            tally.skipped += go.skipped;
            let legacy = data_dir.join("store/narinfo");
            if legacy.is_dir() {
                import_files(
                    &maintenance,
                    &legacy,
                    &data_dir,
                    &keys,
                    args.dry_run,
                    &mut tally,
                )
                .await?;
            }
        }
    }
    let verb = if args.dry_run {
        "would import"
    } else {
        "imported"
    };
    eprintln!(
        "done: {verb} {} paths ({}), {} sharing a stored NAR, {} already cached, {} skipped",
        tally.imported,
        format_size(tally.bytes),
        tally.shared,
        tally.present,
        tally.skipped
    );
    if tally.skipped > 0 {
        bail!(
            "{} narinfos were skipped (see SKIPPED lines above)",
            tally.skipped
        );
    }
    Ok(())
}

/// Imports the narinfo files found below `narinfo_dir`, whose NAR URLs are looked up in
/// `cache_dir`.
async fn import_files(
    maintenance: &Maintenance,
    narinfo_dir: &Path,
    cache_dir: &Path,
    keys: &[PublicKey],
    dry_run: bool,
    tally: &mut Tally,
) -> Result<()> {
    let files = narinfo_files(narinfo_dir)?;
    let total = files.len();
    eprintln!(
        "{} narinfos in {}{}",
        total,
        narinfo_dir.display(),
        if dry_run {
            " (dry run: nothing is imported)"
        } else {
            ""
        }
    );
    let mut progress = Progress::new("migrate-narinfo", "narinfos", Some(total as u64), None);
    for (i, (claimed, path)) in files.iter().enumerate() {
        let (bytes, line) =
            import_file(maintenance, cache_dir, claimed, path, keys, dry_run, tally).await?;
        progress.item(bytes, Some(format!("[{}/{total}] {line}", i + 1)));
    }
    progress.finish();
    Ok(())
}

/// Imports (or with `dry_run`, checks) one narinfo file: the bytes it brought and the line
/// that says what happened.
async fn import_file(
    maintenance: &Maintenance,
    cache_dir: &Path,
    claimed: &StorePathHash,
    path: &Path,
    keys: &[PublicKey],
    dry_run: bool,
    tally: &mut Tally,
) -> Result<(u64, String)> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut skip = |why: String| {
        tally.skipped += 1;
        Ok((0, format!("SKIPPED {name}: {why}")))
    };
    let (narinfo, nar) = match read_entry(cache_dir, claimed, path, keys) {
        Ok(entry) => entry,
        Err(why) => return skip(why),
    };
    let store_path = narinfo.store_path.to_absolute();
    if maintenance.cached_store_path(claimed).await?.is_some() {
        tally.present += 1;
        return Ok((0, format!("already cached: {store_path}")));
    }
    if dry_run {
        return match std::fs::metadata(&nar) {
            Err(e) => skip(format!("NAR file {}: {e}", narinfo.url)),
            Ok(m) if narinfo.file_size.is_some_and(|s| s != m.len()) => skip(format!(
                "NAR file {} has {} bytes, FileSize says {}",
                narinfo.url,
                m.len(),
                narinfo.file_size.unwrap_or_default()
            )),
            Ok(m) => {
                tally.imported += 1;
                tally.bytes += m.len();
                Ok((
                    m.len(),
                    format!("would import {store_path} ({})", format_size(m.len())),
                ))
            }
        };
    }
    let imported = match files_source(&[&nar]) {
        Ok(source) => maintenance.import_path(&narinfo, source).await,
        Err(e) => Err(CacheError::Io(e)),
    };
    match imported {
        Ok(Imported::Stored { whole }) => {
            tally.imported += 1;
            tally.bytes += whole.size;
            Ok((
                whole.size,
                format!("imported {store_path} ({})", format_size(whole.size)),
            ))
        }
        Ok(Imported::NarAlreadyStored { .. }) => {
            tally.shared += 1;
            Ok((
                0,
                format!("imported {store_path} (its NAR was already stored)"),
            ))
        }
        Ok(Imported::AlreadyCached) => {
            tally.present += 1;
            Ok((0, format!("already cached: {store_path}")))
        }
        Err(CacheError::Integrity(why)) => skip(format!("NAR file {}: {why}", narinfo.url)),
        Err(CacheError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            skip(format!("NAR file {} is missing", narinfo.url))
        }
        Err(e) => Err(e).with_context(|| {
            format!("importing {store_path} failed; rerun to resume where this stopped")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_urls_stay_inside_the_directory() {
        let dir = Path::new("/cache");
        assert_eq!(
            nar_candidates(dir, "nar/abc.nar.xz").unwrap(),
            [
                "/cache/nar/abc.nar.xz",
                "/cache/nar/a/ab/abc.nar.xz",
                "/cache/store/nar/a/ab/abc.nar.xz",
                "/cache/store/nar/abc.nar.xz"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            nar_file(dir, "nar/abc.nar.xz").unwrap(),
            PathBuf::from("/cache/nar/abc.nar.xz")
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x.nar",
            "nar/../../x",
            "http://host/nar/x",
            "./nar/x",
        ] {
            assert!(nar_candidates(dir, bad).is_err(), "{bad}");
        }
    }
}
