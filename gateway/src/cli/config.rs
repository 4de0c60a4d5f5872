//! `tensorgate config check`: validates the configuration and prints what it sets up.

use tensorgate::config::Config;

pub fn check(config: &Config) -> anyhow::Result<()> {
    config.validate()?;
    let tenants = config.all_tenants();
    let keys: usize = tenants.iter().map(|t| t.access_keys.len()).sum();
    let upstream = config.upstream.as_ref().map_or_else(
        || format!("local directory {}", config.data_dir.join("upstream").display()),
        |s3| format!("S3 {} bucket {}", s3.endpoint, s3.bucket),
    );
    println!("config is valid: listen {}, {} tenants, {keys} keys, upstream {upstream}", config.listen, tenants.len());
    Ok(())
}
