//! tensorgate-codec: the pure, synchronous codec of tensorgate.
//!
//! It parses safetensors layouts, names chunks by content hash, and encodes chunks of tensor
//! bytes as self-describing frames: byte planes and entropy coding on their own, or a delta
//! against a base chunk first (the BitX idea, with an ordered difference for floats). It does no I/O and knows nothing of S3 or the index.

pub mod chunk;
pub mod container;
pub mod delta;
pub mod dtype;
pub mod encode;
pub mod entropy;
pub mod error;
pub mod frame;
pub mod hash;
pub mod layout;
pub mod ordered;
pub mod planes;
pub mod sketch;

pub use chunk::{chunk_count, chunk_end, chunk_ranges, encode_parallel, ChunkJob, DEFAULT_CHUNK_SIZE};
pub use dtype::Dtype;
pub use encode::{decode_frame, encode_chunk, BaseChunk};
pub use error::{CodecError, Result};
pub use frame::FrameHeader;
pub use hash::{ContentHash, StreamingHash};
pub use sketch::Sketch;
pub use layout::{parse_file, parse_header, read_header_len, Layout, Region, RegionKind, TensorInfo};
