//! `netlab-link`: a userspace link between two TUN devices, for the network lab.
//!
//! Each device sits in its own network namespace (the lab's client side and server side).
//! Every IP packet read from one is passed through the engine's seeded conditioner, one per
//! direction (latency, jitter, loss, bursts, bandwidth cap), and written unchanged to the
//! other. Both kernels' TCP and UDP stacks are untouched: kernel TCP sees a real round trip
//! and real loss, which loopback with an nftables drop rule cannot give it.
//!
//! The devices are opened by name in this process's namespace (created if missing, and then
//! removed again when it exits); `scripts/netlab.sh` moves them into their namespaces after
//! this prints `ready`. Runs until SIGTERM or SIGINT, then prints each direction's counters.

mod link;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use demo_server::cli::{ConditionerArgs, describe};
use link::{Direction, DirectionCounters, MAX_PACKET_BYTES};
use tokio::signal::unix::{SignalKind, signal};
use tokio_tun::Tun;

/// Forward IP packets between two TUN devices through the engine's link conditioner.
///
/// The conditioner flags apply to each direction separately: `--loss 5` loses 5 % of the
/// packets from client to server and, independently, 5 % of those from server to client;
/// `--latency 40` gives a round trip of 80 ms.
#[derive(Debug, Parser)]
#[command(name = "netlab-link", version)]
struct Cli {
    /// TUN device on the client's side (opened, or created if missing).
    #[arg(long, value_name = "NAME", value_parser = device_name)]
    client_tun: String,
    /// TUN device on the server's side (opened, or created if missing).
    #[arg(long, value_name = "NAME", value_parser = device_name)]
    server_tun: String,
    /// Link simulation, once per direction. The server-to-client direction draws from
    /// seed + 1, so the two directions lose different packets.
    #[command(flatten)]
    conditioner: ConditionerArgs,
}

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
const MAX_DEVICE_NAME_BYTES: usize = 15;

fn device_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_DEVICE_NAME_BYTES
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not an interface name (1..=15 of a-z A-Z 0-9 - _ .)"
        ))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // clap's first paragraph names the problem (a missing flag is on the line below
            // it); the usage after it is one --help away.
            let text = e.render().to_string();
            let problem: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("netlab-link: {}", problem.join(" "));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    if cli.client_tun == cli.server_tun {
        eprintln!("netlab-link: error: --client-tun and --server-tun must differ");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netlab-link: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netlab-link: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open(name: &str) -> Result<Tun, String> {
    // No packet-info header (IFF_NO_PI, as `ip tuntap add` makes them): reads and writes are
    // bare IP packets. Addresses, MTU and `up` are set by the lab inside the namespace.
    let mut tuns = Tun::builder()
        .name(name)
        .build()
        .map_err(|e| format!("cannot open TUN device {name}: {e} (needs root or CAP_NET_ADMIN)"))?;
    tuns.pop()
        .ok_or_else(|| format!("cannot open TUN device {name}: no queue"))
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = cli.conditioner.to_config()?;
    let seed = cli.conditioner.seed;
    let mut to_server = Direction::new(config.clone(), seed).map_err(|e| e.to_string())?;
    let mut to_client =
        Direction::new(config.clone(), seed.wrapping_add(1)).map_err(|e| e.to_string())?;
    let client = open(&cli.client_tun)?;
    let server = open(&cli.server_tun)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    println!(
        "netlab-link: ready: {} <-> {}, each direction: {}, seed {seed}",
        cli.client_tun,
        cli.server_tun,
        describe(&config)
    );
    // One byte more than the largest IP packet, so a read that fills it was cut short.
    let mut from_client = vec![0u8; MAX_PACKET_BYTES + 1];
    let mut from_server = vec![0u8; MAX_PACKET_BYTES + 1];
    let result = loop {
        let next = [to_server.poll_timeout(), to_client.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        // Each branch is one input; after any of them, everything due is written out below.
        tokio::select! {
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
            read = client.recv(&mut from_client) => match read {
                Ok(n) => to_server.push(Instant::now(), &from_client[..n]),
                Err(e) => break Err(format!("read from {}: {e}", cli.client_tun)),
            },
            read = server.recv(&mut from_server) => match read {
                Ok(n) => to_client.push(Instant::now(), &from_server[..n]),
                Err(e) => break Err(format!("read from {}: {e}", cli.server_tun)),
            },
            () = sleep => {}
        }
        let now = Instant::now();
        drain(&mut to_server, &server, now);
        drain(&mut to_client, &client, now);
    };
    print_counters("client->server", to_server.counters());
    print_counters("server->client", to_client.counters());
    result
}

/// Writes every packet due at `now` to `device`.
fn drain(dir: &mut Direction, device: &Tun, now: Instant) {
    while let Some(packet) = dir.poll(now) {
        // A TUN write hands the packet to the kernel's receive path and never waits; a
        // refusal (device down during setup, a packet the kernel will not take) is one lost
        // packet, counted, as on a real link.
        let written = device.try_send(&packet).is_ok_and(|n| n == packet.len());
        dir.record_write(written);
    }
}

fn print_counters(name: &str, c: DirectionCounters) {
    println!(
        "netlab-link: {name}: received {}, forwarded {}, dropped {} (loss {}, queue full {}, \
         not IP {}, write refused {}), in flight {}",
        c.received,
        c.forwarded,
        c.dropped(),
        c.dropped_loss,
        c.dropped_overflow,
        c.rejected,
        c.write_errors,
        c.in_flight
    );
}
