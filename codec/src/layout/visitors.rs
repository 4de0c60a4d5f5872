//! The serde visitors that read the header's JSON straight into fixed-size records, never into a
//! `serde_json::Value` (see the layout module comment for what that saves).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::entries::*;
use crate::dtype::Dtype;

/// The header's top-level object: hands each entry over as it is read.
pub(super) struct Entries<F> {
    pub(super) with_metadata: bool,
    pub(super) on_entry: F,
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
pub(super) struct TopKey<'de>(pub(super) Cow<'de, str>);

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
pub(super) struct Tensor(pub(super) TensorFields);
read_any!(Tensor, TensorVisitor);

pub(super) struct TensorVisitor;

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
pub(super) enum Field {
    Dtype,
    Shape,
    DataOffsets,
}

/// A key of a tensor's entry; `None` for the keys the parser ignores.
pub(super) struct FieldName(pub(super) Option<Field>);

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
pub(super) struct DtypeValue(pub(super) Option<Option<Dtype>>);
read_any!(DtypeValue, DtypeVisitor);

pub(super) struct DtypeVisitor;

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
pub(super) struct ShapeValue(pub(super) Option<Option<Vec<u64>>>);
read_any!(ShapeValue, ShapeVisitor);

pub(super) struct ShapeVisitor;

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
pub(super) struct Dims {
    pub(super) inline: [u64; INLINE_DIMS],
    pub(super) inline_len: usize,
    pub(super) spilled: Vec<u64>,
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
pub(super) struct OffsetsValue(pub(super) Option<[Option<u64>; 2]>);
read_any!(OffsetsValue, OffsetsVisitor);

pub(super) struct OffsetsVisitor;

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
pub(super) struct U64Value(pub(super) Option<u64>);
read_any!(U64Value, U64Visitor);

pub(super) struct U64Visitor;

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
pub(super) struct Metadata(pub(super) std::result::Result<BTreeMap<String, String>, String>);
read_any!(Metadata, MetadataVisitor);

pub(super) struct MetadataVisitor;

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
pub(super) struct StringValue(pub(super) Option<String>);
read_any!(StringValue, StringVisitor);

pub(super) struct StringVisitor;

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
pub(super) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor).map(|()| Skip)
    }
}

pub(super) struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    wrong_kinds!((); bool i64 u64 f64 str unit seq map);
}
