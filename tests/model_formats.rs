//! Model files besides safetensors (issue 17). GGUF files written by the `gguf` package from
//! the corpus weights: their tensors are cut like safetensors tensors, so the same weights in
//! both formats are stored once, an edited chat template costs its header, and quantized blocks
//! are compressed; files that are cut short or lie are stored as opaque bytes. Every file reads
//! back byte-identical, whole and in ranges, with the ETag S3 gives it.

mod support;

use std::path::{Path, PathBuf};

use support::objects::*;
use support::*;

/// Writes the GGUF files of `tests/clients/gguf_files.py` into `dir`.
fn gguf_files(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/gguf_files.py");
    let base = |precision: &str| corpus(&format!("base/minilm-l6.{precision}.safetensors"));
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(dir)
        .args([base("f32"), base("f16"), base("bf16")])
        .output()
        .expect("python3 with gguf must be installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Uploads `file` as `key` with the aws cli and returns what it added upstream, once settled.
fn upload_cost(gateway: &TestGateway, file: &Path, key: &str) -> u64 {
    let before = settled_upstream(gateway);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://models/{key}")]);
    settled_upstream(gateway) - before
}

/// Reads `key` back whole (and in ranges when `ranges`), and checks its ETag.
fn check_read_back(gateway: &TestGateway, file: &Path, key: &str, work: &Path, ranges: bool) {
    let bytes = std::fs::read(file).unwrap();
    assert!(get(gateway, "models", key, &work.join("back")) == bytes, "{key} differs");
    let etag = gateway.etag("models", key);
    assert!(etag == md5_hex(&bytes) || etag == multipart_etag(&bytes, 8 << 20), "{key}: ETag {etag}");
    if ranges {
        check_ranges(gateway, "models", key, &bytes, work);
    }
}

/// A half-precision GGUF beside the same weights as safetensors costs at most 5% more than the
/// safetensors alone, in either order; a copy with another chat template at most 1% of its
/// size; Q8_0 and Q4_0 files beside the F16 file at most 90% of raw (the F16 tensors predict
/// their blocks), and no more than 97% alone.
#[test]
fn gguf_tensors_are_stored_like_safetensors_tensors() {
    let work = tempfile::tempdir().unwrap();
    let ggufs = work.path().join("gguf");
    gguf_files(&ggufs);
    let gguf = |name: &str| -> PathBuf { ggufs.join(name) };
    for precision in ["f16", "bf16"] {
        let safetensors = corpus(&format!("base/minilm-l6.{precision}.safetensors"));
        let files = [(safetensors, "model.safetensors"), (gguf(&format!("{precision}.gguf")), "model.gguf")];
        let mut safetensors_alone = None;
        for gguf_first in [false, true] {
            let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
            gateway.aws(&["s3", "mb", "s3://models"]);
            let order: Vec<_> = if gguf_first { files.iter().rev().collect() } else { files.iter().collect() };
            let costs: Vec<u64> = order.iter().map(|(file, key)| upload_cost(&gateway, file, key)).collect();
            let alone = *safetensors_alone.get_or_insert(costs[0]);
            let both = costs[0] + costs[1];
            println!("{precision}, gguf first {gguf_first}: {costs:?} bytes upstream, {:.3} x the safetensors alone", both as f64 / alone as f64);
            assert!(both as f64 <= 1.05 * alone as f64, "{precision}, gguf first {gguf_first}: {costs:?}");
            for (file, key) in &files {
                check_read_back(&gateway, file, key, work.path(), false);
            }
        }
    }

    // Quantized blocks with no wider tensor stored: only the byte codec.
    for name in ["q8_0.gguf", "q4_0.gguf"] {
        let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
        gateway.aws(&["s3", "mb", "s3://models"]);
        let size = std::fs::metadata(gguf(name)).unwrap().len();
        let cost = upload_cost(&gateway, &gguf(name), name);
        println!("{name} alone: {cost} bytes upstream of {size} ({:.1}%)", 100.0 * cost as f64 / size as f64);
        assert!(cost * 100 <= size * 97, "{name} alone took {cost} of {size}");
    }

    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    upload_cost(&gateway, &gguf("f16.gguf"), "f16.gguf");
    let template = gguf("f16-template.gguf");
    let edited = upload_cost(&gateway, &template, "f16-template.gguf");
    let size = std::fs::metadata(&template).unwrap().len();
    println!("another chat template: {edited} bytes upstream of {size}");
    assert!(edited * 100 <= size, "the edited template cost {edited} of {size}");
    for name in ["q8_0.gguf", "q4_0.gguf", "f32.gguf"] {
        let size = std::fs::metadata(gguf(name)).unwrap().len();
        let cost = upload_cost(&gateway, &gguf(name), name);
        println!("{name}: {cost} bytes upstream of {size} ({:.1}%)", 100.0 * cost as f64 / size as f64);
        if name.starts_with('q') {
            // The quants are close to random (order-0 entropy 7.68 bits a byte for Q8_0's), but
            // the F16 tensors stored before predict them (`cast::blocks`).
            assert!(cost * 100 <= size * 90, "{name} took {cost} of {size}");
        }
    }
    for name in ["f16.gguf", "f16-template.gguf", "q8_0.gguf", "q4_0.gguf", "f32.gguf"] {
        check_read_back(&gateway, &gguf(name), name, work.path(), true);
    }
    let check = gateway.fsck();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

/// The VAD model as safetensors, as the PyTorch checkpoint it was shipped as, and as its ONNX
/// export, in two orders: together at most 1.15 x the safetensors alone. The checkpoint's
/// storages are the safetensors tensors byte for byte, and the ONNX initializers too but for the
/// recurrent layer's, whose gate blocks the export reordered and which small tensors' chunks
/// keep whole (`tensorgate_codec::PIECE_ELEMENTS`): each costs little more than its container.
#[test]
fn the_same_weights_as_safetensors_pytorch_and_onnx_are_stored_once() {
    let work = tempfile::tempdir().unwrap();
    let files = [
        (corpus("other/akiki-vad.f32.safetensors"), "vad.safetensors"),
        (corpus("formats/akiki-vad.pt"), "vad.pt"),
        (corpus("formats/akiki-vad.onnx"), "vad.onnx"),
    ];
    let onnx_alone = {
        let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
        gateway.aws(&["s3", "mb", "s3://models"]);
        upload_cost(&gateway, &files[2].0, "alone.onnx")
    };
    let mut safetensors_alone = None;
    for reversed in [false, true] {
        let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
        gateway.aws(&["s3", "mb", "s3://models"]);
        let order: Vec<_> = if reversed { files.iter().rev().collect() } else { files.iter().collect() };
        let costs: Vec<u64> = order.iter().map(|(file, key)| upload_cost(&gateway, file, key)).collect();
        let alone = *safetensors_alone.get_or_insert(costs[0]);
        let total: u64 = costs.iter().sum();
        println!("reversed {reversed}: {costs:?} bytes upstream, {:.3} x the safetensors alone (ONNX alone: {onnx_alone})", total as f64 / alone as f64);
        let (checkpoint_cost, onnx_cost) = if reversed { (costs[1], costs[0]) } else { (costs[1], costs[2]) };
        if !reversed {
            assert!(checkpoint_cost as f64 <= 0.02 * alone as f64, "the checkpoint beside its safetensors cost {checkpoint_cost}");
            assert!(onnx_cost as f64 <= 0.05 * onnx_alone as f64, "the ONNX export beside the others cost {onnx_cost} of {onnx_alone}");
        }
        assert!(total as f64 <= 1.15 * alone as f64, "reversed {reversed}: {costs:?}");
        for (file, key) in &files {
            check_read_back(&gateway, file, key, work.path(), reversed);
        }
        if reversed {
            for source in [&files[1].0, &files[2].0] {
                let bytes = std::fs::read(source).unwrap();
                let mut flipped = bytes.clone();
                flipped[500_000] ^= 1;
                for (name, variant) in [("cut", bytes[..700_000].to_vec()), ("flipped", flipped)] {
                    let file = work.path().join(name);
                    std::fs::write(&file, &variant).unwrap();
                    gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://models/{name}")]);
                    check_read_back(&gateway, &file, name, work.path(), true);
                }
            }
        }
    }
}

/// A stored zip entry with a data descriptor after its data, as `torch.save` writes them.
fn torch_entry(out: &mut Vec<u8>, name: &str, data: &[u8]) {
    out.extend_from_slice(b"PK\x03\x04\x00\x00\x08\x08");
    out.extend_from_slice(&[0; 18]);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"PK\x07\x08\x01\x02\x03\x04");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
}

/// A checkpoint whose storages are empty, exactly 4 MiB (its last chunk sealed before the
/// walker knows the storage has ended) and a few bytes, written with PUT and with a multipart
/// upload (re-cut by the packer), reads back byte-identical.
#[test]
fn checkpoints_with_empty_and_chunk_sized_storages_are_stored() {
    let work = tempfile::tempdir().unwrap();
    let mut file = Vec::new();
    torch_entry(&mut file, "m/data.pkl", b"\x80\x02ctorch\nFloatStorage\nq\x01.");
    torch_entry(&mut file, "m/data/0", b"");
    torch_entry(&mut file, "m/data/1", &noise(4 << 20, 3));
    torch_entry(&mut file, "m/data/2", &noise(1000, 4));
    torch_entry(&mut file, "m/data/3", b"");
    torch_entry(&mut file, "m/data/4", &noise(6 << 20, 5));
    file.extend_from_slice(b"PK\x01\x02 central directory");
    let path = work.path().join("edge.pt");
    std::fs::write(&path, &file).unwrap();
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    gateway.aws(&["s3api", "put-object", "--bucket", "models", "--key", "put.pt", "--body", path.to_str().unwrap()]);
    gateway.aws(&["s3", "cp", path.to_str().unwrap(), "s3://models/multipart.pt"]);
    gateway.drain_packer();
    for key in ["put.pt", "multipart.pt"] {
        check_read_back(&gateway, &path, key, work.path(), true);
    }
    let record = gateway.store().index.object(&tensorgate_index::ObjectKey::new("default", "models", "multipart.pt")).unwrap().unwrap();
    assert!(record.segments.iter().all(|segment| matches!(segment, tensorgate_index::Segment::Chunk { .. })), "the packer re-cut the upload");
}

/// A checkpoint whose pickle gives its storages element counts that are not theirs (one far
/// larger, one far smaller, one past any length), which choose how they are cut while they
/// stream, reads back byte-identical.
#[test]
fn checkpoints_whose_pickle_lies_about_sizes_are_stored() {
    let storage = |key: &str, count: &[u8], first: bool| {
        let mut ops = b"(".to_vec();
        ops.extend_from_slice(if first { b"X\x07\x00\x00\x00storageq\x05ctorch\nFloatStorage\nq\x06" } else { b"h\x05h\x06" });
        ops.extend_from_slice(&[b'X', key.len() as u8, 0, 0, 0]);
        ops.extend_from_slice(key.as_bytes());
        ops.extend_from_slice(b"X\x03\x00\x00\x00cpu");
        ops.extend_from_slice(count);
        ops.extend_from_slice(b"tQ");
        ops
    };
    let mut pickle = b"\x80\x02".to_vec();
    pickle.extend(storage("0", b"J\x00\x00\x10\x00", true));
    pickle.extend(storage("1", b"K\x01", false));
    pickle.extend(storage("2", b"\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f", false));
    pickle.push(b'.');
    let work = tempfile::tempdir().unwrap();
    let mut file = Vec::new();
    torch_entry(&mut file, "m/data.pkl", &pickle);
    torch_entry(&mut file, "m/data/0", &noise(400_000, 6));
    torch_entry(&mut file, "m/data/1", &noise(1_200_000, 7));
    torch_entry(&mut file, "m/data/2", &noise(300_000, 8));
    file.extend_from_slice(b"PK\x01\x02 central directory");
    let path = work.path().join("lying.pt");
    std::fs::write(&path, &file).unwrap();
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    gateway.aws(&["s3api", "put-object", "--bucket", "models", "--key", "lying.pt", "--body", path.to_str().unwrap()]);
    check_read_back(&gateway, &path, "lying.pt", work.path(), true);
}

/// GGUF files cut short, with a tensor claimed past the end, or with flipped header bytes are
/// stored as opaque bytes and read back byte-identical.
#[test]
fn broken_gguf_files_are_stored_byte_identical() {
    let work = tempfile::tempdir().unwrap();
    let ggufs = work.path().join("gguf");
    gguf_files(&ggufs);
    let original = std::fs::read(ggufs.join("q8_0.gguf")).unwrap();
    let mut variants: Vec<(String, Vec<u8>)> = vec![
        ("header-cut".into(), original[..900].to_vec()),
        ("data-cut".into(), original[..original.len() - 1000].to_vec()),
    ];
    let mut lying = original.clone();
    // A million tensors claimed where there are a few dozen.
    lying[8..16].copy_from_slice(&1_000_000u64.to_le_bytes());
    variants.push(("count-lies".into(), lying));
    for seed in 0..6u64 {
        let mut flipped = original.clone();
        let at = (seed * 7919 + 40) as usize % 1600;
        flipped[at] ^= 0x5a;
        variants.push((format!("flipped-{seed}"), flipped));
    }
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://models"]);
    for (name, bytes) in &variants {
        let file = work.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://models/{name}")]);
    }
    gateway.drain_packer();
    for (name, bytes) in &variants {
        assert!(get(&gateway, "models", name, &work.path().join("back")) == *bytes, "{name} differs");
        assert_eq!(gateway.etag("models", name), md5_hex(bytes), "{name}");
    }
}
