//! The element types of the safetensors spec, and the block quantizations of GGUF that a
//! stored wider tensor predicts (issue 17).

/// A safetensors dtype (every dtype of the spec is known), or a GGUF block quantization, whose
/// bytes the codec codes one by one. The codec needs only the width, and for blocks their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E4M3,
    F8E5M2,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    I64,
    U64,
    F64,
    /// GGUF's Q8_0: blocks of 32 elements, an F16 scale then 32 I8 codes (34 bytes).
    Q8_0,
    /// GGUF's Q4_0: blocks of 32 elements, an F16 scale then 16 bytes of 4-bit codes, element
    /// j in the low nibble of byte j and element j + 16 in its high nibble (18 bytes).
    Q4_0,
}

impl Dtype {
    /// Every dtype, in a fixed order: the order gives `code`, which frames of codec 3 store
    /// (docs/format.md, section 4), so it is frozen.
    pub const ALL: [Dtype; 17] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E4M3,
        Dtype::F8E5M2,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::I64,
        Dtype::U64,
        Dtype::F64,
        Dtype::Q8_0,
        Dtype::Q4_0,
    ];

    /// Parses the spelling used in safetensors headers ("BF16", "F8_E4M3", ...); block
    /// quantizations are not safetensors dtypes.
    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().filter(|dtype| !dtype.is_blocks()).find(|dtype| dtype.name() == name)
    }

    /// The spelling used in safetensors headers (GGUF's for block quantizations).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::F64 => "F64",
            Dtype::Q8_0 => "Q8_0",
            Dtype::Q4_0 => "Q4_0",
        }
    }

    /// Bytes per element: the width the codec codes the bytes in (1 for block quantizations,
    /// whose bytes are coded one by one).
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E4M3 | Dtype::F8E5M2 | Dtype::Q8_0 | Dtype::Q4_0 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// Whether this is a block quantization.
    pub fn is_blocks(self) -> bool {
        matches!(self, Dtype::Q8_0 | Dtype::Q4_0)
    }

    /// Elements per block and bytes per block: one element of `size` bytes for every dtype
    /// but the block quantizations.
    pub fn block(self) -> (usize, usize) {
        match self {
            Dtype::Q8_0 => (32, 34),
            Dtype::Q4_0 => (32, 18),
            _ => (1, self.size()),
        }
    }

    /// The elements held by the whole blocks of `bytes` bytes.
    pub fn elements_in(self, bytes: usize) -> usize {
        let (elements, block_bytes) = self.block();
        bytes / block_bytes * elements
    }

    /// The bytes of `elements` elements, in whole blocks (a partial block is dropped).
    pub fn bytes_of(self, elements: usize) -> usize {
        let (block_elements, block_bytes) = self.block();
        elements / block_elements * block_bytes
    }

    /// A stable one-byte code, used in frames and in the index.
    pub fn code(self) -> u8 {
        Dtype::ALL.iter().position(|d| *d == self).unwrap_or(0) as u8
    }

    /// The inverse of [`Dtype::code`].
    pub fn from_code(code: u8) -> Option<Dtype> {
        Dtype::ALL.get(code as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for dtype in Dtype::ALL {
            assert_eq!(Dtype::parse(dtype.name()), (!dtype.is_blocks()).then_some(dtype));
            assert_eq!(Dtype::from_code(dtype.code()), Some(dtype));
        }
        assert_eq!(Dtype::parse("F128"), None);
        assert_eq!((Dtype::Q8_0.code(), Dtype::Q4_0.code()), (15, 16));
        assert_eq!(Dtype::from_code(200), None);
    }

    #[test]
    fn blocks_hold_their_elements() {
        assert_eq!(Dtype::Q8_0.elements_in(34 * 3 + 10), 96);
        assert_eq!(Dtype::Q4_0.bytes_of(64), 36);
        assert_eq!(Dtype::F32.bytes_of(Dtype::BF16.elements_in(10)), 20);
    }
}
