//! The official `openai` Python client (pip, pinned by `scripts/setup.sh`) works unchanged
//! against the real gateway and a real expert process: models, chat, streaming, the routing
//! record, and a 401 it understands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use hybrid_tests::{
    GatewayProcess, forged_small_with_routers, workspace_root, write_forged_config,
};

const KEY: &str = "sk-openai-client-test";

/// The virtual environment `scripts/setup.sh` creates.
fn python() -> PathBuf {
    let python = workspace_root().join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh, which creates the venv with the pinned `openai` client",
        python.display()
    );
    python
}

#[test]
fn the_official_openai_client_works_unchanged() {
    let python = python();
    let models = forged_small_with_routers();
    let dir = tempfile::tempdir().unwrap();
    let config = write_forged_config(
        dir.path(),
        &models,
        &format!("  api_keys: [\"{KEY}\"]\n  max_tokens_limit: 64\n"),
    );
    let gw = GatewayProcess::start(&config);
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/python/openai_client.py"))
        .env("GATEWAY_URL", &gw.url)
        .env("GATEWAY_KEY", KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the openai client script failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    eprintln!("{seen:#}");

    let models: Vec<&str> = seen["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        models.contains(&"hybrid") && models.contains(&"sft-sop"),
        "{seen}"
    );

    // Chat: text, usage, and the routing record reachable through the client's extras.
    let text = seen["text"].as_str().unwrap();
    assert!(!text.is_empty(), "{seen}");
    assert!(seen["usage"].as_u64().unwrap() > 0, "{seen}");
    let routing = &seen["routing"];
    assert_eq!(routing["decision"], "single", "{seen}");
    assert_eq!(routing["category"], "sop", "{seen}");
    assert_eq!(routing["experts"], serde_json::json!(["sft-sop"]), "{seen}");
    assert_eq!(routing["cost"].as_f64(), Some(1.0), "{seen}");
    assert_eq!(seen["route_header"], "single", "{seen}");
    assert!(seen["request_id"].is_string(), "{seen}");

    // Streaming: the same greedy text, the routing and usage in the final chunk.
    assert_eq!(seen["stream_text"].as_str().unwrap(), text, "{seen}");
    assert_eq!(seen["stream_routing"], *routing, "{seen}");
    assert_eq!(seen["stream_usage"], seen["usage"], "{seen}");
    assert_eq!(
        seen["stream_finish_reason"], seen["finish_reason"],
        "{seen}"
    );

    // A wrong key is an `openai.AuthenticationError` (401).
    assert_eq!(seen["auth_status"], 401, "{seen}");

    // Stopped with SIGTERM, the gateway takes its expert process with it.
    drop(gw);
    let cfg = config.display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&cfg))
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
