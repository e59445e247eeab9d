//! Scenarios across the snapshot files: codec round trips, sender/receiver under loss,
//! starvation, hostile input.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glam::{Quat, Vec3};
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::bits::{BitReader, BitSink, BitWriter};
use super::part;
use super::*;
use crate::Sequence;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random_transform(r: &mut ChaCha8Rng) -> Transform {
    Transform {
        position: Vec3::new(
            r.random_range(-500.0..500.0),
            r.random_range(-10.0..50.0),
            r.random_range(-500.0..500.0),
        ),
        rotation: Quat::from_euler(
            glam::EulerRot::YXZ,
            r.random_range(-3.0..3.0),
            r.random_range(-1.5..1.5),
            r.random_range(-3.0..3.0),
        ),
        velocity: r.random_bool(0.7).then(|| {
            Vec3::new(
                r.random_range(-20.0..20.0),
                r.random_range(-20.0..20.0),
                r.random_range(-20.0..20.0),
            )
        }),
    }
}

fn random_state(r: &mut ChaCha8Rng) -> EntityState {
    let mut s = EntityState::new(random_transform(r));
    if r.random_bool(0.2) {
        let len = r.random_range(0..12);
        s.component = Some((0..len).map(|_| r.random()).collect());
    }
    s
}

/// A random world with sparse ids.
fn random_world(r: &mut ChaCha8Rng, n: usize) -> World {
    let mut w = World::new();
    let mut id = 0u32;
    for _ in 0..n {
        id += r.random_range(1..6);
        w.insert(EntityId(id), random_state(r));
    }
    w
}

/// Mutate a world the way a game does: small moves, turns, velocity and component changes,
/// some big jumps, despawns and spawns.
fn evolve(r: &mut ChaCha8Rng, w: &World, change_pct: f64) -> World {
    let mut out = World::new();
    let mut max_id = 0;
    for (id, s) in w.iter() {
        max_id = id.0;
        if r.random_bool(0.05) {
            continue; // despawn
        }
        let mut s = s.clone();
        if r.random_bool(change_pct) {
            match r.random_range(0..6) {
                0 => s.transform.position += Vec3::new(r.random_range(-0.05..0.05), 0.0, 0.01),
                1 => s.transform.position += Vec3::splat(r.random_range(-3.0..3.0)),
                2 => s.transform = random_transform(r),
                3 => s.transform.rotation *= Quat::from_rotation_y(r.random_range(-0.1..0.1)),
                4 => s.transform.velocity = s.transform.velocity.map_or(Some(Vec3::ONE), |_| None),
                _ => s.component = r.random_bool(0.5).then(|| vec![r.random(), 7, 7]),
            }
        }
        out.insert(id, s);
    }
    for _ in 0..r.random_range(0..4) {
        max_id += r.random_range(1..10);
        out.insert(EntityId(max_id), random_state(r));
    }
    // Occasionally re-use a free low id.
    if r.random_bool(0.3) && w.get(EntityId(0)).is_none() {
        out.insert(EntityId(0), random_state(r));
    }
    out
}

fn sender(max_part_bytes: usize) -> SnapshotSender {
    SnapshotSender::new(SenderConfig {
        max_part_bytes,
        ..SenderConfig::default()
    })
    .unwrap()
}

fn receiver() -> SnapshotReceiver {
    SnapshotReceiver::new(ReceiverConfig::default()).unwrap()
}

/// Build `tick`, deliver every part and ack them all: both sides then hold `world` at `tick`.
fn sync_fully(
    s: &mut SnapshotSender,
    rx: &mut SnapshotReceiver,
    now: Instant,
    tick: Tick,
    world: &QuantizedWorld,
    seq: &mut Sequence,
) {
    let parts = s.build(tick, world, usize::MAX / 16).unwrap();
    for (i, p) in parts.iter().enumerate() {
        s.on_part_sent(tick, i, *seq);
        rx.read_part(now, p).unwrap();
        s.on_delivery(*seq, true);
        *seq = seq.next();
    }
}

/// Decode `bytes` directly against `baseline`: the changes it carries.
fn decode(bytes: &[u8], baseline: &QuantizedWorld) -> Vec<(EntityId, Option<QuantizedEntity>)> {
    let mut r = BitReader::new(bytes);
    let h = part::read_header(&mut r).unwrap();
    part::decode_body(
        &mut r,
        &h,
        baseline,
        &QuantizeConfig::default().limits(),
        &mut part::FieldBits::default(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Encode vs a baseline, split into parts, deliver some in any order: received entities
    /// equal the new quantized state exactly, the rest keep their baseline state.
    #[test]
    fn delta_round_trip_with_split_reorder_and_loss(
        seed: u64, n in 0usize..150, change_pct in 0.0f64..1.0,
        max_part in 64usize..400, keep_pct in 0.0f64..1.0,
    ) {
        let cfg = QuantizeConfig::default();
        let mut r = rng(seed);
        let now = Instant::now();
        let w0 = random_world(&mut r, n);
        let w1 = evolve(&mut r, &w0, change_pct);
        let (q0, q1) = (QuantizedWorld::from_world(&w0, &cfg), QuantizedWorld::from_world(&w1, &cfg));

        let mut s = sender(max_part);
        let mut rx = receiver();
        let mut seq = Sequence(0);
        sync_fully(&mut s, &mut rx, now, Tick(1), &q0, &mut seq);
        prop_assert_eq!(rx.live_world(), q0.clone());
        prop_assert_eq!(s.acked_baseline().unwrap().1, q0.clone());

        let parts = s.build(Tick(2), &q1, usize::MAX / 16).unwrap();
        // Every part decodes alone; together they carry exactly the difference, disjointly.
        let mut seen = BTreeSet::new();
        for p in &parts {
            prop_assert!(p.len() <= max_part);
            for (id, change) in decode(p, &q0) {
                prop_assert!(seen.insert(id), "entity in two parts");
                prop_assert_eq!(change.as_ref(), q1.get(id));
            }
        }
        let diff: BTreeSet<EntityId> = q0.iter().chain(q1.iter())
            .filter(|(id, _)| q0.get(*id) != q1.get(*id))
            .map(|(id, _)| id)
            .collect();
        prop_assert_eq!(&seen, &diff);

        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.shuffle(&mut r);
        let kept: Vec<usize> = order.into_iter().filter(|_| r.random_bool(keep_pct)).collect();
        let mut expected: std::collections::BTreeMap<EntityId, QuantizedEntity> =
            q0.iter().map(|(id, e)| (id, e.clone())).collect();
        for &i in &kept {
            let info = rx.read_part(now, &parts[i]).unwrap();
            prop_assert!(info.applied);
            prop_assert_eq!(info.baseline, Some(Tick(1)));
            for (id, change) in decode(&parts[i], &q0) {
                match change {
                    Some(e) => { expected.insert(id, e); }
                    None => { expected.remove(&id); }
                }
            }
        }
        let expected = QuantizedWorld::from_entities(expected);
        prop_assert_eq!(rx.live_world(), expected);
        if kept.len() == parts.len() {
            prop_assert_eq!(rx.live_world(), q1.clone());
            prop_assert_eq!(rx.composite(Tick(2)), Some(&q1));
        } else {
            prop_assert_eq!(rx.composite(Tick(2)), None);
        }
        prop_assert_eq!(rx.stats().invalid, 0);
    }

    /// Random bytes never panic; a rejected part is counted and leaves the world untouched.
    #[test]
    fn random_bytes_are_rejected_or_harmless(seed: u64, bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let cfg = QuantizeConfig::default();
        let mut r = rng(seed);
        let q0 = QuantizedWorld::from_world(&random_world(&mut r, 40), &cfg);
        let mut s = sender(1100);
        let mut rx = receiver();
        let mut seq = Sequence(0);
        sync_fully(&mut s, &mut rx, Instant::now(), Tick(5), &q0, &mut seq);
        // Aim the random body at the held baseline sometimes, so it gets past the header.
        let mut bytes = bytes;
        if seed % 2 == 0 && bytes.len() > 6 {
            let mut w = BitWriter::new();
            w.write_bits(6, 32);
            w.write_bool(true);
            w.write_varint(0, 7);
            w.write_bits(0, 16);
            let head = w.finish();
            bytes[..5].copy_from_slice(&head[..5]);
            bytes[5] = (bytes[5] & !1) | (head[5] & 1);
        }
        let before = rx.live_world();
        let stats = rx.stats();
        match rx.read_part(Instant::now(), &bytes) {
            Err(_) => {
                prop_assert_eq!(rx.live_world(), before);
                let st = rx.stats();
                prop_assert_eq!(st.invalid + st.missing_baseline_dropped + st.too_old + st.duplicates,
                    stats.invalid + stats.missing_baseline_dropped + stats.too_old + stats.duplicates + 1);
            }
            Ok(info) => prop_assert!(info.changes <= bytes.len() * 8),
        }
    }
}

#[test]
fn part_without_held_baseline_is_dropped_and_counted() {
    let cfg = QuantizeConfig::default();
    let mut r = rng(1);
    let q0 = QuantizedWorld::from_world(&random_world(&mut r, 30), &cfg);
    let q1 = QuantizedWorld::from_world(&evolve(&mut r, &random_world(&mut rng(1), 30), 0.5), &cfg);
    let mut s = sender(1100);
    let mut seq = Sequence(0);
    // The sender believes tick 1 was delivered, but this receiver never saw it.
    let mut other = receiver();
    sync_fully(&mut s, &mut other, Instant::now(), Tick(1), &q0, &mut seq);
    let parts = s.build(Tick(2), &q1, 100_000).unwrap();
    let mut rx = receiver();
    let err = rx.read_part(Instant::now(), &parts[0]).unwrap_err();
    assert_eq!(err, SnapshotError::MissingBaseline(1));
    assert_eq!(rx.stats().missing_baseline_dropped, 1);
    assert_eq!(rx.live().count(), 0);
    assert_eq!(rx.newest_tick(), None);
}

#[test]
fn the_live_view_and_every_snapshot_stay_within_the_entity_limit() {
    // A server whose ticks never complete (here: only each tick's first part arrives),
    // spawning fresh ids every tick: without a limit, the live view kept every one of them.
    let limit = 1000;
    let limited = || {
        SnapshotReceiver::new(ReceiverConfig {
            max_entities: limit,
            ..ReceiverConfig::default()
        })
        .unwrap()
    };
    let mut rx = limited();
    let mut s = sender(300);
    let now = Instant::now();
    let world = |tick: u32, n: u32| {
        let mut w = World::new();
        for i in 0..n {
            w.insert(
                EntityId(tick * 1000 + i),
                EntityState::new(Transform {
                    position: Vec3::new(i as f32, 0.0, 0.0),
                    ..Transform::default()
                }),
            );
        }
        QuantizedWorld::from_world(&w, &QuantizeConfig::default())
    };
    for tick in 1..200u32 {
        // Never acknowledged: every snapshot is a full one, in several parts.
        let parts = s
            .build(Tick(tick), &world(tick, 100), usize::MAX / 16)
            .unwrap();
        assert!(parts.len() >= 2, "{} parts", parts.len());
        let info = rx.read_part(now, &parts[0]).unwrap();
        assert!(!info.completed);
        assert_eq!(rx.live_count(), rx.live().count(), "tick {tick}");
        assert!(rx.live_count() <= limit, "tick {tick}: {}", rx.live_count());
    }
    let held_back = rx.stats().held_back;
    assert!(held_back > 0, "the limit was never reached");
    assert_eq!(rx.stats().parts_applied + held_back, 199);
    // A tick within the limit still completes (its first parts wait, held back) and
    // replaces everything shown before.
    let last = world(500, 900);
    for p in &s.build(Tick(500), &last, usize::MAX / 16).unwrap() {
        rx.read_part(now, p).unwrap();
    }
    assert_eq!(rx.live_world(), last);
    assert_eq!(rx.live_count(), 900);
    // A tick beyond the limit is refused at its last part, and is never held: the view
    // shows what it did, within the limit.
    let parts = s
        .build(Tick(501), &world(501, 1001), usize::MAX / 16)
        .unwrap();
    let (last_part, first) = parts.split_last().unwrap();
    for p in first {
        rx.read_part(now, p).unwrap();
    }
    assert!(matches!(
        rx.read_part(now, last_part),
        Err(SnapshotError::TooManyEntities)
    ));
    assert!(rx.composite(Tick(501)).is_none());
    assert_eq!(rx.live_count(), rx.live().count());
    assert!(rx.live_count() <= limit);
    assert_eq!(rx.stats().invalid, 1);
    // Late (a newer tick is shown), the same is true of a tick that would become a
    // baseline.
    let mut rx = limited();
    let newer = sender(300)
        .build(Tick(10), &world(10, 5), usize::MAX / 16)
        .unwrap();
    let big = sender(300)
        .build(Tick(9), &world(9, 1001), usize::MAX / 16)
        .unwrap();
    rx.read_part(now, &newer[0]).unwrap();
    let (last_part, first) = big.split_last().unwrap();
    for p in first {
        assert!(!rx.read_part(now, p).unwrap().applied);
    }
    assert!(matches!(
        rx.read_part(now, last_part),
        Err(SnapshotError::TooManyEntities)
    ));
    assert!(rx.composite(Tick(9)).is_none());
    assert_eq!(rx.live_count(), 5);
}

#[test]
fn held_snapshots_stay_within_their_budget_and_the_newest_still_serves_as_baseline() {
    // A server that asks for a long ring and never lets the client's baselines go: every
    // tick complete (a snapshot held for the ring), and every other tick's first part of a
    // world of fresh ids (changes waiting for a tick that never completes).
    let (limit, budget) = (100, 400);
    let config = |max_held_entities| ReceiverConfig {
        ring_ticks: 1024,
        max_entities: limit,
        max_held_entities,
        ..ReceiverConfig::default()
    };
    let world = |tick: u32, first_id: u32, n: u32| {
        let mut w = World::new();
        for i in 0..n {
            w.insert(
                EntityId(first_id + i),
                EntityState::new(Transform {
                    position: Vec3::new(i as f32, tick as f32 * 0.01, 0.0),
                    ..Transform::default()
                }),
            );
        }
        QuantizedWorld::from_world(&w, &QuantizeConfig::default())
    };
    let long_ring = || {
        SnapshotSender::new(SenderConfig {
            max_part_bytes: 300,
            ring_ticks: 1024,
            ..SenderConfig::default()
        })
        .unwrap()
    };
    let now = Instant::now();
    let feed = |rx: &mut SnapshotReceiver| {
        let (mut s, mut fresh) = (long_ring(), long_ring());
        let mut most = 0;
        for tick in 1..=60u32 {
            // Never acknowledged: full snapshots, each held as a possible baseline.
            for p in &s
                .build(Tick(2 * tick), &world(tick, 0, 90), usize::MAX / 16)
                .unwrap()
            {
                rx.read_part(now, p).unwrap();
            }
            assert!(rx.composite(Tick(2 * tick)).is_some(), "tick {tick}");
            let parts = fresh
                .build(
                    Tick(2 * tick - 1),
                    &world(tick, 1000 * tick, 60),
                    usize::MAX / 16,
                )
                .unwrap();
            assert!(parts.len() >= 2);
            assert!(!rx.read_part(now, &parts[0]).unwrap().completed);
            most = most.max(rx.held_entities());
        }
        most
    };
    // Unbounded (as before the budget), the same server makes the client hold it all.
    let mut unbounded = SnapshotReceiver::new(config(usize::MAX)).unwrap();
    assert!(feed(&mut unbounded) > 60 * 90);
    assert_eq!(unbounded.stats().evicted, 0);

    let mut rx = SnapshotReceiver::new(config(budget)).unwrap();
    let most = feed(&mut rx);
    assert!(most <= budget, "held {most}");
    assert!(rx.stats().evicted > 0);
    assert_eq!(rx.stats().invalid, 0);
    // The newest snapshot is still held, and serves as the baseline of the next.
    let mut s = long_ring();
    let mut seq = Sequence(0);
    let mut twin = SnapshotReceiver::new(config(usize::MAX)).unwrap();
    sync_fully(
        &mut s,
        &mut twin,
        now,
        Tick(120),
        &world(60, 0, 90),
        &mut seq,
    );
    let next = world(61, 0, 90);
    let parts = s.build(Tick(122), &next, usize::MAX / 16).unwrap();
    for p in &parts {
        assert_eq!(rx.read_part(now, p).unwrap().baseline, Some(Tick(120)));
    }
    assert_eq!(rx.live_world(), next);
    assert!(rx.held_entities() <= budget);

    // The newest snapshot is kept even when it is the oldest thing held: ticks that wait
    // go first.
    let mut rx = SnapshotReceiver::new(config(budget)).unwrap();
    let mut s = long_ring();
    let mut seq = Sequence(0);
    sync_fully(&mut s, &mut rx, now, Tick(10), &world(0, 0, 90), &mut seq);
    for tick in 11..=16u32 {
        let parts = long_ring()
            .build(Tick(tick), &world(tick, 1000 * tick, 100), usize::MAX / 16)
            .unwrap();
        let (_, first) = parts.split_last().unwrap();
        for p in first {
            rx.read_part(now, p).unwrap();
        }
        assert!(rx.held_entities() <= budget);
    }
    assert!(rx.stats().evicted > 0);
    assert!(rx.composite(Tick(10)).is_some());
    let next = world(1, 0, 90);
    for p in &s.build(Tick(17), &next, usize::MAX / 16).unwrap() {
        assert_eq!(rx.read_part(now, p).unwrap().baseline, Some(Tick(10)));
    }
    assert_eq!(rx.live_world(), next);
}

#[test]
fn a_held_budget_below_four_snapshots_is_refused() {
    let config = |max_held_entities| ReceiverConfig {
        max_entities: 100,
        max_held_entities,
        ..ReceiverConfig::default()
    };
    assert!(matches!(
        SnapshotReceiver::new(config(399)),
        Err(SnapshotError::Config(_))
    ));
    assert!(SnapshotReceiver::new(config(400)).is_ok());
}

fn header(w: &mut BitWriter, tick: u32, baseline_offset: Option<u32>) {
    w.write_bits(tick, 32);
    w.write_bool(baseline_offset.is_some());
    if let Some(o) = baseline_offset {
        w.write_varint(o - 1, 7);
    }
    w.write_bits(0, 8); // index
    w.write_bits(0, 8); // count - 1
}

#[test]
fn hostile_parts_are_rejected_without_touching_the_world() {
    let cfg = QuantizeConfig::default();
    let q0 = QuantizedWorld::from_world(&random_world(&mut rng(2), 10), &cfg);
    let mut s = sender(1100);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    sync_fully(&mut s, &mut rx, Instant::now(), Tick(10), &q0, &mut seq);
    let before = rx.live_world();

    let mut cases: Vec<(Vec<u8>, SnapshotError)> = Vec::new();
    // Update index 1000 in a 10-entity baseline (index order 0, no fields change).
    let mut w = BitWriter::new();
    header(&mut w, 11, Some(1));
    w.write_varint(1, 7);
    w.write_bits(0, 4);
    w.write_bits(0, 4);
    w.write_exp_golomb(1000, 0);
    cases.push((w.finish(), SnapshotError::IndexOutOfRange));
    // An index gap whose Exp-Golomb prefix is longer than any value.
    let mut w = BitWriter::new();
    header(&mut w, 11, Some(1));
    w.write_varint(1, 7);
    w.write_bits(0, 4);
    w.write_bits(0, 4);
    w.write_bits(0, 32);
    w.write_bits(0, 8);
    cases.push((w.finish(), SnapshotError::Bits(BitsError::ExpGolombTooLong)));
    // A count of two million entities in a few bytes.
    let mut w = BitWriter::new();
    header(&mut w, 11, None);
    w.write_varint(0, 7);
    w.write_varint(0, 7);
    w.write_varint(2_000_000, 7);
    cases.push((w.finish(), SnapshotError::CountTooLarge));
    // Despawn index past the baseline.
    let mut w = BitWriter::new();
    header(&mut w, 11, Some(1));
    w.write_varint(0, 7);
    w.write_varint(1, 7);
    w.write_bits(0, 4);
    w.write_exp_golomb(10, 0);
    w.write_varint(0, 7);
    cases.push((w.finish(), SnapshotError::IndexOutOfRange));
    // Part index beyond the part count.
    let mut w = BitWriter::new();
    w.write_bits(11, 32);
    w.write_bool(false);
    w.write_bits(3, 8);
    w.write_bits(1, 8);
    cases.push((
        w.finish(),
        SnapshotError::BadHeader("part index beyond part count"),
    ));
    // Spawning an entity the baseline already has.
    let mut w = BitWriter::new();
    header(&mut w, 11, Some(1));
    w.write_varint(0, 7);
    w.write_varint(0, 7);
    w.write_varint(1, 7);
    w.write_bits(0, 4);
    w.write_bits(0, 4);
    w.write_exp_golomb(u64::from(q0.entities()[0].0.0), 0);
    cases.push((w.finish(), SnapshotError::SpawnExists));
    // Baseline before tick zero.
    let mut w = BitWriter::new();
    header(&mut w, 3, Some(9));
    cases.push((
        w.finish(),
        SnapshotError::BadHeader("baseline before tick zero"),
    ));
    // Spawns with one changing field (`field`), every entity of the common set 1.
    let spawn_section = |w: &mut BitWriter, field: u32| {
        header(w, 11, None);
        w.write_varint(0, 7);
        w.write_varint(0, 7);
        w.write_varint(1, 7);
        w.write_bits(0, 4); // id order
        w.write_bits(field, 4);
        w.write_bits(0b11, 2); // both common sets: the one field
    };
    // A position past the box.
    let mut w = BitWriter::new();
    spawn_section(&mut w, 1);
    w.write_bits(0, 12); // position orders
    w.write_exp_golomb(99, 0);
    w.write_bool(true);
    for _ in 0..3 {
        w.write_exp_golomb(2 << 20, 0);
    }
    cases.push((w.finish(), SnapshotError::ValueOutOfRange));
    // An absolute rotation component past its range.
    let mut w = BitWriter::new();
    spawn_section(&mut w, 2);
    w.write_bits(0, 4); // rotation order
    w.write_exp_golomb(99, 0);
    w.write_bool(true);
    w.write_bool(false); // another largest component
    w.write_bits(3, 2);
    for _ in 0..3 {
        w.write_bits(511, 9);
    }
    cases.push((w.finish(), SnapshotError::ValueOutOfRange));
    // A velocity appearing in a section that said none would.
    let mut w = BitWriter::new();
    spawn_section(&mut w, 4);
    w.write_bool(false); // no presence bits
    w.write_bits(0, 12); // velocity orders
    w.write_exp_golomb(99, 0);
    w.write_bool(true);
    for _ in 0..3 {
        w.write_exp_golomb(0, 0);
    }
    cases.push((
        w.finish(),
        SnapshotError::BadHeader("velocity appears in a section without presence bits"),
    ));
    // Trailing bytes after a valid empty part.
    let mut w = BitWriter::new();
    header(&mut w, 11, None);
    for _ in 0..3 {
        w.write_varint(0, 7);
    }
    w.write_bits(0, 16);
    cases.push((w.finish(), SnapshotError::TrailingBytes));

    for (i, (bytes, want)) in cases.iter().enumerate() {
        assert_eq!(
            rx.read_part(Instant::now(), bytes).as_ref(),
            Err(want),
            "case {i}"
        );
        assert_eq!(rx.live_world(), before, "case {i}");
    }
    assert_eq!(rx.stats().invalid, cases.len() as u64);
    assert_eq!(rx.newest_tick(), Some(Tick(10)));
}

#[test]
fn every_truncation_of_a_valid_part_is_an_error() {
    let cfg = QuantizeConfig::default();
    let mut r = rng(3);
    let w0 = random_world(&mut r, 60);
    let q0 = QuantizedWorld::from_world(&w0, &cfg);
    let q1 = QuantizedWorld::from_world(&evolve(&mut r, &w0, 0.5), &cfg);
    let mut s = sender(1100);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    sync_fully(&mut s, &mut rx, Instant::now(), Tick(1), &q0, &mut seq);
    let parts = s.build(Tick(2), &q1, 100_000).unwrap();
    assert_eq!(parts.len(), 1);
    let before = rx.live_world();
    for len in 0..parts[0].len() {
        assert!(
            rx.read_part(Instant::now(), &parts[0][..len]).is_err(),
            "len {len}"
        );
        assert_eq!(rx.live_world(), before);
    }
    assert_eq!(rx.stats().invalid, parts[0].len() as u64);
    rx.read_part(Instant::now(), &parts[0]).unwrap();
    assert_eq!(rx.live_world(), q1);
}

/// The link between a sender and its receiver in the tests below: a tenth of the parts
/// lost, the rest delivered 1–3 ticks after they went (so parts of different ticks overtake
/// each other), and the sender told of each part `notice_ticks` after it went.
struct LossyLink {
    seq: Sequence,
    notice_ticks: u32,
    /// (deliver at tick, bytes) and (report at tick, seq, delivered).
    in_flight: Vec<(u32, Vec<u8>)>,
    notices: VecDeque<(u32, Sequence, bool)>,
    sent: usize,
    lost: usize,
}

impl LossyLink {
    fn new(notice_ticks: u32) -> Self {
        Self {
            seq: Sequence(0),
            notice_ticks,
            in_flight: Vec::new(),
            notices: VecDeque::new(),
            sent: 0,
            lost: 0,
        }
    }

    /// Send the parts of tick `t`.
    fn send(&mut self, r: &mut ChaCha8Rng, s: &mut SnapshotSender, t: u32, parts: Vec<Vec<u8>>) {
        for (i, p) in parts.into_iter().enumerate() {
            s.on_part_sent(Tick(t), i, self.seq);
            self.sent += 1;
            let delivered = !r.random_bool(0.1);
            if delivered {
                self.in_flight.push((t + r.random_range(1..4), p));
            } else {
                self.lost += 1;
            }
            self.notices
                .push_back((t + self.notice_ticks, self.seq, delivered));
            self.seq = self.seq.next();
        }
    }

    /// Hand `rx` the parts due at tick `t`, in any order (`read`: what each gave), then
    /// give the sender the notices due.
    fn deliver(
        &mut self,
        r: &mut ChaCha8Rng,
        s: &mut SnapshotSender,
        rx: &mut SnapshotReceiver,
        t: u32,
        now: Instant,
        mut read: impl FnMut(PartInfo),
    ) {
        self.in_flight.shuffle(r);
        let mut still = Vec::new();
        for (at, p) in self.in_flight.drain(..) {
            if at > t {
                still.push((at, p));
            } else {
                read(rx.read_part(now, &p).unwrap());
            }
        }
        self.in_flight = still;
        while self.notices.front().is_some_and(|n| n.0 <= t) {
            let (_, seq, delivered) = self.notices.pop_front().unwrap();
            s.on_delivery(seq, delivered);
        }
    }
}

/// Sender and receiver over a lossy, reordering link with delayed acks.
#[test]
fn replication_converges_under_loss_and_delayed_acks() {
    let cfg = QuantizeConfig::default();
    let mut r = rng(42);
    let base = Instant::now();
    let tick_dt = Duration::from_secs(1) / 60;
    let mut s = sender(300);
    let mut rx = receiver();
    let mut world = random_world(&mut r, 120);
    let mut link = LossyLink::new(4);
    let mut newest_applied: Option<Tick> = None;
    let mut converged_at = None;
    let mut max_total = 0;
    for t in 1..=400u32 {
        let now = base + tick_dt * t;
        if t < 250 {
            world = evolve(&mut r, &world, 0.1);
        }
        let q = QuantizedWorld::from_world(&world, &cfg);
        // 600 bytes per tick: several parts, and not every change fits.
        let parts = s.build(Tick(t), &q, 600).unwrap();
        let total: usize = parts.iter().map(Vec::len).sum();
        max_total = max_total.max(total);
        assert!(total <= 600 + 60, "{total} bytes for a 600-byte budget");
        link.send(&mut r, &mut s, t, parts);
        link.deliver(&mut r, &mut s, &mut rx, t, now, |info| {
            if info.applied {
                assert!(
                    newest_applied.is_none_or(|n| info.tick >= n),
                    "older part applied"
                );
                newest_applied = Some(info.tick);
            } else {
                assert!(info.tick < newest_applied.unwrap());
            }
        });
        // Whatever the sender uses as a baseline, the receiver holds the same world for it.
        // Acks only follow delivery here, so the receiver must hold every acked baseline.
        if let Some((bt, bw)) = s.acked_baseline() {
            let c = rx.composite(bt).expect("receiver lacks the acked baseline");
            assert_eq!(c, &bw, "baselines disagree at {bt:?}");
        }
        if t >= 250 && converged_at.is_none() && rx.live_world() == q {
            converged_at = Some(t);
        }
    }
    let st = rx.stats();
    // The budget is used, not just respected.
    assert!(max_total > 500, "{max_total}");
    assert!(
        link.lost > link.sent / 20,
        "the link must actually lose parts"
    );
    assert_eq!(st.missing_baseline_dropped, 0);
    assert_eq!(st.invalid, 0);
    assert!(s.stats().entities_deferred > 0, "the budget must bind");
    let converged_at = converged_at.expect("receiver never converged");
    assert!(converged_at <= 280, "converged only at tick {converged_at}");
    let final_world = QuantizedWorld::from_world(&world, &cfg);
    assert_eq!(rx.live_world(), final_world);
}

/// `n` entities at tick `t`, each moving on every tick: entity `i` at x = t / 4, y = i.
fn movers_at(n: u32, t: u32) -> QuantizedWorld {
    let mut w = World::new();
    for i in 0..n {
        let tr = Transform {
            position: Vec3::new(t as f32 * 0.25, i as f32, 0.0),
            ..Transform::default()
        };
        w.insert(EntityId(i), EntityState::new(tr));
    }
    QuantizedWorld::from_world(&w, &QuantizeConfig::default())
}

#[test]
fn tiny_budget_starves_no_entity() {
    let cfg = QuantizeConfig::default();
    let mut s = sender(1100);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    let n = 40u32;
    let mut last_seen = vec![0u32; n as usize];
    for t in 1..=440u32 {
        // After tick 400 half the entities are despawned; despawns must get through too.
        let alive = if t > 400 { n / 2 } else { n };
        let q = movers_at(alive, t);
        // One byte: only the top-priority entity goes out each tick.
        let parts = s.build(Tick(t), &q, 1).unwrap();
        for (i, p) in parts.iter().enumerate() {
            s.on_part_sent(Tick(t), i, seq);
            rx.read_part(Instant::now(), p).unwrap();
            s.on_delivery(seq, true);
            seq = seq.next();
        }
        for (id, e) in rx.live() {
            let x = cfg.dequantize(&e.transform).position.x;
            let sent_at = (x / 0.25).round() as u32;
            if sent_at == t {
                last_seen[id.0 as usize] = t;
            }
        }
        if t > 2 * n && t <= 400 {
            for (i, seen) in last_seen.iter().enumerate() {
                assert!(t - seen <= 2 * n, "entity {i} starved at tick {t}");
            }
        }
    }
    assert_eq!(rx.live().count(), n as usize / 2);
    assert!(rx.live().all(|(id, _)| id.0 < n / 2));
}

/// Movers under a budget of a few entities a snapshot, acks a round trip late, a tenth of
/// the parts lost and the rest reordered: every snapshot is coded against a baseline several
/// ticks old, and most changes wait. No entity the client drew is drawn behind where it was
/// (an update left out would show the baseline's older state), none waits for ever, and
/// every acked baseline is the world the receiver holds for it.
#[test]
fn under_a_tight_budget_an_entity_is_never_drawn_behind_where_it_was() {
    let cfg = QuantizeConfig::default();
    for seed in [7, 8, 9] {
        let mut r = rng(seed);
        let mut s = sender(1100);
        let mut rx = receiver();
        let n = 30u32;
        let mut link = LossyLink::new(5);
        let mut drawn = vec![f32::MIN; n as usize];
        let mut moved_at = vec![0u32; n as usize];
        let mut longest_wait = 0;
        for t in 1..=400u32 {
            let q = movers_at(n, t);
            let parts = s.build(Tick(t), &q, 60).unwrap();
            link.send(&mut r, &mut s, t, parts);
            link.deliver(&mut r, &mut s, &mut rx, t, Instant::now(), |_| {});
            if let Some((bt, bw)) = s.acked_baseline() {
                let c = rx.composite(bt).expect("receiver lacks the acked baseline");
                assert_eq!(c, &bw, "seed {seed}: baselines disagree at {bt:?}");
            }
            for (id, e) in rx.live() {
                let i = id.0 as usize;
                let x = cfg.dequantize(&e.transform).position.x;
                assert!(
                    x >= drawn[i],
                    "seed {seed} tick {t}: {id:?} drawn at x {x} after {}",
                    drawn[i]
                );
                if x > drawn[i] {
                    drawn[i] = x;
                    moved_at[i] = t;
                }
            }
            if t > 100 {
                let waited = moved_at.iter().map(|&m| t - m).max().unwrap();
                longest_wait = longest_wait.max(waited);
            }
        }
        let st = s.stats();
        assert!(
            st.entities_deferred > 1000,
            "seed {seed}: the budget must bind"
        );
        assert!(st.entities_repeated > 100, "seed {seed}: {st:?}");
        assert!(
            longest_wait < 120,
            "seed {seed}: an entity waited {longest_wait} ticks"
        );
    }
}

#[test]
fn heavier_weight_is_sent_more_often() {
    let cfg = QuantizeConfig::default();
    let mut s = sender(1100);
    s.set_priority_weight(EntityId(0), 4.0);
    let mut sends = [0u32; 8];
    let mut seq = Sequence(0);
    for t in 1..=200u32 {
        let mut w = World::new();
        for i in 0..8u32 {
            let tr = Transform {
                position: Vec3::new(t as f32, i as f32, 0.0),
                ..Transform::default()
            };
            w.insert(EntityId(i), EntityState::new(tr));
        }
        let q = QuantizedWorld::from_world(&w, &cfg);
        // Every snapshot is acked before the next is built: each is coded against the one
        // before, and every entity moves, so every one is a candidate on every tick.
        let base = s
            .acked_baseline()
            .map_or_else(QuantizedWorld::default, |(_, w)| w);
        let parts = s.build(Tick(t), &q, 1).unwrap();
        assert_eq!(parts.len(), 1);
        for (id, _) in decode(&parts[0], &base) {
            sends[id.0 as usize] += 1;
        }
        s.on_part_sent(Tick(t), 0, seq);
        s.on_delivery(seq, true);
        seq = seq.next();
    }
    assert!(sends[0] > 2 * sends[1], "{sends:?}");
    assert!(sends.iter().all(|&n| n > 0), "{sends:?}");
}

#[test]
fn late_parts_complete_baselines_but_are_not_applied() {
    let cfg = QuantizeConfig::default();
    let mut r = rng(7);
    let w1 = random_world(&mut r, 20);
    let w2 = evolve(&mut r, &w1, 0.5);
    let (q1, q2) = (
        QuantizedWorld::from_world(&w1, &cfg),
        QuantizedWorld::from_world(&w2, &cfg),
    );
    let mut s = sender(1100);
    let mut rx = receiver();
    let p1 = s.build(Tick(1), &q1, 100_000).unwrap();
    let p2 = s.build(Tick(2), &q2, 100_000).unwrap();
    let now = Instant::now();
    rx.read_part(now, &p2[0]).unwrap();
    let info = rx.read_part(now, &p1[0]).unwrap();
    assert!(!info.applied && info.completed);
    assert_eq!(rx.stats().late_dropped, 1);
    assert_eq!(rx.live_world(), q2);
    assert_eq!(rx.composite(Tick(1)), Some(&q1));
    // Duplicates are counted, not applied.
    assert_eq!(rx.read_part(now, &p2[0]), Err(SnapshotError::Duplicate));
    assert_eq!(rx.stats().duplicates, 1);
    // Estimated server tick advances with time.
    let est = rx
        .estimated_server_tick(now + Duration::from_millis(50))
        .unwrap();
    assert!((est - 5.0).abs() < 0.01, "{est}");
}

#[test]
fn components_travel_and_decode_typed() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Paint {
        rgb: [u8; 3],
        name: String,
    }
    let cfg = QuantizeConfig::default();
    let mut w = World::new();
    let paint = Paint {
        rgb: [1, 2, 3],
        name: "crate".into(),
    };
    w.insert(
        EntityId(9),
        EntityState::with_component(Transform::default(), &paint).unwrap(),
    );
    let q = QuantizedWorld::from_world(&w, &cfg);
    let mut s = sender(1100);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    sync_fully(&mut s, &mut rx, Instant::now(), Tick(1), &q, &mut seq);
    let got = rx.live_world().to_world(&cfg);
    assert_eq!(
        got.get(EntityId(9))
            .unwrap()
            .component_as::<Paint>()
            .unwrap()
            .unwrap(),
        paint
    );
    assert!(Arc::ptr_eq(
        q.get(EntityId(9)).unwrap().component.as_ref().unwrap(),
        q.clone()
            .get(EntityId(9))
            .unwrap()
            .component
            .as_ref()
            .unwrap()
    ));
}

#[test]
fn baseline_falls_back_to_full_snapshot_when_acks_stop() {
    let cfg = QuantizeConfig::default();
    let q = QuantizedWorld::from_world(&random_world(&mut rng(5), 10), &cfg);
    let mut s = sender(1100);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    sync_fully(&mut s, &mut rx, Instant::now(), Tick(1), &q, &mut seq);
    // Acked baseline in range: delta (nothing changed, tiny part).
    let p = s.build(Tick(2), &q, 10_000).unwrap();
    assert!(p[0].len() < 12);
    // Beyond the ring: a full snapshot, which the receiver accepts without a baseline.
    let p = s.build(Tick(100), &q, 10_000).unwrap();
    let info = rx.read_part(Instant::now(), &p[0]).unwrap();
    assert_eq!(info.baseline, None);
    assert_eq!(s.stats().full_snapshots, 2);
    assert_eq!(rx.live_world(), q);
}

/// The cubes scene: 901 boxes on a plane, about 7 % sliding and turning at any time.
pub(crate) fn cubes_world(tick: u32) -> World {
    let mut w = World::new();
    for i in 0..901u32 {
        let gx = (i % 30) as f32 * 2.0 - 30.0;
        let gz = (i / 30) as f32 * 2.0 - 30.0;
        // Each cube is pushed for 60 ticks out of every 14 × 60.
        let phase = (tick / 60 + i) % 14;
        let moved_ticks = if phase == 0 { (tick % 60) as f32 } else { 0.0 };
        let dt = 1.0 / 60.0;
        let v = if phase == 0 {
            Vec3::new(3.0, 0.0, 1.5)
        } else {
            Vec3::ZERO
        };
        // Pushes happen when k is a multiple of 14; count the finished ones.
        let k = tick / 60 + i;
        let finished = if phase == 0 { k / 14 } else { k / 14 + 1 };
        let laps = finished as f32 + moved_ticks * dt;
        let offset = Vec3::new(3.0, 0.0, 1.5) * laps;
        let t = Transform {
            position: Vec3::new(gx, 0.5, gz) + offset,
            rotation: Quat::from_rotation_y(laps * 0.7),
            velocity: Some(v),
        };
        w.insert(EntityId(i), EntityState::new(t));
    }
    w
}

#[test]
fn cubes_scene_bits_per_changed_entity() {
    let cfg = QuantizeConfig::default();
    let mut s = sender(1100);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    let mut acks: VecDeque<(u32, Sequence)> = VecDeque::new();
    let mut measured = SenderStats::default();
    let mut fields_before = FieldBits::default();
    for t in 1..=600u32 {
        let q = QuantizedWorld::from_world(&cubes_world(t), &cfg);
        let parts = s.build(Tick(t), &q, 100_000).unwrap();
        for (i, p) in parts.iter().enumerate() {
            s.on_part_sent(Tick(t), i, seq);
            rx.read_part(Instant::now(), p).unwrap();
            // 100 ms round trip: acks come back six ticks later.
            acks.push_back((t + 6, seq));
            seq = seq.next();
        }
        while acks.front().is_some_and(|a| a.0 <= t) {
            let (_, sq) = acks.pop_front().unwrap();
            s.on_delivery(sq, true);
        }
        if t == 120 {
            measured = s.stats();
            fields_before = rx.field_bits();
        }
        assert_eq!(rx.live_world(), q);
    }
    let st = s.stats();
    let entities = st.entities_sent - measured.entities_sent;
    let wire_bits = (st.bytes - measured.bytes) * 8;
    let per_entity_wire = wire_bits as f64 / entities as f64;
    let f = rx.field_bits();
    let per =
        |field: fn(&FieldBits) -> u64| (field(&f) - field(&fields_before)) as f64 / entities as f64;
    eprintln!(
        "cubes: {entities} changed entities sent over 480 ticks, {per_entity_wire:.1} bits \
         each including headers and indices, {:.0} bytes per tick",
        (st.bytes - measured.bytes) as f64 / 480.0
    );
    eprintln!(
        "cubes: per changed entity: index gaps {:.1}, flags {:.1}, position {:.1}, rotation \
         {:.1}, velocity {:.1}, part headers {:.1}",
        per(|f| f.index_gaps),
        per(|f| f.flags),
        per(|f| f.position),
        per(|f| f.rotation),
        per(|f| f.velocity),
        per(|f| f.part_headers),
    );
    // The receiver decoded exactly what the sender sent, bit for bit.
    assert_eq!(f.entities - fields_before.entities, entities);
    assert_eq!(f.total() - fields_before.total(), wire_bits);
    // Fiedler's per-field averages come to about 57 bits per changed cube.
    assert!(per_entity_wire < 57.0, "{per_entity_wire}");
}

#[test]
fn bit_flipped_parts_never_panic_and_errors_leave_the_world_alone() {
    let cfg = QuantizeConfig::default();
    let mut r = rng(11);
    let w0 = random_world(&mut r, 80);
    let q0 = QuantizedWorld::from_world(&w0, &cfg);
    let q1 = QuantizedWorld::from_world(&evolve(&mut r, &w0, 0.4), &cfg);
    let mut s = sender(400);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    sync_fully(&mut s, &mut rx, Instant::now(), Tick(1), &q0, &mut seq);
    let parts = s.build(Tick(2), &q1, 100_000).unwrap();
    let before = rx.live_world();
    let mut rejected = 0;
    for _ in 0..3000 {
        let mut p = parts[r.random_range(0..parts.len())].clone();
        for _ in 0..r.random_range(1..4) {
            let bit = r.random_range(0..p.len() * 8);
            p[bit / 8] ^= 1 << (bit % 8);
        }
        if r.random_bool(0.2) {
            p.truncate(r.random_range(0..p.len()));
        }
        let mut victim = rx.clone();
        if victim.read_part(Instant::now(), &p).is_err() {
            rejected += 1;
            assert_eq!(victim.live_world(), before);
            assert_eq!(victim.stats().parts_applied, rx.stats().parts_applied);
        }
    }
    // Most corruptions are caught by the range and length checks alone.
    assert!(rejected > 1000, "{rejected}");
}

// ---- Interpolation buffer: spawns, despawns, rotation, capacity, missing velocity ----

/// The tick period the playout tests use, also given to the buffer so that arrival times
/// and tick times agree exactly.
const PLAYOUT_TICK: Duration = Duration::from_micros(16_667);

fn playout(config: InterpolationConfig) -> InterpolationBuffer {
    InterpolationBuffer::new(InterpolationConfig {
        tick_interval: PLAYOUT_TICK,
        initial_send_interval: PLAYOUT_TICK,
        ..config
    })
}

/// An entity at x = tick / 10, facing along y by `tick × turn_rad`.
fn at_tick(tick: u32, turn_rad: f32, velocity: Option<Vec3>) -> Transform {
    Transform {
        position: Vec3::new(tick as f32 * 0.1, 0.0, 0.0),
        rotation: Quat::from_rotation_y(tick as f32 * turn_rad),
        velocity,
    }
}

fn find(s: &[(EntityId, Transform)], id: u32) -> Option<Transform> {
    s.iter().find(|(i, _)| i.0 == id).map(|(_, t)| *t)
}

#[test]
fn interpolation_shows_a_spawn_from_its_first_tick_and_holds_a_despawn_until_it_is_due() {
    let base = Instant::now();
    let mut buf = playout(InterpolationConfig::default());
    // Entity 1 lives throughout, entity 2 spawns at tick 20, entity 3 despawns after tick 29.
    let (mut saw_spawn, mut saw_held) = (false, false);
    for tick in 0..60u32 {
        let mut states = vec![(EntityId(1), at_tick(tick, 0.0, None))];
        if tick >= 20 {
            states.push((EntityId(2), at_tick(tick, 0.0, None)));
        }
        if tick < 30 {
            states.push((EntityId(3), at_tick(tick, 0.0, None)));
        }
        let arrival = base + PLAYOUT_TICK * tick;
        assert!(buf.push(arrival, Tick(tick), states));
        // Four frames per tick, so render time falls on both sides of every state.
        for k in 0..4 {
            let now = arrival + PLAYOUT_TICK / 4 * k;
            let s = buf.sample(now);
            let rt = buf.render_tick(now).expect("pushed");
            if rt <= 0.0 || rt.fract().abs() < 1e-6 {
                continue;
            }
            let newest = f64::from(tick);
            let x = |t: Transform| f64::from(t.position.x);
            // The survivor is interpolated (or extrapolated with no velocity: held).
            let one = find(&s, 1).expect("entity 1 is always drawn");
            assert!((x(one) - rt.min(newest) * 0.1).abs() < 1e-3, "rt {rt}");
            match find(&s, 2) {
                // Drawn only once render time reaches its first state, and at its own
                // position, not moved in from anywhere.
                Some(t) => {
                    assert!(rt >= 20.0, "entity 2 drawn at render tick {rt}");
                    assert!((x(t) - rt.min(newest) * 0.1).abs() < 1e-3, "rt {rt}");
                    saw_spawn |= rt < 21.0;
                }
                None => assert!(rt < 20.0, "entity 2 missing at render tick {rt}"),
            }
            match find(&s, 3) {
                Some(t) if rt > 29.0 => {
                    // Between its last state and the first state without it: held where
                    // it was last seen, not slid towards some default.
                    assert!(rt < 30.0, "entity 3 drawn at render tick {rt}");
                    assert_eq!(t.position.x, 29.0 * 0.1, "rt {rt}");
                    saw_held = true;
                }
                Some(t) => assert!((x(t) - rt * 0.1).abs() < 1e-3, "rt {rt}"),
                None => assert!(rt >= 30.0, "entity 3 missing at render tick {rt}"),
            }
        }
    }
    assert!(
        saw_spawn && saw_held,
        "render time never crossed the spawn or the despawn"
    );
}

#[test]
fn interpolation_slerps_rotation_at_constant_angular_speed() {
    let base = Instant::now();
    // Fixed delay 0: render time follows arrival time exactly.
    let mut buf = playout(InterpolationConfig {
        fixed_delay: Some(Duration::ZERO),
        ..InterpolationConfig::default()
    });
    // 1.2 rad per tick: a normalised lerp would lag or lead mid-step by about 0.03 rad.
    let turn = 1.2f32;
    for tick in 0..2u32 {
        buf.push(
            base + PLAYOUT_TICK * tick,
            Tick(tick),
            [(EntityId(7), at_tick(tick, turn, None))],
        );
    }
    let mut checked = 0;
    for k in 1..8u32 {
        let now = base + PLAYOUT_TICK * k / 8;
        let s = buf.sample(now);
        let rt = buf.render_tick(now).expect("pushed") as f32;
        let r = find(&s, 7).expect("drawn").rotation;
        assert!(
            (r.length() - 1.0).abs() < 1e-5,
            "not a unit rotation: {r:?}"
        );
        let want = Quat::from_rotation_y(rt * turn);
        assert!(
            r.angle_between(want) < 1e-3,
            "k {k}: {} rad off",
            r.angle_between(want)
        );
        checked += 1;
    }
    assert_eq!(checked, 7);
}

#[test]
fn interpolation_capacity_evicts_the_oldest_ticks() {
    let base = Instant::now();
    let mut buf = playout(InterpolationConfig {
        capacity: 4,
        fixed_delay: Some(Duration::ZERO),
        ..InterpolationConfig::default()
    });
    for tick in 0..10u32 {
        buf.push(
            base + PLAYOUT_TICK * tick,
            Tick(tick),
            [(EntityId(1), at_tick(tick, 0.0, None))],
        );
    }
    // Render time at tick 2.5: ticks 0..=5 were evicted, so the oldest kept (6) is drawn.
    let s = buf.sample(base + PLAYOUT_TICK * 5 / 2);
    assert_eq!(find(&s, 1).expect("drawn").position.x, 6.0 * 0.1);

    // A capacity below two still keeps the pair interpolation needs.
    let mut pair = playout(InterpolationConfig {
        capacity: 1,
        fixed_delay: Some(Duration::ZERO),
        ..InterpolationConfig::default()
    });
    for tick in 0..2u32 {
        pair.push(
            base + PLAYOUT_TICK * tick,
            Tick(tick),
            [(EntityId(1), at_tick(tick, 0.0, None))],
        );
    }
    let s = pair.sample(base + PLAYOUT_TICK / 2);
    let x = find(&s, 1).expect("drawn").position.x;
    assert!(
        (x - 0.05).abs() < 1e-4,
        "halfway between ticks 0 and 1: {x}"
    );
}

#[test]
fn interpolation_without_velocity_holds_on_underrun_and_takes_the_newer_velocity() {
    let base = Instant::now();
    let mut buf = playout(InterpolationConfig {
        fixed_delay: Some(Duration::ZERO),
        ..InterpolationConfig::default()
    });
    let v = Vec3::new(6.0, 0.0, 0.0);
    // Entity 1 never has a velocity; entity 2 gains one at tick 1; entity 3 loses it.
    let states = |tick: u32| {
        [
            (EntityId(1), at_tick(tick, 0.0, None)),
            (EntityId(2), at_tick(tick, 0.0, (tick >= 1).then_some(v))),
            (EntityId(3), at_tick(tick, 0.0, (tick < 1).then_some(v))),
        ]
    };
    for tick in 0..2u32 {
        buf.push(base + PLAYOUT_TICK * tick, Tick(tick), states(tick));
    }
    let s = buf.sample(base + PLAYOUT_TICK / 2);
    assert_eq!(find(&s, 1).expect("drawn").velocity, None);
    assert_eq!(find(&s, 2).expect("drawn").velocity, Some(v));
    assert_eq!(find(&s, 3).expect("drawn").velocity, None);
    // The feed stops; 50 ms past the newest state an entity without velocity stays put,
    // while one with velocity moves on (6 m/s × 50 ms).
    let s = buf.sample(base + PLAYOUT_TICK + Duration::from_millis(50));
    assert!(buf.stats().extrapolated_frames >= 1);
    let one = find(&s, 1).expect("drawn");
    assert_eq!(one.position.x, 0.1);
    assert!(one.position.is_finite());
    assert_eq!(find(&s, 3).expect("drawn").position.x, 0.1);
    let two = find(&s, 2).expect("drawn").position.x;
    assert!((two - (0.1 + 0.3)).abs() < 1e-3, "{two}");
}

/// A quantized entity whose every value is an edge of its range (0, 1, max − 1, max) or
/// random, with or without velocity and component.
fn edge_entity(r: &mut ChaCha8Rng, cfg: &QuantizeConfig) -> QuantizedEntity {
    let mut pick = |max: u32| match r.random_range(0..5) {
        0 => 0,
        1 => 1.min(max),
        2 => max.saturating_sub(1),
        3 => max,
        _ => r.random_range(0..=max),
    };
    let position = [0, 1, 2].map(|axis| pick(cfg.position_steps(axis)));
    let smallest = [0; 3].map(|_| pick(cfg.rotation_max()) as u16);
    let velocity = [0; 3].map(|_| pick(cfg.velocity_steps()));
    let largest = pick(3) as u8;
    let has_velocity = pick(1) == 1;
    let component = match pick(2) {
        0 => None,
        1 => Some(Arc::from(&[][..])),
        _ => Some(Arc::from(&[1, 2, 3][..])),
    };
    QuantizedEntity {
        transform: QuantizedTransform {
            position,
            rotation: QuantizedRotation { largest, smallest },
            velocity: has_velocity.then_some(velocity),
        },
        component,
    }
}

/// `e` with some of its fields moved: a small step, a jump to an edge, or a new value.
fn edge_change(r: &mut ChaCha8Rng, cfg: &QuantizeConfig, e: &QuantizedEntity) -> QuantizedEntity {
    let other = edge_entity(r, cfg);
    let mut out = e.clone();
    let t = &mut out.transform;
    if r.random_bool(0.6) {
        for axis in 0..3 {
            let step: i64 = r.random_range(-40..=40);
            let max = i64::from(cfg.position_steps(axis));
            t.position[axis] = (i64::from(t.position[axis]) + step).clamp(0, max) as u32;
        }
    }
    if r.random_bool(0.2) {
        t.position = other.transform.position;
    }
    if r.random_bool(0.4) {
        // Same largest component, small turn.
        for c in &mut t.rotation.smallest {
            let step: i32 = r.random_range(-20..=20);
            *c = (i32::from(*c) + step).clamp(0, cfg.rotation_max() as i32) as u16;
        }
    }
    if r.random_bool(0.2) {
        t.rotation = other.transform.rotation;
    }
    if r.random_bool(0.5) {
        t.velocity = other.transform.velocity;
    }
    if r.random_bool(0.2) {
        out.component = other.component;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Values at the edges of their ranges, velocities that appear and vanish, rotations that
    /// change their largest component, baselines up to a ring's length back (prediction
    /// clamped at the box), updates at the first and last index of a large baseline and
    /// spawns up to id u32::MAX: every part decodes to the sender's world bit for bit, and
    /// never spends more bits than the sender's estimate allowed for.
    #[test]
    fn edge_values_round_trip_within_the_estimate(
        seed: u64, n in 1usize..400, ticks in 1u32..64, max_part in 64usize..1100,
        with_components: bool,
    ) {
        let cfg = QuantizeConfig::default();
        let lim = cfg.limits();
        let mut r = rng(seed);
        let strip = |mut e: QuantizedEntity| {
            if !with_components {
                e.component = None;
            }
            e
        };
        let base: Vec<(EntityId, QuantizedEntity)> =
            (0..n as u32).map(|i| (EntityId(i * 3), strip(edge_entity(&mut r, &cfg)))).collect();
        let mut next: Vec<(EntityId, QuantizedEntity)> = Vec::new();
        for (i, (id, e)) in base.iter().enumerate() {
            // The first and the last index always change; a fifth of the others.
            if i == 0 || i == n - 1 || r.random_bool(0.2) {
                next.push((*id, strip(edge_change(&mut r, &cfg, e))));
            } else if !r.random_bool(0.05) {
                next.push((*id, e.clone()));
            }
        }
        for id in [u32::MAX, u32::MAX - 1, u32::MAX - 1000] {
            if r.random_bool(0.5) {
                next.push((EntityId(id), strip(edge_entity(&mut r, &cfg))));
            }
        }
        let q0 = QuantizedWorld::from_entities(base);
        let q1 = QuantizedWorld::from_entities(next);

        let mut s = sender(max_part);
        let mut rx = receiver();
        let mut seq = Sequence(0);
        let now = Instant::now();
        sync_fully(&mut s, &mut rx, now, Tick(1), &q0, &mut seq);
        let parts = s.build(Tick(1 + ticks), &q1, usize::MAX / 16).unwrap();
        for (i, p) in parts.iter().enumerate() {
            prop_assert!(p.len() <= max_part);
            let mut bits = part::FieldBits::default();
            let mut reader = BitReader::new(p);
            let h = part::read_header(&mut reader).unwrap();
            let changes = part::decode_body(&mut reader, &h, &q0, &lim, &mut bits).unwrap();
            // The most the sender's estimate can have charged for these entities: each with
            // its index or id, and the parameters of a section.
            let mut estimate = part::PART_OVERHEAD_BITS;
            for (id, change) in &changes {
                match (q0.get(*id), change) {
                    (Some(b), Some(e)) => estimate += part::entity_bits(b, e, ticks, &lim),
                    (None, Some(e)) => estimate += part::entity_bits(&part::spawn_base(), e, 0, &lim),
                    _ => {}
                }
                estimate += part::MAX_INDEX_BITS;
            }
            prop_assert!(p.len() * 8 <= estimate, "{} bits > estimate {estimate}", p.len() * 8);
            prop_assert_eq!(bits.total(), p.len() as u64 * 8);
            if !with_components {
                prop_assert_eq!(bits.component, 0);
            }
            s.on_part_sent(Tick(1 + ticks), i, seq);
            rx.read_part(now, p).unwrap();
            seq = seq.next();
        }
        prop_assert_eq!(rx.live_world(), q1);
    }
}

#[test]
fn parts_without_components_spend_no_flag_bits_on_them() {
    // Every entity moves and turns, none has a component: one flag bit each, no component
    // bits, and the per-section code says so once.
    let cfg = QuantizeConfig::default();
    let world = |t: u32| {
        let mut w = World::new();
        for i in 0..100u32 {
            let x = i as f32 + t as f32 * 0.05;
            let state = EntityState::new(Transform {
                position: Vec3::new(x, 0.5, 0.0),
                rotation: Quat::from_rotation_y(x),
                velocity: Some(Vec3::new(3.0, 0.0, 0.0)),
            });
            w.insert(EntityId(i), state);
        }
        QuantizedWorld::from_world(&w, &cfg)
    };
    let mut s = sender(1100);
    let mut rx = receiver();
    let mut seq = Sequence(0);
    sync_fully(
        &mut s,
        &mut rx,
        Instant::now(),
        Tick(1),
        &world(1),
        &mut seq,
    );
    let before = rx.field_bits();
    sync_fully(
        &mut s,
        &mut rx,
        Instant::now(),
        Tick(4),
        &world(4),
        &mut seq,
    );
    let after = rx.field_bits();
    assert_eq!(after.entities - before.entities, 100);
    assert_eq!(after.flags - before.flags, 100);
    assert_eq!(after.component, 0);
    assert_eq!(rx.live_world(), world(4));
}

/// `q0` and then `q1`, `ticks` later, sent whole to one client that sees every entity, with
/// the shared codes and deltas of those two ticks (prepared for the one baseline age and
/// spawns) and parts of at most `max_part` bytes, every part delivered: the world the client
/// holds after, and the shared deltas. Fails on a part longer than `max_part`.
fn sent_with_shared_codes(
    q0: &QuantizedWorld,
    q1: &QuantizedWorld,
    ticks: u32,
    max_part: usize,
) -> Result<(QuantizedWorld, super::shared::SharedDeltas), TestCaseError> {
    use super::world::TickWorld;
    let lim = QuantizeConfig::default().limits();
    let (first, second) = (Tick(1), Tick(1 + ticks));
    let t1 = TickWorld::new(q0.clone(), first, None);
    let t2 = TickWorld::new(q1.clone(), second, Some(&t1));
    let everyone =
        |t: &TickWorld| ClientWorld::View(t.view(Arc::new((0..t.world.len() as u32).collect())));
    let mut shared = super::shared::SharedDeltas::default();
    let mut scratch = part::EncodeScratch::default();
    shared.prepare(
        &t2,
        std::slice::from_ref(&t1),
        &[ticks, 0],
        &lim,
        &mut scratch,
    );

    let mut s = sender(max_part);
    let mut rx = receiver();
    let now = Instant::now();
    let mut seq = Sequence(0);
    for (tick, world) in [(first, everyone(&t1)), (second, everyone(&t2))] {
        let parts = s
            .build_weighted(tick, world, usize::MAX / 16, None, Some(&shared))
            .unwrap();
        for (i, p) in parts.iter().enumerate() {
            prop_assert!(p.len() <= max_part, "{} bytes > {max_part}", p.len());
            s.on_part_sent(tick, i, seq);
            rx.read_part(now, p).unwrap();
            s.on_delivery(seq, true);
            seq = seq.next();
        }
    }
    Ok((rx.live_world(), shared))
}

/// A crowd that walks a step, where a share `teleport` of the entities (never one the shared
/// codes sample, and always entity 1) also teleport, turn and take a large component, and a
/// few arrive with one: deltas longer than a shared slot keeps, which each client measures
/// itself.
fn walkers_and_teleporters(r: &mut ChaCha8Rng, n: u32, teleport: f64) -> [QuantizedWorld; 2] {
    let cfg = QuantizeConfig::default();
    let mut before = World::new();
    for i in 0..n {
        // In one corner of the box: the spawn code's orders suit small coordinates.
        let position = Vec3::new(
            r.random_range(-510.0..-480.0),
            0.0,
            r.random_range(-510.0..-480.0),
        );
        before.insert(
            EntityId(i),
            EntityState::new(Transform {
                position,
                rotation: Quat::from_rotation_y(r.random_range(0.0..1.0)),
                velocity: Some(Vec3::new(1.4, 0.0, 0.0)),
            }),
        );
    }
    let mut after = before.clone();
    for i in 0..n {
        let e = after.get_mut(EntityId(i)).unwrap();
        // Every field changes a little, so the shared code covers every field, with the
        // small orders of small changes (its sample is every eighth entity, none of which
        // teleports).
        e.transform.position.x += 0.05;
        e.transform.rotation *= Quat::from_rotation_y(0.01);
        e.transform.velocity = Some(Vec3::new(1.5, 0.0, 0.0));
        e.component = Some(vec![1]);
        // (`||` keeps the draws of every other entity as they were.)
        if i % 8 != 0 && (r.random_bool(teleport) || i == 1) {
            e.transform.position = Vec3::new(
                r.random_range(300.0..500.0),
                r.random_range(0.0..50.0),
                r.random_range(300.0..500.0),
            );
            e.transform.rotation = Quat::from_rotation_x(r.random_range(1.0..3.0));
            e.transform.velocity = Some(Vec3::new(-30.0, 20.0, 25.0));
            e.component = Some((0..r.random_range(8..24)).map(|_| r.random()).collect());
        }
    }
    // Newcomers with large components: spawns no slot keeps either.
    for i in n..n + n / 10 {
        let mut e = EntityState::new(Transform {
            position: Vec3::new(r.random_range(300.0..500.0), 40.0, 500.0),
            rotation: Quat::from_rotation_x(r.random_range(1.0..3.0)),
            velocity: Some(Vec3::new(-30.0, 20.0, 25.0)),
        });
        e.component = Some((0..r.random_range(8..24)).map(|_| r.random()).collect());
        after.insert(EntityId(i), e);
    }
    [before, after].map(|w| QuantizedWorld::from_world(&w, &cfg))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Deltas no slot keeps are measured by each client, yet written with the section's
    /// shared code when it covers the whole part: a part never grows past its size for that,
    /// and every part still decodes to the sender's world.
    #[test]
    fn a_part_written_with_a_shared_code_stays_within_its_size(
        seed: u64, n in 20u32..300, max_part in 200usize..1100, teleport in 0.05f64..0.95,
    ) {
        let lim = QuantizeConfig::default().limits();
        let mut r = rng(seed);
        let [q0, q1] = walkers_and_teleporters(&mut r, n, teleport);
        let (held, shared) = sent_with_shared_codes(&q0, &q1, 2, max_part)?;
        prop_assert_eq!(held, q1);
        // The long deltas were there, and measured by the client.
        let section = shared.section(Tick(3), 2).expect("a section for two ticks");
        let own = (0..n as usize)
            .filter(|&g| {
                matches!(
                    section.delta(g, || unreachable!(), &lim),
                    Some(shared::SharedLookup::Hit(shared::SharedDelta::Own))
                )
            })
            .count();
        prop_assert!(own > 0, "{own} deltas of {n} measured by the client");
    }

    /// A delta the section's shared code cannot write (a field the code has no room for)
    /// shares a part with deltas written with that code: the part codes its section with a
    /// code of its own, measuring the shared ones again, and still decodes to the world.
    #[test]
    fn a_part_mixing_shared_deltas_with_one_its_code_cannot_write_decodes(
        seed: u64, n in 24u32..200, turn in 0.05f64..0.9, max_part in 200usize..1100,
    ) {
        use super::shared::{SharedDelta, SharedLookup};
        let cfg = QuantizeConfig::default();
        let lim = cfg.limits();
        let mut r = rng(seed);
        let mut before = World::new();
        for i in 0..n {
            let position = Vec3::new(r.random_range(-100.0..100.0), 0.0, r.random_range(-100.0..100.0));
            before.insert(EntityId(i), EntityState::new(Transform { position, rotation: Quat::IDENTITY, velocity: None }));
        }
        // Everyone walks; some turn as well (always entity 1), none of them in the code's
        // sample (every eighth entity), so the shared code writes positions alone.
        let mut after = before.clone();
        for i in 0..n {
            let e = after.get_mut(EntityId(i)).unwrap();
            e.transform.position.x += 0.5;
            // (`||` keeps the draws of every other entity as they were.)
            if i % 8 != 0 && (r.random_bool(turn) || i == 1) {
                e.transform.rotation = Quat::from_rotation_y(r.random_range(0.5..3.0));
            }
        }
        let [q0, q1] = [before, after].map(|w| QuantizedWorld::from_world(&w, &cfg));
        let (held, shared) = sent_with_shared_codes(&q0, &q1, 1, max_part)?;
        prop_assert_eq!(held, q1);
        // Both kinds were there: deltas written with the shared code, and turns it cannot
        // write, which the client measured.
        let section = shared.section(Tick(2), 1).expect("a section for one tick");
        let found = |kind: fn(&SharedDelta) -> bool| {
            (0..n as usize)
                .filter(|&g| {
                    matches!(section.delta(g, || unreachable!(), &lim), Some(SharedLookup::Hit(d)) if kind(&d))
                })
                .count()
        };
        let own = found(|d| matches!(d, SharedDelta::Own));
        let bits = found(|d| matches!(d, SharedDelta::Bits { .. }));
        prop_assert!(own > 0, "{own} turns measured by the client");
        prop_assert!(bits > 0, "{bits} deltas written with the shared code");
    }
}
