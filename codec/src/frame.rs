//! Frames: one encoded chunk, self-describing and checksummed (see docs/format.md).
//!
//! ```text
//! 0   4  magic "TGFR"
//! 4   1  version (1; 2 when flag bit 4 is set, 3 when the conversion is a block quantization;
//!           4 when flag bit 5 is set; 5 when flag bit 6 is set)
//! 5   1  codec: 0 stored, 1 zstd, 2 byte planes, 3 levels
//! 6   1  element width in bytes (1..=8): the byte planes of codec 2, the ordered difference
//! 7   1  flags: bit 0 delta against a base, bit 1 elements rotated left one bit,
//!           bit 2 the delta is an ordered-integer difference (else XOR),
//!           bit 3 elements grouped by base context,
//!           bit 4 the base is converted to this frame's dtype first (version 2, 3, 4 or 5),
//!           bit 5 the delta is against a window of the base chunk (version 4 or 5),
//!           bit 6 the ordered delta's runs precede its planes, after any group scales
//!           (version 5)
//! 8   4  raw length, u32 little-endian
//! 12  4  payload length, u32 little-endian
//! 16  32 BLAKE3-256 of the raw bytes (checksum and content hash)
//! 48  32 the base chunk's id (the gateway's scoped chunk id; the plain BLAKE3-256 of its raw
//!        bytes in `tensorgate pack` files), only when flag bit 0 is set
//! 80  8  the window: its first byte and its length in the decoded base chunk, u32
//!        little-endian each, only when flag bit 5 is set
//! 80/88  the conversion (`cast::Cast` code), then for a scaled one its scale (4 bytes), only
//!        when flag bit 4 is set
//! ..     payload
//! ```

use crate::cast::Conversion;
use crate::error::{CodecError, Result};
use crate::hash::ContentHash;

pub const MAGIC: [u8; 4] = *b"TGFR";
pub const VERSION: u8 = 1;
/// The version of frames whose base is converted (flag bit 4); every other frame is written
/// as version 1, which readers that predate conversions still read.
pub const VERSION_CONVERTED: u8 = 2;
/// The version of frames whose base is converted to GGUF blocks (`Cast::QuantizeBlocks`), which
/// readers of version 2 do not know.
pub const VERSION_BLOCKS: u8 = 3;
/// The version of frames taken against a window of their base chunk (flag bit 5), which
/// readers of version 3 do not know: the piece of a chunk that a multipart part holds is
/// stored against the same elements of the base tensor, which lie inside one of its chunks.
pub const VERSION_WINDOW: u8 = 4;
/// The version of frames that store their ordered delta's run lengths (flag bit 6, see
/// `ordered::runs`), which readers of version 4 do not know; such a frame may also have a
/// window and a conversion.
pub const VERSION_RUNS: u8 = 5;
/// Size of the fixed part of the header; a delta frame adds 32 bytes of base hash.
pub const FIXED_HEADER_LEN: usize = 48;
pub const FLAG_DELTA: u8 = 1;
pub const FLAG_ROTATED: u8 = 2;
pub const FLAG_SUBTRACT: u8 = 4;
pub const FLAG_GROUPED: u8 = 8;
pub const FLAG_CONVERTED: u8 = 16;
pub const FLAG_WINDOW: u8 = 32;
pub const FLAG_RUNS: u8 = 64;
const KNOWN_FLAGS: u8 = FLAG_DELTA | FLAG_ROTATED | FLAG_SUBTRACT | FLAG_GROUPED | FLAG_CONVERTED | FLAG_WINDOW | FLAG_RUNS;
/// Bytes of the window field.
const WINDOW_LEN: usize = 8;
/// Largest raw length a frame may declare, so that a hostile header cannot make a decoder
/// allocate without bound.
pub const MAX_RAW_LEN: u32 = 64 << 20;

/// How a frame's payload is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The (delta-transformed) bytes as they are.
    Stored,
    /// One zstd frame over the (delta-transformed) bytes.
    Zstd,
    /// Byte planes, each stored or zstd-compressed (see `planes` and `encode`).
    Planes,
    /// Elements as indices into a palette or as integer multiples of a scale per group (see
    /// `levels`).
    Levels,
}

impl Codec {
    fn id(self) -> u8 {
        match self {
            Codec::Stored => 0,
            Codec::Zstd => 1,
            Codec::Planes => 2,
            Codec::Levels => 3,
        }
    }

    fn from_id(id: u8) -> Result<Codec> {
        match id {
            0 => Ok(Codec::Stored),
            1 => Ok(Codec::Zstd),
            2 => Ok(Codec::Planes),
            3 => Ok(Codec::Levels),
            other => Err(CodecError::FrameCodec(other)),
        }
    }
}

/// The decoded header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub codec: Codec,
    pub width: u8,
    pub rotated: bool,
    /// The delta is an ordered-integer difference (see `ordered`), not an XOR.
    pub subtract: bool,
    /// Elements are grouped by base context (see `ordered`).
    pub grouped: bool,
    /// The run of each context precedes the planes, after any group scales (see
    /// `ordered::runs`).
    pub runs: bool,
    pub raw_len: u32,
    pub payload_len: u32,
    pub checksum: ContentHash,
    pub base: Option<ContentHash>,
    /// The bytes of the base chunk the delta is against, when not all of them (needs a base).
    pub window: Option<BaseWindow>,
    /// How the base's elements are converted before the delta is undone (needs a base).
    pub conversion: Option<Conversion>,
}

/// A byte range of a decoded base chunk: where a frame's base starts in it, and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseWindow {
    pub start: u32,
    pub len: u32,
}

impl BaseWindow {
    /// The window's bytes of `base`; `None` when it runs past its end.
    pub fn of<'a>(&self, base: &'a [u8]) -> Option<&'a [u8]> {
        let start = self.start as usize;
        base.get(start..start.checked_add(self.len as usize)?)
    }
}

impl FrameHeader {
    /// Bytes the header takes in front of the payload.
    pub fn header_len(&self) -> usize {
        FIXED_HEADER_LEN
            + if self.base.is_some() { 32 } else { 0 }
            + if self.window.is_some() { WINDOW_LEN } else { 0 }
            + self.conversion.map_or(0, Conversion::encoded_len)
    }

    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> usize {
        self.header_len() + self.payload_len as usize
    }

    /// Appends the header to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let flag = |set: bool, bit: u8| if set { bit } else { 0 };
        let flags = flag(self.base.is_some(), FLAG_DELTA)
            | flag(self.rotated, FLAG_ROTATED)
            | flag(self.subtract, FLAG_SUBTRACT)
            | flag(self.grouped, FLAG_GROUPED)
            | flag(self.conversion.is_some(), FLAG_CONVERTED)
            | flag(self.window.is_some(), FLAG_WINDOW)
            | flag(self.runs, FLAG_RUNS);
        let version = match (self.runs, self.window) {
            (true, _) => VERSION_RUNS,
            (false, Some(_)) => VERSION_WINDOW,
            (false, None) => self.conversion.map_or(VERSION, Conversion::frame_version),
        };
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[version, self.codec.id(), self.width, flags]);
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.payload_len.to_le_bytes());
        out.extend_from_slice(&self.checksum.0);
        if let Some(base) = self.base {
            out.extend_from_slice(&base.0);
        }
        if let Some(window) = self.window {
            out.extend_from_slice(&window.start.to_le_bytes());
            out.extend_from_slice(&window.len.to_le_bytes());
        }
        if let Some(conversion) = self.conversion {
            conversion.write(out);
        }
    }

    /// Reads and checks a header from the start of `frame`.
    pub fn read(frame: &[u8]) -> Result<FrameHeader> {
        let fixed = frame.get(..FIXED_HEADER_LEN).ok_or(CodecError::FrameTruncated)?;
        if fixed[..4] != MAGIC {
            return Err(CodecError::FrameMagic);
        }
        let version = fixed[4];
        if !(VERSION..=VERSION_RUNS).contains(&version) {
            return Err(CodecError::FrameVersion(version));
        }
        let codec = Codec::from_id(fixed[5])?;
        let width = fixed[6];
        let flags = fixed[7];
        if !(1..=8).contains(&width) {
            return Err(CodecError::FrameCorrupt("plane width out of range"));
        }
        if flags & !KNOWN_FLAGS != 0 {
            return Err(CodecError::FrameCorrupt("unknown flags"));
        }
        if flags & FLAG_DELTA == 0 && flags & (FLAG_SUBTRACT | FLAG_GROUPED | FLAG_CONVERTED | FLAG_WINDOW) != 0 {
            return Err(CodecError::FrameCorrupt("delta flags without a base"));
        }
        let runs = flags & FLAG_RUNS != 0;
        if runs != (version == VERSION_RUNS) {
            return Err(CodecError::FrameCorrupt("stored runs are version 5, and version 5 has them"));
        }
        if runs && (flags & (FLAG_SUBTRACT | FLAG_GROUPED) != FLAG_SUBTRACT | FLAG_GROUPED || codec != Codec::Planes || !matches!(width, 2 | 4 | 8)) {
            return Err(CodecError::FrameCorrupt("stored runs without a grouped ordered delta in planes"));
        }
        if !runs && (flags & FLAG_WINDOW != 0) != (version == VERSION_WINDOW) {
            return Err(CodecError::FrameCorrupt("a base window is version 4, and version 4 has one"));
        }
        if version < VERSION_WINDOW && (flags & FLAG_CONVERTED != 0) != (version >= VERSION_CONVERTED) {
            return Err(CodecError::FrameCorrupt("a converted base is version 2 or 3, and versions 2 and 3 have one"));
        }
        let raw_len = read_u32(&fixed[8..12]);
        let payload_len = read_u32(&fixed[12..16]);
        if raw_len > MAX_RAW_LEN || payload_len > MAX_RAW_LEN + 1024 {
            return Err(CodecError::FrameCorrupt("length over the frame limit"));
        }
        let checksum = ContentHash(fixed[16..48].try_into().map_err(|_| CodecError::FrameTruncated)?);
        let base = if flags & FLAG_DELTA != 0 {
            let bytes = frame.get(FIXED_HEADER_LEN..FIXED_HEADER_LEN + 32).ok_or(CodecError::FrameTruncated)?;
            Some(ContentHash(bytes.try_into().map_err(|_| CodecError::FrameTruncated)?))
        } else {
            None
        };
        let window = if flags & FLAG_WINDOW != 0 {
            let field = frame.get(FIXED_HEADER_LEN + 32..FIXED_HEADER_LEN + 32 + WINDOW_LEN).ok_or(CodecError::FrameTruncated)?;
            Some(BaseWindow { start: read_u32(&field[..4]), len: read_u32(&field[4..]) })
        } else {
            None
        };
        let conversion_at = FIXED_HEADER_LEN + 32 + if window.is_some() { WINDOW_LEN } else { 0 };
        let conversion = if flags & FLAG_CONVERTED != 0 {
            let cast = Conversion::read(frame.get(conversion_at..).ok_or(CodecError::FrameTruncated)?)?;
            if cast.target().size() != usize::from(width) {
                return Err(CodecError::FrameCorrupt("conversion to another width"));
            }
            if version < VERSION_WINDOW && cast.frame_version() != version {
                return Err(CodecError::FrameCorrupt("conversion of another frame version"));
            }
            Some(cast)
        } else {
            None
        };
        Ok(FrameHeader {
            codec,
            width,
            rotated: flags & FLAG_ROTATED != 0,
            subtract: flags & FLAG_SUBTRACT != 0,
            grouped: flags & FLAG_GROUPED != 0,
            runs,
            raw_len,
            payload_len,
            checksum,
            base,
            window,
            conversion,
        })
    }
}

/// Reads a little-endian u32 from a 4-byte slice (zero if shorter, which callers rule out).
pub(crate) fn read_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    let len = bytes.len().min(4);
    word[..len].copy_from_slice(&bytes[..len]);
    u32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cast::Cast;

    #[test]
    fn header_round_trips() {
        let header = FrameHeader {
            codec: Codec::Planes,
            width: 2,
            rotated: true,
            subtract: true,
            grouped: false,
            runs: false,
            raw_len: 1234,
            payload_len: 99,
            checksum: ContentHash([3; 32]),
            base: Some(ContentHash([9; 32])),
            window: None,
            conversion: None,
        };
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        assert_eq!(bytes.len(), header.header_len());
        assert_eq!(FrameHeader::read(&bytes), Ok(header));
        assert_eq!(FrameHeader::read(&bytes[..60]), Err(CodecError::FrameTruncated));
        bytes[4] = 6;
        assert_eq!(FrameHeader::read(&bytes), Err(CodecError::FrameVersion(6)));
        for version in [2, 3, 4, 5] {
            bytes[4] = version;
            assert!(FrameHeader::read(&bytes).is_err(), "version {version} without a conversion");
        }
    }

    #[test]
    fn a_converted_base_makes_a_version_2_header() {
        let header = FrameHeader { conversion: Some(Conversion::Whole(Cast::F32ToBf16)), ..ordered_delta() };
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        assert_eq!((bytes.len(), bytes[4], bytes[80]), (81, 2, 1));
        assert_eq!(FrameHeader::read(&bytes), Ok(header));
        assert_eq!(FrameHeader::read(&bytes[..80]), Err(CodecError::FrameTruncated));
        bytes[80] = Cast::Bf16ToF32.code();
        assert!(FrameHeader::read(&bytes).is_err(), "a conversion to F32 in a 2-byte frame");
        bytes[80] = Cast::Dequantize { narrow: crate::cast::Narrow::F8E4M3, wide: crate::dtype::Dtype::BF16, scale: 0 }.code();
        assert_eq!(FrameHeader::read(&bytes), Err(CodecError::FrameTruncated), "a scale cut off");
        bytes[80] = 0;
        assert!(FrameHeader::read(&bytes).is_err(), "an unknown conversion");
    }

    #[test]
    fn a_block_quantization_makes_a_version_3_header() {
        let blocks = Cast::QuantizeBlocks { wide: crate::dtype::Dtype::F16, blocks: crate::dtype::Dtype::Q8_0 };
        let header = FrameHeader {
            codec: Codec::Zstd,
            width: 1,
            rotated: false,
            subtract: false,
            grouped: false,
            runs: false,
            raw_len: 34,
            payload_len: 3,
            checksum: ContentHash([3; 32]),
            base: Some(ContentHash([9; 32])),
            window: None,
            conversion: Some(Conversion::Whole(blocks)),
        };
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        assert_eq!((bytes.len(), bytes[4], bytes[80]), (81, 3, 33));
        assert_eq!(FrameHeader::read(&bytes), Ok(header));
        bytes[4] = 2;
        assert!(FrameHeader::read(&bytes).is_err(), "a block quantization in version 2");
        bytes[4] = 3;
        bytes[80] = Cast::F32ToF16.code();
        assert!(FrameHeader::read(&bytes).is_err(), "a cast of version 2 in version 3");
    }

    /// The header of a 10-byte ordered delta of BF16 against base `[9; 32]`, 3 bytes of payload.
    fn ordered_delta() -> FrameHeader {
        FrameHeader {
            codec: Codec::Planes,
            width: 2,
            rotated: false,
            subtract: true,
            grouped: true,
            runs: false,
            raw_len: 10,
            payload_len: 3,
            checksum: ContentHash([3; 32]),
            base: Some(ContentHash([9; 32])),
            window: None,
            conversion: None,
        }
    }

    #[test]
    fn a_base_window_makes_a_version_4_header() {
        let mut header = FrameHeader { window: Some(BaseWindow { start: 6, len: 10 }), ..ordered_delta() };
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        assert_eq!((bytes.len(), bytes[4], bytes[7] & FLAG_WINDOW), (88, 4, FLAG_WINDOW));
        assert_eq!(FrameHeader::read(&bytes), Ok(header));
        assert_eq!(FrameHeader::read(&bytes[..87]), Err(CodecError::FrameTruncated));
        bytes[4] = 1;
        assert!(FrameHeader::read(&bytes).is_err(), "a window in version 1");
        header.conversion = Some(Conversion::Whole(crate::cast::Cast::F32ToBf16));
        let mut converted = Vec::new();
        header.write(&mut converted);
        assert_eq!((converted.len(), converted[4], converted[88]), (89, 4, 1));
        assert_eq!(FrameHeader::read(&converted), Ok(header));
        header.window = None;
        let mut plain = Vec::new();
        header.write(&mut plain);
        plain[4] = 4;
        assert!(FrameHeader::read(&plain).is_err(), "version 4 without a window");
    }

    #[test]
    fn stored_runs_make_a_version_5_header() {
        let mut header = FrameHeader { runs: true, ..ordered_delta() };
        let mut bytes = Vec::new();
        header.write(&mut bytes);
        assert_eq!((bytes.len(), bytes[4], bytes[7]), (80, 5, FLAG_DELTA | FLAG_SUBTRACT | FLAG_GROUPED | FLAG_RUNS));
        assert_eq!(FrameHeader::read(&bytes), Ok(header));
        bytes[4] = 4;
        assert!(FrameHeader::read(&bytes).is_err(), "stored runs in version 4");
        bytes[4] = 5;
        bytes[7] &= !FLAG_GROUPED;
        assert!(FrameHeader::read(&bytes).is_err(), "stored runs without grouping");
        bytes[7] |= FLAG_GROUPED;
        bytes[6] = 1;
        assert!(FrameHeader::read(&bytes).is_err(), "stored runs of 1-byte elements");
        bytes[6] = 2;
        bytes[5] = 1;
        assert!(FrameHeader::read(&bytes).is_err(), "stored runs in codec 1");
        bytes[5] = 2;
        bytes[7] &= !FLAG_DELTA;
        assert!(FrameHeader::read(&bytes).is_err(), "stored runs without a base");
        bytes[7] |= FLAG_DELTA;
        assert_eq!(FrameHeader::read(&bytes), Ok(header));
        // With a window and a conversion, still version 5.
        header.window = Some(BaseWindow { start: 6, len: 10 });
        header.conversion = Some(Conversion::Whole(crate::cast::Cast::F32ToBf16));
        let mut both = Vec::new();
        header.write(&mut both);
        assert_eq!((both.len(), both[4], both[88]), (89, 5, 1));
        assert_eq!(FrameHeader::read(&both), Ok(header));
        header.runs = false;
        let mut plain = Vec::new();
        header.write(&mut plain);
        plain[4] = 5;
        assert!(FrameHeader::read(&plain).is_err(), "version 5 without stored runs");
    }
}
