//! The one error type of the codec.

/// Everything that can go wrong while parsing a layout or decoding a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("file shorter than the 8-byte header length")]
    TooShort,
    #[error("header length {0} is over the limit of {1} bytes")]
    HeaderTooLarge(u64, u64),
    #[error("header length {header_len} runs past the end of the {file_len}-byte file")]
    HeaderPastEnd { header_len: u64, file_len: u64 },
    #[error("header is not valid JSON: {0}")]
    BadJson(String),
    #[error("tensor {name:?}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensors {first:?} and {second:?} overlap")]
    Overlap { first: String, second: String },
    #[error("tensor {name:?} ends at {end}, past the end of the {data_len}-byte data section")]
    SpanPastEnd { name: String, end: u64, data_len: u64 },
    #[error("frame is truncated")]
    FrameTruncated,
    #[error("frame has bad magic bytes")]
    FrameMagic,
    #[error("frame version {0} is not supported")]
    FrameVersion(u8),
    #[error("frame has unknown codec {0}")]
    FrameCodec(u8),
    #[error("frame is corrupt: {0}")]
    FrameCorrupt(&'static str),
    #[error("frame checksum does not match its decoded bytes")]
    ChecksumMismatch,
    #[error("delta frame needs base chunk {0} but none or another was given")]
    BaseMismatch(String),
    #[error("chunk of {0} bytes is over the frame limit")]
    ChunkTooLarge(usize),
    #[error("zstd: {0}")]
    Zstd(String),
}

pub type Result<T> = std::result::Result<T, CodecError>;
