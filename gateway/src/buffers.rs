//! Chunk-sized buffers handed round: a decoded chunk's buffer from the answer done with it to
//! the next decode, and a frame's from the decode done with it to the local upstream's next
//! read. The allocator gives freed pages back to the kernel after 1 ms (to keep the gateway's
//! memory at what it uses, see `allocator.rs`), so a fresh 4 MiB buffer per decode or read was
//! fresh pages, each faulted in and zeroed: half of the gateway's CPU under a loader's ranged
//! GETs for the decodes, up to a fifth for the reads. A few idle buffers are kept; more are
//! freed as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Buffers of fewer bytes are not worth keeping (their pages are few); larger ones are not
/// the chunks this is for (at most 4 MiB, and what [`Buffers::take`] allows over that).
const KEPT_CAPACITY: std::ops::RangeInclusive<usize> = (256 << 10)..=(5 << 20);

pub struct Buffers {
    /// Oldest first: a buffer given back to a full list takes the place of the oldest, so
    /// that sizes no decode asks for any more leave in turn.
    idle: Mutex<VecDeque<Vec<u8>>>,
    /// How many idle buffers are kept at most.
    keep: usize,
}

impl Buffers {
    pub fn new(keep: usize) -> Arc<Buffers> {
        Arc::new(Buffers { idle: Mutex::new(VecDeque::with_capacity(keep)), keep })
    }

    /// Buffers keeping one idle per core: a core takes one at a time (a decode, a frame read),
    /// and an idle buffer is memory held for nobody (two per core ran no faster).
    pub fn one_idle_per_core() -> Arc<Buffers> {
        Buffers::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// A buffer for `len` bytes: an idle one (its bytes left from earlier use) that holds them
    /// and at most a quarter more (what it holds beyond its length is memory the chunk cache,
    /// which counts lengths, does not see), or a new empty one with room for them.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let fits = |buffer: &Vec<u8>| (len..=len + len / 4).contains(&buffer.capacity());
        let mut idle = self.lock();
        match idle.iter().rposition(fits).and_then(|at| idle.remove(at)) {
            Some(buffer) => buffer,
            None => Vec::with_capacity(len),
        }
    }

    /// `buffer` as bytes that give it back here once the last of them is dropped.
    pub fn hold(self: &Arc<Self>, buffer: Vec<u8>) -> Bytes {
        Bytes::from_owner(Returning { buffer, home: self.clone() })
    }

    fn give_back(&self, buffer: Vec<u8>) {
        if !KEPT_CAPACITY.contains(&buffer.capacity()) {
            return;
        }
        let mut idle = self.lock();
        idle.push_back(buffer);
        if idle.len() > self.keep {
            idle.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
        // The list stays whole whatever a panicking holder did: push and pop only.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A buffer lent out as [`Bytes`].
struct Returning {
    buffer: Vec<u8>,
    home: Arc<Buffers>,
}

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_bytes_are_dropped() {
        let buffers = Buffers::new(1);
        // A buffer taken from the pool keeps its bytes; a new one is empty.
        let bytes = buffers.hold(vec![7u8; 1 << 20]);
        let slice = bytes.slice(10..20);
        drop(bytes);
        assert!(buffers.take(1 << 20).is_empty(), "a slice still holds it");
        drop(slice);
        assert!(buffers.take(1 << 19).is_empty(), "twice the bytes asked for is not taken");
        assert_eq!(buffers.take((1 << 20) - 1000), vec![7u8; 1 << 20]);
    }

    #[test]
    fn at_most_keep_buffers_of_chunk_sizes_are_kept() {
        let buffers = Buffers::new(1);
        drop(buffers.hold(vec![0u8; 16]));
        assert!(buffers.take(16).is_empty(), "a small buffer is not kept");
        drop(buffers.hold(vec![0u8; 1 << 20]));
        drop(buffers.hold(vec![0u8; 2 << 20]));
        assert!(buffers.take(1 << 20).is_empty(), "only the newest was kept");
        assert_eq!(buffers.take(2 << 20).len(), 2 << 20);
    }
}
