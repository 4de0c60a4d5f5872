//! tensorgate: an S3-compatible gateway that stores AI models deduplicated and delta-compressed.
//!
//! Read top-down: [`config`] -> [`server`] (listener and s3s wiring; `engine::admission` limits
//! what a request may hold) -> [`s3`] (the S3 operations; `s3::errors` maps failures to S3 errors) ->
//! [`engine`] (ingest on PUT, reader on GET, the catalog of manifests upstream and the index) ->
//! [`upstream`]. [`maintenance`] holds background work and repairs; `main.rs` and [`cli`] the
//! commands. No module imports one above it in this list; [`buffers`] and [`ids`] sit below
//! them all.

pub mod buffers;
pub mod config;
pub mod engine;
pub mod ids;
pub mod maintenance;
pub mod metrics;
pub mod s3;
pub mod server;
pub mod upstream;
