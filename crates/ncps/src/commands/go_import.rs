//! Importing what a Go ncps kept in its database (`ncps migrate-narinfo` with no directory).
//!
//! [`ncps_db::Database::migrate`] moved the Go tables aside; here every Go narinfo is rebuilt
//! from its rows, its NAR found in the Go storage layout below the data directory (whole files
//! at `store/nar/<a>/<ab>/<file>`, chunks at `store/chunk/<a>/<ab>/<hash>`, each chunk a zstd
//! frame), and the path imported through the same verified import as a file cache: NarHash
//! and NarSize are checked on every NAR before it is stored. The Go pins follow. The Go tables
//! and files are only read, so a run can be interrupted and started again. `serve` runs it in
//! the background when Go data is waiting, so switching from the Go ncps needs no step.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ncps_core::CacheError;
use ncps_core::maintenance::{Imported, Maintenance};
use ncps_db::{Database, GoNarFile, GoNarInfo};
use ncps_nix::{Compression, NarInfo, PublicKey, StorePathHash};

/// The setting recording that every Go path was imported (`serve` then stops looking).
const DONE_SETTING: &str = "go_import_done";

/// True when Go data waits in this database to be imported.
pub async fn pending(db: &Database) -> Result<bool> {
    Ok(db.has_go_data().await? && db.setting(DONE_SETTING).await?.is_none())
}

/// Go narinfos read per query.
const BATCH: u32 = 200;

/// What importing the Go database did.
#[derive(Default, Debug)]
pub struct GoTally {
    /// Paths imported (their NAR verified and stored, or already stored).
    pub imported: u64,
    /// Paths the cache already had.
    pub present: u64,
    /// Paths whose NAR is missing or damaged, each reported.
    pub skipped: u64,
    /// Pins carried over.
    pub pins: u64,
}

/// How a run reports each path: a progress line (`false`) or a path skipped (`true`).
pub type Report<'a> = &'a mut (dyn FnMut(bool, String) + Send);

/// Imports (or with `dry_run`, reports) every narinfo the Go ncps kept in `db`, its NARs
/// read from the Go layout below `data_dir`; with `keys`, only those signed by one of them.
pub async fn run(
    maintenance: &Maintenance,
    db: &Database,
    data_dir: &Path,
    keys: &[PublicKey],
    dry_run: bool,
    report: Report<'_>,
) -> Result<GoTally> {
    let mut tally = GoTally::default();
    let mut after = 0;
    loop {
        let batch = db.go_narinfos(after, BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        for go in &batch {
            import_one(maintenance, data_dir, go, keys, dry_run, &mut tally, report).await?;
        }
    }
    for hash in db.go_pins().await? {
        let Ok(hash) = StorePathHash::parse(&hash) else {
            report(true, format!("pin {hash:?}: not a store path hash"));
            continue;
        };
        if maintenance.cached_store_path(&hash).await?.is_some() {
            if !dry_run {
                maintenance.pin(&hash).await?;
            }
            tally.pins += 1;
        }
    }
    if !dry_run && tally.skipped == 0 {
        db.setting_or_init(DONE_SETTING, "1").await?;
    }
    Ok(tally)
}

async fn import_one(
    maintenance: &Maintenance,
    data_dir: &Path,
    go: &GoNarInfo,
    keys: &[PublicKey],
    dry_run: bool,
    tally: &mut GoTally,
    report: Report<'_>,
) -> Result<()> {
    let mut skip = |why: String| {
        report(true, format!("{}: {why}", go.store_path));
        tally.skipped += 1;
    };
    let narinfo = match NarInfo::parse(&narinfo_text(go)) {
        Ok(n) => n,
        Err(e) => {
            skip(format!(
                "the Go database holds no valid narinfo for it: {e}"
            ));
            return Ok(());
        }
    };
    if !keys.is_empty() && !narinfo.verify(keys) {
        skip("not signed by any of the given --public-key".into());
        return Ok(());
    }
    if maintenance
        .cached_store_path(narinfo.store_path.hash())
        .await?
        .is_some()
    {
        tally.present += 1;
        return Ok(());
    }
    let Some((compression, files)) = nar_source(data_dir, &go.nar_files) else {
        skip("its NAR is in neither the Go NAR files nor the Go chunk store".into());
        return Ok(());
    };
    if dry_run {
        report(false, format!("would import {}", go.store_path));
        tally.imported += 1;
        return Ok(());
    }
    // The file found may be in another compression than the narinfo says (the Go ncps kept
    // uncompressed NARs as zstd, and chunks are zstd): its own hashes are then unknown, and
    // the NAR is checked against NarHash and NarSize alone.
    let same_file = compression == narinfo.compression;
    let narinfo = NarInfo {
        compression,
        file_hash: narinfo.file_hash.filter(|_| same_file),
        file_size: narinfo.file_size.filter(|_| same_file),
        ..narinfo
    };
    match maintenance.import_path(&narinfo, &files).await {
        Ok(Imported::Stored { .. } | Imported::NarAlreadyStored { .. }) => {
            report(false, format!("imported {}", go.store_path));
            tally.imported += 1;
        }
        Ok(Imported::AlreadyCached) => tally.present += 1,
        Err(CacheError::Integrity(why)) => skip(format!("its NAR is damaged: {why}")),
        Err(CacheError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            skip("a file of its NAR is missing".into())
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "importing {} failed; rerun to resume where this stopped",
                    go.store_path
                )
            });
        }
    }
    Ok(())
}

/// The narinfo text the Go rows describe.
fn narinfo_text(go: &GoNarInfo) -> String {
    let mut text = format!("StorePath: {}\nURL: {}\n", go.store_path, go.url);
    if let Some(c) = &go.compression {
        text.push_str(&format!("Compression: {c}\n"));
    }
    if let (Some(hash), Some(size)) = (&go.file_hash, go.file_size.filter(|s| *s > 0)) {
        text.push_str(&format!("FileHash: {hash}\nFileSize: {size}\n"));
    }
    text.push_str(&format!(
        "NarHash: {}\nNarSize: {}\nReferences: {}\n",
        go.nar_hash,
        go.nar_size,
        go.references.join(" ")
    ));
    if let Some(deriver) = &go.deriver {
        text.push_str(&format!("Deriver: {deriver}\n"));
    }
    for sig in &go.signatures {
        text.push_str(&format!("Sig: {sig}\n"));
    }
    if let Some(ca) = &go.ca {
        text.push_str(&format!("CA: {ca}\n"));
    }
    text
}

/// Where the Go ncps kept a file named `name` below `dir` (`<a>/<ab>/<name>`).
fn sharded(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    plain.then(|| dir.join(&name[..1]).join(&name[..2]).join(name))
}

/// The files holding a NAR, in the order to read them, and their compression: a whole file
/// when one is there (an uncompressed one may be kept as `.nar.zst`), else a complete chunk
/// list whose chunks are all there.
fn nar_source(data_dir: &Path, files: &[GoNarFile]) -> Option<(Compression, Vec<PathBuf>)> {
    let nar_dir = data_dir.join("store/nar");
    let whole = files.iter().find_map(|f| {
        let named = Compression::parse(&f.compression).ok()?;
        let mut forms = vec![named];
        if named == Compression::None {
            forms.insert(0, Compression::Zstd);
        }
        forms.into_iter().find_map(|c| {
            let path = sharded(&nar_dir, &format!("{}{}", f.hash, c.nar_extension()))?;
            path.is_file().then(|| (c, vec![path]))
        })
    });
    let chunk_dir = data_dir.join("store/chunk");
    whole.or_else(|| {
        files.iter().filter(|f| !f.chunks.is_empty()).find_map(|f| {
            let paths: Option<Vec<PathBuf>> =
                f.chunks.iter().map(|c| sharded(&chunk_dir, c)).collect();
            paths
                .filter(|p| p.iter().all(|p| p.is_file()))
                .map(|p| (Compression::Zstd, p))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_files_are_found_where_the_go_ncps_shards_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let file = |rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"x").unwrap();
            p
        };
        let nar = |hash: &str, compression: &str, chunks: &[&str]| GoNarFile {
            hash: hash.into(),
            compression: compression.into(),
            chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
        };
        let xz = file("store/nar/a/ab/abc.nar.xz");
        assert_eq!(
            nar_source(root, &[nar("abc", "xz", &[])]),
            Some((Compression::Xz, vec![xz]))
        );
        // An uncompressed NAR the Go ncps fetched is kept as zstd.
        let zst = file("store/nar/d/de/def.nar.zst");
        assert_eq!(
            nar_source(root, &[nar("def", "none", &[])]),
            Some((Compression::Zstd, vec![zst]))
        );
        let chunks = [file("store/chunk/0/01/0123"), file("store/chunk/f/fe/fedc")];
        assert_eq!(
            nar_source(root, &[nar("ghi", "none", &["0123", "fedc"])]),
            Some((Compression::Zstd, chunks.to_vec()))
        );
        assert_eq!(
            nar_source(root, &[nar("ghi", "none", &["0123", "9999"])]),
            None
        );
        assert_eq!(nar_source(root, &[nar("../x", "xz", &[])]), None);
        assert_eq!(nar_source(root, &[nar("abc", "lzip", &[])]), None);
    }
}
