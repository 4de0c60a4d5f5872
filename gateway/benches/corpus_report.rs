//! The corpus report: for every file of the model corpus, its raw size and what each way of
//! storing it costs: tensorgate (each base-selection strategy, through the real S3 endpoint
//! with aws cli), zstd-3, zipnn (when installed) and bitx given the true base (when installed).
//! Prints a markdown table, writes `target/corpus-report.csv`, and draws `docs/corpus.png`
//! with `tests/corpus/plot.py` when matplotlib is installed.
//!
//! Run: `cargo bench -p tensorgate --bench corpus_report`

#[path = "../../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use support::{corpus, renamed_model, TestGateway, UpstreamKind};
use tensorgate::config::BaseSelection;

/// Corpus files in upload order, each with its true base (for bitx).
const FILES: &[(&str, Option<&str>)] = &[
    ("base/minilm-l6.bf16.safetensors", None),
    ("base/minilm-l6.f16.safetensors", None),
    ("base/minilm-l6.f32.safetensors", None),
    ("ckpt/ft-a-contrastive.step0030.bf16.safetensors", Some("base/minilm-l6.bf16.safetensors")),
    ("ckpt/ft-a-contrastive.step0060.bf16.safetensors", Some("base/minilm-l6.bf16.safetensors")),
    ("ft/ft-a-contrastive.bf16.safetensors", Some("base/minilm-l6.bf16.safetensors")),
    ("ft/ft-b-mlm.bf16.safetensors", Some("base/minilm-l6.bf16.safetensors")),
    ("ft/ft-c-cls.bf16.safetensors", Some("base/minilm-l6.bf16.safetensors")),
    ("lora/lora-r8-qv-merged.bf16.safetensors", Some("base/minilm-l6.bf16.safetensors")),
    ("ft/ft-a-contrastive.f32.safetensors", Some("base/minilm-l6.f32.safetensors")),
    ("other/paraphrase-minilm-l3.f32.safetensors", None),
    ("other/akiki-vad.f32.safetensors", None),
];

/// (column, base selection, upload in reverse order with every tensor renamed per file).
const STRATEGIES: &[(&str, BaseSelection, bool)] = &[
    ("tensorgate (fingerprint)", BaseSelection::Fingerprint, false),
    ("tensorgate (name)", BaseSelection::Name, false),
    ("tensorgate (no delta)", BaseSelection::None, false),
    ("fingerprint (reversed + renamed)", BaseSelection::Fingerprint, true),
    ("name (reversed + renamed)", BaseSelection::Name, true),
];

/// Upstream bytes each file added (in `FILES` order) when uploaded with `selection`, in order,
/// or in reverse order with each file's tensors renamed (`m<index>.<name>`).
fn tensorgate_sizes(selection: BaseSelection, reversed_and_renamed: bool) -> Vec<u64> {
    let gateway = TestGateway::start_with(UpstreamKind::LocalDirectory, |config| config.base_selection = selection);
    gateway.aws(&["s3", "mb", "s3://corpus"]);
    let mut order: Vec<usize> = (0..FILES.len()).collect();
    if reversed_and_renamed {
        order.reverse();
    }
    let mut sizes = vec![0; FILES.len()];
    for index in order {
        let file = FILES[index].0;
        let mut path = corpus(file);
        if reversed_and_renamed {
            let renamed = gateway.dir.path().join(format!("renamed-{index}"));
            std::fs::write(&renamed, renamed_model(&path, &format!("m{index}."))).unwrap();
            path = renamed;
        }
        let before = gateway.store().index.pack_bytes().unwrap();
        gateway.aws(&["s3api", "put-object", "--bucket", "corpus", "--key", file, "--body", path.to_str().unwrap()]);
        sizes[index] = gateway.store().index.pack_bytes().unwrap() - before;
    }
    sizes
}

fn zstd3(path: &Path) -> u64 {
    zstd::bulk::compress(&std::fs::read(path).unwrap(), 3).unwrap().len() as u64
}

fn bitx(base: &Path, file: &Path) -> Option<u64> {
    let out = std::env::temp_dir().join("tensorgate-corpus-report.bitx");
    let status = Command::new("bitx").arg("compress").arg(base).arg(file).arg("-o").arg(&out).output().ok()?;
    status.status.success().then(|| std::fs::metadata(&out).ok().map(|m| m.len())).flatten()
}

fn zipnn(path: &Path) -> Option<u64> {
    let dtype = if path.to_string_lossy().contains("bf16") {
        "bfloat16"
    } else if path.to_string_lossy().contains("f16") {
        "float16"
    } else {
        "float32"
    };
    let script = "import sys, zipnn\nz = zipnn.ZipNN(bytearray_dtype=sys.argv[2])\nprint(len(z.compress(bytearray(open(sys.argv[1], 'rb').read()))))";
    let output = Command::new("python3").args(["-c", script]).arg(path).arg(dtype).output().ok()?;
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

fn main() {
    let strategy_sizes: Vec<Vec<u64>> = STRATEGIES.iter().map(|(_, selection, shuffled)| tensorgate_sizes(*selection, *shuffled)).collect();
    let mut headers = vec!["file".to_owned(), "raw".to_owned()];
    headers.extend(STRATEGIES.iter().map(|(name, _, _)| name.to_string()));
    headers.extend(["zstd-3", "zipnn", "bitx (true base)"].map(str::to_owned));
    let mut rows: Vec<Vec<Option<u64>>> = Vec::new();
    for (index, (file, base)) in FILES.iter().enumerate() {
        let path = corpus(file);
        let raw = std::fs::metadata(&path).unwrap().len();
        let zstd = zstd3(&path);
        let mut row = vec![Some(raw)];
        row.extend(strategy_sizes.iter().map(|sizes| Some(sizes[index])));
        row.push(Some(zstd));
        row.push(zipnn(&path));
        // bitx has no standalone mode: a file without a base counts at its zstd-3 size.
        row.push(match base {
            Some(base) => bitx(&corpus(base), &path),
            None => Some(zstd),
        });
        rows.push(row);
    }
    let totals: Vec<Option<u64>> = (0..headers.len() - 1)
        .map(|column| rows.iter().map(|row| row[column]).sum::<Option<u64>>())
        .collect();
    let mut table = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(headers.len()));
    let mut csv = headers.join(",") + "\n";
    let names = FILES.iter().map(|(file, _)| *file).chain(std::iter::once("total"));
    for (name, row) in names.zip(rows.iter().chain(std::iter::once(&totals))) {
        let raw = row[0].unwrap_or(1) as f64;
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(column, value)| match (column, value) {
                (0, Some(bytes)) => format!("{:.2} MB", *bytes as f64 / 1e6),
                (_, Some(bytes)) => format!("{:.2} MB ({:.1}%)", *bytes as f64 / 1e6, 100.0 * *bytes as f64 / raw),
                (_, None) => "n/a".to_owned(),
            })
            .collect();
        let _ = writeln!(table, "| {name} | {} |", cells.join(" | "));
        let values: Vec<String> = row.iter().map(|v| v.map_or(String::new(), |b| b.to_string())).collect();
        let _ = writeln!(csv, "{name},{}", values.join(","));
    }
    println!("{table}");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let csv_path = workspace.join("target/corpus-report.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let plot = Command::new("python3")
        .arg(workspace.join("tests/corpus/plot.py"))
        .arg(&csv_path)
        .arg(workspace.join("docs/corpus.png"))
        .output();
    match plot {
        Ok(output) if output.status.success() => println!("plot written to docs/corpus.png"),
        _ => println!("no plot: tests/corpus/plot.py needs matplotlib (pip install matplotlib)"),
    }
}
