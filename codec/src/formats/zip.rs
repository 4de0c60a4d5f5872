//! PyTorch checkpoints (`torch.save`'s zip files), walked as their bytes stream by: every stored
//! entry named `<archive>/data/<key>` holds one tensor storage, exactly the bytes a safetensors
//! file holds for that tensor, so it becomes a tensor region; local headers, the pickle, small
//! entries, data descriptors and the central directory are gaps.
//!
//! PyTorch writes each entry's size only after its data, in a data descriptor (flag bit 3), so
//! an entry's end is found by scanning for the descriptor's signature followed by the length
//! of the data scanned so far (4 or 8 bytes, zip64). A false match costs savings, never bytes:
//! regions only decide how an object is chunked. The storages' dtype is read from the pickle's
//! storage type names (`torch\nFloatStorage`...) when there is exactly one; otherwise U8.
//!
//! ```text
//! local header: 0 4 "PK\3\4" | 6 2 flags | 8 2 method | 18 4 compressed size | 22 4 size |
//!               26 2 name length n | 28 2 extra length e | 30 name | 30+n extra | data
//! descriptor:   "PK\7\8" | crc32 (4) | compressed size (4, or 8 in zip64) | size (4 or 8)
//! ```
//!
//! Written here rather than taken from a zip crate: those read the central directory at the
//! end of a file, which a streaming upload has not received yet.

use std::collections::{BTreeMap, BTreeSet};

use super::{torch_pickle, Discovery, MAX_WALKED_TENSORS};
use crate::dtype::Dtype;
use crate::layout::TensorInfo;

pub const LOCAL_HEADER: &[u8; 4] = b"PK\x03\x04";
const DESCRIPTOR: &[u8; 4] = b"PK\x07\x08";
const LOCAL_HEADER_LEN: usize = 30;
/// Bytes kept back while scanning: a signature and the longest storage name may straddle two
/// pieces.
const SCAN_OVERLAP: usize = 24;
const FLAG_ENCRYPTED: u16 = 1;
const FLAG_DESCRIPTOR: u16 = 8;
const METHOD_STORED: u16 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Expecting a local header, or the end of the entries.
    Header,
    /// Entry data of known length.
    Data { remaining: u64, tensor: bool },
    /// Stored entry data ended by a data descriptor, started at `start`.
    Scan { start: u64, tensor: bool, pickle: bool },
    /// The descriptor after an entry.
    Skip { remaining: u64 },
    /// Nothing more to find: the rest is one gap.
    Done,
}

/// Where a walk through a PyTorch zip file is (`super::Walker` holds the bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    step: Step,
    /// Storage type names seen in the pickle (a few at most: see `MAX_STORAGE_TYPES`).
    storage_types: BTreeSet<Vec<u8>>,
    /// The element count of each storage the pickle names, by key (`torch_pickle`).
    storage_sizes: BTreeMap<Vec<u8>, u64>,
    dtype: Dtype,
    tensors: u64,
}

/// Storage type names kept from a pickle: more than one already means U8.
const MAX_STORAGE_TYPES: usize = 4;

/// Whether `prefix` starts like a file `torch.save` wrote: a zip whose first entry is the pickle.
/// `None` until the first entry's name is in.
pub fn looks_like_torch(prefix: &[u8]) -> Option<bool> {
    if !prefix.starts_with(LOCAL_HEADER) {
        return Some(false);
    }
    let name_len = usize::from(u16::from_le_bytes(prefix.get(26..28)?.try_into().ok()?));
    let name = prefix.get(LOCAL_HEADER_LEN..LOCAL_HEADER_LEN + name_len)?;
    Some(name.ends_with(b"/data.pkl") || name == b"data.pkl")
}

impl Walk {
    pub(super) fn new() -> Walk {
        Walk { step: Step::Header, storage_types: BTreeSet::new(), storage_sizes: BTreeMap::new(), dtype: Dtype::U8, tensors: 0 }
    }

    /// Nothing more to find: the rest is one gap.
    pub(super) fn stop(&mut self) {
        self.step = Step::Done;
    }

    /// Consumes what it can of `bytes`, which start at file offset `offset`; `None` when it
    /// needs more bytes.
    pub(super) fn advance(&mut self, bytes: &[u8], offset: u64, found: &mut Vec<Discovery>) -> Option<usize> {
        match self.step.clone() {
            Step::Done => (!bytes.is_empty()).then_some(bytes.len()),
            Step::Header => self.header(bytes, offset, found),
            Step::Data { remaining, tensor } => {
                if remaining == 0 {
                    self.end_entry(offset, tensor, 0, found);
                    return Some(0);
                }
                let take = remaining.min(bytes.len() as u64);
                if take == 0 {
                    return None;
                }
                self.step = Step::Data { remaining: remaining - take, tensor };
                Some(take as usize)
            }
            Step::Skip { remaining } => {
                let take = remaining.min(bytes.len() as u64);
                if remaining > 0 && take == 0 {
                    return None;
                }
                self.step = if remaining == take { Step::Header } else { Step::Skip { remaining: remaining - take } };
                Some(take as usize)
            }
            Step::Scan { start, tensor, pickle } => self.scan(bytes, offset, start, tensor, pickle, found),
        }
    }

    fn header(&mut self, bytes: &[u8], offset: u64, found: &mut Vec<Discovery>) -> Option<usize> {
        if bytes.len() < 4 {
            return None;
        }
        if !bytes.starts_with(LOCAL_HEADER) {
            self.step = Step::Done;
            return Some(0);
        }
        let fixed = bytes.get(..LOCAL_HEADER_LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        let (flags, method, size) = (u16_at(6), u16_at(8), u32_at(18));
        let header_len = LOCAL_HEADER_LEN + usize::from(u16_at(26)) + usize::from(u16_at(28));
        let header = bytes.get(..header_len)?;
        let name = &header[LOCAL_HEADER_LEN..LOCAL_HEADER_LEN + usize::from(u16_at(26))];
        let data_start = offset + header_len as u64;
        let stored = method == METHOD_STORED;
        let described = flags & FLAG_DESCRIPTOR != 0;
        if flags & FLAG_ENCRYPTED != 0 || (described && !stored) || (!described && size == u32::MAX) {
            // Encrypted, compressed with no length up front, or zip64 sizes in the extra field:
            // the rest is one gap.
            self.step = Step::Done;
            return Some(header_len);
        }
        let pickle = name.ends_with(b"data.pkl");
        let tensor = stored && is_storage(name) && (described || size > 0) && self.tensors < MAX_WALKED_TENSORS;
        if tensor {
            self.tensors += 1;
            found.push(Discovery::Close { end: data_start });
            // The end is known up front, or from the element count the pickle gave the storage
            // when a descriptor follows the data (a wrong count only changes how it is cut).
            let key = &name[name.iter().rposition(|b| *b == b'/').map_or(0, |slash| slash + 1)..];
            let counted = self.storage_sizes.get(key).filter(|_| self.dtype != Dtype::U8);
            let end = match (described, counted) {
                (false, _) => data_start + u64::from(size),
                (true, Some(count)) => count.checked_mul(self.dtype.size() as u64).and_then(|len| data_start.checked_add(len)).unwrap_or(u64::MAX),
                (true, None) => u64::MAX,
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let shape = if end == u64::MAX { Vec::new() } else { vec![(end - data_start) / self.dtype.size() as u64] };
            let info = TensorInfo { name, dtype: self.dtype, shape, start: data_start, end };
            found.push(Discovery::Open { start: data_start, tensor: Some(info) });
        }
        self.step = if described { Step::Scan { start: data_start, tensor, pickle } } else { Step::Data { remaining: u64::from(size), tensor } };
        Some(header_len)
    }

    fn scan(&mut self, bytes: &[u8], offset: u64, start: u64, tensor: bool, pickle: bool, found: &mut Vec<Discovery>) -> Option<usize> {
        let mut from = 0;
        // Where a signature starts whose sizes have not arrived yet.
        let mut waiting = None;
        while let Some(index) = memchr::memmem::find(&bytes[from..], DESCRIPTOR).map(|i| i + from) {
            let length = offset + index as u64 - start;
            let size_at = |len: usize| bytes.get(index + 8..index + 8 + len);
            let Some(short) = size_at(4) else {
                waiting = Some(index);
                break;
            };
            let descriptor_len = if u64::from(u32::from_le_bytes([short[0], short[1], short[2], short[3]])) == length {
                16
            } else {
                match size_at(8) {
                    Some(long) if long.iter().rev().fold(0u64, |value, byte| value << 8 | u64::from(*byte)) == length => 24,
                    Some(_) => {
                        from = index + 1;
                        continue;
                    }
                    None => {
                        waiting = Some(index);
                        break;
                    }
                }
            };
            if pickle {
                self.note_storages(&bytes[..index]);
            }
            self.end_entry(offset + index as u64, tensor, descriptor_len, found);
            return Some(index);
        }
        // No descriptor yet: keep back what may start one (or a storage type name; names are
        // looked for in all the bytes there are, so one cut by the overlap is seen next time).
        let overlap = if pickle { torch_pickle::LONGEST_TUPLE } else { SCAN_OVERLAP };
        let take = waiting.unwrap_or(bytes.len().saturating_sub(overlap));
        if pickle {
            self.note_storages(bytes);
        }
        (take > 0).then_some(take)
    }

    /// Ends an entry's data at `end`, with a descriptor of `descriptor_len` bytes after it.
    fn end_entry(&mut self, end: u64, tensor: bool, descriptor_len: u64, found: &mut Vec<Discovery>) {
        if tensor {
            found.push(Discovery::Close { end });
            found.push(Discovery::Open { start: end, tensor: None });
        }
        if self.dtype == Dtype::U8 && self.storage_types.len() == 1 {
            self.dtype = self.storage_types.first().and_then(|name| storage_dtype(name)).unwrap_or(Dtype::U8);
        }
        self.step = Step::Skip { remaining: descriptor_len };
    }

    /// Notes the storage types and sizes named in pickle bytes (seen again when a scan repeats them).
    fn note_storages(&mut self, pickle: &[u8]) {
        for (key, count) in torch_pickle::storage_sizes(pickle) {
            if self.storage_sizes.len() < MAX_WALKED_TENSORS as usize || self.storage_sizes.contains_key(&key) {
                self.storage_sizes.insert(key, count);
            }
        }
        let mut rest = pickle;
        while let Some(index) = memchr::memmem::find(rest, b"torch\n") {
            let name = &rest[index + 6..];
            let end = name.iter().position(|b| *b == b'\n').unwrap_or(name.len()).min(SCAN_OVERLAP);
            if name[..end].ends_with(b"Storage") && self.storage_types.len() < MAX_STORAGE_TYPES {
                self.storage_types.insert(name[..end].to_vec());
            }
            rest = &rest[index + 6..];
        }
    }
}

/// `<archive>/data/<digits>`: a tensor storage.
fn is_storage(name: &[u8]) -> bool {
    let Some(slash) = name.iter().rposition(|b| *b == b'/') else { return false };
    let (dir, key) = (&name[..slash], &name[slash + 1..]);
    (dir == b"data" || dir.ends_with(b"/data")) && !key.is_empty() && key.iter().all(u8::is_ascii_digit)
}

fn storage_dtype(name: &[u8]) -> Option<Dtype> {
    Some(match name {
        b"FloatStorage" => Dtype::F32,
        b"HalfStorage" => Dtype::F16,
        b"BFloat16Storage" => Dtype::BF16,
        b"DoubleStorage" => Dtype::F64,
        b"LongStorage" => Dtype::I64,
        b"IntStorage" => Dtype::I32,
        b"ShortStorage" => Dtype::I16,
        b"CharStorage" => Dtype::I8,
        b"ByteStorage" | b"BoolStorage" => Dtype::U8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A stored entry with a data descriptor, as `torch.save` writes them.
    fn entry(out: &mut Vec<u8>, name: &str, data: &[u8]) -> std::ops::Range<u64> {
        out.extend_from_slice(LOCAL_HEADER);
        out.extend_from_slice(&[0, 0, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&4u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"FB\0\0");
        let start = out.len() as u64;
        out.extend_from_slice(data);
        out.extend_from_slice(DESCRIPTOR);
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        start..start + data.len() as u64
    }

    /// A checkpoint of two float storages (the second holding a false descriptor signature)
    /// and small entries, then a central directory.
    fn checkpoint() -> (Vec<u8>, Vec<std::ops::Range<u64>>) {
        let mut file = Vec::new();
        entry(&mut file, "model/data.pkl", b"\x80\x02ctorch\nFloatStorage\nq\x01.");
        let first = entry(&mut file, "model/data/0", &[7; 1000]);
        entry(&mut file, "model/version", b"3\n");
        let mut tricky = vec![9u8; 64];
        tricky[10..14].copy_from_slice(DESCRIPTOR);
        let second = entry(&mut file, "model/data/1", &tricky);
        file.extend_from_slice(b"PK\x01\x02 central directory");
        (file, vec![first, second])
    }

    fn walk(file: &[u8], piece: usize) -> Vec<(u64, u64, Option<Dtype>)> {
        super::super::regions_of(super::super::Walker::torch(), file, piece)
    }

    #[test]
    fn storages_become_float_tensor_regions() {
        let (file, tensors) = checkpoint();
        assert_eq!(looks_like_torch(&file), Some(true));
        let regions = walk(&file, file.len());
        let found: Vec<_> = regions.iter().filter(|r| r.2.is_some()).map(|r| (r.0..r.1, r.2)).collect();
        assert_eq!(found, tensors.into_iter().map(|range| (range, Some(Dtype::F32))).collect::<Vec<_>>());
        assert_eq!(regions.last().unwrap().1, file.len() as u64);
    }

    proptest! {
        #[test]
        fn walks_any_bytes_in_any_pieces(piece in 1usize..200, cut in 0usize..600, tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            super::super::check_walker(super::super::Walker::torch, &checkpoint().0, piece, cut, &tail)?;
        }
    }
}
