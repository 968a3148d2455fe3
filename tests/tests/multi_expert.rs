//! Three or more experts, end to end on the small profile: `forge_areas` branches three SOP
//! area experts from the foundation, routers are trained over all four and over each pair,
//! a four-class classifier is trained by the real `train_classifier` binary, and the real
//! `hybrid_inference` binary scores the four-category eval set under every strategy through
//! a real `expert serve` process, with uncertain queries fused over their top two experts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use experts::forge::{ForgeOptions, ForgeProfile, forge_areas};
use experts::router_train::{RouterTrainOptions, train_layer_mixer, train_token_router};
use hybrid_tests::{forged_small, workspace_bin, workspace_root};
use serde_json::Value;

const EXPERTS: [&str; 4] = [
    "foundation",
    "sft-customer-service",
    "sft-sales",
    "sft-tech-support",
];

/// The area experts, their routers (all four: `routers-multi/all`; each pair:
/// `routers-multi/<a>+<b>`) and the default mixer, next to the small pair.
fn area_models() -> PathBuf {
    let out = forged_small();
    forge_areas(&ForgeOptions {
        out: out.clone(),
        profile: ForgeProfile::small(),
        seed: 42,
        force: false,
        evaluate: false,
    })
    .unwrap();
    let routers = out.join("routers-multi");
    if !routers.join("all/btm_layer/mixer.safetensors").exists() {
        let loaded: Vec<_> = EXPERTS
            .iter()
            .map(|n| {
                experts::loader::load_model(
                    &out.join(n),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .unwrap()
            })
            .collect();
        let opts = RouterTrainOptions {
            steps: 30,
            layer_steps: 3,
            n_docs: 300,
            ..RouterTrainOptions::default()
        };
        for i in 0..EXPERTS.len() {
            for j in i + 1..EXPERTS.len() {
                let names = vec![EXPERTS[i].to_string(), EXPERTS[j].to_string()];
                let dir = routers.join(format!("{}+{}", EXPERTS[i], EXPERTS[j]));
                train_token_router(&[&loaded[i], &loaded[j]], &names, &opts, &dir).unwrap();
            }
        }
        let all: Vec<_> = loaded.iter().collect();
        let names: Vec<String> = EXPERTS.iter().map(|s| s.to_string()).collect();
        train_token_router(&all, &names, &opts, &routers.join("all/btm_token")).unwrap();
        train_layer_mixer(&all, &names, &opts, &routers.join("all/btm_layer")).unwrap();
    }
    out
}

/// `configs/multi_expert.yaml`'s hybrid section (four categories) over the small models.
fn write_config(dir: &Path, models: &Path, checkpoint: &Path) -> PathBuf {
    let root = workspace_root();
    let shipped = std::fs::read_to_string(root.join("configs/multi_expert.yaml")).unwrap();
    let hybrid: String = shipped
        .lines()
        .take_while(|l| !l.starts_with("experts:"))
        .map(|l| {
            l.replace(
                "configs/rules_multi.json",
                &root.join("configs/rules_multi.json").display().to_string(),
            )
            .replace(
                "./models/checkpoints/classifier-multi",
                &checkpoint.display().to_string(),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let m = models.display();
    let mut routers = format!("    default: {m}/routers-multi/all/btm_token\n");
    for (i, a) in EXPERTS.iter().enumerate() {
        for b in &EXPERTS[i + 1..] {
            let pair = format!("{a}+{b}");
            routers.push_str(&format!("    {pair}: {m}/routers-multi/{pair}\n"));
        }
    }
    let text = format!(
        "{hybrid}
experts:
  models:
    foundation: {m}/foundation
    sft-customer-service: {m}/sft-customer-service
    sft-sales: {m}/sft-sales
    sft-tech-support: {m}/sft-tech-support
  routers:
{routers}  mixers: {{default: {m}/routers-multi/all/btm_layer}}
  max_batch: 16
gateway:
  listen: 127.0.0.1:0
  expert_processes: 1
  expert_binary: {bin}
  category_experts: {{reasoning: foundation, customer_service: sft-customer-service, sales: sft-sales, tech_support: sft-tech-support}}
  foundation_model: foundation
  fusion: {{type: btm_token, models: [foundation, sft-customer-service, sft-sales, sft-tech-support]}}
  fusion_top_k: 2
  feedback_db: {db}
  bootstrap: off
  max_tokens_limit: 64
",
        bin = workspace_bin("expert").display(),
        db = dir.join("feedback.sqlite").display(),
    );
    let path = dir.join("multi.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn four_experts_are_evaluated_with_top_two_fusion() {
    let models = area_models();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("classifier-multi");

    // The four-class classifier, trained by the real binary on the forge's data.
    let out = Command::new(workspace_bin("train_classifier"))
        .args(["--config"])
        .arg(workspace_root().join("configs/multi_expert.yaml"))
        .arg("--train_file")
        .arg(models.join("classifier-multi/train.jsonl"))
        .arg("--output_dir")
        .arg(&checkpoint)
        .arg("--eval_file")
        .arg(models.join("eval/multi.jsonl"))
        .arg("--json")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    eprintln!("classifier: {report}");

    // Two held-out items per category.
    let eval_text = std::fs::read_to_string(models.join("eval/multi.jsonl")).unwrap();
    let mut picked: Vec<&str> = Vec::new();
    for label in 0..4u64 {
        picked.extend(
            eval_text
                .lines()
                .filter(|l| serde_json::from_str::<Value>(l).unwrap()["label"] == label)
                .take(2),
        );
    }
    assert_eq!(picked.len(), 8, "{eval_text}");
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(&eval, picked.join("\n")).unwrap();

    let config = write_config(dir.path(), &models, &checkpoint);
    let out = Command::new(workspace_bin("hybrid_inference"))
        .arg("--config")
        .arg(&config)
        .arg("--eval_file")
        .arg(&eval)
        .args(["--max_tokens", "12", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let s = report["strategies"].as_object().unwrap();
    for name in [
        "foundation",
        "sft:customer_service",
        "sft:sales",
        "sft:tech_support",
        "ensemble",
        "btm_token",
        "btm_layer",
        "fused_top_k",
        "hybrid",
    ] {
        assert!(s.contains_key(name), "{name} missing: {report}");
        assert_eq!(s[name]["n"], 8, "{name}");
        let by_cat = s[name]["quality_by_category"].as_object().unwrap();
        assert_eq!(by_cat.len(), 4, "{name}: {by_cat:?}");
    }
    let cost = |n: &str| s[n]["cost"].as_f64().unwrap();
    assert_eq!(cost("sft:sales"), 1.0);
    // All four experts fused cost 4; the top two of each item cost exactly 2.
    assert_eq!(cost("btm_token"), 4.0);
    assert_eq!(cost("ensemble"), 4.0);
    assert_eq!(cost("fused_top_k"), 2.0);
    let hybrid = cost("hybrid");
    let share = s["hybrid"]["btm_share"].as_f64().unwrap();
    assert!((hybrid - (1.0 + share)).abs() < 1e-9, "{report}");
    let sweep = report["sweep"].as_array().unwrap();
    assert!(sweep.iter().all(|p| p["cost"].as_f64().unwrap() <= 2.0));
}
