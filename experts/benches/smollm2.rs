//! Prefill and decode speed on the real SmolLM2-135M-Instruct, per weight format (f32 as
//! stored, and projections requantized at load for candle's quantized matmul), batch 1 and
//! 8, with Hugging Face transformers (f32) and llama.cpp (the package's own Q4_1 GGUF, at
//! batch one) beside it in the same run, and each row's decode as a fraction of the
//! memory-bound limit: bytes of weights one decode step reads × steps/s ÷ the measured read
//! bandwidth.
//!
//! `cargo bench -p experts --bench smollm2 -- [MODEL_DIR] [--formats f32,q8_0,q4_0,q4_1]
//! [--batches 1,8] [--no-hf] [--no-llama] [--json]` (default model:
//! `models/smollm2-135m-instruct`, written by `expert pull smollm2`). The transformers side
//! runs `scripts/bench_transformers.py` with `$HF_PYTHON`, the llama.cpp side
//! `scripts/bench_llamacpp.py` with `$LLAMA_PYTHON` (else `$HF_PYTHON`; default `python3`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use experts::loader::{LoadedModel, load_model_as};
use experts::model::{Path, WeightFormat};
use rand::{Rng, SeedableRng};

const PROMPT_LEN: usize = 64;
const NEW_TOKENS: usize = 64;
const REPEATS: usize = 2;

mod common;
use common::{Speed, llama_cpp, read_bandwidth, transformers};

fn argmax(logits: &Tensor) -> Vec<u32> {
    logits
        .squeeze(1)
        .unwrap()
        .argmax(D::Minus1)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn ours(model: &LoadedModel, batch: usize) -> Speed {
    let vocab = model.decoder.config().vocab_size as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids: Vec<u32> = (0..batch * PROMPT_LEN)
        .map(|_| rng.random_range(10..vocab - 10))
        .collect();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..REPEATS {
        let mut cache = model.decoder.new_cache();
        let input = Tensor::from_vec(ids.clone(), (batch, PROMPT_LEN), &Device::Cpu).unwrap();
        let t0 = Instant::now();
        let out = model
            .decoder
            .forward(&input, Some(&mut cache), true, false, Path::Fused)
            .unwrap();
        let mut next = argmax(&out.logits);
        best_prefill = best_prefill.min(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        for _ in 1..NEW_TOKENS {
            let input = Tensor::from_vec(next, (batch, 1), &Device::Cpu).unwrap();
            let out = model
                .decoder
                .forward(&input, Some(&mut cache), true, false, Path::Fused)
                .unwrap();
            next = argmax(&out.logits);
        }
        best_decode = best_decode.min(t0.elapsed().as_secs_f64());
    }
    Speed {
        prefill_tok_s: (batch * PROMPT_LEN) as f64 / best_prefill,
        decode_tok_s: (batch * (NEW_TOKENS - 1)) as f64 / best_decode,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let no_hf = args.iter().any(|a| a == "--no-hf");
    let no_llama = args.iter().any(|a| a == "--no-llama");
    let flag = |name: &str, default: &'static str| -> Vec<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, String::as_str)
            .split(',')
            .map(String::from)
            .collect()
    };
    let formats: Vec<WeightFormat> = flag("--formats", "f32,q8_0,q4_0,q4_1")
        .iter()
        .map(|f| f.parse().unwrap())
        .collect();
    let batches: Vec<usize> = flag("--batches", "1,8")
        .iter()
        .map(|b| b.parse().unwrap())
        .collect();
    let dir = args
        .iter()
        .enumerate()
        .find(|(i, a)| {
            !a.starts_with("--")
                && (*i == 0 || !["--formats", "--batches"].contains(&args[i - 1].as_str()))
        })
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct"),
            |(_, a)| PathBuf::from(a),
        );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bandwidth = read_bandwidth();
    println!(
        "model {}, prompt {PROMPT_LEN} random tokens, {NEW_TOKENS} new tokens, greedy, \
         {threads} threads, best of {REPEATS}; memory read bandwidth {:.1} GB/s",
        dir.display(),
        bandwidth / 1e9
    );
    println!(
        "| implementation | weights | batch | prefill tok/s | decode tok/s | weights read per step | decode, share of the memory-bound limit |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut row = |implementation: &str, weights: &str, batch: usize, s: &Speed, bytes: usize| {
        // One decode step reads every weight once and yields `batch` tokens.
        let share = s.decode_tok_s / batch as f64 * bytes as f64 / bandwidth;
        println!(
            "| {implementation} | {weights} | {batch} | {:.0} | {:.1} | {:.1} MB | {:.0} % |",
            s.prefill_tok_s,
            s.decode_tok_s,
            bytes as f64 / 1e6,
            share * 100.0
        );
        rows.push(serde_json::json!({
            "implementation": implementation, "weights": weights, "batch": batch,
            "prefill_tok_s": s.prefill_tok_s, "decode_tok_s": s.decode_tok_s,
            "weight_bytes_per_step": bytes, "memory_bound_share": share,
        }));
    };
    let mut bytes_of = std::collections::HashMap::new();
    for &format in &formats {
        let model = load_model_as(&dir, DType::F32, &Device::Cpu, format)
            .unwrap_or_else(|e| panic!("{e} (get it with `expert pull smollm2`)"));
        let bytes = model.decoder.weight_bytes_per_step();
        bytes_of.insert(format.name(), bytes);
        for &batch in &batches {
            row(
                "ours (candle)",
                format.name(),
                batch,
                &ours(&model, batch),
                bytes,
            );
        }
    }
    let f32_bytes = bytes_of.get("f32").copied().unwrap_or_else(|| {
        load_model_as(&dir, DType::F32, &Device::Cpu, WeightFormat::Dense)
            .map(|m| m.decoder.weight_bytes_per_step())
            .unwrap_or(0)
    });
    if !no_hf {
        for &batch in &batches {
            if let Some(s) = transformers(&dir, batch, PROMPT_LEN, NEW_TOKENS, REPEATS) {
                row("transformers (torch)", "f32", batch, &s, f32_bytes);
            }
        }
    }
    if !no_llama {
        // The GGUF's own layout: Q4_1 projections, Q8_0 embedding / tied head — the bytes of
        // our q4_1 format, which reproduces those blocks.
        let q4_1 = bytes_of.get("q4_1").copied().unwrap_or_else(|| {
            load_model_as(&dir, DType::F32, &Device::Cpu, WeightFormat::Q4_1)
                .map(|m| m.decoder.weight_bytes_per_step())
                .unwrap_or(0)
        });
        let gguf = std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        });
        match gguf {
            Some(gguf) => {
                if let Some(s) = llama_cpp(&gguf, 1, PROMPT_LEN, NEW_TOKENS, REPEATS) {
                    row("llama.cpp (llama-cpp-python)", "q4_1 (GGUF)", 1, &s, q4_1);
                }
            }
            None => eprintln!("no .gguf in {}: llama.cpp skipped", dir.display()),
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "rows": rows, "read_bandwidth_bytes_s": bandwidth })
        );
    }
}
