//! What the codec's benches share: where the corpus is, and its fine-tunes with their bases.

#[path = "../../../tests/support/corpus.rs"]
mod corpus_location;
pub use corpus_location::corpus_dir;

/// The corpus's fine-tunes, each after the base it was tuned from: (base, fine-tune).
pub const DELTA_PAIRS: &[(&str, &str)] = &[
    ("base/minilm-l6.bf16.safetensors", "ft/ft-a-contrastive.bf16.safetensors"),
    ("base/minilm-l6.bf16.safetensors", "ft/ft-b-mlm.bf16.safetensors"),
    ("base/minilm-l6.bf16.safetensors", "ft/ft-c-cls.bf16.safetensors"),
    ("base/minilm-l6.bf16.safetensors", "lora/lora-r8-qv-merged.bf16.safetensors"),
    ("base/minilm-l6.f32.safetensors", "ft/ft-a-contrastive.f32.safetensors"),
];
