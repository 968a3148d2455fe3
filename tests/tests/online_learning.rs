//! Online learning end to end: ratings stored by the gateway's feedback store retrain the
//! classifier (`train_classifier --from_feedback`), and the running gateway swaps the new
//! checkpoint in (`POST /admin/reload_classifier`) while requests keep being answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use gateway::feedback::{FeedbackStore, ResponseRecord};
use gateway::{AppState, GatewayConfig, router};
use hybrid_tests::{workspace_bin, workspace_root};
use tower::ServiceExt;

/// A query the sample-trained classifier is not sure about.
const QUERY: &str = "Tell me about the schedule for next week";

fn train(config: &Path, data: &Path, out: &Path, feedback: Option<&Path>) -> String {
    let mut cmd = Command::new(workspace_bin("train_classifier"));
    cmd.arg("--config")
        .arg(config)
        .arg("--train_file")
        .arg(data.join("train.jsonl"))
        .arg("--output_dir")
        .arg(out);
    if let Some(db) = feedback {
        cmd.arg("--from_feedback").arg(db);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

async fn classify(app: &axum::Router) -> serde_json::Value {
    let r = app
        .clone()
        .oneshot(
            Request::post("/v1/classify")
                .header("content-type", "application/json")
                .body(Body::from(serde_json::json!({"text": QUERY}).to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    serde_json::from_slice(&to_bytes(r.into_body(), 1 << 20).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_retrains_the_classifier_and_the_gateway_reloads_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = workspace_root();
    let data = dir.path().join("data");
    let ckpt = dir.path().join("ckpt");
    let db = dir.path().join("feedback.sqlite");
    let config = dir.path().join("config.yaml");
    let shipped = std::fs::read_to_string(root.join("configs/config.yaml")).unwrap();
    let text = shipped
        .replace("type: \"combined\"", "type: \"learned\"")
        .replace("classifier-wasm/checkpoint", &ckpt.display().to_string())
        .replace(
            "configs/rules.json",
            &root.join("configs/rules.json").display().to_string(),
        )
        .replace("data/feedback.sqlite", &db.display().to_string())
        .replace("bootstrap: full", "bootstrap: off");
    std::fs::write(&config, text).unwrap();

    let o = Command::new(workspace_bin("train_classifier"))
        .arg("--config")
        .arg(&config)
        .args(["--create_sample", "--sample_per_class", "120", "--data_dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    train(&config, &data, &ckpt, None);

    let cfg = GatewayConfig::load(&config).unwrap();
    let state = Arc::new(AppState::new(cfg, Vec::new()).unwrap());
    let app = router(Arc::clone(&state));
    let before = classify(&app).await;
    let routed = before["category"].as_str().unwrap().to_string();

    // Users reject the answers routed by that category, many times over.
    let store = FeedbackStore::open(&db).unwrap();
    let record = ResponseRecord {
        query: QUERY.into(),
        category: routed.clone(),
        confidence: before["confidence"].as_f64().unwrap() as f32,
        hint_source: "server".into(),
        decision: "single".into(),
        experts: vec!["foundation".into()],
        mode: "single".into(),
    };
    for i in 0..60 {
        store
            .insert(&format!("chatcmpl-{i}"), -1, None, &record, 0)
            .unwrap();
    }
    drop(store);
    let out = train(&config, &data, &ckpt, Some(&db));
    assert!(
        out.contains("feedback: 60 ratings") && out.contains("60 training examples"),
        "{out}"
    );

    // The running gateway still answers with the old classifier until told to reload;
    // requests made while it reloads are all answered.
    assert_eq!(classify(&app).await["version"], before["version"]);
    let during: Vec<_> = (0..24)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { classify(&app).await })
        })
        .collect();
    let r = app
        .clone()
        .oneshot(
            Request::post("/admin/reload_classifier")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for d in during {
        d.await.unwrap();
    }
    let after = classify(&app).await;
    assert_ne!(after["version"], before["version"], "{after}");
    assert_ne!(
        after["category"].as_str().unwrap(),
        routed,
        "{before} → {after}"
    );

    // A broken checkpoint is refused and the working classifier stays.
    std::fs::write(ckpt.join("model.safetensors"), b"junk").unwrap();
    let r = app
        .clone()
        .oneshot(
            Request::post("/admin/reload_classifier")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(r.status().is_server_error() || r.status().is_client_error());
    assert_eq!(classify(&app).await["version"], after["version"]);

    // A missing feedback database is a clear error.
    let o = Command::new(workspace_bin("train_classifier"))
        .arg("--config")
        .arg(&config)
        .arg("--train_file")
        .arg(data.join("train.jsonl"))
        .arg("--output_dir")
        .arg(dir.path().join("other"))
        .arg("--from_feedback")
        .arg(dir.path().join("missing.sqlite"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("missing.sqlite") && !e.contains("panicked"),
        "{e}"
    );
}
