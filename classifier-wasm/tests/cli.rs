//! `train_classifier` end to end, as a user runs it: sample, train, evaluate, classify,
//! and the errors a user meets on bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train_classifier"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn last_json(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    serde_json::from_str(out.lines().last().unwrap()).unwrap()
}

/// A working directory holding the project's config and rules, as a user's checkout would.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("configs")).unwrap();
    for f in ["config.yaml", "rules.json"] {
        std::fs::copy(
            root().join("configs").join(f),
            dir.path().join("configs").join(f),
        )
        .unwrap();
    }
    let ckpt = dir.path().join("classifier-wasm/checkpoint");
    std::fs::create_dir_all(&ckpt).unwrap();
    for f in ["classifier.json", "model.safetensors", "combiner.json"] {
        std::fs::copy(
            root().join("classifier-wasm/checkpoint").join(f),
            ckpt.join(f),
        )
        .unwrap();
    }
    dir
}

#[test]
fn create_sample_needs_no_config_and_a_checkpoint_means_learned() {
    // Outside any checkout: no configs/ in the working directory.
    let dir = tempfile::tempdir().unwrap();
    let o = run(dir.path(), &["--create_sample", "--data_dir", "s"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("s/train.jsonl").is_file());
    // A missing config is named once, with its OS error once.
    let o = run(dir.path(), &["--prompt", "hi"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("configs/config.yaml"), "{e}");
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");

    // In a checkout, --classifier_checkpoint alone evaluates the learned classifier (never
    // the rule-based one), or the combined one that the config names when the directory
    // holds its combiner.
    let dir = workdir();
    let ckpt = dir.path().join("classifier-wasm/checkpoint");
    let o = run(
        dir.path(),
        &[
            "--prompt",
            "hello there",
            "--classifier_checkpoint",
            ckpt.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("classifier=combined-"),
        "{}",
        stdout(&o)
    );
    std::fs::remove_file(ckpt.join("combiner.json")).unwrap();
    let o = run(
        dir.path(),
        &[
            "--prompt",
            "hello there",
            "--classifier_checkpoint",
            ckpt.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("classifier=learned-"), "{}", stdout(&o));
    // Without its combiner the config's default kind names the missing file.
    let o = run(dir.path(), &["--prompt", "hello there"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("combiner.json is missing"),
        "{}",
        stderr(&o)
    );
    let dir = workdir();
    // With nothing given, the config's default kind (combined) answers.
    let o = run(dir.path(), &["--prompt", "What is the capital of France?"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("classifier=combined-") && out.contains("category=reasoning"),
        "{out}"
    );
}

#[test]
fn sample_train_eval_classify() {
    let dir = workdir();
    let d = dir.path();
    let o = run(d, &["--create_sample", "--data_dir", "a"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(d, &["--create_sample", "--data_dir", "b"]);
    assert!(o.status.success());
    let mut lines = 0;
    for split in ["train", "val", "test"] {
        let a = std::fs::read(d.join("a").join(format!("{split}.jsonl"))).unwrap();
        let b = std::fs::read(d.join("b").join(format!("{split}.jsonl"))).unwrap();
        assert_eq!(a, b, "{split} differs between two runs with the same seed");
        lines += a.split(|&c| c == b'\n').filter(|l| !l.is_empty()).count();
    }
    assert!(lines >= 600, "{lines} lines");

    let o = run(
        d,
        &[
            "--train_file",
            "a/train.jsonl",
            "--epochs",
            "5",
            "--output_dir",
            "ckpt",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in ["ece before=", "temperature:", "confidence bin", "macro_f1="] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let j = last_json(&o);
    assert!(j["test"]["accuracy"].as_f64().unwrap() >= 0.95, "{j}");
    for f in ["classifier.json", "model.safetensors", "metrics.json"] {
        assert!(d.join("ckpt").join(f).exists(), "{f}");
    }

    let realistic = root().join("tests/data/classifier_realistic.jsonl");
    let realistic = realistic.to_str().unwrap();
    let o = run(
        d,
        &[
            "--eval_file",
            realistic,
            "--classifier_checkpoint",
            "ckpt",
            "--classifier_type",
            "learned",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["accuracy", "ece", "macro_f1", "n"]);
    assert!(j["n"].as_u64().unwrap() >= 60);

    let o = run(
        d,
        &[
            "--eval_file",
            realistic,
            "--classifier_type",
            "rule_based",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(last_json(&o)["accuracy"].as_f64().unwrap() > 0.5);

    let o = run(
        d,
        &[
            "--prompt",
            "我想退货，怎么操作？",
            "--classifier_type",
            "learned",
            "--classifier_checkpoint",
            "ckpt",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j = last_json(&o);
    assert_eq!(j["label"], "sop");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = workdir();
    let d = dir.path();

    let o = run(d, &["--prompt", "   "]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));

    std::fs::write(
        d.join("bad.jsonl"),
        b"{\"query\":\"ok\",\"label\":0}\n{\"query\":\"\xc3\x28\",\"label\":1}\n",
    )
    .unwrap();
    let o = run(
        d,
        &[
            "--eval_file",
            "bad.jsonl",
            "--classifier_type",
            "rule_based",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("bad.jsonl:2") && stderr(&o).contains("UTF-8"),
        "{}",
        stderr(&o)
    );

    std::fs::write(d.join("labels.jsonl"), "{\"query\":\"ok\",\"label\":7}\n").unwrap();
    let o = run(
        d,
        &[
            "--eval_file",
            "labels.jsonl",
            "--classifier_type",
            "rule_based",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("label 7"), "{}", stderr(&o));

    let o = run(
        d,
        &[
            "--prompt",
            "hi",
            "--classifier_type",
            "learned",
            "--classifier_checkpoint",
            "nowhere",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));

    let o = run(d, &["--prompt", "hi", "--classifier_type", "neural"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("neural"), "{}", stderr(&o));

    let cfg = std::fs::read_to_string(d.join("configs/config.yaml")).unwrap();
    std::fs::write(
        d.join("configs/typo.yaml"),
        cfg.replace("confidence_threshold", "confidence_treshold"),
    )
    .unwrap();
    let o = run(d, &["--config", "configs/typo.yaml", "--prompt", "hi"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("typo.yaml") && e.contains("confidence_treshold"),
        "{e}"
    );

    let o = run(d, &["--train_file", "missing.jsonl"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing.jsonl"), "{}", stderr(&o));

    let o = run(d, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nothing to do"), "{}", stderr(&o));

    for o in [
        run(d, &["--prompt", "   "]),
        run(d, &["--train_file", "missing.jsonl"]),
    ] {
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}
