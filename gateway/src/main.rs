//! The `tensorgate` command: serve the S3 endpoint, or run one-off maintenance (see [`cli`]).

mod allocator;
mod cli;

fn main() -> anyhow::Result<()> {
    cli::run()
}
