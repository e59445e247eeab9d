//! Bandwidth of the cubes scene at 60 Hz (the scene's AI driving), one client, four ways: every tick's full state as
//! raw floats, as bincode, as quantized bits, and the engine's delta against the acked
//! baseline over the real protocol path (virtual time) at 0% and 5% loss.
//!
//! For the delta rows it also prints where the bits go: the client's receiver counts every
//! decoded part's bits by field, divided here by the changed cubes it decoded.
//!
//! Run: `cargo run --release -p demo-server --example cubes_bandwidth`

use std::time::Duration;

use demo_server::game::{GameOptions, quantize_config};
use demo_server::scene::{SceneKind, build_scene};
use demo_server::server::DEFAULT_BUDGET_BYTES;
use demo_server::simulate::{Simulation, SimulationOptions};
use snapsync::conditioner::ConditionerConfig;
use snapsync::snapshot::{
    EntityId, EntityState, FieldBits, QuantizedWorld, SenderConfig, SnapshotSender, Tick,
    Transform, World,
};

const TICK_RATE: f64 = 60.0;
/// Seconds simulated per row (`CUBES_SECONDS` overrides; default ten minutes, since the
/// scene's busy opening changes more cubes than its long-run average).
fn seconds() -> u32 {
    std::env::var("CUBES_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600)
}
/// Bytes each datagram adds on the wire: IPv4 + UDP (28), the connected header (19) and
/// the datagram framing (3).
const PER_DATAGRAM_BYTES: f64 = 28.0 + 19.0 + 3.0;
const MAX_PART_BYTES: usize = 1100;

/// One cube as plain floats: id, position, rotation, velocity.
type FloatCube = (u32, [f32; 3], [f32; 4], [f32; 3]);

/// kbit/s of `bytes_per_tick` sent as datagrams of at most MAX_PART_BYTES, at 60 Hz.
fn kbps_split(bytes_per_tick: f64) -> f64 {
    let datagrams = (bytes_per_tick / MAX_PART_BYTES as f64).ceil();
    (bytes_per_tick + datagrams * PER_DATAGRAM_BYTES) * 8.0 * TICK_RATE / 1000.0
}

/// One row of the per-field table: its name and how to read its count.
type FieldRow = (&'static str, fn(&FieldBits) -> u64);

/// The client's per-field bit counts so far (zero before it has a receiver).
fn client_field_bits(sim: &Simulation) -> FieldBits {
    sim.network()
        .clients
        .first()
        .and_then(|c| c.client.receiver())
        .map(|r| r.field_bits())
        .unwrap_or_default()
}

/// Print one markdown row per field: bits per changed cube decoded, and share of all bits.
fn print_field_table(loss: f64, before: &FieldBits, after: &FieldBits) {
    let d = |f: fn(&FieldBits) -> u64| f(after) - f(before);
    let entities = d(|f| f.entities).max(1) as f64;
    let total = d(|f| f.total()) as f64;
    eprintln!();
    eprintln!(
        "  where the bits go at {loss}% loss ({:.1} changed cubes per part decoded):",
        entities / d(|f| f.parts).max(1) as f64
    );
    eprintln!("  | field | bits per changed cube | share |");
    eprintln!("  |---|---:|---:|");
    let rows: [FieldRow; 7] = [
        ("index gaps", |f| f.index_gaps),
        ("flags", |f| f.flags),
        ("position", |f| f.position),
        ("rotation", |f| f.rotation),
        ("velocity", |f| f.velocity),
        ("component", |f| f.component),
        ("part headers", |f| f.part_headers),
    ];
    for (name, field) in rows {
        let bits = d(field) as f64;
        eprintln!(
            "  | {name} | {:.2} | {:.1} % |",
            bits / entities,
            100.0 * bits / total.max(1.0)
        );
    }
    eprintln!("  | total | {:.2} | 100 % |", total / entities);
    eprintln!();
}

fn main() {
    let ticks = seconds() * TICK_RATE as u32;
    // Full-state formats over the scene as the AI drives it (no player input).
    let mut scene = build_scene(SceneKind::Cubes, None, 1, 0.0);
    let q = quantize_config(SceneKind::Cubes, TICK_RATE);
    let mut full = SnapshotSender::new(SenderConfig {
        quantize: q,
        ..SenderConfig::default()
    })
    .expect("valid config");
    let (mut raw, mut bincode, mut quantized, mut quantized_parts) = (0f64, 0f64, 0f64, 0f64);
    let mut entities = 0;
    for tick in 1..=ticks {
        scene.step((1.0 / TICK_RATE) as f32);
        let bodies = scene.bodies();
        entities = bodies.len();
        // Position, rotation and linear velocity as f32: 40 bytes a cube.
        raw += (bodies.len() * 40) as f64;
        let state: Vec<FloatCube> = bodies
            .iter()
            .map(|b| {
                (
                    b.id,
                    b.position.into(),
                    b.rotation.into(),
                    b.velocity.into(),
                )
            })
            .collect();
        bincode += snapsync::codec::encode(&state).expect("plain data").len() as f64;
        let mut world = World::new();
        for b in bodies {
            world.insert(
                EntityId(b.id),
                EntityState::new(Transform {
                    position: b.position,
                    rotation: b.rotation,
                    velocity: Some(b.velocity),
                }),
            );
        }
        full.reset_baseline();
        let parts = full
            .build(
                Tick(tick),
                &QuantizedWorld::from_world(&world, &q),
                usize::MAX / 2,
            )
            .expect("build");
        quantized += parts.iter().map(Vec::len).sum::<usize>() as f64;
        quantized_parts += parts.len() as f64;
    }
    let n = f64::from(ticks);
    let quantized_kbps =
        (quantized + quantized_parts * PER_DATAGRAM_BYTES) / n * 8.0 * TICK_RATE / 1000.0;

    println!(
        "cubes scene: {entities} entities, {TICK_RATE} Hz, one client, {} s simulated; kbit/s on the wire (28 B IP+UDP per datagram)",
        seconds()
    );
    println!();
    println!("| encoding | bytes per snapshot | kbit/s |");
    println!("|---|---:|---:|");
    println!(
        "| uncompressed floats (position, rotation, velocity) | {:.0} | {:.0} |",
        raw / n,
        kbps_split(raw / n)
    );
    println!(
        "| bincode full state | {:.0} | {:.0} |",
        bincode / n,
        kbps_split(bincode / n)
    );
    println!(
        "| quantized full state (snapsync, no baseline) | {:.0} | {:.0} |",
        quantized / n,
        quantized_kbps
    );

    for loss in [0.0, 5.0] {
        let opts = SimulationOptions {
            game: GameOptions {
                scene: SceneKind::Cubes,
                entities: None,
                tick_rate: TICK_RATE,
                send_rate: TICK_RATE,
                budget_bytes: DEFAULT_BUDGET_BYTES,
                seed: 1,
                aoi_radius_m: None,
                snapshot_threads: 1,
                respawns_per_s: 0.0,
            },
            clients: 1,
            frame_rate: TICK_RATE,
            conditioner: ConditionerConfig {
                loss_pct: loss,
                latency: Duration::from_millis(20),
                enabled: true,
                ..ConditionerConfig::off()
            },
            seed: 7,
            predict: true,
            secure: false,
        };
        let mut sim = Simulation::new(&opts).expect("simulation");
        // The scene's AI drives the player cube, as for the full-state rows above.
        sim.set_bots_idle(true);
        sim.run_for(Duration::from_secs(2));
        let before = sim.network().server.snapshot_totals();
        let fields_before = client_field_bits(&sim);
        sim.reset_measurements();
        sim.run_for(Duration::from_secs(u64::from(seconds())));
        let after = sim.network().server.snapshot_totals();
        let fields_after = client_field_bits(&sim);
        let report = sim.report();
        let bytes = (after.bytes - before.bytes) as f64;
        let sent = (after.entities_sent - before.entities_sent) as f64;
        let snaps = (after.snapshots - before.snapshots).max(1) as f64;
        println!(
            "| delta vs acked baseline, {loss}% loss | {:.0} | {:.0} |",
            bytes / snaps,
            report.kbps_down_per_client
        );
        eprintln!(
            "  {loss}% loss: {:.1} bits per changed cube sent; {:.1} changed cubes per snapshot, changed share {:.1}% per tick, {} full snapshots",
            bytes * 8.0 / sent.max(1.0),
            sent / snaps,
            sim.network().server.stats().changed_pct(),
            after.full_snapshots - before.full_snapshots
        );
        print_field_table(loss, &fields_before, &fields_after);
    }
}
