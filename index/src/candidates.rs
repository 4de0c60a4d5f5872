//! Base candidates: the stored tensors a new tensor of the same dtype and shape may be a delta
//! against, found by name or by fingerprint.

use crate::encoding::encode;
use crate::{decode, keys, BaseCandidate, ChunkHash, Index, Result};

impl Index {
    /// Remembers the chunks of the newest tensor stored under this name, dtype and shape.
    pub fn remember_tensor(&self, tenant: &str, name: &str, signature: &str, chunks: &[ChunkHash]) -> Result<()> {
        self.tensors.insert(keys::tensor(tenant, name, signature), encode(&chunks.to_vec())?)?;
        Ok(())
    }

    /// Registers a stored tensor as a base candidate for tensors of its dtype and shape
    /// (`signature`) within `scope` (a tenant, or a group sharing dedup). Idempotent.
    pub fn add_candidate(&self, scope: &str, signature: &str, candidate: &BaseCandidate) -> Result<()> {
        let mut key = keys::candidates_prefix(scope, signature);
        let identity: Vec<u8> = candidate.chunks.iter().flatten().copied().collect();
        key.extend_from_slice(tensorgate_codec::ContentHash::of(&identity).0.as_slice());
        self.candidates.insert(key, encode(candidate)?)?;
        Ok(())
    }

    /// Every base candidate of this dtype and shape within `scope`.
    pub fn candidates(&self, scope: &str, signature: &str) -> Result<Vec<BaseCandidate>> {
        self.candidates
            .scan_prefix(keys::candidates_prefix(scope, signature))
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// The chunks of the newest tensor stored under this name, dtype and shape.
    pub fn tensor_chunks(&self, tenant: &str, name: &str, signature: &str) -> Result<Option<Vec<ChunkHash>>> {
        self.tensors.get(keys::tensor(tenant, name, signature))?.map(|v| decode(&v)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_records::fresh_index;
    use crate::BaseCandidate;

    #[test]
    fn candidates_are_kept_once_per_tensor_and_apart_by_scope_and_signature() {
        let (_dir, index) = fresh_index();
        let candidate = BaseCandidate { sketch: vec![1, 2], chunks: vec![[7; 32]] };
        index.add_candidate("t", "bf16:4x4", &candidate).unwrap();
        index.add_candidate("t", "bf16:4x4", &candidate).unwrap();
        assert_eq!(index.candidates("t", "bf16:4x4").unwrap(), vec![candidate.clone()]);
        assert!(index.candidates("t", "bf16:4x8").unwrap().is_empty());
        assert!(index.candidates("u", "bf16:4x4").unwrap().is_empty());
        index.remember_tensor("t", "w", "bf16:4x4", &candidate.chunks).unwrap();
        assert_eq!(index.tensor_chunks("t", "w", "bf16:4x4").unwrap(), Some(candidate.chunks));
    }
}
