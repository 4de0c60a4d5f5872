//! The storages a `torch.save` pickle names, read from its bytes without running it: each
//! tensor's storage is a persistent id, the tuple `("storage", <storage type>, key, location,
//! element count)`, which the pickler writes as a few opcodes in a row, from the second tuple on
//! with the repeated strings and the type as memo gets. Only those opcodes are read (mark,
//! strings, memo puts and gets, a global, integers, tuple, persistent id); anything else ends
//! the match. Written here rather than with a pickle crate because those run the pickle's
//! instructions, and only this one shape is needed.

/// The longest run of opcodes one storage tuple takes, in bytes (a global names its module
/// and type; keys are decimal digits): a scan over a pickle cut into pieces sees every tuple
/// whole if each piece repeats this many bytes of the one before.
pub const LONGEST_TUPLE: usize = 160;

/// Storage keys are decimal numbers: a longer one is not taken (nor kept in memory).
const MAX_KEY_DIGITS: usize = 20;

/// Every `(key, element count)` of a storage tuple found in `pickle`.
pub fn storage_sizes(pickle: &[u8]) -> Vec<(Vec<u8>, u64)> {
    memchr::memchr_iter(b'(', pickle).filter_map(|mark| storage_tuple(&pickle[mark + 1..])).collect()
}

/// The key and element count of the storage tuple `ops` starts with (after its mark), which
/// must end in a tuple and a persistent id.
fn storage_tuple(ops: &[u8]) -> Option<(Vec<u8>, u64)> {
    let mut reader = Ops { bytes: ops, at: 0 };
    if !reader.get() {
        (reader.string()? == b"storage").then_some(())?;
        reader.skip_put();
    }
    reader.storage_type()?;
    reader.skip_put();
    let key = reader.string().filter(|key| (1..=MAX_KEY_DIGITS).contains(&key.len()) && key.iter().all(u8::is_ascii_digit))?.to_vec();
    reader.skip_put();
    if !reader.get() {
        reader.string()?;
        reader.skip_put();
    }
    let count = reader.count()?;
    (reader.byte()? == b't').then_some(())?;
    reader.skip_put();
    (reader.byte()? == b'Q').then_some((key, count))
}

/// A cursor over pickle opcodes.
struct Ops<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Ops<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.at..self.at.checked_add(len)?)?;
        self.at += len;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32_le(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    /// BINUNICODE, SHORT_BINUNICODE, BINSTRING or SHORT_BINSTRING.
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            b'X' | b'T' => usize::try_from(self.u32_le()?).ok()?,
            0x8c | b'U' => usize::from(self.byte()?),
            _ => return None,
        };
        self.take(len)
    }

    /// Takes a BINGET or LONG_BINGET if one is next.
    fn get(&mut self) -> bool {
        let len = match self.bytes.get(self.at) {
            Some(b'h') => 2,
            Some(b'j') => 5,
            _ => return false,
        };
        self.at += len;
        true
    }

    /// BINPUT, LONG_BINPUT or MEMOIZE, if one is next.
    fn skip_put(&mut self) {
        let len = match self.bytes.get(self.at) {
            Some(b'q') => 2,
            Some(b'r') => 5,
            Some(0x94) => 1,
            _ => 0,
        };
        self.at += len;
    }

    /// The storage type: a GLOBAL (`c module\nname\n`) or a memo get of one written before.
    fn storage_type(&mut self) -> Option<()> {
        if self.get() {
            return Some(());
        }
        (self.byte()? == b'c').then_some(())?;
        for _ in 0..2 {
            let rest = self.bytes.get(self.at..)?;
            let line = memchr::memchr(b'\n', &rest[..rest.len().min(LONGEST_TUPLE)])?;
            self.at += line + 1;
        }
        Some(())
    }

    /// BININT1, BININT2, BININT (non-negative) or LONG1 of at most 8 bytes.
    fn count(&mut self) -> Option<u64> {
        match self.byte()? {
            b'K' => Some(u64::from(self.byte()?)),
            b'M' => Some(u64::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?))),
            b'J' => u64::try_from(i32::from_le_bytes(self.take(4)?.try_into().ok()?)).ok(),
            0x8a => {
                let len = usize::from(self.byte()?);
                let digits = self.take(len).filter(|digits| digits.len() <= 8 && digits.last().is_none_or(|last| last & 0x80 == 0))?;
                Some(digits.iter().rev().fold(0u64, |value, byte| value << 8 | u64::from(*byte)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The tuple as `torch.save` (pickle protocol 2) writes it: the first in full, the next
    /// with memo gets of the strings and the type written before.
    fn tuple(key: &str, count_ops: &[u8], first: bool) -> Vec<u8> {
        let mut ops = b"(".to_vec();
        ops.extend_from_slice(if first { b"X\x07\x00\x00\x00storageq\x05ctorch\nFloatStorage\nq\x06" } else { b"h\x05h\x06" });
        ops.push(b'X');
        ops.extend_from_slice(&(key.len() as u32).to_le_bytes());
        ops.extend_from_slice(key.as_bytes());
        ops.extend_from_slice(b"q\x07");
        ops.extend_from_slice(if first { b"X\x03\x00\x00\x00cpuq\x08" } else { b"h\x08" });
        ops.extend_from_slice(count_ops);
        ops.extend_from_slice(b"tq\tQ");
        ops
    }

    #[test]
    fn every_storage_tuple_is_read() {
        let mut pickle = b"\x80\x02}q\x00(X\x06\x00\x00\x00weightq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x04(".to_vec();
        pickle.extend(tuple("0", b"J\x00\x02\x01\x00", true));
        pickle.extend(tuple("1", b"K\x80", false));
        pickle.extend(tuple("12", b"M\x00\x01", false));
        pickle.extend(tuple("3", b"\x8a\x05\x00\x00\x00\x00\x01", false));
        let sizes = storage_sizes(&pickle);
        assert_eq!(sizes, vec![(b"0".to_vec(), 66048), (b"1".to_vec(), 128), (b"12".to_vec(), 256), (b"3".to_vec(), 1 << 32)]);
    }

    #[test]
    fn other_shapes_are_passed_over() {
        let mut pickle = tuple("0", b"J\xff\xff\xff\xff", true);
        pickle.extend(b"(X\x07\x00\x00\x00storage".iter());
        pickle.extend(tuple("1", b"N", false));
        pickle.extend(tuple("weights", b"K\x01", false));
        let mut unfinished = tuple("2", b"K\x01", false);
        unfinished.pop();
        pickle.extend(unfinished);
        assert!(storage_sizes(&pickle).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
            let mut pickle = tuple("7", b"K\x09", true);
            pickle.extend(bytes);
            let _ = storage_sizes(&pickle);
            let _ = storage_sizes(&pickle[..cut.index(pickle.len())]);
        }
    }
}
