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

#[tokio::test(flavor = "current_thread")]
async fn loopback_eight_clients_exchange_and_disconnect() {
    let mut server = server().await;
    let addr = server.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(6);
        let mut received = std::collections::BTreeMap::<ClientId, u64>::new();
        let mut disconnected = 0;
        let mut connected = 0;
        while Instant::now() < end && disconnected < 8 {
            server
                .drive_until(Instant::now() + Duration::from_millis(16))
                .await
                .unwrap();
            let now = server.now();
            while let Some((id, e)) = server.poll_event() {
                match e {
                    Event::Connected { .. } => connected += 1,
                    Event::Datagram { payload, .. } => {
                        *received.entry(id).or_default() += 1;
                        // Echo it back.
                        let _ = server.endpoint_mut().send_datagram(now, id, &payload);
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
    // Exchange for a bounded 2 s at 60 Hz.
    let end = Instant::now() + Duration::from_secs(2);
    let mut echoes = [0u64; 8];
    let mut sent = [0u64; 8];
    while Instant::now() < end {
        let step = Instant::now() + Duration::from_millis(16);
        for (i, c) in clients.iter_mut().enumerate() {
            let now = c.now();
            if c.endpoint_mut().send_datagram(now, &[i as u8; 32]).is_ok() {
                sent[i] += 1;
            }
            c.flush();
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.drive_until(step).await.unwrap();
            while let Some(e) = c.poll_event() {
                if let Event::Datagram { payload, .. } = e {
                    assert_eq!(
                        payload,
                        vec![i as u8; 32],
                        "an echo reaches the right client"
                    );
                    echoes[i] += 1;
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
    for i in 0..8 {
        // Loopback loses nothing in practice; allow a little for a busy machine.
        assert!(sent[i] > 60, "client {i} sent {}", sent[i]);
        assert!(
            echoes[i] * 10 >= sent[i] * 9,
            "client {i}: {} echoes of {}",
            echoes[i],
            sent[i]
        );
    }
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
    let started = Instant::now();
    let err = NetClient::connect(addr, config, 1, None).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        err,
        ConnectError::Refused {
            reason: DisconnectReason::ConnectTimedOut,
            ..
        }
    ));
    assert!(err.to_string().contains("did not answer"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn conditioner_applies_on_real_sockets() {
    let mut server = server().await;
    let addr = server.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            server
                .drive_until(Instant::now() + Duration::from_millis(10))
                .await
                .unwrap();
            while server.poll_event().is_some() {}
            server.flush();
        }
    });
    let mut client = NetClient::connect(addr, ClientConfig::default(), 5, None)
        .await
        .unwrap();
    // Everything the client sends is now dropped: the server stops acking it.
    let all_lost = ConditionerConfig {
        loss_pct: 100.0,
        enabled: true,
        ..ConditionerConfig::off()
    };
    let acked_before = client
        .endpoint()
        .connection_stats()
        .unwrap()
        .link
        .packets_acked;
    client
        .set_conditioner(ConditionerConfig::off(), all_lost)
        .unwrap();
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        let now = client.now();
        let _ = client.endpoint_mut().send_datagram(now, &[0; 10]);
        client.flush();
        client
            .drive_until(Instant::now() + Duration::from_millis(16))
            .await
            .unwrap();
    }
    let stats = client.endpoint().connection_stats().unwrap();
    assert!(stats.link.packets_lost > 20, "{:?}", stats.link);
    // Packets in flight at the switch may still be acked; nothing sent after it.
    assert!(
        stats.link.packets_acked <= acked_before + 2,
        "{:?}",
        stats.link
    );
    server_task.abort();
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
