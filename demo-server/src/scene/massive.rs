//! `massive`: a square kilometre of wandering NPCs plus one avatar per player — the world
//! that needs an area of interest, because no client can be sent all of it.

use std::collections::BTreeMap;

use glam::{Quat, Vec2, Vec3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use snapsync::snapshot::EntityState;

use super::arena::walk_within;
use super::{Body, PlayerInput, Scene, usable_dt};

/// NPCs when `--entities` is not given.
pub const DEFAULT_MASSIVE_NPCS: usize = 10_000;
/// Half the map's width along X and Z: the map spans `-500..=500` m.
pub const MASSIVE_HALF_WIDTH_M: f32 = 500.0;
/// Half extent of an NPC and of an avatar (people-sized boxes).
const NPC_HALF_EXTENT_M: f32 = 0.4;
/// Walking speed of an NPC.
const NPC_SPEED_M_PER_S: f32 = 1.4;
/// How far an NPC walks before it rests: uniform in this range.
const NPC_LEG_M: (f32, f32) = (4.0, 40.0);
/// How long an NPC rests between legs: uniform in this range. With legs of 16 s on average,
/// about a third of the NPCs walk at any time.
const NPC_REST_S: (f32, f32) = (8.0, 56.0);

/// One NPC's plan.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Walk a straight leg to `to`, along `dir` (a unit vector, or zero for a leg of no
    /// length), facing the way with `facing`. Both are worked out once a leg: a game's
    /// NPC turns when its leg starts, and an unchanged rotation is not quantized again.
    Walk {
        to: Vec2,
        dir: Vec2,
        facing: Quat,
    },
    Rest {
        left_s: f32,
    },
}

impl Plan {
    /// The leg from `from` to `to`.
    fn walk(from: Vec2, to: Vec2) -> Plan {
        let dir = (to - from).normalize_or_zero();
        Plan::Walk {
            to,
            dir,
            // Yaw that points local +Z along the walk, as avatars face.
            facing: Quat::from_rotation_y(dir.x.atan2(dir.y)),
        }
    }
}

/// 1 km × 1 km of NPCs that walk a leg, rest, and walk again; players walk anywhere.
///
/// NPCs have ids `0..N`; each player's avatar, and each NPC that respawns, gets a fresh id
/// above every id used so far.
#[derive(Debug)]
pub struct MassiveScene {
    /// Sorted by id (a fresh id is the largest, so a newcomer goes at the end).
    bodies: Vec<Body>,
    /// Beside each body: an NPC's plan, or `None` for an avatar.
    plans: Vec<Option<Plan>>,
    avatars: BTreeMap<u32, u32>,
    next_id: u32,
    /// NPCs that leave the world each second, each replaced by a new one elsewhere.
    respawns_per_s: f64,
    /// Respawns owed to the steps so far (the fraction of one carried over).
    respawns_due: f64,
    rng: ChaCha8Rng,
}

impl MassiveScene {
    /// `npcs` NPCs spread over the map from `seed`, a third of them walking.
    pub fn new(npcs: usize, seed: u64) -> MassiveScene {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bodies = Vec::with_capacity(npcs);
        let mut plans = Vec::with_capacity(npcs);
        let reach = MASSIVE_HALF_WIDTH_M - 1.0;
        for id in 0..npcs {
            let p = Vec2::new(
                rng.random_range(-reach..reach),
                rng.random_range(-reach..reach),
            );
            bodies.push(Body {
                // MAX_SCENE_ENTITIES keeps `npcs` far below u32::MAX.
                id: id as u32,
                position: Vec3::new(p.x, NPC_HALF_EXTENT_M, p.y),
                rotation: Quat::from_rotation_y(rng.random_range(-3.1..3.1)),
                velocity: Vec3::ZERO,
                half_extent: NPC_HALF_EXTENT_M,
            });
            let plan = if rng.random_bool(1.0 / 3.0) {
                Plan::walk(p, next_leg(&mut rng, p))
            } else {
                Plan::Rest {
                    left_s: rng.random_range(0.0..NPC_REST_S.1),
                }
            };
            plans.push(Some(plan));
        }
        MassiveScene {
            bodies,
            plans,
            avatars: BTreeMap::new(),
            next_id: npcs as u32,
            respawns_per_s: 0.0,
            respawns_due: 0.0,
            rng,
        }
    }

    /// `per_s` NPCs a second leave the world and as many new ones appear at random places
    /// (a world where entities come and go every tick, as with projectiles or respawns).
    /// Not finite or not above zero: none.
    pub fn with_respawns(mut self, per_s: f64) -> MassiveScene {
        self.respawns_per_s = if per_s.is_finite() {
            per_s.max(0.0)
        } else {
            0.0
        };
        self
    }

    /// A fresh id: above every id used so far. Four billion spawns would be needed to wrap;
    /// ids stay unique until then.
    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// `count` NPCs, picked at random, leave (fewer when there are not as many); as many
    /// new ones with fresh ids appear elsewhere and rest a while. The bodies are compacted
    /// once, not shifted once for each NPC that leaves.
    fn respawn(&mut self, count: usize) {
        let n = self.bodies.len();
        if n == 0 || count == 0 {
            return;
        }
        let mut leaves = vec![false; n];
        for _ in 0..count {
            // An NPC at or after a random index (avatars, and NPCs already leaving, are
            // skipped).
            let start = self.rng.random_range(0..n);
            let found = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| self.plans[i].is_some() && !leaves[i]);
            match found {
                Some(i) => leaves[i] = true,
                None => break,
            }
        }
        // The bodies that stay move forward in their order; those that leave end up last.
        let mut kept = 0;
        for (i, &leaving) in leaves.iter().enumerate() {
            if !leaving {
                self.bodies.swap(kept, i);
                self.plans.swap(kept, i);
                kept += 1;
            }
        }
        let leaving = self.bodies.split_off(kept);
        self.plans.truncate(kept);
        let reach = MASSIVE_HALF_WIDTH_M - 1.0;
        for mut body in leaving {
            body.id = self.fresh_id();
            body.position = Vec3::new(
                self.rng.random_range(-reach..reach),
                NPC_HALF_EXTENT_M,
                self.rng.random_range(-reach..reach),
            );
            body.velocity = Vec3::ZERO;
            self.bodies.push(body);
            self.plans.push(Some(Plan::Rest {
                left_s: self.rng.random_range(NPC_REST_S.0..NPC_REST_S.1),
            }));
        }
    }

    fn index_of(&self, entity: u32) -> Option<usize> {
        self.bodies.binary_search_by_key(&entity, |b| b.id).ok()
    }

    /// NPCs walking right now.
    pub fn walking(&self) -> usize {
        self.plans
            .iter()
            .filter(|p| matches!(p, Some(Plan::Walk { .. })))
            .count()
    }
}

/// A point a leg away from `from`, inside the map.
fn next_leg(rng: &mut ChaCha8Rng, from: Vec2) -> Vec2 {
    let heading = rng.random_range(0.0..std::f32::consts::TAU);
    let length = rng.random_range(NPC_LEG_M.0..NPC_LEG_M.1);
    let reach = MASSIVE_HALF_WIDTH_M - 1.0;
    (from + Vec2::new(heading.cos(), heading.sin()) * length)
        .clamp(Vec2::splat(-reach), Vec2::splat(reach))
}

/// How one input moves an avatar in `massive`: the arena's walk, on the whole map.
pub fn roam_avatar(state: &mut EntityState, input: &PlayerInput, dt: f32) {
    walk_within(state, input, dt, MASSIVE_HALF_WIDTH_M);
}

impl Scene for MassiveScene {
    fn step(&mut self, dt: f32) {
        let Some(dt) = usable_dt(dt) else { return };
        self.respawns_due += self.respawns_per_s * f64::from(dt);
        // At most every NPC once a step, however large the rate; the fraction of one
        // carries over.
        let due = self.respawns_due.floor().min(self.plans.len() as f64);
        self.respawns_due = (self.respawns_due - due).min(1.0);
        self.respawn(due as usize);
        let npcs = self
            .bodies
            .iter_mut()
            .zip(&mut self.plans)
            .filter_map(|(body, plan)| plan.as_mut().map(|plan| (body, plan)));
        for (body, plan) in npcs {
            match plan {
                Plan::Walk { to, dir, facing } => {
                    let here = Vec2::new(body.position.x, body.position.z);
                    let step = NPC_SPEED_M_PER_S * dt;
                    if (*to - here).length() <= step {
                        body.position = Vec3::new(to.x, body.position.y, to.y);
                        body.velocity = Vec3::ZERO;
                        *plan = Plan::Rest {
                            left_s: self.rng.random_range(NPC_REST_S.0..NPC_REST_S.1),
                        };
                    } else {
                        let dir = Vec3::new(dir.x, 0.0, dir.y);
                        body.position += dir * step;
                        body.velocity = dir * NPC_SPEED_M_PER_S;
                        body.rotation = *facing;
                    }
                }
                Plan::Rest { left_s } => {
                    *left_s -= dt;
                    if *left_s <= 0.0 {
                        let here = Vec2::new(body.position.x, body.position.z);
                        *plan = Plan::walk(here, next_leg(&mut self.rng, here));
                    }
                }
            }
        }
    }

    fn bodies(&self) -> &[Body] {
        &self.bodies
    }

    fn add_player(&mut self, player: u32) -> u32 {
        if let Some(&entity) = self.avatars.get(&player) {
            return entity;
        }
        let entity = self.fresh_id();
        let reach = MASSIVE_HALF_WIDTH_M * 0.9;
        self.bodies.push(Body {
            id: entity,
            position: Vec3::new(
                self.rng.random_range(-reach..reach),
                NPC_HALF_EXTENT_M,
                self.rng.random_range(-reach..reach),
            ),
            rotation: Quat::IDENTITY,
            velocity: Vec3::ZERO,
            half_extent: NPC_HALF_EXTENT_M,
        });
        // Avatars have no plan: `step` walks the NPCs alone.
        self.plans.push(None);
        self.avatars.insert(player, entity);
        entity
    }

    fn remove_player(&mut self, player: u32) {
        let Some(entity) = self.avatars.remove(&player) else {
            return;
        };
        if let Some(index) = self.index_of(entity) {
            self.bodies.remove(index);
            self.plans.remove(index);
        }
    }

    fn apply_input(&mut self, player: u32, input: &PlayerInput, dt: f32) {
        let Some(index) = self
            .avatars
            .get(&player)
            .and_then(|&entity| self.index_of(entity))
        else {
            return;
        };
        self.bodies[index].step_by(roam_avatar, input, dt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_a_third_of_the_npcs_walk_and_all_stay_on_the_map() {
        let mut s = MassiveScene::new(3000, 9);
        for _ in 0..(60 * 30) {
            s.step(1.0 / 30.0);
        }
        let share = s.walking() as f64 / 3000.0;
        assert!((0.2..0.45).contains(&share), "walking share {share}");
        for b in s.bodies() {
            assert!(b.position.x.abs() <= MASSIVE_HALF_WIDTH_M, "{b:?}");
            assert!(b.position.z.abs() <= MASSIVE_HALF_WIDTH_M, "{b:?}");
        }
    }

    #[test]
    fn respawned_npcs_come_back_elsewhere_under_fresh_ids_and_avatars_stay() {
        let mut s = MassiveScene::new(500, 4).with_respawns(300.0);
        let avatar = s.add_player(1);
        let mut gone = 0;
        for _ in 0..30 {
            let before: Vec<u32> = s.bodies().iter().map(|b| b.id).collect();
            s.step(1.0 / 30.0);
            let ids: Vec<u32> = s.bodies().iter().map(|b| b.id).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
            assert_eq!(ids.len(), 501);
            assert!(ids.contains(&avatar));
            // Ten a step (300 a second at 30 steps a second), each under an id not seen
            // before.
            let left = before.iter().filter(|id| !ids.contains(id)).count();
            assert_eq!(left, 10);
            assert!(
                ids.iter()
                    .filter(|id| !before.contains(id))
                    .all(|&id| id > avatar)
            );
            gone += left;
        }
        assert_eq!(gone, 300);
        assert_eq!(s.next_id, avatar + 1 + 300);
        assert_eq!(s.plans.iter().filter(|p| p.is_none()).count(), 1);
        for b in s.bodies() {
            assert!(b.position.x.abs() <= MASSIVE_HALF_WIDTH_M, "{b:?}");
        }
        // The avatar still answers its inputs.
        let at = s.bodies()[s.index_of(avatar).unwrap()].position;
        let east = PlayerInput {
            movement: Vec2::new(1.0, 0.0),
            ..PlayerInput::default()
        };
        s.apply_input(1, &east, 0.1);
        assert!(s.bodies()[s.index_of(avatar).unwrap()].position.x > at.x);
    }

    #[test]
    fn an_avatar_roams_beyond_the_arena_walls() {
        let mut s = MassiveScene::new(10, 1);
        let e = s.add_player(7);
        let start = s.bodies()[s.index_of(e).unwrap()].position;
        let east = PlayerInput {
            movement: Vec2::new(1.0, 0.0),
            jump: false,
        };
        for _ in 0..(30 * 20) {
            s.apply_input(7, &east, 1.0 / 30.0);
        }
        let end = s.bodies()[s.index_of(e).unwrap()].position;
        let walked = (end.x - start.x).abs();
        // 6 m/s for 20 s, unless the map's edge came first.
        assert!(
            walked > 40.0 || end.x >= MASSIVE_HALF_WIDTH_M - 1.0,
            "{start} -> {end}"
        );
        s.remove_player(7);
        assert_eq!(s.bodies().len(), 10);
    }
}
