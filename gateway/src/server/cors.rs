//! CORS as S3 applies a bucket's rules (kept by PutBucketCors, `engine::bucket_settings`):
//! preflight `OPTIONS` requests are answered here, before s3s (which has no such operation),
//! and any other request carrying an `Origin` gets the `Access-Control-*` headers of the first
//! rule that allows its origin and method. Bucket names are per tenant: a request whose key
//! names a tenant (signed, presigned, or a presigned URL's preflight) takes that tenant's
//! bucket; an anonymous one (most preflights, browser POST forms) takes the rules of every
//! tenant holding a bucket of that name, the first allowing one answering. A preflight only
//! lets the browser send the request, which is then authenticated.
//!
//! Rules are read through `bucket_settings::read_kept`: a change through another gateway of a
//! shared upstream applies within `bucket_settings::KEPT_FOR`.

use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use s3s::host::S3Host;
use s3s::S3Error;
use tensorgate_index::{BucketSettings, CorsRule};

use crate::engine::{bucket_settings, Store};
use crate::s3::auth::Keys;
use crate::s3::bucket_config::CORS_METHODS;
use crate::s3::domains::Domains;
use crate::s3::errors::custom_error;

/// The store whose buckets' rules apply, the tenants' keys, and the domains naming buckets by
/// host.
pub struct Cors {
    store: Arc<Store>,
    keys: Arc<Keys>,
    domains: Domains,
}

/// What a rule allows a request: the headers to answer with.
struct Allowed<'a> {
    rule: &'a CorsRule,
    origin: &'a str,
    requested_headers: Vec<String>,
}

/// What CORS needs of a request carrying an `Origin`, kept before s3s takes the request.
pub struct OriginRequest {
    origin: HeaderValue,
    method: Method,
    bucket: Option<String>,
}

impl Cors {
    pub fn new(store: Arc<Store>, keys: Arc<Keys>) -> Cors {
        let domains = Domains::new(&store.config.domains);
        Cors { store, keys, domains }
    }

    /// The answer to a preflight request (S3's `OPTIONS object`), for the tenant its key names
    /// (empty: none).
    pub async fn preflight<B>(&self, request: &hyper::Request<B>, tenant: &str) -> Result<s3s::HttpResponse, S3Error> {
        let headers = request.headers();
        let Some(origin) = text(headers, "origin") else {
            return Err(bad_request("Insufficient information. Origin request header needed.".to_owned()));
        };
        let bucket = self.bucket(request).unwrap_or_default();
        let settings = self.settings_of(tenant, &bucket).await?;
        if settings.is_empty() {
            return Err(forbidden("CORSResponse: Bucket not found"));
        }
        if settings.iter().all(|settings| settings.cors.is_empty()) {
            return Err(forbidden("CORSResponse: CORS is not enabled for this bucket."));
        }
        let method = text(headers, "access-control-request-method").unwrap_or_default();
        if !CORS_METHODS.contains(&method) {
            return Err(bad_request(format!("Invalid Access-Control-Request-Method: {method}")));
        }
        let requested_headers = text(headers, "access-control-request-headers");
        let Some(allowed) = settings.iter().find_map(|settings| first_allowing(&settings.cors, origin, method, requested_headers)) else {
            return Err(forbidden("CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec."));
        };
        let mut response = s3s::HttpResponse::new(s3s::Body::empty());
        *response.status_mut() = StatusCode::OK;
        allowed.answer(response.headers_mut());
        Ok(response)
    }

    /// What CORS will need of `request`, if it carries an `Origin`.
    pub fn origin_of<B>(&self, request: &hyper::Request<B>) -> Option<OriginRequest> {
        let origin = request.headers().get(hyper::header::ORIGIN)?.clone();
        Some(OriginRequest { origin, method: request.method().clone(), bucket: self.bucket(request) })
    }

    /// Adds the `Access-Control-*` headers to the answer to a request that carried an `Origin`,
    /// when a rule of its bucket allows it. A failure to read the rules leaves the answer as it
    /// is (logged): the browser then refuses it, as without a rule.
    pub async fn decorate(&self, asked: OriginRequest, tenant: &str, response: &mut s3s::HttpResponse) {
        let (Ok(origin), Some(bucket)) = (asked.origin.to_str(), asked.bucket) else { return };
        match self.settings_of(tenant, &bucket).await {
            Ok(settings) => {
                if let Some(allowed) = settings.iter().find_map(|settings| first_allowing(&settings.cors, origin, asked.method.as_str(), None)) {
                    allowed.answer(response.headers_mut());
                }
            }
            Err(error) => tracing::warn!(tenant, bucket, error = error.message().unwrap_or_default(), "reading the bucket's CORS rules failed"),
        }
    }

    /// The bucket a request names: the host's (virtual-host style) or the path's first segment.
    fn bucket<B>(&self, request: &hyper::Request<B>) -> Option<String> {
        let host = request.headers().get(hyper::header::HOST).and_then(|value| value.to_str().ok());
        if let Some(bucket) = host.and_then(|host| self.domains.parse_host_header(host).ok()).and_then(|host| host.bucket().map(str::to_owned)) {
            return Some(bucket);
        }
        let segment = request.uri().path().trim_start_matches('/').split('/').next()?;
        (!segment.is_empty()).then(|| segment.to_owned())
    }

    /// The settings of bucket `bucket`: `tenant`'s when a key named one, else those of every
    /// tenant holding a bucket of that name; none for a bucket no such tenant holds.
    async fn settings_of(&self, tenant: &str, bucket: &str) -> Result<Vec<Arc<BucketSettings>>, S3Error> {
        // The key ring's tenants are listed only for an anonymous request.
        let owners = if tenant.is_empty() { self.keys.current().tenants() } else { vec![tenant.to_owned()] };
        let mut settings = Vec::new();
        for owner in owners {
            if let Some(kept) = bucket_settings::read_kept(&self.store, &owner, bucket).await.map_err(crate::s3::errors::to_s3)? {
                settings.push(kept);
            }
        }
        Ok(settings)
    }
}

/// The first rule allowing `origin`, `method` and every header of `requested_headers` (a
/// comma-separated list), as S3 picks it.
fn first_allowing<'a>(rules: &'a [CorsRule], origin: &'a str, method: &str, requested_headers: Option<&str>) -> Option<Allowed<'a>> {
    let requested: Vec<String> = requested_headers
        .into_iter()
        .flat_map(|list| list.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    let rule = rules.iter().find(|rule| {
        rule.allowed_origins.iter().any(|allowed| matches_wildcard(allowed, origin, false))
            && rule.allowed_methods.iter().any(|allowed| allowed == method)
            && requested.iter().all(|name| rule.allowed_headers.iter().any(|allowed| matches_wildcard(allowed, name, true)))
    })?;
    Some(Allowed { rule, origin, requested_headers: requested })
}

/// Whether `value` matches `pattern`, which may hold one `*` standing for any run of characters.
fn matches_wildcard(pattern: &str, value: &str, ignore_case: bool) -> bool {
    let same = |a: &str, b: &str| if ignore_case { a.eq_ignore_ascii_case(b) } else { a == b };
    match pattern.split_once('*') {
        None => same(pattern, value),
        Some((head, tail)) => {
            value.len() >= head.len() + tail.len()
                && value.get(..head.len()).is_some_and(|start| same(start, head))
                && value.get(value.len() - tail.len()..).is_some_and(|end| same(end, tail))
        }
    }
}

impl Allowed<'_> {
    /// The headers S3 answers a request a rule allows with.
    fn answer(&self, headers: &mut HeaderMap) {
        let any_origin = self.rule.allowed_origins.iter().any(|allowed| allowed == "*");
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("access-control-allow-origin", if any_origin { "*" } else { self.origin });
        set("access-control-allow-methods", &self.rule.allowed_methods.join(", "));
        if !any_origin {
            set("access-control-allow-credentials", "true");
        }
        if !self.requested_headers.is_empty() {
            set("access-control-allow-headers", &self.requested_headers.join(", "));
        }
        if !self.rule.expose_headers.is_empty() {
            set("access-control-expose-headers", &self.rule.expose_headers.join(", "));
        }
        if let Some(seconds) = self.rule.max_age_seconds {
            set("access-control-max-age", &seconds.to_string());
        }
        set("vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method");
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn bad_request(message: String) -> S3Error {
    custom_error("BadRequest", StatusCode::BAD_REQUEST, message)
}

fn forbidden(message: &'static str) -> S3Error {
    custom_error("AccessForbidden", StatusCode::FORBIDDEN, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(origins: &[&str], methods: &[&str], headers: &[&str]) -> CorsRule {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        CorsRule {
            id: None,
            allowed_methods: strings(methods),
            allowed_origins: strings(origins),
            allowed_headers: strings(headers),
            expose_headers: vec![],
            max_age_seconds: None,
        }
    }

    #[test]
    fn the_first_rule_allowing_origin_method_and_headers_is_taken() {
        let rules = [rule(&["*suffix", "start*end"], &["GET"], &[]), rule(&["prefix*"], &["GET", "PUT"], &["x-amz-*"]), rule(&["*"], &["HEAD"], &[])];
        let taken = |origin, method, headers| first_allowing(&rules, origin, method, headers).map(|allowed| allowed.rule.allowed_methods.len());
        assert_eq!(taken("foo.suffix", "GET", None), Some(1));
        assert_eq!(taken("start12end", "GET", None), Some(1));
        assert_eq!(taken("0start12end", "GET", None), None, "the pattern covers the whole origin");
        assert_eq!(taken("foo.suffix", "PUT", None), None);
        assert_eq!(taken("prefix.x", "PUT", Some("X-Amz-Date, x-amz-content-sha256")), Some(2), "headers match without case");
        assert_eq!(taken("prefix.x", "PUT", Some("authorization")), None);
        assert_eq!(taken("anything", "HEAD", None), Some(1));
    }

    #[test]
    fn an_allowed_request_is_answered_with_the_rules_headers() {
        let mut allowing = rule(&["https://hub.example"], &["GET", "PUT"], &["*"]);
        allowing.expose_headers = vec!["ETag".into()];
        allowing.max_age_seconds = Some(600);
        let rules = [allowing];
        let allowed = first_allowing(&rules, "https://hub.example", "PUT", Some("content-type")).unwrap();
        let mut headers = HeaderMap::new();
        allowed.answer(&mut headers);
        let get = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(get("access-control-allow-origin"), "https://hub.example");
        assert_eq!(get("access-control-allow-methods"), "GET, PUT");
        assert_eq!(get("access-control-allow-headers"), "content-type");
        let listed = first_allowing(&rules, "https://hub.example", "GET", Some("Range , X-Amz-Date,")).unwrap();
        assert_eq!(listed.requested_headers, ["range", "x-amz-date"], "requested headers are answered in lower case");
        assert_eq!(get("access-control-expose-headers"), "ETag");
        assert_eq!(get("access-control-max-age"), "600");
        assert_eq!(get("access-control-allow-credentials"), "true");
    }
}
