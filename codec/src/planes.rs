//! Byte planes: element byte `p` of every element goes to plane `p`, so that bytes of like
//! meaning (exponents, high mantissa bits) sit together and compress well.
//!
//! For BF16 and F32 each element may first be rotated left by one bit, which moves the sign to
//! the bottom and makes the top byte exactly the exponent.

/// Splits `raw` into `width` planes, concatenated, followed by the `raw.len() % width` tail
/// bytes unchanged, into `out`, whose bytes it replaces (its capacity is reused). `rotate`
/// applies only to widths 2 and 4.
pub fn split_into(raw: &[u8], width: usize, rotate: bool, out: &mut Vec<u8>) {
    let width = width.max(1);
    let count = raw.len() / width;
    let body = count * width;
    out.resize(raw.len(), 0);
    if width == 1 {
        out.copy_from_slice(raw);
        return;
    }
    match (width, rotate) {
        (2, true) => {
            let (low, high) = out[..body].split_at_mut(count);
            for (i, element) in raw[..body].chunks_exact(2).enumerate() {
                let value = u16::from_le_bytes([element[0], element[1]]).rotate_left(1);
                let [l, h] = value.to_le_bytes();
                low[i] = l;
                high[i] = h;
            }
        }
        (4, true) => {
            let (p0, rest) = out[..body].split_at_mut(count);
            let (p1, rest) = rest.split_at_mut(count);
            let (p2, p3) = rest.split_at_mut(count);
            for (i, element) in raw[..body].chunks_exact(4).enumerate() {
                let value = u32::from_le_bytes([element[0], element[1], element[2], element[3]]).rotate_left(1);
                let [b0, b1, b2, b3] = value.to_le_bytes();
                p0[i] = b0;
                p1[i] = b1;
                p2[i] = b2;
                p3[i] = b3;
            }
        }
        _ => {
            for (i, element) in raw[..body].chunks_exact(width).enumerate() {
                for (plane, byte) in element.iter().enumerate() {
                    out[plane * count + i] = *byte;
                }
            }
        }
    }
    out[body..].copy_from_slice(&raw[body..]);
}

/// The inverse of [`split`] with the same `width` and `rotate`, into `out`, whose bytes it
/// replaces (its capacity is reused; of a reused buffer only the bytes past its length are
/// zeroed before they are written).
pub fn join_into(planes: &[u8], width: usize, rotate: bool, out: &mut Vec<u8>) {
    let width = width.max(1);
    let count = planes.len() / width;
    let body = count * width;
    out.resize(planes.len(), 0);
    if width == 1 {
        out.copy_from_slice(planes);
        return;
    }
    match (width, rotate) {
        (2, rotated) => {
            let (low, high) = planes[..body].split_at(count);
            for ((element, l), h) in out[..body].chunks_exact_mut(2).zip(low).zip(high) {
                let value = u16::from_le_bytes([*l, *h]);
                let value = if rotated { value.rotate_right(1) } else { value };
                element.copy_from_slice(&value.to_le_bytes());
            }
        }
        (4, rotated) => {
            let (p0, rest) = planes[..body].split_at(count);
            let (p1, rest) = rest.split_at(count);
            let (p2, p3) = rest.split_at(count);
            for (i, element) in out[..body].chunks_exact_mut(4).enumerate() {
                let value = u32::from_le_bytes([p0[i], p1[i], p2[i], p3[i]]);
                let value = if rotated { value.rotate_right(1) } else { value };
                element.copy_from_slice(&value.to_le_bytes());
            }
        }
        _ => {
            for (i, element) in out[..body].chunks_exact_mut(width).enumerate() {
                for (plane, byte) in element.iter_mut().enumerate() {
                    *byte = planes[plane * count + i];
                }
            }
        }
    }
    out[body..].copy_from_slice(&planes[body..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bf16_exponent_lands_in_the_high_plane() {
        let one = 1.0f32.to_bits() >> 16;
        let raw = (one as u16).to_le_bytes();
        let mut planes = Vec::new();
        split_into(&raw, 2, true, &mut planes);
        assert_eq!(planes[1], 127, "the exponent of 1.0 is 127");
    }

    proptest! {
        #[test]
        fn split_then_join_is_identity(raw in proptest::collection::vec(any::<u8>(), 0..600), width in 1usize..9, rotate: bool) {
            let (mut planes, mut joined) = (vec![0x55; 3], vec![0xaa; 7]);
            split_into(&raw, width, rotate, &mut planes);
            join_into(&planes, width, rotate, &mut joined);
            prop_assert_eq!(joined, raw);
        }
    }
}
