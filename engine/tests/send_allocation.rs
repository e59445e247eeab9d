//! What sending costs the allocator once a connection is warm: nothing per packet. A server
//! sends a datagram to each of its clients every tick (a snapshot part), so an allocation per
//! packet is an allocation per client per tick. Measured with a counting global allocator,
//! which serves the whole test binary, hence a file of its own and one test function.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

use snapsync::connection::{Client, ClientConfig, Event, Server, ServerConfig};
use snapsync::packet::MAX_PACKET_BYTES;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Pass every datagram each way until neither side has anything to send.
fn exchange(server: &mut Server, client: &mut Client, client_addr: SocketAddr, now: Instant) {
    let server_addr = client.server_addr();
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    for _ in 0..100 {
        let mut moved = false;
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            server.handle_datagram(now, client_addr, &buf[..t.len]);
            moved = true;
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            client.handle_datagram(now, server_addr, &buf[..t.len]);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_warm_connection_sends_without_allocating() {
    let start = Instant::now();
    let server_addr: SocketAddr = "127.0.0.1:7777".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:20000".parse().unwrap();
    let mut server = Server::new(ServerConfig::default(), start, 1).unwrap();
    let mut client = Client::new(ClientConfig::default(), server_addr, start, 2).unwrap();
    let mut now = start;
    let mut id = None;
    for _ in 0..50 {
        now += Duration::from_millis(10);
        client.handle_timeout(now);
        server.handle_timeout(now);
        exchange(&mut server, &mut client, client_addr, now);
        while let Some((c, e)) = server.poll_event() {
            if matches!(e, Event::Connected { .. }) {
                id = Some(c);
            }
        }
        if id.is_some() {
            break;
        }
    }
    let id = id.expect("connected");
    while client.poll_event().is_some() {}

    let part = [0x5au8; 1000];
    // Room for a tick's packets, made before anything is counted.
    let mut out: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; MAX_PACKET_BYTES]).collect();
    let mut buf = vec![0u8; MAX_PACKET_BYTES];
    // One tick: a part queued and sent (the send is what is counted), then delivered, and the
    // client's acks brought back, so the sent-packet history turns over as in a game.
    let mut tick = |now: Instant, server: &mut Server, client: &mut Client| -> (u64, usize) {
        let region = Region::new(GLOBAL);
        server.send_datagram(now, id, &part).unwrap();
        let mut lens = [0usize; 4];
        let mut sent = 0;
        while sent < out.len() {
            let Some(t) = server.poll_transmit(now, &mut out[sent]) else {
                break;
            };
            lens[sent] = t.len;
            sent += 1;
        }
        let allocations = region.change().allocations as u64;
        for (packet, len) in out.iter().zip(lens).take(sent) {
            client.handle_datagram(now, server_addr, &packet[..len]);
        }
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            server.handle_datagram(now, client_addr, &buf[..t.len]);
        }
        while server.poll_event().is_some() {}
        while client.poll_event().is_some() {}
        (allocations, sent)
    };
    // Warm up: buffers, queues and histories reach their working size.
    for _ in 0..300 {
        now += Duration::from_millis(16);
        tick(now, &mut server, &mut client);
    }
    let (mut allocations, mut sent) = (0, 0);
    for _ in 0..300 {
        now += Duration::from_millis(16);
        let (a, n) = tick(now, &mut server, &mut client);
        allocations += a;
        sent += n;
    }
    assert!(sent >= 300, "{sent} packets sent");
    assert_eq!(allocations, 0, "allocations while sending {sent} packets");
}
