//! Supervised local expert processes.
//!
//! A [`LocalExpert`] starts `expert serve --config FILE --listen 127.0.0.1:0`, learns its
//! URL from the one line `listening on http://HOST:PORT` it prints to stderr, waits for
//! `GET /health` 200, and then serves requests through an [`HttpExpert`]. When the child
//! dies it is restarted with exponential backoff (0.5 s doubling to 30 s, reset after a
//! minute of uptime); while it is down the backend reports unhealthy, so the dispatcher
//! sends requests elsewhere. At shutdown the child gets SIGTERM, then SIGKILL after a
//! grace period; `kill_on_drop` covers every other way out.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use protocol::{GenerateRequest, ScoreRequest, ScoreResponse};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

use crate::backend::{EventStream, ExpertBackend, HttpExpert};
use crate::error::{GatewayError, Result};

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// How to start an expert process.
#[derive(Debug, Clone)]
pub struct ExpertCommand {
    /// The `expert` binary.
    pub binary: PathBuf,
    /// The config file passed as `--config`.
    pub config: PathBuf,
    /// Time allowed from spawn to `/health` 200.
    pub start_timeout: Duration,
    /// Time between SIGTERM and SIGKILL at shutdown.
    pub stop_grace: Duration,
}

impl ExpertCommand {
    /// The `expert` binary next to the running executable.
    pub fn default_binary() -> Result<PathBuf> {
        let exe = std::env::current_exe()
            .map_err(|e| GatewayError::io("finding the gateway's executable", e))?;
        let dir = exe
            .parent()
            .ok_or_else(|| GatewayError::Internal("the executable has no directory".into()))?;
        Ok(dir.join(format!("expert{}", std::env::consts::EXE_SUFFIX)))
    }
}

/// One supervised `expert serve` process.
#[derive(Debug)]
pub struct LocalExpert {
    index: usize,
    current: Arc<RwLock<Option<HttpExpert>>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl LocalExpert {
    /// Starts the process and waits until it is healthy; a failure of this first start is
    /// returned (a missing binary or a bad config should stop the gateway, not loop).
    pub async fn start(index: usize, command: ExpertCommand) -> Result<Arc<Self>> {
        let (child, url) = launch(index, &command).await?;
        let current = Arc::new(RwLock::new(Some(HttpExpert::new(url))));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            index,
            command,
            child,
            Arc::clone(&current),
            stop_rx,
        ));
        Ok(Arc::new(Self {
            index,
            current,
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// The child's URL while it is up.
    pub fn url(&self) -> Option<String> {
        self.client().map(|c| c.url().to_string())
    }

    fn client(&self) -> Option<HttpExpert> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// SIGTERM, grace period, SIGKILL; returns when the child is gone.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl ExpertBackend for LocalExpert {
    fn name(&self) -> String {
        match self.url() {
            Some(url) => format!("expert[{}] {url}", self.index),
            None => format!("expert[{}] (down)", self.index),
        }
    }

    fn generate(&self, request: GenerateRequest) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async move {
            match self.client() {
                Some(client) => client.generate(request).await,
                None => Err(GatewayError::Upstream(format!(
                    "expert process {} is restarting",
                    self.index
                ))),
            }
        })
    }

    fn score(&self, request: ScoreRequest) -> BoxFuture<'_, Result<ScoreResponse>> {
        Box::pin(async move {
            match self.client() {
                Some(client) => client.score(request).await,
                None => Err(GatewayError::Upstream(format!(
                    "expert process {} is restarting",
                    self.index
                ))),
            }
        })
    }

    fn health(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.client() {
                Some(client) => client.health().await,
                None => false,
            }
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            match self.client() {
                Some(client) => client.models().await,
                None => Err(GatewayError::Upstream(format!(
                    "expert process {} is restarting",
                    self.index
                ))),
            }
        })
    }
}

/// Spawns the child and waits for its URL and a healthy `/health`.
async fn launch(index: usize, command: &ExpertCommand) -> Result<(Child, String)> {
    let mut child = Command::new(&command.binary)
        .arg("serve")
        .arg("--config")
        .arg(&command.config)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            GatewayError::io(
                format!(
                    "starting the expert process {} (set gateway.expert_binary)",
                    command.binary.display()
                ),
                e,
            )
        })?;
    let (url_tx, url_rx) = oneshot::channel();
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_stderr(index, stderr, url_tx));
    }
    let deadline = Instant::now() + command.start_timeout;
    let url = tokio::select! {
        url = url_rx => url.map_err(|_| GatewayError::Upstream(format!(
            "expert process {index} closed stderr before printing `listening on`"
        )))?,
        status = child.wait() => return Err(exited(index, status)),
        () = tokio::time::sleep_until(deadline.into()) => return Err(GatewayError::Upstream(format!(
            "expert process {index} did not print `listening on` within {} s", command.start_timeout.as_secs()
        ))),
    };
    let client = HttpExpert::new(url.clone());
    loop {
        if client.health().await {
            return Ok((child, url));
        }
        tokio::select! {
            status = child.wait() => return Err(exited(index, status)),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if Instant::now() > deadline {
            return Err(GatewayError::Upstream(format!(
                "expert process {index} at {url} was not healthy within {} s",
                command.start_timeout.as_secs()
            )));
        }
    }
}

fn exited(index: usize, status: std::io::Result<std::process::ExitStatus>) -> GatewayError {
    match status {
        Ok(s) => GatewayError::Upstream(format!(
            "expert process {index} exited during start-up ({s}); see its messages above"
        )),
        Err(e) => GatewayError::io(format!("waiting for expert process {index}"), e),
    }
}

/// Echoes the child's stderr with a prefix and picks up its `listening on` line. That line
/// is re-worded so that only the gateway's own line reads `listening on http://…`.
async fn forward_stderr(
    index: usize,
    stderr: tokio::process::ChildStderr,
    url_tx: oneshot::Sender<String>,
) {
    let mut url_tx = Some(url_tx);
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(url) = line.trim().strip_prefix("listening on ")
            && url.starts_with("http://")
            && let Some(tx) = url_tx.take()
        {
            eprintln!("[expert {index}] serving at {url}");
            let _ = tx.send(url.to_string());
            continue;
        }
        eprintln!("[expert {index}] {line}");
    }
}

async fn supervise(
    index: usize,
    command: ExpertCommand,
    mut child: Child,
    current: Arc<RwLock<Option<HttpExpert>>>,
    mut stop: watch::Receiver<bool>,
) {
    let set = |v: Option<HttpExpert>| *current.write().unwrap_or_else(|p| p.into_inner()) = v;
    let mut started = Instant::now();
    let mut backoff = BACKOFF_START;
    loop {
        tokio::select! {
            status = child.wait() => {
                set(None);
                match status {
                    Ok(s) => tracing::warn!(index, status = %s, "expert process died; restarting"),
                    Err(e) => tracing::warn!(index, error = %e, "waiting for expert process failed; restarting"),
                }
            }
            () = stopped(&mut stop) => {
                set(None);
                terminate(index, &mut child, command.stop_grace).await;
                return;
            }
        }
        if started.elapsed() > STABLE_UPTIME {
            backoff = BACKOFF_START;
        }
        loop {
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stopped(&mut stop) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let attempt = tokio::select! {
                r = launch(index, &command) => r,
                // Dropping the launch future drops the child, which kills it.
                () = stopped(&mut stop) => return,
            };
            match attempt {
                Ok((c, url)) => {
                    tracing::info!(index, %url, "expert process restarted");
                    child = c;
                    set(Some(HttpExpert::new(url)));
                    started = Instant::now();
                    break;
                }
                Err(e) => tracing::warn!(index, error = %e, "restarting the expert process failed"),
            }
        }
    }
}

/// Resolves when a stop is asked for (or the [`LocalExpert`] is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn terminate(index: usize, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(index, "expert process ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}
