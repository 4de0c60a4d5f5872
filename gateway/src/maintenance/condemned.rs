//! Deleting a pack with a shared upstream. No manifest naming a pack does not mean that no
//! gateway reads it: two gateways storing one new chunk at once each keep their own copy in
//! their index, and the manifests may all name the other. So the collector announces a pack
//! before deleting it (a marker under `condemned/`, holding the time it was written); each
//! gateway's sync, first of all it does, points its index at the frames compaction or
//! re-basing put elsewhere (`follow`), then vetoes the condemned packs its index still stores
//! chunks in (a marker under `in-use/<pack>/<gateway>`, withdrawn when its index no longer
//! uses the pack), and then acknowledges every condemnation it handled in its heartbeat
//! (`gateways/<gateway>`). The collector deletes a pack only once its announcement is a grace
//! period old, acknowledged by every gateway seen within `gateway_expiry_secs`, and unvetoed;
//! a vetoed pack stays in the trash, announced afresh once no veto stands. A gateway that was
//! down waits for nothing: the collector waits for it.

use bytes::Bytes;
use std::collections::HashSet;

use tensorgate_index::{condemned_key, condemned_pack, heartbeat_key, moves_key, rebased_key, veto_key, vetoed_pack, vetoes_folder, CONDEMNED, GATEWAYS, VETOES};

use crate::ids::{ms_of_secs, now_ms};

use crate::engine::Store;
use crate::maintenance::follow::follow_records;
use crate::upstream;

/// What the collector may do with a pack in its trash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Announced less than a grace period ago (or just now): keep it in the trash.
    Wait,
    /// A gateway still reads it: its announcement is withdrawn; it stays in the trash.
    Vetoed,
    /// Announced long enough ago and unvetoed: delete it, then [`forget`] the announcement.
    Delete,
}

/// Judges a pack of the collector's trash at time `now`, announcing it if it was not yet.
pub async fn verdict(store: &Store, pack: &str, now: i64) -> anyhow::Result<Verdict> {
    let (Some(marker), Some(vetoes)) = (condemned_key(pack), vetoes_folder(pack)) else {
        anyhow::bail!("{pack} is not a pack key");
    };
    let announced = store.upstream.read_tagged(&marker).await?;
    let since = announced.as_ref().and_then(|tagged| std::str::from_utf8(&tagged.bytes).ok()?.parse::<i64>().ok());
    let (Some(announced), Some(since)) = (announced, since) else {
        // Not announced yet (or unreadably): announced now, and the wait starts.
        upstream::put(&*store.upstream, &marker, Bytes::from(now_ms().to_string())).await?;
        return Ok(Verdict::Wait);
    };
    if now.saturating_sub(since) < ms_of_secs(store.config.gc_grace_secs) {
        return Ok(Verdict::Wait);
    }
    // Heartbeats before vetoes: a gateway writes its veto before the heartbeat acknowledging
    // the announcement, so a veto is seen whenever its acknowledgement was.
    let acknowledgement = format!("{marker} {}", announced.tag);
    let expired = now.saturating_sub(ms_of_secs(store.config.gateway_expiry_secs));
    for listed in store.upstream.list(GATEWAYS).await? {
        if listed.key == heartbeat_key(&store.instance) || listed.modified_ms < expired {
            continue;
        }
        let acknowledged = match store.upstream.read_tagged(&listed.key).await? {
            Some(heartbeat) => String::from_utf8_lossy(&heartbeat.bytes).lines().any(|line| line == acknowledgement),
            None => true,
        };
        if !acknowledged {
            return Ok(Verdict::Wait);
        }
    }
    if !store.upstream.list(&vetoes).await?.is_empty() {
        store.upstream.delete(&marker).await?;
        return Ok(Verdict::Vetoed);
    }
    Ok(Verdict::Delete)
}

/// Removes the announcement of a pack spared (still referenced): a later deletion is announced
/// and acknowledged afresh. The records of where its frames went stay: they hold while the
/// pack exists, and let the gateways still reading it follow them later.
pub async fn withdraw(store: &Store, pack: &str) -> anyhow::Result<()> {
    if let Some(marker) = condemned_key(pack) {
        store.upstream.delete(&marker).await?;
    }
    Ok(())
}

/// Removes a pack's announcement (and the records of where its frames went, if compaction or
/// re-basing made them) once the pack is deleted.
pub async fn forget(store: &Store, pack: &str) -> anyhow::Result<()> {
    for marker in [condemned_key(pack), moves_key(pack), rebased_key(pack)].into_iter().flatten() {
        store.upstream.delete(&marker).await?;
    }
    Ok(())
}

/// What one [`veto`] pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VetoReport {
    pub vetoed: usize,
    pub withdrawn: usize,
    /// Chunks pointed at the frames compaction or re-basing put elsewhere.
    pub followed: usize,
}

/// Handles every condemned pack: follows its frames' moves, vetoes the deletion of those
/// this gateway's index still stores chunks in, withdraws its vetoes of packs it no longer
/// uses, then acknowledges the condemnations it handled in its heartbeat.
pub async fn veto(store: &Store) -> anyhow::Result<VetoReport> {
    // Condemnations announced after this are not acknowledged by this heartbeat.
    let started = now_ms();
    let mut report = VetoReport::default();
    let mut acknowledged = String::new();
    for prefix in store.config.upstream_prefixes() {
        let mut condemned = Vec::new();
        for listed in store.upstream.list(&format!("{prefix}{CONDEMNED}")).await? {
            if let Some(pack) = condemned_pack(&listed.key) {
                condemned.push((listed.key, pack));
            }
        }
        let packs: HashSet<String> = condemned.iter().map(|(_, pack)| pack.clone()).collect();
        // Frames are followed before any pack is vetoed: whatever this moves into a condemned
        // pack (none, see `follow`) would be vetoed below. A record that cannot be followed
        // leaves the chunks where they were: their packs stay vetoed, and the heartbeat still
        // goes out.
        match follow_records(store, &prefix, &packs).await {
            Ok(followed) => report.followed += followed,
            Err(error) => tracing::warn!(%prefix, error = format!("{error:#}"), "moved frames not followed; their packs stay vetoed"),
        }
        for (marker, pack) in &condemned {
            let Some(veto) = veto_key(pack, &store.instance) else { continue };
            if store.index.pack_in_use(pack)? && store.upstream.read_tagged(&veto).await?.is_none() {
                upstream::put(&*store.upstream, &veto, Bytes::from_static(b"")).await?;
                report.vetoed += 1;
            }
            // The tag a read gives (a listing's may be written differently), as the collector reads it.
            if let Some(announced) = store.upstream.read_tagged(marker).await? {
                acknowledged.push_str(&format!("{marker} {}\n", announced.tag));
            }
        }
        for listed in store.upstream.list(&format!("{prefix}{VETOES}")).await? {
            let Some((pack, instance)) = vetoed_pack(&listed.key) else { continue };
            if instance == store.instance && !store.index.pack_in_use(&pack)? {
                store.upstream.delete(&listed.key).await?;
                report.withdrawn += 1;
            }
        }
    }
    upstream::put(&*store.upstream, &heartbeat_key(&store.instance), Bytes::from(acknowledged)).await?;
    store.caught_up_ms.fetch_max(started, std::sync::atomic::Ordering::Relaxed);
    Ok(report)
}

/// With a shared upstream, refuses to serve from an index that missed condemnations: one whose
/// gateway has not caught up for longer than `gateway_expiry_secs`, since the collector no
/// longer waits for it and may have deleted packs the index reads. Otherwise sets when it last
/// caught up, from its heartbeat.
pub async fn check_not_expired(store: &Store, now: i64) -> anyhow::Result<()> {
    let heartbeat = heartbeat_key(&store.instance);
    let Some(listed) = store.upstream.list(&heartbeat).await?.into_iter().find(|listed| listed.key == heartbeat) else {
        return Ok(());
    };
    let silent_ms = now.saturating_sub(listed.modified_ms);
    let silent_secs = silent_ms as f64 / 1000.0;
    anyhow::ensure!(
        silent_ms <= ms_of_secs(store.config.gateway_expiry_secs),
        "this gateway last caught up with the shared upstream {silent_secs:.1} s ago, more than gateway_expiry_secs ({}): packs its index reads may be gone; run `tensorgate index rebuild` first",
        store.config.gateway_expiry_secs
    );
    // Commits wait for a sync when this heartbeat is already half expired (`Store::check_in_step`).
    store.caught_up_ms.store(listed.modified_ms.min(now), std::sync::atomic::Ordering::Relaxed);
    Ok(())
}
