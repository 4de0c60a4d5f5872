//! The decode slots of GETs: how many chunks are read and decoded for answers at once, all
//! answers together. An answer's first piece is decoded before the answer starts (see
//! `s3::objects`), so while it waits the client sees no byte; it goes ahead of the pieces
//! answers read ahead, which their clients do not wait for yet, and of the gateway's own reads
//! (the packer, copies). Ahead of them, not instead of them: a waiter of the other queue that
//! has waited [`LONGEST_WAIT_BEHIND`] goes first, so that a stream of new answers cannot
//! starve a copy whose client waits for all of it. Within each queue, first come, first
//! served. (Giving the other queue every fourth grant instead brought the first pieces' wait
//! back to what it was with one queue: docs/benchmarks.md, stop 24.)
//!
//! Written here rather than taken from tokio: its semaphore serves waiters in one queue, and
//! two semaphores cannot share one count of slots.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tokio::time::{Duration, Instant};

/// How long a waiter of the other queue lets first pieces go before it.
const LONGEST_WAIT_BEHIND: Duration = Duration::from_secs(1);

/// Which queue a decode waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// The piece an answer starts with: its client waits for the first byte.
    First,
    /// A piece fetched ahead of what the client has taken, or a read of the gateway's own.
    Ahead,
}

/// A count of slots shared by two queues of waiters (see the module's doc for whose turn it is).
#[derive(Clone)]
pub struct DecodeSlots {
    state: Arc<Mutex<State>>,
}

struct State {
    free: u32,
    /// All the slots: no one waits for more.
    total: u32,
    first: VecDeque<Waiter>,
    ahead: VecDeque<Waiter>,
}

impl State {
    /// Whether the head of the other queue has waited long enough to go before first pieces.
    fn ahead_overdue(&self) -> bool {
        self.ahead.front().is_some_and(|waiter| waiter.since.elapsed() >= LONGEST_WAIT_BEHIND)
    }
}

struct Waiter {
    slots: u32,
    since: Instant,
    granted: oneshot::Sender<SlotsHeld>,
}

/// Slots taken; they are given back (to the next waiters) when this is dropped.
pub struct SlotsHeld {
    slots: u32,
    state: Arc<Mutex<State>>,
}

impl DecodeSlots {
    pub fn new(slots: u32) -> DecodeSlots {
        let state = State { free: slots, total: slots, first: VecDeque::new(), ahead: VecDeque::new() };
        DecodeSlots { state: Arc::new(Mutex::new(state)) }
    }

    /// Takes `slots` (at most all of them) once they are free and it is this caller's turn.
    pub async fn acquire(&self, slots: u32, urgency: Urgency) -> SlotsHeld {
        let receiver = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let slots = slots.min(state.total);
            // Nobody may be passed who waits before this caller's turn: first pieces, an
            // overdue waiter of the other queue, and for the other queue anyone in it.
            let queued_before = !state.first.is_empty() || state.ahead_overdue() || (urgency == Urgency::Ahead && !state.ahead.is_empty());
            if !queued_before && state.free >= slots {
                state.free -= slots;
                return SlotsHeld { slots, state: self.state.clone() };
            }
            let (granted, receiver) = oneshot::channel();
            let waiter = Waiter { slots, since: Instant::now(), granted };
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
        let unwanted = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.free += self.slots;
            grant_waiting(&mut state, &self.state)
        };
        // Grants whose waiter went away give their slots back, outside the lock.
        drop(unwanted);
    }
}

/// Hands free slots to the waiters at the heads of the queues in turn (see the module's doc);
/// returns the grants whose waiter went away.
fn grant_waiting(state: &mut State, shared: &Arc<Mutex<State>>) -> Vec<SlotsHeld> {
    let mut unwanted = Vec::new();
    loop {
        for queue in [&mut state.first, &mut state.ahead] {
            // Waiters that went away are not waited for.
            while queue.front().is_some_and(|waiter| waiter.granted.is_closed()) {
                queue.pop_front();
            }
        }
        let ahead_turn = state.first.is_empty() || state.ahead_overdue();
        let queue = if ahead_turn { &mut state.ahead } else { &mut state.first };
        let Some(head) = queue.front() else { return unwanted };
        if head.slots > state.free {
            return unwanted;
        }
        let Some(waiter) = queue.pop_front() else { return unwanted };
        state.free -= waiter.slots;
        let held = SlotsHeld { slots: waiter.slots, state: shared.clone() };
        if let Err(held) = waiter.granted.send(held) {
            unwanted.push(held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that takes `count` slots and returns them held.
    fn spawn_acquire(slots: &DecodeSlots, count: u32, urgency: Urgency) -> tokio::task::JoinHandle<SlotsHeld> {
        let slots = slots.clone();
        tokio::spawn(async move { slots.acquire(count, urgency).await })
    }

    #[tokio::test(start_paused = true)]
    async fn first_pieces_go_ahead_of_read_ahead_and_slots_come_back() {
        let slots = DecodeSlots::new(2);
        let held = slots.acquire(2, Urgency::Ahead).await;
        let ahead = spawn_acquire(&slots, 2, Urgency::Ahead);
        tokio::task::yield_now().await;
        let first = spawn_acquire(&slots, 1, Urgency::First);
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

    #[tokio::test(start_paused = true)]
    async fn read_ahead_that_waited_long_goes_before_first_pieces() {
        let slots = DecodeSlots::new(1);
        let order = Arc::new(Mutex::new(String::new()));
        let held = slots.acquire(1, Urgency::First).await;
        let waiter = |urgency: Urgency, mark: char| {
            let (slots, order) = (slots.clone(), order.clone());
            tokio::spawn(async move {
                let _held = slots.acquire(1, urgency).await;
                order.lock().unwrap().push(mark);
            })
        };
        let early = [waiter(Urgency::Ahead, 'a'), waiter(Urgency::First, 'f')];
        tokio::task::yield_now().await;
        tokio::time::advance(LONGEST_WAIT_BEHIND / 2).await;
        drop(held);
        for waiter in early {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), "fa", "a first piece goes ahead of a read-ahead that waited briefly");
        let held = slots.acquire(1, Urgency::First).await;
        let overdue = waiter(Urgency::Ahead, 'A');
        tokio::task::yield_now().await;
        tokio::time::advance(LONGEST_WAIT_BEHIND).await;
        let late = waiter(Urgency::First, 'F');
        tokio::task::yield_now().await;
        drop(held);
        overdue.await.unwrap();
        late.await.unwrap();
        assert_eq!(*order.lock().unwrap(), "faAF", "past the longest wait the read-ahead goes first");
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_waiter_is_not_passed_by_first_pieces_that_fit() {
        let slots = DecodeSlots::new(2);
        let held = slots.acquire(1, Urgency::First).await;
        let overdue = spawn_acquire(&slots, 2, Urgency::Ahead);
        tokio::task::yield_now().await;
        tokio::time::advance(LONGEST_WAIT_BEHIND).await;
        let first = spawn_acquire(&slots, 1, Urgency::First);
        tokio::task::yield_now().await;
        assert!(!first.is_finished(), "a first piece that fits the free slot waits behind the overdue waiter");
        drop(held);
        drop(overdue.await.unwrap());
        drop(first.await.unwrap());
        assert_eq!(slots.available(), 2);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_loses_no_slot() {
        let slots = DecodeSlots::new(1);
        let held = slots.acquire(1, Urgency::First).await;
        let gone = spawn_acquire(&slots, 1, Urgency::Ahead);
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(slots.available(), 1);
        drop(slots.acquire(1, Urgency::Ahead).await);
        assert_eq!(slots.available(), 1);
    }
}
