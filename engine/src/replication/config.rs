//! Settings of the replication server and client, checked when the endpoint is built.

use std::time::Duration;

use crate::channel::{ChannelConfig, ChannelKind, ChannelsConfig};
use crate::connection::{self, MAX_DATAGRAM_BYTES};
use crate::snapshot::{QuantizeConfig, SnapshotError};

use super::interest::InterestConfig;
use super::wire::PART_PREFIX_MAX_BYTES;

/// The most ticks between two snapshots to a client: a server refuses a longer send
/// interval when built, and a client a welcome that announces one.
pub const MAX_SEND_INTERVAL_TICKS: u32 = 1024;

/// The most ticks of sent history a server keeps per client: a server refuses a longer
/// history when built, and a client a welcome that announces one.
pub(crate) const MAX_RING_TICKS: u32 = 1024;

// `ServerConfig::validate` spells both limits out in its errors ("1..=1024"), which a
// `&'static str` cannot take from a const: a change to either stops the build here, beside
// the text to change with it.
const _: () = assert!(MAX_SEND_INTERVAL_TICKS == 1024 && MAX_RING_TICKS == 1024);

/// How snapshot parts travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SnapshotDelivery {
    /// Each part in its own unreliable datagram; a lost part is replaced by a newer
    /// snapshot, never resent. The engine's normal mode.
    #[default]
    Datagrams,
    /// Parts on the reliable-ordered control channel: stream semantics (every part arrives,
    /// in order, and a loss holds back everything behind it). For comparisons: this is what
    /// a game gets from TCP or any ordered stream.
    ReliableOrdered,
}

/// Replication server settings. Defaults: 60 Hz, a snapshot every tick, the default
/// quantization, the default channels.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The connection endpoint's settings. `connection.channels` are the game's own
    /// channels (indices 0..n); the replication layer appends its control channel after
    /// them, so the client must be given the same game channels.
    pub server: connection::ServerConfig,
    /// How floats become integers on the wire; `tick_interval` is the server's tick period.
    /// Sent to every client in the welcome, so clients never need their own copy.
    pub quantize: QuantizeConfig,
    /// Send each client a snapshot every this many ticks (default 1: every tick; at most
    /// 1024). Above one, each client is given one of the interval's first eight ticks (the
    /// one the fewest clients had when it joined), so that those ticks build like shares of
    /// the snapshots rather than one tick building all of them: the slowest tick is
    /// shorter, while what a send tick does once for all (quantizing the world, indexing
    /// it for the area of interest) is done on each of those ticks.
    pub send_interval_ticks: u32,
    /// Snapshot bytes per client per send before the priority accumulator defers entities
    /// (default 8800: eight parts). A client's own budget can be changed at run time.
    pub budget_bytes: usize,
    /// How snapshot parts travel (default [`SnapshotDelivery::Datagrams`]).
    pub delivery: SnapshotDelivery,
    /// Largest snapshot part in bytes (default 1100: one part per datagram with room for the
    /// packet header under a 1200-byte path MTU).
    pub max_part_bytes: usize,
    /// Ticks of sent history kept per client, and so the oldest usable baseline (default 64:
    /// just over 1 s at 60 Hz). Clients learn it from the welcome.
    pub ring_ticks: u32,
    /// Largest encoded input in bytes (default 256); larger ones are dropped and counted.
    pub max_input_bytes: usize,
    /// Inputs a client may bank: each tick grants one, up to this many, and each input
    /// handed to the game spends one (default 8). Bounds how fast a client can move its
    /// avatar, whatever it sends, while letting a late packet's inputs through at once.
    pub max_input_burst: u32,
    /// Inputs held per client waiting for their turn (default 64). Beyond it, newer inputs
    /// are not taken; the client sends them again because they stay unacknowledged.
    pub max_queued_inputs: usize,
    /// Application bytes every client receives in its welcome (a map name, a start time...).
    pub welcome_data: Vec<u8>,
    /// Seed of the connection layer's secrets. `None` (the default): the operating
    /// system's randomness. Give a constant only in tests that must be reproducible.
    pub seed: Option<u64>,
    /// Each client sees only the entities near its view point (default `None`: every
    /// client sees every entity, unless rooms say otherwise). See [`InterestConfig`].
    pub interest: Option<InterestConfig>,
    /// Threads that build the clients' snapshots each send tick, the calling thread one of
    /// them (default 1: the calling thread alone; 0: one per core). Each client's snapshot
    /// depends on that client alone, so more threads divide the per-client work, each
    /// thread starting on the same share of the clients every tick (their state stays in
    /// its core's caches) and, once done, taking over the end of another's. With more than
    /// one, the calling thread sends every client's parts, in id order, between its own
    /// builds. The bytes sent are the same.
    /// Only clients with scopes of their own (rooms, an area of interest) are built apart;
    /// without them one snapshot serves many clients and is built on the calling thread.
    pub snapshot_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            server: connection::ServerConfig::default(),
            quantize: QuantizeConfig::default(),
            send_interval_ticks: 1,
            budget_bytes: 8 * 1100,
            delivery: SnapshotDelivery::Datagrams,
            max_part_bytes: 1100,
            ring_ticks: 64,
            max_input_bytes: 256,
            max_input_burst: 8,
            max_queued_inputs: 64,
            welcome_data: Vec::new(),
            seed: None,
            interest: None,
            snapshot_threads: 1,
        }
    }
}

/// How a client predicts the entity it owns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PredictionConfig {
    /// Predict at all (default true; it also needs a step function, see
    /// [`Client::set_step`](super::Client::set_step)).
    pub enabled: bool,
    /// A reconciliation that moves the predicted position by more than this counts as a
    /// correction and is smoothed away (default 1 cm: above the quantization step of the
    /// default config, so the rounding of the server's state is never counted).
    pub correction_threshold_m: f32,
    /// Time over which a correction is blended out (default 100 ms); zero snaps.
    pub smoothing: Duration,
}

impl Default for PredictionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            correction_threshold_m: 0.01,
            smoothing: Duration::from_millis(100),
        }
    }
}

/// Replication client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The connection endpoint's settings; `connection.channels` must equal the server's
    /// game channels.
    pub client: connection::ClientConfig,
    /// A fixed interpolation delay (default `None`: adaptive, three send intervals plus a
    /// jitter allowance).
    pub interpolation_delay: Option<Duration>,
    /// Most unacknowledged inputs carried in one input packet (default 32). Every input
    /// rides in every packet until the server acknowledges it, up to this many.
    pub max_inputs_per_packet: usize,
    /// Inputs kept for resending and replay (default 256); the oldest is forgotten beyond.
    pub max_pending_inputs: usize,
    /// Largest encoded input in bytes (default 256; must not exceed the server's).
    pub max_input_bytes: usize,
    /// Prediction of the owned entity.
    pub prediction: PredictionConfig,
    /// Most entities a snapshot or the view may hold (default 65,536; see
    /// [`ReceiverConfig::max_entities`](crate::snapshot::ReceiverConfig::max_entities)), so
    /// a server cannot make the client hold an unbounded world. Raise it for a world whose
    /// clients see more.
    pub max_entities: usize,
    /// Most entity states the client holds for baselines (default 1,048,576, at least four
    /// times `max_entities`; see
    /// [`ReceiverConfig::max_held_entities`](crate::snapshot::ReceiverConfig::max_held_entities)),
    /// however long a ring the welcome asks for. Raise it with `max_entities`.
    pub max_held_entities: usize,
    /// Seed of the connection nonce. `None` (the default): the operating system's
    /// randomness.
    pub seed: Option<u64>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client: connection::ClientConfig::default(),
            interpolation_delay: None,
            max_inputs_per_packet: 32,
            max_pending_inputs: 256,
            max_input_bytes: 256,
            prediction: PredictionConfig::default(),
            max_entities: crate::snapshot::DEFAULT_MAX_ENTITIES,
            max_held_entities: crate::snapshot::DEFAULT_MAX_HELD_ENTITIES,
            seed: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The channels cannot be built.
    #[error("channels: {0}")]
    Channels(#[from] crate::channel::ConfigError),
    /// The connection settings are unusable.
    #[error("connection: {0}")]
    Connection(#[from] connection::ConfigError),
    /// The quantization or snapshot settings are unusable.
    #[error("snapshots: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Another setting is out of range.
    #[error("{0}")]
    Invalid(&'static str),
}

/// The channels a connection really runs: the game's, then the replication layer's
/// reliable-ordered control channel. Returns them with the control channel's index.
pub(crate) fn with_control_channel(
    game: &ChannelsConfig,
) -> Result<(ChannelsConfig, u8), ConfigError> {
    let control = u8::try_from(game.channels.len())
        .map_err(|_| ConfigError::Invalid("at most 255 game channels"))?;
    let mut all = game.clone();
    all.channels
        .push(ChannelConfig::new(ChannelKind::ReliableOrdered));
    // Builds every channel's limits, or says what is wrong with them.
    all.limits()?;
    Ok((all, control))
}

impl ServerConfig {
    /// Check every setting; the server built from a checked config never panics on input.
    pub(crate) fn validate(&self) -> Result<u8, ConfigError> {
        self.quantize.validate()?;
        if let Some(i) = &self.interest {
            i.validate()?;
        }
        if self.snapshot_threads > 256 {
            return Err(ConfigError::Invalid("at most 256 snapshot threads"));
        }
        // Clients refuse a welcome with a longer interval.
        if !(1..=MAX_SEND_INTERVAL_TICKS).contains(&self.send_interval_ticks) {
            return Err(ConfigError::Invalid("send interval must be 1..=1024 ticks"));
        }
        if self.max_part_bytes + PART_PREFIX_MAX_BYTES > self.server.max_datagram_bytes() {
            return Err(ConfigError::Invalid(
                "max part bytes too large for one datagram",
            ));
        }
        if !(1..=MAX_RING_TICKS).contains(&self.ring_ticks) {
            return Err(ConfigError::Invalid("ring ticks must be 1..=1024"));
        }
        if !(1..=self.server.max_datagram_bytes()).contains(&self.max_input_bytes) {
            return Err(ConfigError::Invalid("max input bytes out of range"));
        }
        if self.max_input_burst == 0 || self.max_queued_inputs == 0 {
            return Err(ConfigError::Invalid(
                "input burst and queue must be at least 1",
            ));
        }
        if self.welcome_data.len() > 16 * 1024 {
            return Err(ConfigError::Invalid("welcome data above 16 KiB"));
        }
        let (_, control) = with_control_channel(&self.server.connection.channels)?;
        Ok(control)
    }
}

impl ClientConfig {
    pub(crate) fn validate(&self) -> Result<u8, ConfigError> {
        if self.max_inputs_per_packet == 0 || self.max_pending_inputs == 0 {
            return Err(ConfigError::Invalid("input counts must be at least 1"));
        }
        if !(1..=MAX_DATAGRAM_BYTES).contains(&self.max_input_bytes) {
            return Err(ConfigError::Invalid("max input bytes out of range"));
        }
        let receiver = crate::snapshot::ReceiverConfig {
            max_entities: self.max_entities,
            max_held_entities: self.max_held_entities,
            ..Default::default()
        };
        if let Err(crate::snapshot::SnapshotError::Config(why)) = receiver.validate_limits() {
            return Err(ConfigError::Invalid(why));
        }
        let p = self.prediction;
        if !(p.correction_threshold_m.is_finite() && p.correction_threshold_m >= 0.0) {
            return Err(ConfigError::Invalid(
                "correction threshold must be a distance",
            ));
        }
        if p.smoothing > super::predict::MAX_SMOOTHING {
            return Err(ConfigError::Invalid("correction smoothing above 5 s"));
        }
        let (_, control) = with_control_channel(&self.client.connection.channels)?;
        Ok(control)
    }
}
