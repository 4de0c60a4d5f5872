//! Who may ask: signatures, digests, presigned URLs, clock skew and replays are refused with
//! the codes AWS gives; keys come from the environment or files and reload on SIGHUP; HTTPS
//! with aws-chunked bodies.

mod support;

use support::*;

/// Requests with a wrong secret, without a signature, or with a body that does not match its
/// Content-MD5 are refused with the codes AWS gives.
#[test]
fn bad_signatures_and_digests_are_refused() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    gateway.aws(&["s3", "mb", "s3://guarded"]);
    let wrong = aws_command(&gateway.endpoint, ACCESS_KEY, "not-the-secret").args(["s3api", "list-objects-v2", "--bucket", "guarded"]).output().unwrap();
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("SignatureDoesNotMatch"), "{}", String::from_utf8_lossy(&wrong.stderr));
    let unknown = aws_command(&gateway.endpoint, "nobody", "x").args(["s3api", "list-objects-v2", "--bucket", "guarded"]).output().unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("InvalidAccessKeyId"), "{}", String::from_utf8_lossy(&unknown.stderr));
    let anonymous = aws_command(&gateway.endpoint, ACCESS_KEY, SECRET_KEY).args(["--no-sign-request", "s3api", "list-objects-v2", "--bucket", "guarded"]).output().unwrap();
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("AccessDenied"), "{}", String::from_utf8_lossy(&anonymous.stderr));
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("body");
    std::fs::write(&file, b"the real body").unwrap();
    let bad_md5 = gateway.aws_unchecked(&[
        "s3api", "put-object", "--bucket", "guarded", "--key", "k", "--body", file.to_str().unwrap(),
        "--content-md5", "1B2M2Y8AsgTpgAmY7PhCfg==",
    ]);
    assert!(String::from_utf8_lossy(&bad_md5.stderr).contains("BadDigest"), "{}", String::from_utf8_lossy(&bad_md5.stderr));
    let missing = gateway.aws_unchecked(&["s3api", "head-object", "--bucket", "guarded", "--key", "k"]);
    assert!(!missing.status.success(), "a refused write left an object behind");
}

/// Expired presigned URLs, requests signed with a skewed clock and signed requests replayed on
/// another key are refused with the codes AWS gives.
#[test]
fn expired_skewed_and_replayed_signatures_are_refused() {
    let gateway = TestGateway::start(UpstreamKind::LocalDirectory);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("f");
    std::fs::write(&file, b"signed bytes").unwrap();
    gateway.aws(&["s3", "mb", "s3://signed"]);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://signed/one"]);
    gateway.aws(&["s3", "cp", file.to_str().unwrap(), "s3://signed/two"]);
    gateway.python_client("signatures.py", &["signed".as_ref(), "one".as_ref(), "two".as_ref()]);
}

/// Secrets can come from the environment or a file; SIGHUP reloads keys, so a revoked key is
/// refused at once and a new one works, and a broken config is refused without harm.
#[test]
fn keys_come_from_env_or_files_and_reload_on_sighup() {
    let work = tempfile::tempdir().unwrap();
    let secret_file = work.path().join("secret");
    std::fs::write(&secret_file, "file-secret\n").unwrap();
    let config = work.path().join("tensorgate.toml");
    let tenant = |keys: &str| format!("data_dir = {:?}\n[[tenants]]\nname = \"team\"\n{keys}", work.path().join("data"));
    let env_key = "[[tenants.access_keys]]\naccess_key = \"from-env\"\nsecret_key_env = \"TG_TEST_SECRET\"\n";
    let file_key = format!("[[tenants.access_keys]]\naccess_key = \"from-file\"\nsecret_key_file = {secret_file:?}\n");
    std::fs::write(&config, tenant(&format!("{env_key}{file_key}"))).unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tensorgate"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("TG_TEST_SECRET", "env-secret")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let list = |key: &str, secret: &str| aws_command(&endpoint, key, secret).args(["s3", "ls"]).output().unwrap();
    assert!(list("from-env", "env-secret").status.success());
    assert!(list("from-file", "file-secret").status.success());
    let hangup = || {
        std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    std::fs::write(&config, tenant(&format!("{file_key}[[tenants.access_keys]]\naccess_key = \"new-key\"\nsecret_key = \"new-secret\"\n"))).unwrap();
    hangup();
    let revoked = list("from-env", "env-secret");
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("InvalidAccessKeyId"), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert!(list("new-key", "new-secret").status.success());
    assert!(list("from-file", "file-secret").status.success());
    std::fs::write(&config, "[[tenants]]\nname = \"x\"\naccess_keys = []\n").unwrap();
    hangup();
    assert!(list("new-key", "new-secret").status.success(), "a broken config replaced the keys in use");
    let _ = child.kill();
    let _ = child.wait();
}

/// With a certificate configured the gateway serves HTTPS; over HTTPS aws cli sends aws-chunked
/// bodies with a trailing CRC32, which are verified, and both single and multipart uploads of a
/// model round-trip.
#[test]
fn https_with_aws_chunked_uploads() {
    let work = tempfile::tempdir().unwrap();
    let certificate = work.path().join("cert.pem");
    let private_key = work.path().join("key.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout"])
        .arg(&private_key)
        .arg("-out")
        .arg(&certificate)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tls = tensorgate::config::TlsConfig { certificate: certificate.clone(), private_key };
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.tls = Some(tls));
    assert!(gateway.endpoint.starts_with("https://"));
    let ca = certificate.to_str().unwrap();
    let big = work.path().join("big.safetensors");
    std::fs::write(&big, replicated_model(&corpus("ft/ft-a-contrastive.bf16.safetensors"), 4)).unwrap();
    let small = corpus("base/minilm-l6.bf16.safetensors");
    gateway.aws(&["--ca-bundle", ca, "s3", "mb", "s3://secure"]);
    for (key, path) in [("small", &small), ("big", &big)] {
        gateway.aws(&["--ca-bundle", ca, "s3", "cp", path.to_str().unwrap(), &format!("s3://secure/{key}")]);
        let out = work.path().join(format!("{key}.back"));
        gateway.aws(&["--ca-bundle", ca, "s3", "cp", &format!("s3://secure/{key}"), out.to_str().unwrap()]);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(path).unwrap(), "{key} differs over HTTPS");
    }
    let plain = aws_command(&gateway.endpoint.replace("https", "http"), ACCESS_KEY, SECRET_KEY).args(["s3", "ls"]).output().unwrap();
    assert!(!plain.status.success(), "plain HTTP must not be served on the TLS port");
}
