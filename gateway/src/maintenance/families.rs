//! Families of stored tensors: in one dedup scope, the tensors of one shape (whatever their
//! dtype, from ingest's base candidates) whose fingerprints are near, as the layers of one
//! model in its fine-tunes and precisions are, and each family's root. Re-basing stores a
//! family against its root; `tensorgate stats --families` reports them.

use std::collections::HashSet;

use serde::Serialize;
use tensorgate_codec::{Dtype, Sketch};
use tensorgate_index::{BaseCandidate, ChunkHash, ChunkRecord};

use crate::engine::Store;

/// Fingerprints nearer than this are of one family. On the corpus the fine-tunes' tensors are
/// 150 to 1,350 from the base's (the masked-LM fine-tune's embeddings the furthest), other
/// tensors of the same shape 2,850 to 3,000.
const FAMILY_DISTANCE: u32 = (tensorgate_codec::sketch::SAMPLES * 9) as u32;

/// A family member: a stored tensor's dtype, its chunks' ids and records, and its fingerprint.
pub struct Member {
    pub dtype: Dtype,
    pub chunks: Vec<(ChunkHash, ChunkRecord)>,
    pub sketch: Sketch,
}

/// Two tensors or more of one shape in one scope, near one another.
pub struct Family {
    pub scope: String,
    /// The dimensions, as in a candidate's signature (`384x1536`).
    pub shape: String,
    pub members: Vec<Member>,
}

impl Family {
    /// Which member is the root: of the widest dtype there (a narrower copy of it is nearly
    /// free, the reverse a rounding residual), and among those the nearest to all the others.
    pub fn root(&self) -> usize {
        let widest = self.members.iter().map(|member| member.dtype.size()).max().unwrap_or(0);
        let distances = |candidate: &Member| {
            let distance = |other: &Member| u64::from(candidate.sketch.distance_across(candidate.dtype, &other.sketch, other.dtype));
            self.members.iter().map(distance).sum::<u64>()
        };
        (0..self.members.len()).filter(|at| self.members[*at].dtype.size() == widest).min_by_key(|at| distances(&self.members[*at])).unwrap_or(0)
    }
}

/// Every family of the stored tensors whose chunks are all live, shape by shape.
pub fn tensor_families(store: &Store) -> anyhow::Result<Vec<Family>> {
    // The candidates of one shape in one scope, whatever their dtype: a family may hold a model
    // in several precisions (issue 18's conversions).
    let mut shapes: Vec<((String, String), Vec<Member>)> = Vec::new();
    for (scope, signature, candidates) in store.index.candidate_families()? {
        let Some((name, shape)) = signature.split_once(':') else { continue };
        let Some(dtype) = Dtype::ALL.into_iter().find(|dtype| dtype.name() == name) else { continue };
        let members = live_members(store, dtype, candidates)?;
        let key = (scope, shape.to_owned());
        match shapes.iter_mut().find(|(known, _)| *known == key) {
            Some((_, known)) => known.extend(members),
            None => shapes.push((key, members)),
        }
    }
    let mut found = Vec::new();
    for ((scope, shape), members) in shapes {
        found.extend(families_of(members).into_iter().map(|members| Family { scope: scope.clone(), shape: shape.clone(), members }));
    }
    Ok(found)
}

/// The members (of `dtype`) whose chunks are all live in the index.
fn live_members(store: &Store, dtype: Dtype, candidates: Vec<BaseCandidate>) -> anyhow::Result<Vec<Member>> {
    let mut members = Vec::new();
    'candidates: for candidate in candidates {
        let Some(sketch) = Sketch::from_bytes(&candidate.sketch) else { continue };
        let mut chunks = Vec::with_capacity(candidate.chunks.len());
        for hash in candidate.chunks {
            match store.index.chunk(&hash)? {
                Some(record) if record.refs > 0 => chunks.push((hash, record)),
                _ => continue 'candidates,
            }
        }
        members.push(Member { dtype, chunks, sketch });
    }
    Ok(members)
}

/// The families of two members or more among tensors of one shape: each member joins the first
/// family whose first member is within [`FAMILY_DISTANCE`] of it (in F32 terms across dtypes),
/// or starts one.
fn families_of(members: Vec<Member>) -> Vec<Vec<Member>> {
    let mut families: Vec<Vec<Member>> = Vec::new();
    for member in members {
        let near = |family: &&mut Vec<Member>| family[0].sketch.distance_across(family[0].dtype, &member.sketch, member.dtype) < FAMILY_DISTANCE;
        match families.iter_mut().find(near) {
            Some(family) => family.push(member),
            None => families.push(vec![member]),
        }
    }
    families.retain(|family| family.len() >= 2);
    families
}

/// One family of tensors as stored: its distinct chunks, their raw and frame bytes, and how
/// their frames are encoded.
#[derive(Debug, Serialize)]
pub struct FamilyStats {
    pub scope: String,
    pub shape: String,
    /// The members' dtypes, root first.
    pub dtypes: Vec<&'static str>,
    pub chunks: usize,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// Chunks stored on their own, as deltas against the root's chunk at their place, and as
    /// deltas against anything else.
    pub standalone: usize,
    pub against_root: usize,
    pub against_other: usize,
}

impl Family {
    /// How this family is stored.
    pub fn stats(&self) -> FamilyStats {
        let root = self.root();
        let root_chunks = &self.members[root].chunks;
        let others = self.members.iter().enumerate().filter(|(at, _)| *at != root);
        let mut dtypes = vec![self.members[root].dtype.name()];
        dtypes.extend(others.map(|(_, member)| member.dtype.name()));
        let mut stats = FamilyStats {
            scope: self.scope.clone(),
            shape: self.shape.clone(),
            dtypes,
            chunks: 0,
            raw_bytes: 0,
            stored_bytes: 0,
            standalone: 0,
            against_root: 0,
            against_other: 0,
        };
        let mut seen = HashSet::new();
        for member in &self.members {
            for (index, (hash, record)) in member.chunks.iter().enumerate() {
                if !seen.insert(*hash) {
                    continue;
                }
                stats.chunks += 1;
                stats.raw_bytes += u64::from(record.raw_len);
                stats.stored_bytes += u64::from(record.frame_len);
                match record.base {
                    None => stats.standalone += 1,
                    Some(base) if root_chunks.get(index).is_some_and(|(root_hash, _)| *root_hash == base) => stats.against_root += 1,
                    Some(_) => stats.against_other += 1,
                }
            }
        }
        stats
    }
}
