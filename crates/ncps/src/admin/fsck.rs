//! `ncps fsck`: the database against storage.
//!
//! Checks, in order: every recorded whole file is stored with its recorded size (and, with
//! `--verify-hashes`, hashes to its name and decompresses to its NarHash); every chunk list is
//! complete and its chunks stored; every chunk row has its object and the right reference
//! count; every stored object is recorded (strays); every narinfo can be served (its NAR is
//! stored or an upstream is recorded for it); every NAR URL names something.
//!
//! Safe beside a running server: storage is listed before the database is read, so an object
//! written and recorded meanwhile is never a stray; anything found missing is looked up again
//! before it is reported; objects and narinfos younger than `--min-age` are reported but left
//! alone (they may be a write in progress); and every removal re-checks its condition in the
//! same statement. A stray chunk an ingest is reusing at that very moment could still be lost —
//! the same window chunk garbage collection has — and the next fsck finds and repairs the NAR.
//!
//! `--repair` only removes what is broken: a NAR whose bytes are gone or bad is forgotten, so
//! the next request fetches it again from its upstream; narinfos left with nothing to serve
//! are dropped, so clients look elsewhere instead of failing.
#![allow(clippy::print_stdout, clippy::print_stderr)] // findings on stdout, progress on stderr

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use ncps_core::admin::FileCheck;
use ncps_db::{NarRecord, WholeFile, now_secs};
use ncps_nix::{ChunkHash, NarKey, Sha256Hash};
use ncps_store::StoredObject;
use ncps_store::chunk::chunk_storage_key;

use super::{Opened, format_age, format_size};
use crate::cli::FsckArgs;

/// Rows read per database page.
const PAGE: u32 = 500;
/// How often progress is reported during long walks.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Runs every check, repairing with `--repair`; fails while problems remain.
pub async fn run(args: FsckArgs) -> Result<()> {
    let opened = super::open(&args.storage).await?;
    let mut fsck = Fsck {
        opened,
        repair: args.repair,
        verify_hashes: args.verify_hashes,
        min_age: args.min_age,
        now: SystemTime::now(),
        problems: 0,
        repaired: 0,
        left_alone: 0,
        notes: 0,
    };
    eprintln!("fsck: listing storage");
    let nars: HashMap<NarKey, StoredObject<NarKey>> = fsck
        .opened
        .store
        .list_nars()
        .await?
        .into_iter()
        .map(|o| (o.key, o))
        .collect();
    let chunks: HashMap<ChunkHash, StoredObject<ChunkHash>> = fsck
        .opened
        .store
        .list_chunk_objects()
        .await?
        .into_iter()
        .map(|o| (o.key, o))
        .collect();
    eprintln!(
        "fsck: {} NAR files and {} chunks in storage",
        nars.len(),
        chunks.len()
    );
    let recorded = fsck.check_nars(&nars, &chunks).await?;
    fsck.check_chunk_rows(&chunks).await?;
    fsck.check_chunk_ref_counts().await?;
    fsck.check_stray_nars(&nars, &recorded).await?;
    fsck.check_stray_chunks(&chunks).await?;
    fsck.check_narinfos().await?;
    fsck.check_nar_urls().await?;
    fsck.note_unreferenced_nars().await?;
    fsck.finish()
}

struct Fsck {
    opened: Opened,
    repair: bool,
    verify_hashes: bool,
    min_age: Duration,
    now: SystemTime,
    /// Problems found.
    problems: u64,
    /// Problems repaired (or resolved meanwhile).
    repaired: u64,
    /// Leftovers too young to judge.
    left_alone: u64,
    /// Findings that are not problems.
    notes: u64,
}

/// How a NAR's loss is healed, for the repair line.
fn consequence(has_origin: bool) -> &'static str {
    if has_origin {
        "it is fetched again from its upstream on demand"
    } else {
        "no upstream is recorded for it, so its narinfos are dropped below"
    }
}

impl Fsck {
    fn problem(&mut self, line: String) {
        self.problems += 1;
        println!("{line}");
    }

    fn repaired(&mut self, how: &str) {
        self.repaired += 1;
        println!("  repaired: {how}");
    }

    /// Reports a removal whose condition was re-checked as it ran: done, or the thing became
    /// valid meanwhile (a running server wrote it) and was kept.
    fn removed_or_kept(&mut self, removed: bool, done: &str, kept: &str) {
        self.repaired(if removed { done } else { kept });
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
        if age >= self.min_age {
            return Some(line);
        }
        self.left_alone += 1;
        println!(
            "recent ({} old, under --min-age {}; may be a write in progress, left alone): {line}",
            format_age(age),
            format_age(self.min_age)
        );
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
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let page = self.opened.db.nars_after(after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.nar_hash);
            for record in page {
                if let Some(whole) = record.whole {
                    recorded.insert(whole.key);
                    bytes += self.check_whole_file(&record, whole, nars).await?;
                }
                if record.chunked.is_some() {
                    self.check_chunk_list(&record, chunks).await?;
                }
                checked += 1;
                if last_report.elapsed() >= PROGRESS_EVERY {
                    last_report = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    eprintln!(
                        "fsck: checked {checked} NARs ({} read, {:.1} MB/s)",
                        format_size(bytes),
                        bytes as f64 / 1e6 / secs
                    );
                }
            }
        }
        eprintln!("fsck: checked {checked} NARs");
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
            None => self.opened.store.nar_size(&whole.key).await?,
        };
        let verdict = match size {
            None => FileCheck::Missing,
            Some(size) if size != whole.size => FileCheck::Corrupt(format!(
                "it is {size} bytes, {} recorded (truncated or overwritten)",
                whole.size
            )),
            Some(_) if self.verify_hashes => {
                self.opened
                    .cache
                    .verify_whole_file(&nar, record.nar_size, &whole)
                    .await?
            }
            Some(_) => FileCheck::Intact,
        };
        let read = if self.verify_hashes { whole.size } else { 0 };
        if verdict == FileCheck::Intact {
            return Ok(read);
        }
        // The server may have dropped this whole file meanwhile (lazy chunking deletes whole
        // files): only a row that still names it is a problem.
        let still = self.opened.db.nar(&nar).await?;
        if still.and_then(|r| r.whole).map(|w| w.key) != Some(whole.key) {
            return Ok(read);
        }
        let has_origin = self.opened.db.narinfo_with_origin(&nar).await?.is_some();
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
                if self.repair {
                    self.opened.db.forget_whole_file(&nar).await?;
                    self.repaired(&format!("forgot the whole file; {after}"));
                }
            }
            FileCheck::Corrupt(why) => {
                self.problem(format!(
                    "corrupt: NAR {nar}: whole file {}: {why}",
                    whole.key
                ));
                if self.repair {
                    self.opened.db.forget_whole_file(&nar).await?;
                    self.opened.store.delete_nar(&whole.key).await?;
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
        let entries = self.opened.db.chunk_list_entries(&nar).await?;
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
                && !self.opened.store.has_chunk(&entry.hash).await?
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
        if faults.is_empty() {
            return Ok(());
        }
        // A list dropped meanwhile is not a problem any more.
        if self
            .opened
            .db
            .nar(&nar)
            .await?
            .and_then(|r| r.chunked)
            .is_none()
        {
            return Ok(());
        }
        self.problem(format!(
            "broken chunk list: NAR {nar}: {}",
            faults.join("; ")
        ));
        if self.repair {
            let has_origin = self.opened.db.narinfo_with_origin(&nar).await?.is_some();
            let after = if record.whole.is_some() {
                "it is still served from its whole file"
            } else {
                consequence(has_origin)
            };
            self.opened.db.drop_chunk_list(&nar).await?;
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
            let page = self.opened.db.chunks_after(after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.hash);
            for row in page {
                if !chunks.contains_key(&row.hash)
                    && !self.opened.store.has_chunk(&row.hash).await?
                {
                    lost.push(row);
                }
            }
        }
        for row in lost {
            let key = chunk_storage_key(&row.hash);
            self.problem(format!(
                "missing: chunk {key} is recorded ({} references) but not in storage",
                row.ref_count
            ));
            if !self.repair {
                continue;
            }
            for nar in self.opened.db.nars_using_chunk(&row.hash).await? {
                let has_origin = self.opened.db.narinfo_with_origin(&nar).await?.is_some();
                self.opened.db.drop_chunk_list(&nar).await?;
                println!(
                    "  dropped the chunk list of NAR {nar}; {}",
                    consequence(has_origin)
                );
            }
            if self.opened.db.forget_lost_chunk(&row.hash).await? {
                self.repaired("forgot the chunk");
            } else {
                println!("  NOT repaired: a chunk list committed meanwhile names it");
            }
        }
        Ok(())
    }

    /// Every chunk's reference count matches the chunk lists.
    async fn check_chunk_ref_counts(&mut self) -> Result<()> {
        for m in self.opened.db.chunk_ref_mismatches().await? {
            self.problem(format!(
                "wrong reference count: chunk {} records {} references, {} chunk-list entries \
                 name it",
                chunk_storage_key(&m.hash),
                m.recorded,
                m.actual
            ));
            if self.repair {
                self.opened.db.recount_chunk_refs(&m.hash).await?;
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
            if self.opened.db.whole_file_recorded(&object.key).await? {
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
            if self.repair {
                let kept = self.opened.db.whole_file_recorded(&object.key).await?;
                if !kept {
                    self.opened.store.delete_nar(&object.key).await?;
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
            let known: HashSet<ChunkHash> = self
                .opened
                .db
                .known_chunks(&hashes)
                .await?
                .into_iter()
                .collect();
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
                if self.repair {
                    let removed = self.opened.db.known_chunks(&[object.key]).await?.is_empty();
                    if removed {
                        self.opened.store.delete_chunk(&object.key).await?;
                    }
                    self.removed_or_kept(removed, "deleted", "recorded meanwhile; kept");
                }
            }
        }
        Ok(())
    }

    /// Narinfos whose NAR is neither stored nor fetchable.
    async fn check_narinfos(&mut self) -> Result<()> {
        for orphan in self.opened.db.orphan_narinfos().await? {
            let line = format!(
                "unservable narinfo: {}: its NAR ({}) is not stored and no upstream is \
                 recorded to fetch it from",
                orphan.store_path, orphan.nar_hash
            );
            let age = self.age_of_secs(orphan.created_at);
            let Some(line) = self.old_enough(line, age) else {
                continue;
            };
            self.problem(line);
            if self.repair {
                let removed = self
                    .opened
                    .db
                    .delete_narinfo_if_orphan(&orphan.hash)
                    .await?;
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
        for url in self.opened.db.dangling_nar_urls().await? {
            self.problem(format!(
                "dangling NAR URL: nar/{} names NAR {}, which is neither stored nor described \
                 by a narinfo",
                url.url_key, url.nar_hash
            ));
            if self.repair {
                let removed = self
                    .opened
                    .db
                    .delete_nar_url_if_dangling(&url.url_key)
                    .await?;
                self.removed_or_kept(removed, "forgot the URL", "its NAR arrived meanwhile; kept");
            }
        }
        Ok(())
    }

    /// Stored NARs no narinfo describes (a path deleted with DELETE keeps its NAR until
    /// eviction): reported, not a problem.
    async fn note_unreferenced_nars(&mut self) -> Result<()> {
        for nar in self.opened.db.unreferenced_nars().await? {
            self.notes += 1;
            let age = self.age_of_secs(nar.created_at);
            println!(
                "note: NAR {} is stored ({} old) but no narinfo describes it; eviction reclaims it",
                nar.record.nar_hash,
                format_age(age)
            );
        }
        Ok(())
    }

    /// Prints the summary; fails when problems remain.
    fn finish(self) -> Result<()> {
        let remaining = self.problems - self.repaired;
        let mut summary = format!(
            "fsck: {} problem{} found",
            self.problems,
            if self.problems == 1 { "" } else { "s" }
        );
        if self.repair {
            summary += &format!(", {} repaired", self.repaired);
        }
        summary += &format!(", {remaining} remaining");
        if self.left_alone > 0 {
            summary += &format!("; {} recent items left alone", self.left_alone);
        }
        if self.notes > 0 {
            summary += &format!("; {} notes", self.notes);
        }
        println!("{summary}");
        if remaining > 0 {
            if self.repair {
                bail!("{remaining} problems could not be repaired");
            }
            bail!("{remaining} problems found; run again with --repair to fix them");
        }
        Ok(())
    }
}
