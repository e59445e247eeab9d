//! The demo server: a fixed-tick authoritative simulation replicated to every client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use snapsync::conditioner::ConditionerConfig;
use snapsync::snapshot::{
    EntityId, EntityState, QuantizeConfig, QuantizedWorld, SenderConfig, SnapshotSender, Tick,
    Transform, World,
};
use tokio::sync::{mpsc, oneshot};

use crate::cli::{CONSOLE_HELP, ConsoleCommand, Transport, describe};
use crate::metrics::DurationHistogram;
use crate::protocol::{InputMsg, Welcome, unix_micros_now};
use crate::scene::{Scene, SceneKind, build_scene};
use crate::transport::{LinkEvent, PeerId, ServerLink};

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Simulation ticks per second.
    pub tick_rate: f64,
    /// Snapshots per second (at most the tick rate).
    pub send_rate: f64,
    /// Which simulation.
    pub scene: SceneKind,
    /// Entity count override.
    pub entities: Option<usize>,
    /// Most clients at once.
    pub max_clients: usize,
    /// How snapshots travel.
    pub transport: Transport,
    /// Stop after this long (clean shutdown, summary written).
    pub duration: Option<Duration>,
    /// Print a stats line this often.
    pub stats_interval: Option<Duration>,
    /// The link conditioner for what the server sends and receives (UDP transports).
    pub conditioner: ConditionerConfig,
    /// Seed of the scene and the conditioner.
    pub seed: u64,
    /// Snapshot bytes per client per send, before the priority accumulator defers entities.
    pub budget_bytes: usize,
    /// Print nothing but errors (for in-process use by `compare`).
    pub quiet: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:7777".parse().expect("literal address"),
            tick_rate: 60.0,
            send_rate: 60.0,
            scene: SceneKind::Arena,
            entities: None,
            max_clients: 64,
            transport: Transport::Udp,
            duration: None,
            stats_interval: Some(Duration::from_secs(1)),
            conditioner: ConditionerConfig::off(),
            seed: 1,
            budget_bytes: DEFAULT_BUDGET_BYTES,
            quiet: false,
        }
    }
}

/// Default snapshot budget per client per send: 8 parts. Far above what the demo scenes
/// need after delta compression; the priority accumulator takes over only beyond it.
pub const DEFAULT_BUDGET_BYTES: usize = 8 * 1100;

/// Instructions from outside the tick loop (console, signals, an in-process host).
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// A console command.
    Console(ConsoleCommand),
    /// Shut down cleanly now.
    Shutdown,
}

/// Conditioner counters in the summary.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ConditionerSummary {
    /// Datagrams dropped by the simulated link (loss and overflow).
    pub dropped: u64,
    /// Datagrams duplicated.
    pub duplicated: u64,
    /// Datagrams held back so later ones overtook them.
    pub reordered: u64,
}

/// Tick cost percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TickCost {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// The server's summary at exit (keys are a contract: add, never rename).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerSummary {
    /// Transport name.
    pub transport: String,
    /// Scene name.
    pub scene: String,
    /// Ticks simulated.
    pub ticks: u64,
    /// Configured ticks per second.
    pub tick_rate: f64,
    /// Ticks per second actually achieved over the run.
    pub achieved_tick_rate: f64,
    /// Snapshots per second configured.
    pub send_rate: f64,
    /// Wall time per tick spent simulating, encoding and sending, in microseconds.
    pub tick_cost_us: TickCost,
    /// p99 tick cost as a share of the tick period, percent.
    pub tick_cost_p99_pct_of_period: f64,
    /// Most clients connected at once.
    pub clients_peak: u64,
    /// Outgoing bandwidth, kbit/s averaged over the run (28 B IP+UDP per datagram).
    pub kbps_out: f64,
    /// Incoming bandwidth, kbit/s averaged over the run.
    pub kbps_in: f64,
    /// Datagrams (or frames) in.
    pub packets_in: u64,
    /// Datagrams (or frames) out.
    pub packets_out: u64,
    /// Datagrams dropped as invalid.
    pub invalid_packets: u64,
    /// What the simulated link did.
    pub conditioner: ConditionerSummary,
    /// Entities in the scene at the end.
    pub entities: u64,
    /// Mean share of entities whose quantized state changed per sent snapshot, percent.
    pub changed_pct: f64,
    /// Snapshot payload bits sent per changed entity sent.
    pub bits_per_changed_entity: f64,
    /// Snapshot bytes sent in all.
    pub snapshot_bytes: u64,
    /// Snapshots built (one per client per send).
    pub snapshots: u64,
    /// Snapshots that had no usable baseline (full state).
    pub full_snapshots: u64,
    /// Seconds run.
    pub duration_s: f64,
}

/// Errors that stop the server before or while running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Could not bind or use the socket.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A socket error while running.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// Options that cannot work together.
    #[error("{0}")]
    Options(String),
}

/// The quantization both sides use for a scene: a box that fits it, 1/512 m steps.
pub fn quantize_config(scene: SceneKind) -> QuantizeConfig {
    let base = QuantizeConfig::default();
    match scene {
        // The field fits ±256 m across and 64 m up: 18 + 18 + 15 bits for a full position.
        SceneKind::Cubes => QuantizeConfig {
            position_min: glam::Vec3::new(-256.0, -1.0, -256.0),
            position_max: glam::Vec3::new(256.0, 63.0, 256.0),
            ..base
        },
        SceneKind::Arena => base,
    }
}

/// Whether snapshots of this scene carry velocity (used by client extrapolation). The
/// cubes scene is the bandwidth yardstick of the literature, which sends none.
pub fn sends_velocity(scene: SceneKind) -> bool {
    matches!(scene, SceneKind::Arena)
}

/// Running sums of what the snapshot senders produced, kept across departures.
#[derive(Debug, Default)]
struct SnapshotTotals {
    bytes: u64,
    snapshots: u64,
    full_snapshots: u64,
    entities_sent: u64,
}

impl SnapshotTotals {
    fn add(&mut self, s: &snapsync::snapshot::SenderStats) {
        self.bytes += s.bytes;
        self.snapshots += s.snapshots;
        self.full_snapshots += s.full_snapshots;
        self.entities_sent += s.entities_sent;
    }
}

struct Peer {
    sender: SnapshotSender,
    applied_input: Option<u32>,
}

/// Run the server until `duration`, `quit`, or [`Control::Shutdown`]. `ready` receives
/// the bound address once clients may connect.
pub async fn run(
    opts: ServerOptions,
    mut control: mpsc::Receiver<Control>,
    ready: Option<oneshot::Sender<SocketAddr>>,
) -> Result<ServerSummary, ServerError> {
    if !(1.0..=1000.0).contains(&opts.tick_rate) {
        return Err(ServerError::Options(format!(
            "--tick-rate must be 1..=1000 Hz (got {})",
            opts.tick_rate
        )));
    }
    if !(opts.send_rate > 0.0 && opts.send_rate <= opts.tick_rate) {
        return Err(ServerError::Options(format!(
            "--send-rate must be above 0 and at most the tick rate {} (got {})",
            opts.tick_rate, opts.send_rate
        )));
    }
    let quantize = quantize_config(opts.scene);
    let mut link = ServerLink::bind(&opts).await?;
    let local = link.local_addr();
    if let Some(ready) = ready {
        let _ = ready.send(local);
    }
    let mut conditioner = opts.conditioner.clone();
    let say = |s: String| {
        if !opts.quiet {
            println!("{s}");
        }
    };
    say(format!(
        "demo-server: {} on {local}, scene {} , {} Hz tick, {} Hz send, conditioner {}",
        opts.transport,
        opts.scene,
        opts.tick_rate,
        opts.send_rate,
        describe(&conditioner)
    ));

    let mut scene: Box<dyn Scene> = build_scene(opts.scene, opts.entities, opts.seed);
    let period = Duration::from_secs_f64(1.0 / opts.tick_rate);
    let dt = period.as_secs_f32();
    let send_every = opts.tick_rate / opts.send_rate;
    let tick0_unix_micros = unix_micros_now();
    let start = Instant::now();
    let start_tokio = tokio::time::Instant::now();
    let deadline = opts.duration.map(|d| start_tokio + d);

    let mut peers: BTreeMap<PeerId, Peer> = BTreeMap::new();
    let mut snap_totals = SnapshotTotals::default();
    let mut tick_cost = DurationHistogram::new();
    let mut summary = ServerSummary {
        transport: opts.transport.name().into(),
        scene: opts.scene.to_string(),
        tick_rate: opts.tick_rate,
        send_rate: opts.send_rate,
        ..ServerSummary::default()
    };
    let mut prev_world: Option<QuantizedWorld> = None;
    let mut changed_sum = 0.0f64;
    let mut changed_samples = 0u64;
    let mut next_send = 0.0f64;
    let mut next_stats = opts.stats_interval.map(|i| start_tokio + i);
    let mut tick: u32 = 0;

    'ticks: loop {
        let next_tick = start_tokio + period.mul_f64(f64::from(tick) + 1.0);
        link.drive_until(next_tick).await?;
        tick += 1;

        while let Ok(c) = control.try_recv() {
            match c {
                Control::Shutdown | Control::Console(ConsoleCommand::Quit) => break 'ticks,
                Control::Console(ConsoleCommand::Help) => say(CONSOLE_HELP.to_string()),
                Control::Console(ConsoleCommand::Stats) => {
                    say(link.stats_line(peers.len(), &tick_cost, &conditioner))
                }
                Control::Console(cmd) => match cmd.apply(&conditioner) {
                    Some(Ok(new)) => {
                        conditioner = new;
                        link.set_conditioner(&conditioner);
                        say(format!("conditioner: {}", describe(&conditioner)));
                    }
                    Some(Err(e)) => say(format!("error: {e}")),
                    None => {}
                },
            }
        }

        let work_start = Instant::now();
        let now = work_start;
        for event in link.poll_events() {
            match event {
                LinkEvent::Joined(peer) => {
                    let avatar = scene.add_player(peer.0);
                    let sender = SnapshotSender::new(SenderConfig {
                        quantize,
                        ..SenderConfig::default()
                    });
                    let sender = match sender {
                        Ok(s) => s,
                        Err(e) => return Err(ServerError::Options(e.to_string())),
                    };
                    peers.insert(
                        peer,
                        Peer {
                            sender,
                            applied_input: None,
                        },
                    );
                    let welcome = Welcome {
                        tick_rate: opts.tick_rate,
                        send_rate: opts.send_rate,
                        tick0_unix_micros,
                        avatar: Some(avatar),
                        scene: opts.scene.to_string(),
                    };
                    link.send_welcome(now, peer, &welcome);
                    summary.clients_peak = summary.clients_peak.max(peers.len() as u64);
                }
                LinkEvent::Left(peer, reason) => {
                    scene.remove_player(peer.0);
                    if let Some(p) = peers.remove(&peer) {
                        snap_totals.add(&p.sender.stats());
                    }
                    say(format!("client {} left: {reason}", peer.0));
                }
                LinkEvent::Input(peer, bytes) => {
                    let Some(p) = peers.get_mut(&peer) else {
                        continue;
                    };
                    let Some(msg) = InputMsg::decode(&bytes) else {
                        link.count_invalid();
                        continue;
                    };
                    let mut newest = p.applied_input;
                    for (num, input) in msg.unseen(p.applied_input) {
                        scene.apply_input(peer.0, &input.sanitized());
                        newest = Some(num);
                    }
                    p.applied_input = newest;
                }
                LinkEvent::Delivery(peer, seq, acked) => {
                    if let Some(p) = peers.get_mut(&peer) {
                        p.sender.on_delivery(seq, acked);
                    }
                }
            }
        }

        scene.step(dt);

        if f64::from(tick) >= next_send {
            next_send += send_every;
            let mut world = World::new();
            let velocity = sends_velocity(opts.scene);
            for b in scene.bodies() {
                world.insert(
                    EntityId(b.id),
                    EntityState::new(Transform {
                        position: b.position,
                        rotation: b.rotation,
                        velocity: velocity.then_some(b.velocity),
                    }),
                );
            }
            let qworld = QuantizedWorld::from_world(&world, &quantize);
            if let Some(prev) = &prev_world {
                let changed = qworld
                    .iter()
                    .filter(|(id, e)| prev.get(*id) != Some(*e))
                    .count();
                if !qworld.is_empty() {
                    changed_sum += changed as f64 / qworld.len() as f64;
                    changed_samples += 1;
                }
            }
            for (peer, p) in peers.iter_mut() {
                match p.sender.build(Tick(tick), &qworld, opts.budget_bytes) {
                    Ok(parts) => {
                        for (i, part) in parts.iter().enumerate() {
                            if let Some((seq, delivered)) = link.send_part(now, *peer, part) {
                                p.sender.on_part_sent(Tick(tick), i, seq);
                                if let Some(acked) = delivered {
                                    // Streams deliver everything they accept, in order:
                                    // the part counts as acked once handed over.
                                    p.sender.on_delivery(seq, acked);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "snapshot build failed"),
                }
            }
            summary.entities = qworld.len() as u64;
            prev_world = Some(qworld);
        }
        link.flush();
        tick_cost.record(work_start.elapsed());

        let t = tokio::time::Instant::now();
        if let Some(ns) = next_stats {
            if t >= ns {
                say(link.stats_line(peers.len(), &tick_cost, &conditioner));
                next_stats = opts.stats_interval.map(|i| ns + i);
            }
        }
        if deadline.is_some_and(|d| t >= d) {
            break;
        }
    }

    link.shutdown().await;
    let elapsed = start.elapsed().as_secs_f64();
    summary.ticks = u64::from(tick);
    summary.duration_s = elapsed;
    summary.achieved_tick_rate = if elapsed > 0.0 {
        f64::from(tick) / elapsed
    } else {
        0.0
    };
    let p = tick_cost.percentiles();
    summary.tick_cost_us = TickCost {
        p50: p.p50 * 1000.0,
        p99: p.p99 * 1000.0,
        max: p.max * 1000.0,
    };
    summary.tick_cost_p99_pct_of_period = p.p99 / 1000.0 / period.as_secs_f64() * 100.0;
    summary.changed_pct = if changed_samples > 0 {
        changed_sum / changed_samples as f64 * 100.0
    } else {
        0.0
    };
    let totals = link.totals();
    summary.kbps_out = totals.wire_bytes_out as f64 * 8.0 / 1000.0 / elapsed.max(1e-9);
    summary.kbps_in = totals.wire_bytes_in as f64 * 8.0 / 1000.0 / elapsed.max(1e-9);
    summary.packets_in = totals.packets_in;
    summary.packets_out = totals.packets_out;
    summary.invalid_packets = totals.invalid_packets;
    summary.conditioner = totals.conditioner;
    for p in peers.values() {
        snap_totals.add(&p.sender.stats());
    }
    summary.snapshot_bytes = snap_totals.bytes;
    summary.snapshots = snap_totals.snapshots;
    summary.full_snapshots = snap_totals.full_snapshots;
    summary.bits_per_changed_entity = if snap_totals.entities_sent > 0 {
        snap_totals.bytes as f64 * 8.0 / snap_totals.entities_sent as f64
    } else {
        0.0
    };
    Ok(summary)
}
