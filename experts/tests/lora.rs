//! LoRA fine-tuning end to end on the small forged foundation: the real `finetune` binary
//! writes a PEFT-layout adapter (deterministically, resumably), the loader serves the
//! adapter directory as a model, the adapter learned the SOP answers, and `expert eval`
//! scores it. Broken eval files are clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use candle_core::{DType, Device};
use experts::forge::{ForgeOptions, ForgeProfile, forge};
use experts::loader::load_model;
use experts::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAIN_LOG, TRAIN_REPORT, TrainReport};
use experts::scoring::continuation_nll;

fn forged() -> &'static PathBuf {
    static FORGED: OnceLock<PathBuf> = OnceLock::new();
    FORGED.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("forge-small");
        forge(&ForgeOptions {
            out: out.clone(),
            profile: ForgeProfile::small(),
            seed: 42,
            force: false,
            evaluate: false,
        })
        .unwrap();
        out
    })
}

fn finetune(base: &Path, out: &Path) -> TrainReport {
    let o = Command::new(env!("CARGO_BIN_EXE_finetune"))
        .args([
            "--base".as_ref(),
            base.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .args([
            "--rank",
            "8",
            "--steps",
            "120",
            "--batch_size",
            "4",
            "--examples",
            "300",
        ])
        .args(["--lr", "1e-2", "--max_len", "96", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn eval_items(path: &Path, n: usize) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["prompt"].as_str().unwrap().to_string(),
                v["reference"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_adapter_learns_sop_answers_and_loads_as_a_model() {
    let models = forged();
    let base = models.join("foundation");
    let work = tempfile::tempdir().unwrap();
    let adapter = work.path().join("adapters/sft-sop");
    let report = finetune(&base, &adapter);
    assert!(report.final_loss < report.first_loss * 0.7, "{report:?}");
    for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, TRAIN_REPORT, TRAIN_LOG] {
        assert!(adapter.join(f).is_file(), "{f}");
    }
    assert!(!work.path().join("adapters/.sft-sop.partial").exists());
    let log = std::fs::read_to_string(adapter.join(TRAIN_LOG)).unwrap();
    assert_eq!(log.lines().count(), 120);
    // The base is recorded relative to the adapter, so the pair can move together.
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(adapter.join(ADAPTER_CONFIG)).unwrap()).unwrap();
    let base_ref = cfg["base_model_name_or_path"].as_str().unwrap();
    assert!(base_ref.starts_with("../"), "{base_ref}");

    // The adapter directory loads as a model, and it learned the SOP procedures: the
    // held-out SOP references (unseen phrasings) are likelier under it than under its base.
    let tuned = load_model(&adapter, DType::F32, &Device::Cpu).unwrap();
    let plain = load_model(&base, DType::F32, &Device::Cpu).unwrap();
    let items = eval_items(&models.join("eval/sop.jsonl"), 12);
    let mean = |m: &experts::loader::LoadedModel| {
        items
            .iter()
            .map(|(p, r)| continuation_nll(m, p, &[r]).unwrap()[0])
            .sum::<f64>()
            / items.len() as f64
    };
    let (tuned_nll, plain_nll) = (mean(&tuned), mean(&plain));
    assert!(
        tuned_nll < plain_nll * 0.8,
        "tuned {tuned_nll} vs base {plain_nll}"
    );

    // A second run with the same options keeps the adapter; a run elsewhere with the same
    // seed writes the same bytes.
    let before = std::fs::metadata(adapter.join(ADAPTER_WEIGHTS))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(finetune(&base, &adapter), report);
    let after = std::fs::metadata(adapter.join(ADAPTER_WEIGHTS))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    let again = work.path().join("again");
    finetune(&base, &again);
    assert_eq!(
        std::fs::read(adapter.join(ADAPTER_WEIGHTS)).unwrap(),
        std::fs::read(again.join(ADAPTER_WEIGHTS)).unwrap()
    );

    // `expert eval` scores the adapter directory.
    let eval = work.path().join("eval.jsonl");
    let mut lines = String::new();
    for (i, (p, r)) in items.iter().take(8).enumerate() {
        // The wrong choice is the procedure of another intent.
        let other = items
            .iter()
            .map(|(_, r)| r)
            .cycle()
            .skip(i + 1)
            .find(|o| *o != r)
            .unwrap();
        let choices = [r.as_str(), other.as_str()];
        lines.push_str(
            &serde_json::json!({"id": format!("s{i}"), "category": "sop", "prompt": p,
                "reference": r, "choices": choices, "answer": 0})
            .to_string(),
        );
        lines.push('\n');
    }
    lines.push_str(r#"{"id":"g","category":"general","prompt":"What is 2 + 3?","reference":"2 + 3 = 5. The answer is 5."}"#);
    std::fs::write(&eval, lines).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_expert"))
        .args(["eval", "--model"])
        .arg(&adapter)
        .arg("--eval_file")
        .arg(&eval)
        .args(["--generate", "24", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.contains("| sop | 8 |"), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let cats = v["categories"].as_array().unwrap();
    assert_eq!(cats.len(), 2);
    let sop = cats.iter().find(|c| c["category"] == "sop").unwrap();
    // The small model is too weak to tell the procedures apart reliably; the aggregate must
    // still be the mean of the per-item outcomes.
    let correct = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["choice_correct"] == true)
        .count();
    assert_eq!(
        sop["choice_accuracy"].as_f64(),
        Some(correct as f64 / 8.0),
        "{sop}"
    );
    assert!(sop["rouge_l"].as_f64().unwrap() > 0.0, "{sop}");
    let general = cats.iter().find(|c| c["category"] == "general").unwrap();
    assert!(general["choice_accuracy"].is_null());
    assert_eq!(v["items"].as_array().unwrap().len(), 9);
}

#[test]
fn broken_eval_files_and_adapters_are_clear_errors() {
    let models = forged();
    let dir = tempfile::tempdir().unwrap();
    let run = |model: &Path, content: &str| {
        let f = dir.path().join("bad.jsonl");
        std::fs::write(&f, content).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_expert"))
            .args(["eval", "--model"])
            .arg(model)
            .arg("--eval_file")
            .arg(&f)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8(o.stderr).unwrap()
    };
    let base = models.join("foundation");
    let ok = r#"{"id":"a","category":"c","prompt":"p","reference":"r"}"#;
    for (content, want) in [
        ("{not json", "line 1"),
        (&format!("{ok}\n{{\"id\":\"b\"}}"), "line 2"),
        (
            r#"{"id":"a","category":"c","prompt":"p","reference":"r","extra":1}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"id":"a","category":"c","prompt":" ","reference":"r"}"#,
            "empty prompt",
        ),
        (
            r#"{"id":"a","category":"c","prompt":"p","reference":"r","choices":["x","y"],"answer":2}"#,
            "come together",
        ),
        (
            r#"{"id":"a","category":"c","prompt":"p","reference":"r","choices":["x","y"]}"#,
            "come together",
        ),
        ("\n\n", "no items"),
    ] {
        let e = run(&base, content);
        assert!(e.contains(want), "{want:?} not in {e:?}");
    }
    // An adapter directory whose base is gone names it.
    let adapter = dir.path().join("orphan");
    std::fs::create_dir_all(&adapter).unwrap();
    std::fs::write(
        adapter.join(ADAPTER_CONFIG),
        r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["q_proj"],"base_model_name_or_path":"../gone"}"#,
    )
    .unwrap();
    let e = run(&adapter, ok);
    assert!(e.contains("../gone") && e.contains("no config.json"), "{e}");
}
