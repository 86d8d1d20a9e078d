//! Importing what a Go ncps kept in its database (`ncps migrate-narinfo` with no directory).
//!
//! [`ncps_db::Database::migrate`] moved the Go tables aside; here every Go narinfo is rebuilt
//! from its rows, its NAR found in the Go storage layout of the configured storage (the data
//! directory or the S3 bucket: whole files at `store/nar/<a>/<ab>/<file>`, chunks at
//! `store/chunk/<a>/<ab>/<hash>`, each chunk a zstd frame), and the path imported through the
//! same verified import as a file cache: NarHash and NarSize are checked on every NAR before
//! it is stored. The Go pins follow. The Go tables
//! and files are only read, so a run can be interrupted and started again. `serve` runs it in
//! the background when Go data is waiting, so switching from the Go ncps needs no step.

use std::io;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use ncps_core::CacheError;
use ncps_core::maintenance::{Imported, Maintenance};
use ncps_db::{Database, GoNarFile, GoNarInfo};
use ncps_nix::{Compression, NarInfo, PublicKey, SignedJson, StorePath, StorePathHash};
use ncps_store::BlobStore;

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
    /// Build-trace entries carried over.
    pub build_traces: u64,
}

/// How a run reports each path: a progress line (`false`) or a path skipped (`true`).
pub type Report<'a> = &'a mut (dyn FnMut(bool, String) + Send);

/// Imports (or with `dry_run`, reports) every narinfo the Go ncps kept in `db`, its NARs
/// read from the Go layout of `store`; with `keys`, only those signed by one of them.
pub async fn run(
    maintenance: &Maintenance,
    db: &Database,
    store: &BlobStore,
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
            import_one(maintenance, store, go, keys, dry_run, &mut tally, report).await?;
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
    import_build_traces(db, dry_run, &mut tally, report).await?;
    if !dry_run && tally.skipped == 0 {
        db.setting_or_init(DONE_SETTING, "1").await?;
    }
    Ok(tally)
}

/// Carries the Go build-trace entries over as the documents `/build-trace-v2/<drv>/<output>`
/// serves, each as it was uploaded; entries whose names or JSON ncps would refuse on upload are
/// reported and skipped.
async fn import_build_traces(
    db: &Database,
    dry_run: bool,
    tally: &mut GoTally,
    report: Report<'_>,
) -> Result<()> {
    let mut after = 0;
    loop {
        let batch = db.go_build_traces(after, BATCH).await?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        after = last.id;
        for trace in batch {
            let drv = trace
                .drv_path
                .strip_prefix("/nix/store/")
                .unwrap_or_default();
            let valid_names = drv.ends_with(".drv")
                && StorePath::parse_base_name(drv).is_ok()
                && !trace.output_name.is_empty()
                && trace
                    .output_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b));
            if !valid_names || SignedJson::parse(&trace.raw_json).is_err() {
                report(
                    true,
                    format!(
                        "build trace {}!{}: not a valid entry",
                        trace.drv_path, trace.output_name
                    ),
                );
                tally.skipped += 1;
                continue;
            }
            let id = format!("build-trace-v2/{drv}/{}", trace.output_name);
            if db.realisation(&id).await?.is_none() && !dry_run {
                db.put_realisation(&id, &trace.raw_json).await?;
            }
            tally.build_traces += 1;
        }
    }
}

async fn import_one(
    maintenance: &Maintenance,
    store: &BlobStore,
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
    let Some((compression, source)) = nar_source(store, &go.nar_files).await? else {
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
    match maintenance.import_path(&narinfo, source).await {
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

/// Where the Go ncps kept an object named `name` below `dir` (`<dir>/<a>/<ab>/<name>`), or
/// `None` for a name that is no plain file name.
fn sharded(dir: &str, name: &str) -> Option<String> {
    let plain = name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    plain.then(|| format!("{dir}/{}/{}/{name}", &name[..1], &name[..2]))
}

/// The bytes of a NAR and their compression: a whole file when one is there (an uncompressed
/// one may be kept as `.nar.zst`), else a complete chunk list, its chunks read one after the
/// other (a chunk found missing then fails the import with `NotFound`).
async fn nar_source(
    store: &BlobStore,
    files: &[GoNarFile],
) -> Result<Option<(Compression, BoxStream<'static, io::Result<Bytes>>)>> {
    for f in files {
        let Ok(named) = Compression::parse(&f.compression) else {
            continue;
        };
        let forms = if named == Compression::None {
            vec![Compression::Zstd, Compression::None]
        } else {
            vec![named]
        };
        for c in forms {
            let Some(path) = sharded("store/nar", &format!("{}{}", f.hash, c.nar_extension()))
            else {
                continue;
            };
            if let Some(stream) = store.read_go_object(&path).await? {
                return Ok(Some((c, stream.map_err(io::Error::other).boxed())));
            }
        }
    }
    let Some(chunked) = files.iter().find(|f| !f.chunks.is_empty()) else {
        return Ok(None);
    };
    let Some(paths) = chunked
        .chunks
        .iter()
        .map(|c| sharded("store/chunk", c))
        .collect::<Option<Vec<String>>>()
    else {
        return Ok(None);
    };
    let store = store.clone();
    let source = futures::stream::iter(paths)
        .then(move |path| {
            let store = store.clone();
            async move {
                match store.read_go_object(&path).await {
                    Ok(Some(stream)) => Ok(stream.map_err(io::Error::other)),
                    Ok(None) => Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("the Go chunk {path} is missing"),
                    )),
                    Err(e) => Err(io::Error::other(e)),
                }
            }
        })
        .try_flatten()
        .boxed();
    Ok(Some((Compression::Zstd, source)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(source: BoxStream<'static, io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let pieces: Vec<Bytes> = source.try_collect().await?;
        Ok(pieces.concat())
    }

    #[tokio::test]
    async fn go_objects_are_found_where_the_go_ncps_shards_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let file = |rel: &str, bytes: &[u8]| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
        };
        let store = BlobStore::local(&root.join("store")).unwrap();
        let nar = |hash: &str, compression: &str, chunks: &[&str]| GoNarFile {
            hash: hash.into(),
            compression: compression.into(),
            chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
        };
        let found = |files: Vec<GoNarFile>| {
            let store = store.clone();
            async move {
                match nar_source(&store, &files).await.unwrap() {
                    Some((c, source)) => Some((c, read(source).await)),
                    None => None,
                }
            }
        };
        file("store/nar/a/ab/abc.nar.xz", b"xz");
        let (c, bytes) = found(vec![nar("abc", "xz", &[])]).await.unwrap();
        assert_eq!((c, bytes.unwrap()), (Compression::Xz, b"xz".to_vec()));
        // An uncompressed NAR the Go ncps fetched is kept as zstd.
        file("store/nar/d/de/def.nar.zst", b"zst");
        let (c, bytes) = found(vec![nar("def", "none", &[])]).await.unwrap();
        assert_eq!((c, bytes.unwrap()), (Compression::Zstd, b"zst".to_vec()));
        file("store/chunk/0/01/0123", b"one-");
        file("store/chunk/f/fe/fedc", b"two");
        let (c, bytes) = found(vec![nar("ghi", "none", &["0123", "fedc"])])
            .await
            .unwrap();
        assert_eq!(
            (c, bytes.unwrap()),
            (Compression::Zstd, b"one-two".to_vec())
        );
        let (_, missing) = found(vec![nar("ghi", "none", &["0123", "9999"])])
            .await
            .unwrap();
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(found(vec![nar("../x", "xz", &[])]).await.is_none());
        assert!(found(vec![nar("abc", "lz4", &[])]).await.is_none());
    }
}
