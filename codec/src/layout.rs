//! The safetensors layout: an 8-byte little-endian header length, a JSON header, then the data
//! section. Parsing checks every promise the header makes and never panics on hostile input.
//!
//! The JSON header is read by serde visitors straight into the tensor list, never into a
//! `serde_json::Value`, which costs ten to twenty-five times the header (issue 12: 111 MB of
//! heap for a 10 MB header of 100,000 tensors). Keys are borrowed from the header while they are
//! compared, a tensor's fields land in a fixed-size record, a shape is gathered on the stack and
//! allocated once, values the parser ignores are read (so checked as JSON, as before) and
//! dropped, and refused tensors are not kept: the first read keeps the accepted ones, and only
//! when some entry was refused does a second read find the key to name in the error.
//!
//! What parsing a header of H bytes allocates at its peak is thus the `Layout` it returns plus a
//! `usize` per tensor: 1.23 × H for that 10 MB header (`tests/header_memory.rs` holds it under
//! 2 × H). For hostile headers the `Layout` is the bound: the tensor list takes 72 bytes per
//! shortest tensor entry of 49 bytes (1.5 × H); a shape 8 bytes per dimension of at least 2 bytes
//! (4 × H, 8 × H while the `Vec` of a shape of millions of dimensions grows); the metadata map a
//! B-tree entry per key (9 × H for a map of 200,000 tiny keys of empty strings).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::dtype::Dtype;
use crate::error::{CodecError, Result};

/// Headers over this size are rejected, as the safetensors spec does.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Bytes before the JSON header: its length as a little-endian u64.
pub const PREFIX_LEN: usize = 8;

/// One tensor of the header; `start` and `end` are offsets into the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
}

impl TensorInfo {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The dtype and shape as one string, `DTYPE:d0xd1x...` (`F32:` for a scalar): a tensor is
    /// a delta candidate only for tensors of the same signature (docs/format.md, the index).
    pub fn signature(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(u64::to_string).collect();
        format!("{}:{}", self.dtype.name(), dims.join("x"))
    }
}

/// The parsed header of a safetensors file. Tensors are sorted by their start offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub header_len: u64,
    pub tensors: Vec<TensorInfo>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A run of the data section: a tensor's bytes, or bytes no tensor claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    Tensor(usize),
    Gap,
}

/// A contiguous piece of the data section, in data-section offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
}

impl Layout {
    /// File offset where the data section begins.
    pub fn data_start(&self) -> u64 {
        PREFIX_LEN as u64 + self.header_len
    }

    /// Data-section offset just past the last tensor.
    pub fn data_end(&self) -> u64 {
        self.tensors.iter().map(|t| t.end).max().unwrap_or(0)
    }

    /// The data section up to [`Layout::data_end`] as tensors and the gaps between them, in order.
    pub fn regions(&self) -> Vec<Region> {
        let mut regions = Vec::with_capacity(self.tensors.len() * 2);
        let mut cursor = 0;
        for (index, tensor) in self.tensors.iter().enumerate() {
            if tensor.is_empty() {
                continue;
            }
            if tensor.start > cursor {
                regions.push(Region { start: cursor, end: tensor.start, kind: RegionKind::Gap });
            }
            regions.push(Region { start: tensor.start, end: tensor.end, kind: RegionKind::Tensor(index) });
            cursor = tensor.end;
        }
        regions
    }
}

/// Reads the header length from the first 8 bytes of a file, refusing lengths over the limit.
pub fn read_header_len(prefix: &[u8]) -> Result<u64> {
    let bytes: [u8; PREFIX_LEN] = prefix
        .get(..PREFIX_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(CodecError::TooShort)?;
    let header_len = u64::from_le_bytes(bytes);
    if header_len > MAX_HEADER_LEN {
        return Err(CodecError::HeaderTooLarge(header_len, MAX_HEADER_LEN));
    }
    Ok(header_len)
}

/// Parses a whole file held in memory.
pub fn parse_file(file: &[u8]) -> Result<Layout> {
    let header_len = read_header_len(file)?;
    let header_end = (PREFIX_LEN as u64)
        .checked_add(header_len)
        .filter(|end| *end <= file.len() as u64)
        .ok_or(CodecError::HeaderPastEnd { header_len, file_len: file.len() as u64 })?;
    let data_len = file.len() as u64 - header_end;
    parse_header(&file[PREFIX_LEN..header_end as usize], Some(data_len))
}

/// Parses the JSON header. `data_len`, when known, is the size of the data section; every
/// tensor must then end within it.
///
/// The header is read by serde visitors straight into the tensor list (see the module comment):
/// peak memory is the `Layout` it returns plus a few bytes per tensor, never a tree of the JSON.
/// A key given twice counts once, with its last value, as in any JSON map. When several tensors
/// are refused, the error names the first refused key in sorted order.
pub fn parse_header(header: &[u8], data_len: Option<u64>) -> Result<Layout> {
    let capacity = count_entries(header).min(header.len() / MIN_TENSOR_ENTRY_LEN);
    let mut tensors = Vec::with_capacity(capacity);
    let mut metadata = None;
    let mut refused_any = false;
    read_entries(header, true, |entry| match entry {
        Entry::Metadata(outcome) => metadata = Some(outcome),
        Entry::Tensor(name, Ok(parts)) => tensors.push(parts.named(name.into_owned())),
        Entry::Tensor(_, Err(_)) => refused_any = true,
    })?;
    let latest = latest_by_name(&tensors);
    let refusal = if refused_any { first_refusal(header, &tensors, &latest)? } else { None };
    let metadata = match (metadata, refusal) {
        (Some(Err(message)), refusal)
            if refusal.as_ref().is_none_or(|(name, _)| METADATA_KEY < name.as_str()) =>
        {
            return Err(CodecError::BadJson(message));
        }
        (_, Some((name, reason))) => return Err(CodecError::BadTensor { name, reason: reason.to_owned() }),
        (metadata, None) => metadata.transpose().map_err(CodecError::BadJson)?,
    };
    keep_only(&mut tensors, latest);
    tensors.sort_unstable_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    check_no_overlap(&tensors)?;
    if let Some(data_len) = data_len {
        if let Some(tensor) = tensors.iter().find(|t| t.end > data_len) {
            return Err(CodecError::SpanPastEnd { name: tensor.name.clone(), end: tensor.end, data_len });
        }
    }
    Ok(Layout { header_len: header.len() as u64, tensors, metadata })
}

/// The key of the header's free-form string map.
const METADATA_KEY: &str = "__metadata__";

/// The shortest entry of a valid tensor: `"":{"dtype":"U8","shape":[],"data_offsets":[0,1]}`.
/// A header of H bytes thus holds at most H / this many tensors.
const MIN_TENSOR_ENTRY_LEN: usize = 49;

/// Dimensions a shape holds before its reading spills from the stack to the heap.
const INLINE_DIMS: usize = 8;

/// How many entries the header's top-level object has, read without building anything, so that
/// the tensor list is allocated once. Zero when the header is not a JSON object: the real read
/// then says why.
fn count_entries(header: &[u8]) -> usize {
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
enum Entry<'de> {
    /// The `__metadata__` map, or why it is refused.
    Metadata(std::result::Result<BTreeMap<String, String>, String>),
    /// A tensor's name (borrowed from the header unless it holds escapes), and its description or
    /// why it is refused.
    Tensor(Cow<'de, str>, std::result::Result<TensorParts, &'static str>),
}

/// Reads the header as a JSON object and hands each entry to `on_entry`, in the header's order.
/// `with_metadata` false skips `__metadata__` values unread (after checking them as JSON).
/// Fails only on JSON that is malformed or not an object; refused tensors are handed over.
fn read_entries<'de>(header: &'de [u8], with_metadata: bool, on_entry: impl FnMut(Entry<'de>)) -> Result<()> {
    let mut deserializer = serde_json::Deserializer::from_slice(header);
    deserializer
        .deserialize_map(Entries { with_metadata, on_entry })
        .and_then(|()| deserializer.end())
        .map_err(|error| CodecError::BadJson(error.to_string()))
}

/// Indices into `tensors` (in the header's order), sorted by name, one per name: the last one
/// the header gives, since a later entry replaces an earlier one of the same key.
fn latest_by_name(tensors: &[TensorInfo]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_unstable_by(|&a, &b| tensors[a].name.cmp(&tensors[b].name).then(b.cmp(&a)));
    order.dedup_by(|later, kept| tensors[*later].name == tensors[*kept].name);
    order
}

/// Drops the tensors that a later entry of the same name replaced.
fn keep_only(tensors: &mut Vec<TensorInfo>, latest: Vec<usize>) {
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
fn first_refusal(
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
struct TensorParts {
    dtype: Dtype,
    shape: Vec<u64>,
    start: u64,
    end: u64,
}

impl TensorParts {
    fn named(self, name: String) -> TensorInfo {
        TensorInfo { name, dtype: self.dtype, shape: self.shape, start: self.start, end: self.end }
    }
}

/// The fields of a tensor's entry that the parser reads, as the JSON gave them. `None` is a
/// field that is absent or holds the wrong kind of JSON value; the inner `None`s are a string
/// that names no dtype, a shape holding something other than a `u64`, and an offset that is no
/// `u64`. A non-object entry has no fields.
#[derive(Default)]
struct TensorFields {
    dtype: Option<Option<Dtype>>,
    shape: Option<Option<Vec<u64>>>,
    data_offsets: Option<[Option<u64>; 2]>,
}

/// Checks every promise of a tensor's entry, in a fixed order so that the reason is always the
/// same one.
fn check_tensor(fields: TensorFields) -> std::result::Result<TensorParts, &'static str> {
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

/// The header's top-level object: hands each entry over as it is read.
struct Entries<F> {
    with_metadata: bool,
    on_entry: F,
}

impl<'de, F: FnMut(Entry<'de>)> Visitor<'de> for Entries<F> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> std::result::Result<(), A::Error> {
        while let Some(TopKey(name)) = map.next_key()? {
            if name == METADATA_KEY {
                if self.with_metadata {
                    let Metadata(outcome) = map.next_value()?;
                    (self.on_entry)(Entry::Metadata(outcome));
                } else {
                    map.next_value::<Skip>()?;
                }
            } else {
                let Tensor(fields) = map.next_value()?;
                (self.on_entry)(Entry::Tensor(name, check_tensor(fields)));
            }
        }
        Ok(())
    }
}

/// A top-level key, borrowed from the header unless it holds escapes.
struct TopKey<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for TopKey<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Borrowed(text))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
                Ok(Cow::Owned(text.to_owned()))
            }
        }
        deserializer.deserialize_str(KeyVisitor).map(TopKey)
    }
}

/// A tensor's entry, any JSON value.
struct Tensor(TensorFields);
read_any!(Tensor, TensorVisitor);

struct TensorVisitor;

impl<'de> Visitor<'de> for TensorVisitor {
    type Value = TensorFields;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a tensor")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<TensorFields, A::Error> {
        let mut fields = TensorFields::default();
        while let Some(FieldName(field)) = map.next_key()? {
            match field {
                Some(Field::Dtype) => fields.dtype = map.next_value::<DtypeValue>()?.0,
                Some(Field::Shape) => fields.shape = map.next_value::<ShapeValue>()?.0,
                Some(Field::DataOffsets) => fields.data_offsets = map.next_value::<OffsetsValue>()?.0,
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(fields)
    }

    wrong_kinds!(TensorFields::default(); bool i64 u64 f64 str unit seq);
}

/// The fields of a tensor's entry the parser reads.
enum Field {
    Dtype,
    Shape,
    DataOffsets,
}

/// A key of a tensor's entry; `None` for the keys the parser ignores.
struct FieldName(Option<Field>);

impl<'de> Deserialize<'de> for FieldName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Option<Field>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
                Ok(match text {
                    "dtype" => Some(Field::Dtype),
                    "shape" => Some(Field::Shape),
                    "data_offsets" => Some(Field::DataOffsets),
                    _ => None,
                })
            }
        }
        deserializer.deserialize_str(FieldVisitor).map(FieldName)
    }
}

/// A `dtype` value: `Some` for a string (`Some(None)` when it names no dtype).
struct DtypeValue(Option<Option<Dtype>>);
read_any!(DtypeValue, DtypeVisitor);

struct DtypeVisitor;

impl<'de> Visitor<'de> for DtypeVisitor {
    type Value = Option<Option<Dtype>>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a dtype")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some(Dtype::parse(text)))
    }

    wrong_kinds!(None; bool i64 u64 f64 unit seq map);
}

/// A `shape` value: `Some` for an array (`Some(None)` when it holds something other than a `u64`).
struct ShapeValue(Option<Option<Vec<u64>>>);
read_any!(ShapeValue, ShapeVisitor);

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Option<Option<Vec<u64>>>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a shape")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let mut dims = Some(Dims::default());
        while let Some(U64Value(dim)) = seq.next_element()? {
            match (dims.as_mut(), dim) {
                (Some(read), Some(dim)) => read.push(dim),
                _ => dims = None,
            }
        }
        Ok(Some(dims.map(Dims::into_vec)))
    }

    wrong_kinds!(None; bool i64 u64 f64 str unit map);
}

/// A shape's dimensions as they are read: the first few on the stack, so that the `Vec` a tensor
/// keeps is allocated once, at its length.
#[derive(Default)]
struct Dims {
    inline: [u64; INLINE_DIMS],
    inline_len: usize,
    spilled: Vec<u64>,
}

impl Dims {
    fn push(&mut self, dim: u64) {
        match self.inline.get_mut(self.inline_len) {
            Some(slot) if self.spilled.is_empty() => {
                *slot = dim;
                self.inline_len += 1;
            }
            _ => {
                if self.spilled.is_empty() {
                    self.spilled.reserve(2 * INLINE_DIMS);
                    self.spilled.extend_from_slice(&self.inline);
                }
                self.spilled.push(dim);
            }
        }
    }

    fn into_vec(mut self) -> Vec<u64> {
        if self.spilled.is_empty() {
            self.inline[..self.inline_len].to_vec()
        } else {
            self.spilled.shrink_to_fit();
            self.spilled
        }
    }
}

/// A `data_offsets` value: `Some` for an array of exactly two values (each `None` unless a `u64`).
struct OffsetsValue(Option<[Option<u64>; 2]>);
read_any!(OffsetsValue, OffsetsVisitor);

struct OffsetsVisitor;

impl<'de> Visitor<'de> for OffsetsVisitor {
    type Value = Option<[Option<u64>; 2]>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a pair of offsets")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let Some(U64Value(start)) = seq.next_element()? else { return Ok(None) };
        let Some(U64Value(end)) = seq.next_element()? else { return Ok(None) };
        let mut more = false;
        while seq.next_element::<Skip>()?.is_some() {
            more = true;
        }
        Ok((!more).then_some([start, end]))
    }

    wrong_kinds!(None; bool i64 u64 f64 str unit map);
}

/// A JSON value that should be a `u64`: `None` when it is anything else (a negative number, a
/// fraction, an integer too large for a `u64`, or not a number).
struct U64Value(Option<u64>);
read_any!(U64Value, U64Visitor);

struct U64Visitor;

impl<'de> Visitor<'de> for U64Visitor {
    type Value = Option<u64>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an unsigned integer")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> std::result::Result<Self::Value, E> {
        Ok(Some(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> std::result::Result<Self::Value, E> {
        Ok(u64::try_from(value).ok())
    }

    wrong_kinds!(None; bool f64 str unit seq map);
}

/// The `__metadata__` value: a map of strings, or why it is refused (the first key, in sorted
/// order, whose last value is not a string).
struct Metadata(std::result::Result<BTreeMap<String, String>, String>);
read_any!(Metadata, MetadataVisitor);

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = std::result::Result<BTreeMap<String, String>, String>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a map of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut strings = BTreeMap::new();
        let mut not_strings = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            match map.next_value::<StringValue>()?.0 {
                Some(text) => {
                    not_strings.remove(&key);
                    strings.insert(key, text);
                }
                None => {
                    strings.remove(&key);
                    not_strings.insert(key);
                }
            }
        }
        Ok(match not_strings.pop_first() {
            Some(key) => Err(format!("__metadata__ value of {key:?} is not a string")),
            None => Ok(strings),
        })
    }

    wrong_kinds!(Err("__metadata__ is not an object".to_owned()); bool i64 u64 f64 str unit seq);
}

/// A value of the metadata map: `None` unless a string.
struct StringValue(Option<String>);
read_any!(StringValue, StringVisitor);

struct StringVisitor;

impl<'de> Visitor<'de> for StringVisitor {
    type Value = Option<String>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some(text.to_owned()))
    }

    wrong_kinds!(None; bool i64 u64 f64 unit seq map);
}

/// Any JSON value, read as serde_json reads every value and dropped. Unlike `IgnoredAny`, which
/// skips without building anything but also without serde_json's nesting limit and some of its
/// checks of strings and numbers, it refuses exactly what a `serde_json::Value` refuses, at
/// no more cost than `IgnoredAny`: nothing is kept.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor).map(|()| Skip)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    wrong_kinds!((); bool i64 u64 f64 str unit seq map);
}

/// Tensors must be sorted by start; empty tensors claim no bytes and never overlap.
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut previous: Option<&TensorInfo> = None;
    for tensor in tensors.iter().filter(|t| !t.is_empty()) {
        if let Some(previous) = previous.filter(|p| p.end > tensor.start) {
            return Err(CodecError::Overlap { first: previous.name.clone(), second: tensor.name.clone() });
        }
        previous = Some(tensor);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 7);
        bytes
    }

    #[test]
    fn parses_unsorted_tensors_gaps_and_metadata() {
        let header = r#"{"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},
            "__metadata__":{"format":"pt"},
            "a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
            "e":{"dtype":"F8_E4M3","shape":[0],"data_offsets":[4,4]}}"#;
        let layout = parse_file(&file(header, 12)).unwrap();
        let names: Vec<_> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "e", "b"]);
        assert_eq!(layout.metadata.unwrap()["format"], "pt");
        let regions = parse_file(&file(header, 12)).unwrap().regions();
        let kinds: Vec<_> = regions.iter().map(|r| (r.start, r.end, r.kind)).collect();
        assert_eq!(
            kinds,
            [(0, 4, RegionKind::Tensor(0)), (4, 8, RegionKind::Gap), (8, 12, RegionKind::Tensor(2))]
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        let cases: &[(&str, usize)] = &[
            ("{", 0),
            ("[]", 0),
            (r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, 8),
            (r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 3),
            (r#"{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, 4),
            (r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#, 5),
            (r#"{"a":{"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,4]}}"#, 4),
            (r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}}"#, 4),
            (r#"{"__metadata__":{"a":1}}"#, 0),
        ];
        for (header, data_len) in cases {
            assert!(parse_file(&file(header, *data_len)).is_err(), "accepted {header}");
        }
    }

    #[test]
    fn rejects_lying_lengths() {
        assert_eq!(parse_file(&[1, 2, 3]), Err(CodecError::TooShort));
        let huge = u64::MAX.to_le_bytes();
        assert!(matches!(parse_file(&huge), Err(CodecError::HeaderTooLarge(..))));
        let mut past_end = 50u64.to_le_bytes().to_vec();
        past_end.extend_from_slice(b"{}");
        assert!(matches!(parse_file(&past_end), Err(CodecError::HeaderPastEnd { .. })));
    }

    #[test]
    fn rejects_non_utf8_and_deep_nesting() {
        assert!(parse_file(&file("{\"\u{0}\":1}", 0)).is_err());
        let mut bad = file("{}", 0);
        bad[8] = 0xff;
        assert!(parse_file(&bad).is_err());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_file(&file(&deep, 0)).is_err());
    }

    /// The parser as it was before issue 12: a `serde_json::Value` of the whole header, then
    /// checks over it. The streaming parser must accept and refuse exactly what it did, with the
    /// same error.
    mod reference {
        use std::collections::BTreeMap;

        use serde_json::Value;

        use super::super::{check_no_overlap, Layout, TensorInfo};
        use crate::dtype::Dtype;
        use crate::error::{CodecError, Result};

        pub fn parse_header(header: &[u8], data_len: Option<u64>) -> Result<Layout> {
            let json: serde_json::Map<String, Value> =
                serde_json::from_slice(header).map_err(|error| CodecError::BadJson(error.to_string()))?;
            let mut tensors = Vec::with_capacity(json.len());
            let mut metadata = None;
            for (name, value) in json {
                if name == "__metadata__" {
                    metadata = Some(parse_metadata(value)?);
                } else {
                    tensors.push(parse_tensor(name, &value)?);
                }
            }
            tensors.sort_by_key(|a| (a.start, a.end));
            check_no_overlap(&tensors)?;
            if let Some(data_len) = data_len {
                if let Some(tensor) = tensors.iter().find(|t| t.end > data_len) {
                    return Err(CodecError::SpanPastEnd { name: tensor.name.clone(), end: tensor.end, data_len });
                }
            }
            Ok(Layout { header_len: header.len() as u64, tensors, metadata })
        }

        fn parse_metadata(value: Value) -> Result<BTreeMap<String, String>> {
            let Value::Object(map) = value else {
                return Err(CodecError::BadJson("__metadata__ is not an object".into()));
            };
            map.into_iter()
                .map(|(key, value)| match value {
                    Value::String(text) => Ok((key, text)),
                    _ => Err(CodecError::BadJson(format!("__metadata__ value of {key:?} is not a string"))),
                })
                .collect()
        }

        fn parse_tensor(name: String, value: &Value) -> Result<TensorInfo> {
            let bad = |reason: &str| CodecError::BadTensor { name: name.clone(), reason: reason.to_owned() };
            let dtype = value.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("missing dtype"))?;
            let dtype = Dtype::parse(dtype).ok_or_else(|| bad("unknown dtype"))?;
            let shape = value
                .get("shape")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("missing shape"))?
                .iter()
                .map(|dim| dim.as_u64().ok_or_else(|| bad("shape holds a non-integer")))
                .collect::<Result<Vec<u64>>>()?;
            let offsets = value
                .get("data_offsets")
                .and_then(Value::as_array)
                .filter(|offsets| offsets.len() == 2)
                .ok_or_else(|| bad("data_offsets is not a pair"))?;
            let start = offsets[0].as_u64().ok_or_else(|| bad("bad start offset"))?;
            let end = offsets[1].as_u64().ok_or_else(|| bad("bad end offset"))?;
            if end < start {
                return Err(bad("end offset before start offset"));
            }
            let expected = shape
                .iter()
                .try_fold(dtype.size() as u64, |acc, dim| acc.checked_mul(*dim))
                .ok_or_else(|| bad("shape overflows"))?;
            if expected != end - start {
                return Err(bad("byte span does not match dtype and shape"));
            }
            Ok(TensorInfo { name, dtype, shape, start, end })
        }
    }

    /// Parses with both parsers, asserts they agree, and returns the result.
    fn parse_both(header: &str, data_len: Option<u64>) -> Result<Layout> {
        let parsed = parse_header(header.as_bytes(), data_len);
        assert_eq!(parsed, reference::parse_header(header.as_bytes(), data_len), "header {header}");
        parsed
    }

    const VALID_A: &str = r#"{"dtype":"U8","shape":[4],"data_offsets":[0,4]}"#;

    #[test]
    fn duplicate_keys_count_once_with_their_last_value() {
        let accepted = [
            format!(r#"{{"a":0,"a":{VALID_A}}}"#),
            format!(
                r#"{{"a":{{"dtype":"F33"}},"b":1,"a":{VALID_A},"b":{{"dtype":"U8","shape":[],"data_offsets":[4,5]}}}}"#
            ),
            format!(r#"{{"a":{{"dtype":"U8","shape":[1],"data_offsets":[0,1]}},"\u0061":{VALID_A}}}"#),
            r#"{"__metadata__":1,"__metadata__":{"k":2,"k":"v"}}"#.to_owned(),
            r#"{"a":{"dtype":1,"dtype":"U8","shape":"x","shape":[4],"data_offsets":[0,4]}}"#.to_owned(),
        ];
        for header in &accepted {
            parse_both(header, Some(8)).unwrap();
        }
        let layout = parse_both(&accepted[0], None).unwrap();
        assert_eq!((layout.tensors.len(), layout.tensors[0].end), (1, 4));
        assert_eq!(parse_both(&accepted[3], None).unwrap().metadata.unwrap()["k"], "v");
        let refused = [
            (format!(r#"{{"a":{VALID_A},"a":0}}"#), "a", "missing dtype"),
            (format!(r#"{{"a":{VALID_A},"a":0,"a":{{"dtype":"F33"}}}}"#), "a", "unknown dtype"),
            (format!(r#"{{"a":0,"a":{VALID_A},"a":{{"dtype":"U8"}},"c":0}}"#), "a", "missing shape"),
        ];
        for (header, name, reason) in &refused {
            let error = CodecError::BadTensor { name: (*name).to_owned(), reason: (*reason).to_owned() };
            assert_eq!(parse_both(header, None), Err(error));
        }
        let metadata = r#"{"__metadata__":{"k":"v","k":[],"j":"w"}}"#;
        assert_eq!(
            parse_both(metadata, None),
            Err(CodecError::BadJson(r#"__metadata__ value of "k" is not a string"#.to_owned()))
        );
    }

    #[test]
    fn errors_name_the_first_refused_key_in_sorted_order() {
        let header = format!(r#"{{"b":0,"a":{VALID_A},"__metadata__":[],"Z":{{"dtype":"F33"}},"y":{VALID_A}}}"#);
        let expected = CodecError::BadTensor { name: "Z".to_owned(), reason: "unknown dtype".to_owned() };
        assert_eq!(parse_both(&header, None), Err(expected));
        let header = format!(r#"{{"b":0,"a":{VALID_A},"__metadata__":[]}}"#);
        assert_eq!(parse_both(&header, None), Err(CodecError::BadJson("__metadata__ is not an object".to_owned())));
        // A JSON error anywhere wins over any refused tensor, as before.
        assert!(matches!(parse_both(r#"{"a":0,"b":{"#, None), Err(CodecError::BadJson(_))));
    }

    #[test]
    fn ignored_fields_are_checked_as_json_values() {
        let nested = |depth: usize| {
            format!(
                r#"{{"a":{{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":{}{}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        parse_both(&nested(100), None).unwrap();
        assert!(parse_both(&nested(200), None).is_err());
        for bad in [r#""\ud800""#, "1e400", r#""\x""#] {
            let header = format!(r#"{{"a":{{"dtype":"U8","shape":[4],"data_offsets":[0,4],"x":{bad}}}}}"#);
            assert!(parse_both(&header, None).is_err(), "accepted {header}");
        }
    }

    #[test]
    fn numbers_that_are_no_u64_are_refused_as_before() {
        for dim in ["-1", "-0", "1.0", "1e0", "18446744073709551616", "\"4\"", "null", "[4]"] {
            let header = format!(r#"{{"a":{{"dtype":"U8","shape":[{dim}],"data_offsets":[0,4]}}}}"#);
            assert!(parse_both(&header, None).is_err(), "accepted {header}");
        }
        let header = r#"{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}}"#;
        parse_both(header, None).unwrap();
    }

    #[test]
    fn long_shapes_spill_from_the_stack() {
        let ones = vec!["1"; 3 * INLINE_DIMS].join(",");
        let header = format!(r#"{{"a":{{"dtype":"U8","shape":[{ones},4],"data_offsets":[0,4]}}}}"#);
        let layout = parse_both(&header, None).unwrap();
        assert_eq!(layout.tensors[0].shape.len(), 3 * INLINE_DIMS + 1);
        assert_eq!(layout.tensors[0].shape.last(), Some(&4));
    }

    #[test]
    fn the_shortest_tensor_entry_is_as_long_as_stated() {
        let entry = r#""":{"dtype":"U8","shape":[],"data_offsets":[0,1]}"#;
        assert_eq!(entry.len(), MIN_TENSOR_ENTRY_LEN);
        assert!(Dtype::ALL.iter().all(|dtype| dtype.name().len() >= 2));
        assert_eq!(parse_both(&format!("{{{entry}}}"), Some(1)).unwrap().tensors.len(), 1);
    }

    mod agreement {
        use proptest::prelude::*;

        use super::reference;
        use crate::layout::parse_header;

        fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
            proptest::sample::select(options).prop_map(str::to_owned)
        }

        fn scalar() -> impl Strategy<Value = String> {
            pick(&[
                "0", "1", "2", "4", "8", "12", "-1", "-0", "1.5", "1e400", "18446744073709551615",
                "18446744073709551616", "null", "true", r#""U8""#, r#""F32""#, r#""BF16""#, r#""F33""#,
                r#""pt""#, r#""\ud800""#, r#""\u0055\u0038""#, r#""""#,
            ])
        }

        fn key() -> impl Strategy<Value = String> {
            pick(&[
                r#""dtype""#, r#""shape""#, r#""data_offsets""#, r#""x""#, r#""dt\u0079pe""#,
                r#""format""#, r#""a""#,
            ])
        }

        /// Any JSON value over the keys and scalars above.
        fn value() -> impl Strategy<Value = String> {
            scalar().prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
                    proptest::collection::vec((key(), inner), 0..4).prop_map(|fields| {
                        let fields: Vec<_> = fields.iter().map(|(key, value)| format!("{key}:{value}")).collect();
                        format!("{{{}}}", fields.join(","))
                    }),
                ]
            })
        }

        /// A tensor entry that is often valid: small shapes and offsets, often consistent, fields
        /// in any order, sometimes an extra or repeated field.
        fn tensor() -> impl Strategy<Value = String> {
            let dtypes = [(r#""U8""#, 1u64), (r#""BF16""#, 2), (r#""F32""#, 4), (r#""F33""#, 1)];
            let dtype = proptest::sample::select(dtypes.to_vec());
            let dims = proptest::collection::vec(0u64..4, 0..3);
            let start = proptest::sample::select(&[0u64, 4, 8, 12, 16][..]);
            let offsets = prop_oneof![
                6 => Just(None),
                1 => proptest::collection::vec(pick(&["0", "2", "4", "6", "1.5", "-1"]), 1..4)
                    .prop_map(|offsets| Some(format!("[{}]", offsets.join(",")))),
            ];
            let extra = proptest::collection::vec((key(), value()), 0..2);
            let parts = (dtype, dims, start, offsets, extra, any::<u8>());
            parts.prop_map(|((dtype, size), dims, start, offsets, extra, order)| {
                let end = start + size * dims.iter().product::<u64>();
                let offsets = offsets.unwrap_or_else(|| format!("[{start},{end}]"));
                let dims: Vec<_> = dims.iter().map(u64::to_string).collect();
                let mut fields = vec![
                    format!(r#""dtype":{dtype}"#),
                    format!(r#""shape":[{}]"#, dims.join(",")),
                    format!(r#""data_offsets":{offsets}"#),
                ];
                fields.extend(extra.iter().map(|(key, value)| format!("{key}:{value}")));
                let len = fields.len();
                fields.rotate_left(order as usize % len);
                if order % 7 == 0 {
                    fields.swap(0, len - 1);
                }
                format!("{{{}}}", fields.join(","))
            })
        }

        fn metadata() -> impl Strategy<Value = String> {
            let entry = (pick(&[r#""format""#, r#""k""#, r#""\u006b""#]), scalar());
            proptest::collection::vec(entry, 0..4).prop_map(|entries| {
                let entries: Vec<_> = entries.iter().map(|(key, value)| format!("{key}:{value}")).collect();
                format!("{{{}}}", entries.join(","))
            })
        }

        fn header() -> impl Strategy<Value = String> {
            let name = pick(&[
                r#""a""#, r#""b""#, r#""\u0061""#, r#""""#, r#""Z""#, r#""__metadata__""#, r#""__metadata\u005f_""#,
            ]);
            let entry = (name, prop_oneof![8 => tensor(), 1 => metadata(), 1 => value()]);
            proptest::collection::vec(entry, 0..5).prop_map(|entries| {
                let entries: Vec<_> = entries.iter().map(|(key, value)| format!("{key}:{value}")).collect();
                format!("{{{}}}", entries.join(","))
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn streaming_parser_agrees_with_the_value_based_one(
                header in header(),
                flips in proptest::option::weighted(0.3, proptest::collection::vec(any::<(usize, u8)>(), 1..3)),
                cut in proptest::option::weighted(0.1, any::<usize>()),
                data_len in proptest::option::of(0u64..64),
            ) {
                let mut bytes = header.into_bytes();
                for (position, value) in flips.unwrap_or_default() {
                    if !bytes.is_empty() {
                        let len = bytes.len();
                        bytes[position % len] = value;
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut % (bytes.len() + 1));
                }
                let parsed = parse_header(&bytes, data_len);
                prop_assert_eq!(parsed, reference::parse_header(&bytes, data_len));
            }
        }
    }
}
