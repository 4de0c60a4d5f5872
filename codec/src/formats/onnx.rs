//! ONNX models (a `ModelProto` in protobuf's wire format), walked as their bytes stream by:
//! the `raw_data` of every initializer (`ModelProto.graph` = field 7, `GraphProto.initializer`
//! = field 5, `TensorProto.raw_data` = field 9) is a tensor region, with the dtype of its
//! `TensorProto.data_type` (field 2, which writers put before `raw_data`); everything else is
//! a gap. Each field gives its length before its bytes, so the walker never needs more than a
//! tag and a length ahead.
//!
//! ```text
//! field:  tag (varint: number << 3 | wire type) | value
//! wire type 0 varint | 1 8 bytes | 2 varint length, then that many bytes | 5 4 bytes
//! ```
//!
//! An ONNX file has no magic number: it is recognised when its first fields are `ModelProto`'s
//! (an `ir_version` first, then only known fields with their wire types) up to the graph. A
//! field that breaks the rules ends the walk; the rest of the file is one gap.
//!
//! Written here rather than taken from a protobuf crate: those decode whole messages in memory,
//! where this needs to follow a stream of any length with a few bytes of state.

use super::{Discovery, MAX_WALKED_TENSORS};
use crate::dtype::Dtype;
use crate::layout::TensorInfo;

/// `ModelProto.ir_version` (field 1, varint): every ONNX file starts with it.
pub const FIRST_TAG: u8 = 0x08;
const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;
/// A tag and a length: two varints of at most 10 bytes each.
const MAX_FIELD_HEAD: usize = 20;

/// The messages the walker descends into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Model,
    Graph,
    /// An initializer, with its `data_type` once read.
    Tensor(Option<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// At a field of the innermost open message.
    Field,
    /// Inside a field's bytes; `tensor` when they are an initializer's `raw_data`.
    Bytes { remaining: u64, tensor: bool },
    /// Nothing more to find: the rest is one gap.
    Done,
}

/// Where a walk through an ONNX file is (`super::Walker` holds the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    step: Step,
    /// Open messages, innermost last, with the offset where each ends (`None`: the file's end).
    stack: Vec<(Message, Option<u64>)>,
    initializers: u64,
}

/// A varint at the start of `bytes`: its value and length; `None` when cut short, `Some(Err)`
/// when longer than 10 bytes.
fn varint(bytes: &[u8]) -> Option<Result<(u64, usize), ()>> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some(Ok((value, index + 1)));
        }
    }
    if bytes.len() >= 10 { Some(Err(())) } else { None }
}

/// Whether `(field, wire type)` is a field of `ModelProto` (onnx.proto3, IR version 10).
fn is_model_field(field: u64, wire: u64) -> bool {
    match field {
        1 | 5 => wire == WIRE_VARINT,
        2..=4 | 6..=8 | 14 | 20 | 25 => wire == WIRE_LEN,
        _ => false,
    }
}

/// Whether `prefix` starts like an ONNX model: known `ModelProto` fields up to the graph.
/// `None` until that is decided.
pub fn looks_like_onnx(prefix: &[u8]) -> Option<bool> {
    let mut at = 0;
    let mut first = true;
    loop {
        let (tag, tag_len) = match varint(&prefix[at..])? {
            Ok(read) => read,
            Err(()) => return Some(false),
        };
        let (field, wire) = (tag >> 3, tag & 7);
        if !is_model_field(field, wire) || (first && field != 1) {
            return Some(false);
        }
        if field == 7 {
            return Some(true);
        }
        first = false;
        at += tag_len;
        let (value, value_len) = match varint(&prefix[at..])? {
            Ok(read) => read,
            Err(()) => return Some(false),
        };
        at += value_len;
        if wire == WIRE_LEN {
            at = at.checked_add(usize::try_from(value).ok()?)?;
            if at > prefix.len() {
                return None;
            }
        }
    }
}

/// The dtype of a `TensorProto.DataType`; U8 for those the codec has no better coding for.
fn dtype_of(data_type: u64) -> Dtype {
    match data_type {
        1 => Dtype::F32,
        3 => Dtype::I8,
        4 => Dtype::U16,
        5 => Dtype::I16,
        6 => Dtype::I32,
        7 => Dtype::I64,
        10 => Dtype::F16,
        11 => Dtype::F64,
        12 => Dtype::U32,
        13 => Dtype::U64,
        16 => Dtype::BF16,
        17 => Dtype::F8E4M3,
        19 => Dtype::F8E5M2,
        _ => Dtype::U8,
    }
}

impl Walk {
    pub(super) fn new() -> Walk {
        Walk { step: Step::Field, stack: vec![(Message::Model, None)], initializers: 0 }
    }

    /// Nothing more to find: the rest is one gap.
    pub(super) fn stop(&mut self) {
        self.step = Step::Done;
    }

    /// Consumes what it can of `bytes`, which start at file offset `offset`; `None` when it
    /// needs more bytes.
    pub(super) fn advance(&mut self, bytes: &[u8], offset: u64, found: &mut Vec<Discovery>) -> Option<usize> {
        match self.step {
            Step::Done => (!bytes.is_empty()).then_some(bytes.len()),
            Step::Bytes { remaining, tensor } => {
                if remaining == 0 {
                    if tensor {
                        found.push(Discovery::Close { end: offset });
                        found.push(Discovery::Open { start: offset, tensor: None });
                    }
                    self.step = Step::Field;
                    return Some(0);
                }
                let take = remaining.min(bytes.len() as u64);
                self.step = Step::Bytes { remaining: remaining - take, tensor };
                (take > 0).then_some(take as usize)
            }
            Step::Field => self.field(bytes, offset, found),
        }
    }

    fn field(&mut self, bytes: &[u8], offset: u64, found: &mut Vec<Discovery>) -> Option<usize> {
        // Messages that end here are closed first.
        while let Some(&(_, Some(end))) = self.stack.last() {
            if end != offset {
                break;
            }
            self.stack.pop();
        }
        let Some(&(message, end)) = self.stack.last() else {
            self.step = Step::Done;
            return Some(0);
        };
        let head = &bytes[..bytes.len().min(MAX_FIELD_HEAD)];
        let parsed = match varint(head) {
            None => return None,
            Some(Err(())) => Err(()),
            Some(Ok((tag, tag_len))) => match tag & 7 {
                WIRE_VARINT => varint(&head[tag_len..]).map(|read| read.map(|(value, len)| (tag, tag_len + len, value, 0))).unwrap_or(Ok((tag, 0, 0, u64::MAX))),
                WIRE_LEN => varint(&head[tag_len..]).map(|read| read.map(|(len, len_len)| (tag, tag_len + len_len, 0, len))).unwrap_or(Ok((tag, 0, 0, u64::MAX))),
                WIRE_FIXED64 => Ok((tag, tag_len, 0, 8)),
                WIRE_FIXED32 => Ok((tag, tag_len, 0, 4)),
                _ => Err(()),
            },
        };
        let Ok((tag, head_len, value, len)) = parsed else {
            self.step = Step::Done;
            return Some(0);
        };
        if head_len == 0 {
            // The value's varint is cut short.
            return None;
        }
        let (field, wire) = (tag >> 3, tag & 7);
        let value_end = (offset + head_len as u64).checked_add(if wire == WIRE_LEN || wire == WIRE_FIXED32 || wire == WIRE_FIXED64 { len } else { 0 });
        let Some(value_end) = value_end.filter(|value_end| end.is_none_or(|end| *value_end <= end) && field != 0) else {
            self.step = Step::Done;
            return Some(0);
        };
        let body_start = offset + head_len as u64;
        match (message, field, wire) {
            (Message::Model, 7, WIRE_LEN) => self.stack.push((Message::Graph, Some(value_end))),
            (Message::Graph, 5, WIRE_LEN) => self.stack.push((Message::Tensor(None), Some(value_end))),
            (Message::Tensor(_), 2, WIRE_VARINT) => {
                if let Some(top) = self.stack.last_mut() {
                    top.0 = Message::Tensor(Some(value));
                }
            }
            (Message::Tensor(data_type), 9, WIRE_LEN) if len > 0 && self.initializers < MAX_WALKED_TENSORS => {
                let dtype = dtype_of(data_type.unwrap_or(0));
                let dtype = if len % dtype.size() as u64 == 0 { dtype } else { Dtype::U8 };
                let name = format!("initializer {}", self.initializers);
                self.initializers += 1;
                let info = TensorInfo { name, dtype, shape: vec![len / dtype.size() as u64], start: body_start, end: value_end };
                found.push(Discovery::Close { end: body_start });
                found.push(Discovery::Open { start: body_start, tensor: Some(info) });
                self.step = Step::Bytes { remaining: len, tensor: true };
            }
            (_, _, WIRE_LEN | WIRE_FIXED32 | WIRE_FIXED64) => self.step = Step::Bytes { remaining: len, tensor: false },
            _ => {}
        }
        Some(head_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.push(tag);
        out.push(body.len() as u8);
        out.extend_from_slice(body);
    }

    /// A model: ir_version, producer, a graph of one node and two initializers (a float one
    /// and one with no data_type), then an opset import.
    fn model() -> (Vec<u8>, Vec<(u64, u64)>) {
        let mut first = vec![0x08, 0x02, 0x10, 0x01];
        field(&mut first, 0x42, b"w");
        let mut second = vec![0x08, 0x03];
        field(&mut second, 0x42, b"b");
        let mut graph = Vec::new();
        field(&mut graph, 0x0a, b"\x0a\x01x\x12\x01y\x22\x04Relu");
        let mut tensors = Vec::new();
        for (tensor, raw) in [(&mut first, [1u8; 8].as_slice()), (&mut second, [2u8; 3].as_slice())] {
            let raw_at = tensor.len() + 2;
            field(tensor, 0x4a, raw);
            let tensor_at = graph.len() + 2;
            field(&mut graph, 0x2a, tensor);
            tensors.push((tensor_at + raw_at, raw.len()));
        }
        let mut file = vec![0x08, 0x07];
        field(&mut file, 0x12, b"test");
        let graph_at = file.len() + 2;
        field(&mut file, 0x3a, &graph);
        field(&mut file, 0x42, b"\x10\x11");
        let ranges = tensors.into_iter().map(|(at, len)| ((graph_at + at) as u64, (graph_at + at + len) as u64)).collect();
        (file, ranges)
    }

    fn walk(file: &[u8], piece: usize) -> Vec<(u64, u64, Option<Dtype>)> {
        super::super::regions_of(super::super::Walker::onnx(), file, piece)
    }

    #[test]
    fn initializers_raw_data_become_tensor_regions() {
        let (file, ranges) = model();
        assert_eq!(looks_like_onnx(&file), Some(true));
        assert_eq!(looks_like_onnx(&file[..3]), None);
        assert_eq!(looks_like_onnx(b"\x08\x01\x00\x00"), Some(false));
        let tensors: Vec<_> = walk(&file, file.len()).into_iter().filter(|r| r.2.is_some()).collect();
        assert_eq!(tensors, vec![(ranges[0].0, ranges[0].1, Some(Dtype::F32)), (ranges[1].0, ranges[1].1, Some(Dtype::U8))]);
    }

    proptest! {
        #[test]
        fn walks_any_bytes_in_any_pieces(piece in 1usize..50, cut in 0usize..120, tail in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (file, _) = model();
            super::super::check_walker(super::super::Walker::onnx, &file, piece, cut, &tail)?;
            let mut recognised = file[..cut.min(file.len())].to_vec();
            recognised.extend_from_slice(&tail);
            let _ = looks_like_onnx(&recognised);
        }
    }
}
