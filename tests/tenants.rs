//! Tenants: isolated from each other, deduplicated together only when configured, and
//! optionally on an upstream of their own.

mod support;

use support::*;

fn two_tenants(config: &mut tensorgate::config::Config) {
    use tensorgate::config::{AccessKey, TenantConfig};
    let key = AccessKey::new;
    config.tenants = vec![
        TenantConfig { name: "a".into(), access_keys: vec![key("tenant-a", "secret-a")], max_buckets: Some(3), upstream: None, dedup_group: None },
        TenantConfig {
            name: "b".into(),
            access_keys: vec![key("tenant-b", "secret-b"), key("tenant-b2", "secret-b2")],
            max_buckets: None,
            upstream: None,
            dedup_group: None,
        },
    ];
}

/// Tenant B attempts every S3 operation on tenant A's buckets, objects and uploads; each is
/// refused as if A's data did not exist, and A's data is untouched.
#[test]
fn tenants_cannot_see_or_touch_each_other() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, two_tenants);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/tenants.py");
    let output = std::process::Command::new("python3")
        .arg(script)
        .args([gateway.endpoint.as_str(), "tenant-a", "secret-a", "tenant-b", "secret-b"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let quota = aws_command(&gateway.endpoint, "tenant-a", "secret-a").args(["s3", "mb", "s3://third"]).output().unwrap();
    assert!(quota.status.success());
    let over = aws_command(&gateway.endpoint, "tenant-a", "secret-a").args(["s3", "mb", "s3://fourth"]).output().unwrap();
    assert!(String::from_utf8_lossy(&over.stderr).contains("TooManyBuckets"), "{}", String::from_utf8_lossy(&over.stderr));
}

/// Two tenants' buckets of one name, each with its own CORS rules (tests/clients/cors_tenants.py):
/// a presigned URL's preflight and a signed request take their tenant's rules, an anonymous
/// preflight any holder's.
#[test]
fn cors_rules_are_each_tenants_own() {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, two_tenants);
    let keys = ["tenant-a", "secret-a", "tenant-b", "secret-b"].map(std::ffi::OsStr::new);
    let said = gateway.python_client("cors_tenants.py", &keys);
    assert!(said.contains("all checks passed"), "{said}");
}

/// Within a tenant every key reaches the same buckets; across tenants identical models are
/// stored once only when dedup is shared, by all or by a named group.
#[test]
fn dedup_is_per_tenant_unless_shared() {
    use tensorgate::config::DedupScope;
    let model = corpus("base/minilm-l6.bf16.safetensors");
    for (scope, group, second_upload_is_free) in [
        (DedupScope::Tenant, None, false),
        (DedupScope::Shared, None, true),
        (DedupScope::Tenant, Some("partners"), true),
    ] {
        let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
            two_tenants(config);
            config.dedup_scope = scope;
            for tenant in &mut config.tenants {
                tenant.dedup_group = group.map(str::to_owned);
            }
        });
        let mut added = Vec::new();
        for (key, secret) in [("tenant-a", "secret-a"), ("tenant-b", "secret-b")] {
            let aws = |args: &[&str]| {
                let output = aws_command(&gateway.endpoint, key, secret).args(args).output().unwrap();
                assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            };
            aws(&["s3", "mb", "s3://models"]);
            let before = gateway.store().index.pack_bytes().unwrap();
            aws(&["s3", "cp", model.to_str().unwrap(), "s3://models/base.safetensors"]);
            added.push(gateway.store().index.pack_bytes().unwrap() - before);
        }
        let other_key = aws_command(&gateway.endpoint, "tenant-b2", "secret-b2").args(["s3", "ls", "s3://models"]).output().unwrap();
        assert!(String::from_utf8_lossy(&other_key.stdout).contains("base.safetensors"), "a tenant's second key sees its buckets");
        assert!(added[0] > 1_000_000);
        assert_eq!(added[1] == 0, second_upload_is_free, "{scope:?}: second tenant's upload added {} bytes", added[1]);
        let usage = gateway.store().index.usage().unwrap();
        let physical: Vec<u64> = usage.iter().map(|row| row.physical_bytes).collect();
        let stored: u64 = physical.iter().sum();
        let live = gateway.store().index.pack_bytes().unwrap();
        assert!(usage.iter().all(|row| row.logical_bytes == std::fs::metadata(&model).unwrap().len()), "{usage:?}");
        assert!(stored.abs_diff(live) * 100 <= live, "{scope:?}: attributed {stored} of {live} pack bytes");
        if second_upload_is_free {
            assert!(physical[0].abs_diff(physical[1]) * 100 <= physical[0], "shared chunks are split evenly: {usage:?}");
        }
    }
}

/// A tenant with its own upstream has its bytes written there (under `tenants/<name>/`), the
/// others in the gateway's; both read back whole.
#[test]
fn a_tenant_can_have_its_own_upstream() {
    let moto = Moto::start();
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| {
        two_tenants(config);
        config.tenants[1].upstream = Some(moto.upstream_config());
    });
    let work = tempfile::tempdir().unwrap();
    let model = corpus("ft/ft-c-cls.bf16.safetensors");
    for (key, secret) in [("tenant-a", "secret-a"), ("tenant-b", "secret-b")] {
        let aws = |args: &[&str]| {
            let output = aws_command(&gateway.endpoint, key, secret).args(args).output().unwrap();
            assert!(output.status.success(), "{key} {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        aws(&["s3", "mb", "s3://models"]);
        aws(&["s3", "cp", model.to_str().unwrap(), "s3://models/m.safetensors"]);
        let out = work.path().join(key);
        aws(&["s3", "cp", "s3://models/m.safetensors", out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&model).unwrap(), "{key} read back differently");
    }
    let listed = aws_command(&moto.endpoint, "moto", "moto").args(["s3", "ls", "--recursive", "s3://upstream/tg/"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("tg/tenants/b/packs/"), "tenant b's packs are in its own upstream: {listed}");
    assert!(!listed.lines().any(|line| !line.contains("tg/tenants/b/")), "only tenant b's keys there: {listed}");
    let local = gateway.dir.path().join("data/upstream");
    assert!(!local.join("tenants").exists(), "tenant b wrote into the gateway's upstream");
    assert!(std::fs::read_dir(local.join("packs")).unwrap().count() > 0, "tenant a's packs are in the gateway's upstream");
}
