//! The scale of a quantization (F8 or I8), inferred from a tensor and its quantized copy:
//! quantizers write it into another tensor of the file (`weight_scale`), which a chunk cannot
//! see, so it is found again from the elements themselves.

use super::narrow::Narrow;
use super::quantize;

/// The scale (F32 bits, a positive normal number) for which `wide / scale`, rounded, gives
/// `quantized`: each element that is neither zero nor saturated bounds the scale to the
/// interval of values that round to it, divided into the wide value. All the intervals are
/// intersected, or when they do not all overlap, from the largest elements down (the tightest
/// first) for as long as they do; saturated elements narrow that further when they agree with
/// it. The middle of what is left is the scale. `None` unless it reproduces at least half the
/// elements.
pub(super) fn of_quantization(wide: &[f32], quantized: &[u8], narrow: Narrow) -> Option<u32> {
    let same_sign = || {
        wide.iter().zip(quantized).filter(|(x, byte)| x.is_finite() && (**x < 0.0) == f32::from_bits(narrow.to_f32(**byte)).is_sign_negative())
    };
    let mut bounds: Vec<(f64, f64, f64)> = same_sign()
        .filter_map(|(x, byte)| {
            let (value, below, above) = narrow.rounding_interval(*byte)?;
            let x = f64::from(x.abs());
            Some((value, x / above, x / below))
        })
        .collect();
    let intersect = |bounds: &[(f64, f64, f64)]| {
        let (mut low, mut high) = (0.0f64, f64::INFINITY);
        for (_, lower, upper) in bounds {
            if lower.max(low) > upper.min(high) {
                break;
            }
            (low, high) = (lower.max(low), upper.min(high));
        }
        (low, high)
    };
    // Usually every interval overlaps; only when one does not are the tightest kept first.
    let everything = bounds.iter().fold((0.0f64, f64::INFINITY), |(low, high), (_, lower, upper)| (low.max(*lower), high.min(*upper)));
    let (low, high) = if everything.0 <= everything.1 {
        everything
    } else {
        bounds.sort_by(|a, b| b.0.total_cmp(&a.0));
        intersect(&bounds)
    };
    // A saturated element's quotient lies between half-way below the largest element and the
    // largest itself, as quantizers map the largest magnitude there; one that clipped breaks
    // this, and then saturated elements are left out.
    let (below, largest) = narrow.saturation_interval();
    let saturated = same_sign()
        .filter(|(_, byte)| f64::from(f32::from_bits(narrow.to_f32(**byte))).abs() == largest)
        .fold((0.0f64, f64::INFINITY), |(low, high), (x, _)| (low.max(f64::from(x.abs()) / largest), high.min(f64::from(x.abs()) / below)));
    let (low, high) = match (low.max(saturated.0), high.min(saturated.1)) {
        (lower, upper) if lower <= upper => (lower, upper),
        _ => (low, high),
    };
    if !(high.is_finite() && low > 0.0) {
        return None;
    }
    let scale = (((low + high) / 2.0) as f32).to_bits();
    if !super::groups::is_positive_normal(scale) {
        return None;
    }
    let matches = wide.iter().zip(quantized).filter(|(x, byte)| quantize(x.to_bits(), narrow, scale) == **byte).count();
    (matches * 2 >= wide.len().max(1)).then_some(scale)
}

/// The scale (F32 bits) that best turns `quantized` back into `wide`: the least-squares ratio
/// of the two. What it leaves is the residual the delta stores. `None` for a copy with no
/// non-zero element.
pub(super) fn of_dequantization(quantized: &[u8], wide: &[f32], narrow: Narrow) -> Option<u32> {
    let (mut cross, mut square) = (0.0f64, 0.0f64);
    for (byte, x) in quantized.iter().zip(wide) {
        let value = f64::from(f32::from_bits(narrow.to_f32(*byte)));
        if value.is_finite() && x.is_finite() {
            cross += value * f64::from(*x);
            square += value * value;
        }
    }
    let scale = ((cross / square) as f32).to_bits();
    super::groups::is_positive_normal(scale).then_some(scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_quantization_scale_is_found_again(values in proptest::collection::vec(-1.0f32..1.0, 64..600), amax_at in 0usize..64,
                                               narrow in proptest::sample::select(Narrow::ALL.to_vec())) {
            // As quantizers do: the scale maps the largest magnitude to the largest element.
            let largest = narrow.largest() as f32;
            let mut values = values;
            values[amax_at] = 0.9;
            let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = (amax / largest).to_bits();
            let quantized: Vec<u8> = values.iter().map(|v| quantize(v.to_bits(), narrow, scale)).collect();
            let found = of_quantization(&values, &quantized, narrow).expect("a scale");
            let matches = values.iter().zip(&quantized).filter(|(v, q)| quantize(v.to_bits(), narrow, found) == **q).count();
            // An element whose quotient falls at a rounding boundary may go the other way: the
            // delta stores it.
            prop_assert!(matches + 1 + values.len() / 100 >= values.len(), "{} of {}", matches, values.len());
            let back = of_dequantization(&quantized, &values, narrow).expect("a scale back");
            prop_assert!((f32::from_bits(back) / f32::from_bits(scale) - 1.0).abs() < 0.05);
        }
    }

    #[test]
    fn a_scale_is_found_from_saturated_elements_alone() {
        let mut values = vec![0.0f32; 64];
        (values[0], values[10], values[20]) = (0.9, 0.95, -0.93);
        let scale = (0.95f32 / 57344.0).to_bits();
        let quantized: Vec<u8> = values.iter().map(|v| quantize(v.to_bits(), Narrow::F8E5M2, scale)).collect();
        let found = of_quantization(&values, &quantized, Narrow::F8E5M2).expect("a scale");
        assert!(values.iter().zip(&quantized).all(|(v, q)| quantize(v.to_bits(), Narrow::F8E5M2, found) == *q));
    }

    #[test]
    fn no_scale_for_unrelated_or_empty_bytes() {
        let values: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let unrelated: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 & 0x7E).collect();
        assert_eq!(of_quantization(&values, &unrelated, Narrow::F8E4M3), None);
        assert_eq!(of_quantization(&[], &[], Narrow::I8), None);
        assert_eq!(of_dequantization(&[0, 0x80], &[1.0, 2.0], Narrow::F8E4M3), None);
    }
}
