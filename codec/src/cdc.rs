//! Content-defined chunking of bytes of no known layout: cut points chosen by the content
//! (FastCDC 2020, the `fastcdc` crate), so that the same bytes cut the same way wherever they
//! sit in an object, and an insertion changes only the chunks around it.
//!
//! The cut points decide deduplication only, never how an object reads back: changing these
//! sizes (or the crate's algorithm) costs savings against chunks already stored, nothing else.

use fastcdc::v2020::FastCDC;

/// Smallest chunk cut, except an object's last.
pub const MIN_CDC_CHUNK: usize = 64 << 10;
/// The size chunks average: what a change in the middle of an object costs, and zstd's window.
pub const AVG_CDC_CHUNK: usize = 256 << 10;
/// Largest chunk cut: a cut is always decided once this many bytes are buffered.
pub const MAX_CDC_CHUNK: usize = 1 << 20;

/// Where the chunk at the start of `buffer` ends, or `None` when more bytes are needed to tell.
/// `ended` says the stream ends with `buffer`. A cut never depends on bytes past
/// [`MAX_CDC_CHUNK`], so cutting a stream piece by piece gives the cuts of the whole.
pub fn next_cut(buffer: &[u8], ended: bool) -> Option<usize> {
    if buffer.is_empty() || (!ended && buffer.len() < MAX_CDC_CHUNK) {
        return None;
    }
    let window = &buffer[..buffer.len().min(MAX_CDC_CHUNK)];
    let cut = FastCDC::new(window, MIN_CDC_CHUNK as u32, AVG_CDC_CHUNK as u32, MAX_CDC_CHUNK as u32)
        .next()
        .map_or(window.len(), |chunk| chunk.length);
    Some(cut.clamp(1, window.len()))
}

/// The chunk lengths of a whole buffer, as [`next_cut`] cuts it.
#[cfg(test)]
fn cut_all(mut buffer: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    while let Some(cut) = next_cut(buffer, true) {
        lengths.push(cut);
        buffer = &buffer[cut..];
    }
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let original = noise(8 << 20, 7);
        let mut edited = original.clone();
        edited.splice(4 << 20..4 << 20, noise(1024, 9));
        let chunks = |bytes: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            let mut start = 0;
            cut_all(bytes)
                .into_iter()
                .map(|len| {
                    start += len;
                    bytes[start - len..start].to_vec()
                })
                .collect()
        };
        let before = chunks(&original);
        let after = chunks(&edited);
        let new: usize = after.difference(&before).map(Vec::len).sum();
        assert!(new <= 2 * MAX_CDC_CHUNK, "{new} new bytes of {}", edited.len());
        assert!(after.len() > 8, "{} chunks", after.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn cuts_cover_the_stream_and_do_not_depend_on_how_it_arrives(
            seed in any::<u64>(),
            len in 0usize..3 << 20,
            piece in 1usize..300_000,
        ) {
            let bytes = noise(len, seed);
            let whole = cut_all(&bytes);
            prop_assert_eq!(whole.iter().sum::<usize>(), len);
            prop_assert!(whole.iter().all(|cut| *cut <= MAX_CDC_CHUNK));
            prop_assert!(whole.iter().rev().skip(1).all(|cut| *cut >= MIN_CDC_CHUNK));
            // Fed piece by piece, as ingest does.
            let mut buffer = Vec::new();
            let mut streamed = Vec::new();
            for arriving in bytes.chunks(piece) {
                buffer.extend_from_slice(arriving);
                while let Some(cut) = next_cut(&buffer, false) {
                    streamed.push(cut);
                    buffer.drain(..cut);
                }
            }
            while let Some(cut) = next_cut(&buffer, true) {
                streamed.push(cut);
                buffer.drain(..cut);
            }
            prop_assert_eq!(streamed, whole);
        }
    }
}
