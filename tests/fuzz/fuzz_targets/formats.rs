//! Format recognition (safetensors and GGUF) on arbitrary bytes, whole or cut anywhere: never
//! panics, and a model it accepts keeps its promises (header within the bytes, tensors sorted,
//! disjoint and within the object).
#![no_main]

libfuzzer_sys::fuzz_target!(|file: &[u8]| {
    let size = file.len() as u64;
    for (prefix, ended) in [(file, true), (&file[..file.len() / 2], false)] {
        if let tensorgate_codec::Sniffed::Model(layout) = tensorgate_codec::sniff(prefix, ended, Some(size), 1 << 20) {
            assert!(layout.data_start <= prefix.len() as u64);
            let mut previous_end = 0;
            for tensor in layout.tensors.iter().filter(|t| !t.is_empty()) {
                assert!(tensor.start >= previous_end && layout.data_start + tensor.end <= size);
                previous_end = tensor.end;
            }
            assert_eq!(tensorgate_codec::stored_layout(&prefix[..layout.data_start as usize]).map(|l| l.tensors), Some(layout.tensors));
        }
    }
});
