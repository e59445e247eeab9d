//! A place in a fleet: Agones on Kubernetes (cargo feature `agones`, off by default).
//!
//! With `--agones`, the server talks to the Agones SDK sidecar next to it (gRPC on
//! localhost, port `AGONES_SDK_GRPC_PORT` or 9357) through the official `agones` crate:
//! `Ready` once it accepts players, `Health` pings from the tick loop itself (so a stalled
//! loop stops them and Agones replaces the server), player connect and disconnect (the
//! alpha player-tracking API), and `Shutdown` when the server ends. See docs/DEPLOY.md.

use std::time::{Duration, Instant};

/// Health pings are sent this often from the tick loop (Agones' default failure threshold
/// is a few seconds without one).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// The server's link to its Agones sidecar.
#[derive(Clone)]
pub struct Fleet {
    sdk: agones::Sdk,
    health: tokio::sync::mpsc::Sender<()>,
    next_health: Instant,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fleet")
    }
}

impl Fleet {
    /// Connect to the sidecar.
    pub async fn connect() -> Result<Self, String> {
        let sdk = agones::Sdk::new(None, None)
            .await
            .map_err(|e| format!("agones: cannot reach the SDK sidecar: {e}"))?;
        let health = sdk.health_check();
        Ok(Self {
            sdk,
            health,
            next_health: Instant::now(),
        })
    }

    /// The server accepts players.
    pub async fn ready(&mut self) -> Result<(), String> {
        self.sdk
            .ready()
            .await
            .map_err(|e| format!("agones: ready: {e}"))
    }

    /// Called every tick: a health ping when one is due. Never blocks the loop (a full
    /// channel means the sidecar is not keeping up; the next ping will do).
    pub fn tick(&mut self, now: Instant) {
        if now >= self.next_health {
            let _ = self.health.try_send(());
            self.next_health = now + HEALTH_INTERVAL;
        }
    }

    /// A player joined or left: reported in the background, off the tick loop.
    pub fn player(&self, id: String, joined: bool) {
        let mut alpha = self.sdk.alpha().clone();
        tokio::spawn(async move {
            let r = if joined {
                alpha.player_connect(id).await
            } else {
                alpha.player_disconnect(id).await
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "agones player tracking");
            }
        });
    }

    /// The server is done.
    pub async fn shutdown(&mut self) {
        if let Err(e) = self.sdk.shutdown().await {
            tracing::warn!(error = %e, "agones shutdown");
        }
    }
}
