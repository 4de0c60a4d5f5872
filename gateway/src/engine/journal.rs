//! The change journal of a shared upstream. Every manifest change a gateway makes (a write, a
//! delete, a recovery) appends a small entry `journal/<ms, 13 digits>-<id>` whose body names
//! the object (`tenant 0x00 bucket 0x00 key`), so that the other gateways catch up by listing
//! only the entries since their last sync (S3 lists in key order from `start-after`) instead of
//! every manifest: a sync costs in proportion to the changes, not to the objects.
//!
//! An entry may land after one with a later time (writers race; clocks differ), so each sync
//! lists again from [`JOURNAL_OVERLAP_MS`] before the newest entry it saw and skips those it handled.
//! The lease holder deletes entries older than `journal_retention_secs`. A gateway lists every
//! manifest instead when it has no cursor (its first sync), when its cursor is older than the
//! retention, and once every `shared_full_sync_secs` (which also repairs what a skewed clock
//! or a lost entry hid).

use std::collections::HashSet;

use bytes::Bytes;
use tensorgate_index::{ObjectKey, JOURNAL};

use crate::ids::{ms_of_secs, new_id, now_ms};

use crate::engine::Store;
use crate::config::JOURNAL_OVERLAP_MS;
use crate::upstream;


/// Where a gateway stands in the journal.
#[derive(Debug, Default)]
pub struct Cursor {
    /// The newest entry seen (entries timed ahead of this gateway's clock are not taken).
    newest: Option<String>,
    /// Entries handled since `JOURNAL_OVERLAP_MS` before the newest.
    handled: HashSet<String>,
    /// When (this gateway's clock) the last sync that caught up began.
    caught_up_ms: Option<i64>,
    /// When every manifest was last listed.
    last_full_ms: Option<i64>,
}

/// The entries a sync found since the last one, and the objects they name.
#[derive(Debug)]
pub struct Changes {
    entries: Vec<String>,
    pub objects: Vec<ObjectKey>,
    started_ms: i64,
}

/// Appends an entry saying that the manifest of `key` changed.
pub async fn append(store: &Store, key: &ObjectKey) -> anyhow::Result<()> {
    let entry = format!("{JOURNAL}{:013}-{}", now_ms(), new_id());
    let body = format!("{}\0{}\0{}", key.tenant, key.bucket, key.key);
    upstream::put(&*store.upstream, &entry, Bytes::from(body)).await
}

/// What changed since the last sync that caught up (each object once), or `None` when every
/// manifest must be listed instead: at the first sync, once every `shared_full_sync_secs`, and
/// when the last catch-up is so old that the entries since may be pruned. Once the objects are
/// brought in line, [`caught_up`] records it.
pub async fn changes(store: &Store, cursor: &Cursor) -> anyhow::Result<Option<Changes>> {
    let now = now_ms();
    let full_due = cursor.last_full_ms.is_none_or(|last| now.saturating_sub(last) >= ms_of_secs(store.config.shared_full_sync_secs));
    let retained_ms = ms_of_secs(store.config.journal_retention_secs) - JOURNAL_OVERLAP_MS;
    let Some(caught_up) = cursor.caught_up_ms.filter(|caught_up| now - caught_up < retained_ms) else {
        return Ok(None);
    };
    if full_due {
        return Ok(None);
    }
    let from = cursor.newest.as_deref().and_then(entry_ms).unwrap_or(caught_up) - JOURNAL_OVERLAP_MS;
    let listed = store.upstream.list_after(JOURNAL, &format!("{JOURNAL}{from:013}")).await?;
    let mut objects = Vec::new();
    let mut entries = Vec::new();
    for entry in listed {
        if cursor.handled.contains(&entry.key) {
            continue;
        }
        if let Some(tagged) = store.upstream.read_tagged(&entry.key).await? {
            match object_of(&tagged.bytes) {
                Ok(object) if !objects.contains(&object) => objects.push(object),
                Ok(_) => {}
                Err(error) => tracing::warn!(entry = %entry.key, %error, "a journal entry names no object; skipped"),
            }
        }
        entries.push(entry.key);
    }
    Ok(Some(Changes { entries, objects, started_ms: now }))
}

/// Records that the objects of `changes` were brought in line.
pub fn caught_up(cursor: &mut Cursor, changes: Changes) {
    remember(cursor, changes.entries.into_iter(), changes.started_ms);
    cursor.caught_up_ms = Some(changes.started_ms);
}

/// Records that every manifest was listed, in a sync that began at `started_ms` after listing
/// `entries_before`, the journal's entries then: later syncs tail from there.
pub fn listed_everything(cursor: &mut Cursor, entries_before: Vec<String>, started_ms: i64) {
    cursor.handled.clear();
    remember(cursor, entries_before.into_iter(), started_ms);
    cursor.caught_up_ms = Some(started_ms);
    cursor.last_full_ms = Some(started_ms);
}

/// The journal's entries now, for [`listed_everything`].
pub async fn entries(store: &Store) -> anyhow::Result<Vec<String>> {
    Ok(store.upstream.list(JOURNAL).await?.into_iter().map(|listed| listed.key).collect())
}

/// Deletes the entries older than the retention (the lease holder does). Returns how many.
pub async fn prune(store: &Store, now: i64) -> anyhow::Result<usize> {
    let retained_since = now.saturating_sub(ms_of_secs(store.config.journal_retention_secs));
    let mut pruned = 0;
    for listed in store.upstream.list_after(JOURNAL, JOURNAL).await? {
        if entry_ms(&listed.key).is_none_or(|ms| ms >= retained_since) {
            break;
        }
        store.upstream.delete(&listed.key).await?;
        pruned += 1;
    }
    Ok(pruned)
}

/// Adds `entries` to those handled. An entry timed more than the overlap ahead of `now` (a
/// writer's clock running fast) does not move the newest, which would hide the others' entries.
fn remember(cursor: &mut Cursor, entries: impl Iterator<Item = String>, now: i64) {
    for entry in entries {
        let believable = entry_ms(&entry).is_some_and(|ms| ms <= now + JOURNAL_OVERLAP_MS);
        if believable && cursor.newest.as_ref().is_none_or(|newest| entry > *newest) {
            cursor.newest = Some(entry.clone());
        }
        cursor.handled.insert(entry);
    }
    let keep_from = cursor.newest.as_deref().and_then(entry_ms).map_or(i64::MIN, |ms| ms - JOURNAL_OVERLAP_MS);
    cursor.handled.retain(|entry| entry_ms(entry).is_some_and(|ms| ms >= keep_from));
}

/// The time in an entry's key.
fn entry_ms(entry: &str) -> Option<i64> {
    entry.strip_prefix(JOURNAL)?.get(..13)?.parse().ok()
}

/// The object an entry's body names.
fn object_of(body: &[u8]) -> anyhow::Result<ObjectKey> {
    let text = std::str::from_utf8(body)?;
    let mut parts = text.splitn(3, '\0');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(tenant), Some(bucket), Some(key)) => Ok(ObjectKey::new(tenant, bucket, key)),
        _ => anyhow::bail!("a journal entry does not name an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_their_time_and_the_cursor_forgets_what_the_overlap_no_longer_covers() {
        assert_eq!(entry_ms("journal/1700000000123-abc"), Some(1_700_000_000_123));
        assert_eq!(entry_ms("journal/x"), None);
        let mut cursor = Cursor::default();
        let entries = ["journal/1700000000000-a", "journal/1700000100000-b", "journal/1800000000000-fast"];
        remember(&mut cursor, entries.into_iter().map(str::to_owned), 1_700_000_100_000);
        assert_eq!(cursor.newest.as_deref(), Some("journal/1700000100000-b"));
        assert!(!cursor.handled.contains("journal/1700000000000-a"), "older than the overlap");
        assert!(cursor.handled.contains("journal/1700000100000-b"));
        assert!(cursor.handled.contains("journal/1800000000000-fast"), "handled, but not the newest: its clock runs ahead");
    }

    #[test]
    fn an_entry_body_names_its_object() {
        let key = object_of(b"t\0b\0dir/a\0b").unwrap();
        assert_eq!((key.tenant.as_str(), key.bucket.as_str(), key.key.as_str()), ("t", "b", "dir/a\0b"));
        assert!(object_of(b"t\0b").is_err());
    }
}
