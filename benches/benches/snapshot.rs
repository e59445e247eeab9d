//! Snapshot codec costs at 100 / 1k / 10k entities with ~10 % changed per tick:
//! quantizing a world, delta-encoding it for one client (with every change sent, and under
//! a budget that holds most of them back, so that they are ranked), and decoding the parts.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use glam::{Quat, Vec3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snapsync::Sequence;
use snapsync::snapshot::{
    EntityId, EntityState, QuantizeConfig, QuantizedWorld, ReceiverConfig, SenderConfig,
    SnapshotReceiver, SnapshotSender, Tick, Transform, World,
};

const SIZES: [u32; 3] = [100, 1_000, 10_000];
/// Far above any part total, so every changed entity is encoded.
const UNLIMITED_BUDGET_BYTES: usize = 1 << 30;
/// A budget most of the changes do not fit: about a twentieth of the 1k world's changes.
const TIGHT_BUDGET_BYTES: usize = 100;

/// A world of `n` bodies scattered over the default box.
fn world(n: u32, rng: &mut ChaCha8Rng) -> World {
    let mut w = World::new();
    for i in 0..n {
        let t = Transform {
            position: Vec3::new(
                rng.random_range(-400.0..400.0),
                rng.random_range(0.0..20.0),
                rng.random_range(-400.0..400.0),
            ),
            rotation: Quat::from_rotation_y(rng.random_range(-3.0..3.0)),
            velocity: Some(Vec3::ZERO),
        };
        w.insert(EntityId(i), EntityState::new(t));
    }
    w
}

/// One tick later: about 10 % of the bodies slid and turned a little.
fn step(w: &World, rng: &mut ChaCha8Rng) -> World {
    let mut out = w.clone();
    for (id, _) in w.iter() {
        if rng.random_bool(0.1) {
            // The id comes from iterating `w`, so out has it.
            let s = out.get_mut(id).expect("id from the same world");
            let v = Vec3::new(
                rng.random_range(-5.0..5.0),
                0.0,
                rng.random_range(-5.0..5.0),
            );
            s.transform.position += v / 60.0 * 4.0;
            s.transform.rotation *= Quat::from_rotation_y(rng.random_range(-0.05..0.05));
            s.transform.velocity = Some(v);
        }
    }
    out
}

struct Fixture {
    world: World,
    q0: QuantizedWorld,
    q1: QuantizedWorld,
    sender: SnapshotSender,
    receiver: SnapshotReceiver,
    parts: Vec<Vec<u8>>,
}

/// Both sides hold `q0` at tick 1 as the acked baseline; `parts` encode `q1` at tick 2.
fn fixture(n: u32) -> Fixture {
    let cfg = QuantizeConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(u64::from(n));
    let w0 = world(n, &mut rng);
    let w1 = step(&w0, &mut rng);
    let q0 = QuantizedWorld::from_world(&w0, &cfg);
    let q1 = QuantizedWorld::from_world(&w1, &cfg);
    let mut sender = SnapshotSender::new(SenderConfig::default()).expect("default config");
    let mut receiver = SnapshotReceiver::new(ReceiverConfig::default()).expect("default config");
    let now = Instant::now();
    let full = sender
        .build(Tick(1), &q0, UNLIMITED_BUDGET_BYTES)
        .expect("first tick");
    for (i, p) in full.iter().enumerate() {
        let seq = Sequence(i as u16);
        sender.on_part_sent(Tick(1), i, seq);
        receiver.read_part(now, p).expect("own part decodes");
        sender.on_delivery(seq, true);
    }
    let parts = sender
        .clone()
        .build(Tick(2), &q1, UNLIMITED_BUDGET_BYTES)
        .expect("second tick");
    Fixture {
        world: w1,
        q0,
        q1,
        sender,
        receiver,
        parts,
    }
}

/// Send `parts` of `tick` on the packet sequences from `seq` on, and have each
/// acknowledged at once.
fn acknowledge(sender: &mut SnapshotSender, tick: Tick, parts: Vec<Vec<u8>>, seq: &mut Sequence) {
    for i in 0..parts.len() {
        sender.on_part_sent(tick, i, *seq);
        sender.on_delivery(*seq, true);
        *seq = Sequence(seq.0.wrapping_add(1));
    }
    sender.recycle_parts(parts);
}

fn bench_snapshot(c: &mut Criterion) {
    let cfg = QuantizeConfig::default();
    let fixtures: Vec<(u32, Fixture)> = SIZES.iter().map(|&n| (n, fixture(n))).collect();
    for (n, f) in &fixtures {
        let bytes: usize = f.parts.iter().map(Vec::len).sum();
        let changed =
            f.q1.iter()
                .filter(|(id, e)| f.q0.get(*id) != Some(e))
                .count();
        println!(
            "snapshot n={n}: {changed} changed, {} parts, {bytes} bytes, {:.1} bits per changed entity",
            f.parts.len(),
            bytes as f64 * 8.0 / changed as f64
        );
    }

    let mut g = c.benchmark_group("snapshot_quantize");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (n, f) in &fixtures {
        g.throughput(Throughput::Elements(u64::from(*n)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &f.world, |b, w| {
            b.iter(|| QuantizedWorld::from_world(black_box(w), &cfg));
        });
    }
    g.finish();

    let mut g = c.benchmark_group("snapshot_encode_delta");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (n, f) in &fixtures {
        g.throughput(Throughput::Elements(u64::from(*n)));
        g.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter_batched(
                || f.sender.clone(),
                |mut s| s.build(Tick(2), black_box(&f.q1), UNLIMITED_BUDGET_BYTES),
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();

    // Under a budget that binds, every candidate is ranked by priority and what waits
    // gains priority: the path a client takes whenever the world changes more than its
    // budget carries.
    let mut g = c.benchmark_group("snapshot_encode_ranked");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (n, f) in &fixtures {
        g.throughput(Throughput::Elements(u64::from(*n)));
        g.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            // One sender over many ticks, as a server keeps it: the world alternates
            // between the fixture's two, and every part is acknowledged at once, so each
            // tick's baseline is the one before with what was sent.
            let mut s = f.sender.clone();
            let (mut tick, mut seq) = (2u32, Sequence(1_000));
            b.iter(|| {
                let w = if tick % 2 == 0 { &f.q1 } else { &f.q0 };
                let parts = s
                    .build(Tick(tick), black_box(w), TIGHT_BUDGET_BYTES)
                    .expect("a tick after the last");
                acknowledge(&mut s, Tick(tick), parts, &mut seq);
                tick += 1;
            });
        });
    }
    g.finish();

    let mut g = c.benchmark_group("snapshot_decode_delta");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let now = Instant::now();
    for (n, f) in &fixtures {
        g.throughput(Throughput::Elements(u64::from(*n)));
        g.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            b.iter_batched(
                || f.receiver.clone(),
                |mut rx| {
                    for p in &f.parts {
                        let _ = black_box(rx.read_part(now, black_box(p)));
                    }
                    rx
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();

    // A receiver as a client keeps it, over many ticks: each tick's parts built by a
    // sender (untimed) from worlds that alternate between the fixture's two, then read
    // (timed), then acknowledged. The group above reads one tick into a fresh copy of a
    // receiver each time; this one reads with the memory a receiver keeps from tick to tick.
    let mut g = c.benchmark_group("snapshot_decode_steady");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (n, f) in &fixtures {
        g.throughput(Throughput::Elements(u64::from(*n)));
        g.bench_with_input(BenchmarkId::from_parameter(n), f, |b, f| {
            let (mut tx, mut rx) = (f.sender.clone(), f.receiver.clone());
            let (mut tick, mut seq) = (2u32, Sequence(1_000));
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let w = if tick % 2 == 0 { &f.q1 } else { &f.q0 };
                    let parts = tx
                        .build(Tick(tick), w, UNLIMITED_BUDGET_BYTES)
                        .expect("a tick after the last");
                    let start = Instant::now();
                    for p in &parts {
                        let _ = black_box(rx.read_part(start, black_box(p)));
                    }
                    spent += start.elapsed();
                    acknowledge(&mut tx, Tick(tick), parts, &mut seq);
                    tick += 1;
                }
                spent
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench_snapshot);
criterion_main!(benches);
