//! The entries of a safetensors header, read one at a time: each tensor's fields checked into a
//! `TensorInfo` (or refused with the reason), the metadata map taken aside, and the keys given
//! twice resolved as JSON does, by the last value.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use super::visitors::*;
use super::TensorInfo;
use crate::dtype::Dtype;
use crate::error::{CodecError, Result};

/// The key of the header's free-form string map.
pub(super) const METADATA_KEY: &str = "__metadata__";

/// The shortest entry of a valid tensor: `"":{"dtype":"U8","shape":[],"data_offsets":[0,1]}`.
/// A header of H bytes thus holds at most H / this many tensors.
pub(super) const MIN_TENSOR_ENTRY_LEN: usize = 49;

/// Dimensions a shape holds before its reading spills from the stack to the heap.
pub(super) const INLINE_DIMS: usize = 8;

/// How many entries the header's top-level object has, read without building anything, so that
/// the tensor list is allocated once. Zero when the header is not a JSON object: the real read
/// then says why.
pub(super) fn count_entries(header: &[u8]) -> usize {
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<usize, A::Error> {
            let mut count = 0usize;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                count = count.saturating_add(1);
            }
            Ok(count)
        }
    }
    serde_json::Deserializer::from_slice(header).deserialize_map(Count).unwrap_or(0)
}

/// What one top-level entry of the header says, as `read_entries` hands it over.
pub(super) enum Entry<'de> {
    /// The `__metadata__` map, or why it is refused.
    Metadata(std::result::Result<BTreeMap<String, String>, String>),
    /// A tensor's name (borrowed from the header unless it holds escapes), and its description or
    /// why it is refused.
    Tensor(Cow<'de, str>, std::result::Result<TensorParts, &'static str>),
}

/// Reads the header as a JSON object and hands each entry to `on_entry`, in the header's order.
/// `with_metadata` false skips `__metadata__` values unread (after checking them as JSON).
/// Fails only on JSON that is malformed or not an object; refused tensors are handed over.
pub(super) fn read_entries<'de>(header: &'de [u8], with_metadata: bool, on_entry: impl FnMut(Entry<'de>)) -> Result<()> {
    let mut deserializer = serde_json::Deserializer::from_slice(header);
    deserializer
        .deserialize_map(Entries { with_metadata, on_entry })
        .and_then(|()| deserializer.end())
        .map_err(|error| CodecError::BadJson(error.to_string()))
}

/// Indices into `tensors` (in the header's order), sorted by name, one per name: the last one
/// the header gives, since a later entry replaces an earlier one of the same key.
pub(super) fn latest_by_name(tensors: &[TensorInfo]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_unstable_by(|&a, &b| tensors[a].name.cmp(&tensors[b].name).then(b.cmp(&a)));
    order.dedup_by(|later, kept| tensors[*later].name == tensors[*kept].name);
    order
}

/// Drops the tensors that a later entry of the same name replaced.
pub(super) fn keep_only(tensors: &mut Vec<TensorInfo>, latest: Vec<usize>) {
    if latest.len() == tensors.len() {
        return;
    }
    let mut keep = vec![false; tensors.len()];
    for index in latest {
        keep[index] = true;
    }
    let mut kept = keep.into_iter();
    tensors.retain(|_| kept.next().unwrap_or(false));
}

/// Reads the header a second time, when some entry was refused, for the first key (in sorted
/// order) whose last entry is refused, and why. The first read kept only accepted tensors, so a
/// header of refused entries costs no memory for them; `latest` says which accepted entry comes
/// last for each name.
pub(super) fn first_refusal(
    header: &[u8],
    tensors: &[TensorInfo],
    latest: &[usize],
) -> Result<Option<(String, &'static str)>> {
    let mut accepted_before = 0;
    let mut first: Option<(String, &'static str)> = None;
    read_entries(header, false, |entry| {
        let Entry::Tensor(name, outcome) = entry else { return };
        let Err(reason) = outcome else {
            accepted_before += 1;
            return;
        };
        let replaced_later = latest
            .binary_search_by(|&index| tensors[index].name.as_str().cmp(&name))
            .is_ok_and(|position| latest[position] >= accepted_before);
        match &mut first {
            _ if replaced_later => {}
            Some((first_name, first_reason)) if first_name.as_str() == name => *first_reason = reason,
            Some((first_name, _)) if first_name.as_str() < name.as_ref() => {}
            _ => first = Some((name.into_owned(), reason)),
        }
    })?;
    Ok(first)
}

/// A tensor's description, checked, before it has a name.
pub(super) struct TensorParts {
    pub(super) dtype: Dtype,
    pub(super) shape: Vec<u64>,
    pub(super) start: u64,
    pub(super) end: u64,
}

impl TensorParts {
    pub(super) fn named(self, name: String) -> TensorInfo {
        TensorInfo { name, dtype: self.dtype, shape: self.shape, start: self.start, end: self.end }
    }
}

/// The fields of a tensor's entry that the parser reads, as the JSON gave them. `None` is a
/// field that is absent or holds the wrong kind of JSON value; the inner `None`s are a string
/// that names no dtype, a shape holding something other than a `u64`, and an offset that is no
/// `u64`. A non-object entry has no fields.
#[derive(Default)]
pub(super) struct TensorFields {
    pub(super) dtype: Option<Option<Dtype>>,
    pub(super) shape: Option<Option<Vec<u64>>>,
    pub(super) data_offsets: Option<[Option<u64>; 2]>,
}

/// Checks every promise of a tensor's entry, in a fixed order so that the reason is always the
/// same one.
pub(super) fn check_tensor(fields: TensorFields) -> std::result::Result<TensorParts, &'static str> {
    let dtype = fields.dtype.ok_or("missing dtype")?.ok_or("unknown dtype")?;
    let shape = fields.shape.ok_or("missing shape")?.ok_or("shape holds a non-integer")?;
    let [start, end] = fields.data_offsets.ok_or("data_offsets is not a pair")?;
    let start = start.ok_or("bad start offset")?;
    let end = end.ok_or("bad end offset")?;
    if end < start {
        return Err("end offset before start offset");
    }
    let expected = shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, dim| acc.checked_mul(*dim))
        .ok_or("shape overflows")?;
    if expected != end - start {
        return Err("byte span does not match dtype and shape");
    }
    Ok(TensorParts { dtype, shape, start, end })
}

/// Makes a visitor take the kinds of JSON value it names as the wrong kind: the value is read
/// (nested values through [`Skip`], so checked as any JSON value is) and `$wrong` returned.
macro_rules! wrong_kinds {
    ($wrong:expr; $($kind:ident)*) => { $(wrong_kinds!(@ $kind $wrong);)* };
    (@ bool $wrong:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> std::result::Result<Self::Value, E> { Ok($wrong) }
    };
    (@ i64 $wrong:expr) => {
        fn visit_i64<E: de::Error>(self, _: i64) -> std::result::Result<Self::Value, E> { Ok($wrong) }
    };
    (@ u64 $wrong:expr) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> std::result::Result<Self::Value, E> { Ok($wrong) }
    };
    (@ f64 $wrong:expr) => {
        fn visit_f64<E: de::Error>(self, _: f64) -> std::result::Result<Self::Value, E> { Ok($wrong) }
    };
    (@ str $wrong:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> std::result::Result<Self::Value, E> { Ok($wrong) }
    };
    (@ unit $wrong:expr) => {
        fn visit_unit<E: de::Error>(self) -> std::result::Result<Self::Value, E> { Ok($wrong) }
    };
    (@ seq $wrong:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
            while seq.next_element::<Skip>()?.is_some() {}
            Ok($wrong)
        }
    };
    (@ map $wrong:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            while map.next_entry::<Skip, Skip>()?.is_some() {}
            Ok($wrong)
        }
    };
}

/// Declares a type read from any JSON value (`deserialize_any`, so that serde_json's nesting
/// limit counts every level, as it does for a `Value`) by the given visitor.
macro_rules! read_any {
    ($name:ident, $visitor:ident) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                deserializer.deserialize_any($visitor).map($name)
            }
        }
    };
}
