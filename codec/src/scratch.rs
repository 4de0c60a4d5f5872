//! A few buffers per thread for what a decode or an encode writes once, reads and drops: the
//! planes of a chunk, a plane's compressed bytes. A fresh 4 MiB buffer for every chunk is
//! fresh pages from the kernel (the gateway's allocator gives freed pages back after 1 ms),
//! each faulted in and zeroed on first touch: a sixth of the gateway's CPU under a loader's
//! ranged GETs, a fifth while it encodes an upload. Threads that code are few (the gateway
//! codes on its cores); each keeps [`KEPT_BUFFERS`], none over [`MAX_KEPT`].

use std::cell::RefCell;

/// The largest buffer a thread keeps (a chunk is at most 4 MiB in the gateway's default).
const MAX_KEPT: usize = 16 << 20;

/// Buffers a thread keeps: a chunk's planes and one plane's compressed bytes are in use at once.
const KEPT_BUFFERS: usize = 2;

thread_local! {
    static KEPT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` bytes whose values are left from earlier use (the bytes past the length
/// it was given back with are zeroed): the caller writes them all before it reads any.
pub fn take(len: usize) -> Vec<u8> {
    let mut buffer = KEPT.with_borrow_mut(Vec::pop).unwrap_or_default();
    buffer.reserve_exact(len.saturating_sub(buffer.len()));
    buffer.resize(len, 0);
    buffer
}

/// Keeps `buffer` for this thread's next [`take`] unless it is over [`MAX_KEPT`] or the thread
/// keeps enough.
pub fn give_back(buffer: Vec<u8>) {
    if buffer.capacity() <= MAX_KEPT {
        KEPT.with_borrow_mut(|kept| {
            if kept.len() < KEPT_BUFFERS {
                kept.push(buffer);
            }
        });
    }
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
    }
}
