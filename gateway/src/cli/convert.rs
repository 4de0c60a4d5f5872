//! `tensorgate pack` / `unpack`: the codec on one safetensors file, in memory, with sizes and
//! speed (wall clock, all cores).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

/// Runs `transform` (pack or unpack) on `input`, writes `output` and reports sizes and speed.
pub fn run(
    input: &Path,
    base: Option<&Path>,
    output: &Path,
    verb: &str,
    transform: fn(&[u8], Option<&[u8]>) -> tensorgate_codec::Result<Vec<u8>>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let base = base.map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display()))).transpose()?;
    let started = Instant::now();
    let result = transform(&bytes, base.as_deref()).with_context(|| format!("{verb} {}", input.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(output, &result).with_context(|| format!("writing {}", output.display()))?;
    let raw = bytes.len().max(result.len()) as f64;
    println!(
        "{verb} {} bytes into {} bytes ({:.1}% of raw, {:.2}x) in {:.3} s: {:.0} MB/s",
        bytes.len(),
        result.len(),
        100.0 * bytes.len().min(result.len()) as f64 / raw,
        raw / bytes.len().min(result.len()).max(1) as f64,
        seconds,
        raw / 1e6 / seconds.max(1e-9)
    );
    Ok(())
}
