//! What snapshots and inputs cost the allocator once client and server are warm: nothing
//! per snapshot a client takes in, nothing per input it sends, nothing per input the server
//! takes in (the server's tick is `tick_allocation.rs`'s). A game's client takes in 30 to 60
//! snapshots a second and sends an input a tick for the whole session, a server takes an
//! input a tick from every player, and a process that simulates many clients (a bot fleet,
//! the tick-rate bench) does it tens of thousands of times a second; a new world per
//! snapshot, a new list of transforms for the playout buffer, a new buffer per datagram and
//! per input would be a steady churn of the allocator and, when it gives memory back to the
//! system and takes it again, of freshly zeroed pages.
//!
//! The network is driven by hand here, so that only the endpoints' own calls are counted:
//! datagrams in flight and the lossy link are the harness's, and so is the server's tick. Measured with a
//! counting global allocator, which serves the whole test binary, hence a file of its own
//! and one test function.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

use snapsync::glam::Vec3;
use snapsync::replication::{Client, ClientConfig, Server, ServerConfig, ServerEvent, View};
use snapsync::snapshot::{EntityId, EntityState, QuantizeConfig, Transform, World};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TICK: Duration = Duration::from_micros(16_667);
const STEP: Duration = Duration::from_millis(1);
const LATENCY: Duration = Duration::from_millis(20);
const ENTITIES: u32 = 300;

/// A datagram on its way: when it arrives, from where, to which client (`None`: the
/// server), and its bytes.
type InFlight = (Instant, SocketAddr, Option<usize>, Vec<u8>);

/// What the clients' calls allocated during `measured` ticks after `warm_up`.
struct Count {
    /// In taking in datagrams (`Client::handle_datagram`): the snapshots' receipt.
    receipt: u64,
    /// In all of their calls: the receipt, timers, acks and keep-alives sent, inputs when
    /// they play, frames drawn and events read.
    all: u64,
    /// Snapshots received.
    snapshots: u64,
    /// In the server's receipt of the clients' datagrams and in handing their inputs to the
    /// game (which gives each input's buffer back).
    server: u64,
    /// Inputs the server handed to the game.
    inputs: u64,
}

/// What `clients` clients (players that send an input each tick when `play`, else
/// spectators), each drawing a frame a tick and reading its events, allocate on links that
/// lose about `loss_pct` of the datagrams each way (a seeded draw) with 20 ms of latency.
fn allocations(clients: usize, play: bool, loss_pct: u64, warm_up: u32, measured: u32) -> Count {
    let start = Instant::now();
    let config = ServerConfig {
        quantize: QuantizeConfig {
            tick_interval: TICK,
            ..QuantizeConfig::default()
        },
        // Small parts, so that most ticks go in several and a lost one leaves its tick
        // incomplete: the receiver's path for waiting parts runs too.
        max_part_bytes: 600,
        seed: Some(11),
        ..ServerConfig::default()
    };
    let server_addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let mut server = Server::new(config, start).unwrap();
    let addrs: Vec<SocketAddr> = (0..clients)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16)))
        .collect();
    let mut players: Vec<Client<u8>> = (0..clients)
        .map(|i| {
            let config = ClientConfig {
                seed: Some(100 + i as u64),
                ..ClientConfig::default()
            };
            Client::new(config, server_addr, start).unwrap()
        })
        .collect();
    let mut views: Vec<View> = (0..clients).map(|_| View::default()).collect();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut buf = vec![0u8; 2048];
    // The lengths of what a client sent in one step (room made here, outside the count).
    let mut sent: Vec<usize> = Vec::with_capacity(64);
    let mut draw = 0x9e37_79b9_7f4a_7c15u64;
    let mut lost = move || {
        // xorshift64: the same losses on every run.
        draw ^= draw << 13;
        draw ^= draw >> 7;
        draw ^= draw << 17;
        draw % 100 < loss_pct
    };
    let mut world = World::new();
    let mut count = Count {
        receipt: 0,
        all: 0,
        snapshots: 0,
        server: 0,
        inputs: 0,
    };
    let mut now = start;
    for n in 0..warm_up + measured {
        let measuring = n >= warm_up;
        let before: u64 = players.iter().map(|c| c.stats().snapshots_received).sum();
        let (mut receipt, mut all, mut by_server, mut inputs) = (0u64, 0u64, 0u64, 0u64);
        let tick_end = now + TICK;
        while now < tick_end {
            now = (now + STEP).min(tick_end);
            // Deliver what is due, in order of sending (every datagram takes the same time).
            while in_flight.front().is_some_and(|d| d.0 <= now) {
                let Some((_, from, to, bytes)) = in_flight.pop_front() else {
                    break;
                };
                match to {
                    None => {
                        let region = Region::new(GLOBAL);
                        server.handle_datagram(now, from, &bytes);
                        let c = region.change();
                        by_server += (c.allocations + c.reallocations) as u64;
                    }
                    Some(i) => {
                        let region = Region::new(GLOBAL);
                        players[i].handle_datagram(now, from, &bytes);
                        let c = region.change();
                        receipt += (c.allocations + c.reallocations) as u64;
                    }
                }
            }
            server.handle_timeout(now);
            while let Some(t) = server.poll_transmit(now, &mut buf) {
                if let Some(i) = addrs.iter().position(|a| *a == t.destination)
                    && !lost()
                {
                    in_flight.push_back((
                        now + LATENCY,
                        server_addr,
                        Some(i),
                        buf[..t.len].to_vec(),
                    ));
                }
            }
            for (i, client) in players.iter_mut().enumerate() {
                let region = Region::new(GLOBAL);
                client.handle_timeout(now);
                sent.clear();
                while let Some(t) = client.poll_transmit(now, &mut buf) {
                    sent.push(t.len);
                }
                let c = region.change();
                all += (c.allocations + c.reallocations) as u64;
                for &len in &sent {
                    if !lost() {
                        in_flight.push_back((now + LATENCY, addrs[i], None, buf[..len].to_vec()));
                    }
                }
            }
        }
        for (client, view) in players.iter_mut().zip(&mut views) {
            let region = Region::new(GLOBAL);
            if play {
                let _ = client.send_input(now, 1);
            }
            client.view_into(now, view);
            // A game reads its events every frame.
            while client.poll_event().is_some() {}
            let c = region.change();
            all += (c.allocations + c.reallocations) as u64;
        }
        let next = server.current_tick().0 + 1;
        for id in 0..ENTITIES {
            // Two thirds moving on circles, a third at rest.
            let t = next as f32 * TICK.as_secs_f32();
            let w = if id % 3 == 0 {
                0.0
            } else {
                0.5 + (id % 5) as f32 * 0.2
            };
            let a = w * t + id as f32;
            world.insert(
                EntityId(id),
                EntityState::new(Transform {
                    position: Vec3::new(a.cos() * 20.0, 0.0, a.sin() * 20.0),
                    ..Transform::default()
                }),
            );
        }
        let region = Region::new(GLOBAL);
        while let Some(e) = server.poll_event() {
            if let ServerEvent::Input { bytes, .. } = e {
                inputs += 1;
                server.recycle_input(bytes);
            }
        }
        let c = region.change();
        by_server += (c.allocations + c.reallocations) as u64;
        server.tick(now, &world);
        let after: u64 = players.iter().map(|c| c.stats().snapshots_received).sum();
        if measuring {
            count.receipt += receipt;
            count.all += receipt + all;
            count.snapshots += after - before;
            count.server += by_server;
            count.inputs += inputs;
        }
    }
    count
}

#[test]
fn warm_clients_and_server_exchange_snapshots_and_inputs_without_allocating() {
    const TICKS: u32 = 1_000;
    for (play, loss_pct) in [(false, 0), (false, 5), (true, 0), (true, 5)] {
        let c = allocations(4, play, loss_pct, 240, TICKS);
        let who = if play { "players" } else { "spectators" };
        eprintln!(
            "{who}, {loss_pct} % loss: {} snapshots received, {} allocations in their \
             receipt, {} in all the clients' calls; {} inputs, {} allocations by the server",
            c.snapshots, c.receipt, c.all, c.inputs, c.server
        );
        // Nearly every tick's snapshot arrived (a tick counts once any part did).
        assert!(
            c.snapshots >= u64::from(TICKS) * 4 * 9 / 10,
            "{}",
            c.snapshots
        );
        // A rare one is allowed (a list grown to a new longest, a pool that ran dry under a
        // burst of losses): a few dozen in 4,000 snapshots here. Before the receiver kept
        // its memory it was 67 a snapshot: a world, the part's changes and the lists they
        // were decoded through, the payload's buffer, the playout buffer's list and the
        // nodes of the maps by tick and by id.
        let per_snapshot = c.receipt as f64 / c.snapshots as f64;
        assert!(
            per_snapshot < 0.05,
            "{who}, {loss_pct} % loss: {per_snapshot:.4} allocations a snapshot received"
        );
        // And everything else the clients do: acks and keep-alives, inputs when they play
        // (before, nine allocations an input: its bytes, the packet's list of the inputs
        // not yet acknowledged and the encoding growing into a new vector), frames drawn
        // and events read.
        let per_snapshot = c.all as f64 / c.snapshots as f64;
        assert!(
            per_snapshot < 0.05,
            "{who}, {loss_pct} % loss: {per_snapshot:.4} allocations a snapshot in all"
        );
        if play {
            // The server takes an input from every player every tick: before, three
            // allocations each (the datagram's buffer, the frame's list of inputs, the
            // input's own bytes).
            assert!(c.inputs >= u64::from(TICKS) * 4 * 9 / 10, "{}", c.inputs);
            let per_input = c.server as f64 / c.inputs as f64;
            assert!(
                per_input < 0.05,
                "{loss_pct} % loss: {per_input:.4} allocations an input taken in"
            );
        }
    }
}
