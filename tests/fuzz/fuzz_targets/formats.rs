//! Format recognition (safetensors, GGUF, PyTorch zip, ONNX) on arbitrary bytes, whole or cut
//! anywhere: never panics; a model it accepts keeps its promises (header within the bytes,
//! tensors sorted, disjoint and within the object); a walked format's regions are contiguous,
//! in order and within the object, however the bytes are cut into pieces.
#![no_main]

use tensorgate_codec::formats::Discovery;
use tensorgate_codec::Sniffed;

libfuzzer_sys::fuzz_target!(|file: &[u8]| {
    let size = file.len() as u64;
    for (prefix, ended) in [(file, true), (&file[..file.len() / 2], false)] {
        match tensorgate_codec::sniff(prefix, ended, Some(size), 1 << 20) {
            Sniffed::Model(layout) => {
                assert!(layout.data_start <= prefix.len() as u64);
                let mut previous_end = 0;
                for tensor in layout.tensors.iter().filter(|t| !t.is_empty()) {
                    assert!(tensor.start >= previous_end && layout.data_start + tensor.end <= size);
                    previous_end = tensor.end;
                }
                let header = &prefix[..layout.data_start as usize];
                assert_eq!(tensorgate_codec::stored_layout(header).map(|l| l.tensors), Some(layout.tensors));
            }
            Sniffed::Walk(mut walker) => {
                let piece = 1 + file.first().copied().unwrap_or(0) as usize;
                let mut found = vec![walker.start()];
                for bytes in file.chunks(piece) {
                    found.extend(walker.feed(bytes));
                    assert!(walker.settled() <= size);
                }
                found.push(walker.finish(size));
                let mut open: Option<u64> = None;
                let mut last_end = 0;
                for discovery in found {
                    match discovery {
                        Discovery::Open { start, tensor } => {
                            assert!(open.is_none() && start == last_end);
                            if let Some(tensor) = tensor {
                                assert_eq!(tensor.start, start);
                            }
                            open = Some(start);
                        }
                        Discovery::Close { end } => {
                            assert!(open.take().is_some_and(|start| start <= end) && end <= size);
                            last_end = end;
                        }
                    }
                }
                assert_eq!(last_end, size);
            }
            Sniffed::NeedMore(_) | Sniffed::NotAModel => {}
        }
    }
});
