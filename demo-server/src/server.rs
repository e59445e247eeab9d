//! The demo server: a fixed-tick authoritative simulation replicated to every client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use snapsync::conditioner::ConditionerConfig;
use tokio::sync::{mpsc, oneshot};

use crate::cli::{CONSOLE_HELP, ConsoleCommand, Transport, describe};
use crate::game::{GameOptions, GameServer};
use crate::metrics::DurationHistogram;
use crate::protocol::unix_micros_now;
use crate::scene::SceneKind;
use crate::transport::{LinkEvent, ServerLink};

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
    let tick0_unix_micros = unix_micros_now();
    let mut game = GameServer::new(
        GameOptions {
            scene: opts.scene,
            entities: opts.entities,
            tick_rate: opts.tick_rate,
            send_rate: opts.send_rate,
            budget_bytes: opts.budget_bytes,
            seed: opts.seed,
        },
        tick0_unix_micros,
    )
    .map_err(ServerError::Options)?;
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
        "demo-server: {} on {local}, scene {}, {} Hz tick, {} Hz send, conditioner {}",
        opts.transport,
        opts.scene,
        opts.tick_rate,
        opts.send_rate,
        describe(&conditioner)
    ));

    let period = game.period();
    let start = Instant::now();
    let start_tokio = tokio::time::Instant::now();
    let deadline = opts.duration.map(|d| start_tokio + d);
    let mut tick_cost = DurationHistogram::new();
    let mut clients_peak = 0u64;
    let mut next_stats = opts.stats_interval.map(|i| start_tokio + i);

    'ticks: loop {
        // Tick n runs at start + n periods: the schedule never drifts; a late tick runs
        // at once and the next keeps its slot.
        let next_tick = start_tokio + period.mul_f64(f64::from(game.ticks()) + 1.0);
        link.drive_until(next_tick).await?;

        while let Ok(c) = control.try_recv() {
            match c {
                Control::Shutdown | Control::Console(ConsoleCommand::Quit) => break 'ticks,
                Control::Console(ConsoleCommand::Help) => say(CONSOLE_HELP.to_string()),
                Control::Console(ConsoleCommand::Stats) => {
                    say(link.stats_line(game.player_count(), &tick_cost, &conditioner))
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
        for event in link.poll_events() {
            match event {
                LinkEvent::Joined(peer) => {
                    let welcome = game.join(peer);
                    link.send_welcome(work_start, peer, &welcome);
                    clients_peak = clients_peak.max(game.player_count() as u64);
                }
                LinkEvent::Left(peer, reason) => {
                    game.leave(peer);
                    say(format!("client {} left: {reason}", peer.0));
                }
                LinkEvent::Input(peer, bytes) => {
                    if !game.input(peer, &bytes) {
                        link.count_invalid();
                    }
                }
                LinkEvent::Delivery(peer, seq, acked) => game.delivery(peer, seq, acked),
            }
        }
        game.tick(&mut |peer, part| link.send_part(work_start, peer, part));
        link.flush();
        tick_cost.record(work_start.elapsed());

        let t = tokio::time::Instant::now();
        if let Some(ns) = next_stats
            && t >= ns
        {
            say(link.stats_line(game.player_count(), &tick_cost, &conditioner));
            next_stats = opts.stats_interval.map(|i| ns + i);
        }
        if deadline.is_some_and(|d| t >= d) {
            break;
        }
    }

    link.shutdown().await;
    let elapsed = start.elapsed().as_secs_f64();
    let ticks = game.ticks();
    let p = tick_cost.percentiles();
    let totals = link.totals();
    let snaps = game.snapshot_totals();
    Ok(ServerSummary {
        transport: opts.transport.name().into(),
        scene: opts.scene.to_string(),
        ticks: u64::from(ticks),
        tick_rate: opts.tick_rate,
        achieved_tick_rate: if elapsed > 0.0 {
            f64::from(ticks) / elapsed
        } else {
            0.0
        },
        send_rate: opts.send_rate,
        tick_cost_us: TickCost {
            p50: p.p50 * 1000.0,
            p99: p.p99 * 1000.0,
            max: p.max * 1000.0,
        },
        tick_cost_p99_pct_of_period: p.p99 / 1000.0 / period.as_secs_f64() * 100.0,
        clients_peak,
        kbps_out: totals.wire_bytes_out as f64 * 8.0 / 1000.0 / elapsed.max(1e-9),
        kbps_in: totals.wire_bytes_in as f64 * 8.0 / 1000.0 / elapsed.max(1e-9),
        packets_in: totals.packets_in,
        packets_out: totals.packets_out,
        invalid_packets: totals.invalid_packets,
        conditioner: totals.conditioner,
        entities: game.entities() as u64,
        changed_pct: game.changed_pct(),
        bits_per_changed_entity: if snaps.entities_sent > 0 {
            snaps.bytes as f64 * 8.0 / snaps.entities_sent as f64
        } else {
            0.0
        },
        snapshot_bytes: snaps.bytes,
        snapshots: snaps.snapshots,
        full_snapshots: snaps.full_snapshots,
        duration_s: elapsed,
    })
}
