//! The run lengths of an ordered delta, stored in its frame (flag bit 6, frame version 5): how
//! many of the chunk's elements each base context holds. A decoder that has them places each
//! element without first counting the contexts of the whole base, a pass that took a seventh
//! of a delta's decode.
//!
//! The record (docs/format.md, section 4): the first context F (u8), the number of contexts
//! N − 1 (u8), then the element counts of contexts F to F + N − 1, each an unsigned LEB128
//! varint of at most four bytes. Contexts outside that range hold no element; F + N − 1 is at
//! most 255. The decoder checks that the counts add up to the chunk's elements. The varints are
//! written here rather than by a crate: a bounded length and its error are all this needs.

use crate::error::{CodecError, Result};

/// Elements per context, indexed by context.
pub type Counts = [usize; 256];

/// Bytes of a varint at most: its values stay under 2^28, more than a frame's elements.
const MAX_VARINT_BYTES: usize = 4;

/// Bytes a record takes at most: two, and a varint for each of 256 contexts.
pub const MAX_RECORD_LEN: usize = 2 + MAX_VARINT_BYTES * 256;

/// Appends the record of `counts` (whose values are below 2^28) to `out`.
pub fn write(counts: &Counts, out: &mut Vec<u8>) {
    let first = counts.iter().position(|&count| count > 0).unwrap_or(0);
    let last = counts.iter().rposition(|&count| count > 0).unwrap_or(0);
    out.extend_from_slice(&[first as u8, (last - first) as u8]);
    for &count in &counts[first..=last] {
        let mut value = count;
        while value >= 0x80 {
            out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
}

/// Reads a record from the start of `bytes`: the counts and the bytes the record took.
pub fn read(bytes: &[u8]) -> Result<(Counts, usize)> {
    let [first, span] = *bytes.first_chunk::<2>().ok_or(CodecError::FrameTruncated)?;
    let (first, last) = (usize::from(first), usize::from(first) + usize::from(span));
    if last > 255 {
        return Err(CodecError::FrameCorrupt("run lengths past the last context"));
    }
    let mut counts = [0usize; 256];
    let mut cursor = 2;
    for count in &mut counts[first..=last] {
        let mut value = 0usize;
        let mut shift = 0;
        loop {
            if shift == 7 * MAX_VARINT_BYTES {
                return Err(CodecError::FrameCorrupt("run length over four bytes"));
            }
            let byte = *bytes.get(cursor).ok_or(CodecError::FrameTruncated)?;
            cursor += 1;
            value |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        *count = value;
    }
    Ok((counts, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_record_is_the_range_of_contexts_held() {
        let mut counts = [0usize; 256];
        counts[120] = 3;
        counts[122] = 300;
        let mut record = Vec::new();
        write(&counts, &mut record);
        assert_eq!(record, [120, 2, 3, 0, 0xac, 0x02]);
        assert_eq!(read(&record), Ok((counts, 6)));
        let mut none = Vec::new();
        write(&[0; 256], &mut none);
        assert_eq!(none, [0, 0, 0]);
    }

    #[test]
    fn bad_records_are_refused() {
        assert_eq!(read(&[7]), Err(CodecError::FrameTruncated));
        assert_eq!(read(&[200, 2, 1, 1]), Err(CodecError::FrameTruncated));
        assert!(matches!(read(&[250, 6, 0, 0, 0, 0, 0, 0, 0]), Err(CodecError::FrameCorrupt(_))));
        assert!(matches!(read(&[0, 0, 0x80, 0x80, 0x80, 0x80, 0x01]), Err(CodecError::FrameCorrupt(_))));
        assert_eq!(read(&[0, 0, 0xff, 0xff, 0xff, 0x7f]).map(|(counts, used)| (counts[0], used)), Ok(((1 << 28) - 1, 6)));
    }

    proptest! {
        #[test]
        fn records_round_trip(sparse in proptest::collection::vec((any::<u8>(), 0usize..1 << 28), 0..40), tail in any::<u8>()) {
            let mut counts = [0usize; 256];
            for (context, count) in sparse {
                counts[usize::from(context)] = count;
            }
            let mut record = Vec::new();
            write(&counts, &mut record);
            let used = record.len();
            record.push(tail);
            prop_assert_eq!(read(&record), Ok((counts, used)));
        }
    }
}
