//! `tensorgate scrub`: reads every live frame upstream and decodes it, which verifies its
//! checksum (a base's is verified when the base's own frame comes), at a bounded rate so that serving goes on, and resumes where an
//! interrupted run stopped.

use std::time::{Duration, Instant};

use tensorgate_index::IndexError;

use crate::engine::Store;
use crate::engine::reader;

/// How a scrub runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScrubOptions {
    /// Upstream bytes read per second at most; unlimited when absent.
    pub bytes_per_second: Option<u64>,
    /// Start from the first chunk even if an earlier scrub was interrupted.
    pub restart: bool,
    /// Keep the cursor in the index so that an interrupted run resumes.
    pub resumable: bool,
}

/// What a scrub verified and what it found wrong.
#[derive(Debug, Default)]
pub struct ScrubReport {
    pub frames: usize,
    pub bytes: u64,
    /// The run continued an interrupted one.
    pub resumed: bool,
    pub problems: Vec<String>,
}

/// Frames verified between two saves of the cursor (it is also saved before each pause).
const CURSOR_EVERY: usize = 32;

/// Verifies the frames of every live chunk. `progress` hears (chunks done, chunks in all).
pub async fn scrub(store: &Store, options: ScrubOptions, progress: &dyn Fn(u64, u64)) -> anyhow::Result<ScrubReport> {
    let mut report = ScrubReport::default();
    let cursor = if options.restart || !options.resumable {
        None
    } else {
        // A cursor that is no chunk id is the index's fault, reported; the scrub then starts
        // from the first chunk, and its own cursor replaces that value.
        match store.index.scrub_cursor() {
            Err(error @ IndexError::MalformedValue(_)) => {
                report.problems.push(format!("{error}; scrubbed from the first chunk"));
                None
            }
            other => other?,
        }
    };
    report.resumed = cursor.is_some();
    let total = store.index.chunk_count() as u64;
    let started = Instant::now();
    for (done, entry) in store.index.chunks_after(cursor).enumerate() {
        progress(done as u64, total);
        let (hash, record) = entry?;
        if record.refs == 0 {
            continue;
        }
        if let Err(error) = reader::load_chunk(store, &hash).await {
            report.problems.push(format!("chunk in {} at {}: {error:#}", record.pack, record.offset));
        }
        report.frames += 1;
        report.bytes += u64::from(record.frame_len);
        let due = options
            .bytes_per_second
            .filter(|rate| *rate > 0)
            .map(|rate| Duration::from_secs_f64(report.bytes as f64 / rate as f64));
        let pause = due.and_then(|due| due.checked_sub(started.elapsed()));
        if options.resumable && (pause.is_some() || report.frames.is_multiple_of(CURSOR_EVERY)) {
            store.index.set_scrub_cursor(Some(hash))?;
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    progress(total, total);
    if options.resumable {
        store.index.set_scrub_cursor(None)?;
    }
    Ok(report)
}
