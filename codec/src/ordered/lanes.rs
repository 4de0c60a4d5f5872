//! The ordered difference's arithmetic, element by element, on the element width's own
//! unsigned integer (u16, u32 or u64), in loops of their own that the compiler vectorises at
//! that width. Spelt once on u64 words for every width, the decoder's loop was vectorised in
//! 64-bit lanes, which cost a quarter of a delta's decode.

/// An element as an unsigned integer of its own width.
pub(super) trait Lane: Copy {
    /// The element whose little-endian bytes start `bytes`.
    fn read(bytes: &[u8]) -> Self;

    /// Writes the element's little-endian bytes over `bytes`, which is as long as the element.
    fn write(self, bytes: &mut [u8]);

    /// The image of the element in the float's order (negative floats below positive):
    /// negative values have every bit flipped, positive ones only the sign. Branch-free.
    fn sortable(self) -> Self;

    /// The zigzagged wrapping difference of the images of `self` and `base`, so that a small
    /// move of either sign is a small number.
    fn difference_from(self, base: Self) -> Self;

    /// The inverse of [`Lane::difference_from`]: the element `zigzagged` comes from.
    fn add_to(zigzagged: Self, base: Self) -> Self;
}

macro_rules! lane {
    ($lane:ty) => {
        impl Lane for $lane {
            fn read(bytes: &[u8]) -> Self {
                let mut word = [0u8; size_of::<$lane>()];
                word.copy_from_slice(&bytes[..size_of::<$lane>()]);
                <$lane>::from_le_bytes(word)
            }

            fn write(self, bytes: &mut [u8]) {
                bytes.copy_from_slice(&self.to_le_bytes());
            }

            fn sortable(self) -> Self {
                self ^ ((self >> (<$lane>::BITS - 1)).wrapping_neg() | (1 << (<$lane>::BITS - 1)))
            }

            fn difference_from(self, base: Self) -> Self {
                let difference = self.sortable().wrapping_sub(base.sortable());
                (difference << 1) ^ (difference >> (<$lane>::BITS - 1)).wrapping_neg()
            }

            fn add_to(zigzagged: Self, base: Self) -> Self {
                let difference = (zigzagged >> 1) ^ (zigzagged & 1).wrapping_neg();
                let value = base.sortable().wrapping_add(difference);
                // The sign of the image is the float's sign flipped.
                value ^ ((!value >> (<$lane>::BITS - 1)).wrapping_neg() | (1 << (<$lane>::BITS - 1)))
            }
        }
    };
}

lane!(u16);
lane!(u32);
lane!(u64);

/// Writes the zigzagged difference of each element of `target` against the element of `base`
/// beside it into `out`, in element order; all three hold the same number of whole elements.
pub(super) fn differences<L: Lane>(target: &[u8], base: &[u8], out: &mut [u8]) {
    let width = size_of::<L>();
    for ((difference, target), base) in out.chunks_exact_mut(width).zip(target.chunks_exact(width)).zip(base.chunks_exact(width)) {
        L::read(target).difference_from(L::read(base)).write(difference);
    }
}

/// Turns the zigzagged differences in `elements` back into the target's elements, given the
/// base elements beside them.
pub(super) fn add_differences<L: Lane>(elements: &mut [u8], base: &[u8]) {
    let width = size_of::<L>();
    for (element, base) in elements.chunks_exact_mut(width).zip(base.chunks_exact(width)) {
        L::add_to(L::read(element), L::read(base)).write(element);
    }
}
