//! Casts between float dtypes (issue 18): hubs keep one model in several precisions, and a
//! BF16 or F16 tensor is usually the rounded cast of an F32 one, an F8 tensor the scaled cast
//! of a BF16 one. A chunk of one precision is stored as a delta against the chunk of another
//! converted to its dtype: nearly all zeros when it is that cast, the rounding residual when it
//! is the wider original, a few bits per element between two casts of one original.
//!
//! Written here rather than taken from the `half` crate: a frame decodes only if its reader
//! converts the base to exactly the bits its writer did, NaN payloads included, on any CPU;
//! docs/format.md (section 4) pins every conversion, and `half` picks hardware conversions at
//! run time.

mod float;
mod scale;

pub use float::{f16_to_f32, f32_to_bf16, f32_to_f16, f32_to_f8e4m3, f8e4m3_to_f32};

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
    /// BF16 to F8 E4M3: widened, divided by the scale in F32, rounded (saturating).
    Bf16ToF8E4M3 { scale: u32 },
    /// F32 to F8 E4M3: divided by the scale in F32, rounded (saturating).
    F32ToF8E4M3 { scale: u32 },
    /// F8 E4M3 to BF16: widened, multiplied by the scale in F32, rounded to nearest even.
    F8E4M3ToBf16 { scale: u32 },
    /// F8 E4M3 to F32: widened, multiplied by the scale in F32.
    F8E4M3ToF32 { scale: u32 },
}

/// Elements of a chunk compared when choosing between the rounding and the truncating cast,
/// or when inferring a scale.
const CAST_SAMPLE: usize = 4096;

/// From this many BF16 elements on, quantizing goes through a table of all 65,536 values.
const BF16_TABLE_FROM: usize = 1 << 16;

/// The dtype pairs with a conversion, by (source, target).
const PAIRS: [(Dtype, Dtype); 10] = [
    (Dtype::F32, Dtype::BF16),
    (Dtype::F32, Dtype::F16),
    (Dtype::BF16, Dtype::F32),
    (Dtype::F16, Dtype::F32),
    (Dtype::F16, Dtype::BF16),
    (Dtype::BF16, Dtype::F16),
    (Dtype::BF16, Dtype::F8E4M3),
    (Dtype::F32, Dtype::F8E4M3),
    (Dtype::F8E4M3, Dtype::BF16),
    (Dtype::F8E4M3, Dtype::F32),
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
            Cast::Bf16ToF8E4M3 { .. } => 8,
            Cast::F32ToF8E4M3 { .. } => 9,
            Cast::F8E4M3ToBf16 { .. } => 10,
            Cast::F8E4M3ToF32 { .. } => 11,
        }
    }

    fn scale(self) -> Option<u32> {
        match self {
            Cast::Bf16ToF8E4M3 { scale } | Cast::F32ToF8E4M3 { scale } | Cast::F8E4M3ToBf16 { scale } | Cast::F8E4M3ToF32 { scale } => Some(scale),
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
            Ok(u32::from_le_bytes([scale[0], scale[1], scale[2], scale[3]]))
        };
        Ok(match code {
            1 => Cast::F32ToBf16,
            2 => Cast::F32ToBf16Truncated,
            3 => Cast::F32ToF16,
            4 => Cast::Bf16ToF32,
            5 => Cast::F16ToF32,
            6 => Cast::F16ToBf16,
            7 => Cast::Bf16ToF16,
            8 => Cast::Bf16ToF8E4M3 { scale: scale()? },
            9 => Cast::F32ToF8E4M3 { scale: scale()? },
            10 => Cast::F8E4M3ToBf16 { scale: scale()? },
            11 => Cast::F8E4M3ToF32 { scale: scale()? },
            _ => return Err(CodecError::FrameCorrupt("unknown conversion")),
        })
    }

    /// The dtype of the elements converted.
    pub fn source(self) -> Dtype {
        match self {
            Cast::F32ToBf16 | Cast::F32ToBf16Truncated | Cast::F32ToF16 | Cast::F32ToF8E4M3 { .. } => Dtype::F32,
            Cast::Bf16ToF32 | Cast::Bf16ToF16 | Cast::Bf16ToF8E4M3 { .. } => Dtype::BF16,
            Cast::F16ToF32 | Cast::F16ToBf16 => Dtype::F16,
            Cast::F8E4M3ToBf16 { .. } | Cast::F8E4M3ToF32 { .. } => Dtype::F8E4M3,
        }
    }

    /// The dtype they are converted to.
    pub fn target(self) -> Dtype {
        match self {
            Cast::F32ToBf16 | Cast::F32ToBf16Truncated | Cast::F16ToBf16 | Cast::F8E4M3ToBf16 { .. } => Dtype::BF16,
            Cast::F32ToF16 | Cast::Bf16ToF16 => Dtype::F16,
            Cast::Bf16ToF32 | Cast::F16ToF32 | Cast::F8E4M3ToF32 { .. } => Dtype::F32,
            Cast::Bf16ToF8E4M3 { .. } | Cast::F32ToF8E4M3 { .. } => Dtype::F8E4M3,
        }
    }

    /// The dtypes a tensor of `dtype` can be taken against through a conversion.
    pub fn sources_for(dtype: Dtype) -> Vec<Dtype> {
        PAIRS.iter().filter(|(_, target)| *target == dtype).map(|(source, _)| *source).collect::<std::collections::BTreeSet<_>>().into_iter().collect()
    }

    /// The conversion that best turns `base` (elements of `source`) into `target` elements
    /// like `raw`: for F32 to BF16, the rounding or the truncating cast, whichever matches more
    /// of the first elements; to or from F8, the scale inferred from the two (`scale`). `None`
    /// when the two dtypes have no conversion, or no scale fits.
    pub fn fitting(source: Dtype, target: Dtype, base: &[u8], raw: &[u8]) -> Option<Cast> {
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
            (Dtype::BF16 | Dtype::F32, Dtype::F8E4M3) => {
                let wide = widened(source, base);
                let scale = scale::of_quantization(&wide, raw)?;
                if source == Dtype::BF16 { Cast::Bf16ToF8E4M3 { scale } } else { Cast::F32ToF8E4M3 { scale } }
            }
            (Dtype::F8E4M3, Dtype::BF16 | Dtype::F32) => {
                let scale = scale::of_dequantization(base, &widened(target, raw))?;
                if target == Dtype::BF16 { Cast::F8E4M3ToBf16 { scale } } else { Cast::F8E4M3ToF32 { scale } }
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
            Cast::Bf16ToF8E4M3 { scale } if source.len() / 2 >= BF16_TABLE_FROM => {
                // A BF16 has 65,536 values: quantizing each once and looking the elements up
                // spares a division per element.
                let table: Vec<u8> = (0..=u16::MAX).map(|bits| quantize(u32::from(bits) << 16, scale)).collect();
                convert::<2, 1>(source, |e| [table[usize::from(u16::from_le_bytes(e))]])
            }
            Cast::Bf16ToF8E4M3 { scale } => convert::<2, 1>(source, |e| [quantize(bf16_bits(e), scale)]),
            Cast::F32ToF8E4M3 { scale } => convert::<4, 1>(source, |e| [quantize(u32::from_le_bytes(e), scale)]),
            Cast::F8E4M3ToBf16 { scale } => {
                let table: Vec<u16> = (0..=u8::MAX).map(|byte| f32_to_bf16(dequantize(byte, scale))).collect();
                convert::<1, 2>(source, |e| table[usize::from(e[0])].to_le_bytes())
            }
            Cast::F8E4M3ToF32 { scale } => {
                let table: Vec<u32> = (0..=u8::MAX).map(|byte| dequantize(byte, scale)).collect();
                convert::<1, 4>(source, |e| table[usize::from(e[0])].to_le_bytes())
            }
        }
    }
}

/// How many of the sampled elements `cast` turns `base` into `raw` exactly.
fn matching(cast: Cast, base: &[u8], raw: &[u8]) -> usize {
    let width = cast.target().size();
    cast.apply(base).chunks_exact(width).zip(raw.chunks_exact(width)).filter(|(a, b)| a == b).count()
}

/// The elements of `bytes` (BF16 or F32) as F32 values.
fn widened(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::BF16 => bytes.chunks_exact(2).map(|e| f32::from_bits(bf16_bits([e[0], e[1]]))).collect(),
        _ => bytes.chunks_exact(4).map(|e| f32::from_le_bytes([e[0], e[1], e[2], e[3]])).collect(),
    }
}

fn bf16_bits(element: [u8; 2]) -> u32 {
    u32::from(u16::from_le_bytes(element)) << 16
}

/// An F32 (as bits) divided by the scale in F32 and rounded to F8 E4M3.
fn quantize(bits: u32, scale: u32) -> u8 {
    f32_to_f8e4m3((f32::from_bits(bits) / f32::from_bits(scale)).to_bits())
}

/// An F8 E4M3 widened and multiplied by the scale in F32, as F32 bits.
fn dequantize(byte: u8, scale: u32) -> u32 {
    (f32::from_bits(f8e4m3_to_f32(byte)) * f32::from_bits(scale)).to_bits()
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
        Cast::Bf16ToF8E4M3 { scale },
        Cast::F32ToF8E4M3 { scale },
        Cast::F8E4M3ToBf16 { scale },
        Cast::F8E4M3ToF32 { scale },
    ]
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
            assert!(PAIRS.contains(&(cast.source(), cast.target())));
        }
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
    fn quantizing_through_the_table_is_quantizing_each_element() {
        let source: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let cast = Cast::Bf16ToF8E4M3 { scale: 0.0123f32.to_bits() };
        let direct: Vec<u8> = source.chunks_exact(2).map(|e| quantize(bf16_bits([e[0], e[1]]), 0.0123f32.to_bits())).collect();
        assert_eq!(cast.apply(&source), direct);
    }

    proptest! {
        #[test]
        fn casts_keep_the_element_count(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for cast in every_cast() {
                let converted = cast.apply(&bytes);
                let elements = bytes.len() / cast.source().size();
                prop_assert_eq!(converted.len(), elements * cast.target().size());
            }
        }
    }
}
