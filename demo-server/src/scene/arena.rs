//! `arena`: bodies bouncing in a closed box, plus one avatar per connected player.

use std::collections::BTreeMap;

use glam::{EulerRot, Quat, Vec3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snapsync::snapshot::EntityState;

use super::{Body, GRAVITY_M_PER_S2, PlayerInput, Scene, usable_dt};

/// Bouncing bodies when `--entities` is not given.
pub const DEFAULT_ARENA_BODIES: usize = 64;

/// Half the box's width along X and Z; the box spans `-20..=20` m.
const ARENA_HALF_WIDTH_M: f32 = 20.0;
/// Height of the box's ceiling above the floor at y = 0.
const ARENA_HEIGHT_M: f32 = 12.0;
/// Smallest and largest half extent of a bouncing body.
const BODY_HALF_EXTENT_RANGE_M: (f32, f32) = (0.2, 0.6);
/// Largest horizontal launch speed of a bouncing body.
const BODY_MAX_SPEED_M_PER_S: f32 = 6.0;
/// Largest spin of a bouncing body, per axis.
const BODY_MAX_SPIN_RAD_PER_S: f32 = 3.0;
/// Half extent of a player's avatar.
const AVATAR_HALF_EXTENT_M: f32 = 0.5;
/// Ground speed of an avatar at full input.
const AVATAR_SPEED_M_PER_S: f32 = 6.0;
/// Upward speed a jump gives (about 1.3 m high).
const AVATAR_JUMP_SPEED_M_PER_S: f32 = 5.0;
/// How fast an avatar turns to face where it walks.
const AVATAR_TURN_RATE_RAD_PER_S: f32 = 10.0;

/// A connected player's avatar: a body that moves only by its player's inputs.
#[derive(Debug, Clone, Copy)]
struct Avatar {
    entity: u32,
}

/// Bodies bouncing elastically in a 40 × 12 × 40 m box under gravity, plus player avatars.
///
/// Bodies have ids `0..N`; each added player gets a fresh avatar id above every id used so
/// far (ids are never reused). Bodies and avatars do not collide with each other.
#[derive(Debug)]
pub struct ArenaScene {
    /// Sorted by id: the bodies first, then the avatars in the order they joined.
    bodies: Vec<Body>,
    /// Angular velocity per entry of `bodies` (zero for avatars, which turn by yaw).
    spins: Vec<Vec3>,
    /// Number of bouncing bodies (ids `0..body_count`).
    body_count: usize,
    /// Avatars by player id; a BTreeMap so stepping order never depends on hashing.
    avatars: BTreeMap<u32, Avatar>,
    next_id: u32,
    rng: ChaCha8Rng,
}

impl ArenaScene {
    /// A box with `bodies` bouncing bodies laid out from `seed`.
    pub fn new(bodies: usize, seed: u64) -> ArenaScene {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut list = Vec::with_capacity(bodies);
        let mut spins = Vec::with_capacity(bodies);
        for id in 0..bodies {
            let (lo, hi) = BODY_HALF_EXTENT_RANGE_M;
            let half_extent = rng.random_range(lo..hi);
            let reach = ARENA_HALF_WIDTH_M - half_extent;
            let position = Vec3::new(
                rng.random_range(-reach..reach),
                rng.random_range(half_extent..ARENA_HEIGHT_M - half_extent),
                rng.random_range(-reach..reach),
            );
            let heading = rng.random_range(0.0..std::f32::consts::TAU);
            let speed = rng.random_range(0.3..1.0) * BODY_MAX_SPEED_M_PER_S;
            let velocity = Vec3::new(heading.cos() * speed, 0.0, heading.sin() * speed);
            let spin = Vec3::new(
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
            ) * BODY_MAX_SPIN_RAD_PER_S;
            list.push(Body {
                // MAX_SCENE_ENTITIES keeps `bodies` far below u32::MAX.
                id: id as u32,
                position,
                rotation: Quat::IDENTITY,
                velocity,
                half_extent,
            });
            spins.push(spin);
        }
        ArenaScene {
            bodies: list,
            spins,
            body_count: bodies,
            avatars: BTreeMap::new(),
            next_id: bodies as u32,
            rng,
        }
    }

    /// The entity id of `player`'s avatar, if that player is connected.
    pub fn avatar_of(&self, player: u32) -> Option<u32> {
        self.avatars.get(&player).map(|a| a.entity)
    }

    fn index_of(&self, entity: u32) -> Option<usize> {
        self.bodies.binary_search_by_key(&entity, |b| b.id).ok()
    }
}

/// Moves one bouncing body, reflecting it off every face of the box without losing energy.
fn bounce(body: &mut Body, spin: Vec3, dt: f32) {
    let h = body.half_extent;
    body.velocity.y -= GRAVITY_M_PER_S2 * dt;
    body.position += body.velocity * dt;
    let wall = ARENA_HALF_WIDTH_M - h;
    for axis in [0, 2] {
        if body.position[axis] > wall {
            body.position[axis] = 2.0 * wall - body.position[axis];
            body.velocity[axis] = -body.velocity[axis].abs();
        } else if body.position[axis] < -wall {
            body.position[axis] = -2.0 * wall - body.position[axis];
            body.velocity[axis] = body.velocity[axis].abs();
        }
    }
    let ceiling = ARENA_HEIGHT_M - h;
    if body.position.y < h {
        body.position.y = 2.0 * h - body.position.y;
        body.velocity.y = body.velocity.y.abs();
    } else if body.position.y > ceiling {
        body.position.y = 2.0 * ceiling - body.position.y;
        body.velocity.y = -body.velocity.y.abs();
    }
    // Mirroring is exact only to first order; clamp so float drift can never leave the box.
    body.position.x = body.position.x.clamp(-wall, wall);
    body.position.z = body.position.z.clamp(-wall, wall);
    body.position.y = body.position.y.clamp(h, ceiling);
    body.rotation = (Quat::from_scaled_axis(spin * dt) * body.rotation).normalize();
}

/// One input of an arena avatar over `dt` seconds: walk, turn toward the walk, jump from the
/// ground, fall, stay inside the box.
///
/// The server applies every input of a player with it, and a predicting client runs the same
/// function on its copy, so the two agree up to the quantization of the state the client
/// starts from. It reads and writes only the transform (heading from the rotation, vertical
/// speed from the velocity), which is what a snapshot carries.
pub fn walk_avatar(state: &mut EntityState, input: &PlayerInput, dt: f32) {
    walk_within(state, input, dt, ARENA_HALF_WIDTH_M);
}

/// [`walk_avatar`] inside a square of `half_width_m` (the box's height stays the arena's).
pub(crate) fn walk_within(
    state: &mut EntityState,
    input: &PlayerInput,
    dt: f32,
    half_width_m: f32,
) {
    let Some(dt) = usable_dt(dt) else { return };
    let input = input.sanitized();
    let t = &mut state.transform;
    let h = AVATAR_HALF_EXTENT_M;
    let mut velocity = t.velocity.unwrap_or(Vec3::ZERO);
    velocity.x = input.movement.x * AVATAR_SPEED_M_PER_S;
    velocity.z = input.movement.y * AVATAR_SPEED_M_PER_S;
    let grounded = t.position.y <= h;
    if grounded && input.jump {
        velocity.y = AVATAR_JUMP_SPEED_M_PER_S;
    } else if !grounded {
        velocity.y -= GRAVITY_M_PER_S2 * dt;
    }
    let mut position = t.position + velocity * dt;
    let wall = half_width_m - h;
    position.x = position.x.clamp(-wall, wall);
    position.z = position.z.clamp(-wall, wall);
    if position.y <= h {
        position.y = h;
        velocity.y = velocity.y.max(0.0);
    }
    position.y = position.y.min(ARENA_HEIGHT_M - h);
    let mut yaw = t.rotation.to_euler(EulerRot::YXZ).0;
    if input.movement != glam::Vec2::ZERO {
        // Yaw that points local +Z along the movement.
        let target = input.movement.x.atan2(input.movement.y);
        let diff = wrap_angle(target - yaw);
        let max_turn = AVATAR_TURN_RATE_RAD_PER_S * dt;
        yaw = wrap_angle(yaw + diff.clamp(-max_turn, max_turn));
    }
    t.position = position;
    t.velocity = Some(velocity);
    t.rotation = Quat::from_rotation_y(yaw);
}

/// `angle` folded into `-PI..=PI`.
fn wrap_angle(angle: f32) -> f32 {
    use std::f32::consts::{PI, TAU};
    let a = (angle + PI).rem_euclid(TAU) - PI;
    if a < -PI { a + TAU } else { a }
}

impl Scene for ArenaScene {
    fn step(&mut self, dt: f32) {
        let Some(dt) = usable_dt(dt) else { return };
        // Bouncing bodies are never removed, so they are exactly the first `body_count`.
        let bouncing = self
            .bodies
            .iter_mut()
            .zip(&self.spins)
            .take(self.body_count);
        for (body, &spin) in bouncing {
            bounce(body, spin, dt);
        }
    }

    fn bodies(&self) -> &[Body] {
        &self.bodies
    }

    fn add_player(&mut self, player: u32) -> u32 {
        if let Some(entity) = self.avatar_of(player) {
            return entity;
        }
        let entity = self.next_id;
        // Four billion joins would be needed to wrap; ids stay unique until then.
        self.next_id = self.next_id.wrapping_add(1);
        let reach = ARENA_HALF_WIDTH_M * 0.5;
        let position = Vec3::new(
            self.rng.random_range(-reach..reach),
            AVATAR_HALF_EXTENT_M,
            self.rng.random_range(-reach..reach),
        );
        self.bodies.push(Body {
            id: entity,
            position,
            rotation: Quat::IDENTITY,
            velocity: Vec3::ZERO,
            half_extent: AVATAR_HALF_EXTENT_M,
        });
        self.spins.push(Vec3::ZERO);
        self.avatars.insert(player, Avatar { entity });
        entity
    }

    fn remove_player(&mut self, player: u32) {
        let Some(avatar) = self.avatars.remove(&player) else {
            return;
        };
        if let Some(index) = self.index_of(avatar.entity) {
            self.bodies.remove(index);
            self.spins.remove(index);
        }
    }

    fn apply_input(&mut self, player: u32, input: &PlayerInput, dt: f32) {
        let Some(index) = self
            .avatars
            .get(&player)
            .and_then(|a| self.index_of(a.entity))
        else {
            return;
        };
        self.bodies[index].step_by(walk_avatar, input, dt);
    }
}

#[cfg(test)]
mod tests {
    use glam::Vec2;

    use super::*;

    const DT: f32 = 1.0 / 60.0;

    fn input(x: f32, y: f32, jump: bool) -> PlayerInput {
        PlayerInput {
            movement: Vec2::new(x, y),
            jump,
        }
    }

    fn position_of(scene: &ArenaScene, entity: u32) -> Vec3 {
        let index = scene.index_of(entity).expect("entity exists");
        scene.bodies()[index].position
    }

    #[test]
    fn same_seed_same_bodies_after_600_ticks_and_other_seeds_differ() {
        let run = |seed| {
            let mut scene = ArenaScene::new(DEFAULT_ARENA_BODIES, seed);
            scene.add_player(4);
            for tick in 0..600 {
                let angle = tick as f32 * 0.01;
                scene.apply_input(4, &input(angle.cos(), angle.sin(), tick % 90 == 0), DT);
                scene.step(DT);
            }
            scene.bodies().to_vec()
        };
        let a = run(21);
        assert_eq!(a.len(), DEFAULT_ARENA_BODIES + 1);
        assert_eq!(a, run(21));
        assert_ne!(a, run(22));
    }

    #[test]
    fn an_avatar_moves_the_way_its_input_points() {
        let mut scene = ArenaScene::new(8, 1);
        let avatar = scene.add_player(3);
        assert_eq!(avatar, 8);
        let start = position_of(&scene, avatar);
        for _ in 0..60 {
            scene.apply_input(3, &input(1.0, 0.0, false), DT);
            scene.step(DT);
        }
        let moved = position_of(&scene, avatar) - start;
        assert!((moved.x - AVATAR_SPEED_M_PER_S).abs() < 0.01, "{moved}");
        assert_eq!((moved.y, moved.z), (0.0, 0.0));

        let start = position_of(&scene, avatar);
        for _ in 0..30 {
            scene.apply_input(3, &input(0.0, -1.0, false), DT);
            scene.step(DT);
        }
        let moved = position_of(&scene, avatar) - start;
        assert!(
            (moved.z + 0.5 * AVATAR_SPEED_M_PER_S).abs() < 0.01,
            "{moved}"
        );
        assert!(moved.x.abs() < 1e-6, "{moved}");
        // It turned to face -Z, where it walks.
        let index = scene.index_of(avatar).expect("avatar exists");
        let facing = scene.bodies()[index].rotation * Vec3::Z;
        assert!(facing.dot(Vec3::NEG_Z) > 0.99, "{facing}");
    }

    #[test]
    fn an_avatar_jumps_and_lands() {
        let mut scene = ArenaScene::new(0, 1);
        let avatar = scene.add_player(1);
        scene.apply_input(1, &input(0.0, 0.0, true), DT);
        scene.step(DT);
        let mut peak = 0.0f32;
        for _ in 0..120 {
            scene.apply_input(1, &PlayerInput::default(), DT);
            scene.step(DT);
            peak = peak.max(position_of(&scene, avatar).y);
        }
        assert!(peak > AVATAR_HALF_EXTENT_M + 1.0, "{peak}");
        assert_eq!(position_of(&scene, avatar).y, AVATAR_HALF_EXTENT_M);
    }

    #[test]
    fn bodies_and_avatars_stay_inside_the_box() {
        let mut scene = ArenaScene::new(200, 9);
        scene.add_player(1);
        let wild = input(f32::NAN, -40.0, true);
        for _ in 0..1200 {
            scene.apply_input(1, &wild, DT);
            scene.step(DT);
            for body in scene.bodies() {
                let (p, h) = (body.position, body.half_extent);
                let wall = ARENA_HALF_WIDTH_M - h;
                assert!(p.x.abs() <= wall && p.z.abs() <= wall, "{body:?}");
                assert!(p.y >= h && p.y <= ARENA_HEIGHT_M - h, "{body:?}");
            }
        }
        // Elastic bounces keep the bodies moving instead of settling on the floor.
        let moving = scene.bodies()[..200]
            .iter()
            .filter(|b| b.velocity.length() > 1.0)
            .count();
        assert!(moving > 150, "{moving}");
        // The avatar ran into the -Z wall and stays against it.
        let avatar = scene.avatar_of(1).expect("connected");
        let wall = ARENA_HALF_WIDTH_M - AVATAR_HALF_EXTENT_M;
        assert_eq!(position_of(&scene, avatar).z, -wall);
    }

    #[test]
    fn adding_and_removing_players_adds_and_removes_avatars() {
        let mut scene = ArenaScene::new(10, 2);
        let a = scene.add_player(5);
        let b = scene.add_player(9);
        assert_eq!((a, b), (10, 11));
        assert_eq!(scene.add_player(5), a, "adding twice keeps the avatar");
        assert_eq!(scene.bodies().len(), 12);

        scene.remove_player(5);
        scene.remove_player(5);
        scene.remove_player(77);
        let ids: Vec<u32> = scene.bodies().iter().map(|b| b.id).collect();
        assert_eq!(ids, (0..10).chain([11]).collect::<Vec<_>>());
        assert_eq!(scene.avatar_of(5), None);

        // A returning player gets a fresh id, never the old one.
        assert_eq!(scene.add_player(5), 12);
        scene.step(DT);
        let ids: Vec<u32> = scene.bodies().iter().map(|b| b.id).collect();
        assert_eq!(ids, (0..10).chain([11, 12]).collect::<Vec<_>>());
    }
}
