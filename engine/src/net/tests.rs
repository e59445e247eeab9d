//! Real sockets, loopback only, bounded in time.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::conditioner::ConditionerConfig;

async fn server() -> NetServer {
    NetServer::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::default(), 1)
        .await
        .unwrap()
}

/// Reliable messages each client sends in the loopback exchange.
const MESSAGES_PER_CLIENT: u32 = 60;
/// Longest any loopback test waits for what it counts; only a hang reaches it.
const LOOPBACK_LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "current_thread")]
async fn loopback_eight_clients_exchange_and_disconnect() {
    let mut server = server().await;
    let addr = server.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let end = Instant::now() + LOOPBACK_LIMIT;
        let mut received = std::collections::BTreeMap::<ClientId, u32>::new();
        let mut disconnected = 0;
        let mut connected = 0;
        while Instant::now() < end && disconnected < 8 {
            server
                .drive_until(Instant::now() + Duration::from_millis(5))
                .await
                .unwrap();
            let now = server.now();
            while let Some((id, e)) = server.poll_event() {
                match e {
                    Event::Connected { .. } => connected += 1,
                    Event::Message { payload, .. } => {
                        *received.entry(id).or_default() += 1;
                        // Echo it back.
                        server
                            .endpoint_mut()
                            .send_message(now, id, 0, &payload)
                            .unwrap();
                    }
                    Event::Disconnected { reason } => {
                        assert_eq!(
                            reason,
                            DisconnectReason::Peer(crate::packet::DisconnectReasonCode::Requested)
                        );
                        disconnected += 1;
                    }
                    _ => {}
                }
            }
            server.flush();
        }
        (connected, disconnected, received, server.endpoint().stats())
    });

    let mut clients = Vec::new();
    for i in 0..8 {
        let c = NetClient::connect(addr, ClientConfig::default(), 100 + i, None)
            .await
            .expect("connect on loopback");
        clients.push(c);
    }
    // Each client sends a fixed number of reliable messages (channel 0, reliable-ordered)
    // and waits for every echo: counts, not rates, so a slow machine only takes longer.
    let end = Instant::now() + LOOPBACK_LIMIT;
    let mut echoes: [Vec<u32>; 8] = Default::default();
    let mut sent = [0u32; 8];
    while Instant::now() < end
        && echoes
            .iter()
            .any(|e| e.len() < MESSAGES_PER_CLIENT as usize)
    {
        let step = Instant::now() + Duration::from_millis(5);
        for (i, c) in clients.iter_mut().enumerate() {
            if sent[i] < MESSAGES_PER_CLIENT {
                let now = c.now();
                let m = [i as u8, sent[i] as u8];
                c.endpoint_mut().send_message(now, 0, &m).unwrap();
                sent[i] += 1;
            }
            c.flush();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.drive_until(step).await.unwrap();
            while let Some(e) = c.poll_event() {
                if let Event::Message { payload, .. } = e {
                    assert_eq!(payload[0], i as u8, "an echo reaches the right client");
                    echoes[i].push(u32::from(payload[1]));
                }
            }
        }
    }
    for c in &mut clients {
        c.endpoint_mut().disconnect();
        c.flush();
    }
    for c in &mut clients {
        c.drive_until(Instant::now() + Duration::from_millis(50))
            .await
            .unwrap();
        let mut reasons = Vec::new();
        while let Some(e) = c.poll_event() {
            if let Event::Disconnected { reason } = e {
                reasons.push(reason);
            }
        }
        assert_eq!(reasons, vec![DisconnectReason::Requested]);
    }
    let (connected, disconnected, received, stats) = server_task.await.unwrap();
    assert_eq!(connected, 8);
    assert_eq!(disconnected, 8, "every client's goodbye reached the server");
    assert_eq!(received.len(), 8);
    let want: Vec<u32> = (0..MESSAGES_PER_CLIENT).collect();
    for (i, e) in echoes.iter().enumerate() {
        assert_eq!(e, &want, "client {i}: every echo, once, in order");
    }
    assert!(
        received.values().all(|&n| n == MESSAGES_PER_CLIENT),
        "{received:?}"
    );
    assert_eq!(stats.invalid_packets, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn connect_to_a_silent_port_fails_with_a_clear_error() {
    // A bound socket that never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let err = NetClient::connect(addr, config, 1, None).await.unwrap_err();
    assert!(matches!(
        err,
        ConnectError::Refused {
            reason: DisconnectReason::ConnectTimedOut,
            ..
        }
    ));
    assert!(err.to_string().contains("did not answer"), "{err}");
}

/// A server and one connected client on loopback, driven from one task so a test can
/// interleave their steps and change either side's conditioner between them.
async fn connected_pair(seed: u64) -> (NetServer, NetClient, ClientId) {
    let mut server = server().await;
    let addr = server.local_addr().unwrap();
    let connect = NetClient::connect(addr, ClientConfig::default(), seed, None);
    tokio::pin!(connect);
    let end = Instant::now() + LOOPBACK_LIMIT;
    let client = loop {
        assert!(Instant::now() < end, "no connection on loopback");
        tokio::select! {
            c = &mut connect => break c.expect("connect on loopback"),
            r = server.drive_until(Instant::now() + Duration::from_millis(5)) => r.unwrap(),
        }
    };
    let id = loop {
        assert!(Instant::now() < end, "the server saw no connection");
        server
            .drive_until(Instant::now() + Duration::from_millis(5))
            .await
            .unwrap();
        if let Some(id) = server.endpoint().clients().next() {
            break id;
        }
    };
    while server.poll_event().is_some() {}
    (server, client, id)
}

/// Drive both sides for a few milliseconds; returns the datagram counters each received
/// (server's, client's), in arrival order.
async fn step(server: &mut NetServer, client: &mut NetClient) -> (Vec<u32>, Vec<u32>) {
    let counter = |payload: Vec<u8>| u32::from_le_bytes(payload.try_into().expect("4 bytes"));
    let until = Instant::now() + Duration::from_millis(2);
    server.drive_until(until).await.unwrap();
    client.drive_until(until).await.unwrap();
    let mut at_server = Vec::new();
    while let Some((_, e)) = server.poll_event() {
        if let Event::Datagram { payload, .. } = e {
            at_server.push(counter(payload));
        }
    }
    let mut at_client = Vec::new();
    while let Some(e) = client.poll_event() {
        if let Event::Datagram { payload, .. } = e {
            at_client.push(counter(payload));
        }
    }
    (at_server, at_client)
}

fn delayed(ms: u64) -> ConditionerConfig {
    ConditionerConfig {
        latency: Duration::from_millis(ms),
        enabled: true,
        ..ConditionerConfig::off()
    }
}

fn all_lost() -> ConditionerConfig {
    ConditionerConfig {
        loss_pct: 100.0,
        enabled: true,
        ..ConditionerConfig::off()
    }
}

/// Datagrams each phase of the switch tests sends.
const PHASE_DATAGRAMS: u32 = 30;

#[tokio::test(flavor = "current_thread")]
async fn outbound_conditioner_changes_under_load_keep_order_and_counts() {
    let (mut server, mut client, _) = connected_pair(7).await;
    let mut got = Vec::new();
    let mut next = 0u32;
    let send_phase = |client: &mut NetClient, next: &mut u32| {
        let now = client.now();
        client
            .endpoint_mut()
            .send_datagram(now, &next.to_le_bytes())
            .unwrap();
        *next += 1;
        client.flush();
    };
    let packets_sent = |c: &NetClient| c.endpoint().connection_stats().unwrap().link.packets_sent;

    // Off: every packet goes straight to the socket; the conditioner sees none.
    let (sock0, link0) = (client.socket_stats().sent, packets_sent(&client));
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut client, &mut next);
        got.extend(step(&mut server, &mut client).await.0);
    }
    assert_eq!(
        client.conditioners().1.stats().pushed,
        0,
        "no packet was queued"
    );
    assert_eq!(
        client.socket_stats().sent - sock0,
        packets_sent(&client) - link0
    );

    // A 150 ms outbound delay, then off again while datagrams are still held: those sent
    // after the switch must queue behind them (or the peer would see them overtake).
    client
        .set_conditioner(ConditionerConfig::off(), delayed(150))
        .unwrap();
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut client, &mut next);
        got.extend(step(&mut server, &mut client).await.0);
    }
    assert!(
        !client.conditioners().1.is_idle(),
        "nothing held at the switch"
    );
    client
        .set_conditioner(ConditionerConfig::off(), ConditionerConfig::off())
        .unwrap();
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut client, &mut next);
        got.extend(step(&mut server, &mut client).await.0);
    }
    let end = Instant::now() + LOOPBACK_LIMIT;
    while got.len() < next as usize && Instant::now() < end {
        got.extend(step(&mut server, &mut client).await.0);
    }
    assert_eq!(
        got,
        (0..next).collect::<Vec<_>>(),
        "every datagram once, in order"
    );
    assert!(client.conditioners().1.is_idle());
    let out = client.conditioners().1.stats();
    assert!(out.pushed >= u64::from(PHASE_DATAGRAMS), "{out:?}");
    assert_eq!(out.passed, out.pushed, "the delay lost nothing");
    // The inbound side was never touched.
    assert_eq!(client.conditioners().0.stats().pushed, 0);

    // Drained and off: straight to the socket again.
    let pushed = out.pushed;
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut client, &mut next);
        step(&mut server, &mut client).await;
    }
    assert_eq!(client.conditioners().1.stats().pushed, pushed);

    // Everything lost: the endpoint keeps sending, the socket sends nothing, and every
    // packet is counted as dropped.
    client
        .set_conditioner(ConditionerConfig::off(), all_lost())
        .unwrap();
    let (sock0, link0, dropped0) = (
        client.socket_stats().sent,
        packets_sent(&client),
        client.conditioners().1.stats().dropped,
    );
    let mut arrived = 0;
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut client, &mut next);
        arrived += step(&mut server, &mut client).await.0.len();
    }
    let link = packets_sent(&client) - link0;
    assert!(link >= u64::from(PHASE_DATAGRAMS));
    assert_eq!(client.socket_stats().sent, sock0);
    assert_eq!(client.conditioners().1.stats().dropped - dropped0, link);
    assert_eq!(arrived, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn inbound_conditioner_changes_under_load_keep_order_and_counts() {
    let (mut server, mut client, id) = connected_pair(8).await;
    let mut got = Vec::new();
    let mut next = 0u32;
    let send_phase = |server: &mut NetServer, next: &mut u32| {
        let now = server.now();
        server
            .endpoint_mut()
            .send_datagram(now, id, &next.to_le_bytes())
            .unwrap();
        *next += 1;
        server.flush();
    };
    let received = |c: &NetClient| {
        c.endpoint()
            .connection_stats()
            .unwrap()
            .link
            .packets_received
    };

    // Off: handed to the endpoint in place.
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut server, &mut next);
        got.extend(step(&mut server, &mut client).await.1);
    }
    assert_eq!(
        client.conditioners().0.stats().pushed,
        0,
        "no packet was queued"
    );

    // A 150 ms inbound delay, then off while datagrams are still held: later arrivals wait
    // behind them.
    client
        .set_conditioner(delayed(150), ConditionerConfig::off())
        .unwrap();
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut server, &mut next);
        got.extend(step(&mut server, &mut client).await.1);
    }
    assert!(
        !client.conditioners().0.is_idle(),
        "nothing held at the switch"
    );
    client
        .set_conditioner(ConditionerConfig::off(), ConditionerConfig::off())
        .unwrap();
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut server, &mut next);
        got.extend(step(&mut server, &mut client).await.1);
    }
    let end = Instant::now() + LOOPBACK_LIMIT;
    while got.len() < next as usize && Instant::now() < end {
        got.extend(step(&mut server, &mut client).await.1);
    }
    assert_eq!(
        got,
        (0..next).collect::<Vec<_>>(),
        "every datagram once, in order"
    );
    let inb = client.conditioners().0.stats();
    assert!(inb.pushed >= u64::from(PHASE_DATAGRAMS), "{inb:?}");
    assert_eq!(inb.passed, inb.pushed);
    // The outbound side was never touched.
    assert_eq!(client.conditioners().1.stats().pushed, 0);

    // Everything lost on the way in: the socket reads each datagram, the endpoint sees none.
    client
        .set_conditioner(all_lost(), ConditionerConfig::off())
        .unwrap();
    let (sock0, link0, dropped0) = (
        client.socket_stats().received,
        received(&client),
        client.conditioners().0.stats().dropped,
    );
    let mut arrived = 0;
    for _ in 0..PHASE_DATAGRAMS {
        send_phase(&mut server, &mut next);
        arrived += step(&mut server, &mut client).await.1.len();
    }
    let read = client.socket_stats().received - sock0;
    assert!(read >= u64::from(PHASE_DATAGRAMS), "{read} read");
    assert_eq!(client.conditioners().0.stats().dropped - dropped0, read);
    assert_eq!(received(&client), link0);
    assert_eq!(arrived, 0);
}

/// A replication server on loopback for `secs`, one moving entity; returns the inputs it
/// applied and who left.
async fn replication_server(
    mut server: ReplicationServer,
    secs: u64,
) -> (u64, Vec<replication::CloseReason>) {
    use crate::snapshot::{EntityId, EntityState, Transform, World};
    let mut world = World::new();
    world.insert(EntityId(0), EntityState::new(Transform::default()));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut inputs = 0;
    let mut left = Vec::new();
    let mut x = 0.0;
    while Instant::now() < end && left.is_empty() {
        server
            .drive_until(Instant::now() + Duration::from_millis(16))
            .await
            .unwrap();
        while let Some(e) = server.poll_event() {
            match e {
                replication::ServerEvent::Input { .. } => inputs += 1,
                replication::ServerEvent::ClientLeft { reason, .. } => {
                    left.push(replication::CloseReason::Connection(reason))
                }
                _ => {}
            }
        }
        x += 0.1;
        world.get_mut(EntityId(0)).unwrap().transform.position.x = x;
        let now = server.now();
        server.endpoint_mut().tick(now, &world);
        server.flush();
    }
    (inputs, left)
}

/// Join, play half a second, leave; returns the snapshots seen.
async fn replication_client(mut client: ReplicationClient<u32>) -> u64 {
    let end = Instant::now() + Duration::from_millis(500);
    while Instant::now() < end {
        client
            .drive_until(Instant::now() + Duration::from_millis(16))
            .await
            .unwrap();
        let now = client.now();
        let c = client.endpoint_mut();
        for _ in 0..c.inputs_due(now) {
            c.send_input(now, 7).unwrap();
        }
        client.flush();
    }
    let seen = client.endpoint().stats().snapshots_received;
    client.close().await.unwrap();
    seen
}

#[tokio::test(flavor = "current_thread")]
async fn replication_over_udp_and_over_a_tcp_stream_on_loopback() {
    for over_tcp in [false, true] {
        let mut server = ReplicationServer::bind_replication(
            "127.0.0.1:0".parse().unwrap(),
            replication::ServerConfig::default(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        if over_tcp {
            server.listen_stream(addr).await.unwrap();
        }
        let serving = tokio::spawn(replication_server(server, 5));
        let config = replication::ClientConfig::default();
        let client = if over_tcp {
            ReplicationClient::<u32>::join_stream(addr, config).await
        } else {
            ReplicationClient::<u32>::join(addr, config, None).await
        }
        .unwrap_or_else(|e| panic!("tcp {over_tcp}: join on loopback: {e}"));
        assert!(client.endpoint().welcome().is_some());
        let snapshots = replication_client(client).await;
        let (inputs, left) = serving.await.unwrap();
        assert!(snapshots > 0, "tcp {over_tcp}: no snapshot");
        assert!(inputs > 0, "tcp {over_tcp}: no input");
        assert_eq!(
            left,
            vec![replication::CloseReason::Connection(
                DisconnectReason::Peer(crate::packet::DisconnectReasonCode::Requested)
            )],
            "tcp {over_tcp}: a clean goodbye"
        );
    }
}

/// A replication server on loopback that accepts UDP and, on the same port number over TCP,
/// WebSockets. The UDP port is the kernel's choice; when that number is taken for TCP by
/// something else, another is tried.
async fn server_with_websocket(
    make: impl Fn(SocketAddr) -> replication::ServerConfig,
) -> ReplicationServer {
    for _ in 0..32 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let Ok(listener) = tokio::net::TcpListener::bind(addr).await else {
            continue;
        };
        let endpoint = replication::Server::new(make(addr), now()).unwrap();
        let mut server = ReplicationServer::new(socket, endpoint, 5);
        assert_eq!(server.listen_websocket_on(listener).unwrap(), addr);
        return server;
    }
    panic!("no port number free for both UDP and TCP on loopback");
}

/// Serve one moving entity until `clients` have left (or the loopback limit passes);
/// returns how many left and the server's stream counters.
async fn serve_until_left(mut server: ReplicationServer, clients: usize) -> (usize, StreamStats) {
    use crate::snapshot::{EntityId, EntityState, Transform, World};
    let mut world = World::new();
    world.insert(EntityId(0), EntityState::new(Transform::default()));
    let end = Instant::now() + LOOPBACK_LIMIT;
    let mut left = 0;
    let mut x = 0.0;
    while Instant::now() < end && left < clients {
        server
            .drive_until(Instant::now() + Duration::from_millis(16))
            .await
            .unwrap();
        while let Some(e) = server.poll_event() {
            if let replication::ServerEvent::ClientLeft { .. } = e {
                left += 1;
            }
        }
        x += 0.1;
        world.get_mut(EntityId(0)).unwrap().transform.position.x = x;
        let now = server.now();
        server.endpoint_mut().tick(now, &world);
        server.flush();
    }
    (left, server.stream_stats())
}

/// The blocked client's wait for an answer over UDP: short, so the test is quick; nothing
/// in it depends on the machine being fast, since the blocked client can never get an
/// answer over UDP, however long it waits.
const TEST_FALLBACK_AFTER: Duration = Duration::from_millis(300);
/// The unblocked client's: long, so a loaded machine that is slow to answer on loopback
/// cannot push it onto the stream.
const GENEROUS_FALLBACK_AFTER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "current_thread")]
async fn a_client_whose_udp_is_blocked_falls_back_to_a_websocket_another_stays_on_udp() {
    let server = server_with_websocket(|_| replication::ServerConfig::default()).await;
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(serve_until_left(server, 2));

    // Everything this client sends over UDP is lost: the server never hears of it.
    let started = Instant::now();
    let blocked = ReplicationClient::<u32>::join_with_fallback(
        addr,
        replication::ClientConfig::default(),
        Some((ConditionerConfig::off(), all_lost())),
        Fallback {
            after: TEST_FALLBACK_AFTER,
            addr: None,
        },
    )
    .await
    .expect("joined over the websocket");
    assert!(
        started.elapsed() >= TEST_FALLBACK_AFTER,
        "waited for udp first"
    );
    assert_eq!(blocked.transport_in_use(), TransportInUse::WebSocket);
    assert_eq!(blocked.stream_stats().websockets_opened, 1);
    assert_eq!(
        blocked.conditioners().1.stats().dropped,
        blocked.socket_stats().sent,
        "the fresh driver sent nothing over udp"
    );
    let snapshots = replication_client(blocked).await;
    assert!(snapshots > 0, "snapshots over the websocket");

    let open = ReplicationClient::<u32>::join_with_fallback(
        addr,
        replication::ClientConfig::default(),
        None,
        Fallback {
            after: GENEROUS_FALLBACK_AFTER,
            addr: None,
        },
    )
    .await
    .expect("joined over udp");
    assert_eq!(open.transport_in_use(), TransportInUse::Udp);
    assert_eq!(open.stream_stats().opened, 0);
    let snapshots = replication_client(open).await;
    assert!(snapshots > 0, "snapshots over udp");

    let (left, streams) = serving.await.unwrap();
    assert_eq!(left, 2, "both said goodbye");
    assert_eq!(streams.websockets_opened, 1, "one client came by websocket");
}

#[tokio::test(flavor = "current_thread")]
async fn secure_mode_falls_back_to_a_websocket_on_another_port_with_the_same_token() {
    use crate::connection::{ClientSecurity, SecureServerConfig, Security};
    use crate::netcode::{self, TokenSettings, generate_connect_token};
    let unix = 1_800_000_000;
    let key = netcode::generate_key();
    let mut server = server_with_websocket(|public| {
        let mut config = replication::ServerConfig::default();
        config.server.security = Security::Secure(SecureServerConfig {
            netcode: netcode::ServerConfig::new(42, key, public),
            unix_secs_at_start: unix,
        });
        config
    })
    .await;
    let public = server.local_addr().unwrap();
    // A second WebSocket listener on a port of its own: the token names only the UDP
    // address, which the server checks against its own public address, not the port the
    // bytes came in on.
    let elsewhere = server
        .listen_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert_ne!(elsewhere, public);
    let serving = tokio::spawn(serve_until_left(server, 1));
    let settings = TokenSettings {
        protocol_id: 42,
        client_id: 9,
        server_addresses: vec![public],
        expire_seconds: 60,
        timeout_seconds: 5,
        user_data: [0; netcode::USER_DATA_BYTES],
    };
    let token = generate_connect_token(unix, &settings, &key).unwrap();
    let mut config = replication::ClientConfig::default();
    config.client.security = ClientSecurity::Secure {
        token: token.to_bytes().to_vec(),
    };
    let client = ReplicationClient::<u32>::join_with_fallback(
        public,
        config,
        Some((ConditionerConfig::off(), all_lost())),
        Fallback {
            after: TEST_FALLBACK_AFTER,
            addr: Some(elsewhere),
        },
    )
    .await
    .expect("joined over the websocket in secure mode");
    assert_eq!(client.transport_in_use(), TransportInUse::WebSocket);
    assert!(client.endpoint().connection().secure_stats().is_some());
    let snapshots = replication_client(client).await;
    assert!(snapshots > 0, "snapshots over the secure websocket");
    let (left, streams) = serving.await.unwrap();
    assert_eq!(left, 1);
    assert_eq!(streams.websockets_opened, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn an_unusable_fallback_is_refused_before_anything_is_sent() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for fallback in [
        Fallback {
            after: Duration::ZERO,
            addr: None,
        },
        Fallback {
            after: Duration::from_secs(1),
            addr: Some("0.0.0.0:7777".parse().unwrap()),
        },
        Fallback {
            after: Duration::from_secs(1),
            addr: Some("127.0.0.1:0".parse().unwrap()),
        },
    ] {
        let err = ReplicationClient::<u32>::join_with_fallback(
            addr,
            replication::ClientConfig::default(),
            None,
            fallback,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ConnectError::Config(_)), "{err}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_server_without_websockets_gives_a_clear_no_answer_then_a_refusal() {
    // Nothing answers over UDP, and nothing listens for TCP at the same number.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let err = ReplicationClient::<u32>::join_udp(
        addr,
        replication::ClientConfig::default(),
        None,
        None,
        Some(TEST_FALLBACK_AFTER),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ConnectError::NoAnswer { after, .. } if after == TEST_FALLBACK_AFTER),
        "{err}"
    );
    // The fallback then finds no WebSocket: an error, not a hang (the TCP port may be
    // closed, refusing at once, or held by something that is not a WebSocket server).
    let mut config = replication::ClientConfig::default();
    config.client.connect_timeout = Duration::from_secs(2);
    let r = ReplicationClient::<u32>::join_with_fallback(
        addr,
        config,
        None,
        Fallback {
            after: TEST_FALLBACK_AFTER,
            addr: None,
        },
    )
    .await;
    assert!(r.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn a_websocket_that_closes_ends_its_connection_at_once_not_at_the_timeout() {
    // The server side: a client whose WebSocket goes away (its process died, say) leaves
    // with `StreamClosed`; a timeout would say `TimedOut`, and only after 5 s.
    let server = server_with_websocket(|_| replication::ServerConfig::default()).await;
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(replication_server(server, 8));
    let mut client =
        ReplicationClient::<u32>::join_websocket(addr, replication::ClientConfig::default(), None)
            .await
            .expect("joined over the websocket");
    client
        .drive_until(Instant::now() + Duration::from_millis(200))
        .await
        .unwrap();
    // No goodbye: the driver and its stream are dropped.
    drop(client);
    let (_, left) = serving.await.unwrap();
    assert_eq!(
        left,
        vec![replication::CloseReason::Connection(
            DisconnectReason::StreamClosed
        )]
    );

    // The client side: the server goes away without a goodbye; the client ends at once.
    let server = server_with_websocket(|_| replication::ServerConfig::default()).await;
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(replication_server(server, 1));
    let mut client =
        ReplicationClient::<u32>::join_websocket(addr, replication::ClientConfig::default(), None)
            .await
            .expect("joined over the websocket");
    // The server task ends after its second and drops its streams. Bounded: well within the
    // client's 5 s timeout, whose reason would differ anyway.
    let end = Instant::now() + Duration::from_secs(4);
    while client.endpoint().close_reason().is_none() && Instant::now() < end {
        client
            .drive_until(Instant::now() + Duration::from_millis(20))
            .await
            .unwrap();
    }
    serving.await.unwrap();
    assert_eq!(
        client.endpoint().close_reason(),
        Some(&replication::CloseReason::Connection(
            DisconnectReason::StreamClosed
        ))
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bad_websocket_peers_are_cut_off_and_a_good_one_still_plays() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = server_with_websocket(|_| replication::ServerConfig::default()).await;
    let addr = server.local_addr().unwrap();
    let serving = tokio::spawn(serve_until_left(server, 1));
    let url = format!("ws://{addr}{WEBSOCKET_PATH}");

    // Not HTTP at all: the upgrade fails and the connection is closed.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0xff; 600]).await.unwrap();
    // A text message is not this protocol; a binary message larger than any packet is
    // refused by the WebSocket layer before it is buffered whole; random bytes in a binary
    // message reach the endpoint, which drops and counts them.
    for bad in [
        Message::Text("hello".into()),
        Message::Binary(vec![0u8; 64 * 1024].into()),
        Message::Binary(vec![0x5a; 40].into()),
    ] {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let _ = ws.send(bad).await;
        // Read until the server ends the stream or a short while passes: either is fine,
        // what matters is that the server carries on.
        let _ = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    }

    let client =
        ReplicationClient::<u32>::join_websocket(addr, replication::ClientConfig::default(), None)
            .await
            .expect("a good client still joins");
    let snapshots = replication_client(client).await;
    assert!(snapshots > 0);
    let (left, streams) = serving.await.unwrap();
    assert_eq!(left, 1);
    assert!(streams.refused >= 1, "{streams:?}");
    assert_eq!(streams.websockets_opened, 4, "{streams:?}");
}
