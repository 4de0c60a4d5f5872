//! The XOR delta of BitX: a fine-tuned tensor XOR its base is mostly zero bits, which compress
//! far better than either tensor. Defined for any two lengths: bytes past the end of the base
//! are kept as they are, so no byte is ever lost.

/// Returns `target` XOR `base` over their common prefix, followed by the rest of `target`.
pub fn xor(target: &[u8], base: &[u8]) -> Vec<u8> {
    let mut out = target.to_vec();
    xor_in_place(&mut out, base);
    out
}

/// XORs `base` into `bytes` over their common prefix. Applying it twice restores `bytes`.
pub fn xor_in_place(bytes: &mut [u8], base: &[u8]) {
    let common = bytes.len().min(base.len());
    let (head, tail) = bytes[..common].split_at_mut(common - common % 8);
    for (word, base_word) in head.chunks_exact_mut(8).zip(base.chunks_exact(8)) {
        let value = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]))
            ^ u64::from_ne_bytes(base_word.try_into().unwrap_or([0; 8]));
        word.copy_from_slice(&value.to_ne_bytes());
    }
    let offset = head.len();
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= base[offset + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keeps_the_last_byte_of_odd_lengths() {
        let target = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let base = [1u8, 2, 3, 4, 5, 6, 7, 8, 8];
        assert_eq!(xor(&target, &base), [0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    proptest! {
        #[test]
        fn xor_twice_is_identity(target in proptest::collection::vec(any::<u8>(), 0..300),
                                 base in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(xor(&xor(&target, &base), &base), target);
        }
    }
}

