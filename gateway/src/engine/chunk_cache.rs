//! Decoded chunks kept between reads, each decoded once for all the reads that want it at the
//! same time: the bases of delta frames, and the chunks GETs took part of (the ranges a model
//! loader sends side by side share the chunk at their boundary, which each would decode
//! otherwise).
//! Chunks are named by their content, so a kept chunk is never stale. A base may be kept
//! unchecked (see [`Checked`]), apart from the checked chunks reads serve.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tensorgate_index::ChunkHash;
use tokio::sync::watch;

/// How a chunk was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Kept from an earlier read.
    Hit,
    /// Being decoded for another read, which this one waited for.
    Shared,
    /// Decoded for this read.
    Miss,
}

impl Lookup {
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Shared => "shared",
            Lookup::Miss => "miss",
        }
    }
}

/// What a chunk's decoded bytes are known to be. Reads serve only checked bytes; unchecked
/// ones are kept under keys of their own, so no read of the chunk itself finds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Checked {
    /// Checked against the chunk's hash.
    Yes,
    /// Decoded without that check, as the base of deltas that each check their own result
    /// (`reader::load_base_at`), so nothing unchecked is served. A delta that reads the wrong
    /// bytes of a wrong base fails its check and forgets the base; one that reads only part of
    /// its base (a window, a prefix, a lossy conversion) may pass, and the base stays kept
    /// until such a failure or its eviction.
    AsBase,
}

/// A chunk in the cache: its hash and what its bytes are known to be.
type Key = (ChunkHash, Checked);

pub struct ChunkCache {
    recent: Mutex<Recent>,
    /// Chunks being decoded, each with where its decode will send it.
    decoding: Mutex<HashMap<Key, watch::Receiver<Option<Bytes>>>>,
}

/// Decoded chunks, least recently used first out, bounded in bytes.
struct Recent {
    entries: lru::LruCache<Key, Bytes>,
    bytes: u64,
    limit: u64,
}

/// A poisoned lock only means a reader panicked while holding it; what it guards is a cache,
/// whose entries are whole chunks or absent, so it is used as it is.
fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A decode under way, announced in `decoding` until it ends, however it ends (a dropped
/// decode drops its sender, so its waiters stop waiting).
struct Announced<'a> {
    cache: &'a ChunkCache,
    key: Key,
    sender: watch::Sender<Option<Bytes>>,
    /// The receiver `decoding` lists, to know it from a later decode's.
    listed: watch::Receiver<Option<Bytes>>,
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        let mut decoding = locked(&self.cache.decoding);
        if decoding.get(&self.key).is_some_and(|receiver| receiver.same_channel(&self.listed)) {
            decoding.remove(&self.key);
        }
    }
}

impl ChunkCache {
    /// A cache keeping at most `limit` bytes of decoded chunks.
    pub fn new(limit: u64) -> ChunkCache {
        let recent = Recent { entries: lru::LruCache::unbounded(), bytes: 0, limit };
        ChunkCache { recent: Mutex::new(recent), decoding: Mutex::new(HashMap::new()) }
    }

    /// The chunk `hash` if it is kept checked.
    pub fn kept(&self, hash: &ChunkHash) -> Option<Bytes> {
        locked(&self.recent).get(&(*hash, Checked::Yes))
    }

    /// The chunk `hash`, checked, once another read's decode of it ends, if one is under way
    /// and succeeds. The wait holds nothing that decode could need.
    pub async fn decoded_elsewhere(&self, hash: &ChunkHash) -> Option<Bytes> {
        let mut receiver = locked(&self.decoding).get(&(*hash, Checked::Yes)).cloned()?;
        let decoded = receiver.wait_for(Option::is_some).await.ok()?.clone();
        decoded
    }

    /// The chunk `hash`, checked: kept, decoded by another read under way (then waited for),
    /// or decoded by `decode` (and kept if `keep`). If the decode it waits for fails, the read
    /// decodes it itself.
    pub async fn get_or_decode<Decode, Decoded>(&self, hash: &ChunkHash, keep: bool, decode: Decode) -> anyhow::Result<(Bytes, Lookup)>
    where
        Decode: FnOnce() -> Decoded,
        Decoded: Future<Output = anyhow::Result<Bytes>>,
    {
        self.get_or_decode_as((*hash, Checked::Yes), keep, decode).await
    }

    /// [`Self::get_or_decode`] for `key`: `decode` gives bytes known to be what the key says.
    pub async fn get_or_decode_as<Decode, Decoded>(&self, key: Key, keep: bool, decode: Decode) -> anyhow::Result<(Bytes, Lookup)>
    where
        Decode: FnOnce() -> Decoded,
        Decoded: Future<Output = anyhow::Result<Bytes>>,
    {
        if let Some(bytes) = locked(&self.recent).get(&key) {
            return Ok((bytes, Lookup::Hit));
        }
        let announced = {
            let mut decoding = locked(&self.decoding);
            match decoding.get(&key) {
                Some(receiver) => Err(receiver.clone()),
                None => {
                    let (sender, listed) = watch::channel(None);
                    decoding.insert(key, listed.clone());
                    Ok(Announced { cache: self, key, sender, listed })
                }
            }
        };
        // The announcement is withdrawn (dropped) only once the chunk is kept, so that a read
        // coming between finds it one way or the other.
        let mut announcement = None;
        let (bytes, lookup) = match announced {
            Ok(announced) => {
                let bytes = decode().await?;
                announcement = Some(announced);
                (bytes, Lookup::Miss)
            }
            Err(mut receiver) => match receiver.wait_for(Option::is_some).await.ok().and_then(|decoded| decoded.clone()) {
                Some(bytes) => (bytes, Lookup::Shared),
                None => (decode().await?, Lookup::Miss),
            },
        };
        // A decode shared may have been one not to keep (a whole chunk read), and this one to keep.
        if keep {
            locked(&self.recent).insert(key, bytes.clone());
        }
        if let Some(announced) = announcement {
            announced.sender.send_replace(Some(bytes.clone()));
        }
        Ok((bytes, lookup))
    }

    /// Drops the unchecked bytes kept of `hash`: a delta taken against them did not decode to
    /// its own bytes, so they may be wrong (a frame read wrong from the upstream once).
    pub fn forget_unchecked(&self, hash: &ChunkHash) {
        let mut recent = locked(&self.recent);
        if let Some(bytes) = recent.entries.pop(&(*hash, Checked::AsBase)) {
            recent.bytes -= bytes.len() as u64;
        }
    }
}

impl Recent {
    fn get(&mut self, key: &Key) -> Option<Bytes> {
        self.entries.get(key).cloned()
    }

    fn insert(&mut self, key: Key, bytes: Bytes) {
        if bytes.len() as u64 > self.limit {
            return;
        }
        self.bytes += bytes.len() as u64;
        if let Some(old) = self.entries.put(key, bytes) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn readers_at_once_share_one_decode_and_later_ones_find_it_kept() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let decodes = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (cache, decodes, gate) = (cache.clone(), decodes.clone(), gate.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_decode(&[7; 32], true, || async move {
                            decodes.fetch_add(1, Ordering::SeqCst);
                            gate.notified().await;
                            Ok(Bytes::from_static(b"decoded"))
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let waiting = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.decoded_elsewhere(&[7; 32]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gate.notify_one();
        let mut lookups = Vec::new();
        for reader in readers {
            let (bytes, lookup) = reader.await.unwrap();
            assert_eq!(&bytes[..], b"decoded");
            lookups.push(lookup);
        }
        assert_eq!(waiting.await.unwrap().as_deref(), Some(&b"decoded"[..]));
        assert_eq!(decodes.load(Ordering::SeqCst), 1);
        assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
        assert_eq!(lookups.iter().filter(|l| **l == Lookup::Shared).count(), 7);
        let (_, lookup) = cache.get_or_decode(&[7; 32], true, || async { anyhow::bail!("not decoded again") }).await.unwrap();
        assert_eq!(lookup, Lookup::Hit);
        assert!(locked(&cache.decoding).is_empty());
        assert_eq!(cache.decoded_elsewhere(&[8; 32]).await, None);
    }

    #[tokio::test]
    async fn a_failed_or_dropped_decode_is_not_kept_and_its_waiters_decode_themselves() {
        let cache = Arc::new(ChunkCache::new(1 << 20));
        let failed = cache.get_or_decode(&[1; 32], true, || async { anyhow::bail!("upstream down") }).await;
        assert!(failed.is_err());
        assert!(locked(&cache.decoding).is_empty());
        let (bytes, lookup) = cache.get_or_decode(&[1; 32], true, || async { Ok(Bytes::from_static(b"x")) }).await.unwrap();
        assert_eq!((&bytes[..], lookup), (&b"x"[..], Lookup::Miss));

        let stuck = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_or_decode(&[2; 32], true, std::future::pending).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get_or_decode(&[2; 32], true, || async { Ok(Bytes::from_static(b"y")) }).await.unwrap() })
        };
        let elsewhere = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.decoded_elsewhere(&[2; 32]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        stuck.abort();
        assert_eq!(waiter.await.unwrap(), (Bytes::from_static(b"y"), Lookup::Miss));
        assert_eq!(elsewhere.await.unwrap(), None);
        assert!(locked(&cache.decoding).is_empty());
    }

    #[tokio::test]
    async fn unchecked_bases_are_kept_apart_until_forgotten() {
        let cache = ChunkCache::new(100);
        let key = ([3; 32], Checked::AsBase);
        cache.get_or_decode_as(key, true, || async { Ok(Bytes::from_static(b"base")) }).await.unwrap();
        assert!(cache.kept(&[3; 32]).is_none(), "a read of the chunk itself finds no unchecked bytes");
        let (_, lookup) = cache.get_or_decode_as(key, true, || async { anyhow::bail!("not decoded again") }).await.unwrap();
        assert_eq!(lookup, Lookup::Hit);
        let (bytes, lookup) = cache.get_or_decode(&[3; 32], true, || async { Ok(Bytes::from_static(b"checked")) }).await.unwrap();
        assert_eq!((&bytes[..], lookup), (&b"checked"[..], Lookup::Miss));
        cache.forget_unchecked(&[3; 32]);
        let (bytes, _) = cache.get_or_decode_as(key, true, || async { Ok(Bytes::from_static(b"again")) }).await.unwrap();
        assert_eq!(&bytes[..], b"again");
        assert_eq!(cache.kept(&[3; 32]).as_deref(), Some(&b"checked"[..]), "forgetting the unchecked bytes leaves the checked ones");
        assert_eq!(locked(&cache.recent).bytes, 12, "the forgotten bytes are not counted");
    }

    #[tokio::test]
    async fn the_least_recently_used_chunks_to_keep_leave_first_within_the_limit() {
        let cache = ChunkCache::new(10);
        for byte in 0..3u8 {
            cache.get_or_decode(&[byte; 32], true, || async { Ok(Bytes::from(vec![0; 4])) }).await.unwrap();
        }
        let kept: Vec<bool> = (0..3u8).map(|byte| cache.kept(&[byte; 32]).is_some()).collect();
        assert_eq!(kept, [false, true, true]);
        cache.get_or_decode(&[9; 32], false, || async { Ok(Bytes::from(vec![0; 4])) }).await.unwrap();
        assert!(cache.kept(&[9; 32]).is_none() && cache.kept(&[2; 32]).is_some(), "a chunk not to keep evicts nothing");
        assert!(locked(&cache.recent).bytes <= 10);
    }
}
