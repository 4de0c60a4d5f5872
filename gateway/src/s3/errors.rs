//! The one mapping from what went wrong to the S3 error a client gets, in AWS's classes: the
//! client's fault is a 4xx, ours or the upstream's a 5xx that clients retry. An answer carries
//! the request's id and a short message of AWS's kind; the cause (error chain, upstream keys
//! and endpoints) goes to the log under that id, never into the answer.

use s3s::{S3Error, S3ErrorCode};
use tensorgate_index::{IndexError, Refusal};

use crate::engine::ingest::BodyError;
use crate::engine::shared::KeptChanging;
use crate::upstream::{Missing, UpstreamFailure};

tokio::task_local! {
    /// The id of the request being served (`x-amz-request-id`), set by the server for each one.
    pub static REQUEST_ID: String;
}

/// The id of the request being served, if any.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Completes the XML body of an error answer as S3 writes one: its `RequestId` (s3s writes none
/// in the errors it raises itself, such as a signature that does not match) and its `HostId`,
/// the ids of the answer's `x-amz-request-id` and `x-amz-id-2` headers. Other answers, and
/// error answers whose body is not an error's XML held whole, are left as they are (a HEAD's
/// is completed too, and not sent).
pub fn identify_error_body(response: &mut s3s::HttpResponse, request_id: &str, host_id: &str) {
    if response.status().as_u16() < 400 {
        return;
    }
    let Some(body) = response.body().bytes() else { return };
    let Some(end) = body.windows(b"</Error>".len()).rposition(|window| window == b"</Error>") else { return };
    let mut completed = Vec::with_capacity(body.len() + 128);
    completed.extend_from_slice(&body[..end]);
    if !body.windows(b"<RequestId>".len()).any(|window| window == b"<RequestId>") {
        completed.extend_from_slice(format!("<RequestId>{request_id}</RequestId>").as_bytes());
    }
    completed.extend_from_slice(format!("<HostId>{host_id}</HostId>").as_bytes());
    completed.extend_from_slice(&body[end..]);
    if response.headers().contains_key(hyper::header::CONTENT_LENGTH) {
        response.headers_mut().insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(completed.len()));
    }
    *response.body_mut() = s3s::Body::from(bytes::Bytes::from(completed));
}

/// The S3 error for `error`, logged with the request id: its kind decides the class.
pub fn to_s3(error: anyhow::Error) -> S3Error {
    let request = request_id().unwrap_or_default();
    let cause = format!("{error:#}");
    let answer = if let Some(body) = error.downcast_ref::<BodyError>() {
        tracing::info!(%request, %cause, "request body refused");
        match body {
            BodyError::Idle(_) => S3Error::with_message(
                S3ErrorCode::RequestTimeout,
                "Your socket connection to the server was not read from or written to within the timeout period.",
            ),
            BodyError::Broken(_) | BodyError::WrongLength { .. } => S3Error::with_message(
                S3ErrorCode::IncompleteBody,
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
            ),
        }
    } else if let Some(answer) = error.downcast_ref::<IndexError>().and_then(client_fault) {
        answer
    } else if error.downcast_ref::<KeptChanging>().is_some() {
        tracing::warn!(%request, %cause, "other gateways kept changing the record");
        S3Error::with_message(S3ErrorCode::SlowDown, "Please reduce your request rate.")
    } else if error.downcast_ref::<UpstreamFailure>().is_some() && error.downcast_ref::<Missing>().is_none() {
        tracing::warn!(%request, %cause, "upstream failure");
        S3Error::with_message(S3ErrorCode::ServiceUnavailable, "Service is unable to handle request.")
    } else {
        // Ours, or data the upstream should hold and does not (a missing pack): not retryable
        // by waiting, so not a 503.
        tracing::error!(%request, %cause, "internal error");
        S3Error::with_message(S3ErrorCode::InternalError, "We encountered an internal error. Please try again.")
    };
    with_request_id(answer)
}

/// An internal error (a fault of ours) from anything displayable.
pub fn internal(error: impl std::fmt::Display) -> S3Error {
    to_s3(anyhow::anyhow!("{error}"))
}

/// An operation's error as S3 sends it: with the request's id, and with AWS's message for its
/// code where the operation gave none (aws cli prints the message; "Unknown" without one).
pub fn answered(mut error: S3Error) -> S3Error {
    if error.message().is_none() {
        if let Some(message) = aws_message(error.code()) {
            error.set_message(message);
        }
    }
    with_request_id(error)
}

/// The message AWS S3 sends with an error code.
fn aws_message(code: &S3ErrorCode) -> Option<&'static str> {
    Some(match code.as_str() {
        "AccessDenied" => "Access Denied",
        "AccessControlListNotSupported" => "The bucket does not allow ACLs",
        "BadDigest" => "The Content-MD5 you specified did not match what we received.",
        "BucketAlreadyOwnedByYou" => "Your previous request to create the named bucket succeeded and you already own it.",
        "BucketNotEmpty" => "The bucket you tried to delete is not empty",
        "EntityTooSmall" => "Your proposed upload is smaller than the minimum allowed object size.",
        "EntityTooLarge" => "Your proposed upload exceeds the maximum allowed object size.",
        "InvalidAccessKeyId" => "The AWS Access Key Id you provided does not exist in our records.",
        "InvalidArgument" => "Invalid Argument",
        "InvalidBucketName" => "The specified bucket is not valid.",
        "InvalidDigest" => "The Content-MD5 you specified is not valid.",
        "InvalidPart" => "One or more of the specified parts could not be found.  The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
        "InvalidPartOrder" => "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
        "InvalidRange" => "The requested range is not satisfiable",
        "InvalidRequest" => "Invalid Request",
        "KeyTooLongError" => "Your key is too long",
        "MalformedXML" => "The XML you provided was not well-formed or did not validate against our published schema",
        "MethodNotAllowed" => "The specified method is not allowed against this resource.",
        "NoSuchBucket" => "The specified bucket does not exist",
        "NoSuchBucketPolicy" => "The bucket policy does not exist",
        "NoSuchCORSConfiguration" => "The CORS configuration does not exist",
        "NoSuchKey" => "The specified key does not exist.",
        "NoSuchUpload" => "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        "NotImplemented" => "A header you provided implies functionality that is not implemented",
        "PreconditionFailed" => "At least one of the pre-conditions you specified did not hold",
        "SlowDown" => "Please reduce your request rate.",
        "TooManyBuckets" => "You have attempted to create more buckets than allowed",
        _ => return None,
    })
}

/// An error whose code s3s 0.14.1 does not know, with the status AWS answers it with.
pub fn custom_error(code: &'static str, status: hyper::StatusCode, message: impl Into<std::borrow::Cow<'static, str>>) -> S3Error {
    let mut error = S3Error::with_message(S3ErrorCode::Custom(code.into()), message);
    error.set_status_code(status);
    error
}

/// Sets the request id on an answer.
pub fn with_request_id(mut error: S3Error) -> S3Error {
    if let Some(id) = request_id() {
        error.set_request_id(id);
    }
    error
}

/// The S3 error of an index outcome that is the client's doing, if it is one.
fn client_fault(error: &IndexError) -> Option<S3Error> {
    Some(match error {
        IndexError::Refused(Refusal::NoSuchBucket) => S3Error::with_message(S3ErrorCode::NoSuchBucket, "The specified bucket does not exist"),
        IndexError::Refused(Refusal::NoSuchKey) => S3Error::with_message(S3ErrorCode::NoSuchKey, "The specified key does not exist."),
        IndexError::Refused(Refusal::PreconditionFailed) => {
            S3Error::with_message(S3ErrorCode::PreconditionFailed, "At least one of the pre-conditions you specified did not hold")
        }
        IndexError::Refused(Refusal::PartChanged) => S3Error::with_message(
            S3ErrorCode::InvalidPart,
            "One or more of the specified parts could not be found. The part may not have been uploaded, or the specified entity tag may not match the part's entity tag.",
        ),
        IndexError::Refused(Refusal::NoSuchUpload) => S3Error::with_message(
            S3ErrorCode::NoSuchUpload,
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> s3s::HttpResponse {
        let mut response = hyper::Response::new(s3s::Body::from(bytes::Bytes::from(body.to_owned())));
        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a status");
        response
    }

    fn body_of(response: &s3s::HttpResponse) -> String {
        String::from_utf8(response.body().bytes().expect("a body held whole").to_vec()).expect("UTF-8")
    }

    #[test]
    fn error_bodies_get_the_ids_of_their_answer() {
        let mut bare = answer(403, r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code></Error>"#);
        bare.headers_mut().insert(hyper::header::CONTENT_LENGTH, hyper::header::HeaderValue::from(85));
        identify_error_body(&mut bare, "REQ", "HOST");
        let completed = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code><RequestId>REQ</RequestId><HostId>HOST</HostId></Error>"#;
        assert_eq!(body_of(&bare), completed);
        assert_eq!(bare.headers()[hyper::header::CONTENT_LENGTH], completed.len().to_string());
        let mut identified = answer(404, "<Error><Code>NoSuchKey</Code><RequestId>REQ</RequestId></Error>");
        identify_error_body(&mut identified, "REQ", "HOST");
        assert_eq!(body_of(&identified), "<Error><Code>NoSuchKey</Code><RequestId>REQ</RequestId><HostId>HOST</HostId></Error>");
        for (status, body) in [(200, "<Error></Error>"), (404, ""), (500, "not an error's XML")] {
            let mut untouched = answer(status, body);
            identify_error_body(&mut untouched, "REQ", "HOST");
            assert_eq!(body_of(&untouched), body, "{status}");
        }
    }
}
