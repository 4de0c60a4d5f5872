//! The bit-level conversions between float formats that casts are made of. Each is pinned by
//! docs/format.md (section 4) to the bit, NaN payloads included: a frame decodes only when its
//! reader converts exactly as its writer did.

/// F32 bits to BF16 bits, rounding to nearest, ties to even; a NaN keeps its sign and top
/// payload bits and is made quiet.
pub fn f32_to_bf16(bits: u32) -> u16 {
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((bits >> 16) | 0x0040) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// F32 bits to F16 bits, rounding to nearest, ties to even (to infinity past 65,504, to
/// subnormals and zero below 2^-14); a NaN keeps its sign and top payload bits and is made quiet.
/// Every case is computed and one selected, so that loops over it vectorise; subnormals come
/// from adding 0.5, whose last place is the F16 subnormal step, which rounds as IEEE addition
/// does (the integer form in docs/format.md gives the same bits: a test compares them).
pub fn f32_to_f16(bits: u32) -> u16 {
    const HALF: u32 = 0x3F00_0000;
    let sign = (bits >> 16) & 0x8000;
    let magnitude = bits & 0x7FFF_FFFF;
    let nan = 0x7E00 | ((magnitude >> 13) & 0x3FF);
    let rebiased = magnitude.wrapping_sub(0x3800_0000);
    let normal = rebiased.wrapping_add(0x0FFF + ((rebiased >> 13) & 1)) >> 13;
    let subnormal = (f32::from_bits(magnitude & 0x3FFF_FFFF) + f32::from_bits(HALF)).to_bits().wrapping_sub(HALF);
    let value = if magnitude > 0x7F80_0000 {
        nan
    } else if magnitude >= 0x477F_F000 {
        0x7C00
    } else if magnitude >= 0x3880_0000 {
        normal
    } else {
        subnormal
    };
    (sign | value) as u16
}

/// F16 bits to F32 bits, exactly (a NaN keeps its payload).
pub fn f16_to_f32(half: u16) -> u32 {
    let sign = u32::from(half & 0x8000) << 16;
    let exponent = u32::from((half >> 10) & 0x1F);
    let mantissa = u32::from(half & 0x3FF);
    match exponent {
        0 if mantissa == 0 => sign,
        0 => {
            let shift = mantissa.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | (((mantissa << shift) & 0x3FF) << 13)
        }
        31 => sign | 0x7F80_0000 | (mantissa << 13),
        _ => sign | ((exponent + 112) << 23) | (mantissa << 13),
    }
}

/// F8 E4M3 (the `fn` variant: no infinities, NaN at S.1111.111, largest 448) to F32 bits,
/// exactly; both NaNs become the quiet F32 NaN of their sign.
pub fn f8e4m3_to_f32(byte: u8) -> u32 {
    E4M3_TO_F32[usize::from(byte)]
}

/// [`f8e4m3_to_f32`] of every byte.
static E4M3_TO_F32: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut byte = 0;
    while byte < 256 {
        let sign = ((byte as u32) & 0x80) << 24;
        let exponent = ((byte as u32) >> 3) & 0x0F;
        let mantissa = (byte as u32) & 0x07;
        table[byte] = if exponent == 15 && mantissa == 7 {
            sign | 0x7FC0_0000
        } else if exponent == 0 && mantissa == 0 {
            sign
        } else if exponent == 0 {
            let shift = mantissa.leading_zeros() - 28;
            sign | ((121 - shift) << 23) | (((mantissa << shift) & 0x07) << 20)
        } else {
            sign | ((exponent + 120) << 23) | (mantissa << 20)
        };
        byte += 1;
    }
    table
};

/// A one-byte float, as rounding an F32 into it needs: its exponent bias moved to F32's (as
/// F32 bits to subtract), the mantissa bits F32 has more, the largest finite code, the F32 bits
/// from which it saturates, its smallest normal (F32 bits), its NaN, and the F32 power of two
/// whose last place is its subnormal step.
struct MiniFloat {
    rebias: u32,
    dropped: u32,
    largest: u32,
    saturate_from: u32,
    smallest_normal: u32,
    nan: u32,
    step: u32,
}

/// E4M3 (`fn`): bias 7, three mantissa bits, largest 448, NaN S.1111.111, subnormal step 2^-9.
const E4M3: MiniFloat =
    MiniFloat { rebias: 0x3C00_0000, dropped: 20, largest: 0x7E, saturate_from: 0x43E0_0000, smallest_normal: 0x3C80_0000, nan: 0x7F, step: 0x4680_0000 };

/// E5M2: bias 15, two mantissa bits, largest 57,344, quiet NaN S.11111.10, subnormal step 2^-16.
const E5M2: MiniFloat =
    MiniFloat { rebias: 0x3800_0000, dropped: 21, largest: 0x7B, saturate_from: 0x4760_0000, smallest_normal: 0x3880_0000, nan: 0x7E, step: 0x4300_0000 };

/// F32 bits rounded to a one-byte float: to nearest, ties to even, saturating (infinities
/// included); a NaN becomes the format's NaN with its sign. Computed like [`f32_to_f16`]:
/// subnormals by adding the power of two whose last place is the format's subnormal step.
#[inline(always)]
fn round_to(bits: u32, format: &MiniFloat) -> u8 {
    let sign = (bits >> 24) & 0x80;
    let magnitude = bits & 0x7FFF_FFFF;
    let rebiased = magnitude.wrapping_sub(format.rebias);
    let half = (1 << (format.dropped - 1)) - 1;
    let normal = (rebiased.wrapping_add(half + ((rebiased >> format.dropped) & 1)) >> format.dropped).min(format.largest);
    let subnormal = (f32::from_bits(magnitude & 0x3FFF_FFFF) + f32::from_bits(format.step)).to_bits().wrapping_sub(format.step);
    let value = if magnitude > 0x7F80_0000 {
        format.nan
    } else if magnitude >= format.saturate_from {
        format.largest
    } else if magnitude >= format.smallest_normal {
        normal
    } else {
        subnormal
    };
    (sign | value) as u8
}

/// F32 bits to F8 E4M3, rounding to nearest, ties to even, saturating at ±448 (infinities
/// included); a NaN becomes the NaN of its sign.
pub fn f32_to_f8e4m3(bits: u32) -> u8 {
    round_to(bits, &E4M3)
}

/// F32 bits to F8 E5M2 (the high byte of an F16), rounding to nearest, ties to even,
/// saturating at ±57,344 (infinities included); a NaN becomes the quiet NaN of its sign.
pub fn f32_to_f8e5m2(bits: u32) -> u8 {
    round_to(bits, &E5M2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f16_value(half: u16) -> f64 {
        f64::from(f32::from_bits(f16_to_f32(half)))
    }

    /// Whether `half` is the F16 nearest to `x` (ties to even), by comparing with its neighbours.
    fn is_nearest_f16(x: f32, half: u16) -> bool {
        let value = f64::from(x);
        let magnitude = half & 0x7FFF;
        if magnitude == 0x7C00 {
            return value.abs() >= 65520.0;
        }
        let error = (f16_value(half) - value).abs();
        let neighbours = [magnitude.checked_sub(1), (magnitude < 0x7BFF).then_some(magnitude + 1)];
        neighbours.into_iter().flatten().all(|neighbour| {
            let other = (f16_value(neighbour | (half & 0x8000)) - value).abs();
            error < other || (error == other && magnitude & 1 == 0)
        })
    }

    #[test]
    fn widening_then_rounding_gives_back_every_f16_and_bf16() {
        for half in 0..=u16::MAX {
            let is_nan = half & 0x7C00 == 0x7C00 && half & 0x3FF != 0;
            if !is_nan || half & 0x0200 != 0 {
                assert_eq!(f32_to_f16(f16_to_f32(half)), half, "f16 {half:04x}");
            }
            let bf16_nan = half & 0x7F80 == 0x7F80 && half & 0x7F != 0;
            if !bf16_nan || half & 0x0040 != 0 {
                assert_eq!(f32_to_bf16(u32::from(half) << 16), half, "bf16 {half:04x}");
            }
        }
        assert_eq!(f32::from_bits(f16_to_f32(0x0001)), 2f32.powi(-24));
        assert_eq!(f32::from_bits(f16_to_f32(0x3C00)), 1.0);
    }

    #[test]
    fn rounding_edges_of_f16() {
        assert_eq!(f32_to_f16(65504f32.to_bits()), 0x7BFF);
        assert_eq!(f32_to_f16(65519.99f32.to_bits()), 0x7BFF);
        assert_eq!(f32_to_f16(65520f32.to_bits()), 0x7C00);
        assert_eq!(f32_to_f16(2f32.powi(-25).to_bits()), 0);
        assert_eq!(f32_to_f16(f32::from_bits(2f32.powi(-25).to_bits() + 1).to_bits()), 1);
        assert_eq!(f32_to_f16((-0.0f32).to_bits()), 0x8000);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY.to_bits()), 0xFC00);
        assert_eq!(f32_to_f16(0x7F80_0001), 0x7E00);
        assert_eq!(f32_to_bf16(0x7F80_0001), 0x7FC0);
        assert_eq!(f32_to_bf16(0x7F7F_FFFF), 0x7F80);
    }

    #[test]
    fn every_f8e4m3_survives_widening_and_rounding() {
        for byte in 0..=u8::MAX {
            let widened = f8e4m3_to_f32(byte);
            if byte & 0x7F == 0x7F {
                assert!(f32::from_bits(widened).is_nan());
                assert_eq!(f32_to_f8e4m3(widened), byte);
            } else {
                assert_eq!(f32_to_f8e4m3(widened), byte, "{byte:02x} = {}", f32::from_bits(widened));
            }
        }
        assert_eq!(f32::from_bits(f8e4m3_to_f32(0x7E)), 448.0);
        assert_eq!(f32::from_bits(f8e4m3_to_f32(0x01)), 2f32.powi(-9));
        assert_eq!(f32_to_f8e4m3(1000f32.to_bits()), 0x7E);
        assert_eq!(f32_to_f8e4m3(f32::NEG_INFINITY.to_bits()), 0xFE);
        assert_eq!(f32_to_f8e4m3(2f32.powi(-10).to_bits()), 0);
        assert_eq!(f32_to_f8e4m3(f32::from_bits(2f32.powi(-10).to_bits() + 1).to_bits()), 1);
    }

    /// The integer forms of docs/format.md, section 4.
    fn spec_f32_to_f16(bits: u32) -> u16 {
        let sign = ((bits >> 16) & 0x8000) as u16;
        let m = bits & 0x7FFF_FFFF;
        if m > 0x7F80_0000 {
            return sign | 0x7E00 | ((m >> 13) & 0x3FF) as u16;
        }
        if m >= 0x477F_F000 {
            return sign | 0x7C00;
        }
        if m >= 0x3880_0000 {
            let v = m - 0x3800_0000;
            return sign | ((v + 0x0FFF + ((v >> 13) & 1)) >> 13) as u16;
        }
        if m <= 0x3300_0000 {
            return sign;
        }
        let (mantissa, k) = ((m & 0x7F_FFFF) | 0x80_0000, 126 - (m >> 23));
        sign | ((mantissa + (1 << (k - 1)) - 1 + ((mantissa >> k) & 1)) >> k) as u16
    }

    fn spec_f32_to_f8e4m3(bits: u32) -> u8 {
        let sign = ((bits >> 24) & 0x80) as u8;
        let m = bits & 0x7FFF_FFFF;
        if m > 0x7F80_0000 {
            return sign | 0x7F;
        }
        if m >= 0x43E0_0000 {
            return sign | 0x7E;
        }
        if m >= 0x3C80_0000 {
            let v = m - 0x3C00_0000;
            return sign | ((v + 0x7_FFFF + ((v >> 20) & 1)) >> 20).min(0x7E) as u8;
        }
        if m <= 0x3A80_0000 {
            return sign;
        }
        let (mantissa, k) = ((m & 0x7F_FFFF) | 0x80_0000, 141 - (m >> 23));
        sign | ((mantissa + (1 << (k - 1)) - 1 + ((mantissa >> k) & 1)) >> k) as u8
    }

    #[test]
    fn the_fast_forms_agree_with_the_specified_ones_below_the_normal_range() {
        // Every F32 from zero up to the smallest normal F16 and E4M3, by steps.
        for bits in (0..0x3880_0000u32).step_by(997).chain(0x3300_0000 - 8..0x3300_0008).chain(0x3A80_0000 - 8..0x3A80_0008) {
            for bits in [bits, bits | 0x8000_0000] {
                assert_eq!(f32_to_f16(bits), spec_f32_to_f16(bits), "{bits:08x}");
                assert_eq!(f32_to_f8e4m3(bits), spec_f32_to_f8e4m3(bits), "{bits:08x}");
            }
        }
    }

    proptest! {
        #[test]
        fn the_fast_forms_agree_with_the_specified_ones(bits in any::<u32>()) {
            prop_assert_eq!(f32_to_f16(bits), spec_f32_to_f16(bits));
            prop_assert_eq!(f32_to_f8e4m3(bits), spec_f32_to_f8e4m3(bits));
        }

        #[test]
        fn f8e4m3_rounding_is_to_the_nearest(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let byte = f32_to_f8e4m3(bits);
            if x.is_nan() {
                prop_assert_eq!(byte & 0x7F, 0x7F);
                return Ok(());
            }
            prop_assert_eq!(byte & 0x80 != 0, x.is_sign_negative());
            let value = |byte: u8| f64::from(f32::from_bits(f8e4m3_to_f32(byte)));
            let magnitude = byte & 0x7F;
            if magnitude == 0x7E && x.abs() >= 448.0 {
                return Ok(());
            }
            let error = (value(byte) - f64::from(x)).abs();
            for neighbour in [magnitude.checked_sub(1), (magnitude < 0x7E).then_some(magnitude + 1)].into_iter().flatten() {
                let other = (value(neighbour | (byte & 0x80)) - f64::from(x)).abs();
                prop_assert!(error < other || (error == other && magnitude & 1 == 0), "{} -> {:02x}", x, byte);
            }
        }

        #[test]
        fn f16_rounding_is_to_the_nearest(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let half = f32_to_f16(bits);
            if x.is_nan() {
                prop_assert!(half & 0x7C00 == 0x7C00 && half & 0x3FF != 0);
            } else {
                prop_assert_eq!(half & 0x8000 != 0, x.is_sign_negative());
                prop_assert!(is_nearest_f16(x, half), "{} -> {:04x}", x, half);
            }
        }

        #[test]
        fn bf16_rounding_is_to_the_nearest(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            let half = f32_to_bf16(bits);
            if x.is_nan() {
                prop_assert!(f32::from_bits(u32::from(half) << 16).is_nan());
            } else {
                let below = bits & 0xFFFF_0000;
                let error = |candidate: u32| (f64::from(f32::from_bits(candidate)) - f64::from(x)).abs();
                let chosen = u32::from(half) << 16;
                prop_assert!(chosen == below || chosen == below + 0x1_0000);
                if f32::from_bits(chosen).is_infinite() && !x.is_infinite() {
                    // Rounding past the largest finite BF16 overflows, as IEEE rounding does.
                    prop_assert!(bits & 0x7FFF_FFFF >= 0x7F7F_8000);
                    return Ok(());
                }
                let other = if chosen == below { below + 0x1_0000 } else { below };
                let other_is_nan = f32::from_bits(other).is_nan();
                prop_assert!(other_is_nan || error(chosen) < error(other) || (error(chosen) == error(other) && half & 1 == 0));
            }
        }
    }
}
