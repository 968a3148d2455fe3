//! Dispatch: which expert backend serves a request.
//!
//! The [`Dispatcher`] keeps, per backend, its health and models (refreshed by a background
//! loop and on failures) and the number of generations in flight. A request goes to the
//! least-loaded healthy backend that hosts every model its mode needs; a backend that
//! cannot be reached is marked unhealthy and the next one is tried.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::{GenerateRequest, ScoreRequest, ScoreResponse};

use crate::backend::{EventStream, ExpertBackend};
use crate::error::{GatewayError, Result};

/// One backend and what the dispatcher knows of it.
#[derive(Debug)]
pub struct Slot {
    backend: Arc<dyn ExpertBackend>,
    healthy: AtomicBool,
    models: RwLock<Vec<String>>,
    in_flight: AtomicUsize,
}

impl Slot {
    pub fn backend(&self) -> &Arc<dyn ExpertBackend> {
        &self.backend
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn serves(&self, needed: &[&str]) -> bool {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        needed.iter().all(|n| models.iter().any(|m| m == n))
    }

    async fn refresh(&self) {
        let healthy = self.backend.health().await;
        if healthy {
            match self.backend.models().await {
                Ok(models) => {
                    *self.models.write().unwrap_or_else(|p| p.into_inner()) = models;
                }
                Err(e) => {
                    tracing::warn!(backend = %self.backend.name(), error = %e, "listing models failed");
                }
            }
        }
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            tracing::info!(backend = %self.backend.name(), healthy, "expert backend health changed");
        }
    }
}

/// Decrements a slot's in-flight count when the generation ends (or is dropped).
struct LoadGuard(Arc<Slot>);

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The expert backends of a gateway.
#[derive(Debug)]
pub struct Dispatcher {
    slots: Vec<Arc<Slot>>,
}

impl Dispatcher {
    pub fn new(backends: Vec<Arc<dyn ExpertBackend>>) -> Self {
        let slots = backends
            .into_iter()
            .map(|backend| {
                Arc::new(Slot {
                    backend,
                    healthy: AtomicBool::new(false),
                    models: RwLock::new(Vec::new()),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        Self { slots }
    }

    pub fn slots(&self) -> &[Arc<Slot>] {
        &self.slots
    }

    /// Checks every backend's health and models now.
    pub async fn refresh(&self) {
        futures_util::future::join_all(self.slots.iter().map(|s| s.refresh())).await;
    }

    /// Refreshes every `every` until the task is aborted.
    pub fn spawn_health_loop(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.refresh().await;
            }
        })
    }

    pub fn healthy_count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_healthy()).count()
    }

    /// The least-loaded healthy backend hosting all `models`.
    pub fn pick(&self, models: &[&str]) -> Option<Arc<Slot>> {
        self.slots
            .iter()
            .filter(|s| s.is_healthy() && s.serves(models))
            .min_by_key(|s| s.in_flight())
            .cloned()
    }

    /// Starts a generation on the best backend; the returned stream holds the backend's
    /// load until it ends or is dropped.
    pub async fn generate(&self, request: GenerateRequest) -> Result<EventStream> {
        let models = request.mode.models();
        self.on_best(&models, |slot, guard| {
            let request = request.clone();
            async move {
                let stream = slot.backend.generate(request).await?;
                Ok(stream
                    .map(move |event| {
                        let _held = &guard;
                        event
                    })
                    .boxed())
            }
        })
        .await
    }

    /// Scores continuations on the best backend hosting the mode's models.
    pub async fn score(&self, request: ScoreRequest) -> Result<ScoreResponse> {
        let models = request.mode.models();
        self.on_best(&models, |slot, guard| {
            let request = request.clone();
            async move {
                let out = slot.backend.score(request).await;
                drop(guard);
                out
            }
        })
        .await
    }

    /// Runs `call` on the least-loaded healthy backend hosting `models`, counted in its
    /// load while the guard lives. A backend that fails upstream is marked unhealthy and
    /// the next one is tried; any other error is the answer.
    async fn on_best<T, F, Fut>(&self, models: &[&str], mut call: F) -> Result<T>
    where
        F: FnMut(Arc<Slot>, LoadGuard) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut last_error = None;
        // Each failed backend is marked unhealthy, so every try picks another one.
        for _ in 0..self.slots.len().max(1) {
            let Some(slot) = self.pick(models) else {
                break;
            };
            slot.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = LoadGuard(Arc::clone(&slot));
            match call(Arc::clone(&slot), guard).await {
                Ok(out) => return Ok(out),
                Err(e @ GatewayError::Upstream(_)) => {
                    tracing::warn!(backend = %slot.backend.name(), error = %e, "expert failed; trying another");
                    slot.healthy.store(false, Ordering::Release);
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            GatewayError::Unavailable(format!(
                "no healthy expert backend hosts the models {models:?}"
            ))
        }))
    }
}
