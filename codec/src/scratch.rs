//! A few buffers per thread for what a decode or an encode writes once, reads and drops: the
//! planes of a chunk, a plane's compressed bytes, a payload before it goes into its frame. A
//! fresh 4 MiB buffer for every chunk is fresh pages from the kernel (the gateway's allocator
//! gives freed pages back after 1 ms), each faulted in and zeroed on first touch: a sixth of
//! the gateway's CPU under a loader's ranged GETs, a fifth while it encodes an upload. Threads
//! that code are few (the gateway codes on its cores); each keeps at most [`KEPT_BUFFERS`]
//! filled buffers and [`KEPT_ROOMS`] empty ones, none over [`MAX_KEPT`].

use std::cell::RefCell;
use std::thread::LocalKey;

/// The largest buffer a thread keeps (a chunk is at most 4 MiB in the gateway's default).
const MAX_KEPT: usize = 16 << 20;

/// Filled buffers a thread keeps: a chunk's planes (no encode or decode takes two at once).
const KEPT_BUFFERS: usize = 1;

/// Empty buffers a thread keeps: on encode a payload being written and a plane's compressed
/// bytes (a plane tried both ways needs a third, made afresh: keeping it cost more memory
/// under many clients than it saved time).
const KEPT_ROOMS: usize = 2;

thread_local! {
    static KEPT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static ROOMS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `len` bytes whose values are left from earlier use (bytes no earlier use
/// wrote are zeroed): the caller writes them all before it reads any.
pub fn take(len: usize) -> Vec<u8> {
    let mut buffer = fitting(&KEPT, len).unwrap_or_else(|| vec![0; len]);
    if buffer.len() >= len {
        buffer.truncate(len);
    } else {
        buffer.resize(len, 0);
    }
    buffer
}

/// An empty buffer with room for at least `capacity` bytes, for output appended or written
/// into its spare room (zstd's), so nothing is zeroed first.
pub fn take_room(capacity: usize) -> Vec<u8> {
    let mut room = fitting(&ROOMS, capacity).unwrap_or_else(|| Vec::with_capacity(capacity));
    room.clear();
    room
}

/// The smallest buffer of `pool` with room for `capacity` bytes, taken out of it (a larger one
/// stays for a larger need). One too small is not grown: growing copies its old bytes.
fn fitting(pool: &'static LocalKey<RefCell<Vec<Vec<u8>>>>, capacity: usize) -> Option<Vec<u8>> {
    pool.with_borrow_mut(|kept| {
        let index = (0..kept.len()).filter(|index| kept[*index].capacity() >= capacity).min_by_key(|index| kept[*index].capacity())?;
        Some(kept.swap_remove(index))
    })
}

/// Keeps `buffer`, from [`take`], for this thread's next [`take`] unless it is over
/// [`MAX_KEPT`] or the thread keeps enough. Its length is kept: those bytes need no zeroing.
pub fn give_back(buffer: Vec<u8>) {
    keep(&KEPT, buffer, KEPT_BUFFERS);
}

/// Keeps `room`, from [`take_room`] (or any buffer whose bytes are done with), for this
/// thread's next [`take_room`].
pub fn give_back_room(room: Vec<u8>) {
    keep(&ROOMS, room, KEPT_ROOMS);
}

/// Keeps `buffer` in `pool`, which holds at most `most`: past that the smallest one leaves.
fn keep(pool: &'static LocalKey<RefCell<Vec<Vec<u8>>>>, buffer: Vec<u8>, most: usize) {
    if buffer.capacity() <= MAX_KEPT && buffer.capacity() > 0 {
        pool.with_borrow_mut(|kept| {
            kept.push(buffer);
            if kept.len() > most {
                let smallest = (0..kept.len()).min_by_key(|index| kept[*index].capacity()).expect("not empty");
                kept.swap_remove(smallest);
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

    #[test]
    fn a_room_given_back_is_taken_again_empty() {
        let mut room = take_room(1000);
        room.extend_from_slice(&[9; 600]);
        let address = room.as_ptr();
        give_back_room(room);
        let again = take_room(800);
        assert_eq!((again.len(), again.as_ptr()), (0, address));
        assert!(again.capacity() >= 800);
    }
}
