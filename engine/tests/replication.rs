//! Snapshot replication through the whole stack (connection, acks, delivery notices,
//! conditioner) in virtual time.

use std::collections::BTreeMap;
use std::time::Duration;

use glam::{Quat, Vec3};
use snapsync::conditioner::ConditionerConfig;
use snapsync::sim::Sim;
use snapsync::snapshot::{
    EntityId, EntityState, QuantizeConfig, QuantizedWorld, ReceiverConfig, SenderConfig,
    SnapshotReceiver, SnapshotSender, Tick, Transform, World,
};
use snapsync::{ClientConfig, ClientId, Event, ServerConfig};

const TICK: Duration = Duration::from_micros(16_667);

/// 150 entities moving on circles; some spawn and despawn while things move; all stop at
/// `stop_tick`.
fn world_at(tick: u32, stop_tick: u32) -> World {
    let t = tick.min(stop_tick) as f32 / 60.0;
    let mut w = World::new();
    for i in 0..150u32 {
        // Entities 100..150 exist only in some windows of time: spawns and despawns.
        if i >= 100 && (tick.min(stop_tick) / 40 + i).is_multiple_of(3) {
            continue;
        }
        let phase = i as f32 * 0.37;
        let r = 5.0 + (i % 7) as f32;
        let moving = i % 4 != 0; // a quarter never moves
        let a = if moving { t + phase } else { phase };
        w.insert(
            EntityId(i),
            EntityState::new(Transform {
                position: Vec3::new(r * a.cos(), (i % 3) as f32, r * a.sin()),
                rotation: Quat::from_rotation_y(a),
                velocity: Some(if moving && tick < stop_tick {
                    Vec3::new(-r * a.sin(), 0.0, r * a.cos())
                } else {
                    Vec3::ZERO
                }),
            }),
        );
    }
    w
}

#[test]
fn clients_converge_at_ten_percent_loss_and_100ms_latency() {
    for seed in [1u64, 2, 3] {
        let mut sim = Sim::new(ServerConfig::default(), seed);
        for _ in 0..2 {
            sim.add_client(ClientConfig::default());
        }
        assert!(sim.run_until_cond(Duration::from_secs(2), |s| {
            s.clients.iter().all(|c| c.client.is_connected())
        }));
        sim.set_all_links(ConditionerConfig {
            loss_pct: 10.0,
            latency: Duration::from_millis(100),
            enabled: true,
            ..ConditionerConfig::off()
        });
        let q = QuantizeConfig::default();
        let ids: Vec<ClientId> = sim.server.clients().collect();
        let mut senders: BTreeMap<ClientId, SnapshotSender> = ids
            .iter()
            .map(|id| (*id, SnapshotSender::new(SenderConfig::default()).unwrap()))
            .collect();
        let mut receivers: Vec<SnapshotReceiver> = (0..2)
            .map(|_| SnapshotReceiver::new(ReceiverConfig::default()).unwrap())
            .collect();
        let mut newest_applied = [0u32; 2];
        let stop_tick = 300;
        let mut converged_at: Vec<Option<u32>> = vec![None; 2];
        let mut server_world = QuantizedWorld::default();
        for tick in 1..=stop_tick + 120 {
            let now = sim.now;
            server_world = QuantizedWorld::from_world(&world_at(tick, stop_tick), &q);
            for (id, sender) in senders.iter_mut() {
                let parts = sender.build(Tick(tick), &server_world, 4000).unwrap();
                for (i, part) in parts.iter().enumerate() {
                    let seq = sim.server.send_datagram(now, *id, part).unwrap();
                    sender.on_part_sent(Tick(tick), i, seq);
                }
            }
            sim.run_for(TICK);
            for (id, e) in sim.server_events.drain(..) {
                if let Event::Delivery { sequence, acked } = e {
                    senders.get_mut(&id).unwrap().on_delivery(sequence, acked);
                }
            }
            for (i, c) in sim.clients.iter_mut().enumerate() {
                for e in c.events.drain(..) {
                    if let Event::Datagram { payload, .. } = e
                        && let Ok(info) = receivers[i].read_part(sim.now, &payload)
                        && info.applied
                    {
                        assert!(
                            info.tick.0 >= newest_applied[i],
                            "seed {seed}: applied tick {} after {}",
                            info.tick.0,
                            newest_applied[i]
                        );
                        newest_applied[i] = info.tick.0;
                    }
                }
                if tick >= stop_tick
                    && converged_at[i].is_none()
                    && receivers[i].live_world() == server_world
                {
                    converged_at[i] = Some(tick - stop_tick);
                }
            }
        }
        for i in 0..2 {
            let after = converged_at[i]
                .unwrap_or_else(|| panic!("seed {seed}: client {i} never converged"));
            // 100 ms one way is 6 ticks; a lost part costs a tick or two more.
            assert!(
                after <= 30,
                "seed {seed}: client {i} converged {after} ticks after the stop"
            );
            assert_eq!(receivers[i].live_world(), server_world, "and stays equal");
            let s = receivers[i].stats();
            assert!(s.parts_received > 0);
            assert_eq!(s.invalid, 0);
            eprintln!(
                "seed {seed} client {i}: equal {after} ticks after motion stopped; missing-baseline drops {}, late {}",
                s.missing_baseline_dropped, s.late_dropped
            );
        }
    }
}
