//! The forged pair, end to end: forge (small profile) → HF directories that load → the
//! domain split on held-out eval sets → generation (library and `expert generate`) → every
//! kind of broken model directory is a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use experts::forge::{ForgeOptions, ForgeProfile, ForgeReport, forge};
use experts::generate::{FinishReason, SamplingParams, generate};
use experts::loader::load_model;

/// Forges the small pair once per test binary (cached under the target directory; the
/// forge itself skips complete models).
fn forged() -> &'static (PathBuf, ForgeReport) {
    static FORGED: OnceLock<(PathBuf, ForgeReport)> = OnceLock::new();
    FORGED.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("forge-small");
        let report = forge(&ForgeOptions {
            out: out.clone(),
            profile: ForgeProfile::small(),
            seed: 42,
            force: false,
            evaluate: true,
        })
        .unwrap();
        (out, report)
    })
}

#[test]
fn the_pair_shows_the_domain_split() {
    let (out, report) = forged();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join("foundation").join(f).exists(), "{f}");
        assert!(out.join("sft-sop").join(f).exists(), "{f}");
    }
    assert!(out.join("eval/reasoning.jsonl").exists() && out.join("eval/sop.jsonl").exists());
    let f = &report.scores[0];
    let s = &report.scores[1];
    assert_eq!(
        (f.model.as_str(), s.model.as_str()),
        ("foundation", "sft-sop")
    );
    eprintln!("{:#?}", report.scores);
    // Held-out likelihood of the exact references: each model is better on its own domain.
    assert!(f.reasoning_nll < s.reasoning_nll, "{f:?} {s:?}");
    assert!(s.sop_nll < f.sop_nll, "{f:?} {s:?}");
    assert!(s.sop_f1 > f.sop_f1, "{f:?} {s:?}");
    assert!(f.reasoning_accuracy >= s.reasoning_accuracy, "{f:?} {s:?}");
    // Training really trained.
    let r = &report.foundation_record;
    assert!(r.final_loss < r.first_loss * 0.5, "{r:?}");
}

#[test]
fn forging_is_deterministic() {
    let tiny = ForgeProfile {
        name: "tiny".into(),
        foundation_steps: 6,
        sft_steps: 4,
        n_general: 200,
        n_reasoning: 200,
        n_sop: 200,
        n_eval: 4,
        ..ForgeProfile::small()
    };
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for d in &dirs {
        forge(&ForgeOptions {
            out: d.path().to_path_buf(),
            profile: tiny.clone(),
            seed: 7,
            force: false,
            evaluate: false,
        })
        .unwrap();
    }
    for f in [
        "foundation/model.safetensors",
        "sft-sop/model.safetensors",
        "foundation/tokenizer.json",
        "eval/sop.jsonl",
    ] {
        let a = std::fs::read(dirs[0].path().join(f)).unwrap();
        let b = std::fs::read(dirs[1].path().join(f)).unwrap();
        assert!(a == b, "{f} differs between two runs with the same seed");
    }
}

/// The multi-expert forge: three area branches, a four-category eval set and classifier
/// data; same seed → same files; a second run reuses every complete model.
#[test]
fn area_experts_are_forged_resumably() {
    let tiny = ForgeProfile {
        name: "tiny".into(),
        foundation_steps: 4,
        sft_steps: 3,
        n_general: 200,
        n_reasoning: 200,
        n_sop: 200,
        n_eval: 8,
        ..ForgeProfile::small()
    };
    let dir = tempfile::tempdir().unwrap();
    let opts = ForgeOptions {
        out: dir.path().to_path_buf(),
        profile: tiny,
        seed: 11,
        force: false,
        evaluate: false,
    };
    let report = experts::forge::forge_areas(&opts).unwrap();
    let names: Vec<&str> = report.experts.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["sft-customer-service", "sft-sales", "sft-tech-support"]
    );
    for (_, d, r) in &report.experts {
        assert_eq!(r.steps, 3);
        load_model(d, DType::F32, &Device::Cpu).unwrap();
    }
    let labels: std::collections::BTreeSet<u64> = std::fs::read_to_string(&report.eval_file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["label"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(labels, [0, 1, 2, 3].into_iter().collect());
    let train = std::fs::read_to_string(report.classifier_dir.join("train.jsonl")).unwrap();
    assert!(
        train.lines().count() >= 4 * 100,
        "{}",
        train.lines().count()
    );
    assert_eq!(
        experts::forge::area_categories(),
        ["reasoning", "customer_service", "sales", "tech_support"]
    );

    // A second run trains nothing: every forge.json (written last) is untouched.
    let stamp = |m: &str| {
        std::fs::metadata(dir.path().join(m).join("forge.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let models = [
        "foundation",
        "sft-sop",
        "sft-customer-service",
        "sft-sales",
        "sft-tech-support",
    ];
    let before: Vec<_> = models.iter().map(|m| stamp(m)).collect();
    let again = experts::forge::forge_areas(&opts).unwrap();
    let after: Vec<_> = models.iter().map(|m| stamp(m)).collect();
    assert_eq!(before, after, "a complete model was trained again");
    assert_eq!(
        again.experts[1].2.final_loss,
        report.experts[1].2.final_loss
    );
}

#[test]
fn generation_streams_and_stops() {
    let (out, _) = forged();
    let model = load_model(&out.join("sft-sop"), DType::F32, &Device::Cpu).unwrap();
    let prompt = model
        .chat_template
        .as_ref()
        .unwrap()
        .render(
            &[experts::chat::ChatMessage::user(
                "How do I reset my password?",
            )],
            true,
        )
        .unwrap();
    let ids = model.tokenizer.encode(&prompt).unwrap();
    let params = SamplingParams {
        max_tokens: 40,
        ..SamplingParams::default()
    };
    let mut streamed = String::new();
    let g = generate(&model, &ids, &params, |p| {
        streamed.push_str(p);
        true
    })
    .unwrap();
    assert_eq!(streamed, g.text);
    assert!(!g.text.is_empty());
    // Greedy is deterministic.
    let again = generate(&model, &ids, &params, |_| true).unwrap();
    assert_eq!(again.tokens, g.tokens);

    // A stop string cuts the text before it.
    let first_word: String = g.text.chars().skip(3).take(4).collect();
    let stopped = generate(
        &model,
        &ids,
        &SamplingParams {
            stop: vec![first_word.clone()],
            ..params.clone()
        },
        |_| true,
    )
    .unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop);
    assert!(!stopped.text.contains(&first_word));
    assert!(g.text.starts_with(&stopped.text));

    // Sampling with a seed is reproducible.
    let sampled = SamplingParams {
        temperature: 0.9,
        top_p: Some(0.9),
        top_k: Some(20),
        seed: 5,
        ..params.clone()
    };
    let a = generate(&model, &ids, &sampled, |_| true).unwrap();
    let b = generate(&model, &ids, &sampled, |_| true).unwrap();
    assert_eq!(a.tokens, b.tokens);

    // Cancelling from the callback stops generation.
    let c = generate(&model, &ids, &params, |_| false).unwrap();
    assert_eq!(c.finish_reason, FinishReason::Cancelled);

    // A prompt longer than the context is refused.
    let long = vec![ids[0]; 300];
    let e = generate(&model, &long, &params, |_| true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("context"), "{e}");
    let e = generate(&model, &[], &params, |_| true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn load_err(dir: &Path) -> String {
    load_model(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn broken_model_directories_are_clear_errors() {
    let (out, _) = forged();
    let good = out.join("foundation");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("m");

    assert!(load_err(&tmp.path().join("nowhere")).contains("config.json is missing"));

    copy_dir(&good, &d);
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    assert!(load_err(&d).contains("tokenizer.json is missing"));

    copy_dir(&good, &d);
    let w = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &w[..w.len() / 3]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("corrupt safetensors"), "{e}");
    std::fs::write(
        d.join("model.safetensors"),
        b"not a safetensors file at all",
    )
    .unwrap();
    assert!(load_err(&d).contains("corrupt safetensors"));
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert!(load_err(&d).contains("model.safetensors"));

    copy_dir(&good, &d);
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"hidden_size\": 64", "\"hidden_size\": 80"),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(e.contains("do not fit"), "{e}");
    std::fs::write(
        d.join("config.json"),
        cfg.replace("Qwen2ForCausalLM", "MambaForCausalLM"),
    )
    .unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("unsupported architecture") && e.contains("Mamba"),
        "{e}"
    );
    std::fs::write(d.join("config.json"), &cfg[..cfg.len() / 2]).unwrap();
    assert!(load_err(&d).contains("bad config.json"));

    copy_dir(&good, &d);
    std::fs::write(d.join("tokenizer.json"), b"{\"version\": 3").unwrap();
    assert!(load_err(&d).contains("bad tokenizer.json"));
}

#[test]
fn expert_generate_streams_to_stdout() {
    let (out, _) = forged();
    let bin = env!("CARGO_BIN_EXE_expert");
    let o = Command::new(bin)
        .args(["generate", "--model"])
        .arg(out.join("sft-sop"))
        .args([
            "--prompt",
            "我想退货",
            "--max_tokens",
            "20",
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(!text.trim().is_empty());
    assert!(String::from_utf8_lossy(&o.stderr).contains("tok/s"));

    let o = Command::new(bin)
        .args(["generate", "--model", "/nonexistent", "--prompt", "hi"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("config.json is missing") && !e.contains("panicked"),
        "{e}"
    );

    let o = Command::new(bin)
        .args(["generate", "--model"])
        .arg(out.join("sft-sop"))
        .args(["--prompt", "hi", "--top_p", "2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("top_p"));

    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let o = Command::new(bin)
            .args(["generate", "--model"])
            .arg(out.join("sft-sop"))
            .arg("--prompt")
            .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe bad"))
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("UTF-8") && !e.contains("panicked"), "{e}");
    }
}

mod fusion {
    use super::*;
    use experts::fusion::{Fusion, LayerMixer, RouterConfig, TokenRouter, generate_fused};
    use protocol::Mix;

    fn pair() -> (experts::loader::LoadedModel, experts::loader::LoadedModel) {
        let (out, _) = forged();
        (
            load_model(&out.join("foundation"), DType::F32, &Device::Cpu).unwrap(),
            load_model(&out.join("sft-sop"), DType::F32, &Device::Cpu).unwrap(),
        )
    }

    fn prompts(m: &experts::loader::LoadedModel) -> Vec<Vec<u32>> {
        [
            "How do I reset my password?",
            "What is 23 + 19?",
            "我想退货，怎么办？",
        ]
        .iter()
        .map(|p| {
            let text = m
                .chat_template
                .as_ref()
                .unwrap()
                .render(&[experts::chat::ChatMessage::user(*p)], true)
                .unwrap();
            m.tokenizer.encode(&text).unwrap()
        })
        .collect()
    }

    /// A router with fresh (untrained) weights and 0.6 / 0.4 layer coefficients:
    /// mixtures that are neither expert.
    fn untrained_router_and_mixer(a: &experts::loader::LoadedModel) -> (TokenRouter, LayerMixer) {
        let cfg = RouterConfig {
            kind: "btm_token".into(),
            experts: vec!["foundation".into(), "sft-sop".into()],
            hidden_size: a.decoder.config().hidden_size,
            router_hidden: 8,
        };
        let varmap = candle_nn::VarMap::new();
        let router = experts::fusion::new_router_vars(&cfg, &varmap, &Device::Cpu).unwrap();
        let layers = a.decoder.config().num_hidden_layers;
        let names = vec!["foundation".to_string(), "sft-sop".to_string()];
        let mixer = LayerMixer::constant(&[0.6, 0.4], layers, names, &Device::Cpu).unwrap();
        (router, mixer)
    }

    /// A fixed, untrained deferral head (weights a deterministic pattern).
    fn pattern_head(a: &experts::loader::LoadedModel) -> experts::defer::DeferralHead {
        let h = a.decoder.config().hidden_size;
        let w: Vec<f32> = (0..h)
            .map(|j| ((j * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let config = experts::defer::DeferralConfig {
            kind: "defer".into(),
            experts: vec!["foundation".into(), "sft-sop".into()],
            hidden_size: h,
        };
        experts::defer::DeferralHead::from_weights(config, &w, 0.0, &Device::Cpu).unwrap()
    }

    fn defer<'m>(
        models: &[&'m experts::loader::LoadedModel],
        head: &'m experts::defer::DeferralHead,
        threshold: f32,
        lazy: bool,
    ) -> Fusion<'m> {
        Fusion::Defer {
            models: models.to_vec(),
            head,
            threshold,
            lazy,
        }
    }

    /// `defer`: a head that always defers gives the second expert's tokens, one that never
    /// does the first's (at cost 1, the second expert never run); with a head that defers
    /// some tokens, lazy catch-up gives exactly the tokens of running both experts at every
    /// step, at a lower cost, through the same batched step.
    #[test]
    fn defer_always_never_and_lazy_equals_eager() {
        use experts::defer::{DeferralConfig, DeferralHead};
        let (a, b) = pair();
        let models = [&a, &b];
        let config = DeferralConfig {
            kind: "defer".into(),
            experts: vec!["foundation".into(), "sft-sop".into()],
            hidden_size: a.decoder.config().hidden_size,
        };
        let always = DeferralHead::forced(config.clone(), true, &Device::Cpu).unwrap();
        let never = DeferralHead::forced(config, false, &Device::Cpu).unwrap();
        let params = SamplingParams {
            max_tokens: 24,
            ..SamplingParams::default()
        };
        let run =
            |f: Fusion<'_>, ids: &[u32]| generate_fused(f, ids, &params, |_, _| true).unwrap();
        let head = pattern_head(&a);
        let mut mixed_seen = false;
        for ids in prompts(&a) {
            let single_a = tokens(Fusion::Single(&a), &ids);
            let single_b = tokens(Fusion::Single(&b), &ids);
            for lazy in [true, false] {
                let g = run(defer(&models, &always, 0.5, lazy), &ids);
                assert_eq!(g.generation.tokens, single_b, "always, lazy {lazy}");
                assert!(g.routing_weights.iter().all(|w| w == &[0.0, 1.0]));
                let g = run(defer(&models, &never, 0.5, lazy), &ids);
                assert_eq!(g.generation.tokens, single_a, "never, lazy {lazy}");
                if lazy {
                    assert_eq!(g.cost, 1.0);
                    let positions = g.generation.prompt_tokens + g.generation.tokens.len();
                    assert_eq!(g.token_forwards, positions as u64);
                } else {
                    assert!(g.cost > 1.9, "eager runs both: {}", g.cost);
                }
            }
            // A threshold at which this head defers some tokens and not others.
            for k in 1..20 {
                let eta = k as f32 * 0.05;
                let eager = run(defer(&models, &head, eta, false), &ids);
                let rate = eager.routing_weights.iter().map(|w| w[1]).sum::<f32>()
                    / eager.routing_weights.len().max(1) as f32;
                if rate == 0.0 || rate == 1.0 {
                    continue;
                }
                mixed_seen = true;
                let lazy = run(defer(&models, &head, eta, true), &ids);
                assert_eq!(lazy.generation.tokens, eager.generation.tokens, "η {eta}");
                assert_eq!(lazy.routing_weights, eager.routing_weights);
                assert!(lazy.cost <= eager.cost, "{} vs {}", lazy.cost, eager.cost);
                assert!(lazy.cost > 1.0);
                break;
            }
        }
        assert!(mixed_seen, "the pattern head never mixed its deferrals");
        // A head for other experts is refused.
        let other = DeferralHead::forced(
            DeferralConfig {
                kind: "defer".into(),
                experts: vec!["x".into(), "y".into()],
                hidden_size: 3,
            },
            true,
            &Device::Cpu,
        )
        .unwrap();
        let err = experts::fusion::FusedSequence::new(defer(&models, &other, 0.5, true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit"), "{err}");
        let err = experts::fusion::FusedSequence::new(defer(&models, &always, 1.5, true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("threshold"), "{err}");
    }

    fn tokens(f: Fusion<'_>, ids: &[u32]) -> Vec<u32> {
        let params = SamplingParams {
            max_tokens: 24,
            ..SamplingParams::default()
        };
        generate_fused(f, ids, &params, |_, _| true)
            .unwrap()
            .generation
            .tokens
    }

    /// The log-space ensemble is the renormalised weighted geometric mean of the experts'
    /// distributions, computed here from each expert alone; the linear one is their
    /// weighted mean; and the two differ.
    #[test]
    fn log_ensemble_is_the_weighted_geometric_mean() {
        use experts::fusion::FusedSequence;
        let (a, b) = pair();
        let models = [&a, &b];
        let ids = &prompts(&a)[0];
        let alone = |m| {
            FusedSequence::new(Fusion::Single(m))
                .unwrap()
                .step(ids)
                .unwrap()
                .probs
        };
        let (pa, pb) = (alone(&a), alone(&b));
        let (la, lb) = (pa.log().unwrap(), pb.log().unwrap());
        let log_by_hand = candle_nn::ops::softmax_last_dim(
            &((la * 0.75).unwrap() + (lb * 0.25).unwrap()).unwrap(),
        )
        .unwrap();
        let linear_by_hand = ((&pa * 0.75).unwrap() + (&pb * 0.25).unwrap()).unwrap();
        let fused = |mix| {
            FusedSequence::new(Fusion::Ensemble {
                models: models.to_vec(),
                weights: vec![3.0, 1.0],
                mix,
            })
            .unwrap()
            .step(ids)
            .unwrap()
            .probs
        };
        let max_diff = |x: &candle_core::Tensor, y: &candle_core::Tensor| -> f32 {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let (log, linear) = (fused(Mix::Log), fused(Mix::Linear));
        assert!(max_diff(&log, &log_by_hand) < 1e-5);
        assert!(max_diff(&linear, &linear_by_hand) < 1e-6);
        assert!(
            max_diff(&log, &linear) > 1e-3,
            "the two mixes should differ"
        );
        let total: f32 = log.sum_all().unwrap().to_scalar().unwrap();
        assert!((total - 1.0).abs() < 1e-4);
    }

    #[test]
    fn degenerate_mixtures_equal_the_single_expert() {
        let (a, b) = pair();
        let models = [&a, &b];
        let cfg = RouterConfig {
            kind: "btm_token".into(),
            experts: vec!["foundation".into(), "sft-sop".into()],
            hidden_size: a.decoder.config().hidden_size,
            router_hidden: 8,
        };
        let to_a = TokenRouter::forced(cfg.clone(), 0, &Device::Cpu).unwrap();
        let to_b = TokenRouter::forced(cfg, 1, &Device::Cpu).unwrap();
        let layers = a.decoder.config().num_hidden_layers;
        let names = vec!["foundation".to_string(), "sft-sop".to_string()];
        // The heads' logits are mixed with the last coefficients: (1, 0) is single(A) and
        // (0, 1) is single(B).
        let mix_a = LayerMixer::constant(&[1.0, 0.0], layers, names.clone(), &Device::Cpu).unwrap();
        let mix_b = LayerMixer::constant(&[0.0, 1.0], layers, names, &Device::Cpu).unwrap();
        let mut differ = false;
        for ids in prompts(&a) {
            let single_a = tokens(Fusion::Single(&a), &ids);
            let single_b = tokens(Fusion::Single(&b), &ids);
            differ |= single_a != single_b;
            // The library's plain generation is the same path as single.
            let params = SamplingParams {
                max_tokens: 24,
                ..SamplingParams::default()
            };
            assert_eq!(
                generate(&a, &ids, &params, |_| true).unwrap().tokens,
                single_a
            );

            for mix in [Mix::Linear, Mix::Log] {
                assert_eq!(
                    tokens(
                        Fusion::Ensemble {
                            models: models.to_vec(),
                            weights: vec![1.0, 0.0],
                            mix,
                        },
                        &ids
                    ),
                    single_a,
                    "{mix:?}"
                );
                assert_eq!(
                    tokens(
                        Fusion::Ensemble {
                            models: models.to_vec(),
                            weights: vec![0.0, 1.0],
                            mix,
                        },
                        &ids
                    ),
                    single_b,
                    "{mix:?}"
                );
            }
            for hard in [false, true] {
                assert_eq!(
                    tokens(
                        Fusion::BtmToken {
                            models: models.to_vec(),
                            router: &to_a,
                            hard
                        },
                        &ids
                    ),
                    single_a
                );
                assert_eq!(
                    tokens(
                        Fusion::BtmToken {
                            models: models.to_vec(),
                            router: &to_b,
                            hard
                        },
                        &ids
                    ),
                    single_b
                );
            }
            assert_eq!(
                tokens(
                    Fusion::BtmLayer {
                        models: models.to_vec(),
                        mixer: &mix_a
                    },
                    &ids
                ),
                single_a
            );
            assert_eq!(
                tokens(
                    Fusion::BtmLayer {
                        models: models.to_vec(),
                        mixer: &mix_b
                    },
                    &ids
                ),
                single_b
            );
        }
        assert!(
            differ,
            "the two experts should answer differently somewhere"
        );
    }

    /// Scoring by teacher forcing (`score_continuations`, what `POST /v1/score` runs) gives,
    /// in every mode, the log-probabilities that generation's one-token-at-a-time step
    /// gives the same tokens; for one model, those of a plain batched forward too.
    #[test]
    fn teacher_forced_scores_equal_the_stepwise_distributions() {
        use candle_core::{D, Tensor};
        use experts::fusion::{FusedSequence, score_continuations};
        use experts::model::Path as NumPath;
        let (a, b) = pair();
        let models = [&a, &b];
        let (router, mixer) = untrained_router_and_mixer(&a);
        let head = pattern_head(&a);
        let prompt = &prompts(&a)[0];
        let eos = a.eos_token_ids[0];
        let continuations: Vec<Vec<u32>> = [
            "Open the settings and choose reset password.",
            "The answer is 42.",
            "x",
        ]
        .iter()
        .map(|c| {
            let mut ids = a.tokenizer.encode(c).unwrap();
            ids.push(eos);
            ids
        })
        .collect();
        let modes = [
            Fusion::Single(&a),
            Fusion::Ensemble {
                models: models.to_vec(),
                weights: vec![0.7, 0.3],
                mix: Mix::Linear,
            },
            Fusion::Ensemble {
                models: models.to_vec(),
                weights: vec![0.7, 0.3],
                mix: Mix::Log,
            },
            defer(&models, &head, 0.5, true),
            Fusion::BtmToken {
                models: models.to_vec(),
                router: &router,
                hard: false,
            },
            Fusion::BtmLayer {
                models: models.to_vec(),
                mixer: &mixer,
            },
        ];
        for fusion in &modes {
            let scored = score_continuations(fusion, prompt, &continuations).unwrap();
            for (c, lp) in continuations.iter().zip(&scored) {
                assert_eq!(lp.len(), c.len());
                let mut seq = FusedSequence::new(fusion.clone()).unwrap();
                let mut probs = seq.step(prompt).unwrap().probs;
                for (i, &t) in c.iter().enumerate() {
                    let p: f32 = probs.get(t as usize).unwrap().to_scalar().unwrap();
                    assert!(
                        (p.ln() - lp[i]).abs() < 1e-4,
                        "{fusion:?} position {i}: step {} vs teacher-forced {}",
                        p.ln(),
                        lp[i]
                    );
                    if i + 1 < c.len() {
                        probs = seq.step(&[t]).unwrap().probs;
                    }
                }
            }
        }
        // One model: the plain batched forward over prompt + continuation agrees.
        let single = score_continuations(&Fusion::Single(&a), prompt, &continuations).unwrap();
        for (c, lp) in continuations.iter().zip(&single) {
            let ids: Vec<u32> = prompt.iter().chain(c).copied().collect();
            let input = Tensor::new(&ids[..ids.len() - 1], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = a
                .decoder
                .forward(&input, None, false, false, NumPath::Fused)
                .unwrap()
                .logits
                .squeeze(0)
                .unwrap();
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
            for (i, &t) in c.iter().enumerate() {
                let want: f32 = logp
                    .get(prompt.len() - 1 + i)
                    .unwrap()
                    .get(t as usize)
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(
                    (want - lp[i]).abs() < 1e-4,
                    "position {i}: {want} vs {}",
                    lp[i]
                );
            }
        }

        // Bad input: an empty continuation or prompt, more positions than the context,
        // hard routing (defined one position at a time).
        let e = |r: experts::error::Result<Vec<Vec<f32>>>| r.unwrap_err().to_string();
        assert!(e(score_continuations(&modes[0], prompt, &[vec![]])).contains("continuation 0"));
        assert!(e(score_continuations(&modes[0], &[], &continuations)).contains("prompt"));
        let ctx = a.decoder.config().max_position_embeddings;
        let long = vec![vec![eos; ctx]];
        assert!(e(score_continuations(&modes[0], prompt, &long)).contains("context"));
        let hard = Fusion::BtmToken {
            models: models.to_vec(),
            router: &router,
            hard: true,
        };
        assert!(e(score_continuations(&hard, prompt, &continuations)).contains("soft"));
    }

    /// Continuous batching: sequences of every mode, with different prompts, joining at
    /// different steps and leaving when they end, decode together through `step_batch`
    /// and produce exactly what each produces alone.
    #[test]
    fn continuous_batch_equals_each_sequence_alone() {
        use experts::fusion::{Decoding, FusedSequence, step_batch};
        let (a, b) = pair();
        let models = [&a, &b];
        let (router, mixer) = untrained_router_and_mixer(&a);
        let head = pattern_head(&a);
        let always =
            experts::defer::DeferralHead::forced(head.config.clone(), true, &Device::Cpu).unwrap();
        let ps = prompts(&a);
        let jobs: Vec<(Fusion<'_>, &Vec<u32>, usize)> = vec![
            (Fusion::Single(&a), &ps[0], 24),
            (defer(&models, &always, 0.5, true), &ps[2], 20),
            (Fusion::Single(&b), &ps[1], 7),
            (defer(&models, &head, 0.5, true), &ps[0], 24),
            (defer(&models, &always, 0.5, true), &ps[1], 16),
            (
                Fusion::Ensemble {
                    models: models.to_vec(),
                    weights: vec![0.5, 0.5],
                    mix: Mix::Linear,
                },
                &ps[2],
                24,
            ),
            (
                Fusion::Ensemble {
                    models: models.to_vec(),
                    weights: vec![0.8, 0.2],
                    mix: Mix::Log,
                },
                &ps[1],
                16,
            ),
            (
                Fusion::BtmToken {
                    models: models.to_vec(),
                    router: &router,
                    hard: false,
                },
                &ps[0],
                12,
            ),
            (
                Fusion::BtmLayer {
                    models: models.to_vec(),
                    mixer: &mixer,
                },
                &ps[1],
                24,
            ),
            (
                Fusion::BtmLayer {
                    models: models.to_vec(),
                    mixer: &mixer,
                },
                &ps[2],
                5,
            ),
            (Fusion::Single(&a), &ps[2], 24),
        ];
        let params = |n: usize| SamplingParams {
            max_tokens: n,
            ..SamplingParams::default()
        };
        let alone: Vec<Vec<u32>> = jobs
            .iter()
            .map(|(f, ids, n)| {
                generate_fused(f.clone(), ids, &params(*n), |_, _| true)
                    .unwrap()
                    .generation
                    .tokens
            })
            .collect();

        // Sequence i joins at step i; all running ones decode together each step.
        let mut running: Vec<(usize, FusedSequence<'_>, Decoding<'_>, Option<u32>)> = Vec::new();
        let mut done: Vec<Option<Vec<u32>>> = vec![None; jobs.len()];
        let mut max_batch = 0;
        for step in 0.. {
            if let Some((f, ids, n)) = jobs.get(step) {
                let mut d = Decoding::new(f, ids, &params(*n)).unwrap();
                let mut seq = FusedSequence::new(f.clone()).unwrap();
                let out = seq.step(ids).unwrap();
                let next = d.advance(&out, |_, _| true).unwrap();
                running.push((step, seq, d, next));
            }
            let live: Vec<usize> = (0..running.len())
                .filter(|&i| running[i].3.is_some())
                .collect();
            max_batch = max_batch.max(live.len());
            if !live.is_empty() {
                let tokens: Vec<u32> = live.iter().map(|&i| running[i].3.unwrap()).collect();
                let mut seqs: Vec<&mut FusedSequence<'_>> = running
                    .iter_mut()
                    .filter(|r| r.3.is_some())
                    .map(|r| &mut r.1)
                    .collect();
                let outs = step_batch(&mut seqs, &tokens).unwrap();
                for (r, out) in running.iter_mut().filter(|r| r.3.is_some()).zip(&outs) {
                    r.3 = r.2.advance(out, |_, _| true).unwrap();
                }
            }
            let mut i = 0;
            while i < running.len() {
                if running[i].3.is_none() {
                    let (k, _, d, _) = running.swap_remove(i);
                    done[k] = Some(d.finish(|_, _| true).generation.tokens);
                } else {
                    i += 1;
                }
            }
            if step >= jobs.len() && running.is_empty() {
                break;
            }
        }
        assert!(max_batch >= 4, "the batch never grew: {max_batch}");
        for (i, (want, got)) in alone.iter().zip(&done).enumerate() {
            assert_eq!(Some(want), got.as_ref(), "sequence {i}");
        }
    }

    #[test]
    fn costs_and_weights_are_reported() {
        let (a, b) = pair();
        let models = [&a, &b];
        let ids = &prompts(&a)[0];
        let params = SamplingParams {
            max_tokens: 8,
            ..SamplingParams::default()
        };
        let single = generate_fused(Fusion::Single(&a), ids, &params, |_, _| true).unwrap();
        assert_eq!(single.cost, 1.0);
        let ens = generate_fused(
            Fusion::Ensemble {
                models: models.to_vec(),
                weights: vec![3.0, 1.0],
                mix: Mix::Linear,
            },
            ids,
            &params,
            |_, _| true,
        )
        .unwrap();
        assert_eq!(ens.cost, 2.0);
        assert_eq!(ens.routing_weights.len(), ens.generation.tokens.len());
        assert!(ens.routing_weights.iter().all(|w| w == &[0.75, 0.25]));

        let bad = generate_fused(
            Fusion::Ensemble {
                models: models.to_vec(),
                weights: vec![1.0],
                mix: Mix::Linear,
            },
            ids,
            &params,
            |_, _| true,
        );
        assert!(bad.unwrap_err().to_string().contains("weights"));
        let names = vec!["a".to_string(), "b".to_string()];
        let wrong = LayerMixer::constant(&[1.0, 0.0], 7, names, &Device::Cpu).unwrap();
        let bad = generate_fused(
            Fusion::BtmLayer {
                models: models.to_vec(),
                mixer: &wrong,
            },
            ids,
            &params,
            |_, _| true,
        );
        assert!(bad.unwrap_err().to_string().contains("layers"));
    }
}

mod routers {
    use super::*;
    use experts::fusion::{Fusion, LayerMixer, TokenRouter, generate_fused};
    use experts::router_train::{RouterTrainOptions, train_layer_mixer, train_token_router};

    #[test]
    fn trained_router_sends_each_domain_to_its_expert() {
        let (out, _) = forged();
        let a = load_model(&out.join("foundation"), DType::F32, &Device::Cpu).unwrap();
        let b = load_model(&out.join("sft-sop"), DType::F32, &Device::Cpu).unwrap();
        let models = [&a, &b];
        let names = vec!["foundation".to_string(), "sft-sop".to_string()];
        let opts = RouterTrainOptions {
            steps: 60,
            layer_steps: 6,
            n_docs: 600,
            ..RouterTrainOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let rec = train_token_router(&models, &names, &opts, &dir.path().join("t")).unwrap();
        let reasoning = rec.summary["reasoning"][0].as_f64().unwrap();
        let sop = rec.summary["sop"][0].as_f64().unwrap();
        assert!(
            reasoning > sop + 0.2,
            "foundation weight: reasoning {reasoning}, sop {sop}"
        );
        assert!(rec.losses.last().unwrap() < rec.losses.first().unwrap());
        let again = train_token_router(&models, &names, &opts, &dir.path().join("t2")).unwrap();
        assert_eq!(again.losses, rec.losses, "same seed, same router");

        let layer = train_layer_mixer(&models, &names, &opts, &dir.path().join("l")).unwrap();
        assert_eq!(layer.losses.len(), 6);

        let router = TokenRouter::load(&dir.path().join("t"), &Device::Cpu).unwrap();
        let mixer = LayerMixer::load(&dir.path().join("l"), &Device::Cpu).unwrap();
        // On held-out mixed text the trained token router's mixture is more likely than
        // either expert alone.
        let heldout =
            experts::router_train::heldout_nll(&models, &names, &router, &mixer, &[], 777, 8)
                .unwrap();
        let mixed = &heldout["mixed"];
        let tok = mixed["btm_token"].as_f64().unwrap();
        for single in &names {
            assert!(
                tok < mixed[single.as_str()].as_f64().unwrap(),
                "btm_token {tok} vs {single}: {heldout}"
            );
        }
        let ids = a
            .tokenizer
            .encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
            .unwrap();
        let params = SamplingParams {
            max_tokens: 6,
            ..SamplingParams::default()
        };
        let g = generate_fused(
            Fusion::BtmToken {
                models: models.to_vec(),
                router: &router,
                hard: false,
            },
            &ids,
            &params,
            |_, _| true,
        )
        .unwrap();
        assert_eq!(g.routing_weights.len(), g.generation.tokens.len());
        assert!(
            g.routing_weights
                .iter()
                .all(|w| (w.iter().sum::<f32>() - 1.0).abs() < 1e-4)
        );
        generate_fused(
            Fusion::BtmLayer {
                models: models.to_vec(),
                mixer: &mixer,
            },
            &ids,
            &params,
            |_, _| true,
        )
        .unwrap();

        // Distillation of btm_token into one model: the KL falls, the student is an HF
        // directory `load_model` reads, and the same seed gives the same student.
        let dopts = experts::distill::DistillOptions {
            steps: 12,
            n_prompts: 8,
            max_answer_tokens: 24,
            batch_size: 4,
            seq_len: 32,
            ..experts::distill::DistillOptions::default()
        };
        let d1 = experts::distill::distill(&models, &router, &dopts, &dir.path().join("d1"), false)
            .unwrap();
        assert!(
            d1.losses.last().unwrap() < d1.losses.first().unwrap(),
            "{:?}",
            d1.losses
        );
        let student = load_model(&dir.path().join("d1"), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            student.decoder.config().hidden_size,
            a.decoder.config().hidden_size
        );
        let d2 = experts::distill::distill(&models, &router, &dopts, &dir.path().join("d2"), false)
            .unwrap();
        assert_eq!(d1.losses, d2.losses, "same seed, same student");
        assert_eq!(
            std::fs::read(dir.path().join("d1/model.safetensors")).unwrap(),
            std::fs::read(dir.path().join("d2/model.safetensors")).unwrap()
        );

        std::fs::write(dir.path().join("t/router.safetensors"), b"junk").unwrap();
        let e = TokenRouter::load(&dir.path().join("t"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
