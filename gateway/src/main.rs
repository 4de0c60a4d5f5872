//! The `tensorgate` command: serve the S3 endpoint, or run one-off maintenance (see [`cli`]).

mod cli;

/// mimalloc keeps freed chunk buffers for reuse instead of returning them to the kernel and
/// faulting fresh zeroed pages for the next chunk, which costs a third of decode time otherwise.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    cli::run()
}
