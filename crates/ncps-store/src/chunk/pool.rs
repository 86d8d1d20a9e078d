//! Ordered parallel chunk encoding: compression is the slow stage of ingest, so with more than
//! one thread it runs on workers while the caller's thread keeps cutting and hashing.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use bytes::Bytes;

use crate::chunk::ChunkError;
use crate::chunk::ChunkHash;
use crate::chunk::frame::ChunkEncoder;

/// What a worker hands back for one chunk.
pub(crate) type Encoded = Result<(ChunkHash, u32, Bytes), ChunkError>;

struct Worker {
    input: SyncSender<Vec<u8>>,
    output: Receiver<Encoded>,
}

/// Worker threads fed round-robin: chunk `n` goes to worker `n % threads` and each worker is
/// FIFO, so results come back in input order without any reordering buffer. At most
/// [`IN_FLIGHT_PER_WORKER`] chunks per worker are outstanding, which bounds memory.
pub(crate) struct EncoderPool {
    workers: Vec<Worker>,
    submitted: u64,
    received: u64,
}

/// Enough to keep a worker busy while the caller waits on another one.
const IN_FLIGHT_PER_WORKER: u64 = 2;

impl EncoderPool {
    /// Starts `threads` workers compressing at `level`. They exit when the pool is dropped.
    pub(crate) fn new(threads: usize, level: i32, max_len: usize) -> Result<Self, ChunkError> {
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let mut encoder = ChunkEncoder::new(level, max_len)?;
            let (in_tx, in_rx) = sync_channel::<Vec<u8>>(1);
            let (out_tx, out_rx) = sync_channel::<Encoded>(1);
            thread::Builder::new()
                .name(format!("ncps-chunk-{i}"))
                .spawn(move || {
                    for plain in in_rx {
                        let len = plain.len() as u32;
                        let result = encoder.encode(&plain).map(|(h, f)| (h, len, f));
                        if out_tx.send(result).is_err() {
                            break;
                        }
                    }
                })
                .map_err(ChunkError::Compress)?;
            workers.push(Worker {
                input: in_tx,
                output: out_rx,
            });
        }
        Ok(Self {
            workers,
            submitted: 0,
            received: 0,
        })
    }

    /// Whether another chunk may be submitted without exceeding the in-flight bound.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight() < IN_FLIGHT_PER_WORKER * self.workers.len() as u64
    }

    /// Chunks submitted but not yet received.
    pub(crate) fn in_flight(&self) -> u64 {
        self.submitted - self.received
    }

    /// Hands the next chunk (in input order) to its worker.
    pub(crate) fn submit(&mut self, plain: Vec<u8>) -> Result<(), ChunkError> {
        let worker = &self.workers[(self.submitted % self.workers.len() as u64) as usize];
        worker.input.send(plain).map_err(|_| worker_died())?;
        self.submitted += 1;
        Ok(())
    }

    /// The oldest outstanding chunk's result, waiting for it if needed.
    pub(crate) fn receive(&mut self) -> Encoded {
        let worker = &self.workers[(self.received % self.workers.len() as u64) as usize];
        let result = worker.output.recv().map_err(|_| worker_died())?;
        self.received += 1;
        result
    }
}

fn worker_died() -> ChunkError {
    ChunkError::Compress(std::io::Error::other("chunk compression thread died"))
}
