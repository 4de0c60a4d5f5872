//! `tensorgate stats`: logical and physical bytes per tenant and bucket, where the bytes went
//! by technique, and with `--families` the families of tensors and how each is stored.

use tensorgate::config::Config;
use tensorgate::maintenance::families::{tensor_families, FamilyStats};
use tensorgate::server;
use tensorgate_index::{Savings, Usage};

pub fn run(config: &Config, tenant: Option<&str>, bucket: Option<&str>, json: bool, families: bool) -> anyhow::Result<()> {
    let store = server::open_store(config)?;
    let families: Vec<FamilyStats> = if families { tensor_families(&store)?.iter().map(|family| family.stats()).collect() } else { Vec::new() };
    let selected = |row_tenant: &str, row_bucket: &str| tenant.is_none_or(|t| t == row_tenant) && bucket.is_none_or(|b| b == row_bucket);
    let rows: Vec<_> = store.index.usage()?.into_iter().filter(|row| selected(&row.tenant, &row.bucket)).collect();
    let savings = store.index.savings(|key| selected(&key.tenant, &key.bucket))?;
    let (rebased_chunks, rebase_saved) = store.index.rebase_totals()?;
    if json {
        let rebasing = serde_json::json!({ "chunks": rebased_chunks, "frame_bytes_saved": rebase_saved });
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "buckets": rows, "savings": savings, "families": families, "rebasing": rebasing }))?);
    } else {
        print_stats(&rows, &savings);
        println!("re-basing has stored {rebased_chunks} chunks again, saving {rebase_saved} frame bytes (in every tenant)");
        if !families.is_empty() {
            print_families(&families);
        }
    }
    Ok(())
}

/// The stats tables: usage per tenant and bucket, then where the bytes went.
fn print_stats(rows: &[Usage], savings: &Savings) {
    let percent = |part: f64| 100.0 * part / savings.logical_bytes.max(1) as f64;
    println!("{:<16} {:<24} {:>8} {:>16} {:>16} {:>8}", "tenant", "bucket", "objects", "logical bytes", "physical bytes", "saved");
    for row in rows {
        let saved = 100.0 * (1.0 - row.physical_bytes as f64 / row.logical_bytes.max(1) as f64);
        println!(
            "{:<16} {:<24} {:>8} {:>16} {:>16} {:>7.1}%",
            row.tenant, row.bucket, row.objects, row.logical_bytes, row.physical_bytes, saved
        );
    }
    println!();
    println!("{:<36} {:>16} {:>9}", "where the logical bytes went", "bytes", "share");
    let lines: [(&str, f64); 7] = [
        ("stored upstream (physical)", savings.physical_bytes as f64),
        ("saved by file dedup", savings.file_dedup as f64),
        ("saved by chunk dedup", savings.chunk_dedup as f64),
        ("saved by deltas against a base", savings.delta as f64),
        ("saved by compression on its own", savings.compression as f64),
        ("headers kept in the manifests", savings.headers as f64),
        ("of which stored as they came", savings.stored_as_is as f64),
    ];
    for (what, bytes) in lines {
        println!("{what:<36} {bytes:>16.0} {:>8.1}%", percent(bytes));
    }
}

/// One line per family: where it is, its members, and how its chunks are stored.
fn print_families(families: &[FamilyStats]) {
    println!();
    println!(
        "{:<12} {:<14} {:<28} {:>7} {:>14} {:>14} {:>7} {:>10} {:>8} {:>8}",
        "scope", "shape", "members (root first)", "chunks", "raw bytes", "stored bytes", "stored", "standalone", "vs root", "vs other"
    );
    for family in families {
        let stored = 100.0 * family.stored_bytes as f64 / family.raw_bytes.max(1) as f64;
        println!(
            "{:<12} {:<14} {:<28} {:>7} {:>14} {:>14} {:>6.1}% {:>10} {:>8} {:>8}",
            family.scope,
            family.shape,
            family.dtypes.join(" "),
            family.chunks,
            family.raw_bytes,
            family.stored_bytes,
            stored,
            family.standalone,
            family.against_root,
            family.against_other
        );
    }
}
