//! Loopback throughput: datagrams per second from the engine's server to its clients through
//! real sockets on 127.0.0.1, against a bare tokio `UdpSocket::send_to` loop with the same
//! payload sizes, destinations and datagram counts, in the same run.
//!
//! Run: `cargo bench -p benches --bench loopback [-- --quick]`. 8 `NetClient`s connect to a
//! plain `NetServer`, and 8 more with connect tokens to a secure one (netcode 1.02: every
//! packet encrypted); for 1100-byte and 200-byte payloads, the raw loop, the plain engine and
//! the secure engine send in 5 alternating rounds (2.5 s each in all) while the clients
//! receive on their own tasks. Both sides send in ticks of 8 datagrams to each client: the
//! raw loop as 64 `send_to` calls, one datagram each, then a yield; the engine as 64
//! `send_datagram`s (8 rounds over the clients), one `flush` (which hands them to the kernel
//! in batches: one GSO send per client where the kernel has GSO), and the server's
//! receive/timer step. Printed: sender-side datagrams/s for each, receive rates, datagrams
//! per send call, and `engine/raw throughput ratio: X` and `secure engine/raw throughput
//! ratio: X` per size. Under `--test` (CI smoke) or `--quick` each phase runs 0.2 s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser as _;
use snapsync::connection::{ClientSecurity, SecureServerConfig, Security};
use snapsync::net::{NetClient, NetServer};
use snapsync::netcode::{self, TokenSettings, generate_connect_token};
use snapsync::{ClientConfig, ClientId, Event, Server, ServerConfig};
use tokio::net::UdpSocket;
use tokio::time::Instant;

const CLIENTS: usize = 8;
const PAYLOAD_BYTES: [usize; 2] = [1100, 200];
const FULL_PHASE: Duration = Duration::from_millis(2500);
const QUICK_PHASE: Duration = Duration::from_millis(200);
/// Datagrams each client gets per tick: a tick's snapshot parts and messages, sent before
/// one `flush` and one receive/timer step of the server (64 datagrams a tick in all).
const DATAGRAMS_PER_CLIENT_PER_TICK: usize = 8;

/// Alternating raw / engine / secure engine rounds per payload size.
const ROUNDS: u32 = 5;
/// The secure server's protocol id (any fixed value; the tokens carry it).
const SECURE_PROTOCOL_ID: u64 = 0x5EC0_BE4C;

/// One phase's figures.
#[derive(Default)]
struct Phase {
    sent: u64,
    send_errors: u64,
    /// System calls that sent them (the engine's; the raw loop makes one per datagram).
    send_calls: u64,
    received: u64,
    secs: f64,
}

impl Phase {
    fn add(&mut self, other: &Phase) {
        self.sent += other.sent;
        self.send_errors += other.send_errors;
        self.send_calls += other.send_calls;
        self.received += other.received;
        self.secs += other.secs;
    }

    fn sent_per_s(&self) -> f64 {
        self.sent as f64 / self.secs
    }
    fn received_per_s(&self) -> f64 {
        self.received as f64 / self.secs
    }
}

/// The clients, each on its own task, counting datagrams their sockets took in.
struct Receivers {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Receivers {
    fn start(clients: Vec<NetClient>) -> Self {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .into_iter()
            .map(|mut c| {
                let received = received.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut seen = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let _ = c
                            .drive_until(Instant::now() + Duration::from_millis(5))
                            .await;
                        while c.poll_event().is_some() {}
                        let now_seen = c.socket_stats().received;
                        received.fetch_add(now_seen - seen, Ordering::Relaxed);
                        seen = now_seen;
                    }
                })
            })
            .collect();
        Self {
            received,
            stop,
            tasks,
        }
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn raw_phase(dests: &[SocketAddr], size: usize, d: Duration, rx: &Receivers) -> Phase {
    // Binding an ephemeral loopback socket only fails if the machine is out of ports.
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback socket");
    let payload = vec![0xA5u8; size];
    let rx0 = rx.count();
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while start.elapsed() < d {
        // One tick: the same datagrams the engine sends in one, each its own system call.
        for _ in 0..DATAGRAMS_PER_CLIENT_PER_TICK {
            for to in dests {
                match socket.send_to(&payload, to).await {
                    Ok(_) => sent += 1,
                    Err(_) => errors += 1,
                }
            }
        }
        tokio::task::yield_now().await;
    }
    let secs = start.elapsed().as_secs_f64();
    // Let what is in flight land before counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Phase {
        sent,
        send_errors: errors,
        send_calls: sent + errors,
        received: rx.count() - rx0,
        secs,
    }
}

async fn engine_phase(
    server: &mut NetServer,
    ids: &[ClientId],
    size: usize,
    d: Duration,
    rx: &Receivers,
) -> Phase {
    let payload = vec![0xA5u8; size];
    let before = server.socket_stats();
    let rx0 = rx.count();
    let start = Instant::now();
    while start.elapsed() < d {
        // One tick: the datagrams for every client, one flush, then the server's other
        // work (acks in, timers, events out).
        let now = server.now();
        for _ in 0..DATAGRAMS_PER_CLIENT_PER_TICK {
            for &id in ids {
                // Refused only for a client that left, which none does here.
                let _ = server.endpoint_mut().send_datagram(now, id, &payload);
            }
        }
        server.flush();
        let _ = server.drive_until(Instant::now()).await;
        while server.poll_event().is_some() {}
        tokio::task::yield_now().await;
    }
    let secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = server.socket_stats();
    Phase {
        sent: after.sent - before.sent,
        send_errors: after.send_errors - before.send_errors,
        send_calls: after.send_calls - before.send_calls,
        received: rx.count() - rx0,
        secs,
    }
}

/// A server with `CLIENTS` connected clients, and the connected clients' ids on it.
async fn connect(
    mut server: NetServer,
    client_config: impl Fn(usize) -> ClientConfig,
) -> (NetServer, Vec<ClientId>, Vec<NetClient>) {
    let addr = server.local_addr().expect("bound socket has an address");
    let connect = async {
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let c = NetClient::connect(addr, client_config(i), 100 + i as u64, None)
                .await
                .expect("connect over loopback");
            clients.push(c);
        }
        clients
    };
    let (clients, _) = tokio::join!(
        connect,
        server.drive_until(Instant::now() + Duration::from_secs(2))
    );
    let mut ids = Vec::new();
    while let Some((id, e)) = server.poll_event() {
        if matches!(e, Event::Connected { .. }) {
            ids.push(id);
        }
    }
    assert_eq!(ids.len(), CLIENTS, "every client connected");
    (server, ids, clients)
}

/// A secure server on an ephemeral loopback port (tokens must name its address), and the
/// configs of clients with tokens for it.
async fn secure_server() -> (NetServer, impl Fn(usize) -> ClientConfig) {
    // Binding an ephemeral loopback socket only fails if the machine is out of ports.
    let socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback socket");
    let addr = socket.local_addr().expect("bound socket has an address");
    let key = netcode::generate_key();
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let config = ServerConfig {
        max_clients: CLIENTS,
        security: Security::Secure(SecureServerConfig {
            netcode: netcode::ServerConfig::new(SECURE_PROTOCOL_ID, key, addr),
            unix_secs_at_start: unix_secs,
        }),
        ..ServerConfig::default()
    };
    let endpoint =
        Server::new(config, Instant::now().into_std(), 8).expect("a valid secure config");
    let client_config = move |i: usize| {
        let settings = TokenSettings {
            protocol_id: SECURE_PROTOCOL_ID,
            client_id: 1 + i as u64,
            server_addresses: vec![addr],
            expire_seconds: 600,
            timeout_seconds: 10,
            user_data: [0; netcode::USER_DATA_BYTES],
        };
        let token = generate_connect_token(unix_secs, &settings, &key)
            .expect("one server address")
            .to_bytes()
            .to_vec();
        ClientConfig {
            security: ClientSecurity::Secure { token },
            ..ClientConfig::default()
        }
    };
    (NetServer::new(socket, endpoint, 8), client_config)
}

async fn bench(phase: Duration) {
    let config = ServerConfig {
        max_clients: CLIENTS,
        ..ServerConfig::default()
    };
    // Binding to an ephemeral loopback port only fails if the machine is out of ports.
    let server = NetServer::bind("127.0.0.1:0".parse().expect("literal"), config, 7)
        .await
        .expect("bind the server");
    let (mut server, ids, clients) = connect(server, |_| ClientConfig::default()).await;
    let (secure, secure_config) = secure_server().await;
    let (mut secure, secure_ids, secure_clients) = connect(secure, secure_config).await;
    let dests: Vec<SocketAddr> = clients
        .iter()
        .map(|c| {
            let port = c.local_addr().expect("bound socket").port();
            SocketAddr::from(([127, 0, 0, 1], port))
        })
        .collect();
    let rx = Receivers::start(clients);
    let secure_rx = Receivers::start(secure_clients);
    println!(
        "loopback: {CLIENTS} clients, {DATAGRAMS_PER_CLIENT_PER_TICK} datagrams to each per tick, {} s per transport and size in {ROUNDS} alternating rounds, sender-side datagrams/s (received/s at the clients)",
        phase.as_secs_f64()
    );
    let offloads = server.udp_offloads();
    println!(
        "  udp offloads (quinn-udp's probe of the server socket): gso {} segments, gro {} segments, batched calls {}",
        offloads.gso_segments, offloads.gro_segments, offloads.batched
    );
    for size in PAYLOAD_BYTES {
        // Alternate short rounds so load from elsewhere on a shared machine hits all alike.
        let round = phase / ROUNDS;
        let mut raw = Phase::default();
        let mut engine = Phase::default();
        let mut secure_engine = Phase::default();
        for _ in 0..ROUNDS {
            raw.add(&raw_phase(&dests, size, round, &rx).await);
            engine.add(&engine_phase(&mut server, &ids, size, round, &rx).await);
            secure_engine
                .add(&engine_phase(&mut secure, &secure_ids, size, round, &secure_rx).await);
        }
        for (name, p) in [
            ("raw tokio send_to", &raw),
            ("engine", &engine),
            ("secure engine", &secure_engine),
        ] {
            println!(
                "  {size:>4} B {name:<17}: {:>9.0} dgrams/s sent ({:.0} Mbit/s payload), {:>9.0} received/s, {} send errors, {:.1} dgrams per send call",
                p.sent_per_s(),
                p.sent_per_s() * size as f64 * 8.0 / 1e6,
                p.received_per_s(),
                p.send_errors,
                p.sent as f64 / p.send_calls.max(1) as f64
            );
        }
        println!(
            "  {size:>4} B engine/raw throughput ratio: {:.2} (receive ratio {:.2})",
            engine.sent_per_s() / raw.sent_per_s().max(1e-9),
            engine.received_per_s() / raw.received_per_s().max(1e-9)
        );
        println!(
            "  {size:>4} B secure engine/raw throughput ratio: {:.2} (receive ratio {:.2})",
            secure_engine.sent_per_s() / raw.sent_per_s().max(1e-9),
            secure_engine.received_per_s() / raw.received_per_s().max(1e-9)
        );
    }
    rx.stop().await;
    secure_rx.stop().await;
}

fn main() {
    let args = benches::cli::Loopback::parse();
    if !args.common.runs("loopback") {
        return;
    }
    let phase = if args.common.quick() {
        QUICK_PHASE
    } else {
        FULL_PHASE
    };
    // Two workers: the sender on one, the clients' receive tasks mostly on the other.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(bench(phase));
}
