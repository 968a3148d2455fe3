//! Running the gateway: bind, start the experts, wait until one is healthy, announce the
//! address, serve, and shut down gracefully (drain streams, then stop the experts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::serve::ListenerExt;
use classifier::Classifier;
use tokio::net::TcpListener;

use crate::api::{AppState, router};
use crate::backend::{ExpertBackend, HttpExpert};
use crate::config::GatewayConfig;
use crate::dispatch::Dispatcher;
use crate::error::{GatewayError, Result};
use crate::feedback::FeedbackStore;
use crate::supervisor::{ExpertCommand, LocalExpert};

/// How often backends are health-checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Refuses to serve without auth on anything but loopback.
pub fn check_bind(config: &GatewayConfig, listen: SocketAddr) -> Result<()> {
    if config.gateway.api_keys.is_empty() && !listen.ip().is_loopback() {
        return Err(GatewayError::config(
            "gateway.api_keys",
            format!(
                "no API key is configured, so the gateway serves loopback only and refuses to \
                 listen on {listen}; set gateway.api_keys or the {} environment variable",
                crate::config::API_KEY_ENV
            ),
        )
        .in_file(&config.path));
    }
    Ok(())
}

/// Runs the gateway until SIGTERM or ctrl-c. `listen` overrides `gateway.listen`.
pub async fn run(config: GatewayConfig, listen: Option<SocketAddr>) -> Result<()> {
    let listen = listen.unwrap_or(config.listen);
    check_bind(&config, listen)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| GatewayError::io(format!("binding {listen}"), e))?;
    let address = listener
        .local_addr()
        .map_err(|e| GatewayError::io("reading the bound address", e))?;

    // Everything that can fail on a bad config fails before any expert starts.
    let classifier: Arc<dyn Classifier> = Arc::from(config.hybrid.build_classifier(None, None)?);
    let feedback = Arc::new(FeedbackStore::open(&config.gateway.feedback_db)?);

    crate::bootstrap::ensure_models(&config).await?;
    let experts = Experts::start(&config).await?;
    let state = Arc::new(AppState::from_parts(
        config,
        classifier,
        feedback,
        experts.backends.clone(),
    ));
    if let Err(e) = experts.wait_healthy(&state.dispatcher).await {
        experts.shutdown().await;
        return Err(e);
    }
    let health = state.dispatcher.spawn_health_loop(HEALTH_INTERVAL);
    let drain = state_timeout(&state);

    eprintln!("listening on http://{address}");
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    // Small SSE writes go out at once instead of waiting for the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let serve = axum::serve(listener, router(Arc::clone(&state))).with_graceful_shutdown(async {
        shutdown_signal().await;
        tracing::info!("shutting down: draining open requests");
        let _ = signalled_tx.send(());
    });
    let result = tokio::select! {
        r = serve => r.map_err(|e| GatewayError::io("serving", e)),
        () = async {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(drain).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!("open requests did not finish within {} s; closing them", drain.as_secs());
            Ok(())
        }
    };
    health.abort();
    experts.shutdown().await;
    result
}

fn state_timeout(state: &AppState) -> Duration {
    Duration::from_secs(state.config.gateway.request_timeout_s)
}

/// The expert backends of a config: the local `expert serve` processes it starts
/// (supervised) and its remote URLs. Shared by the gateway and `hybrid_inference`.
#[derive(Debug)]
pub struct Experts {
    locals: Vec<Arc<LocalExpert>>,
    pub backends: Vec<Arc<dyn ExpertBackend>>,
    start_timeout: Duration,
}

impl Experts {
    /// Starts `gateway.expert_processes` local processes (all, or none: a failed start
    /// stops the ones already up) and adds `gateway.remote_experts`.
    pub async fn start(config: &GatewayConfig) -> Result<Self> {
        let g = &config.gateway;
        let start_timeout = Duration::from_secs(g.expert_start_timeout_s);
        let mut locals = Vec::new();
        if g.expert_processes > 0 {
            let command = ExpertCommand {
                binary: match &g.expert_binary {
                    Some(path) => path.clone(),
                    None => ExpertCommand::default_binary()?,
                },
                config: config.path.clone(),
                start_timeout,
                stop_grace: Duration::from_secs(g.expert_stop_grace_s),
            };
            let started = futures_util::future::join_all(
                (0..g.expert_processes).map(|i| LocalExpert::start(i, command.clone())),
            )
            .await;
            let mut failure = None;
            for r in started {
                match r {
                    Ok(local) => locals.push(local),
                    Err(e) => failure = failure.or(Some(e)),
                }
            }
            if let Some(e) = failure {
                stop_all(&locals).await;
                return Err(e);
            }
        }
        let mut backends: Vec<Arc<dyn ExpertBackend>> = locals
            .iter()
            .map(|l| Arc::clone(l) as Arc<dyn ExpertBackend>)
            .collect();
        backends.extend(
            g.remote_experts
                .iter()
                .map(|url| Arc::new(HttpExpert::new(url.clone())) as Arc<dyn ExpertBackend>),
        );
        Ok(Self {
            locals,
            backends,
            start_timeout,
        })
    }

    /// Waits until the dispatcher sees a healthy backend, within the start timeout.
    pub async fn wait_healthy(&self, dispatcher: &Dispatcher) -> Result<()> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            dispatcher.refresh().await;
            if dispatcher.healthy_count() > 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(GatewayError::Unavailable(format!(
                    "no expert backend became healthy within {} s",
                    self.start_timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the local processes (SIGTERM, grace, SIGKILL).
    pub async fn shutdown(&self) {
        stop_all(&self.locals).await;
    }
}

async fn stop_all(locals: &[Arc<LocalExpert>]) {
    futures_util::future::join_all(locals.iter().map(|l| l.shutdown())).await;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
