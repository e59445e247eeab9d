//! One server tick, sans-IO: `GameServer::tick` plus the datagrams it produces through a
//! `snapsync::Server`, for 1 / 16 / 64 / 256 connected clients × 64 / 1000 arena bodies; the
//! cubes scene (901 cubes) at 1 and 16 clients; the massive scene (10,000 NPCs, 100 m area
//! of interest, 30 Hz) at 16 and 64 clients; and the per-tick world work alone (the
//! game's `World` refreshed from the scene and quantized once) for 901 cubes.
//!
//! Run: `cargo bench -p benches --bench server_tick`. Each setup is a running game from
//! `demo_server::simulate` (clients connected, playing, acking; 20 ms latency, no loss),
//! warmed up for a second of virtual time. Every measured iteration advances the game by one
//! tick; only the server's own work for that tick is timed (`iter_custom`), not the clients
//! or the simulated network around it.

/// The allocator of the demo's binaries and of the benches that time its server (why: the
/// workspace's Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use demo_server::game::quantize_config;
use demo_server::scene::{SceneKind, build_scene};
use demo_server::simulate::{Simulation, SimulationOptions};
use snapsync::conditioner::ConditionerConfig;
use snapsync::snapshot::{EntityId, EntityState, QuantizeCache, QuantizedWorld, Transform, World};

const CLIENTS: [usize; 4] = [1, 16, 64, 256];
const BODIES: [usize; 2] = [64, 1000];
/// Unmeasured virtual time before the bench: handshakes, welcomes, first full snapshots.
const WARM_UP: Duration = Duration::from_secs(1);

fn game(clients: usize, bodies: usize) -> Simulation {
    game_in(SceneKind::Arena, 60.0, clients, Some(bodies))
}

fn game_in(scene: SceneKind, hz: f64, clients: usize, entities: Option<usize>) -> Simulation {
    let mut opts = SimulationOptions {
        clients,
        conditioner: ConditionerConfig {
            enabled: true,
            latency: Duration::from_millis(20),
            ..ConditionerConfig::off()
        },
        seed: 11,
        predict: true,
        ..SimulationOptions::default()
    };
    opts.game.scene = scene;
    opts.game.entities = entities;
    opts.game.tick_rate = hz;
    opts.game.send_rate = hz;
    // The options are constants known to be valid.
    let mut sim = Simulation::new(&opts).expect("valid simulation options");
    sim.run_for(WARM_UP);
    assert_eq!(
        sim.connected(),
        clients,
        "every client connected in the warm-up"
    );
    sim
}

fn server_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_tick_60hz");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for bodies in BODIES {
        for clients in CLIENTS {
            let mut sim = game(clients, bodies);
            // One snapshot per client per tick: report time per client served.
            group.throughput(Throughput::Elements(clients as u64));
            group.bench_function(
                BenchmarkId::new(format!("{bodies}_bodies"), format!("{clients}_clients")),
                |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += sim.step_tick();
                        }
                        total
                    });
                },
            );
        }
    }
    group.finish();
}

/// The cubes scene: the bandwidth yardstick, 901 entities, most of them still.
fn cubes_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_tick_cubes_60hz");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for clients in [1, 16] {
        let mut sim = game_in(SceneKind::Cubes, 60.0, clients, None);
        group.throughput(Throughput::Elements(clients as u64));
        group.bench_function(
            BenchmarkId::new("901_cubes", format!("{clients}_clients")),
            |b| {
                b.iter_custom(|iters| (0..iters).map(|_| sim.step_tick()).sum());
            },
        );
    }
    group.finish();
}

/// The massive scene at 30 Hz: 10,000 NPCs on 1 km², each client sent what is within
/// 100 m of its avatar.
fn massive_tick(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_tick_massive_30hz");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for clients in [16, 64] {
        let mut sim = game_in(SceneKind::Massive, 30.0, clients, None);
        group.throughput(Throughput::Elements(clients as u64));
        group.bench_function(
            BenchmarkId::new("10000_npcs", format!("{clients}_clients")),
            |b| b.iter_custom(|iters| (0..iters).map(|_| sim.step_tick()).sum()),
        );
    }
    group.finish();
}

/// What a tick costs before any client: the game's `World` refreshed from the scene's
/// bodies (in place, as `GameServer::tick` does) and quantized once for every client (with
/// the cache the replication server keeps, so only what changed is quantized again).
fn world_build_quantize(c: &mut Criterion) {
    let mut scene = build_scene(SceneKind::Cubes, None, 11, 0.0);
    let config = quantize_config(SceneKind::Cubes, 60.0);
    scene.add_player(1);
    let mut world = World::new();
    for b in scene.bodies() {
        world.insert(EntityId(b.id), EntityState::default());
    }
    // Let the cubes start moving, as in a running game.
    for _ in 0..60 {
        scene.step(1.0 / 60.0);
    }
    let mut cache = QuantizeCache::default();
    // Each iteration is one tick: the scene steps (untimed), then the world is refreshed and
    // quantized (timed).
    c.bench_function("world_build_quantize/901_cubes", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                scene.step(1.0 / 60.0);
                let start = std::time::Instant::now();
                for ((_, state), body) in world.iter_mut().zip(scene.bodies()) {
                    state.transform = Transform {
                        position: body.position,
                        rotation: body.rotation,
                        velocity: Some(body.velocity),
                    };
                }
                let q = QuantizedWorld::from_world_cached(&world, &config, &mut cache);
                total += start.elapsed();
                std::hint::black_box(q);
            }
            total
        });
    });
}

criterion_group!(
    benches,
    server_tick,
    cubes_tick,
    massive_tick,
    world_build_quantize
);
criterion_main!(benches);
