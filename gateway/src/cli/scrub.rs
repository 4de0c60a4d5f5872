//! `tensorgate scrub`: reads and verifies every frame upstream at a bounded rate, resuming an
//! interrupted run; exits with status 1 when a frame is bad or the recorded position is no
//! chunk id.

use tensorgate::config::Config;
use tensorgate::maintenance::scrub;
use tensorgate::server;

pub async fn run(config: &Config, rate_mib: u64, restart: bool) -> anyhow::Result<()> {
    let store = server::open_store(config)?;
    let bar = super::progress_bar("chunks");
    let options = scrub::ScrubOptions { bytes_per_second: Some(rate_mib << 20), restart, resumable: true };
    let report = scrub::scrub(&store, options, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    let resumed = if report.resumed { " (resumed an interrupted scrub)" } else { "" };
    println!("verified {} frames, {} bytes{resumed}", report.frames, report.bytes);
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    if !report.problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
