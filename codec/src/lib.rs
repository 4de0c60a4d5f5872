//! tensorgate-codec: the pure, synchronous codec of tensorgate.
//!
//! It recognises models (`formats`: safetensors and GGUF headers, PyTorch checkpoints and ONNX
//! models walked as they stream), cuts bytes of no known layout where their content says
//! (`cdc`), names chunks by content hash, and encodes chunks as self-describing frames: tensor
//! bytes as byte planes and entropy coding on their own, or a delta against a base chunk first
//! (the BitX idea, with an ordered difference for floats); other bytes as zstd where it pays.
//! It does no I/O and knows nothing of S3 or the index.

pub mod cast;
pub mod cdc;
pub mod chunk;
pub mod container;
pub mod decode;
pub mod delta;
pub mod dtype;
pub mod encode;
pub mod entropy;
pub mod error;
pub mod formats;
pub mod frame;
pub mod hash;
pub mod layout;
pub mod levels;
pub mod ordered;
pub mod planes;
mod scratch;
pub mod sketch;

pub use cast::Cast;
pub use cdc::next_cut;
pub use chunk::{chunk_end, chunk_ranges, chunk_size, CHUNK_ELEMENTS, DEFAULT_CHUNK_SIZE, PIECE_ELEMENTS, SMALL_TENSOR_ELEMENTS};
pub use dtype::Dtype;
pub use decode::{decode_frame, decode_frame_into, decode_frame_unchecked_into};
pub use encode::{encode_chunk, encode_chunk_as, encode_chunk_in_window, encode_opaque, BaseChunk, FrameFormat};
pub use error::{CodecError, Result};
pub use frame::{BaseWindow, FrameHeader};
pub use hash::{ContentHash, StreamingHash};
pub use sketch::Sketch;
pub use scratch::release_if_idle as release_idle_scratch;
pub use formats::{sniff, stored_layout, Sniffed};
pub use layout::{parse_file, parse_header, read_header_len, Layout, Region, RegionKind, TensorInfo};
