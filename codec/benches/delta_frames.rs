//! The delta frames of the corpus pairs, encoded and decoded over and over on one core: the
//! best of many rounds, into one reused buffer, as the gateway decodes (the corpus bench times
//! each file once or a few times, whose spread on a shared machine hides changes of a few
//! percent). Decode is timed checked (the frame's BLAKE3 of the result, as served) and
//! unchecked (as a base is decoded for the deltas over it).
//!
//! Run: `cargo bench -p tensorgate-codec --bench delta_frames` (corpus from `TG_CORPUS`, default
//! `../shared/corpus` beside the workspace; `TG_ROUNDS` decode rounds, default 100, and a
//! quarter as many encode rounds). Pin it to one core with `taskset -c 1`.

use std::time::Instant;

use tensorgate_codec::{chunk_ranges, chunk_size, decode_frame_into, decode_frame_unchecked_into, encode_chunk, parse_file, BaseChunk, ContentHash, Dtype};

/// The gateway's allocator, so that buffers are reused as they are in production.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;
use support::{corpus_dir, DELTA_PAIRS};

/// One chunk of a fine-tune's tensor with the chunk of the same-named base tensor under it.
struct Job<'a> {
    raw: &'a [u8],
    base: &'a [u8],
    base_hash: ContentHash,
    dtype: Dtype,
    frame: Vec<u8>,
}

/// The chunks of every tensor of `file` with a base tensor of the same name and shape.
fn jobs<'a>(file: &'a [u8], base: &'a [u8]) -> Vec<Job<'a>> {
    let (layout, base_layout) = (parse_file(file).expect("corpus file parses"), parse_file(base).expect("base parses"));
    let (data, base_data) = (&file[layout.data_start as usize..], &base[base_layout.data_start as usize..]);
    let mut jobs = Vec::new();
    for tensor in &layout.tensors {
        let Some(under) = base_layout.tensors.iter().find(|b| b.name == tensor.name && b.shape == tensor.shape && b.dtype == tensor.dtype) else { continue };
        let bytes = &data[tensor.start as usize..tensor.end as usize];
        let base_bytes = &base_data[under.start as usize..under.end as usize];
        for range in chunk_ranges(bytes.len(), chunk_size(tensor.dtype, Some(bytes.len() as u64))) {
            let (raw, base) = (&bytes[range.clone()], &base_bytes[range]);
            let base_hash = ContentHash::of(base);
            let frame = encode_chunk(raw, tensor.dtype, Some((BaseChunk { hash: base_hash, bytes: base }, tensor.dtype))).expect("encodes");
            jobs.push(Job { raw, base, base_hash, dtype: tensor.dtype, frame });
        }
    }
    jobs
}

/// The best of `rounds` timings of `round`, in seconds.
fn best_of(rounds: usize, mut round: impl FnMut()) -> f64 {
    (0..rounds.max(1)).map(|_| {
        let started = Instant::now();
        round();
        started.elapsed().as_secs_f64()
    }).fold(f64::MAX, f64::min)
}

fn main() {
    let rounds: usize = std::env::var("TG_ROUNDS").ok().and_then(|rounds| rounds.parse().ok()).unwrap_or(100);
    let dir = corpus_dir();
    println!("| pair | raw MB | frames % of raw | encode MB/s | decode checked MB/s | decode unchecked MB/s |");
    println!("|---|---|---|---|---|---|");
    for (base_name, name) in DELTA_PAIRS {
        let (Ok(file), Ok(base)) = (std::fs::read(dir.join(name)), std::fs::read(dir.join(base_name))) else {
            println!("| {name} | missing | | | | |");
            continue;
        };
        let jobs = jobs(&file, &base);
        let raw: usize = jobs.iter().map(|job| job.raw.len()).sum();
        let framed: usize = jobs.iter().map(|job| job.frame.len()).sum();
        let mut out = Vec::new();
        for job in &jobs {
            decode_frame_into(&job.frame, Some(BaseChunk { hash: job.base_hash, bytes: job.base }), &mut out).expect("decodes");
            assert!(out == job.raw, "the frame decodes to its chunk");
        }
        let mut decode = |checked: bool| {
            best_of(rounds, || {
                for job in &jobs {
                    let base = Some(BaseChunk { hash: job.base_hash, bytes: job.base });
                    let decoded = if checked { decode_frame_into(&job.frame, base, &mut out) } else { decode_frame_unchecked_into(&job.frame, base, &mut out) };
                    assert!(decoded.is_ok() && out.len() == job.raw.len());
                }
            })
        };
        let (checked, unchecked) = (decode(true), decode(false));
        let encode = best_of(rounds / 4, || {
            for job in &jobs {
                let base = BaseChunk { hash: job.base_hash, bytes: job.base };
                assert_eq!(encode_chunk(job.raw, job.dtype, Some((base, job.dtype))).map(|frame| frame.len()), Ok(job.frame.len()));
            }
        });
        let mb_per_s = |secs: f64| raw as f64 / 1e6 / secs;
        println!(
            "| {name} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |",
            raw as f64 / 1e6,
            100.0 * framed as f64 / raw as f64,
            mb_per_s(encode),
            mb_per_s(checked),
            mb_per_s(unchecked)
        );
    }
}
