//! What a client's frame costs the allocator: `Client::view_into`, given the last frame's
//! view, allocates nothing once its list has grown to the world's size, where `Client::view`
//! allocates a new list every frame. A game draws 60 to 240 frames a second, and a process
//! that simulates many clients (a bot fleet, the tick-rate bench) thousands. Measured with a
//! counting global allocator, which serves the whole test binary, hence a file of its own and
//! one test function.

use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

use snapsync::glam::Vec3;
use snapsync::replication::{Client, ClientConfig, Server, ServerConfig, View};
use snapsync::sim::Sim;
use snapsync::snapshot::{EntityId, EntityState, QuantizeConfig, Transform, World};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const TICK: Duration = Duration::from_micros(16_667);
const ENTITIES: u32 = 200;

#[test]
fn a_frame_with_the_last_frames_view_allocates_nothing() {
    let config = ServerConfig {
        quantize: QuantizeConfig {
            tick_interval: TICK,
            ..QuantizeConfig::default()
        },
        seed: Some(3),
        ..ServerConfig::default()
    };
    let mut sim: Sim<Server, Client<u8>> = Sim::replication(config, 4).unwrap();
    sim.add_replication_client(ClientConfig::default()).unwrap();
    let mut world = World::new();
    let mut next_at = sim.now + TICK;
    let mut view = View::default();
    // (frames measured, allocations by `view_into`, allocations by `view`, entities drawn)
    let (mut frames, mut into, mut fresh, mut drawn) = (0u64, 0u64, 0u64, 0usize);
    for n in 0..300u32 {
        sim.run_until(next_at);
        let next = sim.server.current_tick().0 + 1;
        for id in 0..ENTITIES {
            // Every entity moving, so every frame interpolates between two states.
            let t = next as f32 * TICK.as_secs_f32() + id as f32;
            let position = Vec3::new(t.cos() * 10.0, 0.0, t.sin() * 10.0);
            world.insert(
                EntityId(id),
                EntityState::new(Transform {
                    position,
                    ..Transform::default()
                }),
            );
        }
        let now = sim.now;
        sim.server.tick(now, &world);
        sim.server_events.clear();
        // Two frames a tick, half a tick apart, as a 120 Hz display draws.
        for half in 0..2 {
            let at = now + TICK / 2 * half;
            let client = &mut sim.clients[0].client;
            let region = Region::new(GLOBAL);
            client.view_into(at, &mut view);
            let by_into = region.change().allocations as u64;
            let region = Region::new(GLOBAL);
            let made = client.view(at);
            let by_view = region.change().allocations as u64;
            assert_eq!(made.entities, view.entities, "tick {n}");
            // After two seconds: the list has grown to the world's size.
            if n >= 120 {
                frames += 1;
                into += by_into;
                fresh += by_view;
                drawn += view.entities.len();
            }
        }
        next_at += TICK;
    }
    // Every measured frame drew the whole world, so the control below means something.
    assert_eq!(drawn, frames as usize * ENTITIES as usize);
    assert_eq!(
        into, 0,
        "view_into allocated {into} times in {frames} frames"
    );
    assert!(
        fresh >= frames,
        "view allocates its list every frame: {fresh} in {frames} frames"
    );
}
