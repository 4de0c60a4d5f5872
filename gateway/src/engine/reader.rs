//! The GET path: which segments a range touches, and a stream that fetches only those frames
//! and blob ranges, decodes frames on the cores (rayon, see `on_cores`; a delta frame with its
//! base), and yields the bytes in order with a bounded number of pieces in flight. Decoded
//! chunks and bases go through the chunk cache, so that ranges read at once share a chunk.

use std::ops::Range;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use futures::stream::{self, Stream, StreamExt};
use futures::SinkExt;
use tensorgate_codec::{decode_frame_into, decode_frame_unchecked_into, BaseChunk, ContentHash, FrameHeader, DEFAULT_CHUNK_SIZE};
use tensorgate_index::{ChunkHash, ChunkRecord, ObjectRecord, Segment, MAX_BASE_DEPTH};

use crate::engine::admission::BytesPermit;
use crate::engine::chunk_cache::{Checked, Lookup};
use crate::engine::decode_slots::Urgency;
use crate::engine::{on_cores, Store, READ_ATTEMPTS};
use crate::metrics::CacheLabels;

/// Blob ranges are fetched in pieces of at most this size, to bound memory.
const BLOB_PIECE: u64 = 4 << 20;

/// A decode slot stands for this many bytes of chunk: a full-sized chunk takes
/// [`SLOTS_PER_FULL_CHUNK`], the small chunks of opaque objects one each, so that many of them
/// are fetched at once where one full-sized chunk would be.
pub const SLOT_BYTES: usize = 1 << 20;
pub const SLOTS_PER_FULL_CHUNK: u32 = (DEFAULT_CHUNK_SIZE / SLOT_BYTES) as u32;
const _: () = assert!(SLOTS_PER_FULL_CHUNK >= 1, "a full-sized chunk takes at least one slot");

/// At most this many times [`Store::prefetch`] pieces are fetched ahead for a GET of small
/// chunks.
const MAX_PREFETCH_FACTOR: usize = 16;

/// A part of the response: bytes of one segment.
#[derive(Debug, Clone)]
pub enum Piece {
    Inline(Bytes),
    /// Bytes `within` of the chunk `hash`, `len` bytes long.
    Chunk { hash: ChunkHash, len: u32, within: Range<usize> },
    Blob { key: String, range: Range<u64> },
}

/// The pieces that make up bytes `range` of the object.
pub fn plan(record: &ObjectRecord, range: Range<u64>) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut segment_start = 0u64;
    for segment in &record.segments {
        let segment_end = segment_start + segment.len();
        let start = range.start.max(segment_start);
        let end = range.end.min(segment_end);
        if start < end {
            let within = (start - segment_start)..(end - segment_start);
            match segment {
                Segment::Inline(bytes) => {
                    pieces.push(Piece::Inline(Bytes::copy_from_slice(&bytes[within.start as usize..within.end as usize])))
                }
                Segment::Chunk { hash, len } => {
                    pieces.push(Piece::Chunk { hash: *hash, len: *len, within: within.start as usize..within.end as usize })
                }
                Segment::Blob { key, offset, .. } => {
                    let mut cursor = offset + within.start;
                    let stop = offset + within.end;
                    while cursor < stop {
                        let next = (cursor + BLOB_PIECE).min(stop);
                        pieces.push(Piece::Blob { key: key.clone(), range: cursor..next });
                        cursor = next;
                    }
                }
            }
        }
        segment_start = segment_end;
    }
    pieces
}

/// Who takes the bytes a read fetches.
#[derive(Debug, Clone)]
pub enum Reader {
    /// A client's answer: each piece holds its share of the tenant's in-flight byte budget
    /// from before it is fetched until hyper has handed it to the connection.
    Client { tenant: String },
    /// The gateway itself (the packer, CopyObject, UploadPartCopy): its reads hold at most
    /// their read-ahead (UploadPartCopy's ingest takes a body's share of the budget; the
    /// packer and CopyObject take none).
    Gateway,
}

/// Streams the pieces' bytes in order. A task fetches and decodes a few pieces ahead; it
/// stops at the first error (which ends the stream with it) or when the client goes away.
/// Each piece is fetched by a task of its own, which runs to its end (and gives back its
/// decode slot) however slowly the client takes the bytes. A client's pieces take their share
/// of the byte budget here, one after the other in the order they are sent, before their task
/// starts: an answer then only ever holds the pieces it sends next, so one of them always
/// goes out (taken in the tasks, a later piece could hold the budget its predecessor waits for).
pub fn stream(store: Arc<Store>, pieces: Vec<Piece>, reader: Reader) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync {
    let prefetch = prefetch_for(&pieces, store.prefetch.get());
    let (mut sender, receiver) = futures::channel::mpsc::channel(1);
    let metrics_store = store.clone();
    let holding_store = store.clone();
    tokio::spawn(async move {
        let fetched = stream::iter(pieces)
            .then(move |piece| {
                let store = holding_store.clone();
                let reader = reader.clone();
                async move {
                    let permit = hold(&store, piece.held_bytes(), &reader).await;
                    (piece, permit)
                }
            })
            .map(move |(piece, permit)| {
                let store = store.clone();
                let task = tokio::spawn(async move {
                    let permit = permit?;
                    Ok(held(fetch_piece(&store, piece, Urgency::Ahead).await?, permit))
                });
                async move { task.await.map_err(anyhow::Error::from).and_then(|fetched| fetched) }
            })
            .buffered(prefetch);
        let mut fetched = std::pin::pin!(fetched);
        while let Some(result) = fetched.next().await {
            let failed = result.is_err();
            if let Ok(bytes) = &result {
                metrics_store.metrics.bytes_out.inc_by(bytes.len() as u64);
            }
            if let Err(error) = &result {
                tracing::error!(error = format!("{error:#}"), "read failed; ending the response early");
            }
            if sender.send(result.map_err(std::io::Error::other)).await.is_err() || failed {
                break;
            }
        }
    });
    receiver
}

/// How many pieces to fetch ahead: `prefetch` full-sized chunks' worth of memory, so more
/// pieces when even the largest is small (the chunks of opaque objects), up to a bound.
fn prefetch_for(pieces: &[Piece], prefetch: usize) -> usize {
    let largest = pieces.iter().map(Piece::held_bytes).max().unwrap_or(1);
    let wanted = (prefetch as u64 * DEFAULT_CHUNK_SIZE as u64).div_ceil(largest.max(1));
    (wanted as usize).clamp(prefetch, prefetch * MAX_PREFETCH_FACTOR)
}

impl Piece {
    /// Bytes a fetched piece holds in memory: a chunk piece is a slice of its whole chunk.
    fn held_bytes(&self) -> u64 {
        match self {
            Piece::Inline(bytes) => bytes.len() as u64,
            Piece::Chunk { len, .. } => u64::from(*len),
            Piece::Blob { range, .. } => range.end - range.start,
        }
    }
}

/// Fetches the pieces an answer starts with, one after the other, all or an error: their
/// decodes go ahead of other answers' read-ahead (see `decode_slots`). Their share of the byte
/// budget is taken once for all of them, so that the answer never waits for more than the
/// tenant's whole share (which `Admission::hold_bytes` caps a share at) on top of a share it
/// holds already, which it would wait for forever; the share goes with the last of them.
pub async fn fetch_first(store: &Store, pieces: Vec<Piece>, reader: &Reader) -> anyhow::Result<Vec<Bytes>> {
    let bytes = pieces.iter().map(Piece::held_bytes).sum();
    let mut permit = hold(store, bytes, reader).await?;
    let last = pieces.len().saturating_sub(1);
    let mut fetched = Vec::with_capacity(pieces.len());
    for (index, piece) in pieces.into_iter().enumerate() {
        let piece_bytes = fetch_piece(store, piece, Urgency::First).await?;
        let bytes = held(piece_bytes, if index == last { permit.take() } else { None });
        store.metrics.bytes_out.inc_by(bytes.len() as u64);
        fetched.push(bytes);
    }
    Ok(fetched)
}

/// The share of the byte budget `bytes` read for a client hold; none for the gateway's reads.
async fn hold(store: &Store, bytes: u64, reader: &Reader) -> anyhow::Result<Option<BytesPermit>> {
    match reader {
        Reader::Client { tenant } => Ok(Some(store.hold_answer_bytes(tenant, bytes).await?)),
        Reader::Gateway => Ok(None),
    }
}

/// The bytes, holding `permit` (if any) until they are dropped.
fn held(bytes: Bytes, permit: Option<BytesPermit>) -> Bytes {
    match permit {
        Some(permit) => Bytes::from_owner(HeldBytes { bytes, _permit: permit }),
        None => bytes,
    }
}

/// Bytes of an answer with the share of the byte budget they hold.
struct HeldBytes {
    bytes: Bytes,
    _permit: BytesPermit,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

async fn fetch_piece(store: &Store, piece: Piece, urgency: Urgency) -> anyhow::Result<Bytes> {
    match piece {
        Piece::Inline(bytes) => Ok(bytes),
        Piece::Blob { key, range } => store.read_upstream(&key, range).await,
        Piece::Chunk { hash, len, within } => {
            // A chunk kept, or being decoded for another read when this one looks, costs no
            // slot. A decode waits its turn for slots (an answer's first piece mostly before
            // read-ahead: see `decode_slots`) and takes them before it is announced: one that
            // took them once under way could wait on slots held by deltas waiting for it as
            // their base. Whoever holds a slot finishes without waiting on any client (`stream`
            // fetches each piece in a task of its own, and the other callers await the piece
            // themselves), so a slow reader never holds the others up.
            let found = match store.chunk_cache.kept(&hash) {
                Some(chunk) => Some((chunk, Lookup::Hit)),
                None => store.chunk_cache.decoded_elsewhere(&hash).await.map(|chunk| (chunk, Lookup::Shared)),
            };
            let chunk = match found {
                Some((chunk, lookup)) => {
                    count_lookup(store, lookup);
                    chunk
                }
                None => {
                    let slots = (len as usize).div_ceil(SLOT_BYTES).clamp(1, SLOTS_PER_FULL_CHUNK as usize) as u32;
                    let _slots = store.decode_slots.acquire(slots, urgency).await;
                    // Kept only when this read takes part of it: a neighbouring range may want
                    // the rest, where a stream reading whole chunks never comes back for one.
                    let partly = within.start > 0 || within.end < len as usize;
                    let (chunk, lookup) = cached_chunk(store, &hash, partly, || load_chunk(store, &hash)).await?;
                    if lookup == Lookup::Miss {
                        store.metrics.read_decoded_bytes.inc_by(chunk.len() as u64);
                    }
                    chunk
                }
            };
            chunk.get(within.clone()).map(|_| chunk.slice(within)).context("chunk shorter than its segment")
        }
    }
}

/// The chunk `hash` from the chunk cache, or decoded by `decode` (once for all the reads
/// that want it at the time, and kept if `keep`).
async fn cached_chunk<Decode, Decoded>(store: &Store, hash: &ChunkHash, keep: bool, decode: Decode) -> anyhow::Result<(Bytes, Lookup)>
where
    Decode: FnOnce() -> Decoded,
    Decoded: std::future::Future<Output = anyhow::Result<Bytes>>,
{
    let (bytes, lookup) = store.chunk_cache.get_or_decode(hash, keep, decode).await?;
    count_lookup(store, lookup);
    Ok((bytes, lookup))
}

fn count_lookup(store: &Store, lookup: Lookup) {
    store.metrics.chunk_cache.get_or_create(&CacheLabels { result: lookup.label() }).inc();
}

/// Fetches and decodes one chunk (with its base when it is a delta), read from the upstream
/// whatever the chunk cache holds (scrubbing relies on it).
pub async fn load_chunk(store: &Store, hash: &ChunkHash) -> anyhow::Result<Bytes> {
    load_chunk_tries(store, hash, READ_ATTEMPTS, 0, Checked::Yes).await
}

/// `depth` counts the deltas above this chunk that wait for it as their base; `checked` says
/// whether the result is checked against the chunk's hash.
async fn load_chunk_tries(store: &Store, hash: &ChunkHash, attempts: u32, depth: usize, checked: Checked) -> anyhow::Result<Bytes> {
    let record = store
        .index
        .chunk(hash)?
        .with_context(|| format!("chunk {} is not in the index", ContentHash(*hash)))?;
    check_chain(store, hash, &record)?;
    let frame = store
        .read_upstream_tries(&record.pack, record.offset..record.offset + u64::from(record.frame_len), attempts)
        .await?;
    let named_base = FrameHeader::read(&frame)?.base.map(|base| base.0);
    anyhow::ensure!(named_base == record.base, "the frame of chunk {} names another base than the index", ContentHash(*hash));
    decode_at(store, frame, depth, checked).await
}

/// Refuses a chunk whose chain of bases in the index loops or runs deeper than
/// [`MAX_BASE_DEPTH`], before anything of it is decoded: decoding a chunk announces it (see
/// `chunk_cache`), so a decode that met the chunk again as a base would wait for itself. Each
/// frame must then name the base the index gives it, so the decode follows this chain.
fn check_chain(store: &Store, hash: &ChunkHash, record: &ChunkRecord) -> anyhow::Result<()> {
    let mut seen = vec![*hash];
    let mut next = record.base;
    while let Some(base) = next {
        anyhow::ensure!(
            !seen.contains(&base) && seen.len() <= MAX_BASE_DEPTH,
            "the bases of chunk {} loop or run more than {MAX_BASE_DEPTH} deep",
            ContentHash(*hash)
        );
        seen.push(base);
        next = store.index.chunk(&base)?.and_then(|base_record| base_record.base);
    }
    Ok(())
}

/// Decodes a frame read from the upstream (with its base, for a delta), which checks it.
pub async fn decode(store: &Store, frame: Bytes) -> anyhow::Result<Bytes> {
    decode_at(store, frame, 0, Checked::Yes).await
}

/// A checked decode takes its base unchecked, which its own check covers (a wrong base gives
/// a wrong result); an unchecked one, a base, takes its own base checked, so that bytes kept
/// unchecked are never more than one delta away from the check that would find them wrong.
async fn decode_at(store: &Store, frame: Bytes, depth: usize, checked: Checked) -> anyhow::Result<Bytes> {
    let header = FrameHeader::read(&frame)?;
    let base_checked = match checked {
        Checked::Yes => Checked::AsBase,
        Checked::AsBase => Checked::Yes,
    };
    let base = match header.base {
        Some(base_hash) => Some((base_hash, load_base_at(store, &base_hash.0, READ_ATTEMPTS, depth + 1, base_checked).await?)),
        None => None,
    };
    store.metrics.frames_decoded.inc();
    let buffers = store.buffers.clone();
    let decoded = on_cores(move || {
        let base = base.as_ref().map(|(hash, bytes)| BaseChunk { hash: *hash, bytes });
        let mut out = buffers.take(header.raw_len as usize);
        match checked {
            Checked::Yes => decode_frame_into(&frame, base, &mut out),
            Checked::AsBase => decode_frame_unchecked_into(&frame, base, &mut out),
        }
        .map(|()| out)
    })
    .await?;
    match decoded {
        Ok(decoded) => Ok(store.buffers.hold(decoded)),
        Err(error) => {
            // The base may be what was wrong: the next decode that wants it reads it again.
            if let (Some(base_hash), Checked::AsBase) = (header.base, base_checked) {
                store.chunk_cache.forget_unchecked(&base_hash.0);
            }
            Err(error.into())
        }
    }
}

/// A base chunk, from the chunk cache or decoded. A base may itself be a delta (a gateway writes
/// deltas of deltas, and with a shared upstream another gateway may hold the same chunk as a
/// delta: any copy of a chunk decodes to the same bytes), so it is decoded with its own base,
/// up to [`MAX_BASE_DEPTH`] deltas deep.
pub async fn load_base(store: &Store, hash: &ChunkHash) -> anyhow::Result<Bytes> {
    load_base_tries(store, hash, READ_ATTEMPTS).await
}

/// [`load_base`] with `attempts` upstream attempts at most: a write choosing a base can do
/// without one (it encodes the chunk on its own), so it tries once (unless it waits for a
/// read's decode of the same chunk, which tries as that read does).
pub async fn load_base_tries(store: &Store, hash: &ChunkHash, attempts: u32) -> anyhow::Result<Bytes> {
    load_base_at(store, hash, attempts, 1, Checked::Yes).await
}

/// A base chunk, `checked` or not; a checked copy kept serves either way.
async fn load_base_at(store: &Store, hash: &ChunkHash, attempts: u32, depth: usize, checked: Checked) -> anyhow::Result<Bytes> {
    anyhow::ensure!(depth <= MAX_BASE_DEPTH, "chunk {} ends a chain of more than {MAX_BASE_DEPTH} deltas", ContentHash(*hash));
    let kept_checked = match checked {
        Checked::AsBase => store.chunk_cache.kept(hash),
        Checked::Yes => None,
    };
    let (bytes, lookup) = match kept_checked {
        Some(bytes) => (bytes, Lookup::Hit),
        None => {
            let decode = || Box::pin(load_chunk_tries(store, hash, attempts, depth, checked));
            store.chunk_cache.get_or_decode_as((*hash, checked), true, decode).await?
        }
    };
    count_lookup(store, lookup);
    Ok(bytes)
}
