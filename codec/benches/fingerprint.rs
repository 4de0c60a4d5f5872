//! How well bit-level fingerprints choose a base, against trying every candidate.
//!
//! For every tensor of every corpus file, the candidates are the tensors of the same dtype and
//! shape in all the other files (any name). The exhaustive choice encodes the tensor against
//! each candidate and keeps the smallest; the fingerprint choice takes the candidate with the
//! nearest sketch. Reports how often they agree (a tie in size counts as agreement), the total
//! encoded size of each, and candidate ranking speed with thousands of candidates per shape.
//!
//! Run: `cargo bench -p tensorgate-codec --bench fingerprint`

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;
use tensorgate_codec::{encode_chunk, parse_file, BaseChunk, ContentHash, Dtype, Sketch};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// As in the gateway's ingest: candidates tried, and bytes of the first chunk a trial encodes.
const TRIALS: usize = 3;
const TRIAL_BYTES: usize = 256 << 10;

const FILES: &[&str] = &[
    "base/minilm-l6.bf16.safetensors",
    "base/minilm-l6.f16.safetensors",
    "base/minilm-l6.f32.safetensors",
    "ckpt/ft-a-contrastive.step0030.bf16.safetensors",
    "ckpt/ft-a-contrastive.step0060.bf16.safetensors",
    "ft/ft-a-contrastive.bf16.safetensors",
    "ft/ft-a-contrastive.f32.safetensors",
    "ft/ft-b-mlm.bf16.safetensors",
    "ft/ft-c-cls.bf16.safetensors",
    "lora/lora-r8-qv-merged.bf16.safetensors",
    "other/paraphrase-minilm-l3.f32.safetensors",
    "other/akiki-vad.f32.safetensors",
];

#[path = "../../tests/support/corpus.rs"]
mod corpus_location;
use corpus_location::corpus_dir;

/// One tensor of one file.
#[derive(Clone)]
struct Tensor {
    file: usize,
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    bytes: Vec<u8>,
    sketch: Sketch,
}

/// Encoded size of `tensor` as chunks, against `base` chunk by chunk where given.
fn encoded_size(tensor: &Tensor, base: Option<&Tensor>) -> usize {
    let chunk = tensorgate_codec::DEFAULT_CHUNK_SIZE;
    tensor
        .bytes
        .chunks(chunk)
        .enumerate()
        .map(|(index, raw)| {
            let base_bytes = base.map(|b| &b.bytes[index * chunk..(index * chunk + raw.len()).min(b.bytes.len())]);
            let base = base_bytes.map(|bytes| BaseChunk { hash: ContentHash::of(bytes), bytes });
            encode_chunk(raw, tensor.dtype, base.map(|base| (base, tensor.dtype))).unwrap().len()
        })
        .sum()
}

fn main() {
    let dir = corpus_dir();
    let mut tensors = Vec::new();
    for (file_index, file) in FILES.iter().enumerate() {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let layout = parse_file(&bytes).unwrap();
        let data = &bytes[layout.data_start as usize..];
        for tensor in &layout.tensors {
            let tensor_bytes = data[tensor.start as usize..tensor.end as usize].to_vec();
            let sketch = Sketch::of(&tensor_bytes, tensor.dtype);
            tensors.push(Tensor { file: file_index, name: tensor.name.clone(), dtype: tensor.dtype, shape: tensor.shape.clone(), bytes: tensor_bytes, sketch });
        }
    }
    let mut by_shape: HashMap<(Dtype, Vec<u64>), Vec<usize>> = HashMap::new();
    for (index, tensor) in tensors.iter().enumerate() {
        by_shape.entry((tensor.dtype, tensor.shape.clone())).or_default().push(index);
    }
    struct Outcome {
        agree: bool,
        trial_agree: bool,
        trial: usize,
        raw: usize,
        fingerprint: usize,
        exhaustive: usize,
        renamed: bool,
    }
    let outcomes: Vec<Outcome> = tensors
        .par_iter()
        .filter_map(|tensor| {
            let candidates: Vec<usize> = by_shape[&(tensor.dtype, tensor.shape.clone())]
                .iter()
                .copied()
                .filter(|other| tensors[*other].file != tensor.file)
                .collect();
            if candidates.is_empty() || tensor.bytes.len() < 4096 {
                return None;
            }
            let own = encoded_size(tensor, None);
            let sizes: Vec<usize> = candidates.iter().map(|c| encoded_size(tensor, Some(&tensors[*c])).min(own)).collect();
            let exhaustive = *sizes.iter().min().unwrap();
            let mut ranked: Vec<usize> = (0..candidates.len()).collect();
            ranked.sort_by_key(|i| tensors[candidates[*i]].sketch.distance(&tensor.sketch));
            let nearest = ranked[0];
            let fingerprint = sizes[nearest];
            let sample = |t: &Tensor| Tensor { bytes: t.bytes[..t.bytes.len().min(TRIAL_BYTES)].to_vec(), name: String::new(), shape: Vec::new(), sketch: t.sketch.clone(), ..*t };
            let tried = ranked
                .iter()
                .take(TRIALS)
                .min_by_key(|i| encoded_size(&sample(tensor), Some(&sample(&tensors[candidates[**i]]))))
                .copied()
                .unwrap();
            let trial = sizes[tried];
            Some(Outcome {
                agree: fingerprint as f64 <= exhaustive as f64 * 1.005,
                trial_agree: trial as f64 <= exhaustive as f64 * 1.005,
                trial,
                raw: tensor.bytes.len(),
                fingerprint,
                exhaustive,
                renamed: tensors[candidates[nearest]].name != tensor.name,
            })
        })
        .collect();
    let agreeing = outcomes.iter().filter(|o| o.agree).count();
    let fingerprint: usize = outcomes.iter().map(|o| o.fingerprint).sum();
    let exhaustive: usize = outcomes.iter().map(|o| o.exhaustive).sum();
    let raw: usize = outcomes.iter().map(|o| o.raw).sum();
    println!("tensors with candidates (4 KiB and more): {}", outcomes.len());
    println!("fingerprint top-1 agrees with the exhaustive best: {agreeing} ({:.1}%)", 100.0 * agreeing as f64 / outcomes.len() as f64);
    println!(
        "encoded size: fingerprint {fingerprint} bytes, exhaustive {exhaustive} bytes ({:+.2}%), raw {raw}",
        100.0 * (fingerprint as f64 / exhaustive as f64 - 1.0)
    );
    let trial_agreeing = outcomes.iter().filter(|o| o.trial_agree).count();
    let trial: usize = outcomes.iter().map(|o| o.trial).sum();
    println!(
        "nearest {TRIALS} by fingerprint, best on a {} KiB trial (the gateway's choice) agrees: {trial_agreeing} ({:.1}%), size {:+.2}% of exhaustive",
        TRIAL_BYTES >> 10,
        100.0 * trial_agreeing as f64 / outcomes.len() as f64,
        100.0 * (trial as f64 / exhaustive as f64 - 1.0)
    );
    println!("nearest candidate has another name: {} tensors", outcomes.iter().filter(|o| o.renamed).count());

    let query = &tensors[0].sketch;
    let pool: Vec<Sketch> = (0..5000u64)
        .map(|seed| {
            let noise: Vec<u8> = (0..8192u64).map(|i| ((i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect();
            Sketch::of(&noise, Dtype::BF16)
        })
        .collect();
    let started = Instant::now();
    let rounds = 200;
    for _ in 0..rounds {
        let nearest = pool.iter().min_by_key(|s| s.distance(query));
        std::hint::black_box(nearest);
    }
    let per_query = started.elapsed().as_secs_f64() / rounds as f64;
    println!("ranking 5000 candidates: {:.0} us per query, {:.0} queries/s on one core", per_query * 1e6, 1.0 / per_query);
}
