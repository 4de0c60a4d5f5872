//! Entropy coding of one byte plane. Three candidates, all readable by a plain zstd decoder:
//! stored; zstd level 1 (wins where there are runs, as in delta planes); and a zstd frame of
//! Huffman-coded literals only, with no match search. Planes of float exponents are close to
//! memoryless, where matches cost more than they save: literals alone reach the order-0 entropy
//! (about 2 points of raw size better than zstd level 1 on BF16) at several times the speed.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::error::{CodecError, Result};
use crate::scratch;

/// How a plane is stored in a frame.
pub const PLANE_STORED: u8 = 0;
pub const PLANE_ZSTD: u8 = 1;

/// zstd level of the match-finding candidate.
pub const ZSTD_LEVEL: i32 = 1;

/// Share of the most common byte above which the plane probably has runs worth matching.
const RUNS_LIKELY: f64 = 0.5;

/// Bytes of no known layout are judged on one block of this many bytes in every
/// `SAMPLE_STRIDE` (see `Histogram::of_sample`).
const SAMPLE_BLOCK: usize = 4 << 10;
const SAMPLE_STRIDE: usize = 4;

/// Order-0 entropy, in bits per byte, above which a plane is stored without trying to compress
/// it (the low mantissa bytes of weights sit at about 7.95).
const INCOMPRESSIBLE_BITS: f64 = 7.9;

/// The plane compressed by the smallest candidate, in a buffer of this thread's [`scratch`],
/// or `None` when it is best stored as it is.
pub(crate) fn compressed_plane(plane: &[u8]) -> Option<Vec<u8>> {
    let histogram = Histogram::of(plane);
    if histogram.entropy_bits() > INCOMPRESSIBLE_BITS {
        return None;
    }
    let mut best = None;
    if histogram.most_common_share() > RUNS_LIKELY {
        if let Some(matched) = with_matching_compressor(plane) {
            // Huffman literals cannot go under their floor: when the matches already do, the
            // literals are not tried (the same choice, without the second try).
            if (matched.len() as f64) < histogram.literal_floor_bytes && matched.len() < plane.len() {
                return Some(matched);
            }
            best = Some(matched);
        }
    }
    // On a tie the literals are kept, as they decode faster.
    best = match (literals_only(plane), best) {
        (Some(literals), Some(matched)) if matched.len() < literals.len() => {
            scratch::give_back(literals);
            Some(matched)
        }
        (Some(literals), matched) => {
            if let Some(matched) = matched {
                scratch::give_back(matched);
            }
            Some(literals)
        }
        (None, matched) => matched,
    };
    match best {
        Some(bytes) if bytes.len() < plane.len() => Some(bytes),
        other => {
            if let Some(bytes) = other {
                scratch::give_back(bytes);
            }
            None
        }
    }
}

/// Appends a plane record: the mode, the u32 little-endian length of the body, and the body
/// (the plane through [`compressed_plane`], or as it is).
pub fn write_plane(out: &mut Vec<u8>, plane: &[u8]) {
    let compressed = compressed_plane(plane);
    let (mode, body) = match &compressed {
        Some(bytes) => (PLANE_ZSTD, &bytes[..]),
        None => (PLANE_STORED, plane),
    };
    out.push(mode);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    if let Some(bytes) = compressed {
        scratch::give_back(bytes);
    }
}

/// Reads the plane record at `*cursor` of `payload` into `target`, which it must fill exactly,
/// and moves the cursor past it.
pub fn read_plane(payload: &[u8], cursor: &mut usize, target: &mut [u8]) -> Result<()> {
    let body_start = cursor.checked_add(5).ok_or(CodecError::FrameTruncated)?;
    let head = payload.get(*cursor..body_start).ok_or(CodecError::FrameTruncated)?;
    let body_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let body_end = body_start.checked_add(body_len).ok_or(CodecError::FrameTruncated)?;
    let body = payload.get(body_start..body_end).ok_or(CodecError::FrameTruncated)?;
    match head[0] {
        PLANE_STORED if body_len == target.len() => target.copy_from_slice(body),
        PLANE_ZSTD => decompress_into(body, target)?,
        _ => return Err(CodecError::FrameCorrupt("bad plane header")),
    }
    *cursor = body_end;
    Ok(())
}

/// Appends u32 words as four plane records, byte p of every word in plane p (none when there
/// are no words): scales and the like, whose high bytes repeat.
pub fn write_word_planes(out: &mut Vec<u8>, words: &[u32]) {
    if words.is_empty() {
        return;
    }
    for byte in 0..4 {
        let plane: Vec<u8> = words.iter().map(|word| word.to_le_bytes()[byte]).collect();
        write_plane(out, &plane);
    }
}

/// Reads `count` words written by [`write_word_planes`] at `*cursor`, moving the cursor past
/// them.
pub fn read_word_planes(payload: &[u8], cursor: &mut usize, count: usize) -> Result<Vec<u32>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut planes = vec![0u8; count * 4];
    for plane in planes.chunks_exact_mut(count) {
        read_plane(payload, cursor, plane)?;
    }
    Ok((0..count).map(|i| u32::from_le_bytes([0, 1, 2, 3].map(|p| planes[p * count + i]))).collect())
}

/// zstd level for bytes of no known layout (text, configs, archives). Level 1 (with the
/// settings below) keeps a real tokenizer.json at 48.0% of raw upstream (level 3: 44.3%, at half the speed on text:
/// docs/benchmarks.md, issue 17).
pub const OPAQUE_ZSTD_LEVEL: i32 = 1;

/// Level 1's match finder narrowed for chunks of at most 1 MiB: a 2,048-entry hash table that
/// stays in L1, and matches of at least 6 bytes. On the corpus text zstd then runs faster and
/// compresses better than with level 1's own choice (370 against 323 MB/s, 47.9% against 48.6%
/// of raw for tokenizer.json); on binary bytes taken as opaque it loses about 2 points of raw
/// (docs/benchmarks.md, issue 17).
const OPAQUE_HASH_LOG: u32 = 11;
const OPAQUE_MIN_MATCH: u32 = 6;

/// A compressor for bytes of no known layout, as [`compress_opaque`] uses it.
fn opaque_compressor() -> Option<zstd::bulk::Compressor<'static>> {
    use zstd::stream::raw::CParameter;
    let mut compressor = zstd::bulk::Compressor::new(OPAQUE_ZSTD_LEVEL).ok()?;
    compressor.set_parameter(CParameter::HashLog(OPAQUE_HASH_LOG)).ok()?;
    compressor.set_parameter(CParameter::MinMatch(OPAQUE_MIN_MATCH)).ok()?;
    Some(compressor)
}

/// Compresses bytes of no known layout with match finding, or `None` when it would not pay:
/// bytes whose order-0 entropy says they are random are not even tried.
pub fn compress_opaque(bytes: &[u8]) -> Option<Vec<u8>> {
    if Histogram::of_sample(bytes).entropy_bits() > INCOMPRESSIBLE_BITS {
        return None;
    }
    let compressed = compress_in(&OPAQUE_COMPRESSOR, opaque_compressor, bytes)?;
    (compressed.len() < bytes.len()).then_some(compressed)
}

/// A thread's zstd compression context, made on first use.
type KeptCompressor = RefCell<Option<zstd::bulk::Compressor<'static>>>;

thread_local! {
    /// Each thread's compression context for opaque bytes.
    static OPAQUE_COMPRESSOR: KeptCompressor = const { RefCell::new(None) };
}

/// `bytes` through this thread's compressor in `kept`, made by `make` on first use; `None` if
/// zstd refused.
fn compress_in(kept: &'static LocalKey<KeptCompressor>, make: impl FnOnce() -> Option<zstd::bulk::Compressor<'static>>, bytes: &[u8]) -> Option<Vec<u8>> {
    kept.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match slot.as_mut() {
            Some(compressor) => compressor,
            None => slot.insert(make()?),
        };
        let mut out = scratch::take_empty(zstd::zstd_safe::compress_bound(bytes.len()));
        match compressor.compress_to_buffer(bytes, &mut out) {
            Ok(_) => Some(out),
            Err(_) => {
                scratch::give_back(out);
                None
            }
        }
    })
}

/// Decompresses one zstd frame that must hold exactly `raw_len` bytes into `out`, whose bytes
/// it replaces (its capacity is reused).
pub fn decompress_into_vec(bytes: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    out.reserve(raw_len);
    // Into the room reserved (zstd writes no more than it has), so nothing is zeroed first.
    let written = with_decompressor(|decompressor| decompressor.decompress_to_buffer(bytes, out))?;
    if written != raw_len {
        return Err(CodecError::FrameCorrupt("zstd output length differs from raw length"));
    }
    Ok(())
}

/// Decompresses one zstd frame into `out`, which it must fill exactly.
pub fn decompress_into(bytes: &[u8], out: &mut [u8]) -> Result<()> {
    let written = with_decompressor(|decompressor| decompressor.decompress_to_buffer(bytes, out))?;
    if written != out.len() {
        return Err(CodecError::FrameCorrupt("zstd output length differs from raw length"));
    }
    Ok(())
}

thread_local! {
    /// Each thread's decompression context: making one per plane cost as much as decoding a
    /// small plane.
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Runs `work` with this thread's decompression context, made on first use.
fn with_decompressor<T>(work: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>) -> Result<T> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let mut decompressor = match slot.take() {
            Some(decompressor) => decompressor,
            None => zstd::bulk::Decompressor::new().map_err(|error| CodecError::Zstd(error.to_string()))?,
        };
        let result = work(&mut decompressor).map_err(|error| CodecError::Zstd(error.to_string()));
        *slot = Some(decompressor);
        result
    })
}

/// Byte counts of a plane.
struct Histogram {
    counts: [u32; 256],
    total: usize,
    /// The least a zstd frame of the plane's literals can take, in bytes (0 when not counted):
    /// see [`Histogram::of`].
    literal_floor_bytes: f64,
}

/// The smallest zstd frame header with its magic number.
const FRAME_HEADER_FLOOR: f64 = 6.0;
/// A zstd block's header.
const BLOCK_HEADER: f64 = 3.0;
/// Blocks of literals only shorter than this may be written as one repeated byte (zstd 1.5's
/// `ZSTD_maybeRLE`), in 1 byte after the header.
const RLE_BLOCK_BELOW: usize = 10;

impl Histogram {
    /// The counts of `plane`, with the floor of its literals in a zstd frame: the frame's magic
    /// number and smallest header; per block its header and then its bytes as they are, or
    /// the smallest literals and sequences headers (1 byte each) and its literals, 1 byte when
    /// they are one value repeated, else Huffman-coded down to their order-0 entropy and at
    /// least a bit each. zstd cuts a frame into
    /// blocks of `ZSTD_BLOCKSIZE_MAX` from its start (the window of a shorter plane covers it
    /// whole, one block), each with its own Huffman table. The bound rests on zstd's block
    /// format and on how zstd 1.5 cuts blocks (pinned by zstd-sys); the proptest below holds
    /// zstd to it.
    fn of(plane: &[u8]) -> Histogram {
        let mut whole = Histogram { counts: [0; 256], total: 0, literal_floor_bytes: FRAME_HEADER_FLOOR };
        for block in plane.chunks(zstd_sys::ZSTD_BLOCKSIZE_MAX as usize) {
            let block = Histogram::of_blocks([block]);
            let content = if block.total < RLE_BLOCK_BELOW {
                1.0
            } else if block.counts.iter().filter(|count| **count > 0).count() < 2 {
                3.0
            } else {
                // A Huffman code spends at least a bit on every literal.
                let coded = 2.0 + block.entropy_bits().max(1.0) * block.total as f64 / 8.0;
                coded.min(block.total as f64)
            };
            whole.literal_floor_bytes += BLOCK_HEADER + content;
            for (count, more) in whole.counts.iter_mut().zip(block.counts) {
                *count += more;
            }
            whole.total += block.total;
        }
        // Rounding in the sums above must not lift the floor over a length it could equal.
        whole.literal_floor_bytes = (whole.literal_floor_bytes - 1.0).max(0.0);
        whole
    }

    /// The histogram of one block of [`SAMPLE_BLOCK`] bytes in [`SAMPLE_STRIDE`], spread over
    /// the whole of `bytes`: enough to tell random bytes from the rest at a quarter of the cost.
    /// A wrong guess costs speed, or size when random-looking blocks fall where the sample
    /// looks (a chunk under 16 KiB is judged on its first 4 KiB), never bytes: what zstd makes
    /// is kept only when it is smaller.
    fn of_sample(bytes: &[u8]) -> Histogram {
        Histogram::of_blocks(bytes.chunks(SAMPLE_BLOCK * SAMPLE_STRIDE).map(|stride| &stride[..stride.len().min(SAMPLE_BLOCK)]))
    }

    /// The histogram of the bytes of all `blocks` together.
    fn of_blocks<'a>(blocks: impl IntoIterator<Item = &'a [u8]>) -> Histogram {
        // Eight tables counted in turn: a run of one byte value then does not make each
        // increment wait for the one before. Lines of 64 zeros (most of a delta plane) are
        // counted whole.
        let mut tables = [[0u32; 256]; 8];
        let mut zero_lines = 0u32;
        let mut total = 0;
        for block in blocks {
            let mut lines = block.chunks_exact(64);
            for line in &mut lines {
                let words: [u64; 8] = std::array::from_fn(|i| u64::from_le_bytes(line[i * 8..i * 8 + 8].try_into().expect("eight bytes")));
                if words.iter().fold(0, |any, word| any | word) == 0 {
                    zero_lines += 1;
                    continue;
                }
                for word in words {
                    for (lane, table) in tables.iter_mut().enumerate() {
                        table[(word >> (lane * 8)) as u8 as usize] += 1;
                    }
                }
            }
            for byte in lines.remainder() {
                tables[0][*byte as usize] += 1;
            }
            total += block.len();
        }
        tables[0][0] += zero_lines * 64;
        let counts = std::array::from_fn(|value| tables.iter().map(|table| table[value]).sum());
        Histogram { counts, total, literal_floor_bytes: 0.0 }
    }

    fn most_common_share(&self) -> f64 {
        f64::from(self.counts.iter().max().copied().unwrap_or(0)) / self.total.max(1) as f64
    }

    /// Order-0 entropy in bits per byte.
    fn entropy_bits(&self) -> f64 {
        let total = self.total.max(1) as f64;
        self.counts
            .iter()
            .filter(|count| **count > 0)
            .map(|count| {
                let p = f64::from(*count) / total;
                -p * p.log2()
            })
            .sum()
    }
}

/// `plane` through zstd level 1 (match finding), with this thread's compressor; `None` if zstd
/// refused.
fn with_matching_compressor(plane: &[u8]) -> Option<Vec<u8>> {
    compress_in(&MATCHING, || zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(), plane)
}

thread_local! {
    /// Each thread's level-1 compression context: making one per plane cost a twentieth of an
    /// encode.
    static MATCHING: KeptCompressor = const { RefCell::new(None) };
}

/// A zstd compression context, made once per thread.
struct Context(*mut zstd_sys::ZSTD_CCtx);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the pointer came from ZSTD_createCCtx and is freed once, here.
        unsafe {
            zstd_sys::ZSTD_freeCCtx(self.0);
        }
    }
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

/// A zstd frame holding `plane` as Huffman-coded literals with no matches, or None if zstd
/// refused. Uses `ZSTD_compressSequences` with an empty sequence list (zstd's experimental API,
/// pinned by the zstd-sys version).
fn literals_only(plane: &[u8]) -> Option<Vec<u8>> {
    CONTEXT.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            // SAFETY: ZSTD_createCCtx has no preconditions; null is checked below.
            let pointer = unsafe { zstd_sys::ZSTD_createCCtx() };
            if pointer.is_null() {
                return None;
            }
            *slot = Some(Context(pointer));
        }
        let context = slot.as_ref()?.0;
        // SAFETY: `context` is a live context owned by this thread. The destination has room
        // for ZSTD_compressBound(len) bytes, the bound zstd documents for any input; the source
        // pointer and length come from one slice; a null sequence array with count 0 is allowed.
        unsafe {
            zstd_sys::ZSTD_CCtx_reset(context, zstd_sys::ZSTD_ResetDirective::ZSTD_reset_session_and_parameters);
            zstd_sys::ZSTD_CCtx_setParameter(context, zstd_sys::ZSTD_cParameter::ZSTD_c_compressionLevel, ZSTD_LEVEL);
            let bound = zstd_sys::ZSTD_compressBound(plane.len());
            let mut out = scratch::take_empty(bound);
            let written = zstd_sys::ZSTD_compressSequences(
                context,
                out.as_mut_ptr().cast(),
                bound,
                std::ptr::null(),
                0,
                plane.as_ptr().cast(),
                plane.len(),
            );
            if zstd_sys::ZSTD_isError(written) != 0 {
                scratch::give_back(out);
                return None;
            }
            // zstd wrote the first `written` bytes, at most `bound`, the room `out` has.
            out.set_len(written);
            Some(out)
        }
    })
}

#[cfg(test)]
mod tests;
