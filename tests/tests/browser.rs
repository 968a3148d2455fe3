//! The web page and the edge worker against the real gateway and real expert processes.
//!
//! - `page_classifies_streams_and_works_offline`: headless chromium (playwright-core,
//!   `/usr/bin/chromium`) opens the page the gateway serves, sees a reasoning and an SOP
//!   query classified as they are typed (rule-based and learned, in the wasm Web Worker),
//!   sends queries and follows the streamed answer and the routing panel (screenshots in
//!   `target/artifacts/browser/`); then the gateway is stopped, the page reloaded from the
//!   service worker's cache, and classification still works.
//! - `edge_worker_signs_hints_the_gateway_accepts`: `web/edge/worker.mjs` under node
//!   classifies and signs (WebCrypto HMAC) the request, the gateway in `signed` trust mode
//!   routes on it (`hint_source` = `signed_edge`); a tampered or wrongly keyed hint is not
//!   honoured.
//!
//! Needs `web/pkg` (scripts/build-wasm.sh), node, `npm ci` in tests/browser and chromium
//! (scripts/setup.sh installs them); a missing one fails the test with the fix, no skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use classifier::train::{TrainOptions, train};
use experts::router_train::{RouterTrainOptions, train_layer_mixer, train_token_router};
use hybrid_tests::{shipped_hybrid_section, workspace_bin, workspace_root};
use serde_json::{Value, json};

const EDGE_SECRET: &str = "browser-test-edge-secret-0123456789";
const REASONING: &str = "If a train leaves at 3pm at 60 km/h and another left at 2pm at 40 km/h, when does the first catch up? Explain step by step.";

/// The forged pair and its routers, made once per test binary (both tests need them).
fn models() -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let out = hybrid_tests::forged_small();
    let routers = out.join("routers");
    if !routers.join("btm_layer/mixer.safetensors").exists() {
        let load = |n: &str| {
            experts::loader::load_model(
                &out.join(n),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap()
        };
        let (a, b) = (load("foundation"), load("sft-sop"));
        let names = vec!["foundation".to_string(), "sft-sop".to_string()];
        let opts = RouterTrainOptions {
            steps: 40,
            layer_steps: 4,
            n_docs: 400,
            ..RouterTrainOptions::default()
        };
        train_token_router(&[&a, &b], &names, &opts, &routers.join("btm_token")).unwrap();
        train_layer_mixer(&[&a, &b], &names, &opts, &routers.join("btm_layer")).unwrap();
    }
    out
}

fn require_tools(chromium_too: bool) {
    let root = workspace_root();
    assert!(
        root.join("web/pkg/classifier_bg.wasm").exists(),
        "web/pkg is missing: run scripts/build-wasm.sh (scripts/test.sh does it)"
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is required (apt-get install nodejs; scripts/setup.sh checks it)"
    );
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "tests/browser/node_modules/playwright-core is missing: run `npm ci --prefix tests/browser` (scripts/setup.sh does it)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        !chromium_too || Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install -y chromium (scripts/setup.sh does it)"
    );
}

/// A copy of `web/` (page, worker, wasm package) with a freshly trained learned checkpoint
/// in `checkpoint/`, as `scripts/build-wasm.sh` lays it out.
fn web_dir(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == "node_modules" || name == "checkpoint" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(&name));
            } else {
                std::fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
    }
    let web = dir.join("web");
    copy(&workspace_root().join("web"), &web);
    let data = classifier::sample::generate(42, 350);
    let (t, v) = data.split_at(data.len() * 85 / 100);
    let cats = vec!["reasoning".to_string(), "sop".to_string()];
    let (learned, _) = train(t, v, &cats, &TrainOptions::default(), |_, _| {}).unwrap();
    learned.save(web.join("checkpoint")).unwrap();
    web
}

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server process and waits for its `listening on URL` line on stderr.
fn spawn_server(mut command: Command, tag: &'static str) -> Server {
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tag} did not start: {e}"));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(180))
        .unwrap_or_else(|_| panic!("{tag} did not print `listening on`"));
    Server { child, url }
}

fn start_gateway(dir: &Path, trust: &str, web: Option<&Path>) -> Server {
    let models = models();
    let hybrid = shipped_hybrid_section();
    let web_line = web.map_or(String::new(), |w| format!("  web_dir: {}\n", w.display()));
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
  edge_keys: {{edge1: {EDGE_SECRET}}}
  expert_processes: 1
  expert_binary: {bin}
  category_experts: {{reasoning: foundation, sop: sft-sop}}
  foundation_model: foundation
  fusion: {{type: btm_token, models: [foundation, sft-sop]}}
  feedback_db: {db}
  max_tokens_limit: 64
{web_line}",
        m = models.display(),
        bin = workspace_bin("expert").display(),
        db = dir.join("feedback.sqlite").display(),
    );
    let config = dir.join("config.yaml");
    std::fs::write(&config, text).unwrap();
    let gateway = workspace_bin("gateway");
    assert!(
        gateway.exists(),
        "{} is missing: build the workspace's binaries (cargo test --workspace builds them)",
        gateway.display()
    );
    let mut cmd = Command::new(gateway);
    cmd.arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"]);
    spawn_server(cmd, "gateway")
}

fn read_json_line(out: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    let n = out.read_line(&mut line).unwrap();
    assert!(n > 0, "the browser driver ended without a report");
    let v: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the browser driver printed non-JSON ({e}): {line}"));
    assert_ne!(
        v["phase"], "failed",
        "browser driver failed: {}",
        v["error"]
    );
    v
}

fn artifacts() -> PathBuf {
    // target/<profile>/deps/<test> → target/artifacts/browser
    workspace_bin("x")
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("artifacts")
        .join("browser")
}

fn confidence(shown: &Value) -> f64 {
    shown["last"]["confidence"].as_f64().unwrap()
}

#[test]
fn page_classifies_streams_and_works_offline() {
    require_tools(true);
    let dir = tempfile::tempdir().unwrap();
    let web = web_dir(dir.path());
    let mut gateway = Some(start_gateway(dir.path(), "any", Some(&web)));
    let url = gateway.as_ref().unwrap().url.clone();
    let shots = artifacts();

    let mut driver = Command::new("node")
        .arg(workspace_root().join("tests/browser/page.mjs"))
        .args(["--url", &url, "--screenshots"])
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut stdout = BufReader::new(driver.stdout.take().unwrap());
    let online = read_json_line(&mut stdout);
    eprintln!("online: {online:#}");

    // A failed wasm or package load is a clear message in the page.
    let wasm_404 = online["failures"]["wasm_404"].as_str().unwrap_or_default();
    assert!(
        wasm_404.contains("classifier did not load") && wasm_404.contains("classifier_bg.wasm"),
        "{wasm_404:?}"
    );
    let js_404 = online["failures"]["js_404"].as_str().unwrap_or_default();
    assert!(js_404.contains("build-wasm.sh"), "{js_404:?}");

    // Classification as the user types, with both classifier kinds.
    for kind in ["rules", "learned"] {
        let k = &online[kind];
        let prefix = if kind == "rules" {
            "rules-"
        } else {
            "learned-"
        };
        assert!(k["version"].as_str().unwrap().starts_with(prefix), "{k}");
        assert_eq!(
            k["reasoning"]["shown"]["category"], "reasoning",
            "{kind}: {k}"
        );
        assert_eq!(k["sop"]["shown"]["category"], "sop", "{kind}: {k}");
        for q in ["reasoning", "sop"] {
            let c = confidence(&k[q]);
            assert!((0.5..=1.0).contains(&c), "{kind} {q}: {c}");
            let shown = k[q]["shown"]["time"].as_str().unwrap();
            assert!(shown.ends_with(" µs"), "{shown}");
            let micros: f64 = shown.trim_end_matches(" µs").parse().unwrap();
            assert!(micros > 0.0 && micros < 50_000.0, "{shown}");
        }
    }
    // The route the page predicts follows its threshold (0.85 by default).
    let ambiguous = &online["rules"]["ambiguous"];
    let predicted = if confidence(ambiguous) >= 0.85 {
        "single"
    } else {
        "fusion"
    };
    assert_eq!(ambiguous["shown"]["decision"], predicted, "{ambiguous}");

    // Sent answers stream in and the routing panel shows how they were routed; in trust mode
    // `any` the gateway takes the page's hint.
    for (answer, decision) in [
        (&online["fusion_answer"], predicted),
        (&online["single_answer"], "single"),
    ] {
        assert_eq!(answer["state"], "done", "{answer}");
        assert!(answer["token_spans"].as_u64().unwrap() >= 2, "{answer}");
        assert!(
            answer["updates_while_streaming"].as_u64().unwrap() >= 2,
            "{answer}"
        );
        assert!(!answer["text"].as_str().unwrap().trim().is_empty());
        assert_eq!(answer["routing_visible"], true);
        assert_eq!(answer["routing"]["decision"], decision, "{answer}");
        assert_eq!(answer["routing"]["hint_source"], "client", "{answer}");
        assert!(
            answer["routing"]["usage"]
                .as_str()
                .unwrap()
                .contains("completion")
        );
    }
    let single = &online["single_answer"]["routing"];
    assert_eq!(single["experts"], "sft-sop");
    assert!(
        single["cost"].as_str().unwrap().starts_with("1×"),
        "{single}"
    );
    if predicted == "fusion" {
        let fused = &online["fusion_answer"];
        assert_eq!(fused["routing"]["mode"], "btm_token");
        assert!(fused["routing"]["cost"].as_str().unwrap().starts_with("2×"));
        assert_eq!(fused["routing"]["experts"], "foundation + sft-sop");
        // The page asks for per-token weights; a fused answer's tokens are coloured by them.
        let coloured = fused["coloured_spans"].as_u64().unwrap();
        assert!(coloured > 0, "{fused}");
    }
    assert_eq!(online["gateway_status"], "reachable");
    let cache = &online["cache"];
    for k in ["controlled", "page", "wasm", "checkpoint"] {
        assert_eq!(cache[k], true, "service worker cache: {cache}");
    }
    assert!(shots.join("browser-online.png").exists());
    assert_eq!(online["page_errors"], json!([]));

    // Gateway down: reload from the service worker's cache; classification still works.
    drop(gateway.take());
    let stdin = driver.stdin.as_mut().unwrap();
    writeln!(stdin, "gateway stopped").unwrap();
    let offline = read_json_line(&mut stdout);
    eprintln!("offline: {offline:#}");
    assert!(
        offline["kind_after_reload"]
            .as_str()
            .unwrap()
            .starts_with("learned-"),
        "the learned checkpoint comes from the cache: {offline}"
    );
    assert_eq!(
        offline["learned_reasoning"]["shown"]["category"],
        "reasoning"
    );
    assert_eq!(offline["rules_sop"]["shown"]["category"], "sop");
    assert_eq!(offline["send"]["state"], "error");
    assert!(
        offline["send"]["text"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{offline}"
    );
    assert!(
        offline["gateway_status"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    assert_eq!(offline["page_errors"], json!([]));
    let status = driver.wait().unwrap();
    assert!(status.success(), "browser driver: {status}");
}

fn post(client: &reqwest::blocking::Client, url: &str, body: &Value) -> (Value, Option<String>) {
    let r = client
        .post(format!("{url}/v1/chat/completions"))
        .json(body)
        .send()
        .unwrap();
    let status = r.status();
    let edge = r
        .headers()
        .get("x-edge-classification")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().unwrap();
    assert!(status.is_success(), "{status}: {text}");
    (
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        edge,
    )
}

fn start_edge(gateway: &str, secret: &str) -> Server {
    let mut cmd = Command::new("node");
    cmd.arg(workspace_root().join("web/edge/serve.mjs"))
        .args(["--gateway", gateway, "--listen", "127.0.0.1:0", "--key-id"])
        .arg("edge1")
        .env("EDGE_SECRET", secret);
    spawn_server(cmd, "edge")
}

#[test]
fn edge_worker_signs_hints_the_gateway_accepts() {
    require_tools(false);
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(dir.path(), "signed", None);
    let edge = start_edge(&gateway.url, EDGE_SECRET);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let messages = json!([
        {"role": "system", "content": "You are helpful. \"Quotes\", 中文 and\nnewlines."},
        {"role": "user", "content": "How do I reset my password? What are the steps to follow?"}
    ]);

    // Through the edge: classified, signed, accepted. A client's own hint is replaced.
    let (body, edge_header) = post(
        &client,
        &edge.url,
        &json!({"model": "hybrid", "messages": messages, "max_tokens": 8, "temperature": 0,
                "route_hint": {"category": "reasoning", "confidence": 0.1, "classifier_version": "forged"}}),
    );
    let routing = &body["routing"];
    assert_eq!(routing["hint_source"], "signed_edge", "{body}");
    assert_eq!(routing["category"], "sop", "{body}");
    assert_eq!(routing["decision"], "single", "{body}");
    let edge_header = edge_header.expect("x-edge-classification");
    assert!(edge_header.starts_with("sop;"), "{edge_header}");
    let edge_conf: f64 = edge_header.split(';').nth(1).unwrap().parse().unwrap();
    assert!(
        (routing["confidence"].as_f64().unwrap() - edge_conf).abs() < 1e-3,
        "the gateway routed on the edge's confidence: {routing} vs {edge_header}"
    );

    // Streaming through the edge.
    let text = client
        .post(format!("{}/v1/chat/completions", edge.url))
        .json(
            &json!({"model": "hybrid", "max_tokens": 8, "temperature": 0, "stream": true,
                      "messages": [{"role": "user", "content": REASONING}]}),
        )
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains(r#""hint_source":"signed_edge""#), "{text}");
    assert!(text.contains(r#""category":"reasoning""#), "{text}");

    // Signed by the worker's WebCrypto code and sent directly: accepted as is; with the
    // confidence lowered after signing (to buy fusion): not honoured.
    let sign = |confidence: &str| -> Value {
        let out = Command::new("node")
            .arg(workspace_root().join("tests/browser/sign.mjs"))
            .args(["edge1", "sop", confidence, "rules-test"])
            .arg(messages.to_string())
            .env("EDGE_SECRET", EDGE_SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let hint = sign("0.30000001192092896");
    let ask = |hint: &Value| {
        post(
            &client,
            &gateway.url,
            &json!({"model": "hybrid", "messages": messages, "max_tokens": 4, "temperature": 0,
                    "route_hint": hint}),
        )
        .0
    };
    let accepted = ask(&hint);
    assert_eq!(
        accepted["routing"]["hint_source"], "signed_edge",
        "{accepted}"
    );
    assert_eq!(accepted["routing"]["decision"], "fusion", "{accepted}");

    let mut tampered = sign("0.97");
    tampered["confidence"] = json!(0.3);
    let rejected = ask(&tampered);
    assert_eq!(rejected["routing"]["hint_source"], "server", "{rejected}");
    assert_ne!(rejected["routing"]["decision"], "fusion", "{rejected}");

    let mut bad_sig = hint.clone();
    let sig = bad_sig["signature"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    bad_sig["signature"] = json!(format!("{flipped}{}", &sig[1..]));
    assert_eq!(ask(&bad_sig)["routing"]["hint_source"], "server");

    // An edge holding the wrong secret is not trusted either.
    drop(edge);
    let wrong = start_edge(&gateway.url, "not-the-gateway-secret-0000");
    let (body, _) = post(
        &client,
        &wrong.url,
        &json!({"model": "hybrid", "messages": messages, "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(body["routing"]["hint_source"], "server", "{body}");

    let metrics = client
        .get(format!("{}/metrics", gateway.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("bad_signature"), "{metrics}");
}
