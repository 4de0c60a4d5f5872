//! The scale of an F8 quantization, inferred from a tensor and its quantized copy: quantizers
//! write it into another tensor of the file (`weight_scale`), which a chunk cannot see, so it is
//! found again from the elements themselves.

use super::float::f8e4m3_to_f32;
use super::quantize;

/// The largest F8 E4M3 magnitude code (448); 0x7F is NaN.
const LARGEST: u8 = 0x7E;

/// The scale (F32 bits) for which `wide / scale`, rounded, gives `quantized`: each element
/// that is neither zero nor saturated bounds the scale to the interval of values that round to
/// it, divided into the wide value. The intervals are intersected from the largest elements
/// down (the tightest first) for as long as they overlap; the middle of what is left is the
/// scale. `None` unless it reproduces at least half the elements.
pub(super) fn of_quantization(wide: &[f32], quantized: &[u8]) -> Option<u32> {
    let magnitude = |byte: u8| f64::from(f32::from_bits(f8e4m3_to_f32(byte & 0x7F)));
    let mut bounds: Vec<(u8, f64, f64)> = wide
        .iter()
        .zip(quantized)
        .filter(|(x, byte)| x.is_finite() && (1..LARGEST).contains(&(**byte & 0x7F)) && (**x < 0.0) == (**byte & 0x80 != 0))
        .map(|(x, byte)| {
            let code = byte & 0x7F;
            let value = magnitude(code);
            let below = (value + magnitude(code - 1)) / 2.0;
            let above = (value + magnitude(code + 1)) / 2.0;
            let x = f64::from(x.abs());
            (code, x / above, x / below)
        })
        .collect();
    bounds.sort_by_key(|(code, _, _)| std::cmp::Reverse(*code));
    let (mut low, mut high) = (0.0f64, f64::INFINITY);
    for (_, lower, upper) in bounds {
        if lower.max(low) > upper.min(high) {
            break;
        }
        (low, high) = (lower.max(low), upper.min(high));
    }
    if !(high.is_finite() && low > 0.0) {
        return None;
    }
    let scale = (((low + high) / 2.0) as f32).to_bits();
    let matches = wide.iter().zip(quantized).filter(|(x, byte)| quantize(x.to_bits(), scale) == **byte).count();
    (matches * 2 >= wide.len().max(1)).then_some(scale)
}

/// The scale (F32 bits) that best turns `quantized` back into `wide`: the least-squares ratio
/// of the two. What it leaves is the residual the delta stores. `None` for a copy with no
/// non-zero element.
pub(super) fn of_dequantization(quantized: &[u8], wide: &[f32]) -> Option<u32> {
    let (mut cross, mut square) = (0.0f64, 0.0f64);
    for (byte, x) in quantized.iter().zip(wide) {
        let value = f64::from(f32::from_bits(f8e4m3_to_f32(*byte)));
        if value.is_finite() && x.is_finite() {
            cross += value * f64::from(*x);
            square += value * value;
        }
    }
    let scale = (cross / square) as f32;
    (scale.is_finite() && scale != 0.0).then_some(scale.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_quantization_scale_is_found_again(values in proptest::collection::vec(-1.0f32..1.0, 64..600), amax_at in 0usize..64) {
            // As quantizers do: the scale maps the largest magnitude to 448.
            let mut values = values;
            values[amax_at] = 0.9;
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = (amax / 448.0).to_bits();
            let quantized: Vec<u8> = values.iter().map(|v| quantize(v.to_bits(), scale)).collect();
            let found = of_quantization(&values, &quantized).expect("a scale");
            let matches = values.iter().zip(&quantized).filter(|(v, q)| quantize(v.to_bits(), found) == **q).count();
            // An element whose quotient falls at a rounding boundary may go the other way: the
            // delta stores it.
            prop_assert!(matches + 1 + values.len() / 100 >= values.len(), "{} of {}", matches, values.len());
            let back = of_dequantization(&quantized, &values).expect("a scale back");
            prop_assert!((f32::from_bits(back) / f32::from_bits(scale) - 1.0).abs() < 0.05);
        }
    }

    #[test]
    fn no_scale_for_unrelated_or_empty_bytes() {
        let values: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let unrelated: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x7E).collect();
        assert_eq!(of_quantization(&values, &unrelated), None);
        assert_eq!(of_quantization(&[], &[]), None);
        assert_eq!(of_dequantization(&[0, 0x80], &[1.0, 2.0]), None);
    }
}
