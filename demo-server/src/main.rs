//! `demo-server`: a headless authoritative snapsync server.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use demo_server::cli::{ConditionerArgs, ConsoleCommand, Transport, init_logging, seconds};
use demo_server::scene::SceneKind;
use demo_server::server::{self, Control, DEFAULT_BUDGET_BYTES, ServerOptions};
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
    /// Scene to simulate: arena (bodies in a box, one avatar per client) or cubes (901 cubes).
    #[arg(long, default_value = "arena")]
    scene: SceneKind,
    /// Number of entities (arena bodies; cubes in the cubes scene).
    #[arg(long, value_name = "N")]
    entities: Option<usize>,
    /// Most clients at once.
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
    #[command(flatten)]
    conditioner: ConditionerArgs,
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
        max_clients: args.max_clients,
        transport: args.transport,
        duration: args.duration.map(|d| seconds("duration", d)).transpose()?,
        stats_interval: (!stats.is_zero()).then_some(stats),
        conditioner,
        seed: args.conditioner.seed,
        budget_bytes: args.budget_bytes,
        quiet: args.json.as_deref() == Some("-"),
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = tx.send(Control::Shutdown).await;
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
