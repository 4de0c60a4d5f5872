//! One model in several precisions (issue 18): a BF16 or F16 file cast from an F32 one costs
//! next to nothing beside it, an F32 file uploaded after one of its casts is stored as the
//! rounding residual, and the order they come in hardly matters; every file reads back
//! byte-identical, whole and in ranges, with its ETag. An F8 quantization is found the same way,
//! its scale inferred from the two tensors; weights dequantized from int4 groups are coded as
//! their scales and codes.

mod support;

use std::path::{Path, PathBuf};

use support::objects::*;
use support::*;

/// Uploads `files` in order into a fresh gateway and returns what the upstream holds once
/// settled, after checking every file reads back whole (and the last ones in ranges).
fn store_in_order(files: &[PathBuf], work: &Path) -> u64 {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    for (i, file) in files.iter().enumerate() {
        gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://models/m{i}.safetensors")]);
    }
    let stored = settled_upstream(&gateway);
    for (i, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let key = format!("m{i}.safetensors");
        assert!(get(&gateway, "models", &key, &work.join("back")) == bytes, "{} differs", file.display());
        assert_eq!(gateway.etag("models", &key), md5_hex(&bytes));
        if i > 0 {
            check_ranges(&gateway, "models", &key, &bytes, work);
        }
    }
    stored
}

/// Prints what `stored` is against `against` and checks it is at most `bound` of it.
fn assert_at_most(what: &str, stored: u64, against: u64, bound: f64) {
    let ratio = stored as f64 / against as f64;
    println!("{what}: {stored} bytes upstream, {ratio:.3} x {against}");
    assert!(ratio <= bound, "{what}: {ratio:.3} x, over {bound}");
}

/// Runs `tests/clients/<script>` with python3 (numpy installed) and `args`.
fn python(script: &str, args: &[&std::ffi::OsStr]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients").join(script);
    let output = std::process::Command::new("python3").arg(path).args(args).output().expect("python3 with numpy");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn base(precision: &str) -> PathBuf {
    corpus(&format!("base/minilm-l6.{precision}.safetensors"))
}

/// The base in F32, BF16 and F16, widest first: at most 1.05 x the F32 alone; ft-a in F32 and
/// BF16 likewise, in either order.
#[test]
fn casts_of_a_stored_model_cost_next_to_nothing() {
    let work = tempfile::tempdir().unwrap();
    let ft_a = |precision: &str| corpus(&format!("ft/ft-a-contrastive.{precision}.safetensors"));
    for (family, files) in [
        ("base", vec![base("f32"), base("bf16"), base("f16")]),
        ("ft-a", vec![ft_a("f32"), ft_a("bf16")]),
        ("ft-a, BF16 first", vec![ft_a("bf16"), ft_a("f32")]),
    ] {
        let f32_file = files.iter().find(|file| file.to_string_lossy().contains("f32")).unwrap();
        let alone = store_in_order(std::slice::from_ref(f32_file), work.path());
        assert_at_most(&format!("{family}, against the F32 alone"), store_in_order(&files, work.path()), alone, 1.05);
    }
}

/// The three precisions in every order: a narrower copy is stored against a wider one (its
/// cast) or against the other narrow one (a few bits an element), a wider one as the residual
/// over a narrower one; each order costs at most 1.05 x the F32 alone.
#[test]
fn the_precisions_cost_the_same_in_any_order() {
    let work = tempfile::tempdir().unwrap();
    let alone = store_in_order(&[base("f32")], work.path());
    for order in [["bf16", "f32", "f16"], ["bf16", "f16", "f32"], ["f16", "bf16", "f32"], ["f16", "f32", "bf16"], ["f32", "f16", "bf16"]] {
        let files: Vec<PathBuf> = order.iter().map(|precision| base(precision)).collect();
        assert_at_most(&format!("{order:?}, against the F32 alone"), store_in_order(&files, work.path()), alone, 1.05);
    }
}

/// An F8 E4M3 quantization of the BF16 base (made with numpy as fp8 checkpoints are: one scale
/// per tensor, or one per 128 x 128 block) beside the BF16: at most 1.2 x the BF16 alone, in
/// either order.
#[test]
fn an_f8_quantization_costs_little_beside_its_original() {
    let work = tempfile::tempdir().unwrap();
    let alone = store_in_order(&[base("bf16")], work.path());
    for scales in [None, Some("128")] {
        let quantized = work.path().join(format!("fp8-{}.safetensors", scales.unwrap_or("tensor")));
        let bf16 = base("bf16");
        python("fp8_quantize.py", &[bf16.as_os_str(), quantized.as_os_str()].into_iter().chain(scales.map(std::ffi::OsStr::new)).collect::<Vec<_>>());
        for files in [[bf16.clone(), quantized.clone()], [quantized.clone(), bf16.clone()]] {
            let what = format!("{:?} first, against the BF16 alone", files[0].file_name().unwrap());
            assert_at_most(&what, store_in_order(&files, work.path()), alone, 1.2);
        }
    }
}

/// The BF16 base fake-quantized to int4 in groups of 16 values (made with numpy, as loaders of
/// GPTQ- or AWQ-style checkpoints hold it): at most 0.35 x raw, its groups coded as a scale and
/// 4-bit codes each; groups of 128 cost less still.
#[test]
fn weights_dequantized_from_int4_groups_cost_their_codes() {
    let work = tempfile::tempdir().unwrap();
    for group in ["16", "128"] {
        let dequantized = work.path().join(format!("int4-g{group}.safetensors"));
        python("int4_dequantize.py", &[base("bf16").as_os_str(), dequantized.as_os_str(), group.as_ref()]);
        let raw = std::fs::metadata(&dequantized).unwrap().len();
        let what = format!("int4 in groups of {group}, dequantized to BF16, against its raw bytes");
        assert_at_most(&what, store_in_order(&[dequantized], work.path()), raw, 0.35);
    }
}

/// A cast outlives the tensor it was cast from: with the F32 deleted and garbage collected, its
/// BF16 and F16 casts (stored against its chunks) read back byte-identical, fsck verifies every
/// frame, an index rebuilt from the upstream alone serves them, and deleting them frees every
/// pack.
#[test]
fn casts_outlive_the_tensor_they_were_cast_from() {
    let work = tempfile::tempdir().unwrap();
    let mut gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    let files = [("f32", base("f32")), ("bf16", base("bf16")), ("f16", base("f16"))];
    for (key, file) in &files {
        gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://models/{key}")]);
    }
    let stored = settled_upstream(&gateway);
    gateway.aws(&["s3", "rm", "s3://models/f32"]);
    gateway.collect_garbage();
    assert!(settled_upstream(&gateway) * 10 > stored * 9, "the casts' bases went with the F32");
    let check = gateway.fsck();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    let report = gateway.rebuild_index();
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    for (key, file) in &files[1..] {
        let bytes = std::fs::read(file).unwrap();
        assert!(get(&gateway, "models", key, &work.path().join("back")) == bytes, "{key} differs");
        check_ranges(&gateway, "models", key, &bytes, work.path());
    }
    for (key, _) in &files[1..] {
        gateway.aws(&["s3", "rm", &format!("s3://models/{key}")]);
    }
    gateway.collect_garbage();
    assert_eq!(gateway.store().index.pack_bytes().unwrap(), 0);
}

/// With `write_frame_version = 1` (an upstream that gateways from before issue 18 still read),
/// no frame written is of version 2 or codec 3, and every file still reads back.
#[test]
fn version_1_gateways_write_only_version_1_frames() {
    let work = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.write_frame_version = 1);
    gateway.aws(&["s3", "mb", "s3://models"]);
    let files = [base("f32"), base("bf16")];
    for (i, file) in files.iter().enumerate() {
        gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://models/m{i}")]);
    }
    settled_upstream(&gateway);
    let packs = gateway.dir.path().join("data/upstream/packs");
    let mut frames = 0;
    for pack in std::fs::read_dir(&packs).unwrap() {
        let bytes = std::fs::read(pack.unwrap().path()).unwrap();
        let mut offset = 0;
        while offset < bytes.len() {
            let header = tensorgate_codec::FrameHeader::read(&bytes[offset..]).unwrap();
            assert_eq!(bytes[offset + 4], 1, "a frame of version {}", bytes[offset + 4]);
            assert_ne!(header.codec, tensorgate_codec::frame::Codec::Levels);
            offset += header.frame_len();
            frames += 1;
        }
    }
    assert!(frames > 0);
    for (i, file) in files.iter().enumerate() {
        assert!(get(&gateway, "models", &format!("m{i}"), &work.path().join("back")) == std::fs::read(file).unwrap());
    }
}
