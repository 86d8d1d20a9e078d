//! Chunk-ingest throughput and dedup on real NARs: `cargo bench -p ncps-store --bench chunk_ingest`.
//!
//! Measures MB/s of plain NAR through [`Chunker`] (FastCDC + BLAKE3 + zstd per
//! chunk + the two SHA-256s)
//! and of decompress + verify (the serving side) at zstd levels 1, 2, 3 and 8 on one thread (and
//! with two compression threads), the cost of each stage alone, the size
//! of the chunked file against one whole-NAR zstd stream, and the dedup between related NARs.
//!
//! Input: `nix-store --dump` of a large directory of real files (capped at `NCPS_BENCH_MB`,
//! default 256 MiB), falling back to synthetic data when nix is missing. Runs in well under a
//! minute on one core.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ncps_store::chunk::{Chunk, ChunkDecoder, ChunkHash, ChunkParams, Chunker};
use sha2::{Digest, Sha256};

const MIB: f64 = 1024.0 * 1024.0;

/// The first `cap` bytes of `nix-store --dump dir`, or `None` when nix or the directory is
/// missing.
fn dump(dir: &Path, cap: usize) -> Option<Vec<u8>> {
    if !dir.is_dir() {
        return None;
    }
    let mut child = Command::new("nix-store")
        .arg("--dump")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = Vec::new();
    child
        .stdout
        .take()?
        .take(cap as u64)
        .read_to_end(&mut out)
        .ok()?;
    child.kill().ok();
    child.wait().ok();
    (!out.is_empty()).then_some(out)
}

/// Deterministic, moderately compressible stand-in for a NAR when nix is not installed.
fn synthetic(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (x % 48) as usize;
        if x % 3 == 0 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend(std::iter::repeat_n(
                b"nix store path /lib64 "[run % 22],
                run,
            ));
        }
    }
    out.truncate(len);
    out
}

fn mbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / MIB / t.as_secs_f64()
}

/// Chunks `data` at `level` on `threads` compression threads; returns the elapsed time and the
/// chunks.
fn ingest(data: &[u8], level: i32, threads: usize) -> (Duration, Vec<Chunk>) {
    let start = Instant::now();
    let mut chunker = Chunker::with_threads(data, ChunkParams::default(), level, threads).unwrap();
    let mut chunks = Vec::new();
    while let Some(c) = chunker.next_chunk().unwrap() {
        chunks.push(c);
    }
    let summary = chunker.finish().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(summary.nar_size, data.len() as u64);
    (elapsed, chunks)
}

/// Serving side: decompress and verify every frame, as a chunked NAR is sent uncompressed.
fn decode(chunks: &[Chunk], plain_len: usize) -> f64 {
    let mut decoder = ChunkDecoder::new().unwrap();
    let t = Instant::now();
    for c in chunks {
        std::hint::black_box(decoder.decode(&c.hash, &c.frame).unwrap());
    }
    mbps(plain_len, t.elapsed())
}

fn stages(data: &[u8]) {
    let p = ChunkParams::default();
    let t = Instant::now();
    let cdc = fastcdc::v2020::StreamCDC::new(data, p.min as usize, p.avg as usize, p.max as usize);
    let (n, total) = cdc.fold((0, 0), |(n, t), c| (n + 1, t + c.unwrap().length));
    assert_eq!(total, data.len());
    println!(
        "  stage FastCDC alone      {:>7.0} MB/s ({n} chunks)",
        mbps(data.len(), t.elapsed())
    );
    let t = Instant::now();
    for piece in data.chunks(64 * 1024) {
        std::hint::black_box(blake3::hash(piece));
    }
    println!(
        "  stage BLAKE3 64K pieces  {:>7.0} MB/s",
        mbps(data.len(), t.elapsed())
    );
    let t = Instant::now();
    std::hint::black_box(Sha256::digest(data));
    println!(
        "  stage SHA-256            {:>7.0} MB/s",
        mbps(data.len(), t.elapsed())
    );
    for level in [1, 3] {
        let mut c = zstd::bulk::Compressor::new(level).unwrap();
        let t = Instant::now();
        for piece in data.chunks(64 * 1024) {
            std::hint::black_box(c.compress(piece).unwrap());
        }
        println!(
            "  stage zstd -{level} 64K pieces {:>7.0} MB/s",
            mbps(data.len(), t.elapsed())
        );
    }
}

/// Plain bytes of `b` whose chunks are already in `a`, and compressed bytes `b` adds.
fn dedup(name: &str, a: &[u8], b: &[u8]) {
    let (_, ca) = ingest(a, 3, 2);
    let (_, cb) = ingest(b, 3, 2);
    let known: HashSet<ChunkHash> = ca.iter().map(|c| c.hash).collect();
    let mut seen = HashSet::new();
    let (mut shared, mut new_frames, mut all_frames) = (0u64, 0u64, 0u64);
    for c in &cb {
        all_frames += c.frame.len() as u64;
        if known.contains(&c.hash) {
            shared += u64::from(c.plain_len);
        } else if seen.insert(c.hash) {
            new_frames += c.frame.len() as u64;
        }
    }
    println!(
        "  {name}: A {:.1} MiB, B {:.1} MiB; {:.1}% of B's bytes already stored with A; \
         storing B adds {:.1} MiB of frames instead of {:.1} MiB",
        a.len() as f64 / MIB,
        b.len() as f64 / MIB,
        100.0 * shared as f64 / b.len() as f64,
        new_frames as f64 / MIB,
        all_frames as f64 / MIB,
    );
}

/// `data` with `edits` small insertions spread through it, as a rebuilt package might differ.
fn edited(data: &[u8], edits: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + edits * 100);
    let step = data.len() / (edits + 1);
    for (i, piece) in data.chunks(step.max(1)).enumerate() {
        out.extend_from_slice(piece);
        if i < edits {
            out.extend_from_slice(format!("edit {i:>94}\n").as_bytes());
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, so keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let cap_mb: usize = std::env::var("NCPS_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 8 } else { 256 });
    let cap = cap_mb * 1024 * 1024;

    let candidates = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib",
        "/usr/share",
        "/usr",
    ];
    let (source, data) = candidates
        .iter()
        .find_map(|d| dump(Path::new(d), cap).map(|n| (format!("nix-store --dump {d}"), n)))
        .unwrap_or_else(|| ("synthetic data (no nix-store)".into(), synthetic(cap, 1)));
    println!(
        "input: {source}, first {:.1} MiB; chunk sizes 16K/64K/256K; one thread",
        data.len() as f64 / MIB
    );

    let whole = Instant::now();
    let one_stream = zstd::bulk::compress(&data, 3).unwrap().len();
    let whole = whole.elapsed();
    for level in [1, 2, 3, 8] {
        let (t, chunks) = ingest(&data, level, 1);
        let frames: usize = chunks.iter().map(|c| c.frame.len()).sum();
        println!(
            "  zstd -{level}: {:>6.0} MB/s ingest, {} chunks, frames {:.1}% of plain, \
             decode+verify {:.0} MB/s",
            mbps(data.len(), t),
            chunks.len(),
            100.0 * frames as f64 / data.len() as f64,
            decode(&chunks, data.len()),
        );
    }
    println!(
        "  reference: whole NAR as one zstd -3 stream {:.1}% of plain at {:.0} MB/s",
        100.0 * one_stream as f64 / data.len() as f64,
        mbps(data.len(), whole)
    );
    for level in [1, 3] {
        let (t, _) = ingest(&data, level, 2);
        println!(
            "  zstd -{level} with 2 compression threads: {:>6.0} MB/s wall clock",
            mbps(data.len(), t)
        );
    }
    stages(&data);

    println!("dedup (zstd -3, 2 threads):");
    dedup(
        "same NAR with 10 insertions of 100 bytes",
        &data,
        &edited(&data, 10),
    );
    let home = std::env::var("HOME").unwrap_or_default();
    let rustlib = |t: &str| {
        Path::new(&home).join(format!(
            ".rustup/toolchains/{t}-x86_64-unknown-linux-gnu/lib/rustlib/x86_64-unknown-linux-gnu/lib"
        ))
    };
    match (
        dump(&rustlib("stable"), cap),
        dump(&rustlib("nightly"), cap),
    ) {
        (Some(a), Some(b)) if !quick || cap_mb >= 64 => dedup(
            "rust-std stable vs nightly (two versions of a package)",
            &a,
            &b,
        ),
        _ => println!("  (rust-std stable vs nightly skipped: toolchains missing or quick run)"),
    }
}
