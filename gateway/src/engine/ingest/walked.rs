//! Models whose tensors are found as their bytes stream by (PyTorch zip checkpoints and ONNX
//! models, walked by a `tensorgate_codec::formats::Walker`). A region may be open, its end not known yet
//! (`OPEN`): its chunks are cut from its start in the size its dtype gets
//! (`tensorgate_codec::chunk_size`), as any region's are, and its last,
//! shorter chunk only once the walker has closed it. Bytes the walker has not settled wait in
//! `ModelState::held` (a local header or a descriptor's worth at most).

use bytes::Bytes;
use tensorgate_codec::formats::Discovery;
use tensorgate_codec::{Dtype, Region, RegionKind, TensorInfo};

use super::model::ModelState;
use super::{Ingester, State};

/// The end of a region whose end is not known yet.
pub(super) const OPEN: u64 = u64::MAX;

/// Applies what the walker found to the regions and tensors.
pub(super) fn apply(regions: &mut Vec<Region>, tensors: &mut Vec<TensorInfo>, found: Vec<Discovery>) {
    for discovery in found {
        match discovery {
            Discovery::Open { start, tensor: None } => regions.push(Region { start, end: OPEN, kind: RegionKind::Gap }),
            Discovery::Open { start, tensor: Some(info) } => {
                regions.push(Region { start, end: OPEN, kind: RegionKind::Tensor(tensors.len()) });
                tensors.push(info);
            }
            Discovery::Close { end } => {
                let Some(region) = regions.last_mut() else { continue };
                region.end = end;
                if let RegionKind::Tensor(index) = region.kind {
                    let tensor = &mut tensors[index];
                    tensor.end = end;
                    let len = end - tensor.start;
                    if !len.is_multiple_of(tensor.dtype.size() as u64) {
                        tensor.dtype = Dtype::U8;
                    }
                    tensor.shape = vec![len / tensor.dtype.size() as u64];
                }
            }
        }
    }
}

impl ModelState {
    /// Takes the next bytes; returns those whose regions are now known, in order.
    pub(super) fn settle(&mut self, bytes: Bytes) -> Bytes {
        let Some(walker) = &mut self.walker else { return bytes };
        let found = walker.feed(&bytes);
        let settled = walker.settled();
        apply(&mut self.regions, &mut self.layout.tensors, found);
        self.held.extend_from_slice(&bytes);
        // `held` starts at `position`, the first byte not returned yet.
        let ready = (settled.saturating_sub(self.position) as usize).min(self.held.len());
        self.held.split_to(ready).freeze()
    }

    /// The object ended at `end`: the open region closes there; returns the held bytes.
    pub(super) fn settle_end(&mut self, end: u64) -> Bytes {
        let Some(walker) = &mut self.walker else { return Bytes::new() };
        let closed = walker.finish(end);
        apply(&mut self.regions, &mut self.layout.tensors, vec![closed]);
        self.held.split().freeze()
    }

    /// Whether the region being filled has been closed exactly where the bytes cut so far end
    /// (never so for a layout known up front: its regions are not empty, and the chunk that
    /// ends one finishes it).
    fn region_closed_here(&self) -> bool {
        self.regions.get(self.region).is_some_and(|region| region.end == self.position)
    }
}

impl Ingester {
    /// Ends the regions the walker closed where the bytes cut so far end: their last chunk is
    /// sealed (or, when it is empty, the region is finished without one).
    pub(super) async fn end_closed_regions(&mut self) -> anyhow::Result<()> {
        loop {
            let State::Model(model) = &self.state else { return Ok(()) };
            if !model.region_closed_here() {
                return Ok(());
            }
            if model.current.is_empty() {
                self.finish_region()?;
            } else {
                self.seal_chunk().await?;
            }
        }
    }

    /// At the end of the body: closes the open region and cuts the bytes held back.
    pub(super) async fn finish_walk(&mut self) -> anyhow::Result<()> {
        let size = self.size;
        let State::Model(model) = &mut self.state else { return Ok(()) };
        if model.walker.is_none() {
            return Ok(());
        }
        let held = model.settle_end(size);
        self.cut_model(held).await
    }
}
