//! Finding the base candidates near a new tensor's fingerprint, as the stored models of one
//! shape grow: every candidate read and ranked (`Index::candidates`, what base selection did
//! before stop 24) against those sharing bands (`Index::near_candidates`), ranked the same way.
//!
//! Models of 32 layers of one shape are stored, each layer a family: a base layer (normal
//! weights, as BF16 sketches) and in every other model the same layer with one value in four
//! moved by one or two units in the last place, as a fine-tune's. The query is the layer of one
//! more fine-tune, whose nearest candidate is the base layer. Reports the time to file a
//! candidate, the time per query, and how far the chosen candidate is against the nearest of
//! all: once with the base filed first, once filed after half of its fine-tunes (then it is
//! not among the first and last a band's reads reach, and a fine-tune is chosen).
//!
//! Run: `cargo bench -p tensorgate-index --bench candidates`

use std::time::Instant;

use tensorgate_codec::sketch::SAMPLES;
use tensorgate_codec::{Dtype, Sketch};
use tensorgate_index::{BaseCandidate, Index};

const LAYERS: u32 = 32;
const SIGNATURE: &str = "BF16:4096x4096";

/// splitmix64's finaliser, for values that differ from seed to seed.
fn mix(value: u64) -> u64 {
    let mut x = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The BF16 sample values of `layer` in `model` (model 0 is the base): normal, σ 0.02.
fn samples(layer: u32, model: u32) -> Vec<u16> {
    (0..SAMPLES as u64)
        .map(|i| {
            let (a, b) = (mix(u64::from(layer) << 32 | i), mix(u64::from(layer) << 32 | i | 1 << 63));
            let (u, v) = ((a >> 11) as f64 / (1u64 << 53) as f64, (b >> 11) as f64 / (1u64 << 53) as f64);
            let normal = (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * 0.02;
            let bits = ((normal as f32).to_bits() >> 16) as u16;
            let step = mix(u64::from(model) << 40 | i);
            match (model > 0, step % 8) {
                (true, 0) => bits.wrapping_add(1),
                (true, 1) => bits.wrapping_sub(2),
                _ => bits,
            }
        })
        .collect()
}

fn sketch_of(values: &[u16]) -> Sketch {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Sketch::of(&bytes, Dtype::BF16)
}

/// The candidate whose sketch is nearest the query, and its distance.
fn nearest(candidates: &[BaseCandidate], query: &Sketch) -> (u32, Vec<u8>) {
    candidates
        .iter()
        .filter_map(|c| Some((Sketch::from_bytes(&c.sketch)?.distance(query), c.sketch.clone())))
        .min_by_key(|(distance, _)| *distance)
        .unwrap_or((u32::MAX, Vec::new()))
}

fn main() {
    println!("| candidates of the shape | base filed | filing, us per candidate | all read and ranked: ms per query | sharing bands: ms per query | candidates returned | distance of the choice / of the nearest |");
    println!("|---|---|---|---|---|---|---|");
    for models in [22u32, 160, 1000] {
        for base_at in [0, models / 2] {
            let dir = tempfile::tempdir().unwrap();
            let index = Index::open(dir.path()).unwrap();
            // Model `base_at` in filing order is the base (model 0 of `samples`).
            let order: Vec<u32> = (1..models).take(base_at as usize).chain([0]).chain((1..models).skip(base_at as usize)).collect();
            let started = Instant::now();
            for model in &order {
                for layer in 0..LAYERS {
                    let sketch = sketch_of(&samples(layer, *model));
                    let mut id = [0u8; 32];
                    id[..4].copy_from_slice(&model.to_be_bytes());
                    id[4..8].copy_from_slice(&layer.to_be_bytes());
                    index.add_candidate("t", SIGNATURE, &BaseCandidate { sketch: sketch.to_bytes(), chunks: vec![id] }).unwrap();
                }
            }
            let filing_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(models * LAYERS);
            let queries: Vec<Sketch> = (0..LAYERS).map(|layer| sketch_of(&samples(layer, models + 7))).collect();
            let timed = |find: &dyn Fn(&Sketch) -> Vec<BaseCandidate>| {
                let started = Instant::now();
                let mut found = Vec::new();
                for query in &queries {
                    let candidates = find(query);
                    found.push((candidates.len(), nearest(&candidates, query).0));
                }
                (started.elapsed().as_secs_f64() * 1e3 / queries.len() as f64, found)
            };
            let (all_ms, all) = timed(&|_| index.candidates("t", SIGNATURE).unwrap());
            let (near_ms, near) = timed(&|query| index.near_candidates("t", SIGNATURE, query.bands(Dtype::BF16).as_ref()).unwrap());
            let returned = near.iter().map(|(count, _)| *count).max().unwrap_or(0);
            let ratio: f64 =
                near.iter().zip(&all).map(|((_, chosen), (_, best))| f64::from(*chosen) / f64::from((*best).max(1))).sum::<f64>() / queries.len() as f64;
            let filed = if base_at == 0 { "first".to_owned() } else { format!("after {base_at} fine-tunes") };
            println!("| {} | {filed} | {filing_us:.0} | {all_ms:.2} | {near_ms:.2} | {returned} | {ratio:.2} |", models * LAYERS);
        }
    }
}
