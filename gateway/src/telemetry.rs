//! Metrics through the `metrics` facade, rendered by the Prometheus exporter at `/metrics`.
//!
//! Names:
//! - `gateway_http_requests_total{route, method, status}` and
//!   `gateway_http_request_duration_seconds{route, method}`: by matched route, not raw path;
//! - `gateway_http_requests_in_flight{route}`: a gauge held by a [`InFlight`] guard;
//! - `gateway_streams_active`: open SSE streams;
//! - `gateway_routes_total{category, decision, hint_source, mode}`;
//! - `gateway_hint_rejected_total{reason}`;
//! - `gateway_completion_tokens_total`, `gateway_prompt_tokens_total`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder (installed on first use; shared by every app in the
/// process, as the `metrics` facade has one global recorder).
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding program);
            // then this handle renders nothing, which is not worth failing for.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Increments a gauge now and decrements it when dropped.
#[derive(Debug)]
pub struct InFlight {
    gauge: metrics::Gauge,
}

impl InFlight {
    pub fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self { gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}
