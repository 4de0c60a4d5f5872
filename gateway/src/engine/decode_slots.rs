//! The decode slots of GETs: how many chunks are read and decoded for answers at once, all
//! answers together. An answer's first piece is decoded before the answer starts (see
//! `s3::objects`), so while it waits the client sees no byte; it goes ahead of the pieces other
//! answers read ahead, which their clients do not wait for yet. Within each class, first come,
//! first served.
//!
//! Written here rather than taken from tokio: its semaphore serves waiters in one queue, and
//! two semaphores cannot share one count of slots.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

/// Which queue a decode waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// The piece an answer starts with: its client waits for the first byte.
    First,
    /// A piece fetched ahead of what the client has taken, or a read of the gateway's own.
    Ahead,
}

/// A count of slots shared by two queues of waiters, the first always served before the other.
#[derive(Clone)]
pub struct DecodeSlots {
    state: Arc<Mutex<State>>,
}

struct State {
    free: u32,
    first: VecDeque<Waiter>,
    ahead: VecDeque<Waiter>,
}

struct Waiter {
    slots: u32,
    granted: oneshot::Sender<SlotsHeld>,
}

/// Slots taken; they are given back (to the next waiters) when this is dropped.
pub struct SlotsHeld {
    slots: u32,
    state: Arc<Mutex<State>>,
}

impl DecodeSlots {
    pub fn new(slots: u32) -> DecodeSlots {
        DecodeSlots { state: Arc::new(Mutex::new(State { free: slots, first: VecDeque::new(), ahead: VecDeque::new() })) }
    }

    /// Takes `slots` once they are free and nobody of the same or a more urgent class waits
    /// before this caller. `slots` must not exceed the total (it would wait forever).
    pub async fn acquire(&self, slots: u32, urgency: Urgency) -> SlotsHeld {
        let receiver = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let queued_before = !state.first.is_empty() || (urgency == Urgency::Ahead && !state.ahead.is_empty());
            if !queued_before && state.free >= slots {
                state.free -= slots;
                return SlotsHeld { slots, state: self.state.clone() };
            }
            let (granted, receiver) = oneshot::channel();
            let waiter = Waiter { slots, granted };
            match urgency {
                Urgency::First => state.first.push_back(waiter),
                Urgency::Ahead => state.ahead.push_back(waiter),
            }
            receiver
        };
        match receiver.await {
            Ok(held) => held,
            // The sender is only dropped once it has sent a grant, so this does not happen; were
            // it to, the decode goes on without a slot rather than waiting forever.
            Err(_) => SlotsHeld { slots: 0, state: self.state.clone() },
        }
    }

    #[cfg(test)]
    fn available(&self) -> u32 {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).free
    }
}

impl Drop for SlotsHeld {
    fn drop(&mut self) {
        let state = self.state.clone();
        let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
        guard.free += self.slots;
        grant_waiting(&mut guard, &self.state);
    }
}

/// Hands free slots to the waiters at the heads of the queues, the first queue before the other;
/// a waiter that went away gives its grant straight back.
fn grant_waiting(state: &mut State, shared: &Arc<Mutex<State>>) {
    loop {
        let queue = if state.first.is_empty() { &mut state.ahead } else { &mut state.first };
        let Some(head) = queue.front() else { return };
        if head.slots > state.free {
            return;
        }
        let Some(waiter) = queue.pop_front() else { return };
        state.free -= waiter.slots;
        let held = SlotsHeld { slots: waiter.slots, state: shared.clone() };
        if let Err(unwanted) = waiter.granted.send(held) {
            // Dropping it here would lock the state again: give its slots back in place.
            state.free += unwanted.slots;
            std::mem::forget(unwanted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_pieces_go_ahead_of_read_ahead_and_slots_come_back() {
        let slots = DecodeSlots::new(2);
        let held = slots.acquire(2, Urgency::Ahead).await;
        let ahead = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(2, Urgency::Ahead).await }
        });
        tokio::task::yield_now().await;
        let first = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(1, Urgency::First).await }
        });
        tokio::task::yield_now().await;
        drop(held);
        let first = first.await.unwrap();
        assert_eq!(slots.available(), 1, "the first piece was served before the earlier read-ahead");
        assert!(!ahead.is_finished(), "the read-ahead waits for both slots");
        drop(first);
        let ahead = ahead.await.unwrap();
        assert_eq!(slots.available(), 0);
        drop(ahead);
        assert_eq!(slots.available(), 2);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_loses_no_slot() {
        let slots = DecodeSlots::new(1);
        let held = slots.acquire(1, Urgency::First).await;
        let gone = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire(1, Urgency::Ahead).await }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(slots.available(), 1);
        drop(slots.acquire(1, Urgency::Ahead).await);
        assert_eq!(slots.available(), 1);
    }
}
