//! File system calls that never wait for the disk: each succeeds only when what it needs is in
//! memory (the kernel's directory-entry and page caches) and otherwise says so, and the caller
//! does the same work on the blocking pool.
//!
//! A warm small NAR is then opened and read on the runtime thread that serves it, as nginx does
//! on its event loop, instead of in two hand-offs to the blocking pool, each costing more than
//! the read (two thread wake-ups); a cold disk still never stalls a runtime thread. Linux only
//! (`openat2` with `RESOLVE_CACHED` since 5.12, `preadv2` with `RWF_NOWAIT` since 4.14); a
//! kernel, file system or sandbox without them makes every call answer "would wait".
//!
//! Called by `local.rs` for stored NARs and chunk frames.

use std::fs::File;
use std::io::IoSliceMut;
use std::path::Path;

use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, openat2};
use rustix::io::{Errno, ReadWriteFlags, preadv2};

/// Opens `path` for reading if every directory entry on the way is in memory: `None` when the
/// kernel would have to read a directory from disk (or cannot open this way at all). A file
/// that is certainly not there (a cached negative entry) is `NotFound`.
pub(crate) fn open(path: &Path) -> Option<std::io::Result<File>> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC;
    match openat2(CWD, path, flags, Mode::empty(), ResolveFlags::CACHED) {
        Ok(fd) => Some(Ok(File::from(fd))),
        Err(Errno::NOENT) => Some(Err(std::io::ErrorKind::NotFound.into())),
        // EAGAIN: not cached. Anything else (ENOSYS, EPERM from a seccomp filter, EINVAL on
        // an old kernel, a real error) is for the blocking open to find out and report.
        Err(_) => None,
    }
}

/// Reads into `buf` from `offset` as much as is in the page cache, stopping at the first byte
/// that would have to come from disk (or at the end of the file): the count read, 0 when the
/// file system cannot read without waiting. One call: where it stops, the kernel has started
/// reading ahead, and the caller's blocking read of the rest waits for that.
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> usize {
    let mut slice = [IoSliceMut::new(buf)];
    preadv2(file, &mut slice, offset, ReadWriteFlags::NOWAIT).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use super::*;

    /// The file system of the tests' temporary directory reads without waiting (the one CI
    /// and this project's machines run on do); a test on one that cannot is told so plainly.
    fn reads_without_waiting(file: &File) -> bool {
        let mut probe = [0u8; 1];
        let answer = preadv2(
            file,
            &mut [IoSliceMut::new(&mut probe)],
            0,
            ReadWriteFlags::NOWAIT,
        );
        !matches!(answer, Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL))
    }

    /// A file just written is in the page cache: opened and read whole without waiting. Once
    /// its pages are dropped, a read without waiting stops short (0 bytes) instead of going
    /// to the disk, and a read that may wait still gets every byte.
    #[test]
    fn cached_files_are_read_without_waiting_and_evicted_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nar");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = File::create(&path).unwrap();
        file.write_all(&bytes).unwrap();
        file.sync_all().unwrap();
        drop(file);

        let file = open(&path)
            .expect("a file just created has a cached entry")
            .unwrap();
        assert!(
            reads_without_waiting(&file),
            "the test directory's file system cannot read without waiting"
        );
        let mut buf = vec![0u8; bytes.len()];
        assert_eq!(read_at(&file, &mut buf, 0), bytes.len());
        assert_eq!(buf, bytes);
        let mut tail = vec![0u8; 1000];
        assert_eq!(
            read_at(&file, &mut tail, 299_500),
            500,
            "stops at the end of the file"
        );

        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let mut buf = vec![0u8; bytes.len()];
        assert!(
            read_at(&file, &mut buf, 0) < bytes.len(),
            "read evicted pages without waiting"
        );
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, bytes);

        match open(&dir.path().join("missing")) {
            None => {} // no cached negative entry: the blocking open says
            Some(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            Some(Ok(_)) => panic!("opened a file that is not there"),
        }
    }
}
