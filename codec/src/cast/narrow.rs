//! The one-byte types a wide float is quantized to with a scale: F8 E4M3, F8 E5M2 and I8. Each
//! element is an F32 value exactly; rounding to it is to nearest, ties to even, saturating at
//! its largest finite magnitude (docs/format.md, section 4).

use super::float::{f16_to_f32, f32_to_f8e4m3, f32_to_f8e5m2, f8e4m3_to_f32};
use crate::dtype::Dtype;

/// A one-byte type quantized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Narrow {
    F8E4M3,
    F8E5M2,
    I8,
}

impl Narrow {
    pub const ALL: [Narrow; 3] = [Narrow::F8E4M3, Narrow::F8E5M2, Narrow::I8];

    pub fn of(dtype: Dtype) -> Option<Narrow> {
        Narrow::ALL.into_iter().find(|narrow| narrow.dtype() == dtype)
    }

    pub fn dtype(self) -> Dtype {
        match self {
            Narrow::F8E4M3 => Dtype::F8E4M3,
            Narrow::F8E5M2 => Dtype::F8E5M2,
            Narrow::I8 => Dtype::I8,
        }
    }

    /// The largest finite magnitude, where rounding saturates.
    pub fn largest(self) -> f64 {
        match self {
            Narrow::F8E4M3 => 448.0,
            Narrow::F8E5M2 => 57344.0,
            Narrow::I8 => 127.0,
        }
    }

    /// The magnitudes from half-way below the largest element up to the largest: the
    /// quotients that round to it when the scale maps the largest magnitude there.
    pub fn saturation_interval(self) -> (f64, f64) {
        let largest = self.largest();
        let next = match self {
            Narrow::I8 => 126.0,
            Narrow::F8E4M3 => f64::from(f32::from_bits(self.to_f32(0x7D))),
            Narrow::F8E5M2 => f64::from(f32::from_bits(self.to_f32(0x7A))),
        };
        ((largest + next) / 2.0, largest)
    }

    /// The element's value as F32 bits.
    pub fn to_f32(self, byte: u8) -> u32 {
        match self {
            Narrow::F8E4M3 => f8e4m3_to_f32(byte),
            Narrow::F8E5M2 => f16_to_f32(u16::from(byte) << 8),
            Narrow::I8 => f32::from(byte as i8).to_bits(),
        }
    }

    /// The element nearest to an F32 (bits), saturating; a NaN is E4M3's NaN, E5M2's quiet
    /// NaN, or 0 for I8.
    pub fn from_f32(self, bits: u32) -> u8 {
        match self {
            Narrow::F8E4M3 => f32_to_f8e4m3(bits),
            Narrow::F8E5M2 => f32_to_f8e5m2(bits),
            Narrow::I8 => {
                let value = f32::from_bits(bits);
                if value.is_nan() { 0 } else { value.round_ties_even().clamp(-128.0, 127.0) as i8 as u8 }
            }
        }
    }

    /// For an element that is neither zero nor NaN nor at the largest magnitude: its
    /// magnitude, and the magnitudes half-way to the elements below and above it.
    pub fn rounding_interval(self, byte: u8) -> Option<(f64, f64, f64)> {
        let value = |byte: u8| f64::from(f32::from_bits(self.to_f32(byte))).abs();
        let (below, above) = match self {
            Narrow::I8 => {
                let k = byte as i8;
                if k == 0 || k == i8::MIN || k == i8::MAX || k == -i8::MAX {
                    return None;
                }
                let k = f64::from(k.unsigned_abs());
                return Some((k, k - 0.5, k + 0.5));
            }
            Narrow::F8E4M3 if (1..0x7E).contains(&(byte & 0x7F)) => (byte & 0x7F) - 1..=(byte & 0x7F) + 1,
            Narrow::F8E5M2 if (1..0x7B).contains(&(byte & 0x7F)) => (byte & 0x7F) - 1..=(byte & 0x7F) + 1,
            _ => return None,
        }
        .into_inner();
        let here = value(byte & 0x7F);
        Some((here, (here + value(below)) / 2.0, (here + value(above)) / 2.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_finite_element_survives_widening_and_rounding() {
        for narrow in Narrow::ALL {
            for byte in 0..=u8::MAX {
                let widened = narrow.to_f32(byte);
                if f32::from_bits(widened).is_finite() {
                    assert_eq!(narrow.from_f32(widened), byte, "{narrow:?} {byte:02x}");
                }
            }
        }
        assert_eq!(f32::from_bits(Narrow::F8E5M2.to_f32(0x7B)), 57344.0);
        assert_eq!(Narrow::F8E5M2.from_f32(f32::INFINITY.to_bits()), 0x7B);
        assert_eq!(Narrow::I8.from_f32(300f32.to_bits()), 127);
        assert_eq!(Narrow::I8.from_f32((-2.5f32).to_bits()) as i8, -2);
    }

    proptest! {
        #[test]
        fn rounding_is_to_the_nearest_element(bits in any::<u32>(), narrow in proptest::sample::select(Narrow::ALL.to_vec())) {
            let x = f32::from_bits(bits);
            prop_assume!(x.is_finite());
            let byte = narrow.from_f32(bits);
            let value = |byte: u8| f64::from(f32::from_bits(narrow.to_f32(byte)));
            let error = (value(byte) - f64::from(x)).abs();
            for other in 0..=u8::MAX {
                let other_value = value(other);
                if other_value.is_finite() {
                    let other_error = (other_value - f64::from(x)).abs();
                    prop_assert!(error <= other_error, "{:?}: {} -> {:02x}, but {:02x} is nearer", narrow, x, byte, other);
                }
            }
        }
    }
}
