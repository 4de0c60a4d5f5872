//! Levels (issue 18): chunks whose elements take few values, coded as small integers rather
//! than as floats. Two forms, each kept only when smaller than the chunk's other encodings:
//!
//! - a palette: at most 256 distinct elements, as a codebook and one index byte per element;
//! - affine groups: each group of G consecutive elements is `round(k × s)` in the chunk's dtype
//!   (BF16, F16 or F32), k an integer of at most 127 in magnitude (or -0) and s one F32 scale
//!   per group, as in tensors dequantized from int4 or int8 with a scale per group. A group
//!   that is not is kept as it is.
//!
//! The payload (frame codec 3, docs/format.md section 4) starts with the form and the dtype's
//! code; planes are plane records (`entropy::write_plane`); n is the number of whole elements
//! and the bytes after them (the tail) end the payload as they are.
//!
//! ```text
//! palette:  0, dtype, V - 1, V codebook elements, indices (n bytes), tail
//! affine:   1, dtype, log2 G, the scales' bytes 0..3 as four planes (one F32 per group, 0 for
//!           a group kept as it is), codes (n bytes, i8; -128 is -0), the kept groups'
//!           elements, tail
//! ```

use std::collections::HashMap;

use crate::cast::{f16_to_f32, f32_to_bf16, f32_to_f16};
use crate::dtype::Dtype;
use crate::entropy::{read_plane, read_word_planes, write_plane, write_word_planes};
use crate::error::{CodecError, Result};

const PALETTE: u8 = 0;
const AFFINE: u8 = 1;
const MAX_PALETTE: usize = 256;
const LARGEST_CODE: f32 = 127.0;

/// Group sizes tried, as powers of two: 16 to 128 elements.
const GROUP_LOG2: [u8; 4] = [4, 5, 6, 7];

/// Groups of a chunk a group size and an estimate are tried on before the chunk is coded.
const SAMPLE_GROUPS: usize = 16;

/// How a group's scale is first guessed, before it is narrowed to one that reproduces every
/// element: the largest magnitude over K (symmetric quantizers), or the range over R (those
/// with a zero point).
#[derive(Clone, Copy)]
enum Estimate {
    Magnitude(f32),
    Range(f32),
}

const ESTIMATES: [Estimate; 5] = [Estimate::Magnitude(7.0), Estimate::Magnitude(8.0), Estimate::Magnitude(127.0), Estimate::Range(15.0), Estimate::Range(255.0)];

/// The levels payload of `raw`, if either form applies.
pub fn encode(raw: &[u8], dtype: Dtype) -> Option<Vec<u8>> {
    let width = dtype.size();
    if width < 2 || raw.len() < width * 64 {
        return None;
    }
    let palette = encode_palette(raw, dtype);
    let affine = encode_affine(raw, dtype);
    match (palette, affine) {
        (Some(p), Some(a)) => Some(if p.len() <= a.len() { p } else { a }),
        (p, a) => p.or(a),
    }
}

/// Decodes a levels payload into `raw_len` bytes of elements `width` bytes wide.
pub fn decode(payload: &[u8], raw_len: usize, width: usize) -> Result<Vec<u8>> {
    let corrupt = CodecError::FrameCorrupt;
    let (&form, rest) = payload.split_first().ok_or(CodecError::FrameTruncated)?;
    let dtype = rest.first().and_then(|code| Dtype::from_code(*code)).ok_or(corrupt("levels: unknown dtype"))?;
    if dtype.size() != width {
        return Err(corrupt("levels: dtype of another width"));
    }
    if dtype.is_blocks() {
        return Err(corrupt("levels: GGUF blocks are not elements"));
    }
    let count = raw_len / width;
    let mut out = vec![0u8; raw_len];
    let mut cursor = 2;
    match form {
        PALETTE => {
            let values = usize::from(*payload.get(cursor).ok_or(CodecError::FrameTruncated)?) + 1;
            let codebook = payload.get(cursor + 1..cursor + 1 + values * width).ok_or(CodecError::FrameTruncated)?;
            cursor += 1 + values * width;
            let mut indices = vec![0u8; count];
            read_plane(payload, &mut cursor, &mut indices)?;
            for (element, index) in out.chunks_exact_mut(width).zip(&indices) {
                let index = usize::from(*index);
                let value = codebook.get(index * width..(index + 1) * width).ok_or(corrupt("levels: index past the codebook"))?;
                element.copy_from_slice(value);
            }
        }
        AFFINE => {
            let log2 = *payload.get(cursor).ok_or(CodecError::FrameTruncated)?;
            if !(4..=10).contains(&log2) || !matches!(dtype, Dtype::BF16 | Dtype::F16 | Dtype::F32) {
                return Err(corrupt("levels: bad group size or dtype"));
            }
            cursor += 1;
            let group = 1usize << log2;
            let groups = count.div_ceil(group);
            let scales = read_word_planes(payload, &mut cursor, groups)?;
            let mut codes = vec![0u8; count];
            read_plane(payload, &mut cursor, &mut codes)?;
            let kept: usize = scales.iter().enumerate().filter(|(_, s)| **s == 0).map(|(g, _)| group.min(count - g * group)).sum();
            let mut kept_bytes = vec![0u8; kept * width];
            read_plane(payload, &mut cursor, &mut kept_bytes)?;
            let body = &mut out[..count * width];
            match dtype {
                Dtype::BF16 => expand::<2>(body, &codes, &scales, group, &kept_bytes, |v| f32_to_bf16(v.to_bits()).to_le_bytes())?,
                Dtype::F16 => expand::<2>(body, &codes, &scales, group, &kept_bytes, |v| f32_to_f16(v.to_bits()).to_le_bytes())?,
                _ => expand::<4>(body, &codes, &scales, group, &kept_bytes, f32::to_le_bytes)?,
            }
        }
        _ => return Err(corrupt("levels: unknown form")),
    }
    let tail = payload.get(cursor..).unwrap_or_default();
    if tail.len() != raw_len - count * width {
        return Err(corrupt("levels: tail length differs from raw length"));
    }
    out[count * width..].copy_from_slice(tail);
    Ok(out)
}

/// Writes every group's elements: its codes times its scale, rounded by `round`, or for a group
/// kept as it is (scale 0) its next elements from `kept`.
fn expand<const W: usize>(
    out: &mut [u8],
    codes: &[u8],
    scales: &[u32],
    group: usize,
    kept: &[u8],
    round: impl Fn(f32) -> [u8; W],
) -> Result<()> {
    let mut kept = kept.chunks_exact(W);
    for ((elements, codes), scale) in out.chunks_mut(group * W).zip(codes.chunks(group)).zip(scales) {
        if *scale == 0 {
            for element in elements.chunks_exact_mut(W) {
                element.copy_from_slice(kept.next().ok_or(CodecError::FrameCorrupt("levels: kept elements short"))?);
            }
            continue;
        }
        let scale = f32::from_bits(*scale);
        for (element, code) in elements.chunks_exact_mut(W).zip(codes) {
            element.copy_from_slice(&round(level(*code, scale)));
        }
    }
    Ok(())
}

/// Code -128 stands for -0 (fake-quantized tensors hold it where a negative value rounded to
/// zero): every other code is an integer multiple of the scale.
const NEGATIVE_ZERO: u8 = 0x80;

/// The value of a code in a group of this scale, before rounding to the dtype.
fn level(code: u8, scale: f32) -> f32 {
    if code == NEGATIVE_ZERO { -0.0 } else { f32::from(code as i8) * scale }
}

/// A product rounded to the dtype, as the bits of an element (little-endian, low bytes used).
fn rounding(dtype: Dtype) -> fn(f32) -> u32 {
    match dtype {
        Dtype::BF16 => |value| u32::from(f32_to_bf16(value.to_bits())),
        Dtype::F16 => |value| u32::from(f32_to_f16(value.to_bits())),
        _ => f32::to_bits,
    }
}

fn element_bits(element: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..element.len()].copy_from_slice(element);
    u64::from_le_bytes(bytes)
}

fn encode_palette(raw: &[u8], dtype: Dtype) -> Option<Vec<u8>> {
    let width = dtype.size();
    let mut codebook: HashMap<u64, u8> = HashMap::with_capacity(MAX_PALETTE);
    let mut indices = Vec::with_capacity(raw.len() / width);
    for element in raw.chunks_exact(width) {
        let next = codebook.len();
        let index = *codebook.entry(element_bits(element)).or_insert(next as u8);
        if codebook.len() > MAX_PALETTE {
            return None;
        }
        indices.push(index);
    }
    let mut values = vec![0u64; codebook.len()];
    for (value, index) in &codebook {
        values[usize::from(*index)] = *value;
    }
    let mut out = vec![PALETTE, dtype.code(), (values.len() - 1) as u8];
    for value in values {
        out.extend_from_slice(&value.to_le_bytes()[..width]);
    }
    write_plane(&mut out, &indices);
    out.extend_from_slice(&raw[indices.len() * width..]);
    Some(out)
}

/// The elements of a BF16, F16 or F32 chunk as F32 values, with their own bits.
fn values_of(raw: &[u8], dtype: Dtype) -> Option<Vec<(f32, u32)>> {
    let width = dtype.size();
    let widen: fn(u32) -> u32 = match dtype {
        Dtype::BF16 => |bits| bits << 16,
        Dtype::F16 => |bits| f16_to_f32(bits as u16),
        Dtype::F32 => |bits| bits,
        _ => return None,
    };
    Some(raw.chunks_exact(width).map(|e| element_bits(e) as u32).map(|bits| (f32::from_bits(widen(bits)), bits)).collect())
}

fn encode_affine(raw: &[u8], dtype: Dtype) -> Option<Vec<u8>> {
    let width = dtype.size();
    // The grouping is chosen on the first groups alone, so a chunk that is not levels costs
    // little more than that.
    let sampled = (SAMPLE_GROUPS << GROUP_LOG2[GROUP_LOG2.len() - 1]).min(raw.len() / width);
    let (log2, estimate) = best_grouping(&values_of(&raw[..sampled * width], dtype)?, dtype)?;
    let values = values_of(raw, dtype)?;
    let group = 1usize << log2;
    let mut scales = Vec::with_capacity(values.len().div_ceil(group));
    let mut codes = vec![0u8; values.len()];
    let mut kept = Vec::new();
    for (elements, group_codes) in values.chunks(group).zip(codes.chunks_mut(group)) {
        match fit_group(elements, dtype, estimate, group_codes) {
            Some(scale) => scales.push(scale),
            None => {
                group_codes.fill(0);
                scales.push(0);
                for (_, bits) in elements {
                    kept.extend_from_slice(&bits.to_le_bytes()[..width]);
                }
            }
        }
    }
    let mut out = vec![AFFINE, dtype.code(), log2];
    write_word_planes(&mut out, &scales);
    write_plane(&mut out, &codes);
    write_plane(&mut out, &kept);
    out.extend_from_slice(&raw[values.len() * width..]);
    Some(out)
}

/// The group size and scale estimate that fit the most of the first groups, if at least half.
fn best_grouping(values: &[(f32, u32)], dtype: Dtype) -> Option<(u8, Estimate)> {
    let mut best: Option<(usize, u8, Estimate)> = None;
    for log2 in GROUP_LOG2 {
        for estimate in ESTIMATES {
            let mut codes = [0u8; 1 << 7];
            let fits = values.chunks_exact(1 << log2).take(SAMPLE_GROUPS).filter(|g| fit_group(g, dtype, estimate, &mut codes).is_some()).count();
            if best.as_ref().is_none_or(|(most, _, _)| fits > *most) {
                best = Some((fits, log2, estimate));
            }
        }
    }
    let (fits, log2, estimate) = best?;
    let sampled = values.chunks_exact(1 << log2).take(SAMPLE_GROUPS).count();
    (fits > 0 && fits * 2 >= sampled).then_some((log2, estimate))
}

/// The scale (F32 bits, never 0) and codes that reproduce every element of the group, if any:
/// the estimate gives each element's code, each code and element bound the scale to an
/// interval, and the scale with the fewest mantissa bits in all of them is taken.
/// The codes go to `codes`, as long as the group.
fn fit_group(group: &[(f32, u32)], dtype: Dtype, estimate: Estimate, codes: &mut [u8]) -> Option<u32> {
    let (low, high) = group.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), (v, _)| (l.min(*v), h.max(*v)));
    if !(low.is_finite() && high.is_finite()) {
        return None;
    }
    let guess = match estimate {
        Estimate::Magnitude(k) => low.abs().max(high.abs()) / k,
        Estimate::Range(r) => (high - low) / r,
    };
    let guess = if guess > 0.0 { guess } else { 1.0 };
    let mut bounds = (0.0f64, f64::INFINITY);
    for ((value, bits), slot) in group.iter().zip(codes.iter_mut()) {
        // Rounded half away from zero, without a call into libm; ties are settled below.
        let code = ((value / guess) + 0.5f32.copysign(*value)).trunc();
        if code.abs() > LARGEST_CODE {
            return None;
        }
        if code == 0.0 {
            *slot = if value.is_sign_negative() { NEGATIVE_ZERO } else { 0 };
            continue;
        }
        *slot = code as i8 as u8;
        let (below, above) = rounding_interval(*bits, dtype);
        let (a, b) = (below / f64::from(code), above / f64::from(code));
        bounds = (bounds.0.max(a.min(b)), bounds.1.min(a.max(b)));
        if bounds.0 >= bounds.1 {
            return None;
        }
    }
    let (low, high) = (bounds.0, bounds.1.min(f64::from(f32::MAX)));
    let round = rounding(dtype);
    let reproduces = |scale: u32| group.iter().zip(codes.iter()).all(|((_, bits), code)| round(level(*code, f32::from_bits(scale))) == *bits);
    // The shortest scale compresses best; the middle one is furthest from every tie.
    let middle = (((low + high) / 2.0) as f32).to_bits();
    [shortest_within(low, high), Some(middle)].into_iter().flatten().find(|scale| *scale != 0 && reproduces(*scale))
}

/// The reals that round to the element with these bits: half-way to each neighbour (in either
/// order: for a negative element the first is the larger).
fn rounding_interval(bits: u32, dtype: Dtype) -> (f64, f64) {
    let value = |bits: u32| -> f64 {
        f64::from(f32::from_bits(match dtype {
            Dtype::BF16 => (bits & 0xFFFF) << 16,
            Dtype::F16 => f16_to_f32(bits as u16),
            _ => bits,
        }))
    };
    let here = value(bits);
    ((here + value(bits.wrapping_sub(1))) / 2.0, (here + value(bits.wrapping_add(1))) / 2.0)
}

/// The positive F32 strictly between `low` and `high` (their ends are ties) with the fewest
/// mantissa bits, if there is one.
fn shortest_within(low: f64, high: f64) -> Option<u32> {
    if !(low <= high && high > 0.0) {
        return None;
    }
    let middle = ((low + high) / 2.0) as f32;
    let within = |bits: u32| {
        let value = f64::from(f32::from_bits(bits));
        value > 0.0 && value > low && value < high
    };
    for dropped in (0..=23u32).rev() {
        let step = 1u32 << dropped;
        let down = middle.to_bits() & !(step - 1);
        for candidate in [down, down.wrapping_add(step)] {
            if within(candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cast::f32_to_bf16;
    use proptest::prelude::*;

    /// BF16 weights dequantized from int4 in groups of `group` (scale = largest magnitude / 7,
    /// codes clipped to -8..=7), as `tests/clients/int4_dequantize.py` makes them.
    fn int4_dequantized(count: usize, group: usize, seed: u32) -> Vec<u8> {
        let weights: Vec<f32> = (0..count as u32).map(|i| (((i ^ seed).wrapping_mul(2_654_435_761) >> 8) % 2001) as f32 / 1e5 - 0.01).collect();
        weights
            .chunks(group)
            .flat_map(|values| {
                let scale = values.iter().fold(0f32, |m, v| m.max(v.abs())) / 7.0;
                values.iter().map(move |v| (v / scale).round().clamp(-8.0, 7.0) * scale).collect::<Vec<_>>()
            })
            .flat_map(|v| f32_to_bf16(v.to_bits()).to_le_bytes())
            .collect()
    }

    #[test]
    fn int4_groups_cost_about_their_codes_and_scales() {
        for group in [16, 32, 128] {
            let raw = int4_dequantized(1 << 16, group, 3);
            let payload = encode(&raw, Dtype::BF16).expect("levels apply");
            assert_eq!(payload[0], AFFINE);
            assert!(payload.len() * 100 < raw.len() * 35, "groups of {group}: {} of {}", payload.len(), raw.len());
            assert_eq!(decode(&payload, raw.len(), 2).unwrap(), raw);
        }
    }

    #[test]
    fn weights_that_are_not_levels_are_left_alone() {
        let raw: Vec<u8> = (0..1u32 << 14).flat_map(|i| f32_to_bf16(((i.wrapping_mul(2_654_435_761) % 2001) as f32 / 1e5 - 0.01).to_bits()).to_le_bytes()).collect();
        assert_eq!(encode(&raw, Dtype::BF16), None);
    }

    proptest! {
        #[test]
        fn palettes_round_trip(indices in proptest::collection::vec(any::<u8>(), 64..2000), width in proptest::sample::select(vec![2usize, 4, 8]), tail in 0usize..3) {
            let dtype = match width { 2 => Dtype::BF16, 4 => Dtype::F32, _ => Dtype::F64 };
            let mut raw: Vec<u8> = indices.iter().flat_map(|i| (u64::from(*i) * 0x0101_0101_0101_0101).to_le_bytes()[..width].to_vec()).collect();
            raw.extend(std::iter::repeat_n(7u8, tail.min(width - 1)));
            let payload = encode_palette(&raw, dtype).expect("at most 256 values");
            prop_assert_eq!(decode(&payload, raw.len(), width).unwrap(), raw);
        }

        #[test]
        fn affine_groups_round_trip_with_groups_kept_as_they_are(count in 64usize..3000, seed in any::<u32>(), breaks in proptest::collection::vec(any::<(usize, u16)>(), 0..8), dtype in proptest::sample::select(vec![Dtype::BF16, Dtype::F16, Dtype::F32])) {
            let values = int4_dequantized(count, 32, seed);
            let mut raw: Vec<u8> = match dtype {
                Dtype::BF16 => values,
                _ => values.chunks_exact(2).flat_map(|e| {
                    let wide = u32::from(u16::from_le_bytes([e[0], e[1]])) << 16;
                    if dtype == Dtype::F16 { f32_to_f16(wide).to_le_bytes().to_vec() } else { wide.to_le_bytes().to_vec() }
                }).collect(),
            };
            // NaNs, infinities and arbitrary values break some groups.
            for (at, bits) in breaks {
                let len = raw.len();
                raw[at % len] ^= bits as u8;
                raw[(at + 1) % len] ^= (bits >> 8) as u8;
            }
            if let Some(payload) = encode_affine(&raw, dtype) {
                prop_assert_eq!(decode(&payload, raw.len(), dtype.size()).unwrap(), raw);
            }
        }

        #[test]
        fn decoding_arbitrary_payloads_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..400), raw_len in 0usize..600, width in 1usize..9) {
            let _ = decode(&payload, raw_len, width);
            let mut affine = vec![AFFINE, Dtype::BF16.code(), 4];
            affine.extend_from_slice(&payload);
            let _ = decode(&affine, raw_len, 2);
        }
    }
}
