//! `demo-server`: a headless authoritative snapsync server.

/// The allocator of the demo's binaries and of the benches that time its server (why: the
/// workspace's Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use demo_server::cli::{ConditionerArgs, ConsoleCommand, Transport, init_logging, seconds};
use demo_server::scene::SceneKind;
use demo_server::server::{self, Control, DEFAULT_BUDGET_BYTES, ServerOptions, ServerSecurity};
use demo_server::tokens::load_or_create_key;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// Headless authoritative game server: simulates a scene at a fixed tick and streams
/// snapshots to its clients. Type `help` on stdin while it runs.
#[derive(Debug, Parser)]
#[command(name = "demo-server", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7777")]
    bind: SocketAddr,
    /// Simulation ticks per second.
    #[arg(long, value_name = "HZ", default_value_t = 60.0)]
    tick_rate: f64,
    /// Snapshots per second (default: the tick rate).
    #[arg(long, value_name = "HZ")]
    send_rate: Option<f64>,
    /// Scene to simulate: arena (bodies in a box, one avatar per client), cubes (901 cubes)
    /// or massive (1 km², 10,000 NPCs, one avatar per client, area of interest).
    #[arg(long, default_value = "arena")]
    scene: SceneKind,
    /// Number of entities (arena bodies; cubes in the cubes scene; NPCs in massive).
    #[arg(long, value_name = "N")]
    entities: Option<usize>,
    /// Send each client only the entities within M metres of its avatar (default: 100 in
    /// massive; everything in the other scenes).
    #[arg(long, value_name = "M")]
    aoi_radius: Option<f32>,
    /// massive only: NPCs a second that leave the world, each replaced by a new one
    /// elsewhere (entities coming and going every tick, as projectiles or respawns make).
    #[arg(long, value_name = "PER_S", default_value_t = 0.0)]
    respawns: f64,
    /// Threads building the clients' snapshots each tick (0: one per core).
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Most clients at once (at most 1,024 in secure mode).
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_clients: usize,
    /// How snapshots travel: udp (unreliable, newest wins), udp-reliable (reliable-ordered
    /// channel over the same link) or tcp (kernel TCP stream).
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// Run this many seconds, then disconnect everyone and exit 0.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Print a stats line every SECS (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    stats_interval: f64,
    /// Write a JSON summary at exit to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
    /// Snapshot bytes per client per send before entities wait their turn.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUDGET_BYTES)]
    budget_bytes: usize,
    /// Secure mode (the default): clients connect with a netcode 1.02 token from the
    /// token endpoint, and every packet is encrypted and authenticated.
    #[arg(long, conflicts_with = "insecure")]
    secure: bool,
    /// Plain mode: the engine's own handshake, packets in clear text (labs and tests).
    #[arg(long)]
    insecure: bool,
    /// The server's private key (32 bytes), shared with the token endpoint; created with a
    /// random key when the file does not exist.
    #[arg(long, value_name = "PATH", default_value = "snapsync-server.key")]
    key_file: std::path::PathBuf,
    /// Where to serve connect tokens over HTTP (`POST /connect`) in secure mode.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Serve Prometheus metrics (`/metrics`), health (`/health`) and readiness (`/ready`)
    /// over HTTP here (may be the same address as `--http`).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// On SIGTERM or the console's `drain`: how long current players may finish before they
    /// are disconnected (new ones are refused at once).
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    drain_timeout: f64,
    /// Report to the Agones SDK sidecar: Ready, Health from the tick loop, players,
    /// Shutdown (a build with `--features agones`; see docs/DEPLOY.md).
    #[arg(long)]
    agones: bool,
    /// The address clients reach this server at, which connect tokens name (default: the
    /// bound address, or 127.0.0.1 when bound to 0.0.0.0). Behind NAT or in a fleet, the
    /// external address.
    #[arg(long, value_name = "ADDR")]
    public_addr: Option<SocketAddr>,
    /// Write every datagram sent and received to a pcap file (open it in Wireshark with
    /// scripts/wireshark/snapsync.lua).
    #[arg(long, value_name = "PATH")]
    pcap: Option<std::path::PathBuf>,
    /// On the udp transports, also accept WebSockets on TCP at the --bind port number:
    /// clients whose network blocks UDP fall back to it (demo-client --fallback-after).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    websocket: OnOff,
    #[command(flatten)]
    conditioner: ConditionerArgs,
}

/// A switch on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

fn options(args: &Args) -> Result<ServerOptions, String> {
    let conditioner = args.conditioner.to_config()?;
    let stats = seconds("stats-interval", args.stats_interval)?;
    Ok(ServerOptions {
        bind: args.bind,
        tick_rate: args.tick_rate,
        send_rate: args.send_rate.unwrap_or(args.tick_rate),
        scene: args.scene,
        entities: args.entities,
        aoi_radius_m: args.aoi_radius,
        snapshot_threads: args.threads,
        respawns_per_s: args.respawns,
        max_clients: args.max_clients,
        transport: args.transport,
        duration: args.duration.map(|d| seconds("duration", d)).transpose()?,
        stats_interval: (!stats.is_zero()).then_some(stats),
        conditioner,
        seed: args.conditioner.seed,
        budget_bytes: args.budget_bytes,
        quiet: args.json.as_deref() == Some("-"),
        metrics: args.metrics,
        agones: args.agones,
        public_addr: args.public_addr,
        pcap: args.pcap.clone(),
        websocket: args.websocket == OnOff::On,
        drain_timeout: seconds("drain-timeout", args.drain_timeout)?,
        security: if args.insecure {
            ServerSecurity::Insecure
        } else {
            ServerSecurity::Secure {
                key: load_or_create_key(&args.key_file).map_err(|e| e.to_string())?,
                http: Some(args.http),
            }
        },
        truth: None,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo-server: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Two workers: the HTTP endpoints (tokens, /health) must answer while the tick loop is
    // busy or stuck; that is what a health probe is for.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo-server: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async_main(opts, args.json));
    // The console's stdin read sits on a blocking thread until a line or end of input
    // arrives; do not wait for it.
    runtime.shutdown_background();
    code
}

async fn async_main(opts: ServerOptions, json: Option<String>) -> ExitCode {
    let (tx, rx) = mpsc::channel(64);
    let console = tx.clone();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        // End of input (no terminal, or a closed pipe) just ends the console.
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim().is_empty() {
                continue;
            }
            match line.parse::<ConsoleCommand>() {
                Ok(cmd) => {
                    if console.send(Control::Console(cmd)).await.is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("demo-server: {e}"),
            }
        }
    });
    let drain = tx.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(Control::Shutdown).await;
        }
    });
    // SIGTERM (an orchestrator replacing the server) drains; Ctrl-C still stops at once.
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate())
            && term.recv().await.is_some()
        {
            let _ = drain.send(Control::Drain).await;
        }
    });
    let summary = match server::run(opts, rx, None).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo-server: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = json {
        let text = match serde_json::to_string_pretty(&summary) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("demo-server: error: cannot encode the summary: {e}");
                return ExitCode::FAILURE;
            }
        };
        if path == "-" {
            println!("{text}");
        } else if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("demo-server: error: cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
    } else {
        println!(
            "demo-server: {} ticks at {:.1} Hz (target {}), tick cost p99 {:.0} us ({:.1}% of the period), peak {} clients, {:.0} kbps out, {} invalid packets",
            summary.ticks,
            summary.achieved_tick_rate,
            summary.tick_rate,
            summary.tick_cost_us.p99,
            summary.tick_cost_p99_pct_of_period,
            summary.clients_peak,
            summary.kbps_out,
            summary.invalid_packets
        );
    }
    ExitCode::SUCCESS
}
