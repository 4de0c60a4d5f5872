//! Background work and the repairs an operator runs: the [`packer`] re-encodes objects stored as
//! uploaded, [`gc`] collects what nothing references, [`compact`] rewrites sparse packs,
//! [`rebase`] stores [`families`] of tensors against their root whatever the upload order,
//! [`condemned`] and [`sync`] keep several gateways in step (`rewrite` writes the manifests
//! again when frames move), [`usage`] keeps the usage gauges,
//! [`fsck`], [`scrub`] and [`rebuild`] check and repair.

pub mod compact;
pub mod condemned;
pub mod families;
mod follow;
pub mod fsck;
pub mod gc;
pub mod packer;
pub mod rebase;
pub mod rebuild;
pub(crate) mod rewrite;
pub mod scrub;
pub mod sync;
pub mod usage;
