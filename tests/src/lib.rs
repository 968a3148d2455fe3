//! Helpers shared by the end-to-end tests: locating the workspace and its built binaries.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A binary of the workspace built by cargo for this test profile (`target/<profile>/NAME`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    profile_dir.join(name)
}

/// The small forged model pair (`forge --profile small`, seed 42), built once per test
/// binary and cached under the target directory (the forge skips complete models).
pub fn forged_small() -> PathBuf {
    static MODELS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODELS
        .get_or_init(|| {
            // target/<profile>/deps/<test> → target/tmp, where the other tests cache it too.
            let out = workspace_bin("x")
                .parent()
                .and_then(|profile| profile.parent())
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("tmp")
                .join("forge-small");
            let forged = experts::forge::forge(&experts::forge::ForgeOptions {
                out: out.clone(),
                profile: experts::forge::ForgeProfile::small(),
                seed: 42,
                force: false,
                evaluate: false,
            });
            if let Err(e) = forged {
                panic!("forging the small pair failed: {e}");
            }
            out
        })
        .clone()
}

/// [`forged_small`] plus its BTM token router, layer mixer and `defer` head
/// (`routers/btm_token`, `routers/btm_layer`, `routers/defer`), trained briefly once and
/// cached next to the models.
pub fn forged_small_with_routers() -> PathBuf {
    use experts::router_train::{
        DeferTrainOptions, RouterTrainOptions, train_deferral_head, train_layer_mixer,
        train_token_router,
    };
    static MODELS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODELS
        .get_or_init(|| {
            let out = forged_small();
            let routers = out.join("routers");
            let load = |n: &str| {
                experts::loader::load_model(
                    &out.join(n),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .unwrap_or_else(|e| panic!("loading the forged {n}: {e}"))
            };
            let names = vec!["foundation".to_string(), "sft-sop".to_string()];
            if !routers.join("defer/head.safetensors").exists() {
                let (a, b) = (load("foundation"), load("sft-sop"));
                let opts = DeferTrainOptions {
                    steps: 60,
                    n_docs: 60,
                    n_general: 16,
                    answer_tokens: 16,
                    ..DeferTrainOptions::default()
                };
                if let Err(e) =
                    train_deferral_head(&[&a, &b], &names, &opts, &routers.join("defer"))
                {
                    panic!("training the defer head failed: {e}");
                }
            }
            if !routers.join("btm_layer/mixer.safetensors").exists() {
                let (a, b) = (load("foundation"), load("sft-sop"));
                let opts = RouterTrainOptions {
                    steps: 40,
                    layer_steps: 4,
                    n_docs: 400,
                    ..RouterTrainOptions::default()
                };
                if let Err(e) =
                    train_token_router(&[&a, &b], &names, &opts, &routers.join("btm_token"))
                {
                    panic!("training the token router failed: {e}");
                }
                if let Err(e) =
                    train_layer_mixer(&[&a, &b], &names, &opts, &routers.join("btm_layer"))
                {
                    panic!("training the layer mixer failed: {e}");
                }
            }
            out
        })
        .clone()
}

/// The shipped config's `hybrid:` section with absolute paths, and the rule-based kind
/// these end-to-end tests were written around (the forged pair's routing on keywords).
pub fn shipped_hybrid_section() -> String {
    let root = workspace_root();
    let shipped = std::fs::read_to_string(root.join("configs/config.yaml"))
        .unwrap_or_else(|e| panic!("reading configs/config.yaml: {e}"));
    let abs = |p: &str| root.join(p).display().to_string();
    shipped
        .lines()
        .take_while(|l| !l.starts_with("experts:"))
        .map(|l| {
            l.replace("type: \"combined\"", "type: \"rule_based\"")
                .replace("configs/rules.json", &abs("configs/rules.json"))
                .replace(
                    "classifier-wasm/checkpoint",
                    &abs("classifier-wasm/checkpoint"),
                )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A config over the forged small pair and its routers, written into `dir`: the shipped
/// config's `hybrid` section (rule-based classifier) and one local expert process run by
/// the workspace's `expert` binary. `extra_gateway` lines are appended to `gateway:`.
pub fn write_forged_config(
    dir: &std::path::Path,
    models: &std::path::Path,
    extra_gateway: &str,
) -> PathBuf {
    let hybrid = shipped_hybrid_section();
    let text = format!(
        "{hybrid}
experts:
  models:
    foundation: {m}/foundation
    sft-sop: {m}/sft-sop
  routers: {{default: {m}/routers/btm_token}}
  mixers: {{default: {m}/routers/btm_layer}}
  deferral_heads: {{default: {m}/routers/defer}}
  max_batch: 16
gateway:
  listen: 127.0.0.1:0
  expert_processes: 1
  expert_binary: {bin}
  category_experts: {{reasoning: foundation, sop: sft-sop}}
  foundation_model: foundation
  fusion: {{type: btm_token, models: [foundation, sft-sop]}}
  feedback_db: {db}
  bootstrap: off
{extra_gateway}",
        m = models.display(),
        bin = workspace_bin("expert").display(),
        db = dir.join("feedback.sqlite").display(),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// A running `gateway` binary, killed when dropped.
#[derive(Debug)]
pub struct GatewayProcess {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`, as the gateway announced it.
    pub url: String,
}

impl GatewayProcess {
    /// Starts the gateway on a free loopback port and waits for its `listening on` line
    /// (its experts are healthy by then); its stderr is echoed with a `[gateway]` prefix.
    pub fn start(config: &std::path::Path) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(workspace_bin("gateway"))
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the gateway binary (cargo build --bins): {e}"));
        let stderr = child.stderr.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[gateway] {line}");
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(std::time::Duration::from_secs(180)) {
            Ok(url) => Self { child, url },
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway did not print `listening on` ({e})");
            }
        }
    }
}

impl Drop for GatewayProcess {
    /// SIGTERM first, so that the gateway stops its expert processes (a SIGKILL would
    /// orphan them); SIGKILL if it has not exited within 30 s.
    fn drop(&mut self) {
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if term.is_ok_and(|s| s.success()) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
