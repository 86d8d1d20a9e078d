//! `ncps fsck`: the database against storage.
//!
//! Checks, in order: every recorded whole file is stored with its recorded size (and, with
//! `--verify-hashes`, hashes to its name and decompresses to its NarHash); every chunk list is
//! complete and its chunks stored; every chunk row has its object and the right reference
//! count; every stored object is recorded (strays); every narinfo can be served (its NAR is
//! stored or an upstream is recorded for it); every NAR URL names something; no file of a
//! write killed half-way is left (staging files in storage, temporary files).
//!
//! Memory stays bounded whatever the cache holds: chunks are compared one storage directory
//! (1/256 of the hashes) at a time with the rows of that hash range, read in one ordered walk;
//! whole NAR files, which share one flat directory, are listed in as many passes as it takes
//! to hold at most [`NAR_FILES_PER_PASS`] of them at once, each pass keeping one share of the
//! file hashes; every other check reads the database in pages or asks it for the problems only.
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

use ncps_db::{ChunkListEntry, ChunkRow, Database, NarRecord, WholeFile, now_secs};
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
/// Whole NAR files one pass over storage holds in memory by default (about 100 bytes each):
/// a cache of a million NAR files is checked in five passes of about 20 MB.
pub const NAR_FILES_PER_PASS: u64 = 200_000;

/// How fsck runs.
#[derive(Clone, Copy, Debug)]
pub struct FsckOptions {
    /// Remove what is broken (see the module documentation).
    pub repair: bool,
    /// Read every whole file and check its hashes, not only its size.
    pub verify_hashes: bool,
    /// Findings younger than this may be a write in progress: reported, left alone.
    pub min_age: Duration,
    /// Most whole NAR files held in memory at once (see the module documentation); normally
    /// [`NAR_FILES_PER_PASS`].
    pub nar_files_per_pass: u64,
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
            lost_rows: HashMap::new(),
        };
        fsck.run().await?;
        Ok(fsck.summary)
    }
}

impl Fsck<'_> {
    async fn run(&mut self) -> Result<()> {
        self.check_chunk_directories().await?;
        self.check_nars().await?;
        self.report_lost_chunks().await?;
        self.check_chunk_ref_counts().await?;
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
    /// Chunk rows whose object is not in storage, found by the walk over the directories and
    /// reported once the chunk lists have been checked (problems only: bounded by them).
    lost_rows: HashMap<ChunkHash, ChunkRow>,
}

/// The chunk rows in hash order, read a page at a time and handed out one storage directory
/// (leading hash byte) at a time, so the directories are checked in one walk over the rows.
#[derive(Default)]
struct ChunkRowWalk {
    page: std::collections::VecDeque<ChunkRow>,
    after: Option<ChunkHash>,
    finished: bool,
}

impl ChunkRowWalk {
    /// The next row of `directory`, or `None` once the rows reach the next directory. A row
    /// of an earlier directory (a database ordering text unlike bytes) is handed out too: it
    /// is not in this directory's listing, so storage is asked about it directly.
    async fn next_in(&mut self, db: &Database, directory: u8) -> Result<Option<ChunkRow>> {
        if self.page.is_empty() && !self.finished {
            let page = db.chunks_after(self.after.as_ref(), PAGE).await?;
            self.after = page.last().map(|row| row.hash).or(self.after);
            self.finished = page.len() < PAGE as usize;
            self.page.extend(page);
        }
        let in_directory = self
            .page
            .front()
            .is_some_and(|row| row.hash.as_bytes()[0] <= directory);
        Ok(if in_directory {
            self.page.pop_front()
        } else {
            None
        })
    }
}

/// A storage listing by key, so the rows walked can take their objects out of it: what is
/// left once the rows are done is stray.
fn by_key<K: Copy + Eq + std::hash::Hash>(
    objects: Vec<StoredObject<K>>,
) -> HashMap<K, StoredObject<K>> {
    objects.into_iter().map(|o| (o.key, o)).collect()
}

/// Which pass of the NAR check holds `key`: the file hash's leading bytes, uniform over
/// `passes`.
fn nar_pass(key: &NarKey, passes: u64) -> u64 {
    let (lead, _) = key
        .hash
        .as_bytes()
        .split_first_chunk::<8>()
        .expect("32 bytes");
    u64::from_be_bytes(*lead) % passes
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

    /// Walks every stored NAR: whole files against the listing of NAR files, one pass per
    /// share of the file hashes (see the module documentation), each pass ending with the
    /// files of its share that no row records; chunk lists in the first pass.
    async fn check_nars(&mut self) -> Result<()> {
        let total = self.db.store_counts().await?.nars;
        let passes = self
            .db
            .whole_file_count()
            .await?
            .div_ceil(self.options.nar_files_per_pass.max(1))
            .max(1);
        self.out.nars_to_check(total);
        let (mut checked, mut bytes) = (0u64, 0u64);
        let started = Instant::now();
        let mut last_report = Instant::now();
        for pass in 0..passes {
            let in_pass = |key: &NarKey| nar_pass(key, passes) == pass;
            let mut listed = by_key(self.store.list_nars_where(in_pass).await?);
            self.out.progress(&format!(
                "fsck: NAR files, pass {} of {passes}: {} in storage",
                pass + 1,
                listed.len()
            ));
            let mut after: Option<Sha256Hash> = None;
            loop {
                let page = self.db.nars_after(after.as_ref(), PAGE).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.nar_hash);
                let mut chunk_lists = if pass == 0 {
                    let chunked: Vec<Sha256Hash> = page
                        .iter()
                        .filter(|r| r.chunked.is_some())
                        .map(|r| r.nar_hash)
                        .collect();
                    self.db.chunk_list_entries(&chunked).await?
                } else {
                    HashMap::new()
                };
                for record in page {
                    let mut read = 0;
                    // Each NAR counts once: in the pass of its whole file, else the first.
                    let mut done = pass == 0 && record.whole.is_none();
                    if let Some(whole) = record.whole.filter(|w| in_pass(&w.key)) {
                        let stored = listed.remove(&whole.key);
                        read = self.check_whole_file(&record, whole, stored).await?;
                        bytes += read;
                        done = true;
                    }
                    if pass == 0 && record.chunked.is_some() {
                        let entries = chunk_lists.remove(&record.nar_hash).unwrap_or_default();
                        self.check_chunk_list(&record, entries).await?;
                    }
                    if !done {
                        continue;
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
            self.check_stray_nars(listed.into_values().collect())
                .await?;
        }
        self.out.progress(&format!("fsck: checked {checked} NARs"));
        Ok(())
    }

    /// Presence, size and (optionally) hashes of a whole file; returns the bytes read.
    async fn check_whole_file(
        &mut self,
        record: &NarRecord,
        whole: WholeFile,
        listed: Option<StoredObject<NarKey>>,
    ) -> Result<u64> {
        let nar = record.nar_hash;
        let size = match listed {
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

    /// Completeness of a chunk list and presence of its chunks: a chunk with a row was found
    /// in storage or not by [`Fsck::check_chunk_directories`]; one without a row is looked up.
    async fn check_chunk_list(
        &mut self,
        record: &NarRecord,
        entries: Vec<ChunkListEntry>,
    ) -> Result<()> {
        let Some(form) = record.chunked else {
            return Ok(());
        };
        let nar = record.nar_hash;
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
            let lost = if entry.has_row {
                self.lost_rows.contains_key(&entry.hash)
            } else {
                !missing.contains(&entry.hash) && !self.store.has_chunk(&entry.hash).await?
            };
            if lost {
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

    /// Every chunk row has its object and every chunk object its row, one storage directory
    /// at a time against the rows of its hash range: rows without an object are kept for
    /// [`Fsck::report_lost_chunks`]; objects without a row are strays.
    async fn check_chunk_directories(&mut self) -> Result<()> {
        let mut rows = ChunkRowWalk::default();
        let (mut rows_checked, mut objects) = (0u64, 0u64);
        let mut last_report = Instant::now();
        for directory in 0..=u8::MAX {
            // Listed before its rows are read: an object written and recorded meanwhile has
            // its row read, and is no stray.
            let mut listed = by_key(self.store.list_chunk_directory(directory).await?);
            objects += listed.len() as u64;
            while let Some(row) = rows.next_in(&self.db, directory).await? {
                rows_checked += 1;
                // Not listed: maybe stored after the listing; ask storage itself.
                if listed.remove(&row.hash).is_none() && !self.store.has_chunk(&row.hash).await? {
                    self.lost_rows.insert(row.hash, row);
                }
            }
            self.check_stray_chunks(listed.into_values().collect())
                .await?;
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                self.out.progress(&format!(
                    "fsck: chunks: {} of 256 directories, {rows_checked} rows, {objects} objects",
                    u32::from(directory) + 1
                ));
            }
        }
        self.out.progress(&format!(
            "fsck: chunks: {rows_checked} rows, {objects} objects in storage"
        ));
        Ok(())
    }

    /// Chunk rows whose object is lost, once the chunk lists have been checked: the NARs
    /// still using one lose their chunk list, and the row goes.
    async fn report_lost_chunks(&mut self) -> Result<()> {
        let mut lost: Vec<ChunkRow> = std::mem::take(&mut self.lost_rows).into_values().collect();
        lost.sort_by_key(|row| row.hash);
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

    /// Whole files no row records, looked up a page at a time (each look-up reads every NAR).
    async fn check_stray_nars(&mut self, mut strays: Vec<StoredObject<NarKey>>) -> Result<()> {
        strays.sort_by_key(|o| o.key.file_name());
        for page in strays.chunks(PAGE as usize) {
            let keys: Vec<NarKey> = page.iter().map(|o| o.key).collect();
            // Recorded after our walk passed its NAR: not a stray.
            let recorded: HashSet<NarKey> = self
                .db
                .recorded_whole_files(&keys)
                .await?
                .into_iter()
                .collect();
            let mut found = Vec::new();
            for object in page.iter().filter(|o| !recorded.contains(&o.key)) {
                let line = format!(
                    "stray: {} ({}) is in storage but recorded for no NAR",
                    object.key,
                    format_size(object.size)
                );
                let age = self.age_of(object.last_modified);
                if let Some(line) = self.old_enough(line, age) {
                    found.push((object.key, format!("{line} ({} old)", format_age(age))));
                }
            }
            // Looked up again right before deleting: a file recorded meanwhile is kept.
            let kept: HashSet<NarKey> = if self.options.repair && !found.is_empty() {
                let keys: Vec<NarKey> = found.iter().map(|(key, _)| *key).collect();
                self.db
                    .recorded_whole_files(&keys)
                    .await?
                    .into_iter()
                    .collect()
            } else {
                HashSet::new()
            };
            for (key, line) in found {
                self.problem(line);
                if self.options.repair {
                    let keep = kept.contains(&key);
                    if !keep {
                        self.store.delete_nar(&key).await?;
                    }
                    self.removed_or_kept(!keep, "deleted", "recorded meanwhile; kept");
                }
            }
        }
        Ok(())
    }

    /// Chunk objects no row records.
    async fn check_stray_chunks(&mut self, mut all: Vec<StoredObject<ChunkHash>>) -> Result<()> {
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
    use std::collections::HashSet;
    use std::time::Duration;

    use bytes::Bytes;
    use ncps_nix::{ChunkHash, Compression, NarKey, Sha256Hash};
    use ncps_store::BlobStore;
    use ncps_store::chunk::chunk_storage_key;

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
        assert!(db.hold_chunks(&[held], 1).await.unwrap().claimed.is_empty());
        let mut lines = Lines::default();
        let summary = cache
            .maintenance()
            .fsck(options(true), &mut lines)
            .await
            .unwrap();
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

    /// fsck holds storage listings a share at a time (issue 18): whole NAR files in several
    /// passes, chunks one directory at a time. Every object is still checked exactly once: with
    /// everything stored there is no problem, and a lost whole file, a stray NAR file, a lost
    /// chunk and a stray chunk are each reported once, whichever pass or directory holds them.
    #[tokio::test(flavor = "multi_thread")]
    async fn listings_held_a_share_at_a_time_check_every_object_once() {
        use ncps_db::fixtures::FixtureSpec;
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let root = dir.path().join("store");
        let store = BlobStore::local(&root).unwrap();
        db.fill_fixture(&FixtureSpec::new(60)).await.unwrap();
        let chunked = FixtureSpec {
            chunked: true,
            seed: 2,
            ..FixtureSpec::new(60)
        };
        db.fill_fixture(&chunked).await.unwrap();
        // Every recorded object stored: whole files as sparse files of their recorded size.
        std::fs::create_dir_all(root.join("nar")).unwrap();
        let mut whole_files = Vec::new();
        let mut after = None;
        while let Some(last) = {
            let page = db.nars_after(after.as_ref(), 500).await.unwrap();
            whole_files.extend(page.iter().filter_map(|r| r.whole));
            page.last().map(|r| r.nar_hash)
        } {
            after = Some(last);
        }
        for whole in &whole_files {
            let file = std::fs::File::create(root.join("nar").join(whole.key.file_name()));
            file.unwrap().set_len(whole.size).unwrap();
        }
        let mut chunks = Vec::new();
        let mut after = None;
        while let Some(last) = {
            let page = db.chunks_after(after.as_ref(), 500).await.unwrap();
            chunks.extend(page.iter().copied());
            page.last().map(|r| r.hash)
        } {
            after = Some(last);
        }
        for row in &chunks {
            store
                .put_chunk(&row.hash, Bytes::from_static(b"frame"))
                .await
                .unwrap();
        }
        let directories: HashSet<u8> = chunks.iter().map(|r| r.hash.as_bytes()[0]).collect();
        assert!(
            directories.len() > 100,
            "chunks in {} directories",
            directories.len()
        );
        let (summary, lines) = fsck_in_passes(&cache, 7).await;
        assert_eq!(summary.problems, 0, "{lines:?}");

        let lost_file = whole_files[whole_files.len() / 2];
        std::fs::remove_file(root.join("nar").join(lost_file.key.file_name())).unwrap();
        let stray_file = NarKey::new(Sha256Hash::digest(b"stray"), Compression::Xz);
        std::fs::write(root.join("nar").join(stray_file.file_name()), b"stray").unwrap();
        let lost_chunk = chunks.iter().find(|r| r.ref_count == 1).unwrap().hash;
        std::fs::remove_file(root.join(chunk_storage_key(&lost_chunk))).unwrap();
        let stray_chunk = ChunkHash::digest(b"stray");
        store
            .put_chunk(&stray_chunk, Bytes::from_static(b"frame"))
            .await
            .unwrap();

        let (summary, lines) = fsck_in_passes(&cache, 7).await;
        let expected = [
            format!("missing: NAR {}", whole_files_nar(&db, lost_file.key).await),
            format!("stray: {stray_file} "),
            "broken chunk list".to_owned(),
            format!("missing: chunk {}", chunk_storage_key(&lost_chunk)),
            format!("stray: chunk {}", chunk_storage_key(&stray_chunk)),
        ];
        for line in &expected {
            let found = lines.iter().filter(|l| l.contains(line.as_str())).count();
            assert_eq!(found, 1, "{line:?} found {found} times in {lines:#?}");
        }
        assert_eq!(summary.problems, 5, "{lines:#?}");
    }

    /// Stray NAR files are looked up a page at a time: no index leads from a file to its row,
    /// so each look-up reads every NAR, and one look-up per stray made a thousand strays on a
    /// cache of a million paths a thousand reads of the table (issue 18). Counted, not timed.
    #[tokio::test(flavor = "multi_thread")]
    async fn stray_nar_files_are_looked_up_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let nar_dir = dir.path().join("store").join("nar");
        std::fs::create_dir_all(&nar_dir).unwrap();
        let before = db.full_scans();
        assert_eq!(run_fsck(cache.clone(), false).await.0.problems, 0);
        let per_run = db.full_scans() - before;
        for i in 0..1_001u32 {
            let key = NarKey::new(Sha256Hash::digest(&i.to_le_bytes()), Compression::Xz);
            std::fs::write(nar_dir.join(key.file_name()), b"stray").unwrap();
        }

        let before = db.full_scans();
        let (found, lines) = run_fsck(cache.clone(), false).await;
        assert_eq!(found.problems, 1_001, "{:#?}", &lines[..3]);
        assert_eq!(
            db.full_scans() - before,
            per_run + 3,
            "1,001 strays looked up in pages of 500"
        );
        let before = db.full_scans();
        let (repaired, lines) = run_fsck(cache.clone(), true).await;
        assert_eq!((repaired.problems, repaired.repaired), (1_001, 1_001));
        assert_eq!(
            db.full_scans() - before,
            per_run + 6,
            "each page looked up again right before its deletions"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.contains("repaired: deleted"))
                .count(),
            1_001
        );
        assert_eq!(std::fs::read_dir(&nar_dir).unwrap().count(), 0);
    }

    /// The NAR whose whole file is `key`.
    async fn whole_files_nar(db: &ncps_db::Database, key: NarKey) -> String {
        let mut after = None;
        loop {
            let page = db.nars_after(after.as_ref(), 500).await.unwrap();
            if let Some(r) = page.iter().find(|r| r.whole.map(|w| w.key) == Some(key)) {
                return r.nar_hash.to_string();
            }
            after = Some(page.last().expect("a NAR with that file").nar_hash);
        }
    }

    /// fsck without repairs, holding at most `files_per_pass` NAR files at once.
    async fn fsck_in_passes(
        cache: &crate::Cache,
        files_per_pass: u64,
    ) -> (super::FsckSummary, Vec<String>) {
        let mut lines = Lines::default();
        let options = FsckOptions {
            nar_files_per_pass: files_per_pass,
            ..options(false)
        };
        let summary = cache.maintenance().fsck(options, &mut lines).await.unwrap();
        (summary, lines.0)
    }

    /// Hashes not verified, every finding judged whatever its age.
    fn options(repair: bool) -> FsckOptions {
        FsckOptions {
            repair,
            verify_hashes: false,
            min_age: Duration::ZERO,
            nar_files_per_pass: super::NAR_FILES_PER_PASS,
        }
    }

    /// Runs fsck over `cache` (see [`options`]): its summary and lines.
    async fn run_fsck(cache: crate::Cache, repair: bool) -> (super::FsckSummary, Vec<String>) {
        let mut lines = Lines::default();
        let summary = cache
            .maintenance()
            .fsck(options(repair), &mut lines)
            .await
            .unwrap();
        (summary, lines.0)
    }
}
