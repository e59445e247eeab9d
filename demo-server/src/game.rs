//! The demo's game logic without any I/O: [`GameServer`] runs the authoritative tick and
//! produces snapshot parts per client; [`GameClient`] is one player's replica, with the
//! measurements the demo reports and a bot that plays.
//!
//! The real server and clients drive these over sockets; the benches drive them through
//! `snapsync::sim` in virtual time. Same code path, so the numbers agree.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snapsync::Sequence;
use snapsync::snapshot::{
    EntityId, EntityState, InterpolationBuffer, InterpolationConfig, PartInfo, QuantizeConfig,
    QuantizedWorld, ReceiverConfig, SenderConfig, SnapshotError, SnapshotReceiver, SnapshotSender,
    Tick, Transform, World,
};

use crate::metrics::DurationHistogram;
use crate::protocol::{INPUT_REDUNDANCY, InputMsg, Welcome};
use crate::scene::{PlayerInput, Scene, SceneKind, build_scene};
use crate::transport::PeerId;

/// The quantization both sides use for a scene: a box that fits it, 1/512 m steps, and the
/// tick period (positions are predicted from the baseline's velocity over elapsed ticks).
pub fn quantize_config(scene: SceneKind, tick_rate: f64) -> QuantizeConfig {
    let base = QuantizeConfig {
        tick_interval: Duration::from_secs_f64(1.0 / tick_rate),
        ..QuantizeConfig::default()
    };
    match scene {
        // The field fits ±256 m across and 64 m up: 18 + 15 + 18 bits for a full position.
        SceneKind::Cubes => QuantizeConfig {
            position_min: glam::Vec3::new(-256.0, -1.0, -256.0),
            position_max: glam::Vec3::new(256.0, 63.0, 256.0),
            ..base
        },
        SceneKind::Arena => base,
    }
}

/// Whether snapshots of this scene carry velocity. They do in both scenes: velocity feeds
/// client extrapolation, and the delta coder predicts positions from it, which saves more
/// bits than the velocity costs (47 vs 61 bits per changed cube).
pub fn sends_velocity(scene: SceneKind) -> bool {
    matches!(scene, SceneKind::Arena | SceneKind::Cubes)
}

/// What a [`GameServer`] runs.
#[derive(Debug, Clone)]
pub struct GameOptions {
    /// Which simulation.
    pub scene: SceneKind,
    /// Entity count override.
    pub entities: Option<usize>,
    /// Simulation ticks per second.
    pub tick_rate: f64,
    /// Snapshots per second (at most the tick rate).
    pub send_rate: f64,
    /// Snapshot bytes per client per send before the priority accumulator defers entities.
    pub budget_bytes: usize,
    /// Scene seed.
    pub seed: u64,
}

/// Running totals of the snapshots produced.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotTotals {
    /// Bytes of all parts.
    pub bytes: u64,
    /// Parts built.
    pub parts: u64,
    /// Snapshots built (one per client per send).
    pub snapshots: u64,
    /// Snapshots with no usable baseline.
    pub full_snapshots: u64,
    /// Changed or spawned entities sent.
    pub entities_sent: u64,
    /// Bits of entity fields alone (no part headers, no indices).
    pub entity_payload_bits: u64,
}

impl SnapshotTotals {
    fn add(&mut self, s: &snapsync::snapshot::SenderStats) {
        self.bytes += s.bytes;
        self.parts += s.parts;
        self.snapshots += s.snapshots;
        self.full_snapshots += s.full_snapshots;
        self.entities_sent += s.entities_sent;
        self.entity_payload_bits += s.entity_payload_bits;
    }
}

struct Peer {
    sender: SnapshotSender,
    applied_input: Option<u32>,
    /// Snapshots start once the client's first input shows it has the welcome: parts it
    /// cannot decode yet would still be acked, and become baselines it does not hold.
    ready: bool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Peer {{ applied_input: {:?} }}", self.applied_input)
    }
}

/// Where [`GameServer::tick`] hands each part: returns the sequence to track and, for
/// streams, the delivery outcome known at once; `None` when the part could not be sent.
pub type PartSink<'a> = dyn FnMut(PeerId, &[u8]) -> Option<(Sequence, Option<bool>)> + 'a;

/// The authoritative game: scene, tick counter, and one snapshot sender per client.
#[derive(Debug)]
pub struct GameServer {
    opts: GameOptions,
    scene: Box<dyn Scene>,
    quantize: QuantizeConfig,
    tick: u32,
    next_send: f64,
    peers: BTreeMap<PeerId, Peer>,
    left_totals: SnapshotTotals,
    prev_world: Option<QuantizedWorld>,
    changed_sum: f64,
    changed_samples: u64,
    entities: usize,
    tick0_unix_micros: u64,
}

impl GameServer {
    /// A game whose tick 0 is at `tick0_unix_micros` (wall clock, or virtual time in a sim).
    pub fn new(opts: GameOptions, tick0_unix_micros: u64) -> Result<Self, String> {
        if !(1.0..=1000.0).contains(&opts.tick_rate) {
            return Err(format!(
                "--tick-rate must be 1..=1000 Hz (got {})",
                opts.tick_rate
            ));
        }
        if !(opts.send_rate > 0.0 && opts.send_rate <= opts.tick_rate) {
            return Err(format!(
                "--send-rate must be above 0 and at most the tick rate {} (got {})",
                opts.tick_rate, opts.send_rate
            ));
        }
        let quantize = quantize_config(opts.scene, opts.tick_rate);
        // Reject a config the snapshot layer would refuse before any client arrives.
        SnapshotSender::new(SenderConfig {
            quantize,
            ..SenderConfig::default()
        })
        .map_err(|e| e.to_string())?;
        Ok(Self {
            scene: build_scene(opts.scene, opts.entities, opts.seed),
            quantize,
            opts,
            tick: 0,
            next_send: 0.0,
            peers: BTreeMap::new(),
            left_totals: SnapshotTotals::default(),
            prev_world: None,
            changed_sum: 0.0,
            changed_samples: 0,
            entities: 0,
            tick0_unix_micros,
        })
    }

    /// The tick period.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.opts.tick_rate)
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u32 {
        self.tick
    }

    /// Connected players.
    pub fn player_count(&self) -> usize {
        self.peers.len()
    }

    /// A player joined; returns the welcome to send them.
    pub fn join(&mut self, peer: PeerId) -> Welcome {
        let avatar = self.scene.add_player(peer.0);
        let sender = SnapshotSender::new(SenderConfig {
            quantize: self.quantize,
            ..SenderConfig::default()
        })
        // The same config was accepted in `new`.
        .expect("sender config checked in GameServer::new");
        self.peers.insert(
            peer,
            Peer {
                sender,
                applied_input: None,
                ready: false,
            },
        );
        Welcome {
            tick_rate: self.opts.tick_rate,
            send_rate: self.opts.send_rate,
            tick0_unix_micros: self.tick0_unix_micros,
            avatar: Some(avatar),
            scene: self.opts.scene.to_string(),
        }
    }

    /// A player left.
    pub fn leave(&mut self, peer: PeerId) {
        self.scene.remove_player(peer.0);
        if let Some(p) = self.peers.remove(&peer) {
            self.left_totals.add(&p.sender.stats());
        }
    }

    /// Input bytes from a player; false (nothing applied) when they do not decode.
    pub fn input(&mut self, peer: PeerId, bytes: &[u8]) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return true;
        };
        let Some(msg) = InputMsg::decode(bytes) else {
            return false;
        };
        p.ready = true;
        if msg.resync {
            p.sender.reset_baseline();
        }
        let mut newest = p.applied_input;
        for (num, input) in msg.unseen(p.applied_input) {
            self.scene.apply_input(peer.0, &input.sanitized());
            newest = Some(num);
        }
        p.applied_input = newest;
        true
    }

    /// The packet with `seq` that carried a part to `peer` was acked or lost.
    pub fn delivery(&mut self, peer: PeerId, seq: Sequence, acked: bool) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.sender.on_delivery(seq, acked);
        }
    }

    /// Run one tick. On a send tick, every player's parts go to `send`, which returns the
    /// sequence to track and, for streams, the delivery outcome known at once.
    pub fn tick(&mut self, send: &mut PartSink<'_>) {
        self.tick += 1;
        let tick = Tick(self.tick);
        self.scene.step(self.period().as_secs_f32());
        if f64::from(self.tick) < self.next_send {
            return;
        }
        self.next_send += self.opts.tick_rate / self.opts.send_rate;
        let mut world = World::new();
        let velocity = sends_velocity(self.opts.scene);
        for b in self.scene.bodies() {
            world.insert(
                EntityId(b.id),
                EntityState::new(Transform {
                    position: b.position,
                    rotation: b.rotation,
                    velocity: velocity.then_some(b.velocity),
                }),
            );
        }
        let qworld = QuantizedWorld::from_world(&world, &self.quantize);
        if let Some(prev) = &self.prev_world
            && !qworld.is_empty()
        {
            let changed = qworld
                .iter()
                .filter(|(id, e)| prev.get(*id) != Some(*e))
                .count();
            self.changed_sum += changed as f64 / qworld.len() as f64;
            self.changed_samples += 1;
        }
        for (peer, p) in self.peers.iter_mut().filter(|(_, p)| p.ready) {
            match p.sender.build(tick, &qworld, self.opts.budget_bytes) {
                Ok(parts) => {
                    for (i, part) in parts.iter().enumerate() {
                        if let Some((seq, delivered)) = send(*peer, part) {
                            p.sender.on_part_sent(tick, i, seq);
                            if let Some(acked) = delivered {
                                // Streams deliver everything they accept, in order: the part
                                // counts as acked once handed over.
                                p.sender.on_delivery(seq, acked);
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "snapshot build failed"),
            }
        }
        self.entities = qworld.len();
        self.prev_world = Some(qworld);
    }

    /// Entities in the newest snapshot.
    pub fn entities(&self) -> usize {
        self.entities
    }

    /// Mean share of entities whose quantized state changed per snapshot, percent.
    pub fn changed_pct(&self) -> f64 {
        if self.changed_samples == 0 {
            0.0
        } else {
            self.changed_sum / self.changed_samples as f64 * 100.0
        }
    }

    /// Totals over every player, past and present.
    pub fn snapshot_totals(&self) -> SnapshotTotals {
        let mut t = self.left_totals;
        for p in self.peers.values() {
            t.add(&p.sender.stats());
        }
        t
    }
}

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

/// One player's view of the game, and what it measures.
#[derive(Debug)]
pub struct GameClient {
    welcome: Option<Welcome>,
    receiver: Option<SnapshotReceiver>,
    interp: Option<InterpolationBuffer>,
    newest_tick: Option<Tick>,
    last_newer_arrival: Option<Instant>,
    /// Time between arrivals of a newer snapshot.
    pub update_gap: DurationHistogram,
    /// At each frame: age of the newest state held.
    pub staleness: DurationHistogram,
    /// Newer snapshots received (first part of each newer tick).
    pub snapshots_received: u64,
    /// Parts that did not decode or lacked their baseline.
    pub parts_rejected: u64,
    bot: Bot,
    inputs: VecDeque<PlayerInput>,
    input_number: u32,
    want_resync: bool,
    resync_requested_at: Option<Instant>,
    fixed_interp_delay: Option<Duration>,
    idle: bool,
    /// Resyncs asked of the server.
    pub resyncs_requested: u64,
}

/// Least time between two resync requests: parts already in flight against the old
/// baseline fail too, and must not each trigger another full snapshot.
const RESYNC_INTERVAL: Duration = Duration::from_millis(250);

impl GameClient {
    /// A replica whose bot plays with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            welcome: None,
            receiver: None,
            interp: None,
            newest_tick: None,
            last_newer_arrival: None,
            update_gap: DurationHistogram::new(),
            staleness: DurationHistogram::new(),
            snapshots_received: 0,
            parts_rejected: 0,
            bot: Bot::new(seed),
            inputs: VecDeque::new(),
            input_number: 0,
            want_resync: false,
            resync_requested_at: None,
            fixed_interp_delay: None,
            idle: false,
            resyncs_requested: 0,
        }
    }

    /// Make the bot stand still (idle inputs): in the cubes scene the server's own AI then
    /// drives the player cube, as in the bandwidth yardstick.
    pub fn set_idle(&mut self, idle: bool) {
        self.idle = idle;
    }

    /// Use a fixed interpolation delay instead of the adaptive one (call before the welcome).
    pub fn set_fixed_interp_delay(&mut self, delay: Option<Duration>) {
        self.fixed_interp_delay = delay;
    }

    /// The server's welcome: sets up decoding and playout for its scene and rates.
    pub fn on_welcome(&mut self, welcome: Welcome) -> Result<(), String> {
        let scene: SceneKind = welcome
            .scene
            .parse()
            .map_err(|e: crate::scene::UnknownSceneError| e.to_string())?;
        let rates_ok = (1.0..=1000.0).contains(&welcome.tick_rate)
            && welcome.send_rate.is_finite()
            && welcome.send_rate > 0.0;
        if !rates_ok {
            return Err("welcome with impossible rates".into());
        }
        let tick_interval = Duration::from_secs_f64(1.0 / welcome.tick_rate);
        let receiver = SnapshotReceiver::new(ReceiverConfig {
            quantize: quantize_config(scene, welcome.tick_rate),
            ..ReceiverConfig::default()
        })
        .map_err(|e| e.to_string())?;
        self.receiver = Some(receiver);
        self.interp = Some(InterpolationBuffer::new(InterpolationConfig {
            tick_interval,
            initial_send_interval: Duration::from_secs_f64(1.0 / welcome.send_rate),
            fixed_delay: self.fixed_interp_delay,
            ..InterpolationConfig::default()
        }));
        self.welcome = Some(welcome);
        Ok(())
    }

    /// True once welcomed.
    pub fn is_ready(&self) -> bool {
        self.welcome.is_some()
    }

    /// One snapshot part arrived at `now`; `None` (counted) when it was rejected.
    pub fn on_part(&mut self, now: Instant, bytes: &[u8]) -> Option<PartInfo> {
        // Parts before the welcome cannot be decoded (the quantization is unknown yet).
        let Some(receiver) = self.receiver.as_mut() else {
            self.parts_rejected += 1;
            return None;
        };
        let info = match receiver.read_part(now, bytes) {
            Ok(info) => info,
            Err(e) => {
                self.parts_rejected += 1;
                if matches!(e, SnapshotError::MissingBaseline(_))
                    && self
                        .resync_requested_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= RESYNC_INTERVAL)
                {
                    self.want_resync = true;
                }
                return None;
            }
        };
        if self.newest_tick.is_none_or(|n| info.tick > n) {
            if let Some(prev) = self.last_newer_arrival {
                let gap = now.saturating_duration_since(prev);
                if gap > Duration::from_millis(50) {
                    tracing::debug!(tick = info.tick.0, prev = ?self.newest_tick, gap_ms = gap.as_millis() as u64, "long update gap");
                }
                self.update_gap.record(gap);
            }
            self.last_newer_arrival = Some(now);
            self.newest_tick = Some(info.tick);
            self.snapshots_received += 1;
        }
        if info.applied
            && let Some(interp) = self.interp.as_mut()
        {
            interp.push(now, info.tick, receiver.transforms());
        }
        Some(info)
    }

    /// A client frame at `now` (`now_unix_micros` on the server's clock): record staleness,
    /// sample the interpolation buffer, and return the input message to send.
    pub fn on_frame(&mut self, now: Instant, now_unix_micros: u64) -> Vec<u8> {
        if let (Some(w), Some(t)) = (&self.welcome, self.newest_tick) {
            let state_micros = w.tick0_unix_micros as f64 + f64::from(t.0) * 1e6 / w.tick_rate;
            let age = (now_unix_micros as f64 - state_micros).max(0.0);
            self.staleness.record(Duration::from_micros(age as u64));
        }
        if let Some(interp) = self.interp.as_mut() {
            let _ = interp.sample(now);
        }
        self.input_number = self.input_number.wrapping_add(1);
        let input = if self.idle {
            PlayerInput::default()
        } else {
            self.bot.next_input()
        };
        self.inputs.push_back(input);
        while self.inputs.len() > INPUT_REDUNDANCY + 1 {
            self.inputs.pop_front();
        }
        let resync = std::mem::take(&mut self.want_resync);
        if resync {
            self.resync_requested_at = Some(now);
            self.resyncs_requested += 1;
        }
        let msg = InputMsg {
            newest: self.input_number,
            inputs: self.inputs.iter().copied().collect(),
            resync,
        };
        // Plain data of bounded size: encoding cannot fail.
        snapsync::codec::encode(&msg).unwrap_or_default()
    }

    /// The newest tick applied.
    pub fn newest_tick(&self) -> Option<Tick> {
        self.newest_tick
    }

    /// The snapshot receiver, once welcomed.
    pub fn receiver(&self) -> Option<&SnapshotReceiver> {
        self.receiver.as_ref()
    }

    /// Playout counters, once welcomed.
    pub fn interpolation(&self) -> Option<&InterpolationBuffer> {
        self.interp.as_ref()
    }
}
