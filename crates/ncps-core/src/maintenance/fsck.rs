//! `ncps fsck`: the database against storage.
//!
//! Checks, in order: every recorded whole file is stored with its recorded size (and, with
//! `--verify-hashes`, hashes to its name and decompresses to its NarHash); every chunk list is
//! complete and its chunks stored; every chunk row has its object and the right reference
//! count; every stored object is recorded (strays); every narinfo can be served (its NAR is
//! stored or an upstream is recorded for it); every NAR URL names something; no file of a
//! write killed half-way is left (staging files in storage, temporary files).
//!
//! Safe beside a running server: storage is listed before the database is read, so an object
//! written and recorded meanwhile is never a stray; anything found missing is looked up again
//! before it is reported; objects and narinfos younger than `--min-age` are reported but left
//! alone (they may be a write in progress); and every removal re-checks its condition in the
//! same statement. A stray chunk is deleted under a claim, as the collector deletes chunks, so
//! an ingest reusing it at that moment waits and writes it again.
//!
//! `--repair` only removes what is broken: a NAR whose bytes are gone or bad is forgotten, so
//! the next request fetches it again from its upstream; narinfos left with nothing to serve
//! are dropped, so clients look elsewhere instead of failing.
//!
//! Findings and progress go to an [`FsckOutput`]; the command prints them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use ncps_db::{Database, NarRecord, WholeFile, now_secs};
use ncps_nix::{ChunkHash, NarKey, Sha256Hash};
use ncps_store::chunk::chunk_storage_key;
use ncps_store::{BlobStore, StoredObject};

use super::Maintenance;
use super::human::{format_age, format_size};
use super::import::FileCheck;
use crate::CacheError;

type Result<T> = std::result::Result<T, CacheError>;

/// Rows read per database page.
const PAGE: u32 = 500;
/// How often progress is reported during long walks.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How fsck runs.
#[derive(Clone, Copy, Debug)]
pub struct FsckOptions {
    /// Remove what is broken (see the module documentation).
    pub repair: bool,
    /// Read every whole file and check its hashes, not only its size.
    pub verify_hashes: bool,
    /// Findings younger than this may be a write in progress: reported, left alone.
    pub min_age: Duration,
}

/// Where fsck's lines go.
pub trait FsckOutput {
    /// A finding, a repair, a note: the command's result.
    fn finding(&mut self, line: &str);
    /// Progress through a long walk.
    fn progress(&mut self, line: &str);
    /// The check of every NAR starts: `total` of them (for a progress bar).
    fn nars_to_check(&mut self, _total: u64) {}
    /// One NAR checked; `bytes` of its whole file were read.
    fn nar_checked(&mut self, _bytes: u64) {}
}

/// What a run found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsckSummary {
    /// Problems found.
    pub problems: u64,
    /// Problems repaired (or resolved meanwhile).
    pub repaired: u64,
    /// Leftovers too young to judge.
    pub left_alone: u64,
    /// Findings that are not problems.
    pub notes: u64,
}

impl FsckSummary {
    /// Problems found and not repaired.
    pub fn remaining(&self) -> u64 {
        self.problems - self.repaired
    }
}

impl Maintenance {
    /// Runs every check, repairing with `options.repair`; the summary says what remains.
    pub async fn fsck(
        &self,
        options: FsckOptions,
        out: &mut dyn FsckOutput,
    ) -> Result<FsckSummary> {
        let mut fsck = Fsck {
            maintenance: self.clone(),
            db: self.0.db.clone(),
            store: self.0.store.clone(),
            out,
            options,
            now: SystemTime::now(),
            summary: FsckSummary::default(),
            repaired_away: HashSet::new(),
            lost_chunks: HashSet::new(),
        };
        fsck.run().await?;
        Ok(fsck.summary)
    }
}

impl Fsck<'_> {
    async fn run(&mut self) -> Result<()> {
        self.out.progress("fsck: listing storage");
        let nars: HashMap<NarKey, StoredObject<NarKey>> = self
            .store
            .list_nars()
            .await?
            .into_iter()
            .map(|o| (o.key, o))
            .collect();
        let chunks: HashMap<ChunkHash, StoredObject<ChunkHash>> = self
            .store
            .list_chunk_objects()
            .await?
            .into_iter()
            .map(|o| (o.key, o))
            .collect();
        self.out.progress(&format!(
            "fsck: {} NAR files and {} chunks in storage",
            nars.len(),
            chunks.len()
        ));
        let recorded = self.check_nars(&nars, &chunks).await?;
        self.check_chunk_rows(&chunks).await?;
        self.check_chunk_ref_counts().await?;
        self.check_stray_nars(&nars, &recorded).await?;
        self.check_stray_chunks(&chunks).await?;
        self.check_narinfos().await?;
        self.check_nar_urls().await?;
        self.check_leftover_files().await?;
        self.check_totals().await?;
        self.note_unreferenced_nars().await?;
        self.note_unreferenced_chunks().await
    }
}

struct Fsck<'a> {
    maintenance: Maintenance,
    db: Database,
    store: BlobStore,
    out: &'a mut dyn FsckOutput,
    options: FsckOptions,
    now: SystemTime,
    summary: FsckSummary,
    /// NARs whose last stored form this run's repairs removed: their narinfos are unservable
    /// because of this run, not a write in progress, so no age spares them.
    repaired_away: HashSet<String>,
    /// Chunks a chunk list names that are not in storage: their rows are reported even once
    /// this run's repairs left them without a reference.
    lost_chunks: HashSet<ChunkHash>,
}

/// How a NAR's loss is healed, for the repair line.
fn consequence(has_origin: bool) -> &'static str {
    if has_origin {
        "it is fetched again from its upstream on demand"
    } else {
        "no upstream is recorded for it, so its narinfos are dropped below"
    }
}

impl Fsck<'_> {
    fn problem(&mut self, line: String) {
        self.summary.problems += 1;
        self.out.finding(&line);
    }

    fn repaired(&mut self, how: &str) {
        self.summary.repaired += 1;
        self.out.finding(&format!("  repaired: {how}"));
    }

    /// Reports a removal whose condition was re-checked as it ran: done, or the thing became
    /// valid meanwhile (a running server wrote it) and was kept.
    fn removed_or_kept(&mut self, removed: bool, done: &str, kept: &str) {
        self.repaired(if removed { done } else { kept });
    }

    /// Records that a repair removed one form of `record` (`whole`: its whole file, else its
    /// chunk list); when no form is left, the NAR is gone because of this run.
    fn note_repaired_away(&mut self, record: &NarRecord, whole: bool) {
        let other_form_left = if whole {
            record.chunked.is_some()
        } else {
            record.whole.is_some()
        };
        if !other_form_left {
            self.repaired_away.insert(record.nar_hash.to_string());
        }
    }

    fn age_of(&self, at: SystemTime) -> Duration {
        self.now.duration_since(at).unwrap_or_default()
    }

    fn age_of_secs(&self, secs: i64) -> Duration {
        Duration::from_secs(u64::try_from(now_secs() - secs).unwrap_or(0))
    }

    /// A finding old enough to judge gives its line back; one younger than `--min-age` may be
    /// a write in progress, so it is reported as left alone and `None` is returned.
    fn old_enough(&mut self, line: String, age: Duration) -> Option<String> {
        if age >= self.options.min_age {
            return Some(line);
        }
        self.summary.left_alone += 1;
        self.out.finding(&format!(
            "recent ({} old, under --min-age {}; may be a write in progress, left alone): {line}",
            format_age(age),
            format_age(self.options.min_age)
        ));
        None
    }

    /// Walks every stored NAR; returns the whole-file keys recorded.
    async fn check_nars(
        &mut self,
        nars: &HashMap<NarKey, StoredObject<NarKey>>,
        chunks: &HashMap<ChunkHash, StoredObject<ChunkHash>>,
    ) -> Result<HashSet<NarKey>> {
        let mut recorded = HashSet::new();
        let mut after: Option<Sha256Hash> = None;
        let (mut checked, mut bytes) = (0u64, 0u64);
        self.out.nars_to_check(self.db.store_counts().await?.nars);
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let page = self.db.nars_after(after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.nar_hash);
            for record in page {
                let mut read = 0;
                if let Some(whole) = record.whole {
                    recorded.insert(whole.key);
                    read = self.check_whole_file(&record, whole, nars).await?;
                    bytes += read;
                }
                if record.chunked.is_some() {
                    self.check_chunk_list(&record, chunks).await?;
                }
                checked += 1;
                self.out.nar_checked(read);
                if last_report.elapsed() >= PROGRESS_EVERY {
                    last_report = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    self.out.progress(&format!(
                        "fsck: checked {checked} NARs ({} read, {:.1} MB/s)",
                        format_size(bytes),
                        bytes as f64 / 1e6 / secs
                    ));
                }
            }
        }
        self.out.progress(&format!("fsck: checked {checked} NARs"));
        Ok(recorded)
    }

    /// Presence, size and (optionally) hashes of a whole file; returns the bytes read.
    async fn check_whole_file(
        &mut self,
        record: &NarRecord,
        whole: WholeFile,
        nars: &HashMap<NarKey, StoredObject<NarKey>>,
    ) -> Result<u64> {
        let nar = record.nar_hash;
        let size = match nars.get(&whole.key) {
            Some(o) => Some(o.size),
            // Not listed: maybe stored after the listing; ask storage itself.
            None => self.store.nar_size(&whole.key).await?,
        };
        let verdict = match size {
            None => FileCheck::Missing,
            Some(size) if size != whole.size => FileCheck::Corrupt(format!(
                "it is {size} bytes, {} recorded (truncated or overwritten)",
                whole.size
            )),
            Some(_) if self.options.verify_hashes => {
                self.maintenance
                    .verify_whole_file(&nar, record.nar_size, &whole)
                    .await?
            }
            Some(_) => FileCheck::Intact,
        };
        let read = if self.options.verify_hashes {
            whole.size
        } else {
            0
        };
        if verdict == FileCheck::Intact {
            return Ok(read);
        }
        // The server may have dropped this whole file meanwhile (lazy chunking deletes whole
        // files): only a row that still names it is a problem.
        let still = self.db.nar(&nar).await?;
        if still.and_then(|r| r.whole).map(|w| w.key) != Some(whole.key) {
            return Ok(read);
        }
        let has_origin = self.db.narinfo_with_origin(&nar).await?.is_some();
        let after = if record.chunked.is_some() {
            "it is still served from its chunks"
        } else {
            consequence(has_origin)
        };
        match verdict {
            FileCheck::Missing => {
                self.problem(format!(
                    "missing: NAR {nar}: whole file {} is recorded but not in storage",
                    whole.key
                ));
                if self.options.repair {
                    self.db.forget_whole_file(&nar).await?;
                    self.note_repaired_away(record, true);
                    self.repaired(&format!("forgot the whole file; {after}"));
                }
            }
            FileCheck::Corrupt(why) => {
                self.problem(format!(
                    "corrupt: NAR {nar}: whole file {}: {why}",
                    whole.key
                ));
                if self.options.repair {
                    self.db.forget_whole_file(&nar).await?;
                    self.store.delete_nar(&whole.key).await?;
                    self.note_repaired_away(record, true);
                    self.repaired(&format!("forgot and deleted the whole file; {after}"));
                }
            }
            FileCheck::Intact => {}
        }
        Ok(read)
    }

    /// Completeness of a chunk list and presence of its chunks.
    async fn check_chunk_list(
        &mut self,
        record: &NarRecord,
        chunks: &HashMap<ChunkHash, StoredObject<ChunkHash>>,
    ) -> Result<()> {
        let Some(form) = record.chunked else {
            return Ok(());
        };
        let nar = record.nar_hash;
        let entries = self.db.chunk_list_entries(&nar).await?;
        let mut faults = Vec::new();
        if entries.len() as u64 != form.chunk_count {
            faults.push(format!(
                "its chunk list has {} entries, {} recorded",
                entries.len(),
                form.chunk_count
            ));
        }
        let without_row = entries.iter().filter(|e| !e.has_row).count();
        if without_row > 0 {
            faults.push(format!("{without_row} entries name chunks without a row"));
        }
        let mut missing = HashSet::new();
        for entry in &entries {
            if !chunks.contains_key(&entry.hash)
                && !missing.contains(&entry.hash)
                && !self.store.has_chunk(&entry.hash).await?
            {
                missing.insert(entry.hash);
            }
        }
        if let Some(first) = missing.iter().next() {
            faults.push(format!(
                "{} of its chunks are not in storage (e.g. {})",
                missing.len(),
                chunk_storage_key(first)
            ));
        }
        self.lost_chunks.extend(missing.iter().copied());
        if faults.is_empty() {
            return Ok(());
        }
        // A list dropped meanwhile is not a problem any more.
        if self.db.nar(&nar).await?.and_then(|r| r.chunked).is_none() {
            return Ok(());
        }
        self.problem(format!(
            "broken chunk list: NAR {nar}: {}",
            faults.join("; ")
        ));
        if self.options.repair {
            let has_origin = self.db.narinfo_with_origin(&nar).await?.is_some();
            let after = if record.whole.is_some() {
                "it is still served from its whole file"
            } else {
                consequence(has_origin)
            };
            self.db.drop_chunk_list(&nar).await?;
            self.note_repaired_away(record, false);
            self.repaired(&format!("dropped the chunk list; {after}"));
        }
        Ok(())
    }

    /// Every chunk row has its object.
    async fn check_chunk_rows(
        &mut self,
        chunks: &HashMap<ChunkHash, StoredObject<ChunkHash>>,
    ) -> Result<()> {
        let mut after: Option<ChunkHash> = None;
        let mut lost = Vec::new();
        loop {
            let page = self.db.chunks_after(after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.hash);
            for row in page {
                if !chunks.contains_key(&row.hash) && !self.store.has_chunk(&row.hash).await? {
                    lost.push(row);
                }
            }
        }
        for row in lost {
            let users = self.db.nars_using_chunk(&row.hash).await?;
            if users.is_empty() && row.ref_count <= 0 && !self.lost_chunks.contains(&row.hash) {
                // Held by an ingest that has not written it yet, or being collected: nothing
                // needs it, and the collector removes the row once its grace period ends.
                continue;
            }
            let key = chunk_storage_key(&row.hash);
            self.problem(format!(
                "missing: chunk {key} is recorded ({} references) but not in storage",
                row.ref_count
            ));
            if !self.options.repair {
                continue;
            }
            for nar in users {
                let has_origin = self.db.narinfo_with_origin(&nar).await?.is_some();
                self.db.drop_chunk_list(&nar).await?;
                if self.db.nar(&nar).await?.is_none() {
                    self.repaired_away.insert(nar.to_string());
                }
                self.out.finding(&format!(
                    "  dropped the chunk list of NAR {nar}; {}",
                    consequence(has_origin)
                ));
            }
            if self.db.forget_lost_chunk(&row.hash).await? {
                self.repaired("forgot the chunk");
            } else {
                self.out
                    .finding("  NOT repaired: a chunk list committed meanwhile names it");
            }
        }
        Ok(())
    }

    /// The running totals (stored bytes, counts) match the tables, after this run's repairs.
    async fn check_totals(&mut self) -> Result<()> {
        self.db.fold_totals().await?;
        let (totals, measured) = self.db.totals_and_measured().await?;
        if totals == measured {
            return Ok(());
        }
        self.problem(format!(
            "running totals differ from the tables: {totals:?} recorded, {measured:?} counted"
        ));
        if self.options.repair {
            self.db.reset_totals(&measured).await?;
            self.repaired("totals set to what the tables hold");
        }
        Ok(())
    }

    /// Every chunk's reference count matches the chunk lists.
    async fn check_chunk_ref_counts(&mut self) -> Result<()> {
        for m in self.db.chunk_ref_mismatches().await? {
            self.problem(format!(
                "wrong reference count: chunk {} records {} references, {} chunk-list entries \
                 name it",
                chunk_storage_key(&m.hash),
                m.recorded,
                m.actual
            ));
            if self.options.repair {
                self.db.recount_chunk_refs(&m.hash).await?;
                self.repaired("recounted");
            }
        }
        Ok(())
    }

    /// Whole files no row records.
    async fn check_stray_nars(
        &mut self,
        nars: &HashMap<NarKey, StoredObject<NarKey>>,
        recorded: &HashSet<NarKey>,
    ) -> Result<()> {
        let mut strays: Vec<&StoredObject<NarKey>> = nars
            .values()
            .filter(|o| !recorded.contains(&o.key))
            .collect();
        strays.sort_by_key(|o| o.key.file_name());
        for object in strays {
            // Recorded after our walk passed its NAR: not a stray.
            if self.db.whole_file_recorded(&object.key).await? {
                continue;
            }
            let line = format!(
                "stray: {} ({}) is in storage but recorded for no NAR",
                object.key,
                format_size(object.size)
            );
            let age = self.age_of(object.last_modified);
            let Some(line) = self.old_enough(line, age) else {
                continue;
            };
            self.problem(format!("{line} ({} old)", format_age(age)));
            if self.options.repair {
                let kept = self.db.whole_file_recorded(&object.key).await?;
                if !kept {
                    self.store.delete_nar(&object.key).await?;
                }
                self.removed_or_kept(!kept, "deleted", "recorded meanwhile; kept");
            }
        }
        Ok(())
    }

    /// Chunk objects no row records.
    async fn check_stray_chunks(
        &mut self,
        chunks: &HashMap<ChunkHash, StoredObject<ChunkHash>>,
    ) -> Result<()> {
        let mut all: Vec<&StoredObject<ChunkHash>> = chunks.values().collect();
        all.sort_by_key(|o| o.key);
        for batch in all.chunks(PAGE as usize) {
            let hashes: Vec<ChunkHash> = batch.iter().map(|o| o.key).collect();
            let known: HashSet<ChunkHash> =
                self.db.known_chunks(&hashes).await?.into_iter().collect();
            for object in batch.iter().filter(|o| !known.contains(&o.key)) {
                let line = format!(
                    "stray: chunk {} ({}) is in storage but has no row",
                    chunk_storage_key(&object.key),
                    format_size(object.size)
                );
                let age = self.age_of(object.last_modified);
                let Some(line) = self.old_enough(line, age) else {
                    continue;
                };
                self.problem(format!("{line} ({} old)", format_age(age)));
                if self.options.repair {
                    // Claimed like the collector claims, so an ingest that wants this chunk
                    // meanwhile waits for the deletion instead of relying on the object.
                    let removed = self.db.claim_stray_chunk(&object.key).await?;
                    if removed {
                        self.store.delete_chunk(&object.key).await?;
                        self.db.forget_collected_chunk(&object.key).await?;
                    }
                    self.removed_or_kept(removed, "deleted", "recorded meanwhile; kept");
                }
            }
        }
        Ok(())
    }

    /// Files writes killed half-way left behind: object_store's staging files in storage and
    /// ncps's temporary files. Younger than `--min-age`, they may be writes in progress and are
    /// not listed. The server removes them itself an hour later; `--repair` at once.
    async fn check_leftover_files(&mut self) -> Result<()> {
        let min_age = self.options.min_age;
        let mut files = self.store.staging_files(min_age).await?;
        files.extend(self.maintenance.0.ingest.temp().leftovers(min_age));
        for file in files {
            self.problem(format!(
                "leftover: {} was left by a write that never finished",
                file.display()
            ));
            if self.options.repair {
                match std::fs::remove_file(&file) {
                    Ok(()) => self.repaired("deleted"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.repaired("gone meanwhile")
                    }
                    Err(e) => self.out.finding(&format!("  NOT repaired: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Narinfos whose NAR is neither stored nor fetchable.
    async fn check_narinfos(&mut self) -> Result<()> {
        for orphan in self.db.orphan_narinfos().await? {
            let line = format!(
                "unservable narinfo: {}: its NAR ({}) is not stored and no upstream is \
                 recorded to fetch it from",
                orphan.store_path, orphan.nar_hash
            );
            // Unservable because this run removed its NAR: no write in progress explains it.
            let line = if self.repaired_away.contains(&orphan.nar_hash) {
                line
            } else {
                let age = self.age_of_secs(orphan.created_at);
                let Some(line) = self.old_enough(line, age) else {
                    continue;
                };
                line
            };
            self.problem(line);
            if self.options.repair {
                let removed = self.db.delete_narinfo_if_orphan(&orphan.hash).await?;
                self.removed_or_kept(
                    removed,
                    "dropped the narinfo (clients now get a 404 and look elsewhere)",
                    "its NAR arrived meanwhile; kept",
                );
            }
        }
        Ok(())
    }

    /// NAR URLs that resolve to nothing.
    async fn check_nar_urls(&mut self) -> Result<()> {
        for url in self.db.dangling_nar_urls().await? {
            self.problem(format!(
                "dangling NAR URL: nar/{} names NAR {}, which is neither stored nor described \
                 by a narinfo",
                url.url_key, url.nar_hash
            ));
            if self.options.repair {
                let removed = self.db.delete_nar_url_if_dangling(&url.url_key).await?;
                self.removed_or_kept(removed, "forgot the URL", "its NAR arrived meanwhile; kept");
            }
        }
        Ok(())
    }

    /// Chunks no NAR uses (after eviction, or `migrate-chunks-to-nar`): reported with when their
    /// space comes back, not a problem.
    async fn note_unreferenced_chunks(&mut self) -> Result<()> {
        let (count, bytes) = self.db.unreferenced_chunk_totals().await?;
        if count > 0 {
            self.summary.notes += 1;
            self.out.finding(&format!(
                "note: {count} chunk{} ({}) no NAR uses any more; `ncps serve`'s chunk collector \
                 deletes each once it has been unused for --cache-cdc-gc-grace (default 1h)",
                if count == 1 { "" } else { "s" },
                format_size(bytes)
            ));
        }
        Ok(())
    }

    /// Stored NARs no narinfo describes (a path deleted with DELETE keeps its NAR until
    /// eviction): reported, not a problem.
    async fn note_unreferenced_nars(&mut self) -> Result<()> {
        for nar in self.db.unreferenced_nars().await? {
            self.summary.notes += 1;
            let age = self.age_of_secs(nar.created_at);
            self.out.finding(&format!(
                "note: NAR {} is stored ({} old) but no narinfo describes it; the reclaim job removes it within 5 minutes",
                nar.record.nar_hash,
                format_age(age)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ncps_nix::ChunkHash;

    use super::{FsckOptions, FsckOutput};
    use crate::test_support::local_cache;

    /// Lines fsck prints, kept for the assertions.
    #[derive(Default)]
    struct Lines(Vec<String>);

    impl FsckOutput for Lines {
        fn finding(&mut self, line: &str) {
            self.0.push(line.to_owned());
        }
        fn progress(&mut self, _: &str) {}
    }

    /// An ingest holds its chunks before writing them: a held chunk with no object yet is a
    /// write in progress, not a fault, and `fsck --repair` leaves its row (the ingest's commit
    /// would otherwise fail).
    #[tokio::test(flavor = "multi_thread")]
    async fn fsck_leaves_chunks_an_ingest_holds_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let held = ncps_db::ChunkRef {
            hash: ChunkHash::digest(b"not written yet"),
            plain_size: 10,
            stored_size: 5,
        };
        assert!(db.hold_chunks(&[held]).await.unwrap().is_empty());
        let mut lines = Lines::default();
        let options = FsckOptions {
            repair: true,
            verify_hashes: false,
            min_age: Duration::ZERO,
        };
        let summary = cache.maintenance().fsck(options, &mut lines).await.unwrap();
        assert_eq!(summary.problems, 0, "{:?}", lines.0);
        assert_eq!(
            db.known_chunks(&[held.hash]).await.unwrap(),
            vec![held.hash]
        );
    }

    /// Files killed writes left (a staging file in storage, a temporary file) are problems
    /// that `--repair` deletes; files of other names are not touched.
    #[tokio::test(flavor = "multi_thread")]
    async fn leftover_files_are_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _db) = local_cache(dir.path()).await;
        let staging = dir.path().join("store/nar/x.nar.xz#123");
        std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
        std::fs::write(&staging, b"half").unwrap();
        let temp_dir = cache.maintenance().0.ingest.temp().dir().to_path_buf();
        std::fs::create_dir_all(&temp_dir).unwrap();
        let (_, temp) = cache
            .maintenance()
            .0
            .ingest
            .temp()
            .create(crate::temp::TempKind::Upload)
            .unwrap();
        let temp = temp.keep().unwrap();
        let other = temp_dir.join("not-ours");
        std::fs::write(&other, b"x").unwrap();
        let run = |repair| run_fsck(cache.clone(), repair);
        let (found, lines) = run(false).await;
        assert_eq!(found.problems, 2, "{lines:?}");
        assert!(staging.exists() && temp.exists());
        let (repaired, lines) = run(true).await;
        assert_eq!((repaired.problems, repaired.repaired), (2, 2), "{lines:?}");
        assert!(!staging.exists() && !temp.exists() && other.exists());
        assert_eq!(run(false).await.0.problems, 0);
    }

    /// Running totals that no longer match the tables (rows edited by hand with the triggers
    /// off) are a problem that `--repair` sets right.
    #[tokio::test(flavor = "multi_thread")]
    async fn drifted_totals_are_found_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let drifted = ncps_db::StoreCounts {
            whole_bytes: 4096,
            ..ncps_db::StoreCounts::default()
        };
        db.reset_totals(&drifted).await.unwrap();
        let run = |repair| run_fsck(cache.clone(), repair);
        let (found, lines) = run(false).await;
        assert_eq!(found.problems, 1, "{lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("running totals differ")),
            "{lines:?}"
        );
        let (repaired, lines) = run(true).await;
        assert_eq!((repaired.problems, repaired.repaired), (1, 1), "{lines:?}");
        assert_eq!(db.stored_bytes().await.unwrap(), 0);
        assert_eq!(run(false).await.0.problems, 0);
    }

    /// Runs fsck over `cache` (hashes not verified, every finding judged whatever its age):
    /// its summary and lines.
    async fn run_fsck(cache: crate::Cache, repair: bool) -> (super::FsckSummary, Vec<String>) {
        let mut lines = Lines::default();
        let options = FsckOptions {
            repair,
            verify_hashes: false,
            min_age: Duration::ZERO,
        };
        let summary = cache.maintenance().fsck(options, &mut lines).await.unwrap();
        (summary, lines.0)
    }
}
