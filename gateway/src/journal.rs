//! The change journal of a shared upstream. Every manifest change a gateway makes (a write, a
//! delete, a recovery) appends a small entry `journal/<ms, 13 digits>-<id>` whose body names
//! the object (`tenant 0x00 bucket 0x00 key`), so that the other gateways catch up by listing
//! only the entries since their last sync (S3 lists in key order from `start-after`) instead of
//! every manifest: a sync costs in proportion to the changes, not to the objects.
//!
//! An entry may land after one with a later time (writers race; clocks differ), so each sync
//! lists again from [`OVERLAP_MS`] before the newest entry it saw and skips those it handled.
//! The lease holder deletes entries older than `journal_retention_secs`. A gateway lists every
//! manifest instead when it has no cursor (its first sync), when its cursor is older than the
//! retention, and once every `shared_full_sync_secs` (which also repairs what a skewed clock
//! or a lost entry hid).

use std::collections::HashSet;

use bytes::Bytes;
use tensorgate_index::{ObjectKey, JOURNAL};

use crate::store::{new_id, now_ms, Store};
use crate::upstream;

/// How far back before its newest entry a sync lists again.
pub const OVERLAP_MS: i64 = 60_000;

/// Where a gateway stands in the journal.
#[derive(Debug, Default)]
pub struct Cursor {
    /// The newest entry seen.
    newest: Option<String>,
    /// Entries handled since `OVERLAP_MS` before the newest.
    handled: HashSet<String>,
    /// When every manifest was last listed.
    last_full_ms: Option<i64>,
}

/// Appends an entry saying that the manifest of `key` changed.
pub async fn append(store: &Store, key: &ObjectKey) -> anyhow::Result<()> {
    let entry = format!("{JOURNAL}{:013}-{}", now_ms(), new_id());
    let body = format!("{}\0{}\0{}", key.tenant, key.bucket, key.key);
    upstream::put(&*store.upstream, &entry, Bytes::from(body)).await
}

/// What changed since the last call: the objects the new entries name, or `None` when every
/// manifest must be listed instead (the caller then calls [`listed_everything`]).
pub async fn changes(store: &Store, cursor: &mut Cursor) -> anyhow::Result<Option<Vec<ObjectKey>>> {
    let now = now_ms();
    let full_due = cursor.last_full_ms.is_none_or(|last| now - last >= (store.config.shared_full_sync_secs as i64) * 1000);
    let retained_since = now - (store.config.journal_retention_secs as i64) * 1000;
    let Some(newest) = cursor.newest.as_deref().filter(|newest| entry_ms(newest).is_some_and(|ms| ms > retained_since + OVERLAP_MS)) else {
        return Ok(None);
    };
    if full_due {
        return Ok(None);
    }
    let from = entry_ms(newest).unwrap_or(now) - OVERLAP_MS;
    let listed = store.upstream.list_after(JOURNAL, &format!("{JOURNAL}{from:013}")).await?;
    let mut changed = Vec::new();
    for entry in &listed {
        if cursor.handled.contains(&entry.key) {
            continue;
        }
        if let Some(tagged) = store.upstream.read_tagged(&entry.key).await? {
            changed.push(object_of(&tagged.bytes)?);
        }
    }
    remember(cursor, listed.into_iter().map(|listed| listed.key));
    Ok(Some(changed))
}

/// Marks the journal as caught up by a listing of every manifest that began after `started_at`
/// (the entries listed then): later syncs tail from there.
pub fn listed_everything(cursor: &mut Cursor, entries_before: Vec<String>, started_ms: i64) {
    cursor.handled.clear();
    remember(cursor, entries_before.into_iter());
    cursor.last_full_ms = Some(started_ms);
}

/// The journal's entries now, for [`listed_everything`].
pub async fn entries(store: &Store) -> anyhow::Result<Vec<String>> {
    Ok(store.upstream.list(JOURNAL).await?.into_iter().map(|listed| listed.key).collect())
}

/// Deletes the entries older than the retention (the lease holder does). Returns how many.
pub async fn prune(store: &Store, now: i64) -> anyhow::Result<usize> {
    let retained_since = now - (store.config.journal_retention_secs as i64) * 1000;
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

fn remember(cursor: &mut Cursor, entries: impl Iterator<Item = String>) {
    for entry in entries {
        if cursor.newest.as_ref().is_none_or(|newest| entry > *newest) {
            cursor.newest = Some(entry.clone());
        }
        cursor.handled.insert(entry);
    }
    let keep_from = cursor.newest.as_deref().and_then(entry_ms).map_or(i64::MIN, |ms| ms - OVERLAP_MS);
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
        remember(&mut cursor, ["journal/1700000000000-a".to_owned(), "journal/1700000100000-b".to_owned()].into_iter());
        assert_eq!(cursor.newest.as_deref(), Some("journal/1700000100000-b"));
        assert!(!cursor.handled.contains("journal/1700000000000-a"), "older than the overlap");
        assert!(cursor.handled.contains("journal/1700000100000-b"));
    }

    #[test]
    fn an_entry_body_names_its_object() {
        let key = object_of(b"t\0b\0dir/a\0b").unwrap();
        assert_eq!((key.tenant.as_str(), key.bucket.as_str(), key.key.as_str()), ("t", "b", "dir/a\0b"));
        assert!(object_of(b"t\0b").is_err());
    }
}
