//! Rooms and the area of interest end to end, in virtual time over seeded bad links: what
//! a client holds after each complete snapshot is exactly the scope the server computed for
//! that tick, and scope changes under loss end with the client's view equal to its scope.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use glam::{Vec2, Vec3};

use super::*;
use crate::conditioner::ConditionerConfig;
use crate::connection::ClientId;
use crate::sim::Sim;
use crate::snapshot::{
    EntityId, EntityState, QuantizeConfig, QuantizedWorld, Tick, Transform, World,
};

const TICK: Duration = Duration::from_micros(16_667);
const RADIUS_M: f32 = 15.0;
const HYSTERESIS_M: f32 = 3.0;

type ScopeSim = Sim<Server, Client<u8>>;

/// The id the server gave client `i`, once welcomed.
fn client_id(sim: &ScopeSim, i: usize) -> Option<ClientId> {
    sim.clients[i].client.welcome().map(|w| w.client_id)
}

fn config(interest: Option<InterestConfig>) -> ServerConfig {
    ServerConfig {
        quantize: QuantizeConfig {
            tick_interval: TICK,
            ..QuantizeConfig::default()
        },
        interest,
        seed: Some(3),
        ..ServerConfig::default()
    }
}

fn bad_link(loss_pct: f64) -> ConditionerConfig {
    ConditionerConfig {
        enabled: true,
        loss_pct,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(10),
        duplicate_pct: 2.0,
        ..ConditionerConfig::off()
    }
}

/// Where mover `id` is at `tick`: circles of different radii and speeds around the origin,
/// so movers keep crossing the clients' scopes in both directions.
fn mover_at(id: u32, tick: u32) -> Vec3 {
    let t = tick as f32 * TICK.as_secs_f32();
    let r = 5.0 + (id % 8) as f32 * 5.0;
    let w = 0.4 + (id % 5) as f32 * 0.15;
    let a = w * t + id as f32;
    Vec3::new(r * a.cos(), 0.0, r * a.sin())
}

struct ScopeGame {
    sim: ScopeSim,
    world: World,
    /// Movers `left..movers` are in the world (those below `left` left it).
    movers: u32,
    left: u32,
    moving: bool,
    views: Vec<Vec3>,
    /// The scope the server computed for each client, by tick.
    scopes: Vec<BTreeMap<u32, Vec<EntityId>>>,
    /// Positions of every entity at each tick the world was sent.
    positions: BTreeMap<u32, BTreeMap<EntityId, Vec3>>,
    /// Complete ticks already compared, per client.
    verified: Vec<BTreeSet<u32>>,
    /// Compare complete snapshots with the scope (false when a tight budget makes entities
    /// wait: then a snapshot holds only part of its scope's changes).
    check_scopes: bool,
    /// Entities the game marked always visible: a client may hold them at any distance.
    always: BTreeSet<EntityId>,
    next_tick_at: Instant,
}

impl ScopeGame {
    /// Every client had more than `1 / share` of the ticks run compared whole against its
    /// scope (`seed` names the run in the message).
    fn assert_verified_share(&self, seed: u64, share: usize) {
        let ticks = self.sim.server.current_tick().0 as usize;
        for (i, v) in self.verified.iter().enumerate() {
            assert!(
                v.len() > ticks / share,
                "seed {seed} client {i}: {} of {ticks}",
                v.len()
            );
        }
    }

    fn new(
        interest: Option<InterestConfig>,
        movers: u32,
        views: Vec<Vec3>,
        seed: u64,
        loss: f64,
    ) -> Self {
        Self::with_config(config(interest), movers, views, seed, loss)
    }

    fn with_config(
        config: ServerConfig,
        movers: u32,
        views: Vec<Vec3>,
        seed: u64,
        loss: f64,
    ) -> Self {
        let mut sim = Sim::replication(config, seed).unwrap();
        for i in 0..views.len() {
            sim.add_replication_client(ClientConfig::default()).unwrap();
            sim.set_link(i, bad_link(loss), bad_link(loss));
        }
        let next_tick_at = sim.now + TICK;
        let n = views.len();
        let mut g = Self {
            sim,
            world: World::new(),
            movers,
            left: 0,
            moving: true,
            views,
            scopes: vec![BTreeMap::new(); n],
            positions: BTreeMap::new(),
            verified: vec![BTreeSet::new(); n],
            check_scopes: true,
            always: BTreeSet::new(),
            next_tick_at,
        };
        g.place(0);
        g
    }

    fn place(&mut self, tick: u32) {
        for id in self.left..self.movers {
            self.world.insert(
                EntityId(id),
                EntityState::new(Transform {
                    position: mover_at(id, tick),
                    ..Transform::default()
                }),
            );
        }
    }

    fn server_tick(&mut self) {
        self.sim.server_events.clear();
        for (i, view) in self.views.iter().enumerate() {
            if let Some(id) = client_id(&self.sim, i) {
                self.sim.server.set_view_point(id, Some(*view));
            }
        }
        let next = self.sim.server.current_tick().0 + 1;
        if self.moving {
            self.place(next);
        }
        let now = self.sim.now;
        let tick = self.sim.server.tick(now, &self.world);
        self.positions.insert(
            tick.0,
            self.world
                .iter()
                .map(|(id, e)| (id, e.transform.position))
                .collect(),
        );
        for i in 0..self.views.len() {
            if let Some(id) = client_id(&self.sim, i)
                && let Some(v) = self.sim.server.visible_entities(id)
            {
                self.scopes[i].insert(tick.0, v.collect());
            }
        }
    }

    /// Compare every complete tick the client holds with the server's scope at that tick.
    fn verify(&mut self) {
        if !self.check_scopes {
            return;
        }
        let current = self.sim.server.current_tick().0;
        let outer = RADIUS_M + HYSTERESIS_M;
        for i in 0..self.views.len() {
            let Some(r) = self.sim.clients[i].client.receiver() else {
                continue;
            };
            for t in current.saturating_sub(64)..=current {
                if self.verified[i].contains(&t) {
                    continue;
                }
                let Some(held) = r.composite(Tick(t)) else {
                    continue;
                };
                // Without rooms or an area of interest there is no scope to compare.
                let Some(scope) = self.scopes[i].get(&t) else {
                    continue;
                };
                let held: Vec<EntityId> = held.iter().map(|(id, _)| id).collect();
                assert_eq!(
                    &held, scope,
                    "client {i} at tick {t}: a complete snapshot is the scope of its tick"
                );
                let view = Vec2::new(self.views[i].x, self.views[i].z);
                for id in held.iter().filter(|id| !self.always.contains(id)) {
                    let p = self.positions[&t][id];
                    let d = Vec2::new(p.x, p.z).distance(view);
                    assert!(d <= outer + 0.01, "client {i} tick {t}: {id:?} at {d} m");
                }
                self.verified[i].insert(t);
            }
        }
    }

    /// Once the world stands still: each client holds exactly its scope (which has every
    /// entity within the radius), each entity in the server's state.
    fn assert_views_are_the_scopes(&self, seed: u64) {
        let server = QuantizedWorld::from_world(&self.world, &config(None).quantize);
        for i in 0..self.views.len() {
            let id = client_id(&self.sim, i).expect("connected");
            let visible = self
                .sim
                .server
                .visible_entities(id)
                .expect("scoped")
                .collect::<Vec<_>>();
            let view = Vec2::new(self.views[i].x, self.views[i].z);
            let inside = server
                .iter()
                .filter(|(_, e)| {
                    let p = config(None).quantize.dequantize(&e.transform).position;
                    Vec2::new(p.x, p.z).distance(view) <= RADIUS_M
                })
                .count();
            assert!(
                visible.len() >= inside,
                "seed {seed} client {i}: all within the radius"
            );
            let live = self.sim.clients[i]
                .client
                .receiver()
                .expect("welcomed")
                .live_world();
            let held: Vec<EntityId> = live.iter().map(|(id, _)| id).collect();
            assert_eq!(
                held, visible,
                "seed {seed} client {i}: the view is the scope"
            );
            for (id, e) in live.iter() {
                assert_eq!(Some(e), server.get(id), "seed {seed} client {i}: {id:?}");
            }
        }
    }

    /// `ticks` ticks on each of which mover `k` leaves the world and entity `1000 + k`
    /// arrives next to the origin (k counting from 0).
    fn churn(&mut self, ticks: u32) {
        for k in 0..ticks {
            self.world.remove(EntityId(k));
            let position = Vec3::new(1.0 + k as f32 * 0.1, 0.0, 0.0);
            let state = EntityState::new(Transform {
                position,
                ..Transform::default()
            });
            self.world.insert(EntityId(1000 + k), state);
            self.run(TICK);
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.sim.now + d;
        while self.next_tick_at <= end {
            self.sim.run_until(self.next_tick_at);
            self.server_tick();
            self.sim.run_until(self.next_tick_at + TICK / 2);
            self.verify();
            self.next_tick_at += TICK;
        }
    }
}

fn views() -> Vec<Vec3> {
    vec![
        Vec3::ZERO,
        Vec3::new(25.0, 0.0, 0.0),
        Vec3::new(-20.0, 0.0, -20.0),
    ]
}

fn interest() -> InterestConfig {
    let mut c = InterestConfig::radius(RADIUS_M);
    c.hysteresis_m = HYSTERESIS_M;
    c
}

#[test]
fn every_complete_snapshot_holds_exactly_the_scope_of_its_tick() {
    for seed in [1, 2, 3] {
        let mut g = ScopeGame::new(Some(interest()), 60, views(), seed, 10.0);
        g.run(Duration::from_secs(6));
        // At 10 % loss most ticks arrive whole; each of those was compared.
        g.assert_verified_share(seed, 2);
        let totals = g.sim.server.snapshot_totals();
        assert!(
            totals.despawns_sent > 30,
            "seed {seed}: entities left scopes ({} despawns)",
            totals.despawns_sent
        );
        let scope = g.sim.server.stats().mean_scope();
        assert!(
            scope > 3.0 && scope < 40.0,
            "seed {seed}: a scope is a part of the world ({scope:.1} of 60)"
        );
    }
}

#[test]
fn the_server_counts_the_scopes_it_scanned_and_the_ones_its_bands_kept() {
    let mut g = ScopeGame::new(Some(interest()), 60, views(), 4, 0.0);
    let counts = |g: &ScopeGame| {
        let s = g.sim.server.stats();
        (s.scoped_snapshots, s.scope_scans)
    };
    // Nothing moves: after each client's first scan its band keeps its scope.
    g.moving = false;
    g.run(Duration::from_secs(2));
    let (snapshots, scans) = counts(&g);
    let clients = views().len() as u64;
    assert!(snapshots > 50 * clients, "{snapshots} scoped snapshots");
    assert!(
        (clients..=2 * clients).contains(&scans),
        "{scans} scans of {snapshots} scopes, nothing moving"
    );
    // 60 movers circling at up to 40 m/s (0.7 m a tick, where a band's slack is at most
    // 1.7 m): every one of them is a leaper each tick, which each scope measures itself.
    // They keep crossing the scopes' edges, and no scope is scanned.
    g.moving = true;
    let despawns = g.sim.server.snapshot_totals().despawns_sent;
    g.run(Duration::from_secs(1));
    let (moving_snapshots, moving_scans) = counts(&g);
    let (snapshots, scans) = (moving_snapshots - snapshots, moving_scans - scans);
    assert!(snapshots > 50 * clients, "{snapshots} scoped snapshots");
    assert_eq!(
        scans, 0,
        "{scans} scans of {snapshots} scopes, movers leaping"
    );
    assert!(g.sim.server.snapshot_totals().despawns_sent > despawns + 10);
    // Entities come and go every tick (one leaves, one arrives next to the first client):
    // the scopes follow their entities into each new world, and measure the newcomers
    // near them, without a scan.
    g.moving = false;
    g.churn(30);
    let first = client_id(&g.sim, 0).expect("connected");
    let seen: Vec<EntityId> = g.sim.server.visible_entities(first).unwrap().collect();
    assert!(seen.contains(&EntityId(1029)) && !seen.contains(&EntityId(29)));
    let (churn_snapshots, churn_scans) = counts(&g);
    assert!(churn_snapshots >= moving_snapshots + 25 * clients);
    assert_eq!(churn_scans, moving_scans, "entities coming and going");
    // With rooms in use every scope is a scan.
    let (moving_snapshots, moving_scans) = (churn_snapshots, churn_scans);
    g.sim.server.add_entity_to_room(EntityId(40), RoomId(1));
    g.run(Duration::from_secs(1));
    let (snapshots, scans) = counts(&g);
    assert_eq!(
        scans - moving_scans,
        snapshots - moving_snapshots,
        "rooms in use"
    );
    assert!(snapshots > moving_snapshots);
    assert!(g.sim.server.stats().scope_scan_pct() > 0.0);
}

#[test]
fn scope_changes_under_20_pct_loss_end_with_the_view_equal_to_the_visible_set() {
    for seed in [11, 12, 13, 14, 15] {
        let mut g = ScopeGame::new(Some(interest()), 60, views(), seed, 20.0);
        g.run(Duration::from_secs(4));
        g.moving = false;
        g.run(Duration::from_secs(3));
        g.assert_views_are_the_scopes(seed);
    }
}

#[test]
fn an_entity_on_the_edge_is_spawned_once_not_every_tick() {
    // One mover sways 1 m either side of the radius; one client watches from the origin.
    let mut g = ScopeGame::new(Some(interest()), 0, vec![Vec3::ZERO], 4, 0.0);
    for k in 0..240 {
        let x = RADIUS_M + (k as f32 * 0.2).sin();
        g.world.insert(
            EntityId(0),
            EntityState::new(Transform {
                position: Vec3::new(x, 0.0, 0.0),
                ..Transform::default()
            }),
        );
        g.run(TICK);
    }
    let totals = g.sim.server.snapshot_totals();
    assert_eq!(totals.despawns_sent, 0, "never left: within the hysteresis");
    let id = client_id(&g.sim, 0).unwrap();
    let visible: Option<Vec<_>> = g.sim.server.visible_entities(id).map(Iterator::collect);
    assert_eq!(visible, Some(vec![EntityId(0)]));
}

#[test]
fn rooms_decide_who_sees_an_entity_and_a_room_message_reaches_exactly_its_members() {
    let still = vec![Vec3::ZERO; 4];
    let mut g = ScopeGame::new(None, 0, still, 5, 5.0);
    for id in 0..3 {
        g.world
            .insert(EntityId(id), EntityState::new(Transform::default()));
    }
    g.run(Duration::from_millis(500));
    let ids: Vec<ClientId> = (0..4)
        .map(|i| client_id(&g.sim, i).expect("connected"))
        .collect();
    let (red, blue) = (RoomId(1), RoomId(2));
    assert!(g.sim.server.join_room(ids[0], red));
    assert!(g.sim.server.join_room(ids[1], red));
    assert!(g.sim.server.join_room(ids[2], blue));
    g.sim.server.add_entity_to_room(EntityId(1), red);
    g.sim.server.add_entity_to_room(EntityId(2), blue);
    assert_eq!(
        g.sim.server.room_members(red).collect::<BTreeSet<_>>(),
        BTreeSet::from([ids[0], ids[1]])
    );
    let now = g.sim.now;
    assert_eq!(g.sim.server.send_to_room(now, red, 0, b"red only"), 2);
    assert_eq!(g.sim.server.send_to_room(now, blue, 0, b"blue only"), 1);
    g.run(Duration::from_secs(2));

    let messages = |g: &mut ScopeGame, i: usize| -> Vec<Vec<u8>> {
        g.sim.clients[i]
            .events
            .drain(..)
            .filter_map(|e| match e {
                ClientEvent::Message { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect()
    };
    assert_eq!(messages(&mut g, 0), vec![b"red only".to_vec()]);
    assert_eq!(messages(&mut g, 1), vec![b"red only".to_vec()]);
    assert_eq!(messages(&mut g, 2), vec![b"blue only".to_vec()]);
    assert!(
        messages(&mut g, 3).is_empty(),
        "not in a room: no room message"
    );

    let held = |g: &ScopeGame, i: usize| -> Vec<u32> {
        let r = g.sim.clients[i].client.receiver().expect("welcomed");
        r.live_world().iter().map(|(id, _)| id.0).collect()
    };
    assert_eq!(held(&g, 0), vec![0, 1]);
    assert_eq!(held(&g, 1), vec![0, 1]);
    assert_eq!(held(&g, 2), vec![0, 2]);
    assert_eq!(held(&g, 3), vec![0], "public entities only");

    // Leaving a room takes its entities out of the client's view; the rest stay.
    g.sim.server.leave_room(ids[1], red);
    g.run(Duration::from_secs(1));
    assert_eq!(held(&g, 1), vec![0]);
    assert_eq!(held(&g, 0), vec![0, 1]);
    assert_eq!(
        g.sim.server.room_members(red).collect::<Vec<_>>(),
        vec![ids[0]]
    );
}

#[test]
fn an_entity_always_visible_reaches_every_client_wherever_it_is_until_unmarked() {
    // Entity 900 walks far beyond every client's scope; the game marks it always visible.
    // Under 20 % loss every complete snapshot is still exactly its tick's scope, and the
    // views end equal to the scopes: with it while marked (also after it left the world and
    // came back under its id), without it once unmarked. Also with a client sent one tick
    // in three (each phase keeps its own bands) and with snapshots built on two threads.
    let far = EntityId(900);
    let at = |tick: u32| Vec3::new(200.0 + tick as f32 * 0.05, 0.0, -150.0);
    for (seed, interval, threads) in [(21, 1, 1), (22, 1, 1), (23, 1, 1), (24, 3, 1), (25, 1, 2)] {
        let mut c = config(Some(interest()));
        c.send_interval_ticks = interval;
        c.snapshot_threads = threads;
        let mut g = ScopeGame::with_config(c, 60, views(), seed, 20.0);
        g.sim.server.set_always_visible(far, true);
        g.always.insert(far);
        assert!(g.sim.server.is_always_visible(far));
        let mut tick = 0;
        // (It walks while the movers do, and stands still with them.)
        let mut step = |g: &mut ScopeGame, ticks: u32, present: bool| {
            for _ in 0..ticks {
                tick += u32::from(g.moving);
                if present {
                    let state = EntityState::new(Transform {
                        position: at(tick),
                        ..Transform::default()
                    });
                    g.world.insert(far, state);
                } else {
                    g.world.remove(far);
                }
                g.run(TICK);
            }
        };
        let sees = |g: &ScopeGame| -> Vec<bool> {
            (0..g.views.len())
                .map(|i| {
                    let id = client_id(&g.sim, i).expect("connected");
                    let mut v = g.sim.server.visible_entities(id).expect("scoped");
                    v.any(|e| e == far)
                })
                .collect()
        };
        step(&mut g, 240, true);
        assert_eq!(sees(&g), [true; 3], "seed {seed}: seen from everywhere");
        // It leaves the world, and comes back under the same id, still marked.
        step(&mut g, 30, false);
        assert_eq!(sees(&g), [false; 3], "seed {seed}: gone");
        step(&mut g, 30, true);
        g.moving = false;
        step(&mut g, 180, true);
        assert_eq!(sees(&g), [true; 3], "seed {seed}: back");
        g.assert_views_are_the_scopes(seed);
        // Unmarked, it is as any other entity: far from every client, so in no scope.
        // (It stays exempt from `verify`'s distance check, which still compares ticks from
        // before: each complete snapshot must still be its tick's scope.)
        g.sim.server.set_always_visible(far, false);
        step(&mut g, 180, true);
        assert_eq!(sees(&g), [false; 3], "seed {seed}: unmarked");
        g.assert_views_are_the_scopes(seed);
        // (A client sent one tick in three has that share of its ticks to compare.)
        g.assert_verified_share(seed, 4 * interval as usize);
    }
}

#[test]
fn an_entity_always_visible_in_a_room_reaches_the_room_s_members_alone() {
    // With rooms in use every scope is scanned: the rule holds on that path too.
    let far = EntityId(900);
    let mut g = ScopeGame::new(Some(interest()), 30, views(), 24, 5.0);
    g.world.insert(
        far,
        EntityState::new(Transform {
            position: Vec3::new(-300.0, 0.0, 300.0),
            ..Transform::default()
        }),
    );
    g.sim.server.set_always_visible(far, true);
    g.always.insert(far);
    g.run(Duration::from_millis(500));
    let ids: Vec<ClientId> = (0..3)
        .map(|i| client_id(&g.sim, i).expect("connected"))
        .collect();
    let red = RoomId(7);
    assert!(g.sim.server.join_room(ids[1], red));
    g.sim.server.add_entity_to_room(far, red);
    g.run(Duration::from_secs(2));
    g.moving = false;
    g.run(Duration::from_secs(2));
    g.assert_views_are_the_scopes(24);
    let held = |g: &ScopeGame, i: usize| -> bool {
        let r = g.sim.clients[i].client.receiver().expect("welcomed");
        r.live_world().get(far).is_some()
    };
    assert_eq!(
        [held(&g, 0), held(&g, 1), held(&g, 2)],
        [false, true, false]
    );
}

#[test]
fn snapshots_built_on_several_threads_are_the_ones_built_on_one() {
    let run = |threads: usize| {
        let mut c = config(Some(interest()));
        c.snapshot_threads = threads;
        let mut g = ScopeGame::with_config(c, 60, views(), 21, 10.0);
        g.run(Duration::from_secs(3));
        let worlds: Vec<QuantizedWorld> = g
            .sim
            .clients
            .iter()
            .map(|c| c.client.receiver().expect("welcomed").live_world())
            .collect();
        (g.sim.server.snapshot_totals(), worlds)
    };
    let (one, one_worlds) = run(1);
    let (three, three_worlds) = run(3);
    assert!(one.bytes > 0);
    assert_eq!(one, three, "the same snapshots, byte for byte in total");
    assert_eq!(one_worlds, three_worlds, "the clients hold the same worlds");
}

#[test]
fn too_many_snapshot_threads_are_refused_when_the_server_is_built() {
    let mut c = config(None);
    c.snapshot_threads = 10_000;
    assert!(Server::new(c, Instant::now()).is_err());
}

/// One client at the origin with a 100 m area and forty movers going round it: ids 0..20
/// at 5 m, ids 20..40 at 85 m, near the edge of the area; under a budget of a few entities
/// per snapshot. After a second of play, so that all of them arrived.
struct NearAndFar {
    g: ScopeGame,
    tick: u32,
}

impl NearAndFar {
    fn new(distance_priority: bool, seed: u64, loss: f64) -> Self {
        let mut interest = InterestConfig::radius(100.0);
        interest.distance_priority = distance_priority;
        let mut c = config(Some(interest));
        c.budget_bytes = 80;
        let mut g = ScopeGame::with_config(c, 0, vec![Vec3::ZERO], seed, loss);
        g.check_scopes = false;
        let mut s = Self { g, tick: 0 };
        s.place();
        s.g.run(Duration::from_secs(1));
        s
    }

    /// Each mover 0.01 rad further on for each tick played.
    fn place(&mut self) {
        for i in 0..40u32 {
            let r = if i < 20 { 5.0 } else { 85.0 };
            let a = i as f32 * 0.3 + self.tick as f32 * 0.01;
            let position = Vec3::new(r * a.cos(), 0.0, r * a.sin());
            let state = EntityState::new(Transform {
                position,
                ..Transform::default()
            });
            self.g.world.insert(EntityId(i), state);
        }
    }

    /// One tick with the movers moved on: what the client holds after it.
    fn step(&mut self) -> QuantizedWorld {
        self.place();
        self.tick += 1;
        self.g.run(TICK);
        self.g.sim.clients[0]
            .client
            .receiver()
            .expect("welcomed")
            .live_world()
    }
}

/// Updates the client saw per entity over 3 s of [`NearAndFar`].
fn updates_near_and_far(distance_priority: bool) -> [u32; 40] {
    let mut game = NearAndFar::new(distance_priority, 31, 0.0);
    let mut last: BTreeMap<EntityId, crate::snapshot::QuantizedEntity> = BTreeMap::new();
    let mut updates = [0u32; 40];
    for _ in 0..180 {
        for (id, e) in game.step().iter() {
            if last.get(&id) != Some(e) {
                updates[id.0 as usize] += 1;
                last.insert(id, e.clone());
            }
        }
    }
    updates
}

#[test]
fn under_a_tight_budget_near_entities_update_more_often_than_far_ones() {
    let u = updates_near_and_far(true);
    let (near, far) = (&u[..20], &u[20..]);
    assert!(
        far.iter().all(|&n| n > 0),
        "far entities are not starved: {u:?}"
    );
    let (least_near, most_far) = (near.iter().min().unwrap(), far.iter().max().unwrap());
    assert!(
        least_near > most_far,
        "every near entity beats every far one: {u:?}"
    );
    let sum = |s: &[u32]| s.iter().sum::<u32>() as f64;
    assert!(sum(near) > 1.5 * sum(far), "{u:?}");
    // Without distance priority the same budget is shared alike.
    let u = updates_near_and_far(false);
    let ratio = sum(&u[..20]) / sum(&u[20..]);
    assert!((0.75..1.33).contains(&ratio), "ratio {ratio}: {u:?}");
}

/// Three clients close together, whose scopes overlap most of the way (what sharing is
/// for), and the usual three.
fn sharing_views() -> Vec<Vec3> {
    let mut v = vec![
        Vec3::new(3.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, 3.0),
        Vec3::new(-2.0, 0.0, -2.0),
    ];
    v.extend(views());
    v
}

/// Scoped clients sharing entity encodings (forced on: three clients would never reach
/// [`SHARE_MIN_VIEWERS`]) hold exactly their scopes after every complete snapshot, end with
/// exactly the server's state under 20 % loss, and build the same bytes on any number of
/// threads, whichever client encodes a shared entity first.
#[test]
fn clients_sharing_encodings_hold_their_scopes_exactly() {
    let run = |threads: usize, seed: u64, loss: f64| {
        let mut c = config(Some(interest()));
        c.snapshot_threads = threads;
        let mut g = ScopeGame::with_config(c, 60, sharing_views(), seed, loss);
        g.sim.server.share_encodings_from(0.0);
        g.run(Duration::from_secs(4));
        g.moving = false;
        g.run(Duration::from_secs(3));
        g
    };
    for seed in [31, 32, 33] {
        let g = run(1, seed, 20.0);
        g.assert_verified_share(seed, 3);
        let totals = g.sim.server.snapshot_totals();
        // At 20 % loss and 10 ms jitter the clients' baselines are often of different ages,
        // which do not share: 6 to 15 % of what went out was another client's encoding in
        // these seeds (none at all without sharing).
        assert!(
            totals.entities_shared > totals.entities_sent / 30,
            "seed {seed}: encodings were shared ({} of {} entities)",
            totals.entities_shared,
            totals.entities_sent
        );
        assert!(g.sim.server.stats().shared_encoding_ticks > 0);
        g.assert_views_are_the_scopes(seed);
    }
    let totals = |g: &ScopeGame| g.sim.server.snapshot_totals();
    let (one, three) = (run(1, 34, 10.0), run(3, 34, 10.0));
    assert!(totals(&one).entities_shared > 0);
    // What went out, and how many deltas a client found encoded by another or up front
    // (the threads share out a well-read age's deltas, one thread encodes them alone).
    assert_eq!(
        totals(&one),
        totals(&three),
        "the same snapshots on 1 and 3 threads"
    );
}

/// Entities coming and going on every tick while the rest move, with encodings shared:
/// the deltas of the ages most clients hold are still encoded up front, by id (the worlds'
/// layouts differ), and each client ends with exactly its scope in the server's state,
/// under 20 % loss, with the same snapshots on one thread as on three.
#[test]
fn deltas_shared_while_entities_come_and_go_are_the_clients_own() {
    let run = |threads: usize, seed: u64| {
        let mut c = config(Some(interest()));
        c.snapshot_threads = threads;
        let mut g = ScopeGame::with_config(c, 60, sharing_views(), seed, 20.0);
        g.sim.server.share_encodings_from(0.0);
        g.run(Duration::from_secs(3));
        let up_front = g.sim.server.stats().deltas_encoded_up_front;
        // A tick: the first mover leaves for good (every entity after it takes another
        // index), and a new entity arrives near the origin; the other movers go on.
        for k in 0..30 {
            g.world.remove(EntityId(g.left));
            g.left += 1;
            let position = Vec3::new(1.0 + k as f32 * 0.3, 0.0, -1.0);
            g.world.insert(
                EntityId(1000 + k),
                EntityState::new(Transform {
                    position,
                    ..Transform::default()
                }),
            );
            g.run(TICK);
        }
        let churned = g.sim.server.stats().deltas_encoded_up_front - up_front;
        g.moving = false;
        g.run(Duration::from_secs(3));
        (g, churned)
    };
    for seed in [61, 62] {
        let (g, churned) = run(1, seed);
        // Thirty to sixty movers changed on each of the 30 ticks.
        assert!(churned > 100, "seed {seed}: {churned} deltas up front");
        g.assert_verified_share(seed, 3);
        g.assert_views_are_the_scopes(seed);
    }
    let ((one, _), (three, _)) = (run(1, 63), run(3, 63));
    let totals = |g: &ScopeGame| g.sim.server.snapshot_totals();
    assert!(totals(&one).entities_shared > 0);
    assert_eq!(
        totals(&one),
        totals(&three),
        "the same snapshots on 1 and 3 threads"
    );
}

/// Below the threshold nothing is shared, and the bytes are those of a server that never
/// shares.
#[test]
fn a_server_with_few_viewers_per_entity_shares_nothing() {
    let mut g = ScopeGame::new(Some(interest()), 60, views(), 35, 10.0);
    g.run(Duration::from_secs(3));
    assert_eq!(g.sim.server.snapshot_totals().entities_shared, 0);
    assert_eq!(g.sim.server.stats().shared_encoding_ticks, 0);
}

/// Seven clients around the usual three views.
fn seven_views() -> Vec<Vec3> {
    let mut v = views();
    v.extend([
        Vec3::new(5.0, 0.0, 5.0),
        Vec3::new(-10.0, 0.0, 10.0),
        Vec3::new(30.0, 0.0, -5.0),
        Vec3::new(0.0, 0.0, -30.0),
    ]);
    v
}

/// Snapshots built for each client so far, in client order.
fn snapshots_per_client(g: &ScopeGame) -> Vec<u64> {
    (0..g.views.len())
        .map(|i| {
            let id = client_id(&g.sim, i).expect("connected");
            let s = g.sim.server.client_summary(id).expect("known");
            assert!(s.ready, "client {i} ready");
            s.snapshots.snapshots
        })
        .collect()
}

/// With a send interval of three ticks, each tick builds the snapshots of its own third of
/// the clients (never all seven on one tick), each client is still sent one snapshot an
/// interval, and every phase's scopes keep their bands as when every client is sent every
/// tick: still, moving, and with entities coming and going.
#[test]
fn a_send_interval_spreads_the_clients_over_its_ticks_and_each_phase_keeps_its_bands() {
    let mut c = config(Some(interest()));
    c.send_interval_ticks = 3;
    let mut g = ScopeGame::with_config(c, 60, seven_views(), 5, 0.0);
    let clients = seven_views().len() as u64;
    let counts = |g: &ScopeGame| {
        let s = g.sim.server.stats();
        (s.scoped_snapshots, s.scope_scans)
    };
    g.moving = false;
    g.run(Duration::from_secs(1));
    let (_, first_scans) = counts(&g);
    let mut per_tick = Vec::new();
    let before = snapshots_per_client(&g);
    for _ in 0..30 {
        let (built, _) = counts(&g);
        g.run(TICK);
        per_tick.push(counts(&g).0 - built);
    }
    let after = snapshots_per_client(&g);
    // Seven clients over three phases: three, two and two a tick.
    assert!(
        per_tick.iter().all(|n| (2..=3).contains(n)),
        "snapshots a tick: {per_tick:?}"
    );
    assert!(
        per_tick
            .windows(3)
            .all(|w| w.iter().sum::<u64>() == clients),
        "every client once an interval: {per_tick:?}"
    );
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(a - b, 10, "client {i}: one snapshot every three ticks");
    }
    // Nothing moves: after each client's first scan its band keeps its scope.
    let (_, scans) = counts(&g);
    assert!(
        (clients..=2 * clients).contains(&scans),
        "{scans} scans, nothing moving (first second: {first_scans})"
    );
    // Movers leap across the scopes' edges between a phase's ticks: each scope measures
    // them itself, without a scan.
    g.moving = true;
    let despawns = g.sim.server.snapshot_totals().despawns_sent;
    g.run(Duration::from_secs(1));
    let (moving_snapshots, moving_scans) = counts(&g);
    assert_eq!(moving_scans, scans, "movers leaping");
    assert!(g.sim.server.snapshot_totals().despawns_sent > despawns + 10);
    // Entities come and go every tick: each phase's scopes follow their entities from
    // that phase's last world into the new one, three worlds on.
    g.moving = false;
    g.churn(30);
    let (churn_snapshots, churn_scans) = counts(&g);
    assert!(churn_snapshots >= moving_snapshots + 9 * clients);
    assert_eq!(churn_scans, moving_scans, "entities coming and going");
    let first = client_id(&g.sim, 0).expect("connected");
    let seen: Vec<EntityId> = g.sim.server.visible_entities(first).unwrap().collect();
    assert!(seen.contains(&EntityId(1027)) && !seen.contains(&EntityId(27)));
}

/// The same interval under 20 % loss, sharing encodings among the clients of a phase:
/// every complete snapshot is its tick's scope, and each client ends with exactly its
/// scope in the server's state.
#[test]
fn with_a_send_interval_scope_changes_under_20_pct_loss_end_with_the_view_equal_to_the_scope() {
    for seed in [51, 52, 53] {
        let mut c = config(Some(interest()));
        c.send_interval_ticks = 3;
        let mut g = ScopeGame::with_config(c, 60, seven_views(), seed, 20.0);
        g.sim.server.share_encodings_from(0.0);
        g.run(Duration::from_secs(5));
        g.moving = false;
        g.run(Duration::from_secs(3));
        // A client is sent one tick in three, and most of those arrive whole.
        g.assert_verified_share(seed, 5);
        assert!(g.sim.server.snapshot_totals().entities_shared > 0);
        g.assert_views_are_the_scopes(seed);
    }
}

#[test]
fn a_view_names_the_entities_that_entered_and_left_it_since_the_view_before() {
    // Movers cross the clients' scopes under 20 % loss while each client draws a frame a
    // tick into the same `View`: applying each frame's `entered` and `left` to the set drawn
    // so far gives the frame's entities, an entity enters only when not drawn and leaves
    // only when drawn, and crossings do happen both ways.
    for seed in [31, 32] {
        let mut g = ScopeGame::new(Some(interest()), 60, views(), seed, 20.0);
        let n = g.views.len();
        let mut frames = vec![View::default(); n];
        let mut drawn = vec![BTreeSet::new(); n];
        let (mut entered, mut left) = (0, 0);
        for _ in 0..360 {
            g.run(TICK);
            let now = g.sim.now;
            for (i, view) in frames.iter_mut().enumerate() {
                g.sim.clients[i].client.view_into(now, view);
                for id in &view.left {
                    assert!(
                        drawn[i].remove(id),
                        "seed {seed} client {i}: {id:?} not drawn"
                    );
                }
                for id in &view.entered {
                    assert!(drawn[i].insert(*id), "seed {seed} client {i}: {id:?} drawn");
                }
                let ids: BTreeSet<EntityId> = view.entities.iter().map(|(id, _)| *id).collect();
                assert_eq!(drawn[i], ids, "seed {seed} client {i}");
                entered += view.entered.len();
                left += view.left.len();
            }
        }
        assert!(
            left > 10 && entered > left,
            "seed {seed}: {entered} in, {left} out"
        );
        // A new `View` has every entity entered.
        let fresh = g.sim.clients[0].client.view(g.sim.now);
        let all: Vec<EntityId> = fresh.entities.iter().map(|(id, _)| *id).collect();
        assert!(!all.is_empty());
        assert_eq!((fresh.entered, fresh.left), (all, vec![]), "seed {seed}");
    }
}

#[test]
fn a_world_larger_than_a_snapshot_arrives_without_an_entity_leaving_a_view() {
    // 600 entities standing still and a budget of about forty spawns a snapshot: the world
    // reaches each client over many snapshots, each coded against a baseline several ticks
    // old. Nothing leaves the world, so nothing may leave a view: an entity drawn once stays
    // drawn while the rest arrive, also under loss.
    for (seed, loss) in [(41, 0.0), (42, 5.0), (43, 20.0)] {
        let mut c = config(None);
        c.budget_bytes = 600;
        let mut g = ScopeGame::with_config(c, 0, views(), seed, loss);
        for id in 0..600u32 {
            let position = Vec3::new((id % 25) as f32 * 4.0, 0.0, (id / 25) as f32 * 4.0);
            g.world.insert(
                EntityId(id),
                EntityState::new(Transform {
                    position,
                    ..Transform::default()
                }),
            );
        }
        let n = g.views.len();
        let mut frames = vec![View::default(); n];
        let mut grew = vec![0usize; n];
        for _ in 0..300 {
            g.run(TICK);
            let now = g.sim.now;
            for (i, view) in frames.iter_mut().enumerate() {
                g.sim.clients[i].client.view_into(now, view);
                assert_eq!(
                    view.left,
                    vec![],
                    "seed {seed} client {i}: left with {} drawn",
                    view.entities.len()
                );
                grew[i] += usize::from(!view.entered.is_empty());
            }
        }
        for (i, view) in frames.iter().enumerate() {
            assert_eq!(
                view.entities.len(),
                600,
                "seed {seed} client {i}: all arrived"
            );
            assert!(
                grew[i] > 5,
                "seed {seed} client {i}: over {} frames",
                grew[i]
            );
        }
    }
}

#[test]
fn under_a_tight_budget_no_entity_is_drawn_a_step_back() {
    // The movers of `NearAndFar` under its budget of a few entities a snapshot: most of each
    // tick's changes wait. An entity a snapshot moved must not be drawn back where the
    // baseline had it when the next snapshot leaves it out; every drawn position is at or
    // ahead of the one drawn before. Once they stop, the client holds the server's world.
    let quantize = config(None).quantize;
    for (seed, loss) in [(51, 0.0), (52, 5.0), (53, 20.0)] {
        for distance_priority in [true, false] {
            let mut game = NearAndFar::new(distance_priority, seed, loss);
            let mut drawn: BTreeMap<EntityId, f32> = BTreeMap::new();
            let mut ahead = 0;
            for k in 0..240 {
                for (id, e) in game.step().iter() {
                    let p = quantize.dequantize(&e.transform).position;
                    let a = p.z.atan2(p.x);
                    if let Some(before) = drawn.insert(id, a) {
                        // Angles advance 0.01 rad a tick; the difference, wrapped to ±π.
                        let d = (a - before + std::f32::consts::PI)
                            .rem_euclid(std::f32::consts::TAU)
                            - std::f32::consts::PI;
                        assert!(
                            d > -0.002,
                            "seed {seed} distance {distance_priority} tick {k}: {id:?} back {d} rad"
                        );
                        ahead += usize::from(d > 0.002);
                    }
                }
            }
            assert!(ahead > 200, "seed {seed}: {ahead} moves drawn");
            let g = &mut game.g;
            g.run(Duration::from_secs(2));
            let server = QuantizedWorld::from_world(&g.world, &quantize);
            let live = g.sim.clients[0]
                .client
                .receiver()
                .expect("welcomed")
                .live_world();
            assert_eq!(live, server, "seed {seed} distance {distance_priority}");
        }
    }
}
