//! Multipart parts encoded as they arrive, so that a model uploaded in parts is written
//! upstream once, packed, and never read back (issue 15).
//!
//! The first part is sniffed as a PUT is: a model whose header it holds whole (safetensors,
//! GGUF) is cut and encoded up to the part's end, its header kept inline; anything else is
//! stored as it came. A later part is placed where it sits if every part before it has the
//! first part's size (clients cut equal parts), and cut and encoded as those bytes of the model:
//! chunks on each tensor's grid, and a piece of a chunk where the part starts or ends inside
//! one, taken against the same elements of its base (a window of the base's chunk). Completion
//! checks the guess; a wrong one costs savings only (the packer encodes the object again),
//! since whatever the placement, a part's chunks concatenate to its bytes.

use std::sync::Arc;

use bytes::BytesMut;
use tensorgate_codec::{stored_layout, Layout, Sketch};
use tensorgate_index::{ObjectRecord, PartRecord};

use super::first_parts::FirstPart;
use super::model::{model_tensors, ModelState};
use super::{IngestMode, Ingester, State, StoredTensor};
use crate::engine::Store;

/// Where a later part's bytes sit in the object, and the object's layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartPlacement {
    pub layout: Layout,
    /// The object offset of the part's first byte.
    pub offset: u64,
    /// The id of part 1's layout (`FirstPart::layout_id`).
    pub layout_id: String,
}

impl PartPlacement {
    /// Where part `number` sits if part 1 holds the model's header and every part before it has
    /// part 1's size; `None` when part 1 holds no model, or the part would start inside the
    /// header.
    pub fn guess(first: &FirstPart, number: u32) -> Option<PartPlacement> {
        let FirstPart::Model { header, size } = first else { return None };
        let layout = stored_layout(header)?;
        let offset = u64::from(number.checked_sub(1)?).checked_mul(*size)?;
        (offset >= layout.data_start).then(|| PartPlacement { layout, offset, layout_id: first.layout_id().unwrap_or_default() })
    }
}

/// How part `number` of `upload_id` is ingested: part 1 as a possible model header (telling
/// the later parts what it holds as soon as it is sniffed); a later part at its placement once
/// part 1 is known (waiting for it a while), else as it came. With a shared upstream, parts are
/// stored as they came: other gateways read their markers.
pub async fn part_mode(store: &Store, upload_id: &str, number: u32) -> anyhow::Result<IngestMode> {
    if store.config.shared_upstream || !store.config.encode_parts {
        return Ok(IngestMode::Plain);
    }
    if number == 1 {
        return Ok(IngestMode::FirstPart { upload_id: upload_id.to_owned() });
    }
    let first = store.first_parts.wait(store, upload_id).await?;
    let placed = first.and_then(|first| PartPlacement::guess(&first, number));
    Ok(placed.map_or(IngestMode::Plain, |placement| IngestMode::LaterPart(Arc::new(placement))))
}

/// Whether the parts an upload completes with were all encoded where they sit in the object,
/// by the layout of the part 1 it completes with: the object is then stored as the packer
/// would store it, and needs no packing.
pub fn placed_as_guessed(parts: &[&PartRecord]) -> bool {
    let Some(layout_id) = parts.first().and_then(|first| FirstPart::of_record(first).layout_id()) else { return false };
    let mut offset = 0;
    for part in parts {
        let Some(encoded) = &part.encoded else { return false };
        if encoded.offset != offset || encoded.layout_id != layout_id {
            return false;
        }
        offset += part.size;
    }
    true
}

/// Makes the tensors of a completed upload findable as bases: every tensor by name (for a
/// part without a tensor's first chunk, which takes the newest of its name), and by fingerprint
/// those whose first chunk a part held whole (it took their fingerprint).
pub fn register_completed(store: &Store, tenant: &str, record: &ObjectRecord, parts: &[&PartRecord]) -> anyhow::Result<()> {
    let Some(mut tensors) = model_tensors(record) else { return Ok(()) };
    let sketches = parts.iter().filter_map(|part| part.encoded.as_ref()).flat_map(|encoded| &encoded.sketches);
    let mut sketched = Vec::new();
    for tensor in sketches {
        let key = (tensor.name.clone(), tensor.signature.clone());
        let (Some(sketch), Some(chunks)) = (Sketch::from_bytes(&tensor.sketch), tensors.remove(&key)) else { continue };
        sketched.push(StoredTensor { name: key.0, signature: key.1, chunks, sketch });
    }
    let scope = store.config.dedup_scope_of(tenant);
    for ((name, signature), chunks) in tensors {
        store.index.remember_tensor(&scope, &name, &signature, &chunks)?;
    }
    store.register_tensors(tenant, &sketched)
}

impl Ingester {
    /// A later part starts as the bytes of its placement: in the region that holds them, with
    /// no header of its own.
    pub(super) fn enter_placement(&mut self) -> anyhow::Result<()> {
        let IngestMode::LaterPart(placement) = &self.options.mode else { return Ok(()) };
        let layout = placement.layout.clone();
        let position = placement.offset - layout.data_start;
        let regions = layout.regions();
        let region = regions.iter().position(|region| region.end > position).unwrap_or(regions.len());
        let model = ModelState {
            layout,
            regions,
            region,
            position,
            chunk_start: position,
            current: Vec::new(),
            tensor_chunks: Vec::new(),
            base: None,
            sketch: None,
            base_chosen: false,
            walker: None,
            held: BytesMut::new(),
        };
        let base = self.base_for_region(&model)?;
        self.state = State::Model(Box::new(ModelState { base, ..model }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensorgate_index::{Checksums, EncodedPart, Segment};

    fn first_part(header: Vec<u8>, size: u64) -> PartRecord {
        let layout_id = FirstPart::Model { header: Arc::new(header.clone()), size }.layout_id().unwrap();
        let encoded = EncodedPart { offset: 0, layout_id, segments: vec![Segment::Inline(header)], sketches: vec![] };
        PartRecord { blob: String::new(), size, etag: "e".into(), last_modified_ms: 0, checksums: Checksums::default(), encoded: Some(encoded) }
    }

    fn later_part(first: &PartRecord, number: u32, size: u64) -> PartRecord {
        let placement = PartPlacement::guess(&FirstPart::of_record(first), number).unwrap();
        let encoded = EncodedPart { offset: placement.offset, layout_id: placement.layout_id, segments: vec![], sketches: vec![] };
        PartRecord { size, encoded: Some(encoded), ..first.clone() }
    }

    fn header() -> Vec<u8> {
        let json = br#"{"w":{"dtype":"BF16","shape":[8],"data_offsets":[0,16]}}"#;
        let mut header = (json.len() as u64).to_le_bytes().to_vec();
        header.extend_from_slice(json);
        header
    }

    #[test]
    fn later_parts_are_placed_at_multiples_of_the_first_parts_size() {
        let first = FirstPart::of_record(&first_part(header(), 100));
        let placed = PartPlacement::guess(&first, 3).expect("placed");
        assert_eq!((placed.offset, placed.layout.data_start), (200, header().len() as u64));
        assert!(PartPlacement::guess(&first, 0).is_none());
        let tiny = FirstPart::of_record(&first_part(header(), 10));
        assert!(PartPlacement::guess(&tiny, 2).is_none(), "part 2 would start inside the header");
        let raw = PartRecord { encoded: None, blob: "blobs/b".into(), ..first_part(header(), 100) };
        assert_eq!(FirstPart::of_record(&raw), FirstPart::Other, "part 1 was stored as it came");
        assert!(PartPlacement::guess(&FirstPart::Other, 2).is_none());
    }

    #[test]
    fn an_upload_needs_no_packing_only_when_every_part_sits_where_it_was_placed() {
        let first = first_part(header(), 100);
        let (second, third) = (later_part(&first, 2, 100), later_part(&first, 3, 40));
        assert!(placed_as_guessed(&[&first, &second, &third]));
        assert!(!placed_as_guessed(&[&first, &third]), "part 2 was left out");
        let short = PartRecord { size: 90, ..second.clone() };
        assert!(!placed_as_guessed(&[&first, &short, &third]), "part 2 is shorter than part 1");
        let other_first = first_part(header(), 120);
        assert!(!placed_as_guessed(&[&other_first, &second]), "part 1 was sent again, another size");
        let raw = PartRecord { encoded: None, blob: "blobs/b".into(), ..second };
        assert!(!placed_as_guessed(&[&first, &raw]), "part 2 was stored as it came");
    }
}
