//! The real transports: [`HttpExpert`] against an HTTP server on loopback speaking the
//! expert protocol (served here by axum), and [`LocalExpert`] supervising a stand-in
//! `expert` process (a small Python script; skipped where `python3` is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use futures_util::StreamExt;
use gateway::backend::{ExpertBackend, ExpertEvent, HttpExpert};
use gateway::dispatch::Dispatcher;
use gateway::supervisor::{ExpertCommand, LocalExpert};
use protocol::{ErrorBody, FusionMode, GenerateRequest, ModelCard, ModelList, Sampling};

const DONE: &str = r#"{"finish_reason":"length","usage":{"prompt_tokens":3,"completion_tokens":2},"cost":{"forwards_per_token":2.0,"total_token_forwards":10},"timings":{"queue_ms":0.0,"prefill_ms":1.0,"decode_ms":2.0}}"#;

async fn generate(Json(req): Json<GenerateRequest>) -> axum::response::Response {
    match req.messages.as_ref().map(|m| m[0].content.as_str()) {
        Some("refuse") => (
            StatusCode::BAD_REQUEST,
            Json(ErrorBody::new("prompt too long", "invalid_request_error", "x")),
        )
            .into_response(),
        Some("crash") => (
            [("content-type", "text/event-stream")],
            "event: token\ndata: {\"text\":\"a\"}\n\n",
        )
            .into_response(),
        // Not streamed: one JSON answer.
        _ if !req.stream => {
            let body = format!(
                "{{\"text\":\"{}!\",{}",
                req.mode.name(),
                DONE.trim_start_matches('{')
            );
            ([("content-type", "application/json")], body).into_response()
        }
        _ => (
            [("content-type", "text/event-stream")],
            format!(
                "event: token\ndata: {{\"text\":\"{}\"}}\n\nevent: token\ndata: {{\"text\":\"!\"}}\n\nevent: done\ndata: {DONE}\n\n",
                req.mode.name()
            ),
        )
            .into_response(),
    }
}

async fn fake_expert() -> String {
    let app = axum::Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/v1/models",
            get(|| async {
                Json(ModelList {
                    object: "list".into(),
                    data: ["foundation", "sft-sop"]
                        .iter()
                        .map(|m| ModelCard {
                            id: m.to_string(),
                            object: "model".into(),
                            owned_by: "test".into(),
                        })
                        .collect(),
                })
            }),
        )
        .route("/v1/generate", post(generate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn request(content: &str, mode: FusionMode) -> GenerateRequest {
    GenerateRequest {
        mode,
        prompt: None,
        messages: Some(vec![protocol::ChatMessage {
            role: "user".into(),
            content: content.into(),
        }]),
        sampling: Sampling::default(),
        stream: true,
        return_routing_weights: false,
    }
}

fn btm() -> FusionMode {
    FusionMode::BtmToken {
        models: vec!["foundation".into(), "sft-sop".into()],
        router: None,
        hard: false,
    }
}

#[tokio::test]
async fn http_expert_speaks_the_protocol() {
    let url = fake_expert().await;
    let expert = HttpExpert::new(format!("{url}/"));
    assert!(expert.health().await);
    assert_eq!(expert.models().await.unwrap(), ["foundation", "sft-sop"]);
    let events: Vec<_> = expert
        .generate(request("hi", btm()))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 3);
    assert!(matches!(&events[0], Ok(ExpertEvent::Token(t)) if t.text == "btm_token"));
    assert!(
        matches!(&events[2], Ok(ExpertEvent::Done(r)) if r.finish_reason == "length" && r.cost.forwards_per_token == 2.0)
    );

    // Not streamed: the expert's one JSON answer becomes a token and the final record.
    let mut whole = request("hi", btm());
    whole.stream = false;
    let events: Vec<_> = expert.generate(whole).await.unwrap().collect().await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(&events[0], Ok(ExpertEvent::Token(t)) if t.text == "btm_token!"));
    assert!(
        matches!(&events[1], Ok(ExpertEvent::Done(r)) if r.usage.completion_tokens == 2 && r.cost.forwards_per_token == 2.0)
    );

    let refused = expert
        .generate(request("refuse", btm()))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&refused, gateway::GatewayError::BadRequest(m) if m.contains("prompt too long")),
        "{refused}"
    );
    let crashed: Vec<_> = expert
        .generate(request("crash", btm()))
        .await
        .unwrap()
        .collect()
        .await;
    assert!(matches!(
        crashed.last(),
        Some(Err(gateway::GatewayError::Upstream(_)))
    ));
}

#[tokio::test]
async fn dispatch_skips_dead_backends_and_checks_models() {
    let url = fake_expert().await;
    let dead: Arc<dyn ExpertBackend> = Arc::new(HttpExpert::new("http://127.0.0.1:9"));
    let live: Arc<dyn ExpertBackend> = Arc::new(HttpExpert::new(url));
    let d = Dispatcher::new(vec![dead, live]);
    d.refresh().await;
    assert_eq!(d.healthy_count(), 1);
    let mut s = d.generate(request("hi", btm())).await.unwrap();
    assert!(matches!(s.next().await, Some(Ok(ExpertEvent::Token(_)))));
    assert_eq!(d.slots()[1].in_flight(), 1);
    drop(s);
    assert_eq!(d.slots()[1].in_flight(), 0);
    let none = d
        .generate(request(
            "hi",
            FusionMode::Single {
                model: "other".into(),
            },
        ))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(none, gateway::GatewayError::Unavailable(_)),
        "{none}"
    );
}

const FAKE_EXPERT: &str = r#"#!/usr/bin/env python3
import json, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = json.dumps({"object": "list", "data": [{"id": "foundation", "object": "model", "owned_by": "x"}]} if self.path == "/v1/models" else {"status": "ok"}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
assert sys.argv[1] == "serve" and "--config" in sys.argv and "--listen" in sys.argv
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print("loading", file=sys.stderr, flush=True)
print(f"listening on http://127.0.0.1:{s.server_address[1]}", file=sys.stderr, flush=True)
s.serve_forever()
"#;

/// The newest live child of this test process (no other test here starts processes).
fn newest_child() -> Option<i32> {
    let me = std::process::id().to_string();
    let mut newest = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat.rsplit(") ").next()?.split(' ').collect();
        if fields.get(1) == Some(&me.as_str()) && fields.first() != Some(&"Z") {
            newest = Some(newest.map_or(pid, |n: i32| n.max(pid)));
        }
    }
    newest
}

#[tokio::test]
async fn local_expert_starts_restarts_and_stops_its_process() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: python3 is missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("expert");
    std::fs::write(&binary, FAKE_EXPERT).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let command = ExpertCommand {
        binary,
        config: dir.path().join("config.yaml"),
        start_timeout: Duration::from_secs(20),
        stop_grace: Duration::from_secs(2),
    };
    let expert = LocalExpert::start(0, command.clone()).await.unwrap();
    let first = expert.url().unwrap();
    assert!(expert.health().await);
    assert_eq!(expert.models().await.unwrap(), ["foundation"]);

    let pid = newest_child().expect("the child process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut restarted = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(url) = expert.url()
            && url != first
            && expert.health().await
        {
            restarted = Some(url);
            break;
        }
    }
    let second = restarted.expect("restarted within 10 s");
    expert.shutdown().await;
    assert!(expert.url().is_none());
    assert!(!HttpExpert::new(second).health().await, "stopped");

    let missing = ExpertCommand {
        binary: dir.path().join("nope"),
        ..command
    };
    let e = LocalExpert::start(1, missing)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("expert_binary"), "{e}");
}
