//! The safetensors layout parser on arbitrary bytes: never panics, and what it accepts keeps
//! its promises (spans in bounds, sorted, disjoint, sized by dtype and shape).
#![no_main]

libfuzzer_sys::fuzz_target!(|file: &[u8]| {
    if let Ok(layout) = tensorgate_codec::parse_file(file) {
        let data_len = file.len() as u64 - layout.data_start;
        let mut previous_end = 0;
        for tensor in layout.tensors.iter().filter(|t| !t.is_empty()) {
            assert!(tensor.start >= previous_end && tensor.end <= data_len);
            previous_end = tensor.end;
        }
    }
});
