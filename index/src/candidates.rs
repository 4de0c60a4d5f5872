//! Base candidates: the stored tensors a new tensor of the same dtype and shape may be a delta
//! against, found by name or by fingerprint. Where many tensors share a dtype and shape (the
//! layers of every model of a family), the candidates near a fingerprint are found through its
//! bands (`tensorgate_codec::Sketch::bands`) rather than by reading them all: each candidate is
//! also filed in `candidate_bands` under `scope 00 signature 00 band (1 byte) key (8 bytes,
//! big-endian) sequence (8 bytes, big-endian) id (32 bytes)`, with an empty value; the sequence
//! orders a band's members by when they were filed (0 for those filed by the migration at
//! open, which come first, in no meaningful order). Two writes registering the same new tensor
//! at once may file it twice, and a crash between filing and registering leaves bands naming
//! no candidate: lookups count an id once per band and pass over ids with no candidate.

use std::collections::HashMap;

use tensorgate_codec::{Dtype, Sketch, BANDS};

use crate::encoding::encode;
use crate::{decode, keys, BaseCandidate, ChunkHash, Index, Result};

/// Up to this many candidates of one dtype and shape, all are returned (and compared by the
/// caller); past it, those that share the most bands with the fingerprint asked about.
const COMPARE_ALL_UP_TO: usize = 64;

/// Candidates returned past [`COMPARE_ALL_UP_TO`]: those sharing the most bands.
const NEAREST_BY_BANDS: usize = 32;

/// Members of one band read at each end (the first filed and the last): a family of many
/// members (the fine-tunes of one base, or near-constant tensors such as layer norms) fills
/// the same bands, and reading them all would cost what reading every candidate does. When a
/// family's base was stored first, it is among the first filed; the last are the newest, such
/// as the checkpoints before the new one. A member filed in between is not read.
const BAND_READ_EACH_END: usize = 8;

/// The `meta` key that says every candidate is filed under its bands.
const BANDS_FILED: &str = "candidate-bands-filed";

impl Index {
    /// Remembers the chunks of the newest tensor stored under this name, dtype and shape.
    pub fn remember_tensor(&self, tenant: &str, name: &str, signature: &str, chunks: &[ChunkHash]) -> Result<()> {
        self.tensors.insert(keys::tensor(tenant, name, signature), encode(&chunks.to_vec())?)?;
        Ok(())
    }

    /// Registers a stored tensor as a base candidate for tensors of its dtype and shape
    /// (`signature`) within `scope` (a tenant, or a group sharing dedup). Idempotent.
    /// A new candidate's bands are filed first: a crash in between leaves bands that name no
    /// candidate, which lookups pass over.
    pub fn add_candidate(&self, scope: &str, signature: &str, candidate: &BaseCandidate) -> Result<()> {
        let prefix = keys::candidates_prefix(scope, signature);
        let identity: Vec<u8> = candidate.chunks.iter().flatten().copied().collect();
        let id = tensorgate_codec::ContentHash::of(&identity).0;
        let mut key = prefix.clone();
        key.extend_from_slice(&id);
        if !self.candidates.contains_key(&key)? {
            self.file_bands(&prefix, signature, &candidate.sketch, &id, self.db.generate_id()?)?;
        }
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

    /// The base candidates of this dtype and shape within `scope` worth comparing with a tensor
    /// whose fingerprint has `bands` (see `tensorgate_codec::Sketch::bands`): all of them when
    /// there are few, or when either side has no bands (F8 and I8); else the
    /// [`NEAREST_BY_BANDS`] that share the most bands with it, read without reading the others.
    pub fn near_candidates(&self, scope: &str, signature: &str, bands: Option<&[u64; BANDS]>) -> Result<Vec<BaseCandidate>> {
        let prefix = keys::candidates_prefix(scope, signature);
        let mut counted = 0;
        for entry in self.candidates.scan_prefix(&prefix).keys().take(COMPARE_ALL_UP_TO + 1) {
            entry?;
            counted += 1;
        }
        let bands = match bands {
            Some(bands) if counted > COMPARE_ALL_UP_TO && signature_dtype(signature).is_some_and(Sketch::has_bands) => bands,
            _ => return self.candidates(scope, signature),
        };
        let mut shared: HashMap<ChunkHash, u32> = HashMap::new();
        for (band, key) in bands.iter().enumerate() {
            let members = || self.candidate_bands.scan_prefix(band_key(&prefix, band, *key)).keys();
            let first: Vec<sled::IVec> = members().take(BAND_READ_EACH_END).collect::<std::result::Result<_, _>>()?;
            let last: Vec<sled::IVec> = members().rev().take(BAND_READ_EACH_END).collect::<std::result::Result<_, _>>()?;
            let mut ids: Vec<ChunkHash> = first
                .iter()
                .chain(&last)
                .filter_map(|entry| entry.len().checked_sub(32).and_then(|start| <ChunkHash>::try_from(&entry[start..]).ok()))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                *shared.entry(id).or_default() += 1;
            }
        }
        let mut ranked: Vec<(ChunkHash, u32)> = shared.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut near = Vec::new();
        for (id, _) in ranked.into_iter().take(NEAREST_BY_BANDS) {
            let mut key = prefix.clone();
            key.extend_from_slice(&id);
            if let Some(value) = self.candidates.get(key)? {
                near.push(decode(&value)?);
            }
        }
        Ok(near)
    }

    /// Files the candidate `id` (under `prefix`: its scope and signature) under the bands of its
    /// fingerprint; nothing for a dtype without bands or a sketch that does not read.
    /// `sequence` orders it among the band's members (see the module's doc).
    fn file_bands(&self, prefix: &[u8], signature: &str, sketch: &[u8], id: &ChunkHash, sequence: u64) -> Result<()> {
        let Some(bands) = signature_dtype(signature).and_then(|dtype| Sketch::from_bytes(sketch)?.bands(dtype)) else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for (band, key) in bands.iter().enumerate() {
            let mut entry = band_key(prefix, band, *key);
            entry.extend_from_slice(&sequence.to_be_bytes());
            entry.extend_from_slice(id);
            batch.insert(entry, &[]);
        }
        self.candidate_bands.apply_batch(batch)?;
        Ok(())
    }

    /// Files, once, the candidates stored before bands were: until then they would be found
    /// only while few share their dtype and shape. Each under sequence 0, so that a filing a
    /// crash cut short is done again to the same keys. (Candidates that a gateway from before
    /// stop 24 registers in an index this one has opened are not filed: going back is not
    /// supported, docs/format.md section 11.) A record that does not decode is left to the
    /// lookups of its signature, which refuse it.
    pub(crate) fn file_all_bands(&self) -> Result<()> {
        if self.meta.contains_key(BANDS_FILED)? {
            return Ok(());
        }
        for entry in self.candidates.iter() {
            let (key, value) = entry?;
            // `scope 00 signature 00` then a 32-byte id.
            let Some(id_start) = key.len().checked_sub(32) else { continue };
            let Some(signature_start) = key.iter().position(|byte| *byte == 0).map(|at| at + 1) else { continue };
            let Some(signature) = key.get(signature_start..id_start.saturating_sub(1)).and_then(|bytes| std::str::from_utf8(bytes).ok()) else {
                continue;
            };
            let Ok(id) = <ChunkHash>::try_from(&key[id_start..]) else { continue };
            let Ok(candidate) = decode::<BaseCandidate>(&value) else { continue };
            self.file_bands(&key[..id_start], signature, &candidate.sketch, &id, 0)?;
        }
        self.meta.insert(BANDS_FILED, &[])?;
        self.flush()
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

/// The key prefix of one band of candidates of one scope and signature (`prefix`).
fn band_key(prefix: &[u8], band: usize, key: u64) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bytes.push(band as u8);
    bytes.extend_from_slice(&key.to_be_bytes());
    bytes
}

/// The dtype a signature (`BF16:4096x4096`) names.
fn signature_dtype(signature: &str) -> Option<Dtype> {
    let name = signature.split_once(':').map_or(signature, |(name, _)| name);
    Dtype::ALL.into_iter().find(|dtype| dtype.name() == name)
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
    use super::NEAREST_BY_BANDS;
    use crate::test_records::fresh_index;
    use crate::BaseCandidate;
    use tensorgate_codec::sketch::SAMPLES;
    use tensorgate_codec::{Dtype, Sketch};

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

    /// A BF16 sketch whose samples are `values` (as BF16 bits), and its candidate.
    fn candidate_with(values: impl Fn(usize) -> f32, id: u8) -> (Sketch, BaseCandidate) {
        let bytes: Vec<u8> = (0..SAMPLES).flat_map(|i| ((values(i).to_bits() >> 16) as u16).to_le_bytes()).collect();
        let sketch = Sketch::of(&bytes, Dtype::BF16);
        (sketch.clone(), BaseCandidate { sketch: sketch.to_bytes(), chunks: vec![[id; 32]] })
    }

    /// Values spread over eight octaves, differing from seed to seed.
    fn spread(seed: u32) -> impl Fn(usize) -> f32 {
        move |i| {
            let mixed = (i as u32 ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(2_654_435_761);
            let sign = if mixed & 1 == 0 { 1.0 } else { -1.0 };
            sign * 2f32.powi(-(((mixed >> 8) % 8) as i32))
        }
    }

    #[test]
    fn past_a_few_candidates_only_those_sharing_bands_are_read() {
        let (_dir, index) = fresh_index();
        for seed in 0..200u32 {
            index.add_candidate("t", "BF16:64x64", &candidate_with(spread(seed), (seed % 251) as u8).1).unwrap();
        }
        let (query, _) = candidate_with(|i| spread(77)(i) * 1.004, 0);
        let near = index.near_candidates("t", "BF16:64x64", query.bands(Dtype::BF16).as_ref()).unwrap();
        assert!(near.len() <= NEAREST_BY_BANDS && !near.is_empty());
        assert_eq!(near[0].chunks, vec![[77; 32]], "the relative shares the most bands");
        assert_eq!(index.near_candidates("t", "BF16:64x64", None).unwrap().len(), 200, "no bands: all of them");
        // Few candidates: all of them, near or not.
        index.add_candidate("t", "BF16:8x8", &candidate_with(spread(1), 1).1).unwrap();
        assert_eq!(index.near_candidates("t", "BF16:8x8", query.bands(Dtype::BF16).as_ref()).unwrap().len(), 1);
    }

    #[test]
    fn of_a_family_filling_its_bands_the_first_and_last_filed_are_read() {
        let (_dir, index) = fresh_index();
        // One value in four moved by a unit in the last place: every member keeps every band.
        let member = |seed: u32| move |i: usize| {
            let value = spread(5)(i);
            if (i as u32 ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(2_654_435_761) >> 30 == 0 { f32::from_bits(value.to_bits() + 0x1_0000) } else { value }
        };
        for seed in 0..100u32 {
            index.add_candidate("t", "BF16:64x64", &candidate_with(member(seed), seed as u8).1).unwrap();
        }
        let (query, _) = candidate_with(member(1000), 0);
        let near: Vec<u8> = index.near_candidates("t", "BF16:64x64", query.bands(Dtype::BF16).as_ref()).unwrap().iter().map(|c| c.chunks[0][0]).collect();
        assert_eq!(near.len(), 2 * super::BAND_READ_EACH_END);
        assert!(near.contains(&0) && near.contains(&99), "the first filed (a base) and the last (the newest checkpoint): {near:?}");
    }

    #[test]
    fn candidates_stored_before_bands_are_filed_at_open() {
        let (_dir, index) = fresh_index();
        for seed in 0..100u32 {
            index.add_candidate("t", "BF16:64x64", &candidate_with(spread(seed), seed as u8).1).unwrap();
        }
        // As an index written before bands existed, opened again.
        index.candidate_bands.clear().unwrap();
        index.meta.remove(super::BANDS_FILED).unwrap();
        let (query, _) = candidate_with(spread(42), 0);
        assert!(index.near_candidates("t", "BF16:64x64", query.bands(Dtype::BF16).as_ref()).unwrap().is_empty());
        index.file_all_bands().unwrap();
        let near = index.near_candidates("t", "BF16:64x64", query.bands(Dtype::BF16).as_ref()).unwrap();
        assert_eq!(near[0].chunks, vec![[42; 32]]);
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
