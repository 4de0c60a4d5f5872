//! A few buffers per thread for what a decode or an encode writes once, reads and drops: the
//! planes of a chunk, a plane's compressed bytes, a payload before its frame. A fresh 4 MiB
//! buffer for every chunk is fresh pages from the kernel (the gateway's allocator gives freed
//! pages back after 1 ms), each faulted in and zeroed on first touch: a sixth of the gateway's
//! CPU under a loader's ranged GETs, a fifth while it encodes an upload. Threads that code are
//! few (the gateway codes on its cores); each keeps [`KEPT_BUFFERS`], none over [`MAX_KEPT`],
//! hands out the one that fits best, and frees them once it has gone idle
//! ([`release_if_idle`]).

use std::cell::{Cell, RefCell};

/// The largest buffer a thread keeps (a chunk is at most 4 MiB in the gateway's default).
const MAX_KEPT: usize = 16 << 20;

/// Buffers a thread keeps: an encode holds a chunk's planes, the payload they go into and a
/// plane's two compressed candidates at once (a chunk that also tries a second payload, such
/// as the chunk on its own after a poor delta, holds one or two more, made fresh).
const KEPT_BUFFERS: usize = 4;

thread_local! {
    static KEPT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread took a buffer since the last [`release_if_idle`].
    static TAKEN: Cell<bool> = const { Cell::new(false) };
}

/// Frees the buffers this thread keeps unless it took one since the last call: called now and
/// then on each coding thread, a thread that has gone idle holds nothing for nobody.
pub fn release_if_idle() {
    if !TAKEN.replace(false) {
        KEPT.with_borrow_mut(Vec::clear);
    }
}

/// The kept buffer that best holds `capacity` bytes: the smallest that holds them, else the
/// largest (which grows the least); an empty new one when none is kept.
fn best_fit(capacity: usize) -> Vec<u8> {
    TAKEN.set(true);
    KEPT.with_borrow_mut(|kept| {
        let holds = kept.iter().enumerate().filter(|(_, buffer)| buffer.capacity() >= capacity).min_by_key(|(_, buffer)| buffer.capacity());
        let chosen = holds.or_else(|| kept.iter().enumerate().max_by_key(|(_, buffer)| buffer.capacity())).map(|(at, _)| at);
        chosen.map(|at| kept.swap_remove(at)).unwrap_or_default()
    })
}

/// A buffer of `len` bytes whose values are left from earlier use (the bytes past the length
/// it was given back with are zeroed): the caller writes them all before it reads any.
pub fn take(len: usize) -> Vec<u8> {
    let mut buffer = best_fit(len);
    buffer.reserve_exact(len.saturating_sub(buffer.len()));
    buffer.resize(len, 0);
    buffer
}

/// An empty buffer with room for `capacity` bytes, to be appended to.
pub fn take_empty(capacity: usize) -> Vec<u8> {
    let mut buffer = best_fit(capacity);
    buffer.clear();
    buffer.reserve_exact(capacity);
    buffer
}

/// Keeps `buffer` for this thread's next [`take`] unless it is over [`MAX_KEPT`], or the
/// thread keeps enough buffers, none smaller than it.
pub fn give_back(buffer: Vec<u8>) {
    if buffer.capacity() > MAX_KEPT || buffer.capacity() == 0 {
        return;
    }
    KEPT.with_borrow_mut(|kept| {
        if kept.len() < KEPT_BUFFERS {
            kept.push(buffer);
        } else if let Some(smallest) = kept.iter_mut().min_by_key(|kept| kept.capacity()).filter(|kept| kept.capacity() < buffer.capacity()) {
            *smallest = buffer;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_at_any_length() {
        let mut buffer = take(1000);
        buffer.fill(7);
        let address = buffer.as_ptr();
        give_back(buffer);
        let again = take(10);
        assert_eq!((again.len(), again.as_ptr()), (10, address));
        give_back(again);
        let longer = take(1000);
        assert_eq!(longer.as_ptr(), address, "a shorter length given back keeps the capacity");
        assert_eq!(&longer[..10], &[7; 10], "what was written is left, not zeroed again");
        give_back(longer);
        let empty = take_empty(500);
        assert_eq!((empty.len(), empty.as_ptr()), (0, address));
    }

    #[test]
    fn the_buffer_that_fits_best_is_taken_and_the_largest_are_kept() {
        let sizes = [4000, 1000, 2000];
        for size in sizes {
            give_back(Vec::with_capacity(size));
        }
        assert!((1500..2000 + 64).contains(&take(1500).capacity()), "the smallest that holds it");
        assert!(take(9000).capacity() >= 9000);
        // The 1,000-byte buffer is left; larger ones given back to a full list replace it.
        for at in 0..KEPT_BUFFERS {
            give_back(Vec::with_capacity(3000 + at * 1000));
        }
        give_back(Vec::with_capacity(100));
        let kept: Vec<usize> = (0..KEPT_BUFFERS).map(|_| take_empty(0).capacity()).collect();
        assert!(kept.iter().all(|capacity| *capacity >= 3000), "the largest are kept: {kept:?}");
    }

    #[test]
    fn a_thread_idle_since_the_last_call_frees_its_buffers() {
        give_back(Vec::with_capacity(1000));
        let taken = take_empty(0);
        give_back(taken);
        release_if_idle();
        let kept = take_empty(0);
        assert!(kept.capacity() >= 1000, "a thread that took a buffer since the last call keeps them");
        give_back(kept);
        release_if_idle();
        release_if_idle();
        assert_eq!(take_empty(0).capacity(), 0, "an idle thread kept a buffer");
    }
}
