//! The wgpu device against the candle CPU path on a forged pair (tiny profile): logits of
//! several prompts within 1e-3, fused distributions within 1e-3 and greedy generation token
//! for token in `single`, `ensemble`, `btm_token` (soft and hard) and `btm_layer`; quantized
//! weights, a buffer over the device limit and a lost device are clear errors.
//!
//! Runs on any adapter; CI uses Mesa's CPU Vulkan driver (lavapipe) with `HYBRID_GPU_REQUIRE=1`
//! so that a missing adapter fails instead of skipping.

#![cfg(feature = "wgpu")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use experts::ExpertError;
use experts::forge::{ForgeOptions, ForgeProfile, forge};
use experts::fusion::{
    FusedSequence, Fusion, LayerMixer, RouterConfig, generate_fused, new_router_vars,
};
use experts::generate::SamplingParams;
use experts::loader::{LoadedModel, load_model};
use experts::model::{Path, WeightFormat};
use experts::wgpu_backend::{WgpuMixing, WgpuModel, WgpuSequence, generate_greedy};
use gpu::{GpuContext, GpuError, GpuOptions};
use protocol::Mix;
use rand::{Rng, SeedableRng};

const REQUIRE_ENV: &str = "HYBRID_GPU_REQUIRE";

fn new_context() -> Option<GpuContext> {
    match GpuContext::new(&GpuOptions::from_env()) {
        Ok(ctx) => Some(ctx),
        Err(e @ GpuError::NoAdapter { .. }) => {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set but: {e}"
            );
            eprintln!("SKIPPED: no wgpu adapter on this machine ({e})");
            None
        }
        Err(e) => panic!("GPU context: {e}"),
    }
}

fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = new_context()?;
        eprintln!("{}", ctx.report());
        Some(ctx)
    })
    .as_ref()
}

/// A tiny forged pair (real training, a few steps), once per test binary.
fn pair() -> &'static (LoadedModel, LoadedModel) {
    static PAIR: OnceLock<(LoadedModel, LoadedModel)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("forge-wgpu-tiny");
        forge(&ForgeOptions {
            out: out.clone(),
            profile: ForgeProfile {
                name: "tiny".into(),
                foundation_steps: 6,
                sft_steps: 4,
                n_general: 200,
                n_reasoning: 200,
                n_sop: 200,
                n_eval: 4,
                ..ForgeProfile::small()
            },
            seed: 5,
            force: false,
            evaluate: false,
        })
        .unwrap();
        let load = |name: &str| {
            let mut m = load_model(&out.join(name), DType::F32, &Device::Cpu).unwrap();
            m.name = name.into();
            m
        };
        (load("foundation"), load("sft-sop"))
    })
}

/// The forged pair's tokenizers and configs with random-init weights (different per expert):
/// a few training steps leave the forged models repeating one token, random weights make
/// greedy generation wander, so token-for-token equality really tests every step.
fn random_pair() -> &'static (LoadedModel, LoadedModel) {
    static PAIR: OnceLock<(LoadedModel, LoadedModel)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (a, b) = pair();
        let scramble = |m: &LoadedModel, seed: u64| {
            let mut cfg = m.decoder.config().clone();
            cfg.tie_word_embeddings = seed.is_multiple_of(2);
            let varmap = VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let decoder = experts::model::Decoder::new(&cfg, vb).unwrap();
            // Deterministic noise on top of candle's init.
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            for var in varmap.all_vars() {
                let t = var.as_tensor();
                let noise: Vec<f32> = (0..t.elem_count())
                    .map(|_| rng.random_range(-0.5f32..0.5))
                    .collect();
                let noise = Tensor::from_vec(noise, t.shape(), &Device::Cpu).unwrap();
                var.set(&(t + noise).unwrap()).unwrap();
            }
            let mut out = load_model(&m.dir, DType::F32, &Device::Cpu).unwrap();
            out.name = format!("{}-random", m.name);
            out.decoder = decoder;
            out
        };
        (scramble(a, 2), scramble(b, 3))
    })
}

fn prompts(m: &LoadedModel) -> Vec<Vec<u32>> {
    ["Question: what is 12 plus 7?", "SOP: reset the router", "a"]
        .iter()
        .map(|p| m.tokenizer.encode(p).unwrap())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn logits_match_the_candle_path() {
    let Some(ctx) = gpu() else { return };
    let (a, b) = pair();
    let (ra, rb) = random_pair();
    for m in [a, b, ra, rb] {
        let gm = WgpuModel::upload(ctx, &m.decoder).unwrap();
        for ids in prompts(m) {
            let input = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let want: Vec<f32> = m
                .decoder
                .forward(&input, None, false, false, Path::Fused)
                .unwrap()
                .logits
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // Prefill all but the last token, then decode the last one through the cache.
            let mut cache = gm.new_cache(ctx).unwrap();
            let vocab = m.decoder.config().vocab_size;
            let mut got = Vec::new();
            if ids.len() > 1 {
                got = gm.logits(ctx, &ids[..ids.len() - 1], &mut cache).unwrap();
            }
            got.extend(gm.logits(ctx, &ids[ids.len() - 1..], &mut cache).unwrap());
            assert_eq!(got.len(), ids.len() * vocab);
            let d = max_diff(&want, &got);
            eprintln!("{} {:?}: max |logit diff| {d:e}", m.name, &ids);
            assert!(d < 1e-3, "{}: {d}", m.name);
        }
    }
}

fn router_for(a: &LoadedModel, b: &LoadedModel) -> experts::fusion::TokenRouter {
    let varmap = VarMap::new();
    let cfg = RouterConfig {
        kind: "btm_token".into(),
        experts: vec![a.name.clone(), b.name.clone()],
        hidden_size: a.decoder.config().hidden_size,
        router_hidden: 16,
    };
    let r = new_router_vars(&cfg, &varmap, &Device::Cpu).unwrap();
    // Random init: give the router weights far from uniform so mixing is really exercised.
    for var in varmap.all_vars() {
        var.set(&(var.as_tensor() * 4.0).unwrap()).unwrap();
    }
    r
}

/// Every mode: the fused distribution of the prompt and of a decode step within 1e-3, and
/// greedy generation identical token for token.
#[test]
fn fusion_modes_match_the_candle_path_on_the_forged_pair() {
    let Some(ctx) = gpu() else { return };
    let (a, b) = pair();
    fusion_modes_match(ctx, a, b);
}

#[test]
fn fusion_modes_match_the_candle_path_on_random_weights() {
    let Some(ctx) = gpu() else { return };
    let (a, b) = random_pair();
    let distinct = fusion_modes_match(ctx, a, b);
    assert!(
        distinct >= 10,
        "only {distinct} distinct tokens: too little to compare"
    );
}

/// Returns how many distinct tokens the greedy generations produced.
fn fusion_modes_match(ctx: &GpuContext, a: &LoadedModel, b: &LoadedModel) -> usize {
    let mut distinct = std::collections::BTreeSet::new();
    let ga = WgpuModel::upload(ctx, &a.decoder).unwrap();
    let gb = WgpuModel::upload(ctx, &b.decoder).unwrap();
    let router = router_for(a, b);
    let layers = a.decoder.config().num_hidden_layers;
    let names = vec![a.name.clone(), b.name.clone()];
    let mixer = LayerMixer::constant(&[0.3, 0.7], layers, names, &Device::Cpu).unwrap();
    let modes: Vec<(&str, Fusion<'_>)> = vec![
        ("single", Fusion::Single(b)),
        (
            "ensemble",
            Fusion::Ensemble {
                models: vec![a, b],
                weights: vec![1.0, 3.0],
                mix: Mix::Linear,
            },
        ),
        (
            "ensemble_log",
            Fusion::Ensemble {
                models: vec![a, b],
                weights: vec![1.0, 3.0],
                mix: Mix::Log,
            },
        ),
        (
            "btm_token",
            Fusion::BtmToken {
                models: vec![a, b],
                router: &router,
                hard: false,
            },
        ),
        (
            "btm_token_hard",
            Fusion::BtmToken {
                models: vec![a, b],
                router: &router,
                hard: true,
            },
        ),
        (
            "btm_layer",
            Fusion::BtmLayer {
                models: vec![a, b],
                mixer: &mixer,
            },
        ),
    ];
    let params = SamplingParams {
        max_tokens: 12,
        ..SamplingParams::default()
    };
    for (name, fusion) in modes {
        let gpu_models: Vec<&WgpuModel> = fusion
            .models()
            .iter()
            .map(|m| if m.name == a.name { &ga } else { &gb })
            .collect();
        let eos: Vec<u32> = fusion
            .models()
            .iter()
            .flat_map(|m| m.eos_token_ids.iter().copied())
            .collect();
        let mut total = 0;
        for ids in prompts(a) {
            // Distributions: prompt, then one decode step.
            let mut cpu = FusedSequence::new(fusion.clone()).unwrap();
            let mixing = WgpuMixing::of(ctx, &fusion).unwrap();
            let mut dev = WgpuSequence::new(ctx, gpu_models.clone(), mixing.clone()).unwrap();
            for step in [ids.as_slice(), &[7u32]] {
                let want = cpu.step(step).unwrap();
                let got = dev.step_probs(ctx, step).unwrap();
                let d = max_diff(&want.probs.to_vec1::<f32>().unwrap(), &got.value);
                assert!(d < 1e-3, "{name}: probs differ by {d}");
                let dw = max_diff(&want.weights, &got.weights);
                assert!(
                    dw < 1e-3,
                    "{name}: weights {:?} vs {:?}",
                    want.weights,
                    got.weights
                );
            }
            // Greedy generation: the candle engine's path (continuous-batching decode steps)
            // against the device, where only the token ids come back.
            let want = generate_fused(fusion.clone(), &ids, &params, |_, _| true)
                .unwrap()
                .generation
                .tokens;
            let mut dev = WgpuSequence::new(ctx, gpu_models.clone(), mixing).unwrap();
            let got = generate_greedy(ctx, &mut dev, &ids, params.max_tokens, &eos).unwrap();
            eprintln!("{name}: {} tokens {got:?}", got.len());
            assert_eq!(want, got, "{name}: greedy tokens differ");
            total += got.len();
            distinct.extend(got.iter().copied());
        }
        assert!(
            total > 0,
            "{name}: nothing was generated, the comparison is empty"
        );
    }
    distinct.len()
}

#[test]
fn quantized_weights_are_refused_at_upload() {
    let Some(ctx) = gpu() else { return };
    let (a, _) = pair();
    let mut decoder = a.decoder.clone();
    let n = decoder.quantize(WeightFormat::Q8_0).unwrap();
    assert!(n > 0);
    let e = WgpuModel::upload(ctx, &decoder).unwrap_err().to_string();
    assert!(e.contains("not dense") && e.contains("f32"), "{e}");
}

#[test]
fn a_tensor_over_the_buffer_limit_is_a_clear_error() {
    let Some(ctx) = gpu() else { return };
    let limit = ctx.report().max_tensor_bytes();
    let (a, _) = pair();
    let mut cfg = a.decoder.config().clone();
    // An embedding table one row over the limit.
    cfg.hidden_size = 256;
    cfg.num_hidden_layers = 1;
    cfg.intermediate_size = 8;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.head_dim = 64;
    cfg.vocab_size = (limit / (4 * 256)) as usize + 1;
    cfg.tie_word_embeddings = true;
    let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
    let decoder = experts::model::Decoder::new(&cfg, vb).unwrap();
    let e = WgpuModel::upload(ctx, &decoder).unwrap_err();
    assert!(
        matches!(e, ExpertError::Gpu(GpuError::BufferTooLarge { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("exceeds the device limit"), "{e}");
    // The device is still usable.
    assert!(ctx.is_healthy());
}

#[test]
fn a_lost_device_is_an_error_not_a_panic() {
    // A context of its own: losing it must not break the other tests.
    let Some(ctx) = new_context() else { return };
    let (a, _) = pair();
    let gm = WgpuModel::upload(&ctx, &a.decoder).unwrap();
    let mut seq = WgpuSequence::new(&ctx, vec![&gm], WgpuMixing::Single).unwrap();
    seq.step_greedy(&ctx, &[1, 2, 3]).unwrap();
    ctx.simulate_device_loss();
    assert!(!ctx.is_healthy());
    let e = seq.step_greedy(&ctx, &[4]).unwrap_err();
    assert!(
        matches!(e, ExpertError::Gpu(GpuError::DeviceLost { .. })),
        "{e}"
    );
}

/// `expert serve` with `device: wgpu`, in-process on a loopback port: greedy text identical to
/// the candle path; after the device is lost `/health` says unhealthy, requests get a clear 503
/// and the process keeps serving `/health`.
#[test]
fn the_server_reports_a_lost_device() {
    if gpu().is_none() {
        return;
    }
    let (a, _) = pair();
    let dir = a.dir.parent().unwrap().to_path_buf();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = experts::serve_config::ServeConfig {
            models: std::collections::BTreeMap::from([(
                "foundation".to_string(),
                dir.join("foundation"),
            )]),
            device: "wgpu".into(),
            routers: Default::default(),
            mixers: Default::default(),
            deferral_heads: Default::default(),
            max_queue: 4,
            max_batch: 2,
            weights: Default::default(),
        };
        let state = tokio::task::spawn_blocking(move || experts::server::ExpertState::load(&cfg))
            .await
            .unwrap()
            .unwrap();
        let state = std::sync::Arc::new(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = experts::server::router(state.clone());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let health = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);

        let prompt = "Question: what is 12 plus 7?";
        let body = serde_json::json!({
            "mode": {"type": "single", "model": "foundation"},
            "prompt": prompt,
            "sampling": {"max_tokens": 8, "temperature": 0},
        });
        let r = client
            .post(format!("{url}/v1/generate"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        let ids = a.tokenizer.encode(prompt).unwrap();
        let params = SamplingParams {
            max_tokens: 8,
            ..SamplingParams::default()
        };
        let want = generate_fused(Fusion::Single(a), &ids, &params, |_, _| true).unwrap();
        assert_eq!(v["text"], want.generation.text.as_str(), "{v}");
        // Sampling reads the distribution back and draws with the same seeded sampler.
        let sampled = serde_json::json!({
            "mode": {"type": "single", "model": "foundation"},
            "prompt": prompt,
            "sampling": {"max_tokens": 8, "temperature": 1.5, "seed": 11},
        });
        let v: serde_json::Value = client
            .post(format!("{url}/v1/generate"))
            .json(&sampled)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let params = SamplingParams {
            max_tokens: 8,
            temperature: 1.5,
            seed: 11,
            ..SamplingParams::default()
        };
        let want = generate_fused(Fusion::Single(a), &ids, &params, |_, _| true).unwrap();
        assert_eq!(v["text"], want.generation.text.as_str(), "{v}");

        state
            .registry
            .gpu
            .as_ref()
            .expect("device: wgpu holds a GPU")
            .ctx
            .simulate_device_loss();
        let health = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 503);
        let h: serde_json::Value = health.json().await.unwrap();
        assert_eq!(h["status"], "unhealthy", "{h}");
        let r = client
            .post(format!("{url}/v1/generate"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let e: serde_json::Value = r.json().await.unwrap();
        let msg = e["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("device lost"), "{e}");
        // Still up.
        let health = client.get(format!("{url}/health")).send().await.unwrap();
        assert_eq!(health.status(), 503);
        server.abort();
    });
}

/// `expert serve` with `device: wgpu`: the adapter report is logged before `listening on`;
/// with no matching adapter start-up fails with a clear error instead.
#[test]
fn expert_serve_logs_the_adapter_or_names_the_missing_one() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    if gpu().is_none() {
        return;
    }
    let (a, _) = pair();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "experts:\n  models: {{foundation: {}}}\n  device: wgpu\n",
            a.dir.display()
        ),
    )
    .unwrap();
    let serve = |adapter: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_expert"));
        cmd.args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match adapter {
            Some(a) => cmd.env(gpu::ADAPTER_ENV, a),
            None => cmd.env_remove(gpu::ADAPTER_ENV),
        };
        cmd.spawn().unwrap()
    };

    let out = serve(Some("no-such-adapter")).wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no GPU adapter") && err.contains("no-such-adapter"),
        "{err}"
    );

    let mut child = serve(None);
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let done = line.contains("listening on http://");
        lines.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let log = lines.join("\n");
    assert!(log.contains("listening on http://"), "{log}");
    let report = lines
        .iter()
        .position(|l| {
            l.contains("wgpu device: adapter") && l.contains("max_storage_buffer_binding_size")
        })
        .unwrap_or_else(|| panic!("no adapter report in:\n{log}"));
    assert!(report < lines.len() - 1, "{log}");
}
