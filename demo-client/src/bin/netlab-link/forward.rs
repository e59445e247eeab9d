//! The forwarder's I/O: two TUN devices, a timer and the signals, around the sans-IO link.

use std::time::Instant;

use demo_server::cli::describe;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tun::Tun;

use crate::Cli;
use crate::link::{Direction, DirectionCounters, MAX_PACKET_BYTES};

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

pub(crate) async fn run(cli: Cli) -> Result<(), String> {
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
