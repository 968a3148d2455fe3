//! The real `expert serve` process on the forged pair: concurrent streams produce exactly
//! the text of in-process generation, a client that disconnects frees its slot, malformed
//! requests get clear 4xx JSON errors, a full queue answers 503 with `Retry-After`, and
//! `POST /v1/score` scores continuations as the library does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device};
use experts::generate::{SamplingParams, generate};
use hybrid_tests::workspace_bin;

fn models() -> PathBuf {
    hybrid_tests::forged_small()
}

struct Expert {
    child: Child,
    url: String,
}

impl Drop for Expert {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, models: &Path, max_queue: usize, max_batch: usize) -> Expert {
    let config = dir.join(format!("experts-{max_queue}.yaml"));
    std::fs::write(
        &config,
        format!(
            "experts:\n  models:\n    foundation: {m}/foundation\n    sft-sop: {m}/sft-sop\n  max_queue: {max_queue}\n  max_batch: {max_batch}\n",
            m = models.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(workspace_bin("expert"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("listening on");
    Expert { child, url }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// POSTs `body` to `url`: the answer must be a 4xx JSON error whose message has `needle`.
fn assert_refused(client: &reqwest::blocking::Client, url: &str, body: &str, needle: &str) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    let status = r.status();
    let v: serde_json::Value = r.json().unwrap();
    assert!(status.is_client_error(), "{body}: {status}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{body}: {msg}");
}

const PROMPTS: [&str; 4] = [
    "How do I reset my password?",
    "What is 35 + 48?",
    "我想退货，怎么办？",
    "My router keeps dropping the wifi connection.",
];

fn stream_text(body: &str) -> (String, serde_json::Value) {
    let mut text = String::new();
    let mut done = serde_json::Value::Null;
    let mut event = "";
    for line in body.lines() {
        if let Some(e) = line.strip_prefix("event: ") {
            event = if e == "token" {
                "token"
            } else if e == "done" {
                "done"
            } else {
                "other"
            };
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            match event {
                "token" => text.push_str(v["text"].as_str().unwrap()),
                "done" => done = v,
                _ => panic!("unexpected event: {line}"),
            }
        }
    }
    (text, done)
}

fn metric(client: &reqwest::blocking::Client, url: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn expert_process_serves_concurrent_streams_and_rejects_bad_requests() {
    let models = models();
    let dir = tempfile::tempdir().unwrap();
    let expert = start(dir.path(), &models, 64, 16);
    let client = client();

    // What in-process generation says for each prompt (greedy is deterministic).
    let model =
        experts::loader::load_model(&models.join("sft-sop"), DType::F32, &Device::Cpu).unwrap();
    let expected: Vec<String> = PROMPTS
        .iter()
        .map(|p| {
            let text = model
                .chat_template
                .as_ref()
                .unwrap()
                .render(&[experts::chat::ChatMessage::user(*p)], true)
                .unwrap();
            let ids = model.tokenizer.encode(&text).unwrap();
            let params = SamplingParams {
                max_tokens: 24,
                ..SamplingParams::default()
            };
            generate(&model, &ids, &params, |_| true).unwrap().text
        })
        .collect();

    // 16 concurrent streaming requests.
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            let url = expert.url.clone();
            std::thread::spawn(move || {
                let body = serde_json::json!({
                    "mode": {"type": "single", "model": "sft-sop"},
                    "messages": [{"role": "user", "content": PROMPTS[i % PROMPTS.len()]}],
                    "sampling": {"max_tokens": 24},
                    "stream": true,
                });
                let r = client
                    .post(format!("{url}/v1/generate"))
                    .json(&body)
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200);
                (i, r.text().unwrap())
            })
        })
        .collect();
    for h in handles {
        let (i, body) = h.join().unwrap();
        let (text, done) = stream_text(&body);
        assert_eq!(text, expected[i % PROMPTS.len()], "stream {i}");
        assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert_eq!(done["cost"]["forwards_per_token"].as_f64(), Some(1.0));
    }
    // They were decoded together: the engine's largest step batch held several of them.
    let largest = metric(&client, &expert.url, "expert_batch_size{quantile=\"1\"}");
    assert!(largest >= 4.0, "largest decode batch {largest}");

    // The OpenAI-shaped endpoint on one model: the same text, JSON and streamed.
    let chat = serde_json::json!({
        "model": "sft-sop",
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": 24,
        "temperature": 0,
        "user": "ignored-field",
    });
    let v: serde_json::Value = client
        .post(format!("{}/v1/chat/completions", expert.url))
        .json(&chat)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], expected[0].as_str());
    assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let mut streamed = chat.clone();
    streamed["stream"] = true.into();
    let body = client
        .post(format!("{}/v1/chat/completions", expert.url))
        .json(&streamed)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let mut text = String::new();
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value = serde_json::from_str(data).unwrap();
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(text, expected[0]);
    let r = client
        .post(format!("{}/v1/chat/completions", expert.url))
        .json(
            &serde_json::json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    // A client that disconnects mid-stream frees its slot: its generation is cancelled
    // (counted in /metrics) and no sequence stays active. A sampled sequence may end by
    // itself before the disconnect is noticed, so up to three seeds are tried.
    let mut cancelled = false;
    for seed in 0..3 {
        let before = metric(&client, &expert.url, "expert_cancelled_total");
        let mut r = client
            .post(format!("{}/v1/generate", expert.url))
            .json(&serde_json::json!({
                "mode": {"type": "ensemble", "models": ["foundation", "sft-sop"]},
                "prompt": "The weather",
                "sampling": {"max_tokens": 250, "temperature": 1.0, "seed": seed},
                "stream": true,
            }))
            .send()
            .unwrap();
        let mut first = [0u8; 16];
        r.read_exact(&mut first).unwrap();
        drop(r);
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric(&client, &expert.url, "expert_active_sequences") > 0.0 {
            assert!(
                Instant::now() < deadline,
                "the abandoned sequence was not freed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if metric(&client, &expert.url, "expert_cancelled_total") > before {
            cancelled = true;
            break;
        }
    }
    assert!(cancelled, "no disconnect cancelled its generation");

    // Malformed requests: 4xx with a JSON error naming the problem.
    let cases = [
        ("{bad json", "JSON"),
        (
            r#"{"mode": {"type": "magic", "models": []}, "prompt": "x"}"#,
            "magic",
        ),
        (
            r#"{"mode": {"type": "single", "model": "nope"}, "prompt": "x"}"#,
            "nope",
        ),
        (
            r#"{"mode": {"type": "single", "model": "sft-sop"}, "prompt": "x", "sampling": {"max_tokens": 0}}"#,
            "max_tokens",
        ),
        (
            r#"{"mode": {"type": "single", "model": "sft-sop"}, "prompt": ""}"#,
            "empty",
        ),
        (
            r#"{"mode": {"type": "single", "model": "sft-sop"}, "prompt": 42}"#,
            "prompt",
        ),
        (
            r#"{"mode": {"type": "btm_token", "models": ["foundation", "sft-sop"]}, "prompt": "x"}"#,
            "router",
        ),
    ];
    for (body, needle) in cases {
        assert_refused(
            &client,
            &format!("{}/v1/generate", expert.url),
            body,
            needle,
        );
    }
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let models = models();
    let dir = tempfile::tempdir().unwrap();
    let expert = start(dir.path(), &models, 1, 1);
    let client = client();
    // The holder is sampled, so it may end by itself before the second request arrives;
    // up to three seeds are tried.
    let mut refused = false;
    for seed in 0..3 {
        let long = serde_json::json!({
            "mode": {"type": "single", "model": "foundation"},
            "prompt": "The",
            "sampling": {"max_tokens": 240, "temperature": 1.0, "seed": seed},
            "stream": true,
        });
        let mut holder = client
            .post(format!("{}/v1/generate", expert.url))
            .json(&long)
            .send()
            .unwrap();
        let mut first = [0u8; 8];
        holder.read_exact(&mut first).unwrap();
        let r = client
            .post(format!("{}/v1/generate", expert.url))
            .json(&long)
            .send()
            .unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "1");
            let v: serde_json::Value = r.json().unwrap();
            assert!(
                v["error"]["message"].as_str().unwrap().contains("full"),
                "{v}"
            );
            refused = true;
            break;
        }
        drop(holder);
    }
    assert!(
        refused,
        "a second request was never refused while the only slot was taken"
    );
}

/// `POST /v1/score` on the real process: a one-model mode's scores of a chat are those of
/// the library's own scoring of that model (`experts::scoring::continuation_nll`: the same
/// chat template, end of turn and teacher forcing; `experts/tests/forged.rs` checks the
/// teacher forcing against a plain forward and against generation's step), an ensemble
/// costs two forwards per token, and bad requests are 4xx JSON errors naming the problem.
#[test]
fn the_score_endpoint_matches_in_process_scoring_and_rejects_bad_requests() {
    let models = models();
    let dir = tempfile::tempdir().unwrap();
    let expert = start(dir.path(), &models, 64, 16);
    let client = client();
    let url = format!("{}/v1/score", expert.url);
    let prompt = "How do I reset my password?";
    let choices = [
        "1. Verify the customer's identity. 2. Send a password reset link.",
        "The answer is 12.",
        "退款",
    ];
    let score = |mode: serde_json::Value| -> serde_json::Value {
        let r = client
            .post(&url)
            .json(&serde_json::json!({
                "mode": mode,
                "messages": [{"role": "user", "content": prompt}],
                "continuations": choices,
            }))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap());
        r.json().unwrap()
    };
    let single = score(serde_json::json!({"type": "single", "model": "sft-sop"}));
    let model =
        experts::loader::load_model(&models.join("sft-sop"), DType::F32, &Device::Cpu).unwrap();
    let want = experts::scoring::continuation_nll(&model, prompt, &choices).unwrap();
    let scores = single["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 3);
    for (s, w) in scores.iter().zip(&want) {
        let got = s["mean_nll"].as_f64().unwrap();
        assert!((got - w).abs() < 1e-3, "served {got} vs in-process {w}");
        let tokens = s["tokens"].as_f64().unwrap();
        assert!((s["logprob"].as_f64().unwrap() + got * tokens).abs() < 1e-6);
    }
    assert_eq!(single["cost"]["forwards_per_token"], 1.0);
    let ensemble =
        score(serde_json::json!({"type": "ensemble", "models": ["foundation", "sft-sop"]}));
    assert_eq!(ensemble["cost"]["forwards_per_token"], 2.0);
    assert_eq!(ensemble["prompt_tokens"], single["prompt_tokens"]);

    let many: Vec<String> = (0..33).map(|i| format!("answer {i}")).collect();
    let many = serde_json::to_string(&many).unwrap();
    let single_mode = r#"{"type": "single", "model": "sft-sop"}"#;
    let cases = [
        ("{bad json".to_string(), "JSON"),
        (
            format!(r#"{{"mode": {single_mode}, "prompt": "x", "continuations": []}}"#),
            "1 to 32",
        ),
        (
            format!(r#"{{"mode": {single_mode}, "prompt": "x", "continuations": {many}}}"#),
            "1 to 32",
        ),
        (
            format!(r#"{{"mode": {single_mode}, "prompt": "x", "continuations": ["a", ""]}}"#),
            "continuation 1",
        ),
        (
            format!(r#"{{"mode": {single_mode}, "continuations": ["a"]}}"#),
            "exactly one",
        ),
        (
            format!(r#"{{"mode": {single_mode}, "prompt": "x", "continuations": "a"}}"#),
            "continuations",
        ),
        (
            format!(r#"{{"mode": {single_mode}, "prompt": "x", "continuations": ["a"], "echo": true}}"#),
            "echo",
        ),
        (
            r#"{"mode": {"type": "single", "model": "nope"}, "prompt": "x", "continuations": ["a"]}"#
                .to_string(),
            "nope",
        ),
    ];
    for (body, needle) in cases {
        assert_refused(&client, &url, &body, needle);
    }
}
