//! In-process tests of the HTTP API (tower `oneshot`): guards, validation, hint trust,
//! routing records, streaming, feedback, OpenAPI.
//!
//! The expert side is a scripted [`ExpertBackend`]: a test double of the transport only
//! (the end-to-end tests with real `expert serve` processes live in the `tests` crate).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use gateway::backend::{EventStream, ExpertBackend, ExpertEvent};
use gateway::feedback::FeedbackStore;
use gateway::{AppState, GatewayConfig, GatewayError, router};
use protocol::{
    ChatMessage, Cost, FinalRecord, FusionMode, GenerateRequest, Timings, TokenEvent, Usage,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const CONFIG: &str = r#"
hybrid:
  categories: ["reasoning", "sop"]
  classifier:
    type: "rule_based"
    checkpoint_dir: "./models/checkpoints/classifier"
    rules_file: "RULES"
  routing:
    confidence_threshold: 0.85
    enable_btm_fallback: true
experts:
  models:
    foundation: models/foundation
    sft-sop: models/sft-sop
  device: cpu
gateway:
  listen: "127.0.0.1:0"
  api_keys: []
  hint_trust: none
  edge_keys: {edge1: "0123456789abcdef-secret"}
  hint_max_age_s: 300
  max_body_bytes: 4096
  max_concurrent_requests: 4
  max_tokens_limit: 64
  request_timeout_s: 30
  expert_processes: 0
  remote_experts: ["http://127.0.0.1:9"]
  category_experts: {reasoning: foundation, sop: sft-sop}
  foundation_model: foundation
  fusion: {type: btm_token, models: [foundation, sft-sop]}
  feedback_db: DB
  web_dir: WEB
"#;

const SECRET: &str = "0123456789abcdef-secret";
/// A plainly SOP query (the rule-based classifier is confident on it).
const SOP_QUERY: &str =
    "What is the refund policy? How do I return my order and request a refund for the shipping?";

/// How the scripted expert behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Script {
    /// "Hel", "lo", then a final record.
    Answer,
    /// Never answers (holds the request open).
    Hang,
    /// One token, then an error event.
    FailMidStream,
}

#[derive(Debug)]
struct ScriptedExpert {
    script: Script,
    healthy: bool,
    requests: Mutex<Vec<GenerateRequest>>,
}

impl ScriptedExpert {
    fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            script,
            healthy: true,
            requests: Mutex::new(Vec::new()),
        })
    }

    fn last_mode(&self) -> FusionMode {
        self.requests.lock().unwrap().last().unwrap().mode.clone()
    }
}

fn record() -> FinalRecord {
    FinalRecord {
        finish_reason: "stop".into(),
        usage: Usage {
            prompt_tokens: 7,
            completion_tokens: 2,
        },
        cost: Cost {
            forwards_per_token: 1.0,
            total_token_forwards: 9,
        },
        timings: Timings::default(),
        routing_weights: None,
    }
}

fn token(text: &str) -> gateway::Result<ExpertEvent> {
    Ok(ExpertEvent::Token(TokenEvent {
        text: text.into(),
        weights: None,
    }))
}

impl ExpertBackend for ScriptedExpert {
    fn name(&self) -> String {
        "scripted".into()
    }

    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, gateway::Result<EventStream>> {
        self.requests.lock().unwrap().push(request);
        let script = self.script;
        Box::pin(async move {
            let stream: EventStream = match script {
                Script::Answer => futures_util::stream::iter(vec![
                    token("Hel"),
                    token("lo"),
                    Ok(ExpertEvent::Done(record())),
                ])
                .boxed(),
                Script::Hang => futures_util::stream::pending().boxed(),
                Script::FailMidStream => futures_util::stream::iter(vec![
                    token("Hel"),
                    Err(GatewayError::Upstream("the expert died".into())),
                ])
                .boxed(),
            };
            Ok(stream)
        })
    }

    fn health(&self) -> BoxFuture<'_, bool> {
        let healthy = self.healthy;
        Box::pin(async move { healthy })
    }

    fn models(&self) -> BoxFuture<'_, gateway::Result<Vec<String>>> {
        Box::pin(async { Ok(vec!["foundation".to_string(), "sft-sop".to_string()]) })
    }
}

struct Harness {
    app: Router,
    expert: Arc<ScriptedExpert>,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn harness_with(edit: impl Fn(String) -> String, expert: Arc<ScriptedExpert>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/rules.json");
    let db = dir.path().join("feedback.sqlite");
    let web = dir.path().join("web");
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<h1>hybrid router</h1>").unwrap();
    let text = edit(
        CONFIG
            .replace("RULES", rules.to_str().unwrap())
            .replace("DB", db.to_str().unwrap())
            .replace("WEB", web.to_str().unwrap()),
    );
    let config = GatewayConfig::parse(&text, Path::new("test.yaml")).unwrap();
    let backend: Arc<dyn ExpertBackend> = expert.clone();
    let state = AppState::new(config, vec![backend]).unwrap();
    state.dispatcher.refresh().await;
    Harness {
        app: router(Arc::new(state)),
        expert,
        db,
        _dir: dir,
    }
}

async fn harness(edit: impl Fn(String) -> String) -> Harness {
    harness_with(edit, ScriptedExpert::new(Script::Answer)).await
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn post_raw(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, headers, body.to_vec())
}

async fn send_json(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let (status, headers, body) = send(app, req).await;
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, headers, value)
}

fn chat(content: &str) -> Value {
    json!({"model": "hybrid", "messages": [{"role": "user", "content": content}], "max_tokens": 8})
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        body["error"]["type"].is_string() && body["error"]["code"].is_string(),
        "{body}"
    );
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

#[tokio::test]
async fn auth_rejects_missing_and_wrong_keys_and_leaves_health_open() {
    let h = harness(|c| c.replace("api_keys: []", "api_keys: [\"sk-right\"]")).await;
    let (s, headers, body) = send_json(&h.app, get("/v1/models")).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "API key");
    assert!(headers.contains_key("x-request-id"));
    let wrong = Request::get("/v1/models")
        .header(header::AUTHORIZATION, "Bearer sk-wrong")
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = send_json(&h.app, wrong).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "API key");
    let right = Request::get("/v1/models")
        .header(header::AUTHORIZATION, "Bearer sk-right")
        .body(Body::empty())
        .unwrap();
    let (s, _, body) = send_json(&h.app, right).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["data"][0]["id"], "hybrid");
    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let (s, _, _) = send(&h.app, get(open)).await;
        assert_eq!(s, StatusCode::OK, "{open}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let h = harness(|c| c).await;
    let big = "x".repeat(8192);
    let (s, _, body) = send_json(&h.app, post("/v1/chat/completions", &chat(&big))).await;
    assert_error(s, &body, StatusCode::PAYLOAD_TOO_LARGE, "4096 bytes");
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn full_concurrency_is_429_with_retry_after_and_the_permit_lives_with_the_stream() {
    let h = harness_with(
        |c| c.replace("max_concurrent_requests: 4", "max_concurrent_requests: 1"),
        ScriptedExpert::new(Script::Hang),
    )
    .await;
    let mut streaming = chat(SOP_QUERY);
    streaming["stream"] = json!(true);
    let open = h
        .app
        .clone()
        .oneshot(post("/v1/chat/completions", &streaming))
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let (s, headers, body) =
        send_json(&h.app, post("/v1/chat/completions", &chat(SOP_QUERY))).await;
    assert_error(s, &body, StatusCode::TOO_MANY_REQUESTS, "too many");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    drop(open);
    // The stream is gone, so is its permit; the next request gets through to the expert
    // (which hangs, so only the start is checked with a short timeout).
    let next = tokio::time::timeout(
        Duration::from_millis(300),
        h.app
            .clone()
            .oneshot(post("/v1/chat/completions", &streaming)),
    )
    .await
    .expect("not refused")
    .unwrap();
    assert_eq!(next.status(), StatusCode::OK);
}

fn keyed(mut req: Request<Body>, key: &str) -> Request<Body> {
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    req
}

#[tokio::test]
async fn one_key_over_its_share_is_429_while_other_keys_still_get_in() {
    let h = harness_with(
        |c| {
            c.replace("api_keys: []", "api_keys: [\"sk-a\", \"sk-b\"]")
                .replace(
                    "max_concurrent_requests: 4",
                    "max_concurrent_requests: 4\n  max_concurrent_per_key: 1",
                )
        },
        ScriptedExpert::new(Script::Hang),
    )
    .await;
    let mut streaming = chat(SOP_QUERY);
    streaming["stream"] = json!(true);
    let open = h
        .app
        .clone()
        .oneshot(keyed(post("/v1/chat/completions", &streaming), "sk-a"))
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let (s, headers, body) = send_json(
        &h.app,
        keyed(post("/v1/chat/completions", &chat(SOP_QUERY)), "sk-a"),
    )
    .await;
    assert_error(
        s,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "for this API key (limit 1)",
    );
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "too_many_requests_for_key");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(headers.contains_key("x-request-id"));
    // The other key has its own slots and the gateway has room: it gets in.
    let other = tokio::time::timeout(
        Duration::from_millis(300),
        h.app
            .clone()
            .oneshot(keyed(post("/v1/chat/completions", &streaming), "sk-b")),
    )
    .await
    .expect("not refused")
    .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    // A refused request held no slot: after the first stream ends, key a gets in again.
    drop(open);
    let again = tokio::time::timeout(
        Duration::from_millis(300),
        h.app
            .clone()
            .oneshot(keyed(post("/v1/chat/completions", &streaming), "sk-a")),
    )
    .await
    .expect("not refused")
    .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_gateway_limit_still_holds_across_keys() {
    let h = harness_with(
        |c| {
            c.replace("api_keys: []", "api_keys: [\"sk-a\", \"sk-b\"]")
                .replace("max_concurrent_requests: 4", "max_concurrent_requests: 1")
        },
        ScriptedExpert::new(Script::Hang),
    )
    .await;
    let mut streaming = chat(SOP_QUERY);
    streaming["stream"] = json!(true);
    let open = h
        .app
        .clone()
        .oneshot(keyed(post("/v1/chat/completions", &streaming), "sk-a"))
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let (s, headers, body) = send_json(
        &h.app,
        keyed(post("/v1/chat/completions", &chat(SOP_QUERY)), "sk-b"),
    )
    .await;
    assert_error(
        s,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "on this gateway (limit 1)",
    );
    assert_eq!(body["error"]["code"], "too_many_requests");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    drop(open);
}

#[tokio::test]
async fn bad_requests_are_400_with_clear_messages() {
    let h = harness(|c| c).await;
    // Well-formed JSON of the wrong shape: 422.
    for (req, needle) in [
        (
            post(
                "/v1/chat/completions",
                &json!({"model": "hybrid", "messages": [], "bogus": 1}),
            ),
            "bogus",
        ),
        (
            post(
                "/v1/chat/completions",
                &json!({"model": "hybrid", "messages": "hi"}),
            ),
            "invalid request body",
        ),
    ] {
        let (s, _, body) = send_json(&h.app, req).await;
        assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, needle);
    }
    let cases: Vec<(Request<Body>, &str)> = vec![
        (
            post_raw("/v1/chat/completions", "{\"model\": \"hybrid\", "),
            "invalid JSON",
        ),
        (
            post(
                "/v1/chat/completions",
                &json!({"model": "hybrid", "messages": []}),
            ),
            "must not be empty",
        ),
        (
            post("/v1/chat/completions", &chat("   \n\t")),
            "content` is empty",
        ),
        (
            post("/v1/chat/completions", &{
                let mut c = chat("hello");
                c["n"] = json!(2);
                c
            }),
            "`n` must be 1",
        ),
        (
            post("/v1/chat/completions", &{
                let mut c = chat("hello");
                c["max_tokens"] = json!(65);
                c
            }),
            "limit of 64",
        ),
        (
            post("/v1/chat/completions", &{
                let mut c = chat("hello");
                c["temperature"] = json!(3.0);
                c
            }),
            "temperature",
        ),
        (
            post("/v1/chat/completions", &{
                let mut c = chat("hello");
                c["route_hint"] =
                    json!({"category": "legal", "confidence": 0.5, "classifier_version": "x"});
                c
            }),
            "route_hint.category",
        ),
        (post("/v1/classify", &json!({"text": " "})), "empty"),
        (
            post("/v1/feedback", &json!({"response_id": "x", "rating": 3})),
            "rating",
        ),
    ];
    for (req, needle) in cases {
        let (s, _, body) = send_json(&h.app, req).await;
        assert_error(s, &body, StatusCode::BAD_REQUEST, needle);
    }
    let (s, _, body) = send_json(
        &h.app,
        post(
            "/v1/chat/completions",
            &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    )
    .await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "gpt-9");
    let (s, _, body) = send_json(&h.app, get("/v1/nothing")).await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "/v1/nothing");
}

async fn routed(h: &Harness, body: &Value) -> (Value, String) {
    let (s, headers, body) = send_json(&h.app, post("/v1/chat/completions", body)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let header = headers["x-route-decision"].to_str().unwrap().to_string();
    assert_eq!(body["routing"]["decision"], header.as_str());
    (body["routing"].clone(), header)
}

fn with_hint(content: &str, hint: Value) -> Value {
    let mut c = chat(content);
    c["route_hint"] = hint;
    c
}

fn signed_hint(category: &str, confidence: f64, ts: i64, content: &str) -> Value {
    let messages = [ChatMessage {
        role: "user".into(),
        content: content.into(),
    }];
    let signature = gateway::hint::sign(SECRET, category, confidence, "rules-test", ts, &messages);
    json!({"category": category, "confidence": confidence, "classifier_version": "rules-test",
           "signature": signature, "key_id": "edge1", "timestamp": ts})
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn the_sop_query_is_confidently_sop_on_the_server() {
    let h = harness(|c| c).await;
    let (s, _, body) = send_json(&h.app, post("/v1/classify", &json!({"text": SOP_QUERY}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["category"], "sop");
    assert_eq!(body["label"], 1);
    assert!(body["confidence"].as_f64().unwrap() >= 0.85, "{body}");
    assert!(body["version"].as_str().is_some_and(|v| !v.is_empty()));
}

#[tokio::test]
async fn trust_none_ignores_a_forged_low_confidence() {
    let h = harness(|c| c).await;
    let forged = with_hint(
        SOP_QUERY,
        json!({"category": "sop", "confidence": 0.0, "classifier_version": "forged"}),
    );
    let (routing, header) = routed(&h, &forged).await;
    assert_eq!(header, "single");
    assert_eq!(routing["hint_source"], "server");
    assert_eq!(routing["category"], "sop");
    assert_eq!(routing["experts"], json!(["sft-sop"]));
    assert_eq!(routing["mode"], "single");
    assert_eq!(routing["cost"], 1.0);
    assert_eq!(routing["threshold"].as_f64().unwrap() as f32, 0.85);
    assert_eq!(
        h.expert.last_mode(),
        FusionMode::Single {
            model: "sft-sop".into()
        }
    );
}

#[tokio::test]
async fn trust_signed_honours_valid_signatures_only() {
    let h = harness(|c| c.replace("hint_trust: none", "hint_trust: signed")).await;
    let valid = with_hint(SOP_QUERY, signed_hint("sop", 0.2, now(), SOP_QUERY));
    let (routing, header) = routed(&h, &valid).await;
    assert_eq!(header, "fusion");
    assert_eq!(routing["hint_source"], "signed_edge");
    assert_eq!(routing["experts"], json!(["foundation", "sft-sop"]));
    assert_eq!(routing["mode"], "btm_token");
    assert_eq!(routing["cost"], 2.0);
    assert!(matches!(h.expert.last_mode(), FusionMode::BtmToken { .. }));

    let mut tampered = signed_hint("sop", 0.2, now(), SOP_QUERY);
    tampered["confidence"] = json!(0.1);
    let (routing, header) = routed(&h, &with_hint(SOP_QUERY, tampered)).await;
    assert_eq!(
        (header.as_str(), &routing["hint_source"]),
        ("single", &json!("server"))
    );

    // Signed for another text.
    let other = signed_hint("sop", 0.2, now(), "something else");
    let (routing, _) = routed(&h, &with_hint(SOP_QUERY, other)).await;
    assert_eq!(routing["hint_source"], "server");

    let stale = signed_hint("sop", 0.2, now() - 1000, SOP_QUERY);
    let (routing, header) = routed(&h, &with_hint(SOP_QUERY, stale)).await;
    assert_eq!(
        (header.as_str(), &routing["hint_source"]),
        ("single", &json!("server"))
    );

    let (_, _, metrics) = send(&h.app, get("/metrics")).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("gateway_hint_rejected_total{reason=\"stale\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_hint_rejected_total{reason=\"bad_signature\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn trust_any_takes_the_hint_as_sent() {
    let h = harness(|c| c.replace("hint_trust: none", "hint_trust: any")).await;
    let hint = json!({"category": "reasoning", "confidence": 0.95, "classifier_version": "v"});
    let (routing, header) = routed(&h, &with_hint(SOP_QUERY, hint)).await;
    assert_eq!(header, "single");
    assert_eq!(routing["hint_source"], "client");
    assert_eq!(routing["category"], "reasoning");
    assert_eq!(routing["experts"], json!(["foundation"]));
    let hint = json!({"category": "sop", "confidence": 0.3, "classifier_version": "v"});
    let (_, header) = routed(&h, &with_hint(SOP_QUERY, hint)).await;
    assert_eq!(header, "fusion");
}

#[tokio::test]
async fn fallback_disabled_routes_uncertain_queries_to_the_foundation_model() {
    let h = harness(|c| {
        c.replace("hint_trust: none", "hint_trust: any")
            .replace("enable_btm_fallback: true", "enable_btm_fallback: false")
    })
    .await;
    let hint = json!({"category": "sop", "confidence": 0.3, "classifier_version": "v"});
    let (routing, header) = routed(&h, &with_hint(SOP_QUERY, hint)).await;
    assert_eq!(header, "foundation");
    assert_eq!(routing["experts"], json!(["foundation"]));
}

#[tokio::test]
async fn non_streamed_answer_has_openai_shape_usage_and_routing() {
    let h = harness(|c| c).await;
    let (s, headers, body) =
        send_json(&h.app, post("/v1/chat/completions", &chat(SOP_QUERY))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], "hybrid");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9})
    );
    let sent = h.expert.requests.lock().unwrap().last().unwrap().clone();
    assert_eq!(sent.sampling.max_tokens, 8);
    assert_eq!(sent.messages.unwrap()[0].content, SOP_QUERY);

    // A pinned model bypasses the policy.
    let mut pinned = chat(SOP_QUERY);
    pinned["model"] = json!("foundation");
    let (routing, header) = routed(&h, &pinned).await;
    assert_eq!(header, "pinned");
    assert_eq!(routing["experts"], json!(["foundation"]));
}

fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[tokio::test]
async fn streamed_answer_ends_with_done_and_carries_routing() {
    let h = harness(|c| c).await;
    let mut req = chat(SOP_QUERY);
    req["stream"] = json!(true);
    let (s, headers, body) = send(&h.app, post("/v1/chat/completions", &req)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["x-route-decision"], "single");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    let last = chunks.last().unwrap();
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["total_tokens"], 9);
    assert_eq!(last["routing"]["decision"], "single");
    assert_eq!(last["routing"]["experts"], json!(["sft-sop"]));
}

#[tokio::test]
async fn an_expert_failing_mid_stream_gives_an_error_event() {
    let h = harness_with(|c| c, ScriptedExpert::new(Script::FailMidStream)).await;
    let mut req = chat(SOP_QUERY);
    req["stream"] = json!(true);
    let (s, _, body) = send(&h.app, post("/v1/chat/completions", &req)).await;
    assert_eq!(s, StatusCode::OK);
    let data = sse_data(&body);
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the expert died"),
        "{data:?}"
    );
    assert!(!data.iter().any(|d| d == "[DONE]"));
    // Not streamed: a 502.
    let (s, _, body) = send_json(&h.app, post("/v1/chat/completions", &chat(SOP_QUERY))).await;
    assert_error(s, &body, StatusCode::BAD_GATEWAY, "the expert died");
}

#[tokio::test]
async fn slow_experts_time_out_with_504() {
    let h = harness_with(
        |c| c.replace("request_timeout_s: 30", "request_timeout_s: 1"),
        ScriptedExpert::new(Script::Hang),
    )
    .await;
    let (s, _, body) = send_json(&h.app, post("/v1/chat/completions", &chat(SOP_QUERY))).await;
    assert_error(s, &body, StatusCode::GATEWAY_TIMEOUT, "timed out");
}

#[tokio::test]
async fn not_ready_without_a_healthy_expert() {
    let expert = Arc::new(ScriptedExpert {
        script: Script::Answer,
        healthy: false,
        requests: Mutex::new(Vec::new()),
    });
    let h = harness_with(|c| c, expert).await;
    let (s, _, body) = send_json(&h.app, get("/ready")).await;
    assert_error(s, &body, StatusCode::SERVICE_UNAVAILABLE, "healthy");
    let (s, _, _) = send(&h.app, get("/health")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = send_json(&h.app, post("/v1/chat/completions", &chat(SOP_QUERY))).await;
    assert_error(
        s,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "no healthy expert",
    );
}

#[tokio::test]
async fn feedback_is_stored_with_the_query_and_route() {
    let h = harness(|c| c).await;
    let (_, _, answer) = send_json(&h.app, post("/v1/chat/completions", &chat(SOP_QUERY))).await;
    let id = answer["id"].as_str().unwrap();
    let (s, _, body) = send_json(
        &h.app,
        post(
            "/v1/feedback",
            &json!({"response_id": id, "rating": -1, "comment": "too short"}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "stored");
    let rows = FeedbackStore::open(&h.db).unwrap().all().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].response_id, id);
    assert_eq!(rows[0].rating, -1);
    assert_eq!(rows[0].comment.as_deref(), Some("too short"));
    assert_eq!(rows[0].record.query, SOP_QUERY);
    assert_eq!(rows[0].record.category, "sop");
    assert_eq!(rows[0].record.decision, "single");
    assert_eq!(rows[0].record.experts, ["sft-sop"]);
    let (s, _, body) = send_json(
        &h.app,
        post(
            "/v1/feedback",
            &json!({"response_id": "chatcmpl-unknown", "rating": 1}),
        ),
    )
    .await;
    assert_error(s, &body, StatusCode::NOT_FOUND, "unknown");
}

#[tokio::test]
async fn openapi_web_page_and_metrics_are_served() {
    let h = harness(|c| c).await;
    let (s, _, doc) = send_json(&h.app, get("/openapi.json")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    for path in [
        "/v1/chat/completions",
        "/v1/models",
        "/v1/classify",
        "/v1/feedback",
        "/health",
        "/ready",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["RoutingInfo"].is_object());
    let (s, _, page) = send(&h.app, get("/")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page).contains("hybrid router"));
    send(&h.app, get("/health")).await;
    let (_, _, metrics) = send(&h.app, get("/metrics")).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("gateway_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/health\""), "{metrics}");
}
