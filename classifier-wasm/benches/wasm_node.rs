//! The wasm classifier under node against the native one, side by side in one run:
//! per-call latency (p50 over 10,000 calls each, same queries), and the bytes a browser
//! downloads (wasm and checkpoint, raw and gzipped).
//!
//! `cargo bench -p classifier --bench wasm_node [-- --json]` after `scripts/build-wasm.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use classifier::Classifier;
use classifier::learned::{META_FILE, WEIGHTS_FILE};
use classifier::train::{TrainOptions, train};
use flate2::Compression;
use flate2::write::GzEncoder;

const CALLS: usize = 10_000;

fn gzipped_len(bytes: &[u8]) -> usize {
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap().len()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pkg = root.join("web/pkg");
    let wasm_path = pkg.join("classifier_bg.wasm");
    assert!(
        wasm_path.exists(),
        "build the wasm package first: scripts/build-wasm.sh"
    );

    let data = classifier::sample::generate(42, 350);
    let (t, v) = data.split_at(data.len() * 85 / 100);
    let cats = vec!["reasoning".to_string(), "sop".to_string()];
    let started = Instant::now();
    let (model, _) = train(t, v, &cats, &TrainOptions::default(), |_, _| {}).unwrap();
    let train_s = started.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let queries: Vec<String> = v.iter().map(|q| q.query.clone()).collect();
    let qfile = dir.path().join("queries.json");
    std::fs::write(&qfile, serde_json::to_vec(&queries).unwrap()).unwrap();

    for q in queries.iter().cycle().take(1000) {
        std::hint::black_box(model.classify(q).unwrap());
    }
    let mut native: Vec<f64> = Vec::with_capacity(CALLS);
    for q in queries.iter().cycle().take(CALLS) {
        let t0 = Instant::now();
        std::hint::black_box(model.classify(std::hint::black_box(q)).unwrap());
        native.push(t0.elapsed().as_nanos() as f64);
    }
    native.sort_by(f64::total_cmp);
    let native_p50 = percentile(&native, 0.5);

    let out = Command::new("node")
        .arg(root.join("tests/wasm/bench.mjs"))
        .arg(&pkg)
        .arg(dir.path())
        .arg(&qfile)
        .arg(CALLS.to_string())
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let wasm_p50 = js["p50_ns"].as_f64().unwrap();

    let wasm_bytes = std::fs::read(&wasm_path).unwrap();
    let js_glue = std::fs::read(pkg.join("classifier.js")).unwrap();
    let weights = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
    let meta = std::fs::read(dir.path().join(META_FILE)).unwrap();
    let mut all = wasm_bytes.clone();
    all.extend(&js_glue);
    all.extend(&weights);
    all.extend(&meta);
    let sizes = [
        ("wasm", wasm_bytes.len(), gzipped_len(&wasm_bytes)),
        ("js glue", js_glue.len(), gzipped_len(&js_glue)),
        (
            "checkpoint (weights + meta)",
            weights.len() + meta.len(),
            gzipped_len(&weights) + gzipped_len(&meta),
        ),
        (
            "total",
            all.len(),
            gzipped_len(&wasm_bytes)
                + gzipped_len(&js_glue)
                + gzipped_len(&weights)
                + gzipped_len(&meta),
        ),
    ];

    println!(
        "classify latency, learned classifier, {CALLS} calls over {} sample queries",
        queries.len()
    );
    println!("| runtime | p50 | p90 |");
    println!("|---|---|---|");
    println!(
        "| native | {:.2} µs | {:.2} µs |",
        native_p50 / 1e3,
        percentile(&native, 0.9) / 1e3
    );
    println!(
        "| wasm (node {}) | {:.2} µs | {:.2} µs |",
        String::from_utf8_lossy(
            &Command::new("node")
                .arg("--version")
                .output()
                .unwrap()
                .stdout
        )
        .trim(),
        wasm_p50 / 1e3,
        js["p90_ns"].as_f64().unwrap() / 1e3
    );
    println!("wasm / native p50 ratio: {:.2}×", wasm_p50 / native_p50);
    println!();
    println!("| download | raw bytes | gzip -9 bytes |");
    println!("|---|---|---|");
    for (name, raw, gz) in sizes {
        println!("| {name} | {raw} | {gz} |");
    }
    println!();
    println!(
        "training: {train_s:.3} s for {} epochs on {} queries",
        TrainOptions::default().epochs,
        t.len()
    );
    if json {
        println!(
            "{}",
            serde_json::json!({
                "native_p50_us": native_p50 / 1e3,
                "wasm_p50_us": wasm_p50 / 1e3,
                "ratio": wasm_p50 / native_p50,
                "wasm_bytes": sizes[0].1,
                "wasm_gzip_bytes": sizes[0].2,
                "total_gzip_bytes": sizes[3].2,
                "train_seconds": train_s,
            })
        );
    }
}
