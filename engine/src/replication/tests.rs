//! The replication server and client in virtual time: a small game (entities moving in
//! circles, one avatar per client moved by its inputs) over seeded bad links.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use glam::Vec3;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use super::*;
use crate::conditioner::ConditionerConfig;
use crate::connection::ClientId;
use crate::sim::Sim;
use crate::snapshot::{EntityId, EntityState, QuantizeConfig, Tick, Transform, World};

/// The test game's input: a velocity to walk at for one tick.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Walk {
    vx: f32,
    vz: f32,
}

/// The one step function both sides use.
fn walk(state: &mut EntityState, input: &Walk, dt: f32) {
    state.transform.position += Vec3::new(input.vx, 0.0, input.vz) * dt;
}

const TICK: Duration = Duration::from_micros(16_667);

type GameSim = Sim<Server, Client<Walk>>;

fn link(
    loss: f64,
    latency_ms: u64,
    extra: impl FnOnce(&mut ConditionerConfig),
) -> ConditionerConfig {
    let mut c = ConditionerConfig {
        enabled: true,
        loss_pct: loss,
        latency: Duration::from_millis(latency_ms),
        ..ConditionerConfig::off()
    };
    extra(&mut c);
    c
}

fn server_config() -> ServerConfig {
    ServerConfig {
        quantize: QuantizeConfig {
            tick_interval: TICK,
            ..QuantizeConfig::default()
        },
        ..ServerConfig::default()
    }
}

/// A whole game: the server's world and what each side saw.
struct Game {
    sim: GameSim,
    world: World,
    movers: u32,
    moving: bool,
    avatars: BTreeMap<ClientId, EntityId>,
    /// Inputs the server handed to the game, per client, in the order it did.
    applied: BTreeMap<ClientId, Vec<InputTick>>,
    /// Inputs each client sent.
    sent: Vec<Vec<InputTick>>,
    send_inputs: bool,
    next_tick_at: Instant,
    corrections: Vec<f32>,
    disconnects: Vec<CloseReason>,
}

impl Game {
    fn new(
        movers: u32,
        seed: u64,
        clients: usize,
        up: ConditionerConfig,
        down: ConditionerConfig,
    ) -> Self {
        let mut sim = Sim::replication(server_config(), seed).unwrap();
        for i in 0..clients {
            sim.add_replication_client(ClientConfig::default()).unwrap();
            sim.clients[i].client.set_step(walk);
            sim.set_link(i, up.clone(), down.clone());
        }
        let mut world = World::new();
        for id in 0..movers {
            world.insert(EntityId(id), EntityState::new(Transform::default()));
        }
        let next_tick_at = sim.now + TICK;
        Self {
            sim,
            world,
            movers,
            moving: true,
            avatars: BTreeMap::new(),
            applied: BTreeMap::new(),
            sent: vec![Vec::new(); clients],
            send_inputs: true,
            next_tick_at,
            corrections: Vec::new(),
            disconnects: Vec::new(),
        }
    }

    fn server_tick(&mut self) {
        let now = self.sim.now;
        for e in std::mem::take(&mut self.sim.server_events) {
            match e {
                ServerEvent::ClientJoined { client } => {
                    let id = EntityId(1000 + client.0);
                    self.world
                        .insert(id, EntityState::new(Transform::default()));
                    self.avatars.insert(client, id);
                    self.sim.server.set_owned_entity(client, Some(id));
                }
                ServerEvent::ClientLeft { client, .. } => {
                    if let Some(id) = self.avatars.remove(&client) {
                        self.world.remove(id);
                    }
                }
                ServerEvent::Input {
                    client,
                    tick,
                    bytes,
                } => {
                    let input: Walk = crate::codec::decode(&bytes).unwrap();
                    let id = self.avatars[&client];
                    walk(self.world.get_mut(id).unwrap(), &input, TICK.as_secs_f32());
                    self.applied.entry(client).or_default().push(tick);
                }
                _ => {}
            }
        }
        if self.moving {
            let t = self.sim.server.current_tick().0 as f32 * TICK.as_secs_f32();
            for id in 0..self.movers {
                let phase = t + id as f32;
                let e = self.world.get_mut(EntityId(id)).unwrap();
                e.transform.position = Vec3::new(phase.cos() * 10.0, 1.0, phase.sin() * 10.0);
                e.transform.rotation = glam::Quat::from_rotation_y(phase);
            }
        }
        self.sim.server.tick(now, &self.world);
    }

    fn client_frame(&mut self, i: usize) {
        let now = self.sim.now;
        let c = &mut self.sim.clients[i];
        for e in c.events.drain(..) {
            match e {
                ClientEvent::Corrected { distance_m, .. } => self.corrections.push(distance_m),
                ClientEvent::Disconnected { reason } => self.disconnects.push(reason),
                _ => {}
            }
        }
        if self.send_inputs {
            for _ in 0..c.client.inputs_due(now) {
                let n = self.sent[i].len() as f32;
                let input = Walk {
                    vx: (n * 0.1).sin(),
                    vz: (n * 0.07).cos(),
                };
                if let Ok(t) = c.client.send_input(now, input) {
                    self.sent[i].push(t);
                }
            }
        }
        let _ = c.client.view(now);
    }

    /// Run `d` of virtual time: a server tick every period, each client's frame half a
    /// period later.
    fn run(&mut self, d: Duration) {
        let end = self.sim.now + d;
        while self.next_tick_at <= end {
            self.sim.run_until(self.next_tick_at);
            self.server_tick();
            self.sim.run_until(self.next_tick_at + TICK / 2);
            for i in 0..self.sim.clients.len() {
                self.client_frame(i);
            }
            self.next_tick_at += TICK;
        }
    }
}

fn owned_state(g: &Game, i: usize) -> (EntityId, Vec3, Vec3) {
    let c = &g.sim.clients[i].client;
    let id = c.owned_entity().expect("owned");
    let server = g.world.get(id).unwrap().transform.position;
    let predicted = c.predicted().expect("predicted").transform.position;
    (id, server, predicted)
}

#[test]
fn a_client_is_welcomed_with_its_settings_and_entity_and_sees_the_world() {
    let mut g = Game::new(
        100,
        1,
        1,
        ConditionerConfig::off(),
        ConditionerConfig::off(),
    );
    g.run(Duration::from_secs(1));
    let c = &g.sim.clients[0].client;
    let w = c.welcome().expect("welcomed");
    assert_eq!(w.tick_interval, TICK);
    assert_eq!(w.quantize, server_config().quantize);
    assert_eq!(w.owned, Some(EntityId(1000 + w.client_id.0)));
    let view = g.sim.clients[0].client.view(g.sim.now);
    assert_eq!(view.entities.len(), 101);
    assert!(g.disconnects.is_empty());
}

#[test]
fn clients_equal_the_server_after_motion_stops_at_10_pct_loss_and_100_ms_latency() {
    let bad = link(10.0, 50, |_| {});
    let mut g = Game::new(100, 7, 3, bad.clone(), bad);
    g.run(Duration::from_secs(3));
    g.moving = false;
    g.send_inputs = false;
    g.run(Duration::from_secs(2));
    let server = crate::snapshot::QuantizedWorld::from_world(&g.world, &server_config().quantize);
    for sc in &g.sim.clients {
        let r = sc.client.receiver().expect("welcomed");
        assert_eq!(
            r.live_world(),
            server,
            "client live view equals the server's world"
        );
        assert!(r.stats().parts_applied > 0);
        // Late parts are counted, never applied: the receiver's own guarantee, reached
        // through the replication client.
        assert_eq!(
            r.stats().parts_applied
                + r.stats().late_dropped
                + r.stats().held_back
                + r.stats().missing_baseline_dropped
                + r.stats().invalid
                + r.stats().duplicates
                + r.stats().too_old,
            r.stats().parts_received
        );
    }
}

#[test]
fn clients_holding_one_baseline_share_one_encoding_and_each_still_equals_the_server() {
    // Same link for all: most clients hold the same baseline most of the time. A tight
    // budget for one client makes its snapshots its own (entities wait), and 5 % loss
    // spreads the baselines; every client must still end with the server's world.
    let lossy = link(5.0, 20, |_| {});
    let mut g = Game::new(100, 17, 6, lossy.clone(), lossy);
    g.run(Duration::from_millis(500));
    let tight = g.sim.clients[5]
        .client
        .welcome()
        .expect("welcomed")
        .client_id;
    g.sim.server.set_budget(tight, 300);
    g.run(Duration::from_secs(3));
    let shared = g.sim.server.stats().shared_snapshots;
    let all = g.sim.server.snapshot_totals().snapshots;
    assert!(
        shared * 2 > all,
        "most snapshots were encoded once for several clients ({shared} of {all})"
    );
    let tight_summary = g.sim.server.client_summary(tight).unwrap();
    assert!(
        tight_summary.snapshots.entities_deferred > 0,
        "the tight budget bit"
    );
    g.moving = false;
    g.send_inputs = false;
    g.run(Duration::from_secs(3));
    let server = crate::snapshot::QuantizedWorld::from_world(&g.world, &server_config().quantize);
    for (i, sc) in g.sim.clients.iter().enumerate() {
        let r = sc.client.receiver().expect("welcomed");
        assert_eq!(r.live_world(), server, "client {i}");
    }
}

#[test]
fn the_owned_entity_converges_to_the_servers_state_after_inputs_stop() {
    for seed in 0..5 {
        let bad = link(5.0, 50, |c| c.jitter = Duration::from_millis(5));
        let mut g = Game::new(10, seed, 2, bad.clone(), bad);
        g.run(Duration::from_secs(3));
        g.send_inputs = false;
        g.run(Duration::from_secs(1));
        for i in 0..2 {
            let (_, server, predicted) = owned_state(&g, i);
            // Within the quantization step: the client replays from the server's
            // quantized state.
            assert!(
                (server - predicted).length() < 0.01,
                "seed {seed} client {i}: server {server} predicted {predicted}"
            );
            let drawn = {
                let c = &mut g.sim.clients[i].client;
                let v = c.view(g.sim.now);
                let id = v.owned.unwrap();
                v.entities
                    .iter()
                    .find(|(e, _)| *e == id)
                    .unwrap()
                    .1
                    .position
            };
            assert!((drawn - predicted).length() < 1e-4, "smoothing has ended");
        }
    }
}

#[test]
fn no_corrections_on_a_clean_link_and_inputs_drawn_at_once_when_predicting() {
    let mut g = Game::new(10, 3, 1, ConditionerConfig::off(), link(0.0, 50, |_| {}));
    g.run(Duration::from_secs(3));
    assert!(g.corrections.is_empty(), "{:?}", g.corrections);
    assert_eq!(g.sim.clients[0].client.stats().corrections, 0);
    let now = g.sim.now;
    let c = &mut g.sim.clients[0].client;
    let t = c.send_input(now, Walk { vx: 1.0, vz: 0.0 }).unwrap();
    assert_eq!(
        c.view(now).owned_input,
        Some(t),
        "the newest input is drawn at once"
    );
}

#[test]
fn without_prediction_the_drawn_owned_entity_lags_its_inputs_by_at_least_the_round_trip() {
    let mut g = Game::new(10, 3, 1, link(0.0, 50, |_| {}), link(0.0, 50, |_| {}));
    g.sim.clients[0].client.set_prediction(false);
    g.run(Duration::from_secs(3));
    let now = g.sim.now;
    let c = &mut g.sim.clients[0].client;
    let shown = c.view(now).owned_input.expect("some input is reflected");
    let newest = *g.sent[0].last().unwrap();
    // 100 ms of round trip at 60 Hz is 6 ticks of inputs not yet reflected.
    assert!(newest - shown >= 6, "newest {newest} shown {shown}");
    assert!(c.predicted().is_none());
}

#[test]
fn a_server_override_is_corrected_and_smoothed() {
    let mut g = Game::new(1, 5, 1, ConditionerConfig::off(), ConditionerConfig::off());
    g.run(Duration::from_secs(1));
    g.send_inputs = false;
    g.run(Duration::from_millis(500));
    let id = g.sim.clients[0].client.owned_entity().unwrap();
    // The server moves the avatar by itself (a teleport, a push): the client's prediction
    // cannot know.
    g.world.get_mut(id).unwrap().transform.position += Vec3::new(2.0, 0.0, 0.0);
    g.run(Duration::from_millis(300));
    assert_eq!(g.corrections.len(), 1, "{:?}", g.corrections);
    assert!((g.corrections[0] - 2.0).abs() < 0.01);
    let (_, server, predicted) = owned_state(&g, 0);
    assert!((server - predicted).length() < 0.01);
}

fn inputs_exactly_once_in_order(seed: u64) {
    let bad = link(20.0, 40, |c| {
        c.jitter = Duration::from_millis(10);
        c.duplicate_pct = 5.0;
        c.reorder_pct = 5.0;
        c.reorder_window = Duration::from_millis(20);
    });
    let mut g = Game::new(20, seed, 2, bad.clone(), bad);
    g.run(Duration::from_secs(6));
    g.send_inputs = false;
    g.run(Duration::from_secs(2));
    for (i, sc) in g.sim.clients.iter().enumerate() {
        let id = sc.client.welcome().unwrap().client_id;
        let applied = g.applied.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            applied, g.sent[i],
            "seed {seed} client {i}: every input once, in order"
        );
        assert!(
            applied.len() > 60,
            "seed {seed} client {i}: only {} inputs",
            applied.len()
        );
        assert_eq!(sc.client.acked_input(), applied.last().copied());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn every_input_is_applied_exactly_once_in_order_at_20_pct_loss(seed in any::<u64>()) {
        inputs_exactly_once_in_order(seed);
    }
}

#[test]
fn a_missing_baseline_asks_for_a_full_snapshot_and_the_client_recovers() {
    let mut g = Game::new(
        50,
        11,
        1,
        ConditionerConfig::off(),
        ConditionerConfig::off(),
    );
    g.run(Duration::from_secs(1));
    // Drop every snapshot tick the client holds: the next delta names a baseline it lacks.
    let id = g.sim.clients[0].client.welcome().unwrap().client_id;
    let resets_before = g.sim.server.client_summary(id).unwrap().snapshots.resets;
    {
        let c = &mut g.sim.clients[0].client;
        let s = c.session.as_mut().unwrap();
        s.receiver = crate::snapshot::SnapshotReceiver::new(crate::snapshot::ReceiverConfig {
            quantize: s.welcome.quantize,
            ring_ticks: s.ring_ticks,
            ..crate::snapshot::ReceiverConfig::default()
        })
        .unwrap();
    }
    g.run(Duration::from_millis(500));
    let c = &g.sim.clients[0].client;
    assert_eq!(c.stats().resyncs_requested, 1, "one request, rate-limited");
    assert!(c.stats().parts_rejected > 0);
    assert_eq!(
        g.sim.server.client_summary(id).unwrap().snapshots.resets,
        resets_before + 1
    );
    let server = crate::snapshot::QuantizedWorld::from_world(&g.world, &server_config().quantize);
    g.moving = false;
    g.send_inputs = false;
    g.run(Duration::from_millis(300));
    let server_now =
        crate::snapshot::QuantizedWorld::from_world(&g.world, &server_config().quantize);
    let _ = server;
    assert_eq!(
        g.sim.clients[0].client.receiver().unwrap().live_world(),
        server_now
    );
}

/// A welcome as a server of the current version sends it, with `quantize`.
fn welcome_wire(quantize: &QuantizeConfig) -> wire::WelcomeWire {
    wire::WelcomeWire {
        version: REPLICATION_VERSION,
        client_id: 1,
        owned: None,
        server_tick: 1,
        send_interval_ticks: 1,
        ring_ticks: 64,
        quantize: wire::QuantizeWire::from(quantize),
        app: Vec::new(),
    }
}

/// Hand `welcome` to a connected client that has none yet: the reason it must close with,
/// having taken no welcome.
fn refused_welcome(welcome: wire::WelcomeWire) -> CloseReason {
    let mut g = Game::new(1, 2, 1, ConditionerConfig::off(), ConditionerConfig::off());
    let c = &mut g.sim.clients[0].client;
    let bytes = crate::codec::encode(&wire::ControlMsg::Welcome(welcome)).unwrap();
    let now = g.sim.now;
    c.on_control(now, now, &bytes);
    let Some(ClientEvent::Disconnected { reason }) = c.poll_event() else {
        panic!("expected a disconnect");
    };
    assert!(c.welcome().is_none());
    reason
}

#[test]
fn a_welcome_of_another_version_is_refused_with_a_clear_reason() {
    let reason = refused_welcome(wire::WelcomeWire {
        version: REPLICATION_VERSION + 1,
        ..welcome_wire(&QuantizeConfig::default())
    });
    assert!(
        matches!(reason, CloseReason::BadWelcome(ref why) if why.contains("version")),
        "{reason}"
    );
}

#[test]
fn a_welcome_whose_box_decodes_to_infinity_is_refused() {
    // A server (hostile or misconfigured) announces a box whose last step lies past
    // f32::MAX: a client that took it would draw entities at infinity.
    let reason = refused_welcome(welcome_wire(&QuantizeConfig {
        position_min: Vec3::ZERO,
        position_max: Vec3::new(f32::MAX, 1.0, 1.0),
        position_resolution_m: f32::MAX / 999.5,
        ..QuantizeConfig::default()
    }));
    assert!(
        matches!(reason, CloseReason::BadWelcome(ref why) if why.contains("finite")),
        "{reason}"
    );
}

#[test]
fn unusable_configs_are_refused_at_construction() {
    let now = Instant::now();
    let bad_quantize = ServerConfig {
        quantize: QuantizeConfig {
            position_resolution_m: 0.0,
            ..QuantizeConfig::default()
        },
        ..ServerConfig::default()
    };
    assert!(matches!(
        Server::new(bad_quantize, now),
        Err(ConfigError::Snapshot(_))
    ));
    let mut bad_channels = ServerConfig::default();
    bad_channels.server.connection.channels.mtu_payload_bytes = 3;
    assert!(matches!(
        Server::new(bad_channels, now),
        Err(ConfigError::Channels(_))
    ));
    let zero_interval = ServerConfig {
        send_interval_ticks: 0,
        ..ServerConfig::default()
    };
    assert!(Server::new(zero_interval, now).is_err());
    let huge_part = ServerConfig {
        max_part_bytes: 5000,
        ..ServerConfig::default()
    };
    assert!(Server::new(huge_part, now).is_err());
    let addr = "127.0.0.1:1".parse().unwrap();
    let no_inputs = ClientConfig {
        max_inputs_per_packet: 0,
        ..ClientConfig::default()
    };
    assert!(Client::<Walk>::new(no_inputs, addr, now).is_err());
    // More entities a snapshot than its baselines may hold four of.
    let too_little_held = ClientConfig {
        max_entities: crate::snapshot::DEFAULT_MAX_HELD_ENTITIES,
        ..ClientConfig::default()
    };
    assert!(matches!(
        Client::<Walk>::new(too_little_held, addr, now),
        Err(ConfigError::Invalid(_))
    ));
    let mut bad_client_channels = ClientConfig::default();
    bad_client_channels
        .client
        .connection
        .channels
        .mtu_payload_bytes = 3;
    assert!(matches!(
        Client::<Walk>::new(bad_client_channels, addr, now),
        Err(ConfigError::Channels(_))
    ));
}

#[test]
fn game_messages_travel_on_game_channels_and_the_control_channel_is_not_theirs() {
    let mut g = Game::new(1, 4, 1, ConditionerConfig::off(), ConditionerConfig::off());
    g.run(Duration::from_millis(500));
    let now = g.sim.now;
    let id = g.sim.clients[0].client.welcome().unwrap().client_id;
    let control = g.sim.server.control;
    assert!(g.sim.server.send_message(now, id, control, b"x").is_err());
    assert_eq!(g.sim.server.broadcast(now, 0, b"hello"), 1);
    g.sim.clients[0].client.send_message(now, 0, b"hi").unwrap();
    g.sim.run_for(Duration::from_millis(50));
    let got = g.sim.clients[0]
        .events
        .iter()
        .any(|e| matches!(e, ClientEvent::Message { channel: 0, bytes, .. } if bytes == b"hello"));
    assert!(got);
    let heard = g.sim.server_events.iter().any(
        |e| matches!(e, ServerEvent::Message { client, channel: 0, bytes } if *client == id && bytes == b"hi"),
    );
    assert!(heard);
}

#[test]
fn a_client_cannot_apply_inputs_faster_than_the_tick_rate() {
    let mut g = Game::new(1, 9, 1, ConditionerConfig::off(), ConditionerConfig::off());
    g.send_inputs = false;
    g.run(Duration::from_millis(500));
    let now = g.sim.now;
    // A cheat sends 200 inputs at once.
    for _ in 0..200 {
        let _ = g.sim.clients[0]
            .client
            .send_input(now, Walk { vx: 5.0, vz: 0.0 });
    }
    let id = g.sim.clients[0].client.welcome().unwrap().client_id;
    g.sim.run_for(Duration::from_millis(1));
    g.server_tick();
    let burst = g.applied.get(&id).map_or(0, |v| v.len());
    assert!(
        burst <= server_config().max_input_burst as usize + 1,
        "{burst}"
    );
    // They keep coming at one per tick (plus the banked burst), never dropped.
    g.run(Duration::from_secs(5));
    assert_eq!(g.applied[&id].len(), 200);
}

#[test]
fn reliable_ordered_delivery_replicates_the_same_world() {
    let mut cfg = server_config();
    cfg.delivery = SnapshotDelivery::ReliableOrdered;
    let mut sim: GameSim = Sim::replication(cfg, 3).unwrap();
    sim.add_replication_client(ClientConfig::default()).unwrap();
    let bad = link(5.0, 20, |_| {});
    sim.set_link(0, bad.clone(), bad);
    let mut g = Game::new(30, 3, 0, ConditionerConfig::off(), ConditionerConfig::off());
    g.sim = sim;
    g.sent = vec![Vec::new()];
    g.sim.clients[0].client.set_step(walk);
    g.run(Duration::from_secs(2));
    g.moving = false;
    g.send_inputs = false;
    g.run(Duration::from_secs(2));
    let server = crate::snapshot::QuantizedWorld::from_world(&g.world, &server_config().quantize);
    assert_eq!(
        g.sim.clients[0].client.receiver().unwrap().live_world(),
        server
    );
    let id = g.sim.clients[0].client.welcome().unwrap().client_id;
    assert_eq!(g.applied[&id], g.sent[0]);
    let _ = Tick(0);
}

#[test]
fn a_secure_game_replicates_and_predicts_as_a_plain_one() {
    use crate::connection::{ClientSecurity, SecureServerConfig, Security};
    use crate::netcode::{self, TokenSettings, generate_connect_token};
    let unix = 1_800_000_000;
    let key = netcode::generate_key();
    let addr: std::net::SocketAddr = "127.0.0.1:7777".parse().unwrap();
    let mut config = server_config();
    config.server.security = Security::Secure(SecureServerConfig {
        netcode: netcode::ServerConfig::new(42, key, addr),
        unix_secs_at_start: unix,
    });
    let mut sim: GameSim = Sim::replication(config, 8).unwrap();
    for i in 0..2u64 {
        let settings = TokenSettings {
            protocol_id: 42,
            client_id: i,
            server_addresses: vec![addr],
            expire_seconds: 60,
            timeout_seconds: 5,
            user_data: [0; netcode::USER_DATA_BYTES],
        };
        let token = generate_connect_token(unix, &settings, &key).unwrap();
        let mut c = ClientConfig::default();
        c.client.security = ClientSecurity::Secure {
            token: token.to_bytes().to_vec(),
        };
        sim.add_replication_client(c).unwrap();
    }
    let lossy = link(5.0, 30, |_| {});
    sim.set_all_links(lossy);
    let mut g = Game::new(40, 8, 0, ConditionerConfig::off(), ConditionerConfig::off());
    g.sim = sim;
    g.sent = vec![Vec::new(); 2];
    for i in 0..2 {
        g.sim.clients[i].client.set_step(walk);
    }
    g.run(Duration::from_secs(3));
    g.moving = false;
    g.send_inputs = false;
    g.run(Duration::from_secs(2));
    let server = crate::snapshot::QuantizedWorld::from_world(&g.world, &server_config().quantize);
    for i in 0..2 {
        let c = &g.sim.clients[i].client;
        assert_eq!(c.receiver().expect("welcomed").live_world(), server);
        let id = c.welcome().unwrap().client_id;
        assert_eq!(g.applied[&id], g.sent[i], "inputs once, in order");
        assert!(g.applied[&id].len() > 60);
    }
    assert_eq!(g.sim.server.connection().stats().invalid_secure, 0);
    assert!(g.sim.server.connection().secure_stats().is_some());
}

#[test]
fn session_secrets_come_from_the_os_unless_a_test_fixes_a_seed() {
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let salt = |seed: Option<u64>| {
        let config = ServerConfig {
            seed,
            ..ServerConfig::default()
        };
        let mut sim: GameSim = Sim::with_server(|now| Server::new(config, now).unwrap(), 1);
        sim.handshake_by_hand(addr, 99).expect("accepted")
    };
    // The same address and nonce: only the server's secret can tell the salts apart.
    assert_ne!(salt(None), salt(None), "two servers, two secrets");
    assert_eq!(salt(Some(5)), salt(Some(5)), "a fixed seed reproduces");
}
