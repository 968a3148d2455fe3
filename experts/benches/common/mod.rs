//! What the decode benches share: the speed record and the HF transformers runner
//! (`scripts/bench_transformers.py`, python from `HF_PYTHON`).

use std::path::PathBuf;
use std::process::Command;

/// Prefill and decode throughput of one configuration.
pub struct Speed {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// The same measurement by HF transformers on `dir`; `None` (with the reason on stderr)
/// when python, torch or transformers is missing.
pub fn transformers(
    dir: &std::path::Path,
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
    repeats: usize,
) -> Option<Speed> {
    let python = std::env::var("HF_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench_transformers.py");
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let out = Command::new(python)
        .arg(script)
        .arg(dir)
        .args(["--prompt_len", &prompt_len.to_string()])
        .args(["--new_tokens", &new_tokens.to_string()])
        .args(["--batch", &batch.to_string()])
        .args(["--threads", &threads.to_string()])
        .args(["--repeats", &repeats.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "transformers unavailable: {}",
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
