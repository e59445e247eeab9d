//! `demo-client`: headless snapsync clients, and `compare`, the udp-vs-stream showdown.

/// The allocator of the demo's binaries and of the benches that time its server (why: the
/// workspace's Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod compare;
mod report;
mod session;
mod view;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use demo_server::cli::{ConditionerArgs, Transport, describe, init_logging, seconds};
use demo_server::scene::SceneKind;
use snapsync::conditioner::ConditionerConfig;

/// Headless game clients: each its own UDP socket (or TCP stream), a bot sending inputs,
/// snapshot decoding and interpolation, and the measurements that show what the transport
/// costs in freshness.
#[derive(Debug, Parser)]
#[command(name = "demo-client", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Host servers in-process and run udp, udp-reliable and tcp under the same conditions;
    /// print one table, write compare.csv, compare.json and update_gap.svg.
    Compare(CompareArgs),
    /// Watch it live: host servers in-process, play one client per transport under the same
    /// link, and serve a page that draws what each client shows beside the server's truth,
    /// with live figures and controls that change the link for every transport at once.
    #[command(long_about = VIEW_ABOUT)]
    View(ViewArgs),
}

const VIEW_ABOUT: &str = "\
Watch it live: the same game seen through each transport, side by side in a browser.

Hosts one server per transport in-process (as `compare` does), plays one client on each,
and serves a page on --http: one top-down canvas per transport plus the server's truth,
each drawing what that client shows at its render time (interpolated; its own avatar
predicted unless --predict off), at the browser's frame rate; live update gaps, staleness,
loss, kbit/s and underruns; a plot of update gaps; and sliders and presets that change the
link for every transport at once (the server console's commands). `udp` and
`udp-reliable` share the simulated link; `tcp` is kernel TCP on a clean loopback, the
control (for real loss on TCP, see scripts/netlab.sh).

The page is plain HTML and JavaScript served by this binary: no network access needed.
The game never waits for a browser: a slow or vanished tab only misses frames.";

#[derive(Debug, Args)]
struct ViewArgs {
    /// Serve the page on this address (port 0: any free port; the URL is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Seconds to run (0: until Ctrl-C).
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    duration: f64,
    /// Scene to replicate.
    #[arg(long, default_value = "arena")]
    scene: SceneKind,
    /// Ticks (and snapshots) per second.
    #[arg(long, value_name = "HZ", default_value_t = 60.0)]
    tick_rate: f64,
    /// Predict each client's own avatar (arena): drawn at once from its inputs (`on`), or
    /// only as snapshots bring it (`off`).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    predict: OnOff,
    /// Transports to show (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "udp,udp-reliable,tcp"
    )]
    transports: Vec<Transport>,
    /// Link simulation at start, once per direction (the page changes it). With no flag: 5%
    /// loss, 40 ms latency, as `compare`.
    /// Plain mode for every hosted server and client (default: secure, tokens minted
    /// in-process, as `compare` does).
    #[arg(long)]
    insecure: bool,
    #[command(flatten)]
    conditioner: ConditionerArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server address: HOST:PORT, with a host name or an IP address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7777")]
    server: String,
    /// Number of clients, each with its own socket and bot.
    #[arg(long, value_name = "N", default_value_t = 1)]
    clients: usize,
    /// Transport; must match the server's.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// Seconds to play.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    duration: f64,
    /// Client frames (and inputs) per second.
    #[arg(long, value_name = "HZ", default_value_t = 60.0)]
    frame_rate: f64,
    /// Print a stats line per client every SECS (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    stats_interval: f64,
    /// Interpolation delay: `auto` adapts to the send interval and jitter (rides out two lost
    /// snapshots), or a fixed number of milliseconds.
    #[arg(long, value_name = "auto|MS", default_value = "auto", value_parser = parse_interp)]
    interp: Interp,
    /// Write a JSON summary at exit to PATH (`-` for stdout).
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
    /// Predict the player's own entity at once (`on`), or show it only as the server's
    /// snapshots bring it (`off`), a round trip and the interpolation delay later.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    predict: OnOff,
    /// Secure mode (the default): fetch a connect token over HTTP, then play with every
    /// packet encrypted and authenticated (netcode 1.02). The server must be secure too.
    #[arg(long, conflicts_with = "insecure")]
    secure: bool,
    /// Plain mode, for a server started with `--insecure`.
    #[arg(long)]
    insecure: bool,
    /// Where to fetch connect tokens (`POST`). Default: port 8080 of the server's host.
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// Write every datagram a client sends and receives to a pcap file (with several
    /// clients, client i writes PATH with `-i` before the extension).
    #[arg(long, value_name = "PATH")]
    pcap: Option<std::path::PathBuf>,
    /// On the udp transports: when the server has not answered the handshake over UDP within
    /// SECS, connect afresh over a WebSocket (TCP) instead, for networks that block UDP
    /// (0: never). The JSON's `transport_in_use` says which one each client played over.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    fallback_after: f64,
    /// Where the server accepts WebSockets (default: the --server address, over TCP).
    #[arg(long, value_name = "HOST:PORT")]
    fallback_addr: Option<String>,
    #[command(flatten)]
    conditioner: ConditionerArgs,
}

/// A switch on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Resolve `HOST:PORT` (a name or an address) to the first address it names.
async fn resolve(flag: &str, server: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = server.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| format!("--{flag} {server}: {e} (expected HOST:PORT)"))?
        .collect();
    // IPv4 first: `localhost` often names ::1 first, while servers (ours by default) listen
    // on 127.0.0.1.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("--{flag} {server}: the name has no address"))
}

#[derive(Debug, Clone, Copy)]
struct Interp(Option<Duration>);

fn parse_interp(s: &str) -> Result<Interp, String> {
    if s == "auto" {
        return Ok(Interp(None));
    }
    let ms: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is neither `auto` nor a number of milliseconds"))?;
    if !(0.0..=2000.0).contains(&ms) {
        return Err(format!("{ms} ms is outside 0..=2000"));
    }
    Ok(Interp(Some(Duration::from_secs_f64(ms / 1000.0))))
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Ticks (and snapshots) per second.
    #[arg(long, value_name = "HZ", default_value_t = 60.0)]
    tick_rate: f64,
    /// Clients per transport.
    #[arg(long, value_name = "N", default_value_t = 4)]
    clients: usize,
    /// Seconds per transport.
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    duration: f64,
    /// Directory for compare.csv, compare.json and update_gap.svg.
    #[arg(long, value_name = "DIR", default_value = "compare-out")]
    out: std::path::PathBuf,
    /// Scene to replicate.
    #[arg(long, default_value = "arena")]
    scene: SceneKind,
    /// Transports to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "udp,udp-reliable,tcp"
    )]
    transports: Vec<Transport>,
    /// Plain mode for every transport (default: secure, tokens minted in-process).
    #[arg(long)]
    insecure: bool,
    /// Link simulation, once per direction. With no flag: 5% loss, 40 ms latency.
    #[command(flatten)]
    conditioner: ConditionerArgs,
}

fn rate(flag: &str, v: f64) -> Result<f64, String> {
    if !(1.0..=1000.0).contains(&v) {
        return Err(format!("--{flag} must be 1..=1000 Hz (got {v})"));
    }
    Ok(v)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo-client: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Compare(args)) => runtime.block_on(run_compare(args)),
        Some(Command::View(args)) => runtime.block_on(run_view(args)),
        None => runtime.block_on(run_clients(cli.run)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-client: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_json<T: serde::Serialize>(path: &str, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    if path == "-" {
        println!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {path}: {e}"))
    }
}

async fn run_clients(args: RunArgs) -> Result<(), String> {
    if args.clients == 0 || args.clients > 4096 {
        return Err(format!("--clients must be 1..=4096 (got {})", args.clients));
    }
    let conditioner = args.conditioner.to_config()?;
    let duration = seconds("duration", args.duration)?;
    let frame_rate = rate("frame-rate", args.frame_rate)?;
    let stats = seconds("stats-interval", args.stats_interval)?;
    let quiet = args.json.as_deref() == Some("-");
    let server = resolve("server", &args.server).await?;
    let fallback_after = seconds("fallback-after", args.fallback_after)?;
    let fallback = match &args.fallback_addr {
        Some(a) => Some(resolve("fallback-addr", a).await?),
        None => None,
    };
    if fallback_after.is_zero() && fallback.is_some() {
        return Err("--fallback-addr needs --fallback-after above 0".into());
    }
    let fallback = (!fallback_after.is_zero()).then_some(snapsync::net::Fallback {
        after: fallback_after,
        addr: fallback,
    });
    let token = if args.insecure {
        None
    } else {
        let url = match &args.token_url {
            Some(u) => u.clone(),
            None => format!("http://{}/connect", SocketAddr::new(server.ip(), 8080)),
        };
        let url = reqwest::Url::parse(&url).map_err(|e| format!("--token-url {url}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("--token-url {url}: not an http URL"));
        }
        Some(session::TokenSource::Url(url))
    };
    if !quiet {
        println!(
            "demo-client: {} client(s) to {} over {}, {} s, conditioner {}",
            args.clients,
            server,
            args.transport,
            duration.as_secs_f64(),
            describe(&conditioner)
        );
    }
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let opts = session::SessionOptions {
            server,
            transport: args.transport,
            duration,
            frame_rate,
            conditioner: conditioner.clone(),
            seed: args
                .conditioner
                .seed
                .wrapping_mul(1000)
                .wrapping_add(i as u64),
            stats_interval: (!quiet && !stats.is_zero()).then_some(stats),
            label: format!("client {i}"),
            interp: args.interp.0,
            predict: args.predict == OnOff::On,
            token: token.clone(),
            fallback,
            pcap: args.pcap.as_ref().map(|p| {
                if args.clients == 1 {
                    p.clone()
                } else {
                    let stem = p
                        .file_stem()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                    let ext = p
                        .extension()
                        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
                    p.with_file_name(format!("{stem}-{i}{ext}"))
                }
            }),
        };
        tasks.push(tokio::spawn(session::run(opts)));
    }
    let mut reports = Vec::new();
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
                reports.push(report::ClientReport::default());
            }
            Err(e) => return Err(format!("client task failed: {e}")),
        }
    }
    if reports.iter().all(|r| !r.connected) {
        return Err(first_error.unwrap_or_else(|| "no client connected".into()));
    }
    let summary = report::summary(args.transport.name(), duration.as_secs_f64(), &reports);
    if let Some(path) = &args.json {
        write_json(path, &summary)?;
    }
    if !quiet {
        let rows: Vec<(String, report::ClientReport)> = reports
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("client {i}"), r.clone()))
            .chain(std::iter::once((
                "all".to_string(),
                report::aggregate(&reports),
            )))
            .collect();
        print!("{}", report::table(&rows));
    }
    let closed = reports.iter().filter(|r| r.server_closed).count();
    if closed > 0 && !quiet {
        println!("the server closed the session of {closed} client(s) before the end of the run");
    }
    if let Some(e) = first_error {
        return Err(format!("some clients failed: {e}"));
    }
    Ok(())
}

/// The link `compare` and `view` start with: the flags', or 5 % loss and 40 ms latency.
fn demo_conditioner(args: &ConditionerArgs) -> Result<ConditionerConfig, String> {
    let mut conditioner = if args.any() {
        args.to_config()?
    } else {
        ConditionerConfig {
            loss_pct: 5.0,
            latency: Duration::from_millis(40),
            enabled: true,
            ..ConditionerConfig::off()
        }
    };
    conditioner.validate().map_err(|e| e.to_string())?;
    conditioner.enabled = true;
    Ok(conditioner)
}

async fn run_view(args: ViewArgs) -> Result<(), String> {
    let conditioner = demo_conditioner(&args.conditioner)?;
    let duration = seconds("duration", args.duration)?;
    if args.transports.is_empty() {
        return Err("--transports needs at least one transport".into());
    }
    for (i, t) in args.transports.iter().enumerate() {
        if args.transports[..i].contains(t) {
            return Err(format!("--transports names {t} twice"));
        }
    }
    // The page's frames carry positions in centimetres in an i16 (±327 m) and draw the
    // whole truth; the massive scene is a kilometre wide with 10,000 entities.
    if args.scene == SceneKind::Massive {
        return Err(
            "the live view draws scenes within ±327 m (arena, cubes); massive is 1 km wide: \
             measure it with `cargo bench -p benches --bench tickrate -- --scene massive`"
                .into(),
        );
    }
    let opts = view::ViewOptions {
        http: args.http,
        tick_rate: rate("tick-rate", args.tick_rate)?,
        scene: args.scene,
        conditioner,
        seed: args.conditioner.seed,
        predict: args.predict == OnOff::On,
        transports: args.transports,
        secure: !args.insecure,
    };
    view::run(opts, duration).await
}

async fn run_compare(args: CompareArgs) -> Result<(), String> {
    let conditioner = demo_conditioner(&args.conditioner)?;
    if args.clients == 0 || args.clients > 256 {
        return Err(format!("--clients must be 1..=256 (got {})", args.clients));
    }
    let opts = compare::CompareOptions {
        conditioner: conditioner.clone(),
        tick_rate: rate("tick-rate", args.tick_rate)?,
        clients: args.clients,
        duration: seconds("duration", args.duration)?,
        out: args.out.clone(),
        scene: args.scene,
        seed: args.conditioner.seed,
        transports: args.transports.clone(),
        secure: !args.insecure,
    };
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("cannot create {}: {e}", opts.out.display()))?;
    let rows = compare::run(&opts).await?;
    let title = format!(
        "update gaps at {} Hz, {} (each direction), {} clients",
        opts.tick_rate,
        describe(&conditioner),
        opts.clients
    );
    println!("{title}");
    print!("{}", compare::render_table(&rows));
    let csv_path = opts.out.join("compare.csv");
    std::fs::write(&csv_path, compare::csv(&rows))
        .map_err(|e| format!("cannot write {}: {e}", csv_path.display()))?;
    let summaries: Vec<_> = rows
        .iter()
        .map(|r| report::summary(r.transport.name(), opts.duration.as_secs_f64(), &r.clients))
        .collect();
    write_json(&opts.out.join("compare.json").to_string_lossy(), &summaries)?;
    let svg = opts.out.join("update_gap.svg");
    compare::plot(&rows, &svg, &title)?;
    if let [udp, rel, ..] = rows.as_slice() {
        let (a, b) = (
            udp.report.update_gap.quantile_ms(0.99),
            rel.report.update_gap.quantile_ms(0.99),
        );
        if a > 0.0 && udp.transport == Transport::Udp && rel.transport == Transport::UdpReliable {
            println!(
                "p99 update gap: {} {:.1} ms vs {} {:.1} ms ({:.1}x)",
                udp.transport,
                a,
                rel.transport,
                b,
                b / a
            );
        }
    }
    println!(
        "wrote {}, {} and {}",
        csv_path.display(),
        opts.out.join("compare.json").display(),
        svg.display()
    );
    Ok(())
}
