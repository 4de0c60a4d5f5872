//! The gateway's allocator: mimalloc, set up to hold what the gateway uses and little more.
//!
//! mimalloc keeps freed chunk buffers for reuse instead of returning them to the kernel and
//! faulting fresh zeroed pages for the next chunk, which costs a third of decode time otherwise.
//! Two things can keep what it holds above what the gateway uses, so the runtime's threads
//! collect as they go idle and the coding threads every tenth of a second, each collection
//! forcing the purge ([`collect_if_due`], [`collect_on_coding_threads`]); a blocking thread
//! gives back what it holds when it ends, after a second idle (`cli`):
//! - Pages are held per thread. A page its own thread emptied stays with that thread for a few
//!   more of its allocations, and blocks other threads free into a page the thread still uses
//!   wait for it to allocate of that size again or collect. Collecting on every thread of an
//!   idle gateway after eight clients gave back 50-120 MiB.
//! - Freed pages go back to the kernel in a purge pass, which a thread's page free or a
//!   collection starts once the due time is reached. In mimalloc 3.3.2 (`arena.c`) a pass in
//!   which no arena purged anything or had a purge pending clears the process-wide due time,
//!   while a page freed into an arena the pass already visited may have set that arena's own;
//!   later frees then leave the process-wide time clear, and only a forced collection purges.
//!   Eight clients left the gateway at 520-640 MiB in some runs and held it idle (330-370 MiB
//!   otherwise), and due purges run every 10 ms did not bring it down (docs/benchmarks.md,
//!   issue 15), as this would have it.

use std::cell::Cell;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often one thread collects at most.
const COLLECT_EVERY: Duration = Duration::from_millis(50);

/// mimalloc's `arena_eager_commit` and `purge_delay` options (the same indices in its v2 and
/// v3 headers).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Has mimalloc commit its arenas on demand and give freed pages back after 1 ms rather than
/// after its default delay, so that what the gateway holds follows what it uses:
/// - with eager commit a GET of 600 MB of small chunks (fetched on many threads) peaked at
///   546 MiB resident, without it at 124 MiB, at the same speed (docs/benchmarks.md, issue 17);
/// - with the 10 ms delay, eight clients at once peaked at 356 MiB and the packer after them at
///   528 MiB, with 1 ms at 267 and 298 MiB, 7-13% slower (docs/benchmarks.md, issue 15).
///
/// It must run before the first allocation makes the first arena, so it runs as an ELF
/// constructor, before the Rust runtime allocates anything.
extern "C" fn commit_arenas_on_demand() {
    // SAFETY: sets two option values; no other thread exists yet.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1);
    }
}

#[used]
#[cfg_attr(target_os = "linux", link_section = ".init_array")]
static COMMIT_ARENAS_ON_DEMAND: extern "C" fn() = commit_arenas_on_demand;

thread_local! {
    static LAST_COLLECTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Gives the pages this thread holds and no longer uses back to the arena, and every freed
/// page back to the kernel, unless this thread did so less than [`COLLECT_EVERY`] ago.
pub fn collect_if_due() {
    let now = Instant::now();
    let due = LAST_COLLECTED.with(|last| match last.get() {
        Some(at) if now.duration_since(at) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: collects the calling thread's own heap; no pointer is handed over.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

/// How often the coding threads are asked to collect: they have no hook for going idle.
const CODING_THREADS_EVERY: Duration = Duration::from_millis(100);

/// Has each coding thread (rayon's) collect, every [`CODING_THREADS_EVERY`], for as long as
/// the runtime runs, after freeing the codec's buffers if it coded nothing since the last time;
/// a thread busy with codec work collects when it next waits or is done.
pub async fn collect_on_coding_threads() {
    let mut ticks = tokio::time::interval(CODING_THREADS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        rayon::spawn_broadcast(|_| {
            tensorgate_codec::release_idle_scratch();
            collect_if_due();
        });
    }
}
