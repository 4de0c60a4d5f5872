//! Ingest speed of bytes that are not models, on one core: content-defined cuts, the chunk
//! hash and the opaque encoder (zstd where it pays), together, as the gateway's generic path
//! runs them per chunk.
//!
//! Inputs: the corpus tokenizer.json and vocabulary repeated to 64 MiB (text), the corpus
//! formats (ONNX and PyTorch files, which the gateway walks, here taken as opaque bytes) repeated
//! to 64 MiB, and 256 MiB of pseudo-random bytes.
//!
//! Run: `cargo bench -p tensorgate-codec --bench opaque`

use std::time::Instant;

use tensorgate_codec::{encode_opaque, next_cut, ContentHash};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../tests/support/corpus.rs"]
mod corpus_location;

/// `sources` concatenated and repeated to `len` bytes (every chunk is encoded here, repeated
/// or not: this measures the work, not the savings).
fn repeated(sources: &[&str], len: usize) -> Vec<u8> {
    let mut one = Vec::new();
    for source in sources {
        one.extend(std::fs::read(corpus_location::corpus_dir().join(source)).expect("corpus file"));
    }
    let mut out = Vec::with_capacity(len + one.len());
    while out.len() < len {
        out.extend_from_slice(&one);
    }
    out.truncate(len);
    out
}

fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Cuts, hashes and encodes `bytes` on this thread; returns (MB/s, encoded share of raw).
fn ingest(bytes: &[u8]) -> (f64, f64) {
    let started = Instant::now();
    let mut rest = bytes;
    let mut encoded = 0usize;
    while let Some(cut) = next_cut(rest, true) {
        let chunk = &rest[..cut];
        std::hint::black_box(ContentHash::of(chunk));
        encoded += encode_opaque(chunk).expect("encodes").len();
        rest = &rest[cut..];
    }
    let seconds = started.elapsed().as_secs_f64();
    (bytes.len() as f64 / 1e6 / seconds, encoded as f64 / bytes.len() as f64)
}

fn main() {
    let inputs = [
        ("text (tokenizer.json, vocab.txt)", repeated(&["formats/minilm-tokenizer.json", "formats/minilm-vocab.txt"], 64 << 20)),
        ("model files taken as opaque (.onnx, .pt)", repeated(&["formats/akiki-vad.onnx", "formats/akiki-vad.pt"], 64 << 20)),
        ("pseudo-random bytes", noise(256 << 20)),
    ];
    println!("| input | MB | MB/s on one core | encoded share of raw |");
    println!("|---|---|---|---|");
    for (name, bytes) in &inputs {
        ingest(&bytes[..bytes.len().min(8 << 20)]);
        let (speed, share) = ingest(bytes);
        println!("| {name} | {:.0} | {speed:.0} | {:.1}% |", bytes.len() as f64 / 1e6, share * 100.0);
    }
}
