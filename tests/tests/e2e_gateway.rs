//! The whole path with real processes: the `gateway` binary starts a real `expert serve`
//! process over the forged model pair and a trained router; a real HTTP client sends
//! OpenAI-style requests; the answers come back routed (single expert or BTM fusion) with
//! the routing record, streamed or not; SIGTERM shuts both down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hybrid_tests::{shipped_hybrid_section, workspace_bin};

/// The small forged pair and its routers, cached under the target directory.
fn models() -> PathBuf {
    hybrid_tests::forged_small_with_routers()
}

struct Gateway {
    child: Child,
    url: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, models: &Path, trust: &str) -> PathBuf {
    let hybrid = shipped_hybrid_section();
    let text = format!(
        "{hybrid}
experts:
  models:
    foundation: {m}/foundation
    sft-sop: {m}/sft-sop
  routers: {{default: {m}/routers/btm_token}}
  mixers: {{default: {m}/routers/btm_layer}}
  max_batch: 16
gateway:
  listen: 127.0.0.1:0
  hint_trust: {trust}
  expert_processes: 1
  expert_binary: {bin}
  category_experts: {{reasoning: foundation, sop: sft-sop}}
  foundation_model: foundation
  fusion: {{type: btm_token, models: [foundation, sft-sop]}}
  feedback_db: {db}
  max_tokens_limit: 64
",
        m = models.display(),
        bin = workspace_bin("expert").display(),
        db = dir.join("feedback.sqlite").display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path) -> Gateway {
    let mut child = Command::new(workspace_bin("gateway"))
        .args(["--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("the gateway binary (cargo test --workspace builds it)");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[gateway] {line}");
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(180))
        .expect("gateway did not print `listening on`");
    Gateway { child, url }
}

fn chat(
    client: &reqwest::blocking::Client,
    url: &str,
    body: serde_json::Value,
) -> (reqwest::StatusCode, Option<String>, serde_json::Value) {
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status();
    let decision = r
        .headers()
        .get("x-route-decision")
        .map(|v| v.to_str().unwrap().to_string());
    (status, decision, r.json().unwrap())
}

#[test]
fn gateway_routes_to_real_expert_processes() {
    let models = models();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &models, "any");
    let gw = start(&config);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let ready = client.get(format!("{}/ready", gw.url)).send().unwrap();
    assert!(ready.status().is_success());
    let models_list: serde_json::Value = client
        .get(format!("{}/v1/models", gw.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(models_list.to_string().contains("sft-sop"), "{models_list}");

    // A confident SOP query: one expert, 1x.
    let (status, decision, body) = chat(
        &client,
        &gw.url,
        serde_json::json!({
            "model": "hybrid",
            "messages": [{"role": "user", "content": "How do I reset my password? I am locked out of my account."}],
            "max_tokens": 16,
            "temperature": 0,
        }),
    );
    assert_eq!(status, 200, "{body}");
    let routing = &body["routing"];
    assert_eq!(routing["decision"], "single", "{body}");
    assert_eq!(decision.as_deref(), Some("single"));
    assert_eq!(routing["experts"], serde_json::json!(["sft-sop"]));
    assert_eq!(routing["cost"].as_f64(), Some(1.0));
    assert!(body["choices"][0]["message"]["content"].as_str().is_some());
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // An uncertain hint (trusted in `any` mode): BTM fusion through the trained router, 2x.
    let (status, decision, body) = chat(
        &client,
        &gw.url,
        serde_json::json!({
            "model": "hybrid",
            "messages": [{"role": "user", "content": "Explain the plan"}],
            "max_tokens": 12,
            "temperature": 0,
            "route_hint": {"category": "reasoning", "confidence": 0.55, "classifier_version": "test"},
        }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(decision.as_deref(), Some("fusion"), "{body}");
    assert_eq!(body["routing"]["mode"], "btm_token");
    assert_eq!(body["routing"]["cost"].as_f64(), Some(2.0));
    assert_eq!(body["routing"]["hint_source"], "client");

    // Streaming: SSE chunks ending with [DONE].
    let text = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&serde_json::json!({
            "model": "hybrid",
            "messages": [{"role": "user", "content": "我想退货，流程是什么？"}],
            "max_tokens": 12,
            "temperature": 0,
            "stream": true,
        }))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("chat.completion.chunk"));

    // A streamed fusion answer carries each piece's mixing weights when asked.
    let text = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&serde_json::json!({
            "model": "hybrid",
            "messages": [{"role": "user", "content": "Explain the plan"}],
            "max_tokens": 12,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_routing_weights": true},
            "route_hint": {"category": "reasoning", "confidence": 0.55, "classifier_version": "test"},
        }))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let weights: Vec<Vec<f64>> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| serde_json::from_value(c["choices"][0]["delta"]["weights"].clone()).ok())
        .collect();
    assert!(!weights.is_empty(), "{text}");
    for w in &weights {
        assert_eq!(w.len(), 2);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-3, "{w:?}");
    }

    // Bad input is a clear 4xx, not a crash.
    let r = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .unwrap();
    assert!(r.status().is_client_error());
    let e: serde_json::Value = r.json().unwrap();
    assert!(e["error"]["message"].as_str().is_some(), "{e}");

    // kill -9 of the expert process mid-stream: the stream ends (with an error event when
    // the kill landed before the end), the gateway stays up, restarts the expert, and the
    // next request succeeds.
    let expert_pid = || -> Option<String> {
        let out = Command::new("ps")
            .args(["--ppid", &gw.child.id().to_string(), "-o", "pid="])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .map(String::from)
    };
    let before = expert_pid().expect("the gateway's expert process");
    let mut stream = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&serde_json::json!({
            "model": "sft-sop",
            "messages": [{"role": "user", "content": "Tell me a long story"}],
            "max_tokens": 64,
            "temperature": 1.0,
            "seed": 9,
            "stream": true,
        }))
        .send()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(&mut stream, &mut first).unwrap();
    assert!(
        Command::new("kill")
            .args(["-9", &before])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    let read = std::io::Read::read_to_string(&mut stream, &mut rest);
    assert!(
        rest.contains("[DONE]") || rest.contains("error"),
        "the stream neither finished nor reported an error: {rest:?} ({read:?})"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let after = expert_pid();
        let ready = client
            .get(format!("{}/ready", gw.url))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready && after.as_deref().is_some_and(|p| p != before) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expert was not restarted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _, body) = chat(
        &client,
        &gw.url,
        serde_json::json!({
            "model": "hybrid",
            "messages": [{"role": "user", "content": "How do I get a refund?"}],
            "max_tokens": 8,
        }),
    );
    assert_eq!(status, 200, "{body}");

    // SIGTERM: the gateway drains and exits, and stops its expert process.
    let pid = gw.child.id();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut gw = gw;
    let mut exited = None;
    for _ in 0..300 {
        if let Some(s) = gw.child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exited = exited.expect("gateway did not exit after SIGTERM");
    assert!(exited.success(), "{exited:?}");
}
