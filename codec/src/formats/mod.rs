//! The one place where a model format is recognised: the first bytes of an object are looked at
//! here, and a format that parses becomes a [`Layout`], the header to keep and the tensors of
//! the data section, which the chunk, delta and codec machinery takes from there. Anything that
//! does not parse, or lies, is not a model and is stored as opaque bytes, never refused.
//!
//! Formats whose tensors are not listed up front (a PyTorch zip, an ONNX protobuf) are walked
//! instead: a [`Walker`] reports regions as the bytes stream by.
//!
//! Adding a format is a parser beside `gguf`, `zip` and `onnx` and a branch in [`sniff`].

pub mod gguf;
pub mod onnx;
mod torch_pickle;
pub mod zip;

use crate::layout::{parse_header, read_header_len, Layout, TensorInfo, PREFIX_LEN};

/// The most tensors a walker reports in one object; later ones are part of the gaps. Bounds
/// what a hostile file of tiny entries makes the ingest hold (a region, a tensor and a segment
/// each), as `max_header_bytes` does for formats with a header.
pub const MAX_WALKED_TENSORS: u64 = 65_536;

/// A region found while walking, in file offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A region starts where the previous one ended; `None` is a gap. Its end comes later.
    Open { start: u64, tensor: Option<TensorInfo> },
    /// The open region ends here.
    Close { end: u64 },
}

/// A format walked as its bytes stream by. It starts with a gap open at offset 0; every region
/// it opens starts where the previous one was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walker {
    /// File offset of `carry[0]`.
    position: u64,
    /// Bytes received and not consumed yet (a header's or a descriptor's worth at most).
    carry: Vec<u8>,
    walk: Walk,
}

/// Where the walk is, per format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Walk {
    Torch(zip::Walk),
    Onnx(onnx::Walk),
}

impl Walker {
    /// A walk through a PyTorch zip checkpoint.
    pub fn torch() -> Walker {
        Walker { position: 0, carry: Vec::new(), walk: Walk::Torch(zip::Walk::new()) }
    }

    /// A walk through an ONNX model.
    pub fn onnx() -> Walker {
        Walker { position: 0, carry: Vec::new(), walk: Walk::Onnx(onnx::Walk::new()) }
    }

    /// The first region: a gap from the start of the file.
    pub fn start(&self) -> Discovery {
        Discovery::Open { start: 0, tensor: None }
    }

    /// Takes the next bytes of the file; returns the regions they reveal. The walk consumes
    /// them from the front, step by step, until it needs more.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Discovery> {
        let mut carry = std::mem::take(&mut self.carry);
        carry.extend_from_slice(bytes);
        let mut found = Vec::new();
        let mut consumed = 0;
        loop {
            let (rest, offset) = (&carry[consumed..], self.position + consumed as u64);
            let used = match &mut self.walk {
                Walk::Torch(walk) => walk.advance(rest, offset, &mut found),
                Walk::Onnx(walk) => walk.advance(rest, offset, &mut found),
            };
            match used {
                Some(used) => consumed += used,
                None => break,
            }
        }
        carry.drain(..consumed);
        self.position += consumed as u64;
        self.carry = carry;
        found
    }

    /// File offset up to which every region boundary is known: bytes before it can be cut.
    pub fn settled(&self) -> u64 {
        self.position
    }

    /// The file ended at `end`: the open region closes there.
    pub fn finish(&mut self, end: u64) -> Discovery {
        match &mut self.walk {
            Walk::Torch(walk) => walk.stop(),
            Walk::Onnx(walk) => walk.stop(),
        }
        self.position = end;
        self.carry.clear();
        Discovery::Close { end }
    }
}

/// What the first bytes of an object say.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Ask again once at least this many bytes are in (or the object has ended).
    NeedMore(usize),
    NotAModel,
    /// A model: its header is the first `layout.data_start` bytes.
    Model(Layout),
    /// A PyTorch checkpoint or an ONNX model: regions come from the walker as the bytes stream
    /// by.
    Walk(Walker),
}

/// Looks at `prefix`, the first bytes of an object of `size` bytes when known (`ended` says
/// there are no more). Headers over `max_header` bytes are not parsed.
pub fn sniff(prefix: &[u8], ended: bool, size: Option<u64>, max_header: u64) -> Sniffed {
    let sniffed = if prefix.starts_with(gguf::MAGIC) {
        sniff_gguf(prefix, max_header)
    } else if prefix.starts_with(zip::LOCAL_HEADER) {
        match zip::looks_like_torch(prefix) {
            Some(true) => Sniffed::Walk(Walker::torch()),
            Some(false) => Sniffed::NotAModel,
            None => Sniffed::NeedMore((prefix.len() * 2).max(64)),
        }
    } else if prefix.first() == Some(&onnx::FIRST_TAG) {
        match onnx::looks_like_onnx(prefix) {
            Some(true) => Sniffed::Walk(Walker::onnx()),
            Some(false) => sniff_safetensors(prefix, size, max_header),
            None => Sniffed::NeedMore((prefix.len() * 2).max(64)),
        }
    } else {
        sniff_safetensors(prefix, size, max_header)
    };
    match sniffed {
        Sniffed::NeedMore(_) if ended => Sniffed::NotAModel,
        Sniffed::Model(layout) if !fits(&layout, size) => Sniffed::NotAModel,
        sniffed => sniffed,
    }
}

/// The layout of a stored model from its header (the first `data_start` bytes), as ingest
/// parsed it.
pub fn stored_layout(header: &[u8]) -> Option<Layout> {
    match sniff(header, true, None, u64::MAX) {
        Sniffed::Model(layout) if layout.data_start == header.len() as u64 => Some(layout),
        _ => None,
    }
}

/// Whether the header and every tensor end within an object of `size` bytes.
fn fits(layout: &Layout, size: Option<u64>) -> bool {
    size.is_none_or(|size| size >= layout.data_start && layout.data_end() <= size - layout.data_start)
}

fn sniff_safetensors(prefix: &[u8], size: Option<u64>, max_header: u64) -> Sniffed {
    let header_len = match read_header_len(prefix) {
        Ok(len) if (2..=max_header).contains(&len) => len,
        Err(_) if prefix.len() < PREFIX_LEN => return Sniffed::NeedMore(PREFIX_LEN),
        _ => return Sniffed::NotAModel,
    };
    if prefix.len() > PREFIX_LEN && prefix[PREFIX_LEN] != b'{' {
        return Sniffed::NotAModel;
    }
    let header_end = PREFIX_LEN + header_len as usize;
    if size.is_some_and(|size| size < header_end as u64) {
        return Sniffed::NotAModel;
    }
    if prefix.len() < header_end {
        return Sniffed::NeedMore(header_end);
    }
    match parse_header(&prefix[PREFIX_LEN..header_end], size.map(|size| size - header_end as u64)) {
        Ok(layout) => Sniffed::Model(layout),
        Err(_) => Sniffed::NotAModel,
    }
}

fn sniff_gguf(prefix: &[u8], max_header: u64) -> Sniffed {
    match gguf::parse_prefix(prefix, max_header) {
        // Twice the bytes (never past the limit): a header is parsed again from its start, so
        // this bounds the work to about twice the header's length.
        gguf::Parsed::NeedMore => Sniffed::NeedMore((prefix.len() * 2).max(64 << 10).min(usize::try_from(max_header).unwrap_or(usize::MAX))),
        gguf::Parsed::Invalid => Sniffed::NotAModel,
        gguf::Parsed::Header { data_start, tensors } => Sniffed::Model(Layout { data_start, tensors, metadata: None }),
    }
}

/// The regions `walker` finds when `file` arrives in pieces of `piece` bytes, as (start, end,
/// tensor dtype), checking that they are contiguous.
#[cfg(test)]
pub(crate) fn regions_of(mut walker: Walker, file: &[u8], piece: usize) -> Vec<(u64, u64, Option<crate::Dtype>)> {
    let mut found = vec![walker.start()];
    for bytes in file.chunks(piece.max(1)) {
        found.extend(walker.feed(bytes));
        assert!(walker.settled() <= file.len() as u64);
    }
    found.push(walker.finish(file.len() as u64));
    let mut regions: Vec<(u64, u64, Option<crate::Dtype>)> = Vec::new();
    for discovery in found {
        match discovery {
            Discovery::Open { start, tensor } => {
                assert_eq!(regions.last().map_or(0, |r| r.1), start, "regions are contiguous");
                regions.push((start, u64::MAX, tensor.map(|t| t.dtype)));
            }
            Discovery::Close { end } => regions.last_mut().expect("a region is open").1 = end,
        }
    }
    regions
}

/// What every walker keeps, checked on `sample`, a well-formed file of its format: pieces of
/// any size find the regions the whole file finds, and any bytes (the sample cut at `cut`, then
/// `tail`) walk into contiguous regions that end at the file's end.
#[cfg(test)]
pub(crate) fn check_walker(new: impl Fn() -> Walker, sample: &[u8], piece: usize, cut: usize, tail: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
    proptest::prop_assert_eq!(regions_of(new(), sample, piece), regions_of(new(), sample, sample.len()));
    let mut file = sample[..cut.min(sample.len())].to_vec();
    file.extend_from_slice(tail);
    let regions = regions_of(new(), &file, piece);
    proptest::prop_assert_eq!(regions.last().map(|r| r.1), Some(file.len() as u64));
    proptest::prop_assert!(regions.iter().all(|r| r.0 <= r.1));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::file as safetensors;

    #[test]
    fn safetensors_is_read_once_its_header_is_in() {
        let file = safetensors(r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#, 8);
        let header_end = file.len() - 8;
        assert_eq!(sniff(&file[..3], false, None, 1 << 20), Sniffed::NeedMore(8));
        assert_eq!(sniff(&file[..10], false, None, 1 << 20), Sniffed::NeedMore(header_end));
        let Sniffed::Model(layout) = sniff(&file, false, Some(file.len() as u64), 1 << 20) else { panic!() };
        assert_eq!(layout.data_start, header_end as u64);
        assert_eq!(stored_layout(&file[..header_end]), Some(layout));
        assert_eq!(sniff(&file, true, Some(file.len() as u64 - 1), 1 << 20), Sniffed::NotAModel, "a tensor past the end");
        assert_eq!(sniff(&file[..10], true, None, 1 << 20), Sniffed::NotAModel);
        assert_eq!(sniff(b"hello, world", false, None, 1 << 20), Sniffed::NotAModel);
    }

    #[test]
    fn gguf_is_read_once_its_header_is_in() {
        let mut file = b"GGUF".to_vec();
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&1u64.to_le_bytes());
        file.extend_from_slice(&0u64.to_le_bytes());
        file.extend_from_slice(&1u64.to_le_bytes());
        file.push(b'w');
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&4u64.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&0u64.to_le_bytes());
        file.resize(64, 0);
        file.extend_from_slice(&[1; 16]);
        assert!(matches!(sniff(&file[..40], false, None, 1 << 20), Sniffed::NeedMore(_)));
        let Sniffed::Model(layout) = sniff(&file, false, Some(80), 1 << 20) else { panic!() };
        assert_eq!((layout.data_start, layout.tensors[0].len()), (64, 16));
        assert_eq!(stored_layout(&file[..64]), Some(layout));
        assert_eq!(sniff(&file, true, Some(79), 1 << 20), Sniffed::NotAModel, "a tensor past the end");
    }
}
