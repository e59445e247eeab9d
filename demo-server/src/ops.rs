//! Operating the server: Prometheus metrics, health and readiness over HTTP.
//!
//! `/metrics` is the Prometheus text format of everything `snapsync::metrics` publishes plus
//! the tick cost; `/health` is 200 while the tick loop is alive and on time (503 otherwise:
//! an orchestrator should restart the process); `/ready` is 200 while the server accepts
//! players (503 while it drains: send no one new here).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets of the `_seconds` metrics (tick cost, RTT, jitter): 100 µs to 2 s.
const SECONDS_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];
/// Buckets of `snapsync_loss_ratio`.
const RATIO_BUCKETS: [f64; 8] = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];

/// The process's Prometheus recorder: installed once (a process has one global recorder),
/// shared by every server the process runs.
pub fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("snapsync_loss_ratio".into()),
                        &RATIO_BUCKETS,
                    )
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// What the HTTP handlers read from the tick loop.
#[derive(Debug)]
pub struct OpsState {
    prometheus: PrometheusHandle,
    /// Wall time of the last finished tick, microseconds since the UNIX epoch.
    last_tick_unix_micros: AtomicU64,
    /// Longest silence of the tick loop that still counts as healthy.
    stall_limit: Duration,
    accepting: AtomicBool,
}

impl OpsState {
    /// State for a loop ticking every `period`: it is unhealthy after max(5 periods, 250 ms)
    /// without a tick (one late tick is not a stall; a stuck loop is).
    pub fn new(prometheus: PrometheusHandle, period: Duration) -> Arc<Self> {
        Arc::new(Self {
            prometheus,
            last_tick_unix_micros: AtomicU64::new(crate::protocol::unix_micros_now()),
            stall_limit: (period * 5).max(Duration::from_millis(250)),
            accepting: AtomicBool::new(true),
        })
    }

    /// A tick finished now.
    pub fn ticked(&self) {
        self.last_tick_unix_micros
            .store(crate::protocol::unix_micros_now(), Ordering::Relaxed);
    }

    /// Whether new players are accepted.
    pub fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        let last = self.last_tick_unix_micros.load(Ordering::Relaxed);
        let age = crate::protocol::unix_micros_now().saturating_sub(last);
        Duration::from_micros(age) <= self.stall_limit
    }
}

/// `/metrics`, `/health` and `/ready`.
pub fn router(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn metrics(State(s): State<Arc<OpsState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
}

async fn health(State(s): State<Arc<OpsState>>) -> impl IntoResponse {
    if s.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "tick loop stalled\n")
    }
}

async fn ready(State(s): State<Arc<OpsState>>) -> impl IntoResponse {
    if s.accepting.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get_status(router: Router, path: &str) -> StatusCode {
        use tower::ServiceExt;
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        router.oneshot(req).await.unwrap().status()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn health_follows_the_tick_loop_and_ready_follows_draining() {
        let state = OpsState::new(prometheus().unwrap(), Duration::from_millis(16));
        let app = router(state.clone());
        assert_eq!(get_status(app.clone(), "/health").await, StatusCode::OK);
        assert_eq!(get_status(app.clone(), "/ready").await, StatusCode::OK);
        state.set_accepting(false);
        assert_eq!(
            get_status(app.clone(), "/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // A loop that last ticked a second ago is stalled.
        state.last_tick_unix_micros.store(
            crate::protocol::unix_micros_now() - 1_000_000,
            Ordering::Relaxed,
        );
        assert_eq!(
            get_status(app.clone(), "/health").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.ticked();
        assert_eq!(get_status(app.clone(), "/health").await, StatusCode::OK);
        assert_eq!(get_status(app, "/nope").await, StatusCode::NOT_FOUND);
    }
}
