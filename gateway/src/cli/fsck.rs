//! `tensorgate fsck`: checks (and with `--repair` repairs) the index against the upstream;
//! exits with status 1 when a problem is left.

use tensorgate::config::Config;
use tensorgate::maintenance::fsck;
use tensorgate::server;

pub async fn run(config: &Config, verify_frames: bool, repair: bool) -> anyhow::Result<()> {
    let store = server::open_store(config)?;
    let bar = super::progress_bar("frames verified");
    let report = fsck::fsck(&store, fsck::FsckOptions { verify_frames, repair }, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "{} objects, {} chunks, {} packs, {} blobs, {} frames verified",
        report.objects, report.chunks, report.packs, report.blobs, report.frames_verified
    );
    for repaired in &report.repaired {
        println!("repaired: {repaired}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    if !report.problems.is_empty() {
        std::process::exit(1);
    }
    println!("clean");
    Ok(())
}
