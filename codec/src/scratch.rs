//! One buffer per thread for the planes a decode reads once and then drops. A fresh 4 MiB
//! buffer for every chunk is fresh pages from the kernel (the gateway's allocator gives freed
//! pages back after 1 ms), each faulted in and zeroed on first touch: a sixth of the gateway's
//! CPU under a loader's ranged GETs. Threads that decode are few (the gateway decodes on its
//! cores), and a buffer over [`MAX_KEPT`] is not kept.

use std::cell::RefCell;

/// The largest buffer a thread keeps (a chunk is at most 4 MiB in the gateway's default).
const MAX_KEPT: usize = 16 << 20;

thread_local! {
    static KEPT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` bytes whose values are left from earlier use (the bytes past the length
/// it was given back with are zeroed): the caller writes them all before it reads any.
pub fn take(len: usize) -> Vec<u8> {
    let mut buffer = KEPT.with_borrow_mut(std::mem::take);
    buffer.reserve_exact(len.saturating_sub(buffer.len()));
    buffer.resize(len, 0);
    buffer
}

/// Keeps `buffer` for this thread's next [`take`] unless it is over [`MAX_KEPT`].
pub fn give_back(buffer: Vec<u8>) {
    if buffer.capacity() <= MAX_KEPT {
        KEPT.set(buffer);
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
