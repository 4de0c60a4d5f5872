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
        tracing::warn!(%request, %cause, "other gateways kept changing the object");
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
        IndexError::Refused(Refusal::NoSuchUpload) => S3Error::with_message(
            S3ErrorCode::NoSuchUpload,
            "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        ),
        _ => return None,
    })
}
