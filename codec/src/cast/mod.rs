//! Casts between float dtypes (issue 18): hubs keep one model in several precisions, and a
//! BF16 or F16 tensor is usually the rounded cast of an F32 one, an F8 or I8 tensor the scaled
//! cast of a BF16 one. A chunk of one precision is stored as a delta against the chunk of another
//! converted to its dtype: nearly all zeros when it is that cast, the rounding residual when it
//! is the wider original, a few bits per element between two casts of one original.
//!
//! Written here rather than taken from the `half` crate: a frame decodes only if its reader
//! converts the base to exactly the bits its writer did, NaN payloads included, on any CPU;
//! docs/format.md (section 4) pins every conversion, and `half` picks hardware conversions at
//! run time. Scaled conversions use positive normal scales and make their results independent of
//! the NaNs a CPU's arithmetic makes (they differ between CPUs): a quotient takes its dividend's
//! sign, and a NaN is widened by its bits, never multiplied.

mod blocks;
mod float;
mod groups;
mod narrow;
mod scale;

pub use blocks::dequantized;
pub use groups::{group_count, read_scales, write_scales, Groups, GROUP};
pub use float::{f16_to_f32, f32_to_bf16, f32_to_f16, f32_to_f8e4m3, f32_to_f8e5m2, f8e4m3_to_f32};
pub use narrow::Narrow;

use crate::dtype::Dtype;
use crate::error::{CodecError, Result};

/// A conversion of a base chunk's elements to the dtype of the chunk taken against it. A scale
/// is an F32, held as its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    /// F32 to BF16, rounding to nearest, ties to even.
    F32ToBf16,
    /// F32 to BF16 by dropping the low 16 bits, as some tools cast.
    F32ToBf16Truncated,
    /// F32 to F16, rounding to nearest, ties to even.
    F32ToF16,
    /// BF16 to F32, exact.
    Bf16ToF32,
    /// F16 to F32, exact.
    F16ToF32,
    /// F16 to BF16: widened exactly, then rounded to nearest, ties to even.
    F16ToBf16,
    /// BF16 to F16: widened exactly, then rounded to nearest, ties to even.
    Bf16ToF16,
    /// BF16 or F32 (`wide`) to F8 E4M3, F8 E5M2 or I8: widened, divided by the scale in F32,
    /// rounded to nearest, ties to even, saturating.
    Quantize { wide: Dtype, narrow: Narrow, scale: u32 },
    /// F8 E4M3, F8 E5M2 or I8 to BF16 or F32 (`wide`): widened, multiplied by the scale in F32,
    /// rounded to the wide type.
    Dequantize { narrow: Narrow, wide: Dtype, scale: u32 },
    /// F32, F16 or BF16 (`wide`) to GGUF's Q8_0 or Q4_0 (`blocks`), by the recipe of
    /// llama.cpp's `gguf` package (see `blocks`). Frames of version 3.
    QuantizeBlocks { wide: Dtype, blocks: Dtype },
}

/// How a frame converts its base: one conversion for the whole chunk, or a quantization with a
/// scale per group of elements, whose scales lead the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    Whole(Cast),
    Groups(Groups),
}

impl Conversion {
    /// Bytes it takes in a frame header.
    pub fn encoded_len(self) -> usize {
        match self {
            Conversion::Whole(cast) => cast.encoded_len(),
            Conversion::Groups(_) => 1,
        }
    }

    /// Appends it as a frame header holds it.
    pub fn write(self, out: &mut Vec<u8>) {
        match self {
            Conversion::Whole(cast) => cast.write(out),
            Conversion::Groups(groups) => out.push(groups.code()),
        }
    }

    /// Reads one written by [`Conversion::write`] from the start of `bytes`.
    pub fn read(bytes: &[u8]) -> Result<Conversion> {
        let code = *bytes.first().ok_or(CodecError::FrameTruncated)?;
        match Groups::from_code(code) {
            Some(groups) => Ok(Conversion::Groups(groups)),
            None => Cast::read(bytes).map(Conversion::Whole),
        }
    }

    pub fn source(self) -> Dtype {
        match self {
            Conversion::Whole(cast) => cast.source(),
            Conversion::Groups(groups) => groups.source(),
        }
    }

    pub fn target(self) -> Dtype {
        match self {
            Conversion::Whole(cast) => cast.target(),
            Conversion::Groups(groups) => groups.target(),
        }
    }

    /// The version of the frames that hold it: 3 for block quantizations, else 2.
    pub fn frame_version(self) -> u8 {
        match self {
            Conversion::Whole(Cast::QuantizeBlocks { .. }) => 3,
            _ => 2,
        }
    }

    /// The bytes of base elements that a chunk of `raw_len` bytes of the target dtype meets.
    pub fn source_len(self, raw_len: usize) -> usize {
        let (block_elements, block_bytes) = self.target().block();
        raw_len.div_ceil(block_bytes) * block_elements * self.source().size()
    }
}

/// The first code of the scaled conversions: 8 + 4 × narrow + 2 × (dequantize) + (wide is F32).
const SCALED_CODES: u8 = 8;

/// The first code of the block quantizations: 32 + 3 × (Q8_0, Q4_0) + (F32, F16, BF16).
const BLOCK_CODES: u8 = 32;
const BLOCK_TARGETS: [Dtype; 2] = [Dtype::Q8_0, Dtype::Q4_0];
const BLOCK_SOURCES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

/// Elements of a chunk compared when choosing between the rounding and the truncating cast,
/// or when inferring a scale.
const CAST_SAMPLE: usize = 4096;

/// The dtype pairs of the unscaled conversions, by (source, target).
const FLOAT_PAIRS: [(Dtype, Dtype); 6] = [
    (Dtype::F32, Dtype::BF16),
    (Dtype::F32, Dtype::F16),
    (Dtype::BF16, Dtype::F32),
    (Dtype::F16, Dtype::F32),
    (Dtype::F16, Dtype::BF16),
    (Dtype::BF16, Dtype::F16),
];

impl Cast {
    /// The byte that names the conversion in a frame header.
    pub fn code(self) -> u8 {
        match self {
            Cast::F32ToBf16 => 1,
            Cast::F32ToBf16Truncated => 2,
            Cast::F32ToF16 => 3,
            Cast::Bf16ToF32 => 4,
            Cast::F16ToF32 => 5,
            Cast::F16ToBf16 => 6,
            Cast::Bf16ToF16 => 7,
            Cast::Quantize { wide, narrow, .. } => scaled_code(narrow, false, wide),
            Cast::Dequantize { narrow, wide, .. } => scaled_code(narrow, true, wide),
            Cast::QuantizeBlocks { wide, blocks } => {
                let position = |dtypes: &[Dtype], dtype| dtypes.iter().position(|d| *d == dtype).unwrap_or(0) as u8;
                BLOCK_CODES + 3 * position(&BLOCK_TARGETS, blocks) + position(&BLOCK_SOURCES, wide)
            }
        }
    }

    fn scale(self) -> Option<u32> {
        match self {
            Cast::Quantize { scale, .. } | Cast::Dequantize { scale, .. } => Some(scale),
            _ => None,
        }
    }

    /// Bytes the conversion takes in a frame header: its code, then the scale (u32 LE) if any.
    pub fn encoded_len(self) -> usize {
        if self.scale().is_some() { 5 } else { 1 }
    }

    /// Appends the conversion as a frame header holds it.
    pub fn write(self, out: &mut Vec<u8>) {
        out.push(self.code());
        if let Some(scale) = self.scale() {
            out.extend_from_slice(&scale.to_le_bytes());
        }
    }

    /// Reads a conversion written by [`Cast::write`] from the start of `bytes`.
    pub fn read(bytes: &[u8]) -> Result<Cast> {
        let code = *bytes.first().ok_or(CodecError::FrameTruncated)?;
        let scale = || -> Result<u32> {
            let scale = bytes.get(1..5).ok_or(CodecError::FrameTruncated)?;
            let scale = u32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]);
            match groups::is_positive_normal(scale) {
                true => Ok(scale),
                false => Err(CodecError::FrameCorrupt("a conversion's scale is not a positive normal number")),
            }
        };
        Ok(match code {
            1 => Cast::F32ToBf16,
            2 => Cast::F32ToBf16Truncated,
            3 => Cast::F32ToF16,
            4 => Cast::Bf16ToF32,
            5 => Cast::F16ToF32,
            6 => Cast::F16ToBf16,
            7 => Cast::Bf16ToF16,
            code if (SCALED_CODES..SCALED_CODES + 12).contains(&code) => {
                let index = code - SCALED_CODES;
                let narrow = Narrow::ALL[usize::from(index / 4)];
                let wide = if index & 1 == 1 { Dtype::F32 } else { Dtype::BF16 };
                let scale = scale()?;
                if index & 2 == 2 { Cast::Dequantize { narrow, wide, scale } } else { Cast::Quantize { wide, narrow, scale } }
            }
            code if (BLOCK_CODES..BLOCK_CODES + 6).contains(&code) => {
                let index = usize::from(code - BLOCK_CODES);
                Cast::QuantizeBlocks { wide: BLOCK_SOURCES[index % 3], blocks: BLOCK_TARGETS[index / 3] }
            }
            _ => return Err(CodecError::FrameCorrupt("unknown conversion")),
        })
    }

    /// The dtype of the elements converted.
    pub fn source(self) -> Dtype {
        match self {
            Cast::F32ToBf16 | Cast::F32ToBf16Truncated | Cast::F32ToF16 => Dtype::F32,
            Cast::Bf16ToF32 | Cast::Bf16ToF16 => Dtype::BF16,
            Cast::F16ToF32 | Cast::F16ToBf16 => Dtype::F16,
            Cast::Quantize { wide, .. } | Cast::QuantizeBlocks { wide, .. } => wide,
            Cast::Dequantize { narrow, .. } => narrow.dtype(),
        }
    }

    /// The dtype they are converted to.
    pub fn target(self) -> Dtype {
        match self {
            Cast::F32ToBf16 | Cast::F32ToBf16Truncated | Cast::F16ToBf16 => Dtype::BF16,
            Cast::F32ToF16 | Cast::Bf16ToF16 => Dtype::F16,
            Cast::Bf16ToF32 | Cast::F16ToF32 => Dtype::F32,
            Cast::Quantize { narrow, .. } => narrow.dtype(),
            Cast::Dequantize { wide, .. } => wide,
            Cast::QuantizeBlocks { blocks, .. } => blocks,
        }
    }

    /// The dtypes a tensor of `dtype` can be taken against through a conversion.
    pub fn sources_for(dtype: Dtype) -> Vec<Dtype> {
        let mut sources: Vec<Dtype> = FLOAT_PAIRS.iter().filter(|(_, target)| *target == dtype).map(|(source, _)| *source).collect();
        match dtype {
            Dtype::BF16 | Dtype::F32 => sources.extend(Narrow::ALL.map(Narrow::dtype)),
            _ if Narrow::of(dtype).is_some() => sources.extend([Dtype::BF16, Dtype::F32]),
            _ if dtype.is_blocks() => sources.extend(BLOCK_SOURCES),
            _ => {}
        }
        sources
    }

    /// The conversion that best turns `base` (elements of `source`) into `target` elements
    /// like `raw`: for F32 to BF16, the rounding or the truncating cast, whichever matches more
    /// of the first elements; to or from F8 or I8, the scale inferred from the two (`scale`);
    /// to Q8_0 or Q4_0, the quantizer's recipe. `None` when the two dtypes have no conversion,
    /// or no scale fits.
    pub fn fitting(source: Dtype, target: Dtype, base: &[u8], raw: &[u8]) -> Option<Cast> {
        if target.is_blocks() {
            return BLOCK_SOURCES.contains(&source).then_some(Cast::QuantizeBlocks { wide: source, blocks: target });
        }
        let elements = (base.len() / source.size()).min(raw.len() / target.size()).min(CAST_SAMPLE);
        let (base, raw) = (&base[..elements * source.size()], &raw[..elements * target.size()]);
        Some(match (source, target) {
            (Dtype::F32, Dtype::BF16) => {
                let rounding = matching(Cast::F32ToBf16, base, raw);
                if matching(Cast::F32ToBf16Truncated, base, raw) > rounding { Cast::F32ToBf16Truncated } else { Cast::F32ToBf16 }
            }
            (Dtype::F32, Dtype::F16) => Cast::F32ToF16,
            (Dtype::BF16, Dtype::F32) => Cast::Bf16ToF32,
            (Dtype::F16, Dtype::F32) => Cast::F16ToF32,
            (Dtype::F16, Dtype::BF16) => Cast::F16ToBf16,
            (Dtype::BF16, Dtype::F16) => Cast::Bf16ToF16,
            (Dtype::BF16 | Dtype::F32, narrow) => {
                let narrow = Narrow::of(narrow)?;
                let scale = scale::of_quantization(&widened(source, base), raw, narrow)?;
                Cast::Quantize { wide: source, narrow, scale }
            }
            (narrow, Dtype::BF16 | Dtype::F32) => {
                let narrow = Narrow::of(narrow)?;
                let scale = scale::of_dequantization(base, &widened(target, raw), narrow)?;
                Cast::Dequantize { narrow, wide: target, scale }
            }
            _ => return None,
        })
    }

    /// Converts the whole elements of `source` (little-endian); bytes past the last whole
    /// element are dropped.
    pub fn apply(self, source: &[u8]) -> Vec<u8> {
        match self {
            Cast::F32ToBf16 => convert::<4, 2>(source, |e| f32_to_bf16(u32::from_le_bytes(e)).to_le_bytes()),
            Cast::F32ToBf16Truncated => convert::<4, 2>(source, |e| [e[2], e[3]]),
            Cast::F32ToF16 => convert::<4, 2>(source, |e| f32_to_f16(u32::from_le_bytes(e)).to_le_bytes()),
            Cast::Bf16ToF32 => convert::<2, 4>(source, |e| [0, 0, e[0], e[1]]),
            Cast::F16ToF32 => convert::<2, 4>(source, |e| f16_to_f32(u16::from_le_bytes(e)).to_le_bytes()),
            Cast::F16ToBf16 => convert::<2, 2>(source, |e| f32_to_bf16(f16_to_f32(u16::from_le_bytes(e))).to_le_bytes()),
            Cast::Bf16ToF16 => convert::<2, 2>(source, |e| f32_to_f16(bf16_bits(e)).to_le_bytes()),
            Cast::Quantize { wide, narrow, scale } => groups::quantize_all(wide, narrow, source, |_| f32::from_bits(scale)),
            Cast::Dequantize { narrow, wide, scale } => groups::dequantize_all(narrow, wide, source, |_| f32::from_bits(scale)),
            Cast::QuantizeBlocks { wide, blocks } => blocks::quantize(wide, blocks, source),
        }
    }
}

/// How many of the sampled elements `cast` turns `base` into `raw` exactly.
fn matching(cast: Cast, base: &[u8], raw: &[u8]) -> usize {
    let width = cast.target().size();
    cast.apply(base).chunks_exact(width).zip(raw.chunks_exact(width)).filter(|(a, b)| a == b).count()
}

/// The elements of `bytes` (BF16 or F32) as F32 values.
pub(crate) fn widened(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::BF16 => bytes.chunks_exact(2).map(|e| f32::from_bits(bf16_bits([e[0], e[1]]))).collect(),
        _ => bytes.chunks_exact(4).map(|e| f32::from_le_bytes([e[0], e[1], e[2], e[3]])).collect(),
    }
}

fn bf16_bits(element: [u8; 2]) -> u32 {
    u32::from(u16::from_le_bytes(element)) << 16
}

fn scaled_code(narrow: Narrow, dequantize: bool, wide: Dtype) -> u8 {
    let narrow = Narrow::ALL.iter().position(|n| *n == narrow).unwrap_or(0) as u8;
    SCALED_CODES + 4 * narrow + 2 * u8::from(dequantize) + u8::from(wide == Dtype::F32)
}

/// An F32 (as bits) divided by the scale in F32 and rounded to the narrow type, the quotient
/// taking the dividend's sign, as `groups::quantize_all` does.
fn quantize(bits: u32, narrow: Narrow, scale: u32) -> u8 {
    let quotient = (f32::from_bits(bits) / f32::from_bits(scale)).to_bits();
    narrow.from_f32((quotient & 0x7FFF_FFFF) | (bits & 0x8000_0000))
}

/// Converts every whole `FROM`-byte element of `source` into a `TO`-byte one.
fn convert<const FROM: usize, const TO: usize>(source: &[u8], element: impl Fn([u8; FROM]) -> [u8; TO]) -> Vec<u8> {
    let mut out = vec![0u8; source.len() / FROM * TO];
    for (target, bytes) in out.chunks_exact_mut(TO).zip(source.chunks_exact(FROM)) {
        let mut input = [0u8; FROM];
        input.copy_from_slice(bytes);
        target.copy_from_slice(&element(input));
    }
    out
}

/// Every conversion (scaled ones with one scale), for the tests of the codec.
#[cfg(test)]
pub(crate) fn every_cast() -> Vec<Cast> {
    let scale = 0.0123f32.to_bits();
    vec![
        Cast::F32ToBf16,
        Cast::F32ToBf16Truncated,
        Cast::F32ToF16,
        Cast::Bf16ToF32,
        Cast::F16ToF32,
        Cast::F16ToBf16,
        Cast::Bf16ToF16,
    ]
    .into_iter()
    .chain(Narrow::ALL.into_iter().flat_map(|narrow| {
        [Dtype::BF16, Dtype::F32].into_iter().flat_map(move |wide| [Cast::Quantize { wide, narrow, scale }, Cast::Dequantize { narrow, wide, scale }])
    }))
    .chain(BLOCK_TARGETS.into_iter().flat_map(|blocks| BLOCK_SOURCES.map(|wide| Cast::QuantizeBlocks { wide, blocks })))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn conversions_round_trip_through_their_bytes_and_name_their_dtypes() {
        for cast in every_cast() {
            let mut bytes = Vec::new();
            cast.write(&mut bytes);
            assert_eq!(bytes.len(), cast.encoded_len());
            assert_eq!(Cast::read(&bytes), Ok(cast));
            assert!(Cast::sources_for(cast.target()).contains(&cast.source()));
        }
        let codes: std::collections::BTreeSet<u8> = every_cast().into_iter().map(Cast::code).collect();
        assert_eq!(codes.len(), every_cast().len());
        assert!(Cast::read(&[0]).is_err());
        assert!(Cast::read(&[8, 1, 2]).is_err());
    }

    #[test]
    fn the_truncating_cast_is_chosen_for_truncated_values() {
        let base: Vec<u8> = (0..1000u32).flat_map(|i| (0x3C00_0000 + i * 7919).to_le_bytes()).collect();
        let truncated = Cast::F32ToBf16Truncated.apply(&base);
        let rounded = Cast::F32ToBf16.apply(&base);
        assert_ne!(truncated, rounded);
        assert_eq!(Cast::fitting(Dtype::F32, Dtype::BF16, &base, &truncated), Some(Cast::F32ToBf16Truncated));
        assert_eq!(Cast::fitting(Dtype::F32, Dtype::BF16, &base, &rounded), Some(Cast::F32ToBf16));
        assert_eq!(Cast::fitting(Dtype::F32, Dtype::I32, &base, &rounded), None);
    }

    #[test]
    fn quantizing_a_chunk_is_quantizing_each_element() {
        let source: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        for narrow in Narrow::ALL {
            let cast = Cast::Quantize { wide: Dtype::BF16, narrow, scale: 0.0123f32.to_bits() };
            let direct: Vec<u8> = source.chunks_exact(2).map(|e| quantize(bf16_bits([e[0], e[1]]), narrow, 0.0123f32.to_bits())).collect();
            assert_eq!(cast.apply(&source), direct);
        }
    }

    proptest! {
        #[test]
        fn casts_keep_the_element_count(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for cast in every_cast() {
                let converted = cast.apply(&bytes);
                prop_assert_eq!(converted.len(), cast.target().bytes_of(cast.source().elements_in(bytes.len())));
            }
        }
    }
}
