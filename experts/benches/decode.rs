//! Decode and prefill speed of our decoder against Hugging Face transformers (torch, CPU,
//! same thread count), side by side in one run, batch 1 and 8, on a forged model; plus
//! bytes of KV cache per token and peak resident memory.
//!
//! `cargo bench -p experts --bench decode -- [MODEL_DIR] [--json]`
//! (default model: `models/foundation`; `forge` builds it). The transformers side runs
//! `scripts/bench_transformers.py` with `$HF_PYTHON` (default `python3`); when torch is not
//! installed there, only our numbers are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use experts::loader::{LoadedModel, load_model};
use experts::model::Path;
use rand::{Rng, SeedableRng};

const PROMPT_LEN: usize = 64;
const NEW_TOKENS: usize = 128;
const REPEATS: usize = 3;

mod common;
use common::{Speed, transformers};

fn ours(model: &LoadedModel, batch: usize) -> (Speed, usize) {
    let vocab = model.decoder.config().vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..batch * PROMPT_LEN)
        .map(|_| rng.random_range(10..vocab - 10))
        .collect();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    let mut kv_bytes = 0;
    for _ in 0..REPEATS {
        let mut cache = model.decoder.new_cache();
        let input = Tensor::from_vec(ids.clone(), (batch, PROMPT_LEN), &Device::Cpu).unwrap();
        let t0 = Instant::now();
        let logits = model
            .decoder
            .forward(&input, Some(&mut cache), true, false, Path::Fused)
            .unwrap()
            .logits;
        let mut next: Vec<u32> = logits
            .squeeze(1)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        best_prefill = best_prefill.min(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        for _ in 1..NEW_TOKENS {
            let input = Tensor::from_vec(next, (batch, 1), &Device::Cpu).unwrap();
            let logits = model
                .decoder
                .forward(&input, Some(&mut cache), true, false, Path::Fused)
                .unwrap()
                .logits;
            next = logits
                .squeeze(1)
                .unwrap()
                .argmax(D::Minus1)
                .unwrap()
                .to_vec1()
                .unwrap();
        }
        best_decode = best_decode.min(t0.elapsed().as_secs_f64());
        kv_bytes = cache.bytes() / (batch * cache.len());
    }
    (
        Speed {
            prefill_tok_s: (batch * PROMPT_LEN) as f64 / best_prefill,
            decode_tok_s: (batch * (NEW_TOKENS - 1)) as f64 / best_decode,
        },
        kv_bytes,
    )
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let dir = args.iter().find(|a| !a.starts_with("--")).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/foundation"),
        PathBuf::from,
    );
    let model = load_model(&dir, DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e} (build it with `forge`)"));
    let cfg = model.decoder.config().clone();
    let params: usize = {
        let st =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        st.values().map(|t| t.elem_count()).sum()
    };
    println!(
        "model {} ({params} parameters, hidden {}, {} layers), prompt {PROMPT_LEN} tokens, \
         {NEW_TOKENS} new tokens, greedy, f32, best of {REPEATS}",
        dir.display(),
        cfg.hidden_size,
        cfg.num_hidden_layers
    );
    println!(
        "| batch | ours prefill tok/s | transformers prefill tok/s | ratio | ours decode tok/s | transformers decode tok/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut kv = 0;
    for batch in [1, 8] {
        let (o, kv_bytes) = ours(&model, batch);
        kv = kv_bytes;
        let t = transformers(&dir, batch, PROMPT_LEN, NEW_TOKENS, REPEATS);
        let fmt = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.0}"));
        let ratio =
            |a: f64, b: Option<f64>| b.map_or("n/a".to_string(), |b| format!("{:.2}×", a / b));
        println!(
            "| {batch} | {:.0} | {} | {} | {:.0} | {} | {} |",
            o.prefill_tok_s,
            fmt(t.as_ref().map(|t| t.prefill_tok_s)),
            ratio(o.prefill_tok_s, t.as_ref().map(|t| t.prefill_tok_s)),
            o.decode_tok_s,
            fmt(t.as_ref().map(|t| t.decode_tok_s)),
            ratio(o.decode_tok_s, t.as_ref().map(|t| t.decode_tok_s)),
        );
        rows.push(serde_json::json!({
            "batch": batch,
            "ours_prefill_tok_s": o.prefill_tok_s,
            "ours_decode_tok_s": o.decode_tok_s,
            "hf_prefill_tok_s": t.as_ref().map(|t| t.prefill_tok_s),
            "hf_decode_tok_s": t.as_ref().map(|t| t.decode_tok_s),
        }));
    }
    println!(
        "KV cache: {kv} bytes per token (config: {}), peak resident memory of this process: {} KiB",
        cfg.kv_bytes_per_token(4),
        peak_rss_kib().map_or("n/a".into(), |k| k.to_string())
    );
    if json {
        println!(
            "{}",
            serde_json::json!({"rows": rows, "kv_bytes_per_token": kv, "peak_rss_kib": peak_rss_kib()})
        );
    }
}
