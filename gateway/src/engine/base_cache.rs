//! The decoded base chunks that delta frames are read against, kept between reads.

use bytes::Bytes;
use tensorgate_index::ChunkHash;

/// Decoded base chunks, least recently used first out, bounded in bytes.
pub struct BaseCache {
    entries: lru::LruCache<ChunkHash, Bytes>,
    bytes: u64,
    limit: u64,
}

impl BaseCache {
    pub fn new(limit: u64) -> BaseCache {
        BaseCache { entries: lru::LruCache::unbounded(), bytes: 0, limit }
    }

    pub fn get(&mut self, hash: &ChunkHash) -> Option<Bytes> {
        self.entries.get(hash).cloned()
    }

    pub fn insert(&mut self, hash: ChunkHash, bytes: Bytes) {
        if bytes.len() as u64 > self.limit {
            return;
        }
        self.bytes += bytes.len() as u64;
        if let Some(old) = self.entries.put(hash, bytes) {
            self.bytes -= old.len() as u64;
        }
        while self.bytes > self.limit {
            match self.entries.pop_lru() {
                Some((_, evicted)) => self.bytes -= evicted.len() as u64,
                None => break,
            }
        }
    }
}
