//! Large stored files handed out as memory-mapped windows, so a socket can send them without
//! copying them through user space.
//!
//! Sending a cached file is where nginx outran us on one connection: it passes the file to the
//! kernel (`sendfile`), while reading into a buffer and writing that buffer copies every byte out
//! of the page cache and back in. On this project's 2-core test host a loopback download ran at
//! 6.0 GB/s with `sendfile`, 3.0 GB/s reading and writing, 3.5 GB/s writing from a mapping.
//!
//! A window is ordinary bytes to whoever reads it (compression conversion, HTTP/2, a test), so
//! correctness never depends on the socket side. While it lives, each window is registered by
//! address with the file and offset it maps; the server's connection writer asks
//! [`file_behind`] about every slice it is given and sends registered ones with `sendfile` from
//! the same file and offset: the same bytes, no copy, the mapping's pages never touched.
//!
//! Mapping is sound because a stored file is never written in place: files are renamed or
//! hard-linked into place whole, and removed by unlinking (a mapping keeps the old inode). A
//! window is handed out only when all its pages are in the page cache, so `sendfile` on a runtime
//! worker does not wait for the disk; other windows are read in pieces on blocking threads as
//! before. This is the one module of the workspace with `unsafe` code.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

/// Bytes of a file in one mapped window: large enough that mapping, the residency check and the
/// registry cost nothing next to sending it (~1,500 windows per second at 6 GB/s), small enough
/// that a window read by a consumer that touches its pages (HTTP/2, conversion) adds little to
/// the resident set.
pub(crate) const WINDOW: u64 = 4 << 20;

/// Spans shorter than this are read, never mapped: most NARs are small, and for a few pieces
/// the copy costs less than mapping, checking and unmapping.
pub(crate) const MAP_FROM: u64 = 1 << 20;

/// A live window: where its bytes come from.
struct Registered {
    /// One past the window's last byte in memory.
    end: usize,
    file: Arc<File>,
    /// The file offset of the window's first byte.
    offset: u64,
}

/// Live windows by the address of their first byte. Written twice per window (map, unmap),
/// read once per slice a connection writes while any window is live.
static WINDOWS: RwLock<BTreeMap<usize, Registered>> = RwLock::new(BTreeMap::new());

/// How many windows are live: writers skip the registry while there are none.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The stored file behind some bytes of a window, and the offset of their first byte in it.
#[derive(Debug)]
pub struct FileSpan {
    /// The open file (kept open for as long as any window of it lives).
    pub file: Arc<File>,
    /// The file offset of the first byte.
    pub offset: u64,
}

/// The file and offset behind `bytes` when they lie inside one live window, so a writer can
/// send them with `sendfile` instead of copying them; `None` for any other bytes.
///
/// A live window's addresses belong to its mapping alone, so bytes inside one are that file's
/// bytes; the caller's borrow of `bytes` keeps the window (and its registration) alive.
pub fn file_behind(bytes: &[u8]) -> Option<FileSpan> {
    if bytes.is_empty() || LIVE.load(Ordering::Acquire) == 0 {
        return None;
    }
    let start = bytes.as_ptr() as usize;
    let windows = WINDOWS.read().unwrap_or_else(PoisonError::into_inner);
    let (&base, window) = windows.range(..=start).next_back()?;
    (start + bytes.len() <= window.end).then(|| FileSpan {
        file: Arc::clone(&window.file),
        offset: window.offset + (start - base) as u64,
    })
}

/// The owner of a window's mapping: unregisters it before it is unmapped.
struct Window {
    map: Mmap,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        let key = self.map.as_ptr() as usize;
        WINDOWS
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        LIVE.fetch_sub(1, Ordering::Release);
    }
}

/// `len` bytes of `file` from `offset` as one registered window, or `None` when the window is
/// better read: some of its pages are not in the page cache (sending them would wait for the
/// disk on the caller's thread), or the file cannot be mapped (a file system without mmap, no
/// address space left). The caller checked that the file is at least `offset + len` long.
pub(crate) fn resident_window(file: &Arc<File>, offset: u64, len: usize) -> Option<Bytes> {
    // SAFETY: memmap2 maps read-only and shared; the mapping is sound as long as nobody changes
    // the file while it is mapped, and stored files are never written in place (see the module
    // documentation): only renamed or linked into place whole, and unlinked.
    let map = unsafe { MmapOptions::new().offset(offset).len(len).map(&**file) }.ok()?;
    if !all_pages_resident(&map, offset)? {
        return None;
    }
    let start = map.as_ptr() as usize;
    WINDOWS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(
            start,
            Registered {
                end: start + map.len(),
                file: Arc::clone(file),
                offset,
            },
        );
    LIVE.fetch_add(1, Ordering::Release);
    Some(Bytes::from_owner(Window { map }))
}

/// The next window of a file that is still being appended to (a download in progress): up to
/// [`WINDOW`] of the `available` bytes from `offset`, mapped and registered as
/// [`resident_window`] does; `None` when fewer than [`MAP_FROM`] bytes are available (a reader
/// close behind the writer reads small pieces) or the window is better read. The bytes below
/// `offset + available` must be written and never written again: appends beyond them are fine.
pub fn growing_file_window(file: &Arc<File>, offset: u64, available: u64) -> Option<Bytes> {
    if available < MAP_FROM {
        return None;
    }
    resident_window(file, offset, available.min(WINDOW) as usize)
}

/// Whether every page of `map` (mapped from file offset `offset`) is in the page cache; `None`
/// when the kernel cannot say.
fn all_pages_resident(map: &Mmap, offset: u64) -> Option<bool> {
    let page = rustix::param::page_size();
    // memmap2 maps from the page boundary at or below `offset`; mincore wants that boundary.
    let lead = (offset % page as u64) as usize;
    let len = map.len() + lead;
    let mut pages = vec![0u8; len.div_ceil(page)];
    // SAFETY: `map.as_ptr() - lead` is the page-aligned start of the live mapping and `len`
    // bytes from it lie inside the mapping; mincore writes one byte per page of that extent,
    // which is `pages.len()` bytes, and reads no memory.
    let status = unsafe {
        libc::mincore(
            map.as_ptr().wrapping_sub(lead) as *mut libc::c_void,
            len,
            pages.as_mut_ptr(),
        )
    };
    (status == 0).then(|| pages.iter().all(|p| p & 1 == 1))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_of(bytes: &[u8]) -> Arc<File> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
        Arc::new(file)
    }

    #[test]
    fn a_window_is_the_files_bytes_and_names_where_they_come_from() {
        let data: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
        let file = file_of(&data);
        // Written just now, so in the page cache; an offset off a page boundary, as ranges are.
        let window = resident_window(&file, 5000, 6000).expect("resident and mappable");
        assert_eq!(&window[..], &data[5000..11000]);

        let span = file_behind(&window[100..200]).expect("inside a live window");
        assert_eq!(span.offset, 5100);
        assert!(Arc::ptr_eq(&span.file, &file));
        drop(span);
        assert!(
            file_behind(&data[..]).is_none(),
            "heap bytes are nobody's window"
        );

        // Slices keep the window alive after the first handle goes.
        let (head, tail) = (window.slice(..10), window.slice(5990..));
        drop(window);
        assert_eq!(file_behind(&tail).map(|s| s.offset), Some(10990));
        drop((head, tail));
        assert_eq!(
            Arc::strong_count(&file),
            1,
            "a window outlives its last bytes (still registered, still holding the file)"
        );
    }
}
