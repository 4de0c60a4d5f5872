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

/// Uploads whose later parts gave up waiting that are remembered at most; past it, the memory
/// starts again (a later part then waits once more).
const MISSED_KEPT: usize = 1024;

/// Bytes of sniffed part-1 headers kept at most (a header may be `max_header_bytes`, and a
/// client may start uploads it never ends); past it, the memory starts again, and later parts
/// wait for part 1's record instead. An entry goes once part 1 is recorded.
const SNIFFED_BYTES: usize = 64 << 20;

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
    sniffed: Mutex<Sniffed>,
    missed: Mutex<HashSet<String>>,
}

/// Part 1 of uploads whose part 1 is not recorded yet, and the bytes of their headers.
#[derive(Default)]
struct Sniffed {
    by_upload: HashMap<String, FirstPart>,
    header_bytes: usize,
}

impl Sniffed {
    fn remove(&mut self, upload_id: &str) {
        if let Some(FirstPart::Model { header, .. }) = self.by_upload.remove(upload_id) {
            self.header_bytes -= header.len();
        }
    }
}

/// Locks a memory; one poisoned by a panic elsewhere still holds whole entries.
fn locked<T>(memory: &Mutex<T>) -> MutexGuard<'_, T> {
    memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FirstParts {
    /// Part 1 of `upload_id` was sniffed: the later parts waiting for it go on.
    pub fn sniffed(&self, upload_id: &str, first: FirstPart) {
        let mut sniffed = locked(&self.sniffed);
        sniffed.remove(upload_id);
        let bytes = match &first {
            FirstPart::Model { header, .. } => header.len(),
            FirstPart::Other => 0,
        };
        if sniffed.header_bytes + bytes > SNIFFED_BYTES {
            *sniffed = Sniffed::default();
        }
        if bytes <= SNIFFED_BYTES {
            sniffed.header_bytes += bytes;
            sniffed.by_upload.insert(upload_id.to_owned(), first);
        }
        drop(sniffed);
        self.changed.notify_waiters();
    }

    /// Part `number` of `upload_id` was recorded: the later parts waiting for a part 1 look
    /// again (at the index, for part 1, which the sniffed memory then no longer keeps).
    pub fn part_recorded(&self, upload_id: &str, number: u32) {
        if number == 1 {
            locked(&self.sniffed).remove(upload_id);
        }
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
            if let Some(first) = locked(&self.sniffed).by_upload.get(upload_id) {
                return Ok(Some(first.clone()));
            }
            let missed = locked(&self.missed).contains(upload_id);
            if missed || tokio::time::timeout_at(deadline, changed).await.is_err() {
                let mut missed = locked(&self.missed);
                if missed.len() >= MISSED_KEPT {
                    missed.clear();
                }
                missed.insert(upload_id.to_owned());
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(header_len: usize) -> FirstPart {
        FirstPart::Model { header: Arc::new(vec![0; header_len]), size: 8 << 20 }
    }

    #[test]
    fn sniffed_headers_are_kept_within_their_bound_and_until_part_1_is_recorded() {
        let parts = FirstParts::default();
        parts.sniffed("a", model(40 << 20));
        parts.sniffed("b", FirstPart::Other);
        assert_eq!(locked(&parts.sniffed).header_bytes, 40 << 20);
        parts.sniffed("c", model(30 << 20));
        let sniffed = locked(&parts.sniffed);
        assert_eq!((sniffed.by_upload.len(), sniffed.header_bytes), (1, 30 << 20), "past the bound the memory starts again");
        drop(sniffed);
        parts.sniffed("c", model(10 << 20));
        assert_eq!(locked(&parts.sniffed).header_bytes, 10 << 20, "part 1 sniffed again replaces the first");
        parts.part_recorded("c", 2);
        assert!(locked(&parts.sniffed).by_upload.contains_key("c"));
        parts.part_recorded("c", 1);
        let sniffed = locked(&parts.sniffed);
        assert_eq!((sniffed.by_upload.len(), sniffed.header_bytes), (0, 0), "part 1 is read from the index once recorded");
    }
}
