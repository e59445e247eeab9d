//! Load: 256 real clients on loopback against one `NetServer` for 60 s at 60 Hz.
//!
//! Run deliberately (it takes over a minute and wants a quiet machine):
//! `cargo test -p snapsync --release --test load -- --ignored --nocapture`
//! (`SNAPSYNC_LOAD_SECS=5` shortens the run, e.g. to check the test itself.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use snapsync::net::{NetClient, NetServer};
use snapsync::packet::DisconnectReasonCode;
use snapsync::{ClientConfig, DisconnectReason, Event, ServerConfig};
use tokio::time::Instant;

const CLIENTS: usize = 256;
/// Length of the run unless `SNAPSYNC_LOAD_SECS` says otherwise.
const DEFAULT_RUN: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_micros(16_667);
/// The server's per-client datagram each tick, about a small snapshot's size.
const SNAPSHOT_BYTES: usize = 200;
/// The client's per-tick input datagram.
const INPUT_BYTES: usize = 16;
/// Longest the whole connect phase may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(20);

/// p50, p99 and max of `samples`, in microseconds.
fn percentiles(samples: &mut [Duration]) -> (u128, u128, u128) {
    samples.sort();
    let at = |q: usize| {
        let i = (samples.len() * q).div_ceil(100).saturating_sub(1);
        samples.get(i).map_or(0, |d| d.as_micros())
    };
    (at(50), at(99), samples.last().map_or(0, |d| d.as_micros()))
}

struct ServerReport {
    tick_work: Vec<Duration>,
    /// Disconnects other than a client's goodbye.
    disconnects: u64,
    goodbyes: u64,
    peak_clients: usize,
    datagrams_in: u64,
    stats: snapsync::connection::ServerStats,
    send_errors: u64,
}

async fn run_server(mut server: NetServer, stop: Arc<AtomicBool>) -> ServerReport {
    let mut ids = Vec::new();
    let mut tick = 0u64;
    let mut tick_work = Vec::with_capacity(4000);
    let mut disconnects = 0;
    let mut goodbyes = 0;
    let mut peak_clients = 0;
    let mut datagrams_in = 0;
    let mut measuring = false;
    let mut next = Instant::now();
    let mut snapshot = vec![0u8; SNAPSHOT_BYTES];
    while !stop.load(Ordering::Relaxed) {
        next += TICK;
        if next < Instant::now() {
            // Behind: skip the missed ticks rather than bursting to catch up.
            next = Instant::now() + TICK;
        }
        server.drive_until(next).await.expect("server socket");
        // Work of one tick: handle what arrived, build and send every client's datagram.
        let started = std::time::Instant::now();
        while let Some((id, e)) = server.poll_event() {
            match e {
                Event::Connected { .. } => ids.push(id),
                Event::Disconnected { reason } => {
                    ids.retain(|&x| x != id);
                    if reason == DisconnectReason::Peer(DisconnectReasonCode::Requested) {
                        goodbyes += 1;
                    } else {
                        disconnects += 1;
                    }
                }
                Event::Datagram { .. } => datagrams_in += 1,
                _ => {}
            }
        }
        tick += 1;
        snapshot[..8].copy_from_slice(&tick.to_le_bytes());
        let now = server.now();
        for &id in &ids {
            let _ = server.endpoint_mut().send_datagram(now, id, &snapshot);
        }
        server.flush();
        peak_clients = peak_clients.max(ids.len());
        if ids.len() == CLIENTS {
            measuring = true;
        }
        if measuring {
            tick_work.push(started.elapsed());
        }
    }
    ServerReport {
        tick_work,
        disconnects,
        goodbyes,
        peak_clients,
        datagrams_in,
        stats: server.endpoint().stats(),
        send_errors: server.socket_stats().send_errors,
    }
}

struct ClientReport {
    gaps: Vec<Duration>,
    received: u64,
    disconnected: bool,
}

async fn run_client(mut client: NetClient, start: Instant, run: Duration) -> ClientReport {
    let mut gaps = Vec::with_capacity(4000);
    let mut newest = 0u64;
    let mut last = None::<std::time::Instant>;
    let mut received = 0;
    let mut disconnected = false;
    let mut next = Instant::now();
    let input = [1u8; INPUT_BYTES];
    while Instant::now() < start + run {
        next += TICK;
        let now = client.now();
        let _ = client.endpoint_mut().send_datagram(now, &input);
        client.flush();
        client.drive_until(next).await.expect("client socket");
        while let Some(e) = client.poll_event() {
            match e {
                Event::Datagram { payload, .. } => {
                    let Some(t) = payload.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)) else {
                        continue;
                    };
                    if t > newest {
                        newest = t;
                        let at = std::time::Instant::now();
                        if let Some(prev) = last {
                            gaps.push(at - prev);
                        }
                        last = Some(at);
                        received += 1;
                    }
                }
                Event::Disconnected { .. } => disconnected = true,
                _ => {}
            }
        }
    }
    client.endpoint_mut().disconnect();
    client.flush();
    ClientReport {
        gaps,
        received,
        disconnected,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes over a minute of wall time and wants a quiet machine; run with --release --ignored --nocapture"]
async fn two_hundred_fifty_six_clients_for_a_minute() {
    let config = ServerConfig {
        max_clients: CLIENTS,
        ..ServerConfig::default()
    };
    let run = std::env::var("SNAPSYNC_LOAD_SECS")
        .ok()
        .map_or(DEFAULT_RUN, |s| {
            Duration::from_secs(s.parse().expect("SNAPSYNC_LOAD_SECS is whole seconds"))
        });
    let server = NetServer::bind("127.0.0.1:0".parse().expect("literal"), config, 1)
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let server_task = tokio::spawn(run_server(server, stop.clone()));

    let connect_started = Instant::now();
    let connects: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(async move {
                NetClient::connect(addr, ClientConfig::default(), 10_000 + i as u64, None).await
            })
        })
        .collect();
    let mut clients = Vec::new();
    for c in connects {
        let c = tokio::time::timeout_at(connect_started + CONNECT_LIMIT, c)
            .await
            .expect("connect phase bounded")
            .expect("connect task")
            .expect("client connects");
        clients.push(c);
    }
    let connect_time = connect_started.elapsed();

    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(run_client(c, start, run)))
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        let r = tokio::time::timeout_at(start + run + Duration::from_secs(10), t)
            .await
            .expect("clients stop on time")
            .expect("client task");
        reports.push(r);
    }
    // Let the goodbyes arrive, then stop the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut server = server_task.await.expect("server task");

    let ticks = server.tick_work.len();
    let (w50, w99, wmax) = percentiles(&mut server.tick_work);
    let mut gaps: Vec<Duration> = reports
        .iter()
        .flat_map(|r| r.gaps.iter().copied())
        .collect();
    let (g50, g99, gmax) = percentiles(&mut gaps);
    let received: u64 = reports.iter().map(|r| r.received).sum();
    let min_received = reports.iter().map(|r| r.received).min().unwrap_or(0);
    let client_disconnects = reports.iter().filter(|r| r.disconnected).count();
    println!("load: {CLIENTS} clients, {run:?} at 60 Hz, {SNAPSHOT_BYTES} B per client per tick");
    println!("connect phase: {connect_time:?}");
    println!(
        "server tick work (us): p50 {w50} p99 {w99} max {wmax} over {ticks} ticks; p99 = {:.1}% of the tick",
        w99 as f64 / TICK.as_micros() as f64 * 100.0
    );
    println!("client update gap (us): p50 {g50} p99 {g99} max {gmax}");
    println!(
        "snapshots received: {received} total, {min_received} by the worst client; inputs at server: {}",
        server.datagrams_in
    );
    println!(
        "unexpected disconnects: server {}, clients {client_disconnects}; goodbyes {}; peak {}; send errors {}",
        server.disconnects, server.goodbyes, server.peak_clients, server.send_errors
    );
    println!("server stats: {:?}", server.stats);

    assert_eq!(server.peak_clients, CLIENTS);
    assert_eq!(client_disconnects, 0, "no client lost its connection");
    assert_eq!(
        server.disconnects, 0,
        "no connection timed out on the server"
    );
    assert_eq!(server.stats.invalid_packets, 0);
    assert_eq!(server.send_errors, 0, "no send failed");
    assert_eq!(
        server.goodbyes, CLIENTS as u64,
        "every client's goodbye reached the server"
    );
    // Every client kept receiving: at least half the ticks' datagrams, newest-wins.
    let ticks_run = run.as_secs() * 60;
    assert!(
        min_received > ticks_run / 2,
        "worst client got {min_received} of {ticks_run}"
    );
}
