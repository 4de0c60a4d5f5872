//! tensorgate: an S3-compatible gateway that stores AI models deduplicated and delta-compressed.
//!
//! Read top-down: [`config`] -> [`server`] (listener and s3s wiring; [`admission`] limits
//! what a request may hold) -> [`service`] (the S3 operations; [`errors`] maps failures to S3
//! errors) -> [`catalog`] (manifests upstream, then the index) -> [`ingest`] (PUT path) /
//! [`reader`] (GET path) -> [`upstream`]. Maintenance: [`background`], [`compact`], [`fsck`],
//! [`scrub`], [`rebuild`].

pub mod admission;
pub mod auth;
pub mod background;
pub mod bucket_config;
pub mod catalog;
pub mod compact;
pub mod condemned;
pub mod config;
pub mod domains;
pub mod errors;
pub mod fsck;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod object_attributes;
pub mod reader;
pub mod rebuild;
pub mod scrub;
pub mod server;
pub mod service;
pub mod shared;
pub mod store;
pub mod sync;
pub mod upstream;
pub mod url_encoding;
