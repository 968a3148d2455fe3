//! Serving throughput of the expert process: total generated tokens/s with 1, 4 and 16
//! concurrent clients over HTTP on loopback, with continuous batching (`max_batch: 16`)
//! and, side by side in the same run, with batching off (`max_batch: 1`, one sequence at a
//! time). Every run sends the same 96 `single` requests (raw-text prompts, sampled at
//! temperature 0.8 with fixed seeds, up to 64 new tokens), split evenly among its clients.
//!
//! `cargo bench -p experts --bench serving -- [MODELS_DIR] [--json]` (default `models`,
//! with `foundation` and `sft-sop` from `forge`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use experts::serve_config::ServeConfig;
use experts::server::{ExpertState, router};

const PROMPTS: [&str; 8] = [
    "To reset a password, the agent",
    "35 + 48 =",
    "退货的步骤是",
    "The larger of 47 and 74 is",
    "When an order has not arrived, first",
    "A train travels 60 km in 1.5 hours, so",
    "申请发票时，",
    "Tom has 12 apples and gives away 5, so",
];
const NEW_TOKENS: usize = 64;
const REQUESTS: usize = 96;

struct Row {
    max_batch: usize,
    clients: usize,
    tokens: u64,
    seconds: f64,
    mean_latency_ms: f64,
}

async fn serve(dir: &std::path::Path, max_batch: usize) -> String {
    let cfg = ServeConfig {
        models: BTreeMap::from([
            ("foundation".to_string(), dir.join("foundation")),
            ("sft-sop".to_string(), dir.join("sft-sop")),
        ]),
        device: "cpu".into(),
        routers: BTreeMap::new(),
        mixers: BTreeMap::new(),
        deferral_heads: BTreeMap::new(),
        max_queue: 256,
        max_batch,
        weights: BTreeMap::new(),
    };
    let state = tokio::task::spawn_blocking(move || ExpertState::load(&cfg))
        .await
        .unwrap()
        .expect("forge the models first");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router(Arc::new(state)))
            .await
            .unwrap();
    });
    url
}

async fn run(url: &str, max_batch: usize, clients: usize) -> Row {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            let url = url.to_string();
            tokio::spawn(async move {
                let mut tokens = 0;
                let mut latency = 0.0;
                for r in 0..REQUESTS / clients {
                    let k = c * (REQUESTS / clients) + r;
                    let prompt = PROMPTS[k % PROMPTS.len()];
                    let model = ["foundation", "sft-sop"][k % 2];
                    let t = Instant::now();
                    let v: serde_json::Value = client
                        .post(format!("{url}/v1/generate"))
                        .json(&serde_json::json!({
                            "mode": {"type": "single", "model": model},
                            "prompt": prompt,
                            "sampling": {"max_tokens": NEW_TOKENS, "temperature": 0.8, "seed": k},
                        }))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    latency += t.elapsed().as_secs_f64();
                    tokens += v["usage"]["completion_tokens"].as_u64().unwrap();
                }
                (tokens, latency)
            })
        })
        .collect();
    let mut tokens = 0;
    let mut latency = 0.0;
    for t in tasks {
        let (n, l) = t.await.unwrap();
        tokens += n;
        latency += l;
    }
    Row {
        max_batch,
        clients,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
        mean_latency_ms: latency / REQUESTS as f64 * 1e3,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let dir = args.iter().find(|a| !a.starts_with("--")).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    );
    let mut rows = Vec::new();
    for max_batch in [16, 1] {
        let url = serve(&dir, max_batch).await;
        // Warm-up.
        run(&url, max_batch, 1).await;
        for clients in [1, 4, 16] {
            rows.push(run(&url, max_batch, clients).await);
        }
    }
    let tps = |r: &Row| r.tokens as f64 / r.seconds;
    let base = |mb: usize| {
        rows.iter()
            .find(|r| r.max_batch == mb && r.clients == 1)
            .map(tps)
    };
    println!(
        "| max_batch | clients | tokens | seconds | tokens/s | × 1 client | mean latency ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.0} |",
            r.max_batch,
            r.clients,
            r.tokens,
            r.seconds,
            tps(r),
            tps(r) / base(r.max_batch).unwrap_or(f64::NAN),
            r.mean_latency_ms
        );
    }
    let at16 = |mb: usize| {
        rows.iter()
            .find(|r| r.max_batch == mb && r.clients == 16)
            .map(tps)
    };
    let lift = at16(16).unwrap_or(f64::NAN) / at16(1).unwrap_or(f64::NAN);
    println!("\n16 clients, batching on / off: {lift:.2}×");
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({"max_batch": r.max_batch, "clients": r.clients,
                    "tokens_per_s": tps(r), "mean_latency_ms": r.mean_latency_ms})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"rows": out, "batching_lift_at_16": lift})
        );
    }
}
