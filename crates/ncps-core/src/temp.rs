//! Temporary files: every file ncps writes before a verified commit is created here, and every
//! kind is swept here, so a kind cannot be created without also being cleaned up after a crash.
//!
//! Files live in one directory, named `<kind prefix><random>`. They are removed when their
//! [`TempPath`] is dropped; a process killed before that leaves them behind, and [`TempFiles::sweep`]
//! removes them at the next start. The sweep only takes files older than a threshold, because an
//! admin command may run beside a live server that shares the directory.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tempfile::TempPath;
use tracing::{info, warn};

/// What a temporary file holds; each kind has its own name prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TempKind {
    /// A NAR arriving from an upstream (clients read it while it is written).
    Download,
    /// A NAR uploaded by a client, waiting for its narinfo.
    Upload,
    /// A NAR imported from a file binary cache, verified into a copy.
    Import,
    /// A whole file rebuilt from chunks.
    Unchunk,
}

impl TempKind {
    /// Every kind, so the sweep knows them all.
    const ALL: [Self; 4] = [Self::Download, Self::Upload, Self::Import, Self::Unchunk];

    /// The file name prefix; no prefix is a prefix of another.
    fn prefix(self) -> &'static str {
        match self {
            Self::Download => "nar-",
            Self::Upload => "upload-",
            Self::Import => "import-",
            Self::Unchunk => "unchunk-",
        }
    }
}

/// The directory of temporary files; cheap to clone.
#[derive(Clone, Debug)]
pub struct TempFiles {
    dir: Arc<PathBuf>,
}

impl TempFiles {
    /// Temporary files go below `dir` (created when the first file is).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir: Arc::new(dir) }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty file of `kind`, open for writing; it is removed when the path is dropped.
    pub(crate) fn create(&self, kind: TempKind) -> io::Result<(std::fs::File, TempPath)> {
        std::fs::create_dir_all(self.dir.as_path())?;
        Ok(tempfile::Builder::new()
            .prefix(kind.prefix())
            .tempfile_in(self.dir.as_path())?
            .into_parts())
    }

    /// Removes temporary files of every kind last modified more than `older_than` ago (left by
    /// a process that died); returns how many were removed. Other files are never touched.
    pub fn sweep(&self, older_than: Duration) -> usize {
        let mut removed = 0;
        for file in self.leftovers(older_than) {
            match std::fs::remove_file(&file) {
                Ok(()) => {
                    removed += 1;
                    info!(file = %file.display(), "removed a temporary file left by a crashed run");
                }
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "cannot remove a stale temporary file")
                }
            }
        }
        removed
    }

    /// Temporary files of every kind last modified more than `older_than` ago: what a process
    /// that died left (fsck reports them).
    pub fn leftovers(&self, older_than: Duration) -> Vec<std::path::PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.dir.as_path()) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !TempKind::ALL.iter().any(|k| name.starts_with(k.prefix())) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age >= older_than);
            if old {
                found.push(entry.path());
            }
        }
        found.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(path: &Path, by: Duration) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - by).unwrap();
    }

    /// Every kind, written out: the sweep's list must name each of them.
    const EVERY_KIND: [TempKind; 4] = [
        TempKind::Download,
        TempKind::Upload,
        TempKind::Import,
        TempKind::Unchunk,
    ];

    #[test]
    fn the_sweep_knows_every_kind() {
        for kind in EVERY_KIND {
            // A new kind must be added here (this match) and to `ALL`.
            match kind {
                TempKind::Download | TempKind::Upload | TempKind::Import | TempKind::Unchunk => {}
            }
            assert!(TempKind::ALL.contains(&kind), "{kind:?} is never swept");
        }
    }

    #[test]
    fn prefixes_are_distinct() {
        for a in TempKind::ALL {
            for b in TempKind::ALL {
                if a != b {
                    assert!(!a.prefix().starts_with(b.prefix()), "{a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn the_sweep_removes_old_files_of_every_kind_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let temp = TempFiles::new(dir.path().join("tmp"));
        let mut left = Vec::new();
        for kind in EVERY_KIND {
            let (_, path) = temp.create(kind).unwrap();
            // As if the process died: the file outlives its handle.
            left.push(path.keep().unwrap());
        }
        let (_, young) = temp.create(TempKind::Upload).unwrap();
        let foreign = temp.dir().join("notes.txt");
        std::fs::write(&foreign, b"mine").unwrap();
        let hour = Duration::from_secs(3600);
        for path in left.iter().chain([&foreign]) {
            age(path, 2 * hour);
        }
        assert_eq!(temp.sweep(hour), EVERY_KIND.len());
        for path in &left {
            assert!(!path.exists(), "{} left behind", path.display());
        }
        assert!(young.exists(), "a file in use was swept");
        assert!(foreign.exists(), "a file that is not ours was swept");
    }

    #[test]
    fn dropping_the_path_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let temp = TempFiles::new(dir.path().to_path_buf());
        let (_, path) = temp.create(TempKind::Download).unwrap();
        let kept = path.to_path_buf();
        assert!(kept.exists());
        drop(path);
        assert!(!kept.exists());
    }
}
