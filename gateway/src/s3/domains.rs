//! Which requests are virtual-host style. s3s 0.14.1 compares the Host header, port included,
//! with its domains, so `bucket.localhost:9000` matched nothing and a plain `localhost:9000`
//! was taken for a bucket name. Here the port is dropped first, and a host that is neither a
//! configured domain nor one of its subdomains is served path style, as AWS and MinIO do.

use s3s::host::{S3Host, VirtualHost};
use s3s::S3Result;

pub struct Domains {
    domains: Vec<String>,
}

impl Domains {
    pub fn new(domains: &[String]) -> Domains {
        Domains { domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect() }
    }
}

/// The host without a trailing `:port`.
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

impl S3Host for Domains {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = without_port(host);
        for domain in &self.domains {
            if name.eq_ignore_ascii_case(domain) {
                return Ok(VirtualHost::new(domain.as_str()));
            }
            let bucket = name
                .len()
                .checked_sub(domain.len() + 1)
                .filter(|at| name.is_char_boundary(*at) && name[*at..].eq_ignore_ascii_case(&format!(".{domain}")))
                .map(|at| &name[..at]);
            if let Some(bucket) = bucket {
                return Ok(VirtualHost::new(domain.as_str()).with_bucket(bucket));
            }
        }
        Ok(VirtualHost::new(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_ignored_and_unknown_hosts_are_path_style() {
        let domains = Domains::new(&["localhost".to_owned()]);
        let bucket = |host: &str| domains.parse_host_header(host).unwrap().bucket().map(str::to_owned);
        assert_eq!(bucket("models.localhost:9000"), Some("models".to_owned()));
        assert_eq!(bucket("models.localhost"), Some("models".to_owned()));
        assert_eq!(bucket("localhost:9000"), None);
        assert_eq!(bucket("gateway.internal:9000"), None);
        assert_eq!(bucket("s3.example.com"), None);
    }
}
