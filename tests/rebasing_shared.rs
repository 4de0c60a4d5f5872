//! Re-basing with several gateways over one upstream (issue 16): the lease holder re-bases a
//! model family while another gateway reads it and writes objects using its chunks. Nothing is
//! lost: every object reads back byte-identical through both and through a gateway that knew
//! nothing before; the other gateway follows the new frames (`rebased/` records) so that the old
//! packs are deleted and the savings reach the upstream; fsck is clean on both.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::faults::GatedUpstream;

use support::objects::*;
use support::shared::*;
use support::*;

/// Bytes and count of the packs upstream, as `gateway` lists them.
fn packs_upstream(gateway: &TestGateway) -> (u64, usize) {
    let listed = gateway.runtime.block_on(gateway.store().upstream.list(tensorgate_index::PACKS)).unwrap();
    (listed.iter().map(|pack| pack.size).sum(), listed.len())
}

/// How many records are under `folder` upstream.
fn records_under(gateway: &TestGateway, folder: &str) -> usize {
    gateway.runtime.block_on(gateway.store().upstream.list(folder)).unwrap().len()
}

#[test]
fn re_basing_on_the_lease_holder_loses_nothing_another_gateway_reads_or_writes() {
    let moto = Moto::start();
    let (state_a, state_b, state_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let scratch = tempfile::tempdir().unwrap();
    // `a` takes no deltas on the way in, so that re-basing has the whole family to do, a few
    // MiB a pass, so that `b` works between passes.
    let a = shared_gateway_over(
        &moto,
        state_a.path(),
        true,
        |config| {
            config.base_selection = tensorgate::config::BaseSelection::None;
            config.rebase_bytes_per_run = 4 << 20;
        },
        |upstream| upstream,
    );
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    a.aws(&["s3", "mb", "s3://family"]);
    for file in BF16_FAMILY {
        a.aws(&["s3api", "put-object", "--bucket", "family", "--key", file, "--body", corpus(file).to_str().unwrap()]);
    }
    a.drain_packer();
    let (stored, _) = packs_upstream(&a);
    // `b` reads the family (its index then holds the chunks in their first frames) and stores
    // copies of two of its models, named by its own manifests.
    sync(&b);
    let copies = [BF16_FAMILY[1], BF16_FAMILY[5]];
    for file in copies {
        b.aws(&["s3api", "put-object", "--bucket", "family", "--key", &format!("copy/{file}"), "--body", corpus(file).to_str().unwrap()]);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reader = read_corpus_until(b.endpoint.clone(), "family", &BF16_FAMILY, stop.clone());
    let (mut chunks, mut followed, mut passes) = (0, 0, 0);
    let mut b_state = Default::default();
    loop {
        let report = a.collect_garbage();
        assert!(report.leased, "a holds the lease");
        chunks += report.rebase.chunks;
        followed += sync_from(&b, &mut b_state).frames_followed;
        b.collect_garbage();
        passes += 1;
        if report.rebase.chunks == 0 && !report.rebase.unfinished {
            break;
        }
        assert!(passes < 80, "re-basing did not settle in 80 passes");
        // `b` writes while `a` re-bases: a copy named after the pass.
        let file = BF16_FAMILY[passes % BF16_FAMILY.len()];
        b.aws(&["s3api", "put-object", "--bucket", "family", "--key", &format!("pass-{passes}"), "--body", corpus(file).to_str().unwrap()]);
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reads through b during re-basing are byte-identical");
    // The old packs go once `b` no longer reads them: condemned, acknowledged, deleted.
    let mut settled = packs_upstream(&a);
    for _ in 0..12 {
        followed += sync_from(&b, &mut b_state).frames_followed;
        b.collect_garbage();
        a.collect_garbage();
        let now = packs_upstream(&a);
        if now == settled && records_under(&a, tensorgate_index::REBASED) == 0 {
            break;
        }
        settled = now;
    }
    println!(
        "{chunks} chunks re-based in {passes} passes, {followed} followed by b, {reads} reads through b meanwhile; packs upstream {stored} -> {} bytes ({} packs)",
        settled.0, settled.1
    );
    assert!(chunks > 0 && followed > 0, "re-based {chunks}, followed {followed}");
    assert_eq!(records_under(&a, tensorgate_index::REBASED), 0, "every pack re-basing took frames from was deleted");
    assert!(settled.0 * 10 < stored * 6, "the savings did not reach the upstream: {stored} -> {}", settled.0);

    // Every object, through both and through a gateway that knew nothing before.
    let c = shared_upstream_gateway(&moto, state_c.path(), true);
    sync(&c);
    let mut objects: Vec<(String, &str)> = BF16_FAMILY.iter().map(|file| (file.to_string(), *file)).collect();
    objects.extend(copies.iter().map(|file| (format!("copy/{file}"), *file)));
    objects.extend((1..passes).map(|pass| (format!("pass-{pass}"), BF16_FAMILY[pass % BF16_FAMILY.len()])));
    for gateway in [&a, &b, &c] {
        for (key, file) in &objects {
            assert!(get(gateway, "family", key, &scratch.path().join("back")) == std::fs::read(corpus(file)).unwrap(), "{key} differs");
        }
    }
    for gateway in [&a, &b] {
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// A switch whose publication failed (the records could not be written) is published by the
/// next run, from what the index saved before the switch; the other gateway then follows it and
/// the old packs go.
#[test]
fn a_switch_left_unpublished_is_published_by_the_next_run() {
    let moto = Moto::start();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let scratch = tempfile::tempdir().unwrap();
    // Writes of re-basing's records fail until told otherwise.
    let refusing = Arc::new(AtomicBool::new(true));
    let wrapped = refusing.clone();
    let a = shared_gateway_over(
        &moto,
        state_a.path(),
        true,
        |config| config.base_selection = tensorgate::config::BaseSelection::None,
        move |inner| {
            let mut gated = GatedUpstream::new(inner, tensorgate_index::REBASED);
            gated.failing_writes = wrapped;
            Arc::new(gated)
        },
    );
    let b = shared_upstream_gateway(&moto, state_b.path(), true);
    let family = &BF16_FAMILY[..3];
    a.aws(&["s3", "mb", "s3://family"]);
    for file in family {
        a.aws(&["s3api", "put-object", "--bucket", "family", "--key", file, "--body", corpus(file).to_str().unwrap()]);
    }
    a.drain_packer();
    sync(&b);

    let failed = a.runtime.block_on(tensorgate::maintenance::gc::collect_garbage(a.store()));
    assert!(failed.is_err(), "the publication's failure fails the run");
    // The refused writes opened the upstream's circuit (open for a second): calls go through again after.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(records_under(&a, tensorgate_index::REBASED), 0);
    assert_eq!(a.store().index.unpublished().unwrap().len(), 1, "the switch waits to be published");
    refusing.store(false, Ordering::Relaxed);
    a.collect_garbage();
    assert!(a.store().index.unpublished().unwrap().is_empty());
    assert!(records_under(&a, tensorgate_index::REBASED) > 0, "published by the next run");

    let mut b_state = Default::default();
    let mut followed = 0;
    for _ in 0..12 {
        followed += sync_from(&b, &mut b_state).frames_followed;
        b.collect_garbage();
        a.collect_garbage();
        if records_under(&a, tensorgate_index::REBASED) == 0 {
            break;
        }
    }
    assert!(followed > 0, "b followed nothing");
    assert_eq!(records_under(&a, tensorgate_index::REBASED), 0, "every pack re-basing took frames from was deleted");
    for gateway in [&a, &b] {
        for file in family {
            assert!(get(gateway, "family", file, &scratch.path().join("back")) == std::fs::read(corpus(file)).unwrap(), "{file} differs");
        }
        let report = gateway.fsck();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}
