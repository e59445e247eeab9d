//! One server tick, sans-IO: `GameServer::tick` plus the datagrams it produces through a
//! `snapsync::Server`, for 1 / 16 / 64 / 256 connected clients × 64 / 1000 arena bodies.
//!
//! Run: `cargo bench -p benches --bench server_tick`. Each setup is a running game from
//! `demo_server::simulate` (clients connected, playing, acking; 20 ms latency, no loss),
//! warmed up for a second of virtual time. Every measured iteration advances the game by one
//! tick; only the server's own work for that tick is timed (`iter_custom`), not the clients
//! or the simulated network around it.

use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use demo_server::simulate::{Simulation, SimulationOptions};
use snapsync::conditioner::ConditionerConfig;

const CLIENTS: [usize; 4] = [1, 16, 64, 256];
const BODIES: [usize; 2] = [64, 1000];
/// Unmeasured virtual time before the bench: handshakes, welcomes, first full snapshots.
const WARM_UP: Duration = Duration::from_secs(1);

fn game(clients: usize, bodies: usize) -> Simulation {
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
    opts.game.entities = Some(bodies);
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

criterion_group!(benches, server_tick);
criterion_main!(benches);
