//! Writes seed inputs for the `frame` target: real frames, standalone and delta, cut from the
//! tensors of two related model files (a fine-tune, or another precision of the same model:
//! then the delta is against the base converted), each followed by the base it needs (the target
//! decodes the first half of its input against the second half).
//! Usage: seed-frames BASE FINE_TUNE OUT_DIR

use tensorgate_codec::{encode_chunk, parse_file, BaseChunk, ContentHash};

/// Raw bytes per seed: small, so that libFuzzer mutates many seeds quickly.
const SLICE: usize = 4096;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [base_path, tuned_path, out] = arguments.as_slice() else {
        return Err("usage: seed-frames BASE FINE_TUNE OUT_DIR".into());
    };
    let (base_file, tuned_file) = (std::fs::read(base_path)?, std::fs::read(tuned_path)?);
    let (base_layout, tuned_layout) = (parse_file(&base_file)?, parse_file(&tuned_file)?);
    std::fs::create_dir_all(out)?;
    let mut written = 0;
    for (base, tuned) in base_layout.tensors.iter().zip(&tuned_layout.tensors).take(64) {
        let span = |file: &[u8], start: u64, end: u64, len: usize| file[start as usize..(end as usize).min(start as usize + len)].to_vec();
        let tuned_bytes = span(&tuned_file, tuned.start, tuned.end, SLICE);
        let elements = tuned_bytes.len() / tuned.dtype.size();
        let base_bytes = span(&base_file, base.start, base.end, elements * base.dtype.size());
        if base.shape != tuned.shape || base_bytes.len() != elements * base.dtype.size() || base_bytes.is_empty() {
            continue;
        }
        let base_chunk = BaseChunk { hash: ContentHash::of(&base_bytes), bytes: &base_bytes };
        let standalone = encode_chunk(&tuned_bytes, tuned.dtype, None)?;
        let delta = encode_chunk(&tuned_bytes, tuned.dtype, Some((base_chunk, base.dtype)))?;
        let mut seeds = vec![padded(&standalone, &vec![0; standalone.len()])];
        if delta.len() <= base_bytes.len() {
            seeds.push(padded(&delta, &base_bytes));
        }
        for input in seeds {
            let name = std::path::Path::new(tuned_path).file_stem().and_then(|stem| stem.to_str()).unwrap_or("frames");
            std::fs::write(format!("{out}/seed-{name}-{written:03}"), &input)?;
            written += 1;
        }
    }
    println!("{written} seeds in {out}");
    Ok(())
}

/// The frame, zero-padded to the length of `base`, then `base`: the target's two halves.
fn padded(frame: &[u8], base: &[u8]) -> Vec<u8> {
    let mut input = frame.to_vec();
    input.resize(base.len().max(frame.len()), 0);
    input.extend_from_slice(base);
    input
}
