//! Objects that are not models (issue 17): cut where their content says, so that the same bytes
//! cost one copy under any number of keys and an edited copy costs little more than its edit;
//! text compressed; every byte read back exactly, whole and in ranges.

mod support;

use support::objects::*;
use support::*;

/// One 100 MiB file of random bytes under nine keys (one single PUT, eight multipart uploads
/// that the packer re-cuts) costs one copy; a copy with 1 KiB inserted in its middle costs
/// little more; all read back byte-identical with the ETags S3 gives them.
#[test]
fn the_same_bytes_under_many_keys_cost_one_copy_and_an_edit_costs_its_chunks() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let original = noise(100 << 20, 17);
    let file = work.path().join("original.bin");
    std::fs::write(&file, &original).unwrap();
    gateway.aws(&["s3", "mb", "s3://blobs"]);
    gateway.aws(&["s3api", "put-object", "--bucket", "blobs", "--key", "copy-0", "--body", file.to_str().unwrap()]);
    let one_copy = settled_upstream(&gateway);
    for i in 1..9 {
        gateway.aws(&["s3", "cp", file.to_str().unwrap(), &format!("s3://blobs/copy-{i}")]);
    }
    let nine_copies = settled_upstream(&gateway);
    println!("100 MiB of noise: one copy {one_copy} bytes upstream, nine copies {nine_copies}");
    assert!(one_copy as f64 <= 1.01 * original.len() as f64, "one copy takes {one_copy}");
    assert!(nine_copies as f64 <= 1.01 * one_copy as f64, "nine copies take {nine_copies} where one takes {one_copy}");

    let mut edited = original.clone();
    edited.splice(50 << 20..50 << 20, noise(1024, 99));
    let edited_file = work.path().join("edited.bin");
    std::fs::write(&edited_file, &edited).unwrap();
    gateway.aws(&["s3", "cp", edited_file.to_str().unwrap(), "s3://blobs/edited"]);
    let with_edit = settled_upstream(&gateway);
    println!("with the edited copy: {with_edit} bytes upstream ({:.4} x one copy)", with_edit as f64 / one_copy as f64);
    assert!(with_edit as f64 <= 1.05 * one_copy as f64, "the edited copy took {} more", with_edit - nine_copies);

    assert_eq!(gateway.etag("blobs", "copy-0"), md5_hex(&original));
    assert_eq!(gateway.etag("blobs", "copy-3"), multipart_etag(&original, 8 << 20));
    assert_eq!(gateway.etag("blobs", "edited"), multipart_etag(&edited, 8 << 20));
    assert!(get(&gateway, "blobs", "copy-0", &work.path().join("back-0")) == original);
    assert!(get(&gateway, "blobs", "copy-8", &work.path().join("back-8")) == original);
    assert!(get(&gateway, "blobs", "edited", &work.path().join("back-edited")) == edited);
    check_ranges(&gateway, "blobs", "copy-5", &original, work.path());
    check_ranges(&gateway, "blobs", "edited", &edited, work.path());
    let check = gateway.fsck();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
}

/// A real tokenizer.json and vocabulary are zstd-coded: the tokenizer takes at most half its
/// size upstream, and both read back byte-identical, whole and in ranges.
#[test]
fn text_files_are_compressed() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    gateway.aws(&["s3", "mb", "s3://repo"]);
    let empty = settled_upstream(&gateway);
    for name in ["minilm-tokenizer.json", "minilm-vocab.txt"] {
        let path = corpus(&format!("formats/{name}"));
        let bytes = std::fs::read(&path).unwrap();
        let before = settled_upstream(&gateway).max(empty);
        gateway.aws(&["s3", "cp", path.to_str().unwrap(), &format!("s3://repo/{name}")]);
        let stored = settled_upstream(&gateway) - before;
        println!("{name}: {} bytes, {stored} upstream ({:.1}%)", bytes.len(), 100.0 * stored as f64 / bytes.len() as f64);
        if name.ends_with(".json") {
            assert!(stored * 2 <= bytes.len() as u64, "{name} takes {stored} of {}", bytes.len());
        } else {
            assert!(stored * 10 <= bytes.len() as u64 * 6, "{name} takes {stored} of {}", bytes.len());
        }
        assert!(get(&gateway, "repo", name, &work.path().join(name)) == bytes);
        assert_eq!(gateway.etag("repo", name), md5_hex(&bytes));
        check_ranges(&gateway, "repo", name, &bytes, work.path());
    }
}
