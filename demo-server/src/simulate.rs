//! The whole demo in virtual time: one [`GameServer`] on a [`replication::Server`] and N
//! [`GameClient`]s on [`PlayerClient`]s, over [`snapsync::sim::Sim`] — the same calls the
//! real `udp` demo makes on sockets.
//!
//! The server ticks at `start + n / tick_rate`; each client runs a frame at its own fixed
//! rate (phases staggered so frames do not all line up), handling what arrived since its
//! last frame, then sending the inputs that are due and drawing — as `demo-client` does.
//!
//! Everything the protocol sees runs on virtual time, so a seed gives the same run every
//! time. The real-time measurements are the server's CPU cost per tick, taken with
//! `Instant::now()` around the work the real server does per tick (handle events, run
//! `GameServer::tick`, drain the datagrams it produced into the links), and its work between
//! ticks (what the network called it for: datagrams received, timers, events), which
//! `Sim::server_busy` adds up — measurements, not clocks the protocol reads. Socket syscalls
//! are in neither (see the loopback bench). Each tick's log entry also has the CPU time the
//! ticking thread was given, from the thread's own clock.
//! Staleness uses virtual time: the game's tick 0 is the start of the run, and clients pass
//! microseconds since the start as their clock.
//!
//! With [`SimulationOptions::secure`] every client connects with a connect token and every
//! packet is sealed and opened (netcode 1.02), as a shipped server runs: the server's flush,
//! and so its tick cost, then includes sealing what it sends.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use snapsync::conditioner::ConditionerConfig;
use snapsync::connection::ClientSecurity;
use snapsync::netcode;
use snapsync::packet::{IP_UDP_HEADER_BYTES, MAX_PACKET_BYTES};
use snapsync::replication::{self, SnapshotDelivery};
use snapsync::sim::{SERVER_ADDR, Sim};

use crate::freshness::EntityHistory;
use crate::game::{GameOptions, GameServer};
use crate::metrics::{DistanceHistogram, DurationHistogram};
use crate::player::{GameClient, PlayerClient};
use crate::scene::SceneKind;
use crate::server::DEFAULT_BUDGET_BYTES;
use crate::tokens::{TokenMint, secure_mode};

/// Client frames per second unless told otherwise: `demo-client`'s default.
pub const DEFAULT_FRAME_RATE_HZ: f64 = 60.0;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulationOptions {
    /// The server's game: scene, entity count, tick and send rate, budget, scene seed.
    pub game: GameOptions,
    /// Clients, each a bot that plays.
    pub clients: usize,
    /// Client frames (and inputs) per second.
    pub frame_rate: f64,
    /// The link every client has, both directions alike.
    pub conditioner: ConditionerConfig,
    /// Seed of the network (conditioners, handshakes) and the bots.
    pub seed: u64,
    /// Predict each player's own entity (where the scene allows it).
    pub predict: bool,
    /// Secure mode (netcode 1.02): clients connect with tokens, every packet is encrypted and
    /// authenticated. Off (the plain protocol) unless asked.
    pub secure: bool,
}

impl Default for SimulationOptions {
    /// The arena at 60 Hz with one client on a perfect link.
    fn default() -> Self {
        Self {
            game: GameOptions {
                scene: SceneKind::Arena,
                entities: None,
                tick_rate: 60.0,
                send_rate: 60.0,
                budget_bytes: DEFAULT_BUDGET_BYTES,
                seed: 1,
                aoi_radius_m: None,
                snapshot_threads: 1,
                respawns_per_s: 0.0,
            },
            clients: 1,
            frame_rate: DEFAULT_FRAME_RATE_HZ,
            conditioner: ConditionerConfig::off(),
            seed: 1,
            predict: true,
            secure: false,
        }
    }
}

/// Why a simulation could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The game options are out of range.
    #[error("bad game options: {0}")]
    Game(String),
    /// The link settings are invalid.
    #[error("bad link simulation: {0}")]
    Conditioner(#[from] snapsync::conditioner::ConfigError),
    /// The replication settings are invalid.
    #[error("bad replication config: {0}")]
    Replication(#[from] replication::ConfigError),
    /// Zero clients, or a frame rate that is not a positive number.
    #[error("need at least one client and a positive frame rate")]
    Clients,
    /// A connect token could not be minted (secure mode).
    #[error("connect token: {0}")]
    Token(#[from] netcode::TokenError),
}

/// One measured server tick: its number and what the server's core spent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickCost {
    /// The server's tick number.
    pub tick: u32,
    /// The tick's own work (as in [`SimulationReport::tick_cost`]).
    pub cost: Duration,
    /// The work between the tick before and this one (as in
    /// [`SimulationReport::between_ticks_cost`]).
    pub between: Duration,
    /// The CPU time the ticking thread was given during `cost` (its own clock; with a
    /// pool, the other threads' work is not in it). Near `cost` when the thread ran the
    /// whole tick: a tick that took long with both alike was slow on the core, not taken
    /// off it.
    pub cpu: Duration,
}

/// The CPU time the calling thread has had.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    // The clock counts from the thread's start: never negative.
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Ticks in a row [`SimulationReport::tick_cost_floor_pct`] takes the median of.
pub const FLOOR_TICKS: usize = 10;

/// The lowest median of `n` consecutive `costs` (`None` when there are fewer than `n`, or
/// `n` is 0): the cost of the fastest stretch of `n` ticks, each stretch's middle value (the
/// lower of the two for an even `n`) so that one tick alone neither makes nor spoils it.
pub fn fastest_stretch(costs: impl Iterator<Item = Duration>, n: usize) -> Option<Duration> {
    let costs: Vec<Duration> = costs.collect();
    let mut window = Vec::with_capacity(n);
    costs
        .windows(n.max(1))
        .filter(|w| w.len() == n)
        .map(|w| {
            window.clear();
            window.extend_from_slice(w);
            window.sort_unstable();
            window[(n - 1) / 2]
        })
        .min()
}

/// Most ticks a run logs one by one (about 36 minutes at 30 Hz, 2.6 MB), so a long run's
/// memory stays bounded; the histograms count every tick.
pub const TICK_LOG_LEN: usize = 65_536;

/// What one run measured, from the last [`Simulation::reset_measurements`] (or the start).
#[derive(Debug, Clone)]
pub struct SimulationReport {
    /// Clients simulated.
    pub clients: usize,
    /// Clients connected (and welcomed) at the end.
    pub connected: usize,
    /// Clients that lost their connection.
    pub disconnects: u64,
    /// Server ticks measured.
    pub ticks: u64,
    /// The tick period.
    pub tick_period: Duration,
    /// Virtual time measured.
    pub duration: Duration,
    /// Server CPU time per tick (real time around the tick's work).
    pub tick_cost: DurationHistogram,
    /// Server CPU time between one tick and the next, per tick period: the datagrams it
    /// received (inputs, acks), its timers, its events ([`Sim::server_busy`]).
    pub between_ticks_cost: DurationHistogram,
    /// Server CPU time per tick period in all: the tick plus the work before it since the
    /// last tick. What a server's core spends; `tick_cost` is the part a game schedules.
    pub period_cost: DurationHistogram,
    /// Every measured tick in order (the first [`TICK_LOG_LEN`]): what the histograms above
    /// cannot tell, such as whether slow ticks come alone or in stretches.
    pub tick_log: Vec<TickCost>,
    /// Server → client kbit/s per connected client, as sent (28 B IP+UDP per datagram).
    pub kbps_down_per_client: f64,
    /// Client → server kbit/s per connected client, as sent.
    pub kbps_up_per_client: f64,
    /// Update gaps of every client, merged.
    pub update_gap: DurationHistogram,
    /// Staleness samples of every client, merged (virtual time).
    pub staleness: DurationHistogram,
    /// Per-entity staleness, every client frame × entity it holds: how long the client had
    /// held the entity's state after the server's had changed (zero while current).
    pub entity_staleness: DurationHistogram,
    /// Of those samples, the ones older than the history kept (counted at its length).
    pub entity_staleness_beyond_history: u64,
    /// Newer snapshots received, summed over clients.
    pub snapshots_received: u64,
    /// Snapshot parts the clients could not use (undecodable or missing baseline).
    pub parts_rejected: u64,
    /// Entities in the server's newest snapshot.
    pub entities: usize,
    /// Share of snapshots sent as encoded for another client with the same baseline, percent.
    pub shared_pct: f64,
    /// Share of the entity deltas sent that another client had already encoded (clients
    /// with scopes share their entities' encodings per baseline age), percent.
    pub shared_deltas_pct: f64,
    /// Share of the scoped snapshots whose scope was worked out by a scan, not kept by the
    /// entities near its edge, percent (0 without scopes).
    pub scope_scan_pct: f64,
    /// Entities a client is sent on average: its scope where there is an area of interest
    /// or rooms, the whole world otherwise.
    pub entities_per_client: f64,
    /// From an input to the first frame that drew it, every client merged.
    pub input_latency: DurationHistogram,
    /// Reconciliation jumps of predicted entities, every client merged.
    pub correction_m: DistanceHistogram,
}

impl SimulationReport {
    /// Tick cost at quantile `q` (0..=1) as a share of the tick period, percent.
    pub fn tick_cost_pct(&self, q: f64) -> f64 {
        self.share_of_period_pct(&self.tick_cost, q)
    }

    /// The server's whole work per tick period ([`Self::period_cost`]) at quantile `q` as a
    /// share of the period, percent.
    pub fn period_cost_pct(&self, q: f64) -> f64 {
        self.share_of_period_pct(&self.period_cost, q)
    }

    fn share_of_period_pct(&self, h: &DurationHistogram, q: f64) -> f64 {
        h.quantile_ms(q) / 1000.0 / self.tick_period.as_secs_f64() * 100.0
    }

    /// The cost of the run's fastest [`FLOOR_TICKS`] ticks in a row (their median, see
    /// [`fastest_stretch`]) as a share of the tick period, percent; `None` for a shorter
    /// run. On a shared machine, slow ticks come in stretches that the host decides, so a
    /// run's p99 says as much about the host as about the work; its fastest stretch is
    /// what the work costs when the host leaves the core alone, and moves far less from
    /// run to run: the figure to compare two builds by.
    pub fn tick_cost_floor_pct(&self) -> Option<f64> {
        let floor = fastest_stretch(self.tick_log.iter().map(|t| t.cost), FLOOR_TICKS)?;
        Some(floor.as_secs_f64() / self.tick_period.as_secs_f64() * 100.0)
    }

    /// The ticking thread's CPU time over the logged ticks, as a share of their wall time
    /// (`None` without ticks): near 100 % when the thread had its core for every tick, so
    /// that a slow tick was the core running slower. With a pool, the time the thread waits
    /// for the pool's threads is not on its clock.
    pub fn tick_cpu_pct(&self) -> Option<f64> {
        let wall: Duration = self.tick_log.iter().map(|t| t.cost).sum();
        let cpu: Duration = self.tick_log.iter().map(|t| t.cpu).sum();
        (!wall.is_zero()).then(|| cpu.as_secs_f64() / wall.as_secs_f64() * 100.0)
    }

    /// Newer snapshots received per second per client.
    pub fn snapshots_per_client_per_s(&self) -> f64 {
        let secs = self.duration.as_secs_f64();
        if self.clients == 0 || secs <= 0.0 {
            return 0.0;
        }
        self.snapshots_received as f64 / self.clients as f64 / secs
    }
}

/// One simulated player: its game and what was counted before the measurement began.
#[derive(Debug)]
struct Player {
    game: GameClient,
    snapshots_base: u64,
    rejected_base: u64,
}

/// What is due next on the virtual timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// The server's next tick.
    Tick,
    /// Client `i`'s next frame.
    Frame(usize),
}

/// A running simulation; [`run`] is the one-call form.
#[derive(Debug)]
pub struct Simulation {
    sim: Sim<replication::Server, PlayerClient>,
    game: GameServer,
    players: Vec<Player>,
    schedule: BinaryHeap<Reverse<(Instant, Due)>>,
    start: Instant,
    tick_period: Duration,
    frame_period: Duration,
    buf: Vec<u8>,
    tick_cost: DurationHistogram,
    between_ticks_cost: DurationHistogram,
    period_cost: DurationHistogram,
    tick_log: Vec<TickCost>,
    /// [`Sim::server_busy`] at the end of the last tick.
    busy_at_last_tick: Duration,
    /// The server's recent entity states, for per-entity staleness.
    history: EntityHistory,
    entity_staleness: DurationHistogram,
    disconnects: u64,
    measure_start: Instant,
    ticks_base: u32,
    wire_base: (u64, u64),
    /// [`Self::sharing`] at the reset.
    sharing_base: [u64; 6],
}

impl Simulation {
    /// Set up the server and every client; they start connecting at once.
    pub fn new(opts: &SimulationOptions) -> Result<Self, SimulateError> {
        if opts.clients == 0 || !(opts.frame_rate.is_finite() && opts.frame_rate > 0.0) {
            return Err(SimulateError::Clients);
        }
        opts.conditioner.validate()?;
        let game = GameServer::new(&opts.game).map_err(SimulateError::Game)?;
        // Tick 0 is the start of virtual time: staleness is measured against it.
        let mut config = opts
            .game
            .replication_config(0, opts.clients, SnapshotDelivery::Datagrams);
        // Secure mode as `demo-server` runs it, with a key of the run's own and tokens for
        // the simulated server's address.
        let mint = opts.secure.then(|| {
            let key = netcode::generate_key();
            config.server.security = secure_mode(key, SERVER_ADDR);
            TokenMint::new(key, SERVER_ADDR)
        });
        let mut sim = Sim::replication(config, opts.seed)?;
        let mut players = Vec::with_capacity(opts.clients);
        for i in 0..opts.clients {
            let mut client = replication::ClientConfig::default();
            if let Some(mint) = &mint {
                client.client.security = ClientSecurity::Secure {
                    token: mint.mint()?,
                };
            }
            sim.add_replication_client(client)?;
            let bot_seed = opts.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            players.push(Player {
                game: GameClient::new(bot_seed, opts.predict),
                snapshots_base: 0,
                rejected_base: 0,
            });
        }
        // Validated above, so this cannot panic.
        sim.set_all_links(opts.conditioner.clone());
        let start = sim.now;
        let tick_period = Duration::from_secs_f64(1.0 / opts.game.tick_rate);
        let frame_period = Duration::from_secs_f64(1.0 / opts.frame_rate);
        let mut schedule = BinaryHeap::new();
        schedule.push(Reverse((start + tick_period, Due::Tick)));
        for i in 0..opts.clients {
            // Real clients start at unrelated moments; spread their frames over one period.
            let phase = frame_period.mul_f64(i as f64 / opts.clients as f64);
            schedule.push(Reverse((start + phase, Due::Frame(i))));
        }
        let history = EntityHistory::new(sim.server.config().quantize);
        Ok(Self {
            sim,
            game,
            players,
            schedule,
            start,
            tick_period,
            frame_period,
            buf: vec![0; MAX_PACKET_BYTES],
            tick_cost: DurationHistogram::new(),
            between_ticks_cost: DurationHistogram::new(),
            period_cost: DurationHistogram::new(),
            tick_log: Vec::new(),
            busy_at_last_tick: Duration::ZERO,
            history,
            entity_staleness: DurationHistogram::new(),
            disconnects: 0,
            measure_start: start,
            ticks_base: 0,
            wire_base: (0, 0),
            sharing_base: [0; 6],
        })
    }

    /// Make every bot stand still (see [`GameClient::set_idle`]).
    pub fn set_bots_idle(&mut self, idle: bool) {
        for p in &mut self.players {
            p.game.set_idle(idle);
        }
    }

    /// Virtual now.
    pub fn now(&self) -> Instant {
        self.sim.now
    }

    /// The server's game.
    pub fn game(&self) -> &GameServer {
        &self.game
    }

    /// The simulated network (replication server, clients, links).
    pub fn network(&self) -> &Sim<replication::Server, PlayerClient> {
        &self.sim
    }

    /// Clients welcomed and still connected.
    pub fn connected(&self) -> usize {
        self.players.iter().filter(|p| p.game.is_ready()).count()
    }

    /// Run `d` of virtual time: server ticks and client frames in time order.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.sim.now + d;
        while let Some(&Reverse((at, due))) = self.schedule.peek() {
            if at > end {
                break;
            }
            self.schedule.pop();
            self.run_due(at, due);
        }
        self.sim.run_until(end);
    }

    /// Run until the server's next tick has run; returns that tick's cost (wall time).
    ///
    /// The clients and the network run up to that moment too, so repeated calls are a
    /// steady game (the way the server-tick bench measures one tick at a time).
    pub fn step_tick(&mut self) -> Duration {
        // The tick entry is always re-queued by `run_due`, so the schedule is never empty
        // and the loop ends at the next tick.
        while let Some(Reverse((at, due))) = self.schedule.pop() {
            if let Some(cost) = self.run_due(at, due) {
                return cost;
            }
        }
        Duration::ZERO
    }

    /// Bring the network to `at` and run what is due then, re-queueing it; returns the
    /// cost (wall time) when it was a server tick.
    fn run_due(&mut self, at: Instant, due: Due) -> Option<Duration> {
        self.sim.run_until(at);
        match due {
            Due::Tick => {
                // The server's work since the last tick: what the network called it for.
                let busy = self.sim.server_busy();
                let between = busy.saturating_sub(self.busy_at_last_tick);
                self.busy_at_last_tick = busy;
                let (cost, cpu) = self.server_tick();
                self.tick_cost.record(cost);
                self.between_ticks_cost.record(between);
                self.period_cost.record(cost + between);
                let ticks = self.sim.server.current_tick().0;
                if self.tick_log.len() < TICK_LOG_LEN {
                    self.tick_log.push(TickCost {
                        tick: ticks,
                        cost,
                        between,
                        cpu,
                    });
                }
                // Outside the measured work: the harness's own record of the truth.
                self.history.record(ticks, self.game.world());
                let next = self.start + self.tick_period * (ticks + 1);
                self.schedule.push(Reverse((next, Due::Tick)));
                Some(cost)
            }
            Due::Frame(i) => {
                self.client_frame(i);
                self.schedule
                    .push(Reverse((at + self.frame_period, Due::Frame(i))));
                None
            }
        }
    }

    /// The server's work for one tick, as `server::run` does it; returns its time, on the
    /// wall clock and on the thread's CPU clock.
    fn server_tick(&mut self) -> (Duration, Duration) {
        let now = self.sim.now;
        let cpu_start = thread_cpu_time();
        let work_start = Instant::now();
        for event in std::mem::take(&mut self.sim.server_events) {
            self.game.on_event(&mut self.sim.server, event);
        }
        self.game.tick(now, &mut self.sim.server);
        // The real server's flush: every datagram copied into its outbound link.
        while let Some(t) = self.sim.server.poll_transmit(now, &mut self.buf) {
            let Some(i) = self.sim.client_at(t.destination) else {
                continue;
            };
            // `t.len` is at most the buffer's length, and `i` came from `add_client`.
            let datagram = self.sim.datagram(&self.buf[..t.len]);
            let c = &mut self.sim.clients[i];
            if !c.partitioned {
                c.down.push(now, datagram, t.len);
                self.sim.touched(i);
            }
        }
        let cost = work_start.elapsed();
        (cost, thread_cpu_time().saturating_sub(cpu_start))
    }

    /// One client frame, as `demo-client`'s session loop does it.
    fn client_frame(&mut self, i: usize) {
        let now = self.sim.now;
        let micros = now.saturating_duration_since(self.start).as_micros() as u64;
        // Only this client changes: the network's next run need not look at the others.
        self.sim.touched(i);
        let c = &mut self.sim.clients[i];
        let p = &mut self.players[i];
        if p.game.closed().is_some() {
            return;
        }
        for event in std::mem::take(&mut c.events) {
            p.game.on_event(&mut c.client, event);
        }
        if p.game.closed().is_some() {
            self.disconnects += 1;
            return;
        }
        p.game.on_frame(&mut c.client, now, micros);
        if p.game.is_ready()
            && let Some(receiver) = c.client.receiver()
        {
            let (start, period) = (self.start, self.tick_period);
            let tick_time = |t: u32| start + period * t;
            for (id, held) in receiver.live() {
                if let Some(age) = self.history.staleness(id, held, now, tick_time) {
                    self.entity_staleness.record(age);
                }
            }
        }
    }

    /// Bytes on the wire (with IP+UDP headers) sent so far: server → clients, clients →
    /// server.
    fn wire_bytes(&self) -> (u64, u64) {
        let mut down = 0;
        let mut up = 0;
        for c in &self.sim.clients {
            if let Some(s) = c.client.connection().connection_stats() {
                up += s.link.bytes_sent + s.link.packets_sent * IP_UDP_HEADER_BYTES;
            }
            // What the server sent, lost on the way or not.
            if let snapsync::ClientState::Connected(id) = c.client.connection().state()
                && let Some(s) = self.sim.server.connection().connection_stats(id)
            {
                down += s.link.bytes_sent + s.link.packets_sent * IP_UDP_HEADER_BYTES;
            }
        }
        (down, up)
    }

    /// The server ends every session (its `--duration` ran out, say); the clients hear it
    /// as the network delivers the goodbyes.
    pub fn shut_down_server(&mut self) {
        self.sim.server.shutdown();
    }

    /// Each player's side of the game, by client index.
    pub fn players(&self) -> impl Iterator<Item = &GameClient> {
        self.players.iter().map(|p| &p.game)
    }

    /// Forget everything measured so far (e.g. after a warm-up); the game carries on.
    pub fn reset_measurements(&mut self) {
        self.tick_cost = DurationHistogram::new();
        self.between_ticks_cost = DurationHistogram::new();
        self.period_cost = DurationHistogram::new();
        self.tick_log.clear();
        self.entity_staleness = DurationHistogram::new();
        self.history.reset_beyond_history();
        for (p, c) in self.players.iter_mut().zip(&self.sim.clients) {
            p.game.update_gap = DurationHistogram::new();
            p.game.staleness = DurationHistogram::new();
            p.game.input_latency = DurationHistogram::new();
            p.game.correction_m = DistanceHistogram::new();
            p.snapshots_base = c.client.stats().snapshots_received;
            p.rejected_base = c.client.stats().parts_rejected;
        }
        self.measure_start = self.sim.now;
        self.ticks_base = self.sim.server.current_tick().0;
        self.wire_base = self.wire_bytes();
        self.sharing_base = self.sharing();
    }

    /// Snapshots, snapshots shared, entity deltas sent, deltas shared, scoped snapshots and
    /// scopes found by a scan so far.
    fn sharing(&self) -> [u64; 6] {
        let totals = self.sim.server.snapshot_totals();
        let stats = self.sim.server.stats();
        [
            totals.snapshots,
            stats.shared_snapshots,
            totals.entities_sent,
            totals.entities_shared,
            stats.scoped_snapshots,
            stats.scope_scans,
        ]
    }

    /// The figures measured since the start or the last reset.
    pub fn report(&self) -> SimulationReport {
        let duration = self.sim.now.saturating_duration_since(self.measure_start);
        let secs = duration.as_secs_f64().max(1e-9);
        let connected = self.connected();
        let (down, up) = self.wire_bytes();
        let per_client = |bytes: u64| bytes as f64 * 8.0 / 1000.0 / secs / connected.max(1) as f64;
        let now = self.sharing();
        let sharing: [u64; 6] =
            std::array::from_fn(|i| now[i].saturating_sub(self.sharing_base[i]));
        let pct = |part: u64, all: u64| part as f64 / all.max(1) as f64 * 100.0;
        let mut update_gap = DurationHistogram::new();
        let mut staleness = DurationHistogram::new();
        let mut input_latency = DurationHistogram::new();
        let mut correction_m = DistanceHistogram::new();
        let mut snapshots_received = 0;
        let mut parts_rejected = 0;
        for (p, c) in self.players.iter().zip(&self.sim.clients) {
            update_gap.merge(&p.game.update_gap);
            staleness.merge(&p.game.staleness);
            input_latency.merge(&p.game.input_latency);
            correction_m.merge(&p.game.correction_m);
            snapshots_received += c.client.stats().snapshots_received - p.snapshots_base;
            parts_rejected += c.client.stats().parts_rejected - p.rejected_base;
        }
        SimulationReport {
            clients: self.players.len(),
            connected,
            disconnects: self.disconnects,
            ticks: u64::from(self.sim.server.current_tick().0 - self.ticks_base),
            tick_period: self.tick_period,
            duration,
            tick_cost: self.tick_cost.clone(),
            between_ticks_cost: self.between_ticks_cost.clone(),
            period_cost: self.period_cost.clone(),
            tick_log: self.tick_log.clone(),
            kbps_down_per_client: per_client(down.saturating_sub(self.wire_base.0)),
            kbps_up_per_client: per_client(up.saturating_sub(self.wire_base.1)),
            update_gap,
            staleness,
            entity_staleness: self.entity_staleness.clone(),
            entity_staleness_beyond_history: self.history.beyond_history(),
            snapshots_received,
            parts_rejected,
            entities: self.sim.server.stats().entities,
            shared_pct: pct(sharing[1], sharing[0]),
            shared_deltas_pct: pct(sharing[3], sharing[2]),
            scope_scan_pct: pct(sharing[5], sharing[4]),
            entities_per_client: {
                let s = self.sim.server.stats();
                if s.scoped_snapshots > 0 {
                    s.mean_scope()
                } else {
                    s.entities as f64
                }
            },
            input_latency,
            correction_m,
        }
    }
}

/// Run a whole simulation: `warm_up` (connecting, first full snapshots) unmeasured, then
/// `duration` measured.
pub fn run(
    opts: &SimulationOptions,
    warm_up: Duration,
    duration: Duration,
) -> Result<SimulationReport, SimulateError> {
    let mut s = Simulation::new(opts)?;
    s.run_for(warm_up);
    s.reset_measurements();
    s.run_for(duration);
    Ok(s.report())
}

#[cfg(test)]
mod tests {
    use snapsync::connection::DisconnectReason;
    use snapsync::packet::DisconnectReasonCode;
    use snapsync::replication::CloseReason;

    use super::*;

    /// Four players in the `massive` scene with `npcs`, at 30 Hz over a 20 ms link losing
    /// `loss_pct`.
    fn massive(npcs: usize, loss_pct: f64) -> SimulationOptions {
        let mut opts = SimulationOptions {
            clients: 4,
            conditioner: ConditionerConfig {
                enabled: true,
                loss_pct,
                latency: Duration::from_millis(20),
                ..ConditionerConfig::off()
            },
            ..SimulationOptions::default()
        };
        opts.game.scene = SceneKind::Massive;
        opts.game.entities = Some(npcs);
        opts.game.tick_rate = 30.0;
        opts.game.send_rate = 30.0;
        opts
    }

    #[test]
    fn the_fastest_stretch_is_a_run_of_ticks_not_one_fast_tick() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        // One tick far faster than the rest does not make a stretch.
        let mut steady = vec![10; 30];
        steady[12] = 1;
        assert_eq!(
            fastest_stretch(ms(&steady).into_iter(), 10),
            Some(Duration::from_millis(10))
        );
        // Ten fast ticks in a row do, wherever they are, and slow ticks around them (the
        // host's stretches) do not move it; one slow tick inside it does not either.
        for at in [0, 7, 20] {
            let mut run = vec![12; 30];
            run[at..at + 10].fill(7);
            run[at + 4] = 40;
            run[(at + 15) % 30] = 90;
            assert_eq!(
                fastest_stretch(ms(&run).into_iter(), 10),
                Some(Duration::from_millis(7)),
                "fast stretch at {at}"
            );
        }
        // Too short a run, or no stretch at all, has none.
        assert_eq!(fastest_stretch(ms(&[5; 9]).into_iter(), 10), None);
        assert_eq!(fastest_stretch(ms(&[5; 9]).into_iter(), 0), None);
    }

    #[test]
    fn in_massive_each_client_is_sent_its_neighbourhood_not_the_world() {
        // Also with ten NPCs a tick leaving and ten new ones appearing: entities come and go
        // every tick.
        for respawns in [0.0, 300.0] {
            let mut opts = massive(3000, 5.0);
            opts.game.respawns_per_s = respawns;
            let r = run(&opts, Duration::from_secs(1), Duration::from_secs(2)).unwrap();
            assert_eq!((r.connected, r.disconnects), (4, 0), "{respawns}");
            assert_eq!(r.entities, 3004, "NPCs plus one avatar per player");
            assert_eq!(r.parts_rejected, 0, "{respawns}");
            // 3000 NPCs on 1 km²: about 94 within 100 m of a player, plus the player itself.
            assert!(
                (20.0..300.0).contains(&r.entities_per_client),
                "entities per client {}",
                r.entities_per_client
            );
            assert!(r.snapshots_per_client_per_s() > 20.0);
            assert!(r.input_latency.count() > 0, "players walk their avatars");
            // A tenth of a viewer per entity: too few for shared encodings to pay.
            assert_eq!(r.shared_deltas_pct, 0.0);
            // NPCs walk 1.4 m/s, so most send ticks keep each scope by the entities near its
            // edge instead of scanning it; when entities come and go, scopes follow them
            // into each new world (every scope scanned on every such tick otherwise).
            assert!(
                r.scope_scan_pct > 0.0 && r.scope_scan_pct < 50.0,
                "{} % of scopes scanned with {respawns} respawns a second",
                r.scope_scan_pct
            );
        }
    }

    #[test]
    fn each_period_counts_its_tick_and_the_server_s_work_before_it() {
        let opts = SimulationOptions {
            clients: 8,
            ..SimulationOptions::default()
        };
        let r = run(&opts, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let n = r.tick_cost.count();
        assert!(n > 0);
        // One sample of each per tick measured.
        assert_eq!(r.between_ticks_cost.count(), n);
        assert_eq!(r.period_cost.count(), n);
        // Each period is its tick plus the work before it, so it is at least either of
        // them at every quantile.
        for q in [0.0, 0.5, 0.99, 1.0] {
            let period = r.period_cost.quantile_ms(q);
            assert!(period >= r.tick_cost.quantile_ms(q), "q {q}");
            assert!(period >= r.between_ticks_cost.quantile_ms(q), "q {q}");
        }
        // Summed: each period's sample is its two parts added. Each value is recorded in
        // whole microseconds, at least 1, to 3 significant digits: 2 µs a sample and 0.2 %
        // cover that.
        let (tick, between) = (r.tick_cost.mean_ms(), r.between_ticks_cost.mean_ms());
        let slack = 0.002 + 0.002 * (tick + between);
        let off = (r.period_cost.mean_ms() - (tick + between)).abs();
        assert!(
            off <= slack,
            "period {} ms, tick {tick} + between {between} ms",
            r.period_cost.mean_ms()
        );
        assert!(r.period_cost_pct(0.5) >= r.tick_cost_pct(0.5));
        // The log holds the same ticks one by one, in order, after the warm-up's: the
        // measured ticks are the last `n` of the server's.
        assert_eq!(r.tick_log.len() as u64, n);
        assert_eq!(r.ticks, n);
        let ticks: Vec<u32> = r.tick_log.iter().map(|t| t.tick).collect();
        let first = ticks[0];
        assert!(first > 1, "the warm-up's ticks are not logged");
        assert_eq!(ticks, (first..first + n as u32).collect::<Vec<_>>());
        let logged_max = r.tick_log.iter().map(|t| t.cost).max().unwrap();
        let counted_max = r.tick_cost.quantile_ms(1.0);
        // Recorded to 3 significant digits.
        let max_ms = logged_max.as_secs_f64() * 1e3;
        assert!(
            (max_ms - counted_max).abs() <= 0.002 + 0.002 * max_ms,
            "{max_ms} vs {counted_max}"
        );
        // The run's share is the logged ticks' CPU time over their wall time.
        let wall: Duration = r.tick_log.iter().map(|t| t.cost).sum();
        let cpu: Duration = r.tick_log.iter().map(|t| t.cpu).sum();
        let on_core = r.tick_cpu_pct().unwrap();
        let share = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
        assert!((on_core - share).abs() < 1e-6, "{on_core} vs {share} %");
        // The thread's CPU clock ran inside a span just wider than the wall clock's, and a
        // thread is given at most the time that passes: never more than the tick's wall
        // time but for the two clock reads. Every tick does some work, so some CPU time.
        for t in &r.tick_log {
            assert!(t.cpu > Duration::ZERO, "tick {}", t.tick);
            assert!(
                t.cpu <= t.cost + Duration::from_micros(100),
                "tick {}: {:?} on the core in {:?}",
                t.tick,
                t.cpu,
                t.cost
            );
        }
    }

    #[test]
    fn clients_that_see_the_same_entities_share_their_encodings() {
        let mut opts = massive(500, 0.0);
        // Every player sees the whole square kilometre: four viewers per entity.
        opts.game.aoi_radius_m = Some(2000.0);
        let r = run(&opts, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        assert_eq!((r.connected, r.disconnects), (4, 0));
        assert!(r.entities_per_client > 500.0, "{}", r.entities_per_client);
        // Four viewers an entity: the server encodes each changed entity's delta for the
        // clients' baseline age up front (one thread here), so every client finds the
        // deltas it sends encoded. Encoded by the first client that needs it instead, at
        // most three of four would be.
        assert!(
            r.shared_deltas_pct > 90.0,
            "{} % of deltas shared",
            r.shared_deltas_pct
        );
        // Scoped snapshots are each client's own; only their entities' encodings are shared.
        assert_eq!(r.shared_pct, 0.0);
    }

    #[test]
    fn when_the_server_ends_the_session_the_players_keep_what_they_measured() {
        let opts = SimulationOptions {
            clients: 2,
            conditioner: ConditionerConfig {
                enabled: true,
                // Lossy enough to show in the figures; the goodbye's three copies all get
                // lost only 0.1 % of the time (and this run is seeded).
                loss_pct: 10.0,
                latency: Duration::from_millis(20),
                ..ConditionerConfig::off()
            },
            ..SimulationOptions::default()
        };
        let mut s = Simulation::new(&opts).unwrap();
        s.run_for(Duration::from_secs(3));
        assert_eq!(s.connected(), 2);
        s.shut_down_server();
        s.run_for(Duration::from_secs(1));
        for p in s.players() {
            assert_eq!(
                p.closed(),
                Some(&CloseReason::Connection(DisconnectReason::Peer(
                    DisconnectReasonCode::ServerShutdown
                ))),
                "told, not timed out"
            );
            // What the client summary reports: the figures of the session, not zeros.
            let f = p
                .link_figures(28, 4.0)
                .expect("the link figures outlive the session");
            assert!(f.kbps_in > 50.0, "{f:?}");
            assert!(f.loss_pct > 3.0, "{f:?}");
        }
        for c in &s.sim.clients {
            assert!(
                c.client.connection().connection_stats().is_none(),
                "the connection itself is gone: its figures went with it"
            );
        }
        assert_eq!(s.connected(), 0);
    }

    #[test]
    fn secure_mode_connects_every_client_with_a_token_and_plays_the_same_game_sealed() {
        // The arena at 60 Hz, four players on a perfect link: plain, then secure.
        let plain = SimulationOptions {
            clients: 4,
            seed: 7,
            ..SimulationOptions::default()
        };
        let secure = SimulationOptions {
            secure: true,
            ..plain.clone()
        };
        let runs = [plain, secure].map(|opts| {
            let mut s = Simulation::new(&opts).expect("valid options");
            s.run_for(Duration::from_secs(1));
            s.reset_measurements();
            s.run_for(Duration::from_secs(2));
            s
        });
        let [plain, secure] = &runs;
        assert!(plain.sim.server.connection().secure_stats().is_none());
        let sealed = secure
            .sim
            .server
            .connection()
            .secure_stats()
            .expect("a secure server");
        // Each client came with a token, and the game went both ways through netcode.
        assert_eq!(sealed.connections_accepted, 4);
        assert!(sealed.packets_in > 4 * 60 && sealed.packets_out > 4 * 2 * 60);
        let (p, s) = (plain.report(), secure.report());
        for r in [&p, &s] {
            assert_eq!((r.connected, r.disconnects), (4, 0));
        }
        // On a perfect link every snapshot arrives, in either mode: 60 a second each.
        assert_eq!(p.snapshots_received, 4 * 2 * 60);
        assert_eq!(s.snapshots_received, p.snapshots_received);
    }
}
