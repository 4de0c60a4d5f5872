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
        let together = store_in_order(&files, work.path());
        let ratio = together as f64 / alone as f64;
        println!("{family}: F32 alone {alone} bytes upstream, with its casts {together} ({ratio:.3} x)");
        assert!(ratio <= 1.05, "{family}: {ratio:.3} x the F32 alone");
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
        let together = store_in_order(&files, work.path());
        let ratio = together as f64 / alone as f64;
        println!("{order:?}: {together} bytes upstream, {ratio:.3} x the F32 alone");
        assert!(ratio <= 1.05, "{order:?}: {ratio:.3} x the F32 alone");
    }
}

/// An F8 E4M3 quantization of the BF16 base (made with numpy as fp8 checkpoints are: one scale
/// per tensor, or one per 128 x 128 block) beside the BF16: at most 1.2 x the BF16 alone, in
/// either order.
#[test]
fn an_f8_quantization_costs_little_beside_its_original() {
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/fp8_quantize.py");
    let alone = store_in_order(&[base("bf16")], work.path());
    for scales in [None, Some("128")] {
        let quantized = work.path().join(format!("fp8-{}.safetensors", scales.unwrap_or("tensor")));
        let output = std::process::Command::new("python3").arg(&script).arg(base("bf16")).arg(&quantized).args(scales).output().expect("python3 with numpy");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        for files in [[base("bf16"), quantized.clone()], [quantized.clone(), base("bf16")]] {
            let together = store_in_order(&files, work.path());
            let ratio = together as f64 / alone as f64;
            println!("{:?} first: {together} bytes upstream, {ratio:.3} x the BF16 alone ({alone})", files[0].file_name().unwrap());
            assert!(ratio <= 1.2, "{:?}: {ratio:.3} x the BF16 alone", files[0].file_name().unwrap());
        }
    }
}

/// The BF16 base fake-quantized to int4 in groups of 16 values (made with numpy, as loaders of
/// GPTQ- or AWQ-style checkpoints hold it): at most 0.35 x raw, its groups coded as a scale and
/// 4-bit codes each; groups of 128 cost less still.
#[test]
fn weights_dequantized_from_int4_groups_cost_their_codes() {
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/int4_dequantize.py");
    for group in ["16", "128"] {
        let dequantized = work.path().join(format!("int4-g{group}.safetensors"));
        let output = std::process::Command::new("python3").arg(&script).arg(base("bf16")).arg(&dequantized).arg(group).output().expect("python3 with numpy");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let raw = std::fs::metadata(&dequantized).unwrap().len();
        let stored = store_in_order(&[dequantized], work.path());
        let ratio = stored as f64 / raw as f64;
        println!("int4 in groups of {group}, dequantized to BF16: {stored} of {raw} bytes upstream ({ratio:.3} x raw)");
        assert!(ratio <= 0.35, "groups of {group}: {ratio:.3} x raw");
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
