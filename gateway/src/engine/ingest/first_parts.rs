//! Where the later parts of a multipart upload learn what its part 1 holds: as soon as part 1's
//! first bytes are sniffed (its header and announced size, or that it is no model), or from
//! part 1's record in the index (a client that sends parts one after the other, a restart).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tensorgate_codec::ContentHash;
use tensorgate_index::{PartRecord, Segment};
use tokio::sync::Notify;

use crate::engine::Store;

/// How long a later part that arrives before part 1 has been sniffed waits for it (clients send
/// their first parts together, part 1 first). Past it, the part is stored as it came, and so
/// are the upload's later parts that find part 1 still unknown.
const FIRST_PART_WAIT: Duration = Duration::from_secs(10);

/// Uploads remembered at most, in each of the two memories; past it, a memory starts again
/// (a later part then reads part 1's record, or waits once more).
const REMEMBERED: usize = 1024;

/// What part 1 of an upload holds, as its later parts need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstPart {
    /// A model whose header part 1 holds whole, and part 1's size.
    Model { header: Arc<Vec<u8>>, size: u64 },
    /// Anything else: the later parts are stored as they came.
    Other,
}

impl FirstPart {
    /// What a recorded part 1 holds: a model if it was encoded with its header inline.
    pub fn of_record(part: &PartRecord) -> FirstPart {
        match part.encoded.as_ref().and_then(|encoded| encoded.segments.first()) {
            Some(Segment::Inline(header)) => FirstPart::Model { header: Arc::new(header.clone()), size: part.size },
            _ => FirstPart::Other,
        }
    }

    /// The id of the layout later parts are cut by: the BLAKE3 of part 1's size (u64
    /// little-endian) and header, in hex.
    pub fn layout_id(&self) -> Option<String> {
        let FirstPart::Model { header, size } = self else { return None };
        let mut identified = size.to_le_bytes().to_vec();
        identified.extend_from_slice(header);
        Some(ContentHash::of(&identified).to_hex())
    }
}

/// Part 1 of each upload in progress, as sniffed, and the later parts waiting for it.
#[derive(Default)]
pub struct FirstParts {
    changed: Notify,
    sniffed: Mutex<HashMap<String, FirstPart>>,
    missed: Mutex<HashSet<String>>,
}

/// Locks a memory; one poisoned by a panic elsewhere still holds whole entries.
fn locked<T>(memory: &Mutex<T>) -> MutexGuard<'_, T> {
    memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FirstParts {
    /// Part 1 of `upload_id` was sniffed: the later parts waiting for it go on.
    pub fn sniffed(&self, upload_id: &str, first: FirstPart) {
        let mut sniffed = locked(&self.sniffed);
        if sniffed.len() >= REMEMBERED {
            sniffed.clear();
        }
        sniffed.insert(upload_id.to_owned(), first);
        drop(sniffed);
        self.changed.notify_waiters();
    }

    /// A part was recorded: the later parts waiting for a part 1 look again.
    pub fn part_recorded(&self) {
        self.changed.notify_waiters();
    }

    /// The upload has ended: nothing more waits for its part 1.
    pub fn forget(&self, upload_id: &str) {
        locked(&self.sniffed).remove(upload_id);
        locked(&self.missed).remove(upload_id);
    }

    /// What part 1 of `upload_id` holds: its record (the part 1 a completion would take) or,
    /// before it is recorded, what it was sniffed to hold; `None` if neither comes within
    /// [`FIRST_PART_WAIT`], or came for an earlier part of the upload.
    pub async fn wait(&self, store: &Store, upload_id: &str) -> anyhow::Result<Option<FirstPart>> {
        let deadline = tokio::time::Instant::now() + FIRST_PART_WAIT;
        loop {
            // Made before the looks, so that a change in between still wakes it.
            let changed = self.changed.notified();
            if let Some(first) = store.index.part(upload_id, 1)? {
                return Ok(Some(FirstPart::of_record(&first)));
            }
            if let Some(first) = locked(&self.sniffed).get(upload_id) {
                return Ok(Some(first.clone()));
            }
            let missed = locked(&self.missed).contains(upload_id);
            if missed || tokio::time::timeout_at(deadline, changed).await.is_err() {
                let mut missed = locked(&self.missed);
                if missed.len() >= REMEMBERED {
                    missed.clear();
                }
                missed.insert(upload_id.to_owned());
                return Ok(None);
            }
        }
    }
}
