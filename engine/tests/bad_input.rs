//! Bad input against a live `NetServer` on loopback while real `NetClient`s play.
//!
//! Every test runs the same game: a server task that sends each client a datagram every
//! 60 Hz tick and a reliable message every sixth tick, and real clients that do the same
//! back. Client 0 talks through a recording proxy, so the tests hold captured valid packets
//! and can send from the client's own address. After a clean second, an attack runs; the
//! tests then check that the real clients stayed connected and kept receiving (update gap
//! p99 within a generous bound of the clean second's), that the server's counters moved for
//! the attack's reason and no other, that no connection exists for an unverified address,
//! and that no unverified address got a reply larger than its request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use snapsync::channel::ChannelStats;
use snapsync::connection::ServerStats;
use snapsync::net::{NetClient, NetServer, SocketStats};
use snapsync::packet::{
    ConnectedHeader, HANDSHAKE_PACKET_BYTES, HeaderError, MAX_PACKET_BYTES, PROTOCOL_ID, Packet,
};
use snapsync::{ClientConfig, ClientId, Event, Sequence, ServerConfig, codec};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

/// Game tick (60 Hz).
const TICK: Duration = Duration::from_micros(16_667);
/// A reliable message every this many ticks.
const MESSAGE_EVERY_TICKS: u64 = 6;
/// Real clients in every test.
const REAL_CLIENTS: usize = 3;
/// Length of the clean run every attack is compared with.
const CLEAN_RUN: Duration = Duration::from_secs(1);
/// Time given to the server to read what the attack left in its socket.
const SETTLE: Duration = Duration::from_millis(300);
/// Attack datagrams sent back to back before a short pause, so loopback socket buffers
/// hold them all.
const BURST_DATAGRAMS: usize = 48;
const BURST_PAUSE: Duration = Duration::from_millis(2);

const PHASE_CLEAN: u8 = 0;
const PHASE_ATTACK: u8 = 1;
const PHASE_STOP: u8 = 2;

/// What the game's reliable messages carry (both ways).
#[derive(Debug, Serialize, Deserialize)]
struct GameMessage {
    counter: u64,
    text: String,
}

/// The server task's state, published every tick.
#[derive(Debug, Clone, Default)]
struct ServerView {
    stats: ServerStats,
    socket: SocketStats,
    client_count: usize,
    peers: BTreeMap<ClientId, PeerView>,
    /// Messages the game could not decode with `codec` (hostile length prefixes).
    app_decode_errors: u64,
    app_messages: BTreeMap<ClientId, u64>,
}

#[derive(Debug, Clone)]
struct PeerView {
    addr: SocketAddr,
    invalid_received: u64,
    channels: Vec<ChannelStats>,
}

/// What each real client saw, per phase.
#[derive(Debug, Default)]
struct ClientReport {
    gaps: [Vec<Duration>; 2],
    datagrams: [u64; 2],
    messages: u64,
    disconnected: bool,
}

async fn run_server(
    mut server: NetServer,
    phase: Arc<AtomicU8>,
    view: watch::Sender<ServerView>,
) -> ServerView {
    let mut ids = Vec::new();
    let mut tick = 0u64;
    let mut next = Instant::now();
    let mut app_decode_errors = 0;
    let mut app_messages = BTreeMap::new();
    while phase.load(Ordering::Relaxed) != PHASE_STOP {
        next += TICK;
        if next < Instant::now() {
            next = Instant::now() + TICK;
        }
        server.drive_until(next).await.expect("server socket");
        while let Some((id, e)) = server.poll_event() {
            match e {
                Event::Connected { .. } => ids.push(id),
                Event::Disconnected { .. } => ids.retain(|&x| x != id),
                Event::Message { payload, .. } => {
                    *app_messages.entry(id).or_insert(0u64) += 1;
                    if codec::decode::<GameMessage>(&payload).is_err() {
                        app_decode_errors += 1;
                    }
                }
                _ => {}
            }
        }
        tick += 1;
        let now = server.now();
        for &id in &ids {
            let mut datagram = tick.to_le_bytes().to_vec();
            datagram.resize(64, 0xAB);
            let _ = server.endpoint_mut().send_datagram(now, id, &datagram);
            if tick.is_multiple_of(MESSAGE_EVERY_TICKS) {
                let m = codec::encode(&GameMessage {
                    counter: tick,
                    text: "server says hi".into(),
                })
                .expect("encodes");
                let _ = server.endpoint_mut().send_message(now, id, 0, &m);
            }
        }
        server.flush();
        let e = server.endpoint();
        let peers = e
            .clients()
            .filter_map(|id| {
                Some((
                    id,
                    PeerView {
                        addr: e.client_addr(id)?,
                        invalid_received: e.connection_stats(id)?.link.invalid_received,
                        channels: (0..4).filter_map(|ch| e.channel_stats(id, ch)).collect(),
                    },
                ))
            })
            .collect();
        let _ = view.send(ServerView {
            stats: e.stats(),
            socket: server.socket_stats(),
            client_count: e.client_count(),
            peers,
            app_decode_errors,
            app_messages: app_messages.clone(),
        });
    }
    view.borrow().clone()
}

async fn run_clients(mut clients: Vec<NetClient>, phase: Arc<AtomicU8>) -> Vec<ClientReport> {
    let mut reports: Vec<ClientReport> = clients.iter().map(|_| ClientReport::default()).collect();
    let mut newest = vec![0u64; clients.len()];
    let mut last_arrival = vec![None::<std::time::Instant>; clients.len()];
    let mut last_message = vec![0u64; clients.len()];
    let mut tick = 0u64;
    let mut next = Instant::now();
    loop {
        let p = phase.load(Ordering::Relaxed);
        if p == PHASE_STOP {
            break;
        }
        let p = usize::from(p.min(PHASE_ATTACK));
        next += TICK;
        tick += 1;
        for c in &mut clients {
            let now = c.now();
            let _ = c.endpoint_mut().send_datagram(now, &tick.to_le_bytes());
            if tick.is_multiple_of(MESSAGE_EVERY_TICKS) {
                let m = codec::encode(&GameMessage {
                    counter: tick,
                    text: "client input".into(),
                })
                .expect("encodes");
                let _ = c.endpoint_mut().send_message(now, 0, &m);
            }
            c.flush();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.drive_until(next).await.expect("client socket");
            while let Some(e) = c.poll_event() {
                match e {
                    Event::Datagram { payload, .. } => {
                        let Some(t) = payload.first_chunk::<8>().map(|b| u64::from_le_bytes(*b))
                        else {
                            continue;
                        };
                        if t <= newest[i] {
                            continue;
                        }
                        newest[i] = t;
                        let at = std::time::Instant::now();
                        if let Some(prev) = last_arrival[i] {
                            reports[i].gaps[p].push(at - prev);
                        }
                        last_arrival[i] = Some(at);
                        reports[i].datagrams[p] += 1;
                    }
                    Event::Message {
                        channel: 0,
                        payload,
                        ..
                    } => {
                        let m: GameMessage =
                            codec::decode(&payload).expect("server messages decode");
                        assert!(
                            m.counter > last_message[i],
                            "reliable-ordered stays in order"
                        );
                        last_message[i] = m.counter;
                        reports[i].messages += 1;
                    }
                    Event::Disconnected { .. } => reports[i].disconnected = true,
                    _ => {}
                }
            }
        }
    }
    reports
}

/// A UDP relay in front of the server that records what the client sends.
struct Proxy {
    /// Where the client connects to.
    front: SocketAddr,
    /// The socket the server sees as the client's address.
    back: Arc<UdpSocket>,
    /// Client → server datagrams, in order (the first few thousand).
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Most datagrams the proxy records.
const MAX_CAPTURED: usize = 4000;

async fn start_proxy(server: SocketAddr) -> (Proxy, tokio::task::JoinHandle<()>) {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let captured = Arc::new(Mutex::new(Vec::new()));
    let proxy = Proxy {
        front: front.local_addr().expect("addr"),
        back: back.clone(),
        captured: captured.clone(),
    };
    let task = tokio::spawn(async move {
        let mut client = None;
        let mut a = vec![0u8; 2048];
        let mut b = vec![0u8; 2048];
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { continue };
                    client = Some(from);
                    {
                        let mut c = captured.lock().expect("not poisoned");
                        if c.len() < MAX_CAPTURED {
                            c.push(a[..n].to_vec());
                        }
                    }
                    let _ = back.send_to(&a[..n], server).await;
                }
                r = back.recv_from(&mut b) => {
                    let Ok((n, from)) = r else { continue };
                    if let (Some(to), true) = (client, from == server) {
                        let _ = front.send_to(&b[..n], to).await;
                    }
                }
            }
        }
    });
    (proxy, task)
}

/// A running game plus the handles an attack needs.
struct Game {
    server_addr: SocketAddr,
    phase: Arc<AtomicU8>,
    view: watch::Receiver<ServerView>,
    proxy: Proxy,
    server_task: tokio::task::JoinHandle<ServerView>,
    clients_task: tokio::task::JoinHandle<Vec<ClientReport>>,
    proxy_task: tokio::task::JoinHandle<()>,
}

async fn start_game(seed: u64) -> Game {
    let server = NetServer::bind(
        "127.0.0.1:0".parse().expect("literal"),
        ServerConfig::default(),
        seed,
    )
    .await
    .expect("bind server");
    let server_addr = server.local_addr().expect("addr");
    let phase = Arc::new(AtomicU8::new(PHASE_CLEAN));
    let (tx, view) = watch::channel(ServerView::default());
    let server_task = tokio::spawn(run_server(server, phase.clone(), tx));
    let (proxy, proxy_task) = start_proxy(server_addr).await;
    let mut clients = Vec::new();
    for i in 0..REAL_CLIENTS {
        let to = if i == 0 { proxy.front } else { server_addr };
        let c = NetClient::connect(to, ClientConfig::default(), seed * 100 + i as u64, None)
            .await
            .expect("real client connects");
        clients.push(c);
    }
    let clients_task = tokio::spawn(run_clients(clients, phase.clone()));
    tokio::time::sleep(CLEAN_RUN).await;
    Game {
        server_addr,
        phase,
        view,
        proxy,
        server_task,
        clients_task,
        proxy_task,
    }
}

impl Game {
    fn view(&self) -> ServerView {
        self.view.borrow().clone()
    }

    fn start_attack(&self) -> ServerView {
        self.phase.store(PHASE_ATTACK, Ordering::Relaxed);
        self.view()
    }

    fn captured(&self) -> Vec<Vec<u8>> {
        self.proxy.captured.lock().expect("not poisoned").clone()
    }

    /// The server-side view of client 0 (the proxied one).
    fn proxied_client_addr(&self) -> SocketAddr {
        self.proxy.back.local_addr().expect("addr")
    }

    /// Let the server drain the attack, stop, and check the real clients came through.
    async fn finish(self) -> ServerView {
        tokio::time::sleep(SETTLE).await;
        let view = self.view();
        self.phase.store(PHASE_STOP, Ordering::Relaxed);
        let reports = self.clients_task.await.expect("clients task");
        let _ = self.server_task.await.expect("server task");
        self.proxy_task.abort();
        let real: Vec<SocketAddr> = view.peers.values().map(|p| p.addr).collect();
        assert!(
            real.contains(&self.proxy.back.local_addr().expect("addr")),
            "the proxied client is still connected"
        );
        for (i, r) in reports.iter().enumerate() {
            assert!(!r.disconnected, "client {i} was disconnected");
            assert!(
                r.datagrams[0] > 30,
                "client {i} clean run: {:?}",
                r.datagrams
            );
            assert!(r.datagrams[1] > 10, "client {i} starved: {:?}", r.datagrams);
            assert!(r.messages > 5, "client {i} got {} messages", r.messages);
            let clean = p99(&r.gaps[0]);
            let attacked = p99(&r.gaps[1]);
            let bound = (clean * 4).max(clean + Duration::from_millis(100));
            println!("client {i}: update gap p99 clean {clean:?}, under attack {attacked:?}");
            assert!(
                attacked <= bound,
                "client {i}: update gap p99 {attacked:?} under attack, {clean:?} clean"
            );
        }
        view
    }
}

fn p99(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    // Empty only if no datagram arrived, which the caller checks first.
    s.get((s.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// Send every datagram from `socket` to `to`, in paced bursts.
async fn send_paced(socket: &UdpSocket, to: SocketAddr, datagrams: &[Vec<u8>]) {
    for burst in datagrams.chunks(BURST_DATAGRAMS) {
        for d in burst {
            socket.send_to(d, to).await.expect("loopback send");
        }
        tokio::time::sleep(BURST_PAUSE).await;
    }
}

/// Collect whatever arrives on `socket` for `window`.
async fn replies(socket: &UdpSocket, window: Duration) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let end = Instant::now() + window;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, socket.recv_from(&mut buf)).await {
        out.push(buf[..n].to_vec());
    }
    out
}

async fn stranger() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind")
}

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    let n = p.encode(&mut buf).expect("test packets fit");
    buf.truncate(n);
    buf
}

/// `body` with a CRC computed for `protocol_id`.
fn with_crc(protocol_id: u64, body: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&protocol_id.to_le_bytes());
    h.update(body);
    let mut out = h.finalize().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Kind byte of a datagram that passed its CRC (offset 4).
fn kind_of(d: &[u8]) -> Option<u8> {
    d.get(4).copied()
}

/// Payload bytes of one fragment on a default channel: a quarter of the 1200-byte packet
/// budget after the section count byte, less the 10-byte fragment record header.
const PART_PAYLOAD_BYTES: usize = 289;
/// Channel, flags, id, fragment index and count, and length, before a fragment's payload.
const FRAGMENT_RECORD_HEADER_BYTES: usize = 10;

const KIND_CONNECTION_REQUEST: u8 = 1;
const KIND_CHALLENGE_RESPONSE: u8 = 3;
const KIND_PAYLOAD: u8 = 6;

fn delta(before: &ServerStats, after: &ServerStats) -> ServerStats {
    ServerStats {
        packets_in: after.packets_in - before.packets_in,
        packets_out: after.packets_out - before.packets_out,
        bytes_in: after.bytes_in - before.bytes_in,
        bytes_out: after.bytes_out - before.bytes_out,
        invalid_packets: after.invalid_packets - before.invalid_packets,
        invalid_malformed: after.invalid_malformed - before.invalid_malformed,
        invalid_wrong_salt: after.invalid_wrong_salt - before.invalid_wrong_salt,
        invalid_unknown_peer: after.invalid_unknown_peer - before.invalid_unknown_peer,
        invalid_replay: after.invalid_replay - before.invalid_replay,
        invalid_cookie: after.invalid_cookie - before.invalid_cookie,
        invalid_other: after.invalid_other - before.invalid_other,
        late_disconnects: after.late_disconnects - before.late_disconnects,
        challenges_sent: after.challenges_sent - before.challenges_sent,
        replies_dropped: after.replies_dropped - before.replies_dropped,
        connections_accepted: after.connections_accepted - before.connections_accepted,
        connections_denied: after.connections_denied - before.connections_denied,
        clients_peak: after.clients_peak,
    }
}

/// Most of `sent` arrived and was counted (loopback may drop a few under load), none extra.
fn assert_counted(what: &str, counted: u64, sent: usize) {
    let sent = sent as u64;
    assert!(
        counted <= sent && counted * 10 >= sent * 9,
        "{what}: {counted} counted of {sent} sent"
    );
}

/// A peer that completed the handshake by hand: it may send anything with the right salt.
struct RawPeer {
    socket: UdpSocket,
    salt: u32,
    sequence: Sequence,
}

impl RawPeer {
    async fn connect(server: SocketAddr, nonce: u64) -> Self {
        let socket = stranger().await;
        let request = encode(&Packet::ConnectionRequest {
            client_nonce: nonce,
        });
        let challenge = loop {
            socket.send_to(&request, server).await.expect("send");
            if let Some(Ok(Packet::Challenge {
                timestamp_ms, mac, ..
            })) = replies(&socket, Duration::from_millis(200))
                .await
                .first()
                .map(|r| Packet::decode(r))
            {
                break (timestamp_ms, mac);
            }
        };
        let response = encode(&Packet::ChallengeResponse {
            client_nonce: nonce,
            timestamp_ms: challenge.0,
            mac: challenge.1,
        });
        for _ in 0..10 {
            socket.send_to(&response, server).await.expect("send");
            for r in replies(&socket, Duration::from_millis(200)).await {
                if let Ok(Packet::Accepted { salt, .. }) = Packet::decode(&r) {
                    return Self {
                        socket,
                        salt,
                        sequence: Sequence(0),
                    };
                }
            }
        }
        panic!("raw peer was not accepted");
    }

    /// A connected packet carrying `body` (flags byte onwards).
    fn packet(&mut self, body: &[u8]) -> Vec<u8> {
        self.sequence = self.sequence.next();
        encode(&Packet::Payload {
            header: ConnectedHeader {
                salt: self.salt,
                sequence: self.sequence,
                ack: Sequence(0),
                ack_bits: 0,
                ack_delay: 0,
            },
            payload: body,
        })
    }
}

/// A channel section of one record.
fn section(
    channel: u8,
    id: u16,
    fragment: Option<(u16, u16)>,
    len: u16,
    payload: &[u8],
) -> Vec<u8> {
    // No datagram: flags byte 0, then the section.
    let mut b = vec![0u8, 1, channel, u8::from(fragment.is_some())];
    b.extend_from_slice(&id.to_le_bytes());
    if let Some((index, count)) = fragment {
        b.extend_from_slice(&index.to_le_bytes());
        b.extend_from_slice(&count.to_le_bytes());
    }
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_datagrams_and_wrong_protocol_ids_are_malformed() {
    let game = start_game(1).await;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut attack: Vec<Vec<u8>> = (0..1500)
        .map(|_| {
            let len = rng.random_range(0..=MAX_PACKET_BYTES);
            (0..len).map(|_| rng.random()).collect()
        })
        .collect();
    // Valid packets of another protocol (or version): the CRC folds in the protocol id.
    let wrong_id: Vec<Vec<u8>> = game
        .captured()
        .iter()
        .map(|d| with_crc(PROTOCOL_ID ^ 1, &d[4..]))
        .collect();
    assert!(wrong_id.len() > 40, "{} captured", wrong_id.len());
    attack.extend(wrong_id);
    let before = game.start_attack();
    let sockets = [stranger().await, stranger().await, stranger().await];
    for (i, chunk) in attack.chunks(attack.len().div_ceil(3)).enumerate() {
        send_paced(&sockets[i], game.server_addr, chunk).await;
    }
    // Also from the real client's own address.
    send_paced(&game.proxy.back, game.server_addr, &attack[..200]).await;
    let sent = attack.len() + 200;
    let after = game.finish().await;
    let d = delta(&before.stats, &after.stats);
    assert_counted("malformed", d.invalid_malformed, sent);
    assert_eq!(d.invalid_packets, d.invalid_malformed, "{d:?}");
    assert_eq!(d.challenges_sent, 0);
    assert_eq!(after.client_count, REAL_CLIENTS);
    for s in &sockets {
        assert!(
            replies(s, Duration::from_millis(50)).await.is_empty(),
            "garbage got a reply"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_truncation_of_captured_packets_is_refused_by_its_parser() {
    let game = start_game(2).await;
    let captured = game.captured();
    // One of each kind the client sends: request, response, a datagram packet, a keep-alive
    // or message packet.
    let mut originals = Vec::new();
    for kind in [KIND_CONNECTION_REQUEST, KIND_CHALLENGE_RESPONSE] {
        originals.extend(captured.iter().find(|d| kind_of(d) == Some(kind)).cloned());
    }
    let payloads: Vec<&Vec<u8>> = captured
        .iter()
        .filter(|d| kind_of(d) == Some(KIND_PAYLOAD))
        .collect();
    originals.extend(payloads.iter().take(2).map(|d| (*d).clone()));
    originals.extend(
        payloads
            .iter()
            .min_by_key(|d| d.len())
            .map(|d| (*d).clone()),
    );
    assert_eq!(originals.len(), 5, "captured every kind");
    // Every truncation with its CRC recomputed, so the length checks behind the checksum are
    // what refuses it (kept as is when too short to hold a kind byte).
    let attack: Vec<Vec<u8>> = originals
        .iter()
        .flat_map(|d| {
            (0..d.len()).map(|n| match n {
                0..=4 => d[..n].to_vec(),
                _ => with_crc(PROTOCOL_ID, &d[4..n]),
            })
        })
        .collect();
    // What the parsers make of them: a handshake of the wrong size or a packet shorter than
    // its fields is malformed; a payload packet cut after its header is a well-formed packet
    // from a stranger.
    let (mut malformed, mut stranger_payloads) = (0, 0);
    for a in &attack {
        match Packet::decode(a) {
            Err(HeaderError::Truncated | HeaderError::BadHandshakeSize) => malformed += 1,
            Ok(Packet::Payload { .. }) => stranger_payloads += 1,
            other => panic!("{} bytes decoded as {other:?}", a.len()),
        }
    }
    let before = game.start_attack();
    let s = stranger().await;
    send_paced(&s, game.server_addr, &attack).await;
    let after = game.finish().await;
    let d = delta(&before.stats, &after.stats);
    assert_counted("truncations", d.invalid_malformed, malformed);
    assert_counted("cut payloads", d.invalid_unknown_peer, stranger_payloads);
    assert_eq!(
        d.invalid_packets,
        d.invalid_malformed + d.invalid_unknown_peer,
        "{d:?}"
    );
    assert_eq!(d.challenges_sent, 0, "no truncated request is answered");
    assert!(replies(&s, Duration::from_millis(50)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_datagrams_are_dropped_and_counted() {
    let game = start_game(3).await;
    let mut attack: Vec<Vec<u8>> = (MAX_PACKET_BYTES + 1..=1472)
        .map(|n| vec![0x5A; n])
        .collect();
    // A valid packet's bytes padded past the limit must not pass either.
    let valid = game.captured()[0].clone();
    for n in [1401usize, 2000, 9000, 65_000] {
        let mut d = valid.clone();
        d.resize(n, 0);
        attack.push(d);
    }
    let before = game.start_attack();
    let s = stranger().await;
    send_paced(&s, game.server_addr, &attack).await;
    let after = game.finish().await;
    let d = delta(&before.stats, &after.stats);
    assert_counted("oversized", d.invalid_malformed, attack.len());
    assert_eq!(d.invalid_packets, d.invalid_malformed);
    assert_eq!(
        after.socket.oversized - before.socket.oversized,
        d.invalid_malformed,
        "the driver saw each as oversized"
    );
    assert!(replies(&s, Duration::from_millis(50)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_salts_and_replays_are_dropped_by_reason() {
    let game = start_game(4).await;
    let captured = game.captured();
    let payloads: Vec<Vec<u8>> = captured
        .iter()
        .filter(|d| kind_of(d) == Some(KIND_PAYLOAD))
        .cloned()
        .collect();
    assert!(payloads.len() > 40, "{} captured", payloads.len());
    let handshakes: Vec<Vec<u8>> = captured
        .iter()
        .filter(|d| kind_of(d) == Some(KIND_CHALLENGE_RESPONSE))
        .cloned()
        .collect();
    // Wrong salt: the client's own packets, salt changed, CRC fixed up.
    let wrong_salt: Vec<Vec<u8>> = payloads
        .iter()
        .map(|d| {
            let mut body = d[4..].to_vec();
            body[1] ^= 0x5A; // first salt byte, after the kind byte
            with_crc(PROTOCOL_ID, &body)
        })
        .collect();
    let before = game.start_attack();
    let own = game.proxy.back.clone();
    let server = game.server_addr;
    // From the client's own address: wrong salts, then replays of its old packets.
    send_paced(&own, server, &wrong_salt).await;
    send_paced(&own, server, &payloads).await;
    tokio::time::sleep(SETTLE).await;
    let before_handshakes = game.view();
    // Its handshake replayed from its own address changes nothing (same nonce).
    send_paced(&own, server, &handshakes).await;
    tokio::time::sleep(SETTLE).await;
    let mid = game.view();
    // From other addresses: payloads are unknown peers, responses carry a cookie bound to
    // the client's address.
    let other = stranger().await;
    send_paced(&other, server, &payloads).await;
    send_paced(&other, server, &handshakes).await;
    let proxied = game.proxied_client_addr();
    let after = game.finish().await;

    let own_d = delta(&before.stats, &before_handshakes.stats);
    assert_counted("wrong salt", own_d.invalid_wrong_salt, wrong_salt.len());
    assert_counted("own replays", own_d.invalid_replay, payloads.len());
    assert_eq!(
        own_d.invalid_packets,
        own_d.invalid_wrong_salt + own_d.invalid_replay,
        "{own_d:?}"
    );
    // The own-address handshake replay moves no counter: each is a verified response with the
    // connection's nonce, answered with the same Accepted.
    assert!(!handshakes.is_empty());
    let handshake_d = delta(&before_handshakes.stats, &mid.stats);
    assert_eq!(handshake_d.invalid_packets, 0, "{handshake_d:?}");
    assert_eq!(handshake_d.connections_accepted, 0, "{handshake_d:?}");
    assert_eq!(handshake_d.connections_denied, 0, "{handshake_d:?}");
    assert_eq!(handshake_d.challenges_sent, 0, "{handshake_d:?}");
    assert_eq!(
        before_handshakes.peers.keys().collect::<Vec<_>>(),
        mid.peers.keys().collect::<Vec<_>>(),
        "no connection replaced or added"
    );
    let other_d = delta(&mid.stats, &after.stats);
    assert_counted("unknown peer", other_d.invalid_unknown_peer, payloads.len());
    assert_counted("forged cookie", other_d.invalid_cookie, handshakes.len());
    let d = delta(&before.stats, &after.stats);
    assert_eq!(
        d.invalid_packets,
        d.invalid_wrong_salt + d.invalid_replay + d.invalid_unknown_peer + d.invalid_cookie,
        "{d:?}"
    );
    assert_eq!(d.invalid_malformed + d.invalid_other, 0, "{d:?}");
    assert_eq!(d.connections_accepted, 0, "no replay opened a connection");
    assert_eq!(after.client_count, REAL_CLIENTS);
    // The proxied client's connection saw the bad packets and kept its slot.
    let peer = after
        .peers
        .values()
        .find(|p| p.addr == proxied)
        .expect("still connected");
    assert!(peer.invalid_received >= own_d.invalid_wrong_salt + own_d.invalid_replay);
    assert!(replies(&other, Duration::from_millis(50)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_bombs_from_a_verified_peer_stay_bounded() {
    let game = start_game(5).await;
    let mut peer = RawPeer::connect(game.server_addr, 0xB0B).await;
    let peer_addr = peer.socket.local_addr().expect("addr");
    let before = game.start_attack();
    let mut attack = Vec::new();
    // Fragments claiming the most fragments a count can say: refused by the limit.
    for i in 0..200u16 {
        attack.push(peer.packet(&section(0, i, Some((i, u16::MAX)), 8, &[0; 8])));
        attack.push(peer.packet(&section(2, i, Some((0, u16::MAX)), 8, &[0; 8])));
    }
    // Valid first fragments of 500 different unreliable messages, each claiming the most
    // fragments a 4 KiB message needs: reassembly slots are capped, so old ones are evicted.
    let part = [7u8; PART_PAYLOAD_BYTES];
    for id in 0..500u16 {
        attack.push(peer.packet(&section(2, id, Some((0, 15)), part.len() as u16, &part)));
    }
    // Reliable fragments far outside the receive window: dropped.
    for i in 0..200u16 {
        let f = Some((0, 100));
        attack.push(peer.packet(&section(0, 30_000 + i, f, part.len() as u16, &part)));
    }
    send_paced(&peer.socket, game.server_addr, &attack).await;
    let after = game.finish().await;

    let d = delta(&before.stats, &after.stats);
    // Well-formed packets whose channel sections were refused: counted server-wide too.
    let refused = 400 + 200;
    assert_counted("refused sections", d.invalid_other, refused);
    assert_eq!(d.invalid_packets, d.invalid_other, "{d:?}");
    let (&bomber, view) = after
        .peers
        .iter()
        .find(|(_, p)| p.addr == peer_addr)
        .expect("the bomber is connected");
    assert!(
        view.invalid_received as usize * 10 >= refused * 9,
        "{view:?}"
    );
    assert!(view.channels[0].dropped_invalid as usize * 10 >= (200 + 200) * 9);
    assert!(view.channels[2].dropped_invalid as usize * 10 >= 200 * 9);
    // At most `DEFAULT_MAX_REASSEMBLIES` incomplete messages are held. The first fragments
    // that reached channel 2 are its received record bytes over one record's size (the
    // refused u16::MAX-count records are not counted there), and none has completed or
    // timed out (1 s) by now, so what they started and the channel did not drop is held.
    let held_max = snapsync::channel::DEFAULT_MAX_REASSEMBLIES as u64;
    let record_bytes = (FRAGMENT_RECORD_HEADER_BYTES + PART_PAYLOAD_BYTES) as u64;
    let ch2 = &view.channels[2];
    assert_eq!(ch2.bytes_received % record_bytes, 0, "{ch2:?}");
    let started = ch2.bytes_received / record_bytes;
    assert_counted("first fragments", started, 500);
    let held = started - ch2.reassemblies_dropped;
    assert!(held <= held_max, "{held} reassemblies held: {ch2:?}");
    assert!(
        !after.app_messages.contains_key(&bomber),
        "no bomb completed a message"
    );
    assert_eq!(after.client_count, REAL_CLIENTS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_length_prefixes_are_refused_without_allocating() {
    let game = start_game(6).await;
    let mut peer = RawPeer::connect(game.server_addr, 0xC0C).await;
    let peer_addr = peer.socket.local_addr().expect("addr");
    let before = game.start_attack();
    let mut framing = Vec::new();
    let mut records = Vec::new();
    let mut messages = Vec::new();
    for i in 0..100u16 {
        // A datagram section claiming 65535 bytes: the packet is refused.
        framing.push(peer.packet(&[1, 0xFF, 0xFF, 1, 2, 3]));
        // A channel record claiming 65535 bytes: the section is refused.
        records.push(peer.packet(&section(1, i, None, u16::MAX, &[1, 2, 3])));
        // Well-framed reliable messages whose bodies are codec values with hostile length
        // prefixes: they reach the game, whose decode refuses them without allocating.
        let mut body = Vec::new();
        if i % 2 == 0 {
            // A struct whose first field is fine and whose string claims ~2^62 bytes.
            body.push(5);
            body.push(0xFD);
            body.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
        } else {
            body.push(5);
            body.push(0xFC);
            body.extend_from_slice(&(u32::MAX).to_le_bytes());
            body.extend_from_slice(b"short");
        }
        messages.push(peer.packet(&section(0, i, None, body.len() as u16, &body)));
    }
    send_paced(&peer.socket, game.server_addr, &framing).await;
    send_paced(&peer.socket, game.server_addr, &records).await;
    send_paced(&peer.socket, game.server_addr, &messages).await;
    let after = game.finish().await;

    let d = delta(&before.stats, &after.stats);
    // Framing errors drop the packet, record errors the section: both are counted, on the
    // server and on the peer's connection.
    let refused = framing.len() + records.len();
    assert_counted("length prefixes", d.invalid_other, refused);
    assert_eq!(d.invalid_packets, d.invalid_other, "{d:?}");
    let view = after
        .peers
        .values()
        .find(|p| p.addr == peer_addr)
        .expect("the peer is connected");
    assert!(
        view.invalid_received as usize * 10 >= refused * 9,
        "{view:?}"
    );
    // The game saw the hostile messages and refused each.
    assert!(
        after.app_decode_errors as usize * 10 >= messages.len() * 9,
        "{after:?}"
    );
    assert_eq!(after.client_count, REAL_CLIENTS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_from_a_thousand_ports_is_never_amplified() {
    const PORTS: usize = 1000;
    let game = start_game(7).await;
    let mut sockets = Vec::with_capacity(PORTS);
    for _ in 0..PORTS {
        sockets.push(stranger().await);
    }
    let before = game.start_attack();
    // Per port: a proper request (answered with a small challenge), a short request
    // (malformed, unanswered), and a response with a forged cookie (unanswered).
    let mut requests = Vec::new();
    let short = {
        let full = encode(&Packet::ConnectionRequest { client_nonce: 9 });
        with_crc(PROTOCOL_ID, &full[4..100])
    };
    for (i, s) in sockets.iter().enumerate() {
        let nonce = 0xF100_0000 + i as u64;
        let request = encode(&Packet::ConnectionRequest {
            client_nonce: nonce,
        });
        let forged = encode(&Packet::ChallengeResponse {
            client_nonce: nonce,
            timestamp_ms: 0,
            mac: nonce.wrapping_mul(31),
        });
        for d in [&request, &short, &forged] {
            s.send_to(d, game.server_addr).await.expect("send");
        }
        requests.push(nonce);
        if i % 16 == 15 {
            tokio::time::sleep(BURST_PAUSE).await;
        }
    }
    tokio::time::sleep(SETTLE).await;
    let mut answered = 0;
    let mut reply_bytes = 0;
    for (s, nonce) in sockets.iter().zip(&requests) {
        for r in replies(s, Duration::from_millis(1)).await {
            reply_bytes += r.len();
            // Every reply is the challenge for this port's full-size request, and smaller.
            assert!(r.len() <= HANDSHAKE_PACKET_BYTES, "{} byte reply", r.len());
            assert!(
                r.len() < short.len(),
                "a reply as large as the short request"
            );
            match Packet::decode(&r) {
                Ok(Packet::Challenge { client_nonce, .. }) => assert_eq!(client_nonce, *nonce),
                other => panic!("unexpected reply {other:?}"),
            }
            answered += 1;
        }
    }
    let mid = game.view();
    let after = game.finish().await;
    let d = delta(&before.stats, &after.stats);
    assert_counted("challenges", d.challenges_sent, PORTS);
    assert_counted("answered", answered, PORTS);
    assert!(answered <= d.challenges_sent);
    assert_counted("short requests", d.invalid_malformed, PORTS);
    assert_counted("forged cookies", d.invalid_cookie, PORTS);
    assert_eq!(
        d.invalid_packets,
        d.invalid_malformed + d.invalid_cookie,
        "{d:?}"
    );
    assert_eq!(d.connections_accepted, 0);
    // No state for any unverified address.
    assert_eq!(mid.client_count, REAL_CLIENTS);
    assert_eq!(after.client_count, REAL_CLIENTS);
    // Bytes out to the flood, as received, were less than a tenth of the bytes in.
    let flood_in = PORTS * (2 * HANDSHAKE_PACKET_BYTES + short.len());
    assert!(
        reply_bytes * 10 < flood_in,
        "{reply_bytes} bytes of replies to {flood_in} bytes of flood"
    );
}
