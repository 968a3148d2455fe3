//! `hybrid_inference` as a user runs it: the real binary starts a real `expert serve`
//! process over the forged pair, answers a prompt through the hybrid route, scores an eval
//! file under every strategy, refuses bad input with a clear error, and leaves no process
//! behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use hybrid_tests::{forged_small_with_routers, workspace_bin, workspace_root, write_forged_config};
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    let out = Command::new(workspace_bin("hybrid_inference"))
        .args(args)
        .output()
        .expect("the hybrid_inference binary (cargo build --bins builds it)");
    eprintln!(
        "hybrid_inference {args:?} → {}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn last_json(out: &Output) -> Value {
    let text = stdout(out);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {text}"))
}

/// Processes whose command line mentions `needle` (the temp config's unique path).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn hybrid_inference_answers_evaluates_and_refuses_bad_input() {
    let models = forged_small_with_routers();
    let dir = tempfile::tempdir().unwrap();
    let config = write_forged_config(dir.path(), &models, "  max_tokens_limit: 64\n");
    let cfg = config.to_str().unwrap();

    // --prompt: a plainly SOP query goes to the SOP expert alone, 1 forward per token.
    let out = run(&[
        "--config",
        cfg,
        "--prompt",
        "How do I reset my password? I am locked out of my account.",
        "--max_tokens",
        "16",
        "--show_routing_info",
    ]);
    assert!(out.status.success());
    assert!(!stdout(&out).trim().is_empty(), "no answer on stdout");
    let err = stderr(&out);
    assert!(err.contains("routing: category=sop"), "{err}");
    assert!(err.contains("decision=single"), "{err}");
    assert!(err.contains("experts=[sft-sop] cost=1 "), "{err}");
    assert!(
        processes_mentioning(cfg).is_empty(),
        "expert processes left behind: {:?}",
        processes_mentioning(cfg)
    );

    // --prompt --json: the answer and its routing; the cost is the expert's own count and
    // agrees with the decision.
    let out = run(&[
        "--config",
        cfg,
        "--prompt",
        "Explain the plan",
        "--max_tokens",
        "8",
        "--json",
    ]);
    assert!(out.status.success());
    let answer = last_json(&out);
    let routing = &answer["routing"];
    let cost = routing["cost"].as_f64().unwrap();
    match routing["decision"].as_str().unwrap() {
        "fusion" => {
            assert_eq!(cost, 2.0, "{answer}");
            assert_eq!(routing["mode"], "btm_token", "{answer}");
        }
        "single" => assert_eq!(cost, 1.0, "{answer}"),
        other => panic!("unexpected decision {other}: {answer}"),
    }
    assert!(answer["text"].is_string(), "{answer}");
    assert!(
        answer["record"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // --eval_file --json --out: every strategy but distilled (none configured), on two
    // reasoning and two SOP items of the shipped eval file.
    let shipped = std::fs::read_to_string(workspace_root().join("data/eval/eval.jsonl")).unwrap();
    let lines: Vec<&str> = shipped.lines().take(4).collect();
    let eval = dir.path().join("eval.jsonl");
    std::fs::write(&eval, lines.join("\n")).unwrap();
    let results = dir.path().join("results");
    let out = run(&[
        "--config",
        cfg,
        "--eval_file",
        eval.to_str().unwrap(),
        "--max_tokens",
        "24",
        "--json",
        "--out",
        results.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = last_json(&out);
    let strategies = report["strategies"].as_object().unwrap();
    let names: Vec<&str> = strategies.keys().map(String::as_str).collect();
    for name in [
        "foundation",
        "sft",
        "ensemble",
        "ensemble_log",
        "ensemble_routed",
        "btm_token",
        "btm_layer",
        "defer",
        "hybrid",
    ] {
        assert!(names.contains(&name), "{name} missing: {report}");
    }
    assert!(!names.contains(&"distilled"), "{report}");
    assert!(report["skipped"]["distilled"].is_string(), "{report}");
    for (name, r) in strategies {
        assert_eq!(r["n"], 4, "{name}: {r}");
        let q = r["quality"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&q), "{name}: {r}");
        for cat in ["reasoning", "sop"] {
            let qc = r["quality_by_category"][cat].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&qc), "{name}: {r}");
        }
        assert!(r["wall_s"].as_f64().unwrap() > 0.0, "{name}: {r}");
    }
    let cost = |n: &str| strategies[n]["cost"].as_f64().unwrap();
    let share = |n: &str| strategies[n]["btm_share"].as_f64().unwrap();
    assert_eq!(cost("foundation"), 1.0);
    assert_eq!(cost("sft"), 1.0);
    for fused in [
        "ensemble",
        "ensemble_log",
        "ensemble_routed",
        "btm_token",
        "btm_layer",
    ] {
        assert_eq!(cost(fused), 2.0, "{fused}");
        assert_eq!(share(fused), 1.0, "{fused}");
    }
    // `defer` runs the second expert only from its first deferral on: between 1 and 2.
    assert!((1.0..=2.0).contains(&cost("defer")), "{report}");
    let hybrid = cost("hybrid");
    assert!((1.0..=2.0).contains(&hybrid), "{report}");
    // Every fused item costs 2, every single one 1: the mean follows the share.
    assert!((hybrid - (1.0 + share("hybrid"))).abs() < 1e-6, "{report}");
    let table = std::fs::read_to_string(results.join("table.md")).unwrap();
    assert!(
        table.contains("| hybrid |") && table.contains("distilled: skipped"),
        "{table}"
    );
    assert!(
        stdout(&out).contains("| btm_layer |"),
        "the table goes to stdout"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(saved, report);
    // The threshold sweep: 0.50 … 0.95 and 0.99; the lowest threshold sends every item to
    // a single expert, the highest sends at least as many to the fusion as any other, and
    // the point at the config's threshold is exactly the hybrid strategy's result.
    let sweep = report["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 11, "{report}");
    let at = |i: usize, k: &str| sweep[i][k].as_f64().unwrap();
    assert!((at(0, "threshold") - 0.5).abs() < 1e-9 && (at(10, "threshold") - 0.99).abs() < 1e-9);
    assert!(at(0, "btm_share") <= at(10, "btm_share"));
    for i in 1..sweep.len() {
        assert!(at(i, "btm_share") >= at(i - 1, "btm_share"), "{report}");
        assert!(
            (at(i, "cost") - (1.0 + at(i, "btm_share"))).abs() < 1e-9,
            "{report}"
        );
    }
    let p85 = sweep
        .iter()
        .find(|p| (p["threshold"].as_f64().unwrap() - 0.85).abs() < 1e-9)
        .unwrap();
    assert!(
        (p85["quality"].as_f64().unwrap() - strategies["hybrid"]["quality"].as_f64().unwrap())
            .abs()
            < 1e-9
    );
    assert!((p85["cost"].as_f64().unwrap() - hybrid).abs() < 1e-9);
    let svg = std::fs::read_to_string(results.join("sweep.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("threshold 0.85"),
        "{svg}"
    );
    let png = std::fs::read(results.join("sweep.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a {} byte PNG has no plot in it",
        png.len()
    );
    assert!(processes_mentioning(cfg).is_empty());

    // Bad input: a clear error and a non-zero exit, before anything starts.
    let bad_eval = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad_eval,
        "{\"prompt\": \"x\", \"reference\": \"y\", \"label\": 7}\n",
    )
    .unwrap();
    let missing_config = dir.path().join("nope.yaml");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--config",
                cfg,
                "--classifier_type",
                "magic",
                "--prompt",
                "hi",
            ],
            "rule_based",
        ),
        (vec!["--config", cfg], "nothing to do"),
        (
            vec!["--config", cfg, "--eval_file", "/nonexistent/eval.jsonl"],
            "/nonexistent/eval.jsonl",
        ),
        (
            vec!["--config", cfg, "--eval_file", bad_eval.to_str().unwrap()],
            "bad.jsonl:1: `label` 7",
        ),
        (
            vec![
                "--config",
                missing_config.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
            "nope.yaml",
        ),
        (
            vec!["--config", cfg, "--prompt", "hi", "--btm_router", "nope"],
            "--btm_router \"nope\"",
        ),
        (
            vec![
                "--config",
                cfg,
                "--eval_file",
                eval.to_str().unwrap(),
                "--strategies",
                "magic",
            ],
            "unknown strategy \"magic\"",
        ),
        (
            vec![
                "--config",
                cfg,
                "--prompt",
                "hi",
                "--classifier_type",
                "learned",
                "--classifier_checkpoint",
                "/nonexistent/ckpt",
            ],
            "/nonexistent/ckpt",
        ),
        (
            vec![
                "--config",
                cfg,
                "--prompt",
                "hi",
                "--eval_file",
                eval.to_str().unwrap(),
            ],
            "cannot be used with",
        ),
        (
            vec![
                "--config",
                cfg,
                "--eval_file",
                eval.to_str().unwrap(),
                "--choices",
                "magic",
            ],
            "unknown choice scoring \"magic\"",
        ),
    ];
    for (args, needle) in cases {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(processes_mentioning(cfg).is_empty());
}

/// Multiple-choice items: by default each strategy's fusion scores the choices (nothing is
/// generated) and a single expert's picks are those of the library's own scoring of that
/// model; `--choices generate` answers and matches instead.
#[test]
fn multiple_choice_items_are_scored_by_likelihood_or_by_generation() {
    let models = forged_small_with_routers();
    let dir = tempfile::tempdir().unwrap();
    let config = write_forged_config(dir.path(), &models, "");
    let cfg = config.to_str().unwrap();
    let items = [
        (
            "How do I get a refund for a broken kettle?",
            1,
            vec![
                "1. Check the order. 2. Issue the refund to the original payment method.",
                "The answer is 7.",
                "Paris is the capital of France.",
            ],
            0,
        ),
        (
            "What is 3 + 4?",
            0,
            vec![
                "The answer is 7.",
                "1. Reset the password.",
                "The answer is 9.",
            ],
            0,
        ),
        (
            "我的快递还没到，怎么办？",
            1,
            vec![
                "1. 查询物流单号。 2. 联系快递公司。",
                "The answer is 2.",
                "Blue.",
            ],
            1,
        ),
    ];
    let eval = dir.path().join("mc.jsonl");
    let lines: Vec<String> = items
        .iter()
        .map(|(p, label, choices, answer)| {
            serde_json::json!({"prompt": p, "reference": choices[*answer], "label": label,
                "choices": choices, "answer": answer})
            .to_string()
        })
        .collect();
    std::fs::write(&eval, lines.join("\n")).unwrap();
    let evaluate = |extra: &[&str]| -> Value {
        let mut args = vec![
            "--config",
            cfg,
            "--eval_file",
            eval.to_str().unwrap(),
            "--strategies",
            "foundation,sft,ensemble,btm_token,btm_layer,defer:0,hybrid",
            "--max_tokens",
            "12",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success());
        last_json(&out)
    };

    let report = evaluate(&["--choices", "likelihood"]);
    assert!(
        report["metric"]
            .as_str()
            .unwrap()
            .contains("lowest mean NLL"),
        "{report}"
    );
    // Each single expert's accuracy is what its own in-process scoring picks give.
    for (strategy, dir_name) in [("foundation", "foundation"), ("sft", "sft-sop")] {
        let model = experts::loader::load_model(
            &models.join(dir_name),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let right = items
            .iter()
            .filter(|(p, _, choices, answer)| {
                let nll = experts::scoring::continuation_nll(&model, p, choices).unwrap();
                let pick = (0..nll.len()).fold(0, |b, i| if nll[i] < nll[b] { i } else { b });
                pick == *answer
            })
            .count();
        let q = report["strategies"][strategy]["quality"].as_f64().unwrap();
        assert!(
            (q - right as f64 / 3.0).abs() < 1e-9,
            "{strategy}: {q} vs {right}/3"
        );
    }
    for (name, r) in report["strategies"].as_object().unwrap() {
        assert_eq!(r["completion_tokens"], 0, "{name} generated: {r}");
        assert!(
            r["total_token_forwards"].as_u64().unwrap() > 0,
            "{name}: {r}"
        );
    }
    for fused in ["ensemble", "btm_token", "btm_layer"] {
        assert_eq!(report["strategies"][fused]["cost"], 2.0, "{report}");
    }
    // `defer` at η = 0 defers every position: its picks are the SOP expert's.
    assert_eq!(
        report["strategies"]["defer:0"]["quality"], report["strategies"]["sft"]["quality"],
        "{report}"
    );

    // The default, `both`: every item is generated and scored on its text, the choices
    // are scored by likelihood beside it (the same picks as above), and each strategy is
    // compared to hybrid on the same items with a bootstrap interval.
    let both = evaluate(&[]);
    for (name, r) in both["strategies"].as_object().unwrap() {
        assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{name}: {r}");
        assert_eq!(
            r["choice_quality"], report["strategies"][name]["quality"],
            "{name}: {r}"
        );
        if name != "hybrid" {
            let d = &r["versus_hybrid"]["overall"];
            let (lo, mean, hi) = (
                d["low"].as_f64().unwrap(),
                d["mean"].as_f64().unwrap(),
                d["high"].as_f64().unwrap(),
            );
            assert!(lo <= mean && mean <= hi && d["n"] == 3, "{name}: {d}");
        }
    }
    // … and, greedy, it writes the SOP expert's answers word for word.
    let texts = |n: &str| -> Vec<Value> {
        both["strategies"][n]["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["answer"].clone())
            .collect()
    };
    assert_eq!(texts("defer:0"), texts("sft"), "{both}");

    let generated = evaluate(&["--choices", "generate"]);
    assert!(
        generated["metric"].as_str().unwrap().contains("generate"),
        "{generated}"
    );
    assert!(
        generated["strategies"]["foundation"]["completion_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(processes_mentioning(cfg).is_empty());
}

#[test]
fn the_shipped_eval_file_is_well_formed() {
    let path = workspace_root().join("data/eval/eval.jsonl");
    let categories = vec!["reasoning".to_string(), "sop".to_string()];
    let items = gateway_free_check(&path, &categories);
    assert_eq!(items, 32);
}

/// Counts items per label and checks each line's shape without the gateway crate.
fn gateway_free_check(path: &Path, categories: &[String]) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let mut per_label = vec![0usize; categories.len()];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(
            v["prompt"].as_str().is_some_and(|p| !p.is_empty()),
            "{line}"
        );
        assert!(v["reference"].is_string(), "{line}");
        per_label[v["label"].as_u64().unwrap() as usize] += 1;
    }
    assert!(
        per_label.iter().all(|&n| n == per_label[0]),
        "{per_label:?}"
    );
    per_label.iter().sum()
}
