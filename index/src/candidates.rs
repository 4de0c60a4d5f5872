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

    /// Rewrites, once, the keys of `tensors` and `candidates` written before signatures were
    /// specified (Rust's `Debug` form, `BF16[4096, 4096]`) in the specified form
    /// (`BF16:4096x4096`), so that the tensors stored before keep serving as bases.
    pub(crate) fn migrate_signatures(&self) -> Result<()> {
        if self.meta.contains_key(SIGNATURES_MIGRATED)? {
            return Ok(());
        }
        for entry in self.tensors.iter() {
            let (key, value) = entry?;
            // `scope 00 name 00 signature`: the signature follows the last NUL.
            let Some(at) = key.iter().rposition(|byte| *byte == 0) else { continue };
            if let Some(signature) = std::str::from_utf8(&key[at + 1..]).ok().and_then(specified_signature) {
                let mut renamed = key[..=at].to_vec();
                renamed.extend_from_slice(signature.as_bytes());
                self.tensors.insert(renamed, value)?;
                self.tensors.remove(key)?;
            }
        }
        for entry in self.candidates.iter() {
            let (key, value) = entry?;
            // `scope 00 signature 00` then a 32-byte id.
            let Some(start) = key.iter().position(|byte| *byte == 0).map(|at| at + 1) else { continue };
            let Some(end) = key.len().checked_sub(33).filter(|end| *end >= start && key[*end] == 0) else { continue };
            if let Some(signature) = std::str::from_utf8(&key[start..end]).ok().and_then(specified_signature) {
                let mut renamed = key[..start].to_vec();
                renamed.extend_from_slice(signature.as_bytes());
                renamed.extend_from_slice(&key[end..]);
                self.candidates.insert(renamed, value)?;
                self.candidates.remove(key)?;
            }
        }
        self.meta.insert(SIGNATURES_MIGRATED, &[])?;
        self.flush()
    }
}

/// The `meta` key that says the signatures of the index are in the specified form.
const SIGNATURES_MIGRATED: &str = "signatures-specified";

/// The specified form of a signature written in the `Debug` form (`BF16[4096, 4096]` becomes
/// `BF16:4096x4096`); `None` for one that is not in that form.
fn specified_signature(old: &str) -> Option<String> {
    let (dtype, dims) = old.strip_suffix(']')?.split_once('[')?;
    let dims: Vec<u64> = dims.split(", ").filter(|dim| !dim.is_empty()).map(|dim| dim.parse().ok()).collect::<Option<_>>()?;
    let dims: Vec<String> = dims.iter().map(u64::to_string).collect();
    Some(format!("{dtype}:{}", dims.join("x")))
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

    #[test]
    fn signatures_written_in_the_debug_form_are_found_after_the_migration_at_open() {
        let (_dir, index) = fresh_index();
        assert!(index.meta.contains_key(super::SIGNATURES_MIGRATED).unwrap(), "open migrates (here: nothing)");
        let candidate = BaseCandidate { sketch: vec![3], chunks: vec![[8; 32]] };
        index.remember_tensor("t", "w", "BF16[4, 4]", &candidate.chunks).unwrap();
        index.add_candidate("t", "BF16[4, 4]", &candidate).unwrap();
        index.add_candidate("t", "F32[]", &candidate).unwrap();
        // As an index written before the migration existed, opened again (reopening the same
        // directory in one process races sled's file lock, so the step open takes is run here).
        index.meta.remove(super::SIGNATURES_MIGRATED).unwrap();
        index.migrate_signatures().unwrap();
        assert_eq!(index.tensor_chunks("t", "w", "BF16:4x4").unwrap(), Some(candidate.chunks.clone()));
        assert_eq!(index.candidates("t", "BF16:4x4").unwrap(), vec![candidate.clone()]);
        assert_eq!(index.candidates("t", "F32:").unwrap(), vec![candidate]);
        assert!(index.candidates("t", "BF16[4, 4]").unwrap().is_empty());
    }
}
