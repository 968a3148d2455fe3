//! What the decode benches share: the speed record, the runners of the reference
//! implementations (HF transformers: `scripts/bench_transformers.py` with `HF_PYTHON`;
//! llama.cpp: `scripts/bench_llamacpp.py` with `LLAMA_PYTHON`, else `HF_PYTHON`), and the
//! machine's memory read bandwidth.

#![allow(dead_code)] // each bench uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Prefill and decode throughput of one configuration.
pub struct Speed {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// Runs `scripts/SCRIPT TARGET ARGS…` with `python` and reads the JSON object it prints
/// last; `None` (with the reason on stderr) when python or the library is missing.
fn python_bench(python: &str, script: &str, target: &Path, args: &[String]) -> Option<Speed> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = Command::new(python)
        .arg(&script)
        .arg(target)
        .args(args)
        .output()
        .map_err(|e| eprintln!("{}: {e}", script.display()))
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "{} unavailable: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last()?).ok()?;
    Some(Speed {
        prefill_tok_s: v["prefill_tok_s"].as_f64()?,
        decode_tok_s: v["decode_tok_s"].as_f64()?,
    })
}

fn shape_args(batch: usize, prompt_len: usize, new_tokens: usize, repeats: usize) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    [
        ("--prompt_len", prompt_len),
        ("--new_tokens", new_tokens),
        ("--batch", batch),
        ("--threads", threads),
        ("--repeats", repeats),
    ]
    .iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .collect()
}

/// The same measurement by HF transformers (f32) on the model directory `dir`.
pub fn transformers(
    dir: &Path,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    repeats: usize,
) -> Option<Speed> {
    let python = std::env::var("HF_PYTHON").unwrap_or_else(|_| "python3".into());
    python_bench(
        &python,
        "bench_transformers.py",
        dir,
        &shape_args(batch, prompt_len, new_tokens, repeats),
    )
}

/// The same measurement by llama.cpp (llama-cpp-python) on a GGUF file; batch 1 only.
pub fn llama_cpp(
    gguf: &Path,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    repeats: usize,
) -> Option<Speed> {
    let python = std::env::var("LLAMA_PYTHON")
        .or_else(|_| std::env::var("HF_PYTHON"))
        .unwrap_or_else(|_| "python3".into());
    python_bench(
        &python,
        "bench_llamacpp.py",
        gguf,
        &shape_args(batch, prompt_len, new_tokens, repeats),
    )
}

/// Memory read bandwidth in bytes/s with every core reading its share of a 1 GiB buffer
/// (far beyond the caches), best of 5 passes: the denominator of "fraction of the
/// memory-bound limit".
pub fn read_bandwidth() -> f64 {
    const BYTES: usize = 1 << 30;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let buf: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let chunk = buf.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    let mut sink = 0u64;
    for _ in 0..5 {
        let t0 = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        // A plain integer sum: the compiler vectorises it with several
                        // accumulators, so the loop is bound by loads. (A hand-laned version
                        // compiled for AVX-512 ran at a fifth of the bandwidth.)
                        part.iter().fold(0u64, |s, &x| s.wrapping_add(x))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        best = best.min(t0.elapsed().as_secs_f64());
        sink = sink.wrapping_add(total);
    }
    std::hint::black_box(sink);
    BYTES as f64 / best
}
