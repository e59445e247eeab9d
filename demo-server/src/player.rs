//! One player of the demo: a [`snapsync::replication::Client`] with a bot at the controls,
//! and what it measures. `demo-client` drives it on a socket, the simulation in virtual time;
//! it depends on nothing of the server's.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snapsync::connection::ConnectionStats;
use snapsync::replication::{self, ClientEvent, CloseReason, InputTick, View};

use crate::metrics::{DistanceHistogram, DurationHistogram};
use crate::protocol::WelcomeData;
use crate::scene::{PlayerInput, SceneKind};

/// Inputs remembered while waiting to be drawn, for the input latency; beyond it the oldest
/// are forgotten (a client that never sees its inputs has bigger problems).
const MAX_INPUTS_IN_FLIGHT: usize = 1024;

/// A bot's seeded random walk: a heading that drifts, the odd jump.
#[derive(Debug)]
pub struct Bot {
    rng: ChaCha8Rng,
    heading: f32,
}

impl Bot {
    /// A bot with its own seed.
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let heading = rng.random_range(0.0..std::f32::consts::TAU);
        Self { rng, heading }
    }

    /// The next input.
    pub fn next_input(&mut self) -> PlayerInput {
        self.heading += self.rng.random_range(-0.3..0.3);
        PlayerInput {
            movement: glam::Vec2::new(self.heading.cos(), self.heading.sin()),
            jump: self.rng.random_bool(0.01),
        }
    }
}

/// A session's loss and bandwidth, as the client summary reports them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFigures {
    /// Packets lost over the session, percent.
    pub loss_pct: f64,
    /// Received kbit/s, headers included.
    pub kbps_in: f64,
    /// Sent kbit/s, headers included.
    pub kbps_out: f64,
}

/// The demo's replication client: its inputs are the scene's.
pub type PlayerClient = replication::Client<PlayerInput>;

/// One player: its bot and its measurements, beside the [`PlayerClient`] it plays through
/// (which the caller's driver owns: a socket driver or the simulation).
#[derive(Debug)]
pub struct GameClient {
    bot: Bot,
    idle: bool,
    predict: bool,
    welcomed: bool,
    data: Option<WelcomeData>,
    last_newer_arrival: Option<Instant>,
    /// Time between arrivals of a newer snapshot.
    pub update_gap: DurationHistogram,
    /// At each frame: age of the newest state held.
    pub staleness: DurationHistogram,
    /// From an input to the first frame whose drawn owned entity reflects it.
    pub input_latency: DurationHistogram,
    /// Size of each reconciliation jump of the predicted entity (before smoothing).
    pub correction_m: DistanceHistogram,
    /// Inputs the client refused (none expected).
    pub inputs_refused: u64,
    in_flight: VecDeque<(InputTick, Instant)>,
    last_link: Option<ConnectionStats>,
    closed: Option<CloseReason>,
    last_view: View,
    last_staleness: Option<Duration>,
}

impl GameClient {
    /// A player whose bot plays with `seed`; `predict` turns on prediction of its own
    /// entity where the scene allows it.
    pub fn new(seed: u64, predict: bool) -> Self {
        Self {
            bot: Bot::new(seed),
            idle: false,
            predict,
            welcomed: false,
            data: None,
            last_newer_arrival: None,
            update_gap: DurationHistogram::new(),
            staleness: DurationHistogram::new(),
            input_latency: DurationHistogram::new(),
            correction_m: DistanceHistogram::new(),
            inputs_refused: 0,
            in_flight: VecDeque::new(),
            last_link: None,
            closed: None,
            last_view: View::default(),
            last_staleness: None,
        }
    }

    /// Make the bot stand still (idle inputs): in the cubes scene the server's own AI then
    /// drives the player cube, as in the bandwidth yardstick.
    pub fn set_idle(&mut self, idle: bool) {
        self.idle = idle;
    }

    /// True once welcomed (and until the session ends).
    pub fn is_ready(&self) -> bool {
        self.welcomed && self.closed.is_none()
    }

    /// Why the session ended, if it has.
    pub fn closed(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// The link figures last seen while connected (they outlive the connection, so a
    /// session the server ended still reports what it measured).
    pub fn link(&self) -> Option<&ConnectionStats> {
        self.last_link.as_ref()
    }

    /// What the last frame drew: every entity interpolated, the own one predicted where
    /// prediction is on.
    pub fn last_view(&self) -> &View {
        &self.last_view
    }

    /// The staleness recorded at the last frame (the age of the newest state held).
    pub fn last_staleness(&self) -> Option<Duration> {
        self.last_staleness
    }

    /// Loss and bandwidth over a session of `elapsed_s` seconds, from the last link figures
    /// seen while connected, counting `header_bytes` of IP (and transport) header per packet.
    pub fn link_figures(&self, header_bytes: u64, elapsed_s: f64) -> Option<LinkFigures> {
        let s = self.last_link.as_ref()?.link;
        let kbps = |bytes: u64, packets: u64| {
            (bytes + packets * header_bytes) as f64 * 8.0 / 1000.0 / elapsed_s.max(1e-9)
        };
        Some(LinkFigures {
            loss_pct: s.total_loss_pct(),
            kbps_in: kbps(s.bytes_received, s.packets_received),
            kbps_out: kbps(s.bytes_sent, s.packets_sent),
        })
    }

    /// Take one event of the replication client.
    pub fn on_event(&mut self, client: &mut PlayerClient, event: ClientEvent) {
        match event {
            ClientEvent::Welcomed(w) => {
                // A welcome without the demo's data is some other server: no staleness.
                self.data = WelcomeData::decode(&w.data);
                self.welcomed = true;
                let step = self
                    .data
                    .as_ref()
                    .and_then(|d| d.scene.parse::<SceneKind>().ok())
                    .and_then(SceneKind::avatar_step);
                match step {
                    Some(step) if self.predict => client.set_step(step),
                    _ => client.set_prediction(false),
                }
            }
            // A tick counts when all of its parts arrived: a tick missing a part leaves the
            // player with a partial world, and loss must show in the gap.
            ClientEvent::SnapshotComplete { tick, received_at } => {
                if let Some(prev) = self.last_newer_arrival {
                    let gap = received_at.saturating_duration_since(prev);
                    if gap > Duration::from_millis(50) {
                        tracing::debug!(
                            tick = tick.0,
                            gap_ms = gap.as_millis() as u64,
                            "long update gap"
                        );
                    }
                    self.update_gap.record(gap);
                }
                self.last_newer_arrival = Some(received_at);
            }
            ClientEvent::Corrected { distance_m, .. } => self.correction_m.record(distance_m),
            ClientEvent::Disconnected { reason } => self.closed = Some(reason),
            _ => {}
        }
    }

    /// A client frame at `now` (`now_unix_micros` on the server's clock): record staleness,
    /// send the inputs that are due, draw, and measure how late the inputs are drawn.
    pub fn on_frame(&mut self, client: &mut PlayerClient, now: Instant, now_unix_micros: u64) {
        if let Some(link) = client.connection().connection_stats() {
            self.last_link = Some(link);
        }
        if !self.is_ready() {
            return;
        }
        if let (Some(d), Some(w), Some(t)) = (&self.data, client.welcome(), client.newest_tick()) {
            let state_micros =
                d.tick0_unix_micros as f64 + f64::from(t.0) * w.tick_interval.as_secs_f64() * 1e6;
            let age =
                Duration::from_micros((now_unix_micros as f64 - state_micros).max(0.0) as u64);
            self.staleness.record(age);
            self.last_staleness = Some(age);
        }
        for _ in 0..client.inputs_due(now) {
            let input = if self.idle {
                PlayerInput::default()
            } else {
                self.bot.next_input()
            };
            match client.send_input(now, input) {
                Ok(tick) => self.in_flight.push_back((tick, now)),
                Err(_) => self.inputs_refused += 1,
            }
        }
        while self.in_flight.len() > MAX_INPUTS_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        // The last frame's view is written over, its memory kept: a frame allocates nothing.
        client.view_into(now, &mut self.last_view);
        if let Some(shown) = self.last_view.owned_input {
            while let Some(&(tick, sent)) = self.in_flight.front() {
                if tick > shown {
                    break;
                }
                self.input_latency
                    .record(now.saturating_duration_since(sent));
                self.in_flight.pop_front();
            }
        }
    }
}
