//! Content hashes: the dedup key of chunks and tensors.
//!
//! A content hash is BLAKE3-256 of the raw bytes; a chunk's id (its dedup key) is the same hash
//! keyed by its dedup scope. A dedup hit returns the bytes of an earlier chunk with the same id;
//! that is safe because finding two inputs with one BLAKE3-256 hash takes about 2^128 work, and
//! every frame also carries the content hash of its decoded bytes, which the decoder checks, so
//! a wrong frame is detected rather than served.

use std::fmt;

/// BLAKE3-256 of some raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> ContentHash {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// The id of a chunk within a dedup scope (a tenant, or a group sharing storage): BLAKE3
    /// keyed by the scope, so equal bytes in two scopes get unrelated ids and one scope can
    /// never find, or learn of, another's chunks.
    pub fn scoped(scope: &str, bytes: &[u8]) -> ContentHash {
        let key = blake3::derive_key("tensorgate 2026-11 chunk dedup scope", scope.as_bytes());
        ContentHash(*blake3::keyed_hash(&key, bytes).as_bytes())
    }

    /// Lower-case hex, as used in logs and upstream keys.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Hashes bytes that arrive in pieces: a whole tensor, chunk after chunk.
#[derive(Default)]
pub struct StreamingHash(blake3::Hasher);

impl StreamingHash {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> ContentHash {
        ContentHash(*self.0.finalize().as_bytes())
    }
}
