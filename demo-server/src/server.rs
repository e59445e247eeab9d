//! The demo server: a fixed-tick authoritative simulation replicated to every client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use snapsync::conditioner::{ConditionerConfig, ConditionerStats};
use snapsync::net::ReplicationServer;
use snapsync::packet::IP_UDP_HEADER_BYTES;
use snapsync::replication::SnapshotDelivery;
use tokio::sync::{mpsc, oneshot, watch};

use crate::cli::{CONSOLE_HELP, ConsoleCommand, ConsoleConditioner, Transport, describe};
use crate::game::{GameOptions, GameServer, bits_per_changed_entity};
use crate::metrics::DurationHistogram;
use crate::ops::OpsState;
use crate::protocol::unix_micros_now;
use crate::scene::{Body, SceneKind};
use crate::tokens::{self, TokenMint};

/// Bytes of IPv4 + TCP header and frame length counted per packet on the TCP transport (with
/// TCP_NODELAY each frame leaves as its own segment; coalesced segments make this a slight
/// overestimate).
pub const IP_TCP_FRAME_OVERHEAD_BYTES: u64 = 40 + 4;

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
    /// Area-of-interest radius override, metres.
    pub aoi_radius_m: Option<f32>,
    /// Threads building the clients' snapshots.
    pub snapshot_threads: usize,
    /// `massive` only: NPCs replaced by new ones each second.
    pub respawns_per_s: f64,
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
    /// Plain, or secure with a private key and (optionally) a token endpoint.
    pub security: ServerSecurity,
    /// Serve `/metrics`, `/health` and `/ready` here (the token endpoint's server when the
    /// address is the same).
    pub metrics: Option<SocketAddr>,
    /// How long draining players may play on before they are disconnected.
    pub drain_timeout: Duration,
    /// Report to the Agones SDK sidecar (a build with the `agones` feature).
    pub agones: bool,
    /// The address clients reach the server at, which tokens name (default: the bound
    /// address, or loopback when bound to every interface). Behind NAT or in a fleet, the
    /// external address.
    pub public_addr: Option<SocketAddr>,
    /// Write every datagram the server sends and receives to this pcap file.
    pub pcap: Option<std::path::PathBuf>,
    /// On the UDP transports, also accept WebSockets on TCP at the UDP port number: the
    /// fallback of clients whose network blocks UDP (default on; `--websocket off`).
    pub websocket: bool,
    /// Publish the world after every tick here (for an in-process observer such as
    /// `demo-client view`); `None`: publish nothing.
    pub truth: Option<TruthSender>,
}

/// How the demo server's connections are made.
#[derive(Debug, Clone, Default)]
pub enum ServerSecurity {
    /// The engine's plain handshake (`--insecure`).
    #[default]
    Insecure,
    /// netcode 1.02: clients need a connect token sealed with `key`.
    Secure {
        /// The private key shared with whoever mints tokens.
        key: snapsync::netcode::Key,
        /// Serve `POST /connect` (a token) over HTTP here, if given.
        http: Option<SocketAddr>,
    },
}

/// Where the server publishes its world after each tick: a latest-value slot, so a slow
/// observer only ever misses ticks, and never holds up the tick loop.
pub type TruthSender = Arc<watch::Sender<TruthFrame>>;

/// The server's world as of one tick: the truth a client's view is compared with.
#[derive(Debug, Clone, Default)]
pub struct TruthFrame {
    /// The tick just simulated.
    pub tick: u32,
    /// When it was simulated.
    pub at: Option<Instant>,
    /// What simulating, encoding and sending that tick cost.
    pub tick_cost: Duration,
    /// Every body, sorted by id.
    pub bodies: Vec<Body>,
    /// What the simulated link did so far to what the server received (UDP transports).
    pub link_in: ConditionerStats,
    /// What the simulated link did so far to what the server sent (UDP transports).
    pub link_out: ConditionerStats,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:7777".parse().expect("literal address"),
            tick_rate: 60.0,
            send_rate: 60.0,
            scene: SceneKind::Arena,
            entities: None,
            aoi_radius_m: None,
            snapshot_threads: 1,
            respawns_per_s: 0.0,
            max_clients: 64,
            transport: Transport::Udp,
            duration: None,
            stats_interval: Some(Duration::from_secs(1)),
            conditioner: ConditionerConfig::off(),
            seed: 1,
            budget_bytes: DEFAULT_BUDGET_BYTES,
            quiet: false,
            security: ServerSecurity::Insecure,
            metrics: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            agones: false,
            public_addr: None,
            truth: None,
            pcap: None,
            websocket: true,
        }
    }
}

/// How long players may finish their match after a drain starts, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Drain: accept no one new, let the players finish (up to the drain timeout), then
    /// shut down cleanly (SIGTERM).
    Drain,
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
    /// Entities in a client's snapshot on average: its scope under an area of interest,
    /// the whole scene otherwise.
    pub entities_per_client: f64,
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
    /// Clients that came in over a WebSocket (their network blocked UDP).
    pub websockets_opened: u64,
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
    /// Could not listen for WebSockets at the UDP port number.
    #[error(
        "cannot listen for websockets on tcp {addr}: {source} (--websocket off serves udp only)"
    )]
    WebSocketBind {
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
    let game_opts = GameOptions {
        scene: opts.scene,
        entities: opts.entities,
        tick_rate: opts.tick_rate,
        send_rate: opts.send_rate,
        budget_bytes: opts.budget_bytes,
        seed: opts.seed,
        aoi_radius_m: opts.aoi_radius_m,
        snapshot_threads: opts.snapshot_threads,
        respawns_per_s: opts.respawns_per_s,
    };
    let mut game = GameServer::new(&game_opts).map_err(ServerError::Options)?;
    let delivery = match opts.transport {
        Transport::UdpReliable => SnapshotDelivery::ReliableOrdered,
        // A TCP stream is reliable and ordered by itself: the engine's packets ride it as
        // they would ride UDP.
        Transport::Udp | Transport::Tcp => SnapshotDelivery::Datagrams,
    };
    // Tick 0's time, on both clocks, taken together: the welcome tells clients the wall
    // time of tick 0 (they measure staleness from it) and the tick loop runs tick n at
    // tick0 + n periods. Taken apart, the setup below (sockets, HTTP servers) came between
    // the two and put every tick that much later than clients were told, for the whole run.
    let tick0 = tokio::time::Instant::now();
    let tick0_unix_micros = unix_micros_now();
    // The achieved tick rate counts every tick from tick 0 on.
    let start = Instant::now();
    let mut config = game_opts.replication_config(tick0_unix_micros, opts.max_clients, delivery);
    let websocket = opts.websocket && opts.transport != Transport::Tcp;
    let (socket, websocket) = bind_sockets(opts.bind, websocket).await?;
    let mut local = socket.local_addr()?;
    // The address clients reach the server at, which a token must name: the bound one, or
    // loopback when bound to every interface.
    let public = match opts.public_addr {
        Some(p) => p,
        None if local.ip().is_unspecified() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), local.port())
        }
        None => local,
    };
    #[cfg(not(feature = "agones"))]
    if opts.agones {
        return Err(ServerError::Options(
            "--agones needs a build with the agones feature (cargo build -p demo-server --features agones)".into(),
        ));
    }
    let period = Duration::from_secs_f64(1.0 / opts.tick_rate);
    let ops = match opts.metrics {
        Some(_) => Some(OpsState::new(
            crate::ops::prometheus().map_err(ServerError::Options)?,
            period,
        )),
        None => None,
    };
    // HTTP routes by address: the token endpoint and the operations endpoint share one
    // server when they are given the same address.
    let mut routes: Vec<(SocketAddr, axum::Router)> = Vec::new();
    let mut add_routes = |addr: SocketAddr, router: axum::Router| match routes
        .iter_mut()
        .find(|(a, _)| *a == addr)
    {
        Some((_, r)) => *r = std::mem::take(r).merge(router),
        None => routes.push((addr, router)),
    };
    if let ServerSecurity::Secure { key, http } = &opts.security {
        config.server.security = tokens::secure_mode(*key, public);
        if let Some(http) = http {
            let mint = std::sync::Arc::new(TokenMint::new(*key, public));
            add_routes(*http, tokens::router(mint));
        }
    }
    if let (Some(addr), Some(state)) = (opts.metrics, &ops) {
        add_routes(addr, crate::ops::router(state.clone()));
    }
    let mut http_servers = Vec::new();
    for (addr, router) in routes {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let at = listener.local_addr()?;
        let task = tokio::spawn(async move { axum::serve(listener, router).await });
        http_servers.push((addr, at, task));
    }
    let http_at = |wanted: Option<SocketAddr>| {
        wanted.and_then(|w| {
            http_servers
                .iter()
                .find(|(a, _, _)| *a == w)
                .map(|(_, at, _)| *at)
        })
    };
    let token_at = match &opts.security {
        ServerSecurity::Secure { http, .. } => http_at(*http),
        ServerSecurity::Insecure => None,
    };
    let metrics_at = http_at(opts.metrics);
    let endpoint =
        snapsync::replication::Server::new(config, tokio::time::Instant::now().into_std())
            .map_err(|e| ServerError::Options(e.to_string()))?;
    let mut net = ReplicationServer::new(socket, endpoint, rand::random());
    if let Some(path) = &opts.pcap {
        net.capture_to(path)
            .map_err(|e| ServerError::Options(format!("--pcap {}: {e}", path.display())))?;
    }
    if opts.transport == Transport::Tcp {
        // The same port number for TCP: clients of the `tcp` transport connect there.
        local = net
            .listen_stream(local)
            .await
            .map_err(|source| ServerError::Bind {
                addr: local,
                source,
            })?;
    } else {
        net.set_conditioner(opts.conditioner.clone(), opts.conditioner.clone())
            .map_err(|e| ServerError::Options(e.to_string()))?;
    }
    let websocket_at = match websocket {
        Some(listener) => Some(net.listen_websocket_on(listener)?),
        None => None,
    };
    if let Some(ready) = ready {
        let _ = ready.send(local);
    }
    let mut conditioner = ConsoleConditioner::new(opts.conditioner.clone());
    let say = |s: String| {
        if !opts.quiet {
            println!("{s}");
        }
    };
    say(format!(
        "demo-server: {} listening on {local}, {}, scene {}, {} Hz tick, {} Hz send, conditioner {}",
        opts.transport,
        match &opts.security {
            ServerSecurity::Insecure => "insecure (plain handshake)",
            ServerSecurity::Secure { .. } => "secure (netcode 1.02 tokens)",
        },
        opts.scene,
        opts.tick_rate,
        opts.send_rate,
        describe(conditioner.active())
    ));
    if let Some(at) = websocket_at {
        say(format!(
            "demo-server: websocket fallback on tcp {at} (for clients whose network blocks udp)"
        ));
    }
    if let Some(at) = token_at {
        say(format!(
            "demo-server: connect tokens at http://{at}/connect"
        ));
    }
    if let Some(at) = metrics_at {
        say(format!(
            "demo-server: metrics at http://{at}/metrics, health at /health, readiness at /ready"
        ));
    }

    #[cfg(feature = "agones")]
    let mut fleet = if opts.agones {
        let mut f = crate::fleet::Fleet::connect()
            .await
            .map_err(ServerError::Options)?;
        f.ready().await.map_err(ServerError::Options)?;
        say("demo-server: Agones told Ready".into());
        Some(f)
    } else {
        None
    };
    let start_tokio = tokio::time::Instant::now();
    let deadline = opts.duration.map(|d| start_tokio + d);
    let mut tick_cost = DurationHistogram::new();
    let mut clients_peak = 0u64;
    let mut next_stats = opts.stats_interval.map(|i| start_tokio + i);
    let mut metrics = snapsync::metrics::ServerMetrics::new();
    let mut next_metrics = start_tokio;
    let mut draining_since: Option<tokio::time::Instant> = None;

    'ticks: loop {
        // Tick n runs at tick0 + n periods: the schedule never drifts; a late tick runs
        // at once and the next keeps its slot (so the ticks the setup delayed run at once).
        let ticks = net.endpoint().current_tick().0;
        let next_tick = tick0 + period.mul_f64(f64::from(ticks) + 1.0);
        net.drive_until(next_tick).await?;

        while let Ok(c) = control.try_recv() {
            match c {
                Control::Shutdown | Control::Console(ConsoleCommand::Quit) => break 'ticks,
                Control::Drain | Control::Console(ConsoleCommand::Drain) => {
                    if draining_since.is_none() {
                        draining_since = Some(tokio::time::Instant::now());
                        net.endpoint_mut().set_accepting(false);
                        if let Some(ops) = &ops {
                            ops.set_accepting(false);
                        }
                        say(format!(
                            "draining: no new players; the {} playing have up to {} s",
                            game.player_count(),
                            opts.drain_timeout.as_secs_f64()
                        ));
                    }
                }
                Control::Console(ConsoleCommand::Help) => say(CONSOLE_HELP.to_string()),
                Control::Console(ConsoleCommand::Stall(ms)) => {
                    say(format!("stalling the tick loop for {ms} ms"));
                    // Deliberately blocking: this is what a stuck loop looks like.
                    std::thread::sleep(Duration::from_millis(ms));
                }
                Control::Console(ConsoleCommand::Stats) => say(stats_line(
                    &net,
                    opts.transport,
                    &tick_cost,
                    conditioner.active(),
                )),
                Control::Console(cmd) => match cmd.apply(&mut conditioner) {
                    Some(Ok(())) => {
                        let c = conditioner.active().clone();
                        if opts.transport == Transport::Tcp {
                            say("the tcp transport is the kernel's link: no conditioner".into());
                        } else if let Err(e) = net.set_conditioner(c.clone(), c.clone()) {
                            say(format!("error: {e}"));
                        } else {
                            say(format!("conditioner: {}", describe(&c)));
                        }
                    }
                    Some(Err(e)) => say(format!("error: {e}")),
                    None => {}
                },
            }
        }

        let work_start = Instant::now();
        while let Some(event) = net.poll_event() {
            #[cfg(feature = "agones")]
            if let Some(f) = &fleet {
                match &event {
                    snapsync::replication::ServerEvent::ClientJoined { client } => {
                        f.player(client.0.to_string(), true)
                    }
                    snapsync::replication::ServerEvent::ClientLeft { client, .. } => {
                        f.player(client.0.to_string(), false)
                    }
                    _ => {}
                }
            }
            if let Some(line) = game.on_event(net.endpoint_mut(), event) {
                say(line);
            }
        }
        clients_peak = clients_peak.max(game.player_count() as u64);
        game.tick(work_start, net.endpoint_mut());
        net.flush();
        let cost = work_start.elapsed();
        tick_cost.record(cost);
        #[cfg(feature = "agones")]
        if let Some(f) = fleet.as_mut() {
            f.tick(Instant::now());
        }
        if let Some(ops) = &ops {
            ops.ticked();
            metrics::histogram!("snapsync_tick_seconds").record(cost.as_secs_f64());
            let t = tokio::time::Instant::now();
            if t >= next_metrics {
                metrics.record(&net);
                next_metrics = t + Duration::from_secs(1);
            }
        }
        if let Some(truth) = &opts.truth {
            // In place: the body list's allocation is reused from tick to tick.
            truth.send_modify(|f| {
                f.tick = net.endpoint().current_tick().0;
                f.at = Some(work_start);
                f.tick_cost = cost;
                f.bodies.clear();
                f.bodies.extend_from_slice(game.bodies());
                let (i, o) = net.conditioners();
                f.link_in = i.stats();
                f.link_out = o.stats();
            });
        }

        let t = tokio::time::Instant::now();
        if let Some(ns) = next_stats
            && t >= ns
        {
            say(stats_line(
                &net,
                opts.transport,
                &tick_cost,
                conditioner.active(),
            ));
            next_stats = opts.stats_interval.map(|i| ns + i);
        }
        if deadline.is_some_and(|d| t >= d) {
            break;
        }
        if let Some(since) = draining_since
            && (game.player_count() == 0 || t >= since + opts.drain_timeout)
        {
            say(format!(
                "drained: {} players left at the end",
                game.player_count()
            ));
            break;
        }
    }

    net.shutdown().await?;
    for (_, _, task) in http_servers {
        task.abort();
    }
    #[cfg(feature = "agones")]
    if let Some(f) = fleet.as_mut() {
        f.shutdown().await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ticks = net.endpoint().current_tick().0;
    let p = tick_cost.percentiles();
    let s = net.endpoint().connection().stats();
    let header = header_bytes(opts.transport);
    let (inb, outb) = net.conditioners();
    let (i, o) = (inb.stats(), outb.stats());
    let replication = net.endpoint().stats();
    let snaps = net.endpoint().snapshot_totals();
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
        kbps_out: (s.bytes_out + s.packets_out * header) as f64 * 8.0 / 1000.0 / elapsed.max(1e-9),
        kbps_in: (s.bytes_in + s.packets_in * header) as f64 * 8.0 / 1000.0 / elapsed.max(1e-9),
        packets_in: s.packets_in,
        packets_out: s.packets_out,
        invalid_packets: s.invalid_packets
            + replication.invalid_input_frames
            + replication.invalid_control
            + game.invalid_inputs(),
        conditioner: ConditionerSummary {
            dropped: i.dropped + o.dropped,
            duplicated: i.duplicated + o.duplicated,
            reordered: i.reordered + o.reordered,
        },
        entities: replication.entities as u64,
        changed_pct: replication.changed_pct(),
        entities_per_client: if replication.scoped_snapshots > 0 {
            replication.mean_scope()
        } else {
            replication.entities as f64
        },
        bits_per_changed_entity: bits_per_changed_entity(&snaps),
        snapshot_bytes: snaps.bytes,
        snapshots: snaps.snapshots,
        full_snapshots: snaps.full_snapshots,
        websockets_opened: net.stream_stats().websockets_opened,
        duration_s: elapsed,
    })
}

/// Times a kernel-picked UDP port is tried for TCP before giving up.
const PORT_PAIR_ATTEMPTS: usize = 32;

/// Bind the UDP socket at `bind` and, with `websocket`, a TCP listener at the same address.
/// With port 0 the kernel picks the UDP port, whose number may be taken for TCP: then both
/// are bound afresh, so an in-process server (`compare`, the tests) never fails on a
/// collision. A port given explicitly must be free for both.
async fn bind_sockets(
    bind: SocketAddr,
    websocket: bool,
) -> Result<(tokio::net::UdpSocket, Option<tokio::net::TcpListener>), ServerError> {
    let mut last = None;
    for _ in 0..PORT_PAIR_ATTEMPTS {
        let socket = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|source| ServerError::Bind { addr: bind, source })?;
        if !websocket {
            return Ok((socket, None));
        }
        let local = socket.local_addr()?;
        match tokio::net::TcpListener::bind(local).await {
            Ok(listener) => return Ok((socket, Some(listener))),
            Err(source) if bind.port() == 0 => last = Some((local, source)),
            Err(source) => {
                return Err(ServerError::WebSocketBind {
                    addr: local,
                    source,
                });
            }
        }
    }
    let (addr, source) = last.expect("the loop ran at least once and only continues on an error");
    Err(ServerError::WebSocketBind { addr, source })
}

/// Header bytes counted per packet on the wire: IPv4 + UDP, or IPv4 + TCP and the frame
/// length on the `tcp` transport.
pub fn header_bytes(transport: Transport) -> u64 {
    match transport {
        Transport::Tcp => IP_TCP_FRAME_OVERHEAD_BYTES,
        Transport::Udp | Transport::UdpReliable => IP_UDP_HEADER_BYTES,
    }
}

/// One stats line.
fn stats_line(
    net: &ReplicationServer,
    transport: Transport,
    tick_cost: &DurationHistogram,
    c: &ConditionerConfig,
) -> String {
    let server = net.endpoint();
    let now = net.now();
    let p = tick_cost.percentiles();
    let (mut kin, mut kout, mut loss, mut n) = (0.0, 0.0, 0.0, 0usize);
    for id in server.clients() {
        if let Some(s) = server.connection().connection_stats(id) {
            kin += s.link.kbps_in(now);
            kout += s.link.kbps_out(now);
            loss += s.link.loss_pct();
            n += 1;
        }
    }
    let invalid = server.connection().stats().invalid_packets + server.stats().invalid_input_frames;
    let (i, o) = net.conditioners();
    let (i, o) = (i.stats(), o.stats());
    format!(
        "clients {n} | tick p50 {:.0}us p99 {:.0}us | kbps out {kout:.0} in {kin:.0} | loss seen {:.1}% | invalid {invalid} | link dropped {} dup {} reord {} | conditioner {}",
        p.p50 * 1000.0,
        p.p99 * 1000.0,
        if n == 0 { 0.0 } else { loss / n as f64 },
        i.dropped + o.dropped,
        i.duplicated + o.duplicated,
        i.reordered + o.reordered,
        if transport == Transport::Tcp {
            "none (kernel TCP)".to_string()
        } else {
            describe(c)
        },
    )
}
