//! Who sees what in a big world: an area of interest, a room, and an entity every player
//! sees. In virtual time: no sockets and no waiting, it runs in about two seconds.
//!
//! A square kilometre holds 2,000 entities walking in circles. Four players each see what is
//! within 100 m of their view point: players 0 and 1 side by side, players 2 and 3 far off. A
//! scoreboard at the map's centre is marked always visible; a chest between players 0 and 1
//! is in room "red", which player 1 alone has joined. Every link loses 5 % of its packets.
//! Each player draws a frame a tick and counts what its views say entered and left them.
//! After ten seconds at 30 Hz the example prints what each player holds and what it cost,
//! then the same game with the whole world sent to everyone. Run it with
//! `cargo run --release -p snapsync --example interest`.

use std::time::Duration;

use snapsync::conditioner::ConditionerConfig;
use snapsync::glam::Vec3;
use snapsync::replication::{
    Client, ClientConfig, ConfigError, InterestConfig, RoomId, Server, ServerConfig, View,
};
use snapsync::sim::Sim;
use snapsync::snapshot::{EntityId, EntityState, QuantizeConfig, Transform, World};

/// 30 ticks a second.
const TICK: Duration = Duration::from_micros(33_333);
const SECONDS: u32 = 10;
const WALKERS: u32 = 2_000;
/// Seen by every player, wherever it is.
const SCOREBOARD: EntityId = EntityId(WALKERS);
/// Seen only by the members of `RED` near it.
const CHEST: EntityId = EntityId(WALKERS + 1);
const RED: RoomId = RoomId(1);
/// Where each player sees from (x, z).
const VIEWS: [(f32, f32); 4] = [
    (-300.0, -300.0),
    (-280.0, -300.0),
    (300.0, 300.0),
    (300.0, -300.0),
];

/// Where walker `id` is at `t` seconds: a circle of 5–25 m around its own spot on the map.
fn walker(id: u32, t: f32) -> Vec3 {
    // Spots spread over the square kilometre by two multiplicative hashes of the id.
    let spot = |k: u32| (id.wrapping_mul(k) % 1000) as f32 - 500.0;
    let (r, w) = (5.0 + (id % 5) as f32 * 5.0, 0.2 + (id % 7) as f32 * 0.05);
    let a = w * t + id as f32;
    Vec3::new(
        spot(2_654_435_761) + r * a.cos(),
        0.0,
        spot(2_246_822_519) + r * a.sin(),
    )
}

fn at(position: Vec3) -> EntityState {
    EntityState::new(Transform {
        position,
        ..Transform::default()
    })
}

/// What one player ended with.
struct Row {
    held: usize,
    scoreboard: bool,
    chest: bool,
    kbit_s: f64,
    /// Entities that entered and left the player's view after its first second.
    entered: usize,
    left: usize,
}

fn play(interest: Option<InterestConfig>) -> Result<Vec<Row>, ConfigError> {
    let config = ServerConfig {
        quantize: QuantizeConfig {
            tick_interval: TICK,
            ..QuantizeConfig::default()
        },
        interest,
        ..ServerConfig::default()
    };
    let mut sim = Sim::<Server, Client<()>>::replication(config, 7)?;
    for _ in VIEWS {
        sim.add_replication_client(ClientConfig::default())?;
    }
    sim.set_all_links(ConditionerConfig {
        enabled: true,
        loss_pct: 5.0,
        latency: Duration::from_millis(40),
        ..ConditionerConfig::off()
    });
    sim.server.set_always_visible(SCOREBOARD, true);
    sim.server.add_entity_to_room(CHEST, RED);

    let mut world = World::new();
    world.insert(SCOREBOARD, at(Vec3::ZERO));
    world.insert(CHEST, at(Vec3::new(-290.0, 0.0, -295.0)));
    let mut in_red = false;
    let mut views = vec![View::default(); VIEWS.len()];
    let mut crossings = vec![(0, 0); VIEWS.len()];
    for tick in 0..SECONDS * 30 {
        let t = tick as f32 * TICK.as_secs_f32();
        for id in 0..WALKERS {
            world.insert(EntityId(id), at(walker(id, t)));
        }
        for (i, &(x, z)) in VIEWS.iter().enumerate() {
            let Some(id) = sim.clients[i].client.welcome().map(|w| w.client_id) else {
                continue;
            };
            sim.server.set_view_point(id, Some(Vec3::new(x, 0.0, z)));
            if i == 1 && !in_red {
                in_red = sim.server.join_room(id, RED);
            }
        }
        let now = sim.now;
        sim.server.tick(now, &world);
        sim.run_for(TICK);
        // A frame a tick. Counted from the second second on: in the first the whole scope
        // (or world) arrives, a snapshot's budget at a time.
        for ((c, view), (entered, left)) in
            sim.clients.iter_mut().zip(&mut views).zip(&mut crossings)
        {
            c.client.view_into(sim.now, view);
            if tick >= 30 {
                *entered += view.entered.len();
                *left += view.left.len();
            }
        }
    }

    let rows = sim
        .clients
        .iter()
        .zip(crossings)
        .map(|(c, (entered, left))| {
            let held = c.client.receiver().map(|r| r.live_world());
            let bytes = c
                .client
                .welcome()
                .and_then(|w| sim.server.client_summary(w.client_id))
                .map_or(0, |s| s.snapshots.bytes);
            Row {
                held: held.as_ref().map_or(0, |w| w.len()),
                scoreboard: held.as_ref().is_some_and(|w| w.get(SCOREBOARD).is_some()),
                chest: held.as_ref().is_some_and(|w| w.get(CHEST).is_some()),
                kbit_s: bytes as f64 * 8.0 / f64::from(SECONDS) / 1000.0,
                entered,
                left,
            }
        })
        .collect();
    Ok(rows)
}

fn print(rows: &[Row]) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!("player  view point     held  scoreboard  chest  kbit/s down  entered  left");
    for (i, (r, (x, z))) in rows.iter().zip(VIEWS).enumerate() {
        println!(
            "{i:>6}  ({x:>4}, {z:>4})  {:>5}  {:<10}  {:<5}  {:>11.1}  {:>7}  {:>4}",
            r.held,
            yes(r.scoreboard),
            yes(r.chest),
            r.kbit_s,
            r.entered,
            r.left
        );
    }
}

fn main() -> Result<(), ConfigError> {
    let entities = WALKERS + 2;
    println!(
        "{entities} entities on a square kilometre, 4 players, 5 % loss, {SECONDS} s at 30 Hz"
    );
    println!(
        "\nEach player sees 100 m around its view point (and the scoreboard, always visible):"
    );
    print(&play(Some(InterestConfig::radius(100.0)))?);
    println!("\nThe whole world to every player (no area of interest; the room still holds):");
    print(&play(None)?);
    Ok(())
}
