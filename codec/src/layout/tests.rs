use super::entries::INLINE_DIMS;
use super::*;

/// A safetensors file of `header` and `data_len` bytes of data.
pub(crate) fn file(header: &str, data_len: usize) -> Vec<u8> {
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
        Ok(Layout { data_start: (super::super::PREFIX_LEN + header.len()) as u64, tensors, metadata })
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
