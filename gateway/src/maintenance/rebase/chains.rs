//! Keeping chains of deltas short while re-basing. A chunk's depth (the deltas below it, down
//! to a chunk on its own) and its height (the longest chain of deltas above it, a chunk a write
//! in progress holds counting one more: the write may take a delta of it) may add up to at most
//! `MAX_WRITE_DEPTH`, with the planned frames in place; a frame that would make a loop of bases
//! fails that too. A pass moves chunks onto their group's root; a chunk stored on its own that
//! moves becomes a delta, and the deltas above it one level deeper. Where that breaks the rule,
//! the chunks in the way are moved to the root too, from the group's spare frames, when that
//! costs fewer bytes than the move saves: either the chunks just above it that have deltas of
//! their own, or the chunks two levels above it, whichever is cheaper. Otherwise the chunk stays
//! where it is. (A base stored after its fine-tunes, with checkpoints as deltas of deltas above
//! it, is the case this is for: left alone, it and its precisions would stay on their own for
//! good.) Only then are the deltas against hubs (other members of the group) weighed, each in
//! place of its chunk's frame against the root: taken where the hub ends the pass as a delta
//! of the root and both fit, so that a hub that does not fit never costs the group the moves
//! that do. A group that ends no longer worth re-basing is left whole.

use std::collections::{HashMap, HashSet};

use tensorgate_index::{ChunkHash, MAX_BASE_DEPTH};

use super::{worth_it, Planned};
use crate::engine::ingest::MAX_WRITE_DEPTH;
use crate::engine::Store;

/// The deltas above each chunk, and each chunk's base, as the planned frames would leave them.
struct Chains<'a> {
    store: &'a Store,
    above: HashMap<ChunkHash, HashSet<ChunkHash>>,
    base_of: HashMap<ChunkHash, ChunkHash>,
}

impl<'a> Chains<'a> {
    /// Every stored chunk, each on the base `planned` gives it, or else on its own.
    fn of(store: &'a Store, planned: &[Planned]) -> anyhow::Result<Self> {
        let planned: HashMap<ChunkHash, Option<ChunkHash>> = planned.iter().map(|step| (step.hash, step.base)).collect();
        let mut chains = Chains { store, above: HashMap::new(), base_of: HashMap::new() };
        for entry in store.index.all_chunks() {
            let (hash, record) = entry?;
            chains.rebase(hash, None, planned.get(&hash).copied().unwrap_or(record.base));
        }
        Ok(chains)
    }

    /// Puts `step`'s chunk on the base it plans.
    fn apply(&mut self, step: &Planned) {
        self.rebase(step.hash, step.record.base, step.base);
    }

    /// Puts `step`'s chunk back on its base now.
    fn undo(&mut self, step: &Planned) {
        self.rebase(step.hash, step.base, step.record.base);
    }

    /// Records that `hash`'s base is `to` rather than `from`.
    fn rebase(&mut self, hash: ChunkHash, from: Option<ChunkHash>, to: Option<ChunkHash>) {
        if let Some(from) = from {
            if let Some(above) = self.above.get_mut(&from) {
                above.remove(&hash);
            }
        }
        match to {
            Some(to) => {
                self.above.entry(to).or_default().insert(hash);
                self.base_of.insert(hash, to);
            }
            None => {
                self.base_of.remove(&hash);
            }
        }
    }

    /// How many deltas `hash` sits above a chunk stored on its own; `None` past
    /// `MAX_BASE_DEPTH` (a loop of bases included).
    fn depth(&self, hash: &ChunkHash) -> Option<usize> {
        let mut at = *hash;
        for depth in 0..=MAX_BASE_DEPTH {
            match self.base_of.get(&at) {
                Some(base) => at = *base,
                None => return Some(depth),
            }
        }
        None
    }

    /// The deltas taken against `hash`.
    fn above(&self, hash: &ChunkHash) -> Vec<ChunkHash> {
        self.above.get(hash).into_iter().flatten().copied().collect()
    }

    /// The longest chain of deltas above `hash`, a held chunk counting one more (a write in
    /// progress may take a delta of it).
    fn height(&self, hash: &ChunkHash) -> usize {
        let mut level = vec![*hash];
        let mut height = 0;
        for levels in 0..=MAX_WRITE_DEPTH {
            if level.is_empty() {
                break;
            }
            height = height.max(levels);
            if level.iter().any(|hash| self.store.held_chunks.is_held(hash)) {
                height = height.max(levels + 1);
            }
            level = level.iter().flat_map(|hash| self.above(hash)).collect();
        }
        height
    }

    /// Whether the chunk stays within `MAX_WRITE_DEPTH` as `step` plans it: on its own, or with
    /// its depth and the deltas above it together no more than that.
    fn fits(&self, step: &Planned) -> bool {
        step.base.is_none() || self.depth(&step.hash).is_some_and(|depth| depth + self.height(&step.hash) <= MAX_WRITE_DEPTH)
    }
}

/// The planned frames to write: the chosen ones that keep every chain short, with the spares
/// that make room for them; then the deltas against hubs that fit, each instead of its chunk's
/// frame against the root (its hub moved to the root if it was a spare); groups left not worth
/// it are dropped whole.
pub(super) fn fit_chains(store: &Store, planned: Vec<Planned>) -> anyhow::Result<Vec<Planned>> {
    let (upgrades, planned): (Vec<Planned>, Vec<Planned>) = planned.into_iter().partition(|step| step.against_member);
    let (chosen, spares): (Vec<Planned>, Vec<Planned>) = planned.into_iter().partition(|step| !step.spare);
    let chosen_hashes: HashSet<ChunkHash> = chosen.iter().map(|step| step.hash).collect();
    let mut spares: HashMap<ChunkHash, Planned> =
        spares.into_iter().filter(|step| !chosen_hashes.contains(&step.hash)).map(|step| (step.hash, step)).collect();
    let mut chains = Chains::of(store, &chosen)?;
    let mut kept = Vec::with_capacity(chosen.len());
    for step in chosen {
        if !chains.fits(&step) {
            match make_room(&mut chains, &mut spares, &step) {
                Some(moved) => kept.extend(moved),
                None => {
                    chains.undo(&step);
                    continue;
                }
            }
        }
        kept.push(step);
    }
    for upgrade in upgrades {
        upgrade_if_it_fits(&mut chains, &mut kept, &mut spares, upgrade);
    }
    // Dropping a group puts its chunks back under their old bases, which may lengthen a chain
    // another group's frames were fitted to: check again until nothing more is dropped.
    loop {
        let count = kept.len();
        let chains = Chains::of(store, &kept)?;
        kept.retain(|step| chains.fits(step));
        let mut groups: HashMap<ChunkHash, Vec<&Planned>> = HashMap::new();
        for step in &kept {
            groups.entry(step.group).or_default().push(step);
        }
        let worthy: HashSet<ChunkHash> = groups.into_iter().filter(|(_, group)| worth_it(group)).map(|(root, _)| root).collect();
        kept.retain(|step| worthy.contains(&step.group));
        if kept.len() == count {
            return Ok(kept);
        }
    }
}

/// Takes `upgrade`, a delta against a hub, instead of whatever `kept` plans for its chunk, if
/// its hub is a delta of the group's root once the pass is in (moved there from the spares if
/// need be), both fit, and it is smaller than the chunk's planned frame (or its frame now) by
/// more than moving the hub costs.
fn upgrade_if_it_fits(chains: &mut Chains, kept: &mut Vec<Planned>, spares: &mut HashMap<ChunkHash, Planned>, upgrade: Planned) {
    let Some(hub) = upgrade.base else { return };
    let on_root = |base: Option<ChunkHash>| base == Some(upgrade.group);
    // The hub's frame against the root, taken from the spares, when it is not there already.
    let hub_move = match kept.iter().find(|step| step.hash == hub) {
        Some(step) if on_root(step.base) => None,
        Some(_) => return,
        None if spares.get(&hub).is_some_and(|spare| spare.group == upgrade.group && on_root(spare.base)) => spares.remove(&hub),
        None if on_root(chains.base_of.get(&hub).copied()) => None,
        None => return,
    };
    let (from, size_now) = match kept.iter().find(|step| step.hash == upgrade.hash) {
        Some(step) => (step.base, step.frame.len() as u64),
        None => (upgrade.record.base, u64::from(upgrade.record.frame_len)),
    };
    let cheaper = upgrade.frame.len() as u64 + hub_move.as_ref().map_or(0, Planned::extra_bytes) < size_now;
    if let Some(spare) = &hub_move {
        chains.apply(spare);
    }
    chains.rebase(upgrade.hash, from, upgrade.base);
    if cheaper && chains.fits(&upgrade) && hub_move.as_ref().is_none_or(|spare| chains.fits(spare)) {
        kept.retain(|step| step.hash != upgrade.hash);
        kept.extend(hub_move);
        kept.push(upgrade);
        return;
    }
    chains.rebase(upgrade.hash, upgrade.base, from);
    if let Some(spare) = hub_move {
        chains.undo(&spare);
        spares.insert(hub, spare);
    }
}

/// Moves spares of `step`'s group onto the root so that `step` fits: the cheaper of the chunks
/// just above it that have deltas above them, and the chunks two levels above it, if every one
/// is a spare of the group, the move costs fewer bytes than `step` saves, and every chain then
/// fits. Returns the spares moved.
fn make_room(chains: &mut Chains, spares: &mut HashMap<ChunkHash, Planned>, step: &Planned) -> Option<Vec<Planned>> {
    let saved = u64::from(step.record.frame_len).saturating_sub(step.frame.len() as u64);
    let just_above = chains.above(&step.hash);
    let with_deltas_above: Vec<ChunkHash> = just_above.iter().filter(|hash| !chains.above(hash).is_empty()).copied().collect();
    let two_above: Vec<ChunkHash> = just_above.iter().flat_map(|hash| chains.above(hash)).collect();
    let mut best: Option<(u64, Vec<ChunkHash>)> = None;
    for option in [with_deltas_above, two_above] {
        let spare_of_group = |hash: &ChunkHash| spares.get(hash).filter(|spare| spare.group == step.group);
        let cost: Option<u64> = option.iter().map(|hash| spare_of_group(hash).map(Planned::extra_bytes)).sum();
        let Some(cost) = cost else { continue };
        if option.is_empty() || cost >= saved || best.as_ref().is_some_and(|(cheapest, _)| *cheapest <= cost) {
            continue;
        }
        let moves: Vec<&Planned> = option.iter().filter_map(|hash| spares.get(hash)).collect();
        for spare in &moves {
            chains.apply(spare);
        }
        let fits = chains.fits(step) && moves.iter().all(|spare| chains.fits(spare));
        for spare in &moves {
            chains.undo(spare);
        }
        if fits {
            best = Some((cost, option));
        }
    }
    let (_, option) = best?;
    let moved: Vec<Planned> = option.iter().filter_map(|hash| spares.remove(hash)).collect();
    for spare in &moved {
        chains.apply(spare);
    }
    Some(moved)
}
