//! The server's game: a scene stepped at a fixed tick, replicated through
//! [`snapsync::replication::Server`]. No I/O: the real server drives it on a socket, the
//! benches in virtual time, with the same calls.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use snapsync::ClientId;
use snapsync::replication::{self, MAX_SEND_INTERVAL_TICKS, ServerEvent, SnapshotDelivery};
use snapsync::snapshot::{EntityId, EntityState, QuantizeConfig, SenderStats, Transform, World};

use crate::protocol::WelcomeData;
use crate::scene::{Body, PlayerInput, Scene, SceneKind, build_scene};

/// The quantization both sides use for a scene: a box that fits it, 1/512 m steps, and the
/// tick period (positions are predicted from the baseline's velocity over elapsed ticks).
/// The client learns it from the welcome.
pub fn quantize_config(scene: SceneKind, tick_rate: f64) -> QuantizeConfig {
    let base = QuantizeConfig {
        tick_interval: Duration::from_secs_f64(1.0 / tick_rate),
        ..QuantizeConfig::default()
    };
    match scene {
        // The field fits ±256 m across and 64 m up: 18 + 15 + 18 bits for a full position.
        SceneKind::Cubes => QuantizeConfig {
            position_min: glam::Vec3::new(-256.0, -1.0, -256.0),
            position_max: glam::Vec3::new(256.0, 63.0, 256.0),
            ..base
        },
        // 1 km across and 64 m up: 19 + 15 + 19 bits for a full position.
        SceneKind::Massive => QuantizeConfig {
            position_min: glam::Vec3::new(-512.0, -1.0, -512.0),
            position_max: glam::Vec3::new(512.0, 63.0, 512.0),
            ..base
        },
        SceneKind::Arena => base,
    }
}

/// What a [`GameServer`] runs.
#[derive(Debug, Clone)]
pub struct GameOptions {
    /// Which simulation.
    pub scene: SceneKind,
    /// Entity count override.
    pub entities: Option<usize>,
    /// Simulation ticks per second.
    pub tick_rate: f64,
    /// Snapshots per second (at most the tick rate; rounded to a whole number of ticks).
    pub send_rate: f64,
    /// Snapshot bytes per client per send before the priority accumulator defers entities.
    pub budget_bytes: usize,
    /// Scene seed.
    pub seed: u64,
    /// Each client sees only what is within this many metres of its avatar (default: the
    /// scene's, 100 m in `massive`, everything elsewhere).
    pub aoi_radius_m: Option<f32>,
    /// Threads building the clients' snapshots (1: the tick's own thread; 0: one per core).
    pub snapshot_threads: usize,
    /// `massive` only: NPCs a second that leave the world, each replaced by a new one
    /// elsewhere (entities coming and going every tick, as projectiles or respawns make).
    pub respawns_per_s: f64,
}

/// The snapshot rates a server ticking at `tick_rate` can send: up to one a tick, down to
/// one every [`MAX_SEND_INTERVAL_TICKS`] ticks.
pub fn send_rates(tick_rate: f64) -> RangeInclusive<f64> {
    tick_rate / f64::from(MAX_SEND_INTERVAL_TICKS)..=tick_rate
}

impl GameOptions {
    /// Check the rates.
    pub fn validate(&self) -> Result<(), String> {
        if !(1.0..=1000.0).contains(&self.tick_rate) {
            return Err(format!(
                "--tick-rate must be 1..=1000 Hz (got {})",
                self.tick_rate
            ));
        }
        let rates = send_rates(self.tick_rate);
        if !rates.contains(&self.send_rate) {
            return Err(format!(
                "--send-rate must be {} to {} Hz, the tick rate (got {})",
                rates.start(),
                rates.end(),
                self.send_rate
            ));
        }
        if let Some(r) = self.aoi_radius_m
            && !(r.is_finite() && r > 0.0)
        {
            return Err(format!("--aoi-radius must be above 0 m (got {r})"));
        }
        let r = self.respawns_per_s;
        if !(r.is_finite() && r >= 0.0) {
            return Err(format!("--respawns must be 0 or more a second (got {r})"));
        }
        if r > 0.0 && self.scene != SceneKind::Massive {
            return Err(format!(
                "--respawns applies to the massive scene (got --scene {})",
                self.scene
            ));
        }
        Ok(())
    }

    /// The area-of-interest radius in effect.
    pub fn aoi_radius(&self) -> Option<f32> {
        self.aoi_radius_m.or(self.scene.default_aoi_radius_m())
    }

    /// The replication server's settings for this game: quantization, send interval,
    /// budget, the welcome's game data (`tick0_unix_micros`: wall time of tick 0).
    pub fn replication_config(
        &self,
        tick0_unix_micros: u64,
        max_clients: usize,
        delivery: SnapshotDelivery,
    ) -> replication::ServerConfig {
        let mut config = replication::ServerConfig {
            quantize: quantize_config(self.scene, self.tick_rate),
            send_interval_ticks: (self.tick_rate / self.send_rate).round().max(1.0) as u32,
            budget_bytes: self.budget_bytes,
            delivery,
            welcome_data: WelcomeData {
                tick0_unix_micros,
                scene: self.scene.to_string(),
            }
            .encode(),
            interest: self.aoi_radius().map(replication::InterestConfig::radius),
            snapshot_threads: self.snapshot_threads,
            ..replication::ServerConfig::default()
        };
        config.server.max_clients = max_clients;
        config
    }
}

/// The authoritative game: the scene and each player's entity.
#[derive(Debug)]
pub struct GameServer {
    scene: Box<dyn Scene>,
    dt: f32,
    players: BTreeMap<ClientId, EntityId>,
    world: World,
    invalid_inputs: u64,
}

impl GameServer {
    /// A game; fails when the options are out of range.
    pub fn new(opts: &GameOptions) -> Result<Self, String> {
        opts.validate()?;
        Ok(Self {
            scene: build_scene(opts.scene, opts.entities, opts.seed, opts.respawns_per_s),
            dt: (1.0 / opts.tick_rate) as f32,
            players: BTreeMap::new(),
            world: World::new(),
            invalid_inputs: 0,
        })
    }

    /// Connected players.
    pub fn player_count(&self) -> usize {
        self.players.len()
    }

    /// The scene's bodies as of the last tick, sorted by id (what the server replicates).
    pub fn bodies(&self) -> &[Body] {
        self.scene.bodies()
    }

    /// The world replicated at the last tick.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Inputs that did not decode.
    pub fn invalid_inputs(&self) -> u64 {
        self.invalid_inputs
    }

    /// Take one replication event: players join (an entity of their own) and leave, inputs
    /// move their entity. Returns a line worth logging, if any.
    pub fn on_event(
        &mut self,
        server: &mut replication::Server,
        event: ServerEvent,
    ) -> Option<String> {
        match event {
            ServerEvent::ClientJoined { client } => {
                let entity = EntityId(self.scene.add_player(client.0));
                self.players.insert(client, entity);
                server.set_owned_entity(client, Some(entity));
                None
            }
            ServerEvent::ClientLeft { client, reason } => {
                self.scene.remove_player(client.0);
                self.players.remove(&client);
                Some(format!("{client} left: {reason}"))
            }
            ServerEvent::Input { client, bytes, .. } => {
                match snapsync::codec::decode::<PlayerInput>(&bytes) {
                    Ok(input) => self.scene.apply_input(client.0, &input, self.dt),
                    Err(_) => self.invalid_inputs += 1,
                }
                server.recycle_input(bytes);
                None
            }
            // The demo's clients send no messages of their own.
            _ => None,
        }
    }

    /// Run one tick: step the scene and hand its state to the replication server.
    pub fn tick(&mut self, now: Instant, server: &mut replication::Server) {
        self.scene.step(self.dt);
        hold_bodies(&mut self.world, self.scene.bodies());
        server.tick(now, &self.world);
    }
}

/// A body as the world replicates it.
fn transform(b: &Body) -> Transform {
    Transform {
        position: b.position,
        rotation: b.rotation,
        // Velocity feeds client extrapolation, and the delta coder predicts positions
        // from it, which saves more bits than it costs (47 vs 61 bits per changed cube).
        velocity: Some(b.velocity),
    }
}

/// Make `world` hold the `bodies` (sorted by id) and nothing else, in place: the entities
/// it holds already keep their entries.
fn hold_bodies(world: &mut World, bodies: &[Body]) {
    // Most ticks the same entities exist as before: update them in place rather than
    // rebuilding the world (both lists are sorted by id), checking the ids in the same
    // walk: a walk of its own to check them first read every entry of the map twice.
    if world.len() == bodies.len() {
        let mut same = true;
        for ((id, state), b) in world.iter_mut().zip(bodies) {
            if id.0 != b.id {
                same = false;
                break;
            }
            state.transform = transform(b);
        }
        if same {
            return;
        }
    }
    // Entities came or went (a player joined or left, an NPC respawned): take out those
    // that left and put in those that came, each found in one walk of both lists.
    // Building the map again cost `massive` with respawns a map of 10,000 entries a
    // tick.
    let left: Vec<EntityId> = {
        let mut next = bodies.iter().map(|b| b.id).peekable();
        world
            .iter()
            .map(|(id, _)| id)
            .filter(|id| {
                while next.next_if(|&b| b < id.0).is_some() {}
                next.peek() != Some(&id.0)
            })
            .collect()
    };
    for id in left {
        world.remove(id);
    }
    let came: Vec<&Body> = {
        let mut held = world.iter().map(|(id, _)| id.0).peekable();
        bodies
            .iter()
            .filter(|b| {
                while held.next_if(|&h| h < b.id).is_some() {}
                held.peek() != Some(&b.id)
            })
            .collect()
    };
    for b in came {
        world.insert(EntityId(b.id), EntityState::new(transform(b)));
    }
    // The same entities now, in the same order.
    for ((_, state), b) in world.iter_mut().zip(bodies) {
        state.transform = transform(b);
    }
}

/// Snapshot totals from the replication server, as the summaries report them.
pub fn bits_per_changed_entity(s: &SenderStats) -> f64 {
    if s.entities_sent == 0 {
        0.0
    } else {
        s.bytes as f64 * 8.0 / s.entities_sent as f64
    }
}

#[cfg(test)]
mod tests {
    use glam::{Quat, Vec3};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// A send rate the engine would refuse (more than 1024 ticks between sends, none, or
    /// above the tick rate) is the flag's own error, before any server is built.
    #[test]
    fn send_rates_from_a_1024th_of_the_tick_rate_to_the_tick_rate_are_taken() {
        let with = |send_rate: f64| {
            let o = GameOptions {
                scene: SceneKind::Arena,
                entities: None,
                tick_rate: 64.0,
                send_rate,
                budget_bytes: 1100,
                seed: 1,
                aoi_radius_m: None,
                snapshot_threads: 1,
                respawns_per_s: 0.0,
            };
            o.validate().map(|()| o)
        };
        for ok in [64.0, 32.0, 20.0, 0.0625] {
            assert_eq!(with(ok).map(|_| ()), Ok(()), "{ok}");
            // The engine takes the interval the flag turns into.
            let config = with(ok)
                .unwrap()
                .replication_config(0, 4, SnapshotDelivery::Datagrams);
            assert!(
                replication::Server::new(config, Instant::now()).is_ok(),
                "{ok}"
            );
        }
        for bad in [0.06, 0.0, -1.0, f64::NAN, 64.5, f64::INFINITY] {
            let e = with(bad).expect_err("refused");
            assert!(
                e.starts_with("--send-rate must be 0.0625 to 64 Hz"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_world_holds_the_bodies_as_they_come_and_go() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut world = World::new();
        let mut bodies: Vec<Body> = Vec::new();
        for round in 0..200 {
            // Some leave, some come (anywhere in the id order), and the rest move.
            bodies.retain(|_| rng.random_bool(0.9));
            for _ in 0..rng.random_range(0..6) {
                let id = rng.random_range(0..100);
                if bodies.iter().all(|b| b.id != id) {
                    bodies.push(Body {
                        id,
                        position: Vec3::ZERO,
                        rotation: Quat::IDENTITY,
                        velocity: Vec3::ZERO,
                        half_extent: 0.5,
                    });
                }
            }
            bodies.sort_by_key(|b| b.id);
            for b in &mut bodies {
                b.position.x = rng.random_range(-10.0..10.0);
            }
            hold_bodies(&mut world, &bodies);
            let held: Vec<(u32, Transform)> =
                world.iter().map(|(id, s)| (id.0, s.transform)).collect();
            let want: Vec<(u32, Transform)> = bodies.iter().map(|b| (b.id, transform(b))).collect();
            assert_eq!(held, want, "round {round}");
        }
    }
}
