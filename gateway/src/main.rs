//! The `tensorgate` command: serve the S3 endpoint, or run one-off maintenance (see [`cli`]).

mod cli;

/// mimalloc keeps freed chunk buffers for reuse instead of returning them to the kernel and
/// faulting fresh zeroed pages for the next chunk, which costs a third of decode time otherwise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` and `purge_delay` options (the same indices in its v2 and
/// v3 headers).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Has mimalloc commit its arenas on demand and give freed pages back after 1 ms instead of
/// 10, so that what the gateway holds follows what it uses:
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

fn main() -> anyhow::Result<()> {
    cli::run()
}
