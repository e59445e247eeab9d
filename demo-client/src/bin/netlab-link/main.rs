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

#[cfg(target_os = "linux")]
mod forward;
// Without TUN devices (not Linux) only the tests drive the link.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
mod link;

use std::process::ExitCode;

use clap::Parser;
use demo_server::cli::ConditionerArgs;

/// Forward IP packets between two TUN devices through the engine's link conditioner.
///
/// The conditioner flags apply to each direction separately: `--loss 5` loses 5 % of the
/// packets from client to server and, independently, 5 % of those from server to client;
/// `--latency 40` gives a round trip of 80 ms.
#[derive(Debug, Parser)]
#[command(name = "netlab-link", version)]
// Not Linux: the flags are parsed and checked, then nothing reads them.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netlab-link: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(target_os = "linux")]
fn run(cli: Cli) -> Result<(), String> {
    // One thread: the forwarder waits on two devices and a timer, and the lab's machine
    // has few cores to spare for it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(forward::run(cli))
}

#[cfg(not(target_os = "linux"))]
fn run(_cli: Cli) -> Result<(), String> {
    Err("needs Linux (TUN devices and network namespaces)".to_string())
}
