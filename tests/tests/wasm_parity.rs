//! The wasm classifier, run under node, agrees with the native one: same category and
//! confidences within 1e-5, for the learned and rule-based kinds, on more than 100 queries;
//! and its errors arrive in JavaScript as exceptions with the native message.
//!
//! Needs `web/pkg` (built by `scripts/build-wasm.sh`, which `scripts/test.sh` runs first)
//! and `node`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use classifier::data::read_jsonl;
use classifier::train::{TrainOptions, train};
use classifier::{Classifier, RuleBasedClassifier, RuleSet};
use hybrid_tests::workspace_root;

#[test]
fn wasm_under_node_matches_native() {
    let root = workspace_root();
    let pkg = root.join("web/pkg");
    assert!(
        pkg.join("classifier_bg.wasm").exists(),
        "{} is missing: run scripts/build-wasm.sh (scripts/test.sh does it)",
        pkg.display()
    );

    let data = classifier::sample::generate(42, 350);
    let (t, v) = data.split_at(data.len() * 85 / 100);
    let cats = vec!["reasoning".to_string(), "sop".to_string()];
    let (learned, _) = train(t, v, &cats, &TrainOptions::default(), |_, _| {}).unwrap();
    let rules_path = root.join("configs/rules.json");
    let rules = RuleBasedClassifier::new(
        RuleSet::from_json(&std::fs::read_to_string(&rules_path).unwrap()).unwrap(),
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    learned.save(dir.path()).unwrap();
    let mut queries: Vec<String> = read_jsonl(root.join("tests/data/classifier_realistic.jsonl"))
        .unwrap()
        .into_iter()
        .map(|q| q.query)
        .collect();
    queries.extend(v.iter().take(60).map(|q| q.query.clone()));
    queries.push("x".into());
    queries.push("退".repeat(10_000));
    queries.push("mixed 中文 and English, 42%?!".into());
    assert!(queries.len() >= 100);
    let qfile = dir.path().join("queries.json");
    std::fs::write(&qfile, serde_json::to_vec(&queries).unwrap()).unwrap();

    let out = Command::new("node")
        .arg(root.join("tests/wasm/classify.mjs"))
        .arg(&pkg)
        .arg(dir.path())
        .arg(&rules_path)
        .arg(&qfile)
        .output()
        .expect("node must be installed");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(js["learned_version"], learned.version());
    assert_eq!(js["rules_version"], rules.version());
    assert_eq!(js["categories"], serde_json::json!(["reasoning", "sop"]));

    for (kind, native) in [("learned", &learned as &dyn Classifier), ("rules", &rules)] {
        let results = js[kind].as_array().unwrap();
        assert_eq!(results.len(), queries.len());
        for (q, r) in queries.iter().zip(results) {
            let n = native.classify(q).unwrap();
            assert_eq!(
                r["category"].as_u64(),
                Some(n.category as u64),
                "{kind}: {q}"
            );
            assert_eq!(r["label"], native.categories()[n.category].as_str());
            let conf = r["confidence"].as_f64().unwrap();
            assert!(
                (conf - f64::from(n.confidence)).abs() <= 1e-5,
                "{kind}: {q}: {conf} vs {}",
                n.confidence
            );
            for (a, b) in r["scores"].as_array().unwrap().iter().zip(&n.scores) {
                assert!((a.as_f64().unwrap() - f64::from(*b)).abs() <= 1e-5);
            }
        }
    }
    let errors = &js["errors"];
    assert!(
        errors["empty"].as_str().unwrap().contains("empty"),
        "{errors}"
    );
    assert!(
        errors["bad_checkpoint"]
            .as_str()
            .unwrap()
            .contains("classifier.json"),
        "{errors}"
    );
    assert!(errors["bad_rules"].as_str().is_some(), "{errors}");
}
