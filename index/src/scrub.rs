//! The chunks in id order, and the cursor a scrub resumes from.

use crate::{decode, keys, ChunkHash, ChunkRecord, Index, IndexError, Result};

/// The `meta` key of the scrub cursor.
const SCRUB_CURSOR: &str = "scrub-cursor";

impl Index {
    /// Stored chunks after `after` in id order (all of them without it): a scrub resumes here.
    pub fn chunks_after(&self, after: Option<ChunkHash>) -> impl Iterator<Item = Result<(ChunkHash, ChunkRecord)>> + '_ {
        let start = match after {
            Some(hash) => std::ops::Bound::Excluded(hash.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        self.chunks.range::<Vec<u8>, _>((start, std::ops::Bound::Unbounded)).map(|entry| {
            let (hash, value) = entry?;
            Ok((keys::chunk_hash(&hash)?, decode(&value)?))
        })
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The last chunk an interrupted scrub verified; [`IndexError::MalformedValue`] for a value
    /// that is no chunk id.
    pub fn scrub_cursor(&self) -> Result<Option<ChunkHash>> {
        let Some(value) = self.meta.get(SCRUB_CURSOR)? else { return Ok(None) };
        value.as_ref().try_into().map(Some).map_err(|_| IndexError::MalformedValue(SCRUB_CURSOR))
    }

    /// Records scrub progress; `None` when a scrub has finished.
    pub fn set_scrub_cursor(&self, cursor: Option<ChunkHash>) -> Result<()> {
        match cursor {
            Some(hash) => self.meta.insert(SCRUB_CURSOR, &hash[..])?,
            None => self.meta.remove(SCRUB_CURSOR)?,
        };
        self.flush()
    }

    /// Every stored chunk with its record, for scrubbing.
    pub fn all_chunks(&self) -> impl Iterator<Item = Result<(ChunkHash, ChunkRecord)>> + '_ {
        self.chunks.iter().map(|entry| {
            let (hash, value) = entry?;
            Ok((keys::chunk_hash(&hash)?, decode(&value)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::encoding::encode;
    use crate::test_records::{chunk, fresh_index};

    #[test]
    fn a_scrub_resumes_after_its_cursor_and_a_malformed_cursor_or_chunk_key_is_an_error() {
        let (_dir, index) = fresh_index();
        for id in 1..=3u8 {
            index.chunks.insert([id; 32], encode(&chunk("packs/1", 1)).unwrap()).unwrap();
        }
        index.set_scrub_cursor(Some([1; 32])).unwrap();
        let cursor = index.scrub_cursor().unwrap();
        let rest: Vec<u8> = index.chunks_after(cursor).map(|entry| entry.unwrap().0[0]).collect();
        assert_eq!(rest, vec![2, 3]);
        index.set_scrub_cursor(None).unwrap();
        assert_eq!(index.scrub_cursor().unwrap(), None);
        index.meta.insert(super::SCRUB_CURSOR, &[1; 31][..]).unwrap();
        assert!(matches!(index.scrub_cursor(), Err(crate::IndexError::MalformedValue(super::SCRUB_CURSOR))));
        index.chunks.insert(b"short", encode(&chunk("packs/1", 1)).unwrap()).unwrap();
        assert!(index.all_chunks().any(|entry| matches!(entry, Err(crate::IndexError::MalformedKey(_)))));
    }
}
