//! The simulations the demo server runs and replicates: `cubes` and `arena`.
//!
//! A scene is a deterministic, seeded world advanced one fixed tick at a time. It knows
//! nothing about snapshots or the network: it exposes plain glam state ([`Body`]) that the
//! server quantizes and sends, and takes [`PlayerInput`] that the server received.
//! Same seed and same calls give bit-identical bodies on the same build; there is no
//! wall-clock time, no thread RNG and no hash-map iteration order anywhere in here.

mod arena;
mod cubes;
mod input;
mod massive;
#[cfg(test)]
mod quantized;

use std::fmt;
use std::str::FromStr;

use glam::{Quat, Vec3};

pub use arena::{ArenaScene, DEFAULT_ARENA_BODIES, walk_avatar};
pub use cubes::{CubesScene, DEFAULT_CUBES_ENTITIES};
pub use input::PlayerInput;
pub use massive::{DEFAULT_MASSIVE_NPCS, MASSIVE_HALF_WIDTH_M, MassiveScene, roam_avatar};

/// Largest entity count a scene accepts; `build_scene` clamps larger requests to it.
///
/// Chosen so the cubes field (1.5 m grid spacing) still fits inside the ±256 m the
/// snapshot quantizer covers, and so a typo on the command line cannot allocate gigabytes.
pub const MAX_SCENE_ENTITIES: usize = 16_384;

/// Downward acceleration shared by both scenes.
pub(crate) const GRAVITY_M_PER_S2: f32 = 9.81;

/// Longest tick a scene will integrate at once; longer `dt`s are cut to it so a stalled
/// server cannot tunnel bodies through walls.
pub(crate) const MAX_STEP_S: f32 = 0.1;

/// One replicated rigid body: a cube with a stable id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Body {
    /// Entity id, stable for the body's lifetime and unique within the scene.
    pub id: u32,
    /// Centre of the cube, in metres.
    pub position: Vec3,
    /// Orientation (unit quaternion).
    pub rotation: Quat,
    /// Linear velocity in m/s (for extrapolation; not needed to draw the body).
    pub velocity: Vec3,
    /// Half the cube's edge length, in metres.
    pub half_extent: f32,
}

impl Body {
    /// Move this body by one input with `step`, the function a predicting client runs on
    /// its copy: the body goes through the same transform the client predicts from.
    pub(crate) fn step_by(&mut self, step: AvatarStep, input: &PlayerInput, dt: f32) {
        let mut state = snapsync::snapshot::EntityState::new(snapsync::snapshot::Transform {
            position: self.position,
            rotation: self.rotation,
            velocity: Some(self.velocity),
        });
        step(&mut state, input, dt);
        self.position = state.transform.position;
        self.rotation = state.transform.rotation;
        self.velocity = state.transform.velocity.unwrap_or(Vec3::ZERO);
    }
}

/// Which simulation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SceneKind {
    /// Bodies bouncing in a box plus one avatar per connected player.
    Arena,
    /// 900 small cubes knocked about by one large player cube (the bandwidth yardstick).
    Cubes,
    /// 1 km × 1 km with 10,000 wandering NPCs plus one avatar per player: each client is
    /// sent only what is near it (the area of interest).
    Massive,
}

impl SceneKind {
    /// The name used on the command line and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            SceneKind::Arena => "arena",
            SceneKind::Cubes => "cubes",
            SceneKind::Massive => "massive",
        }
    }

    /// The step function a client can predict its own entity with, if the scene's player
    /// entity moves by its inputs alone (in `cubes` the player cube is also pushed by the
    /// physics, so there is none).
    pub fn avatar_step(self) -> Option<AvatarStep> {
        match self {
            SceneKind::Arena => Some(walk_avatar),
            SceneKind::Cubes => None,
            SceneKind::Massive => Some(roam_avatar),
        }
    }

    /// Entity count used when `--entities` is not given.
    pub fn default_entities(self) -> usize {
        match self {
            SceneKind::Arena => DEFAULT_ARENA_BODIES,
            SceneKind::Cubes => DEFAULT_CUBES_ENTITIES,
            SceneKind::Massive => DEFAULT_MASSIVE_NPCS,
        }
    }

    /// The area-of-interest radius when `--aoi-radius` is not given: `massive` sends each
    /// client what is within 100 m; the small scenes send everything.
    pub fn default_aoi_radius_m(self) -> Option<f32> {
        match self {
            SceneKind::Massive => Some(100.0),
            SceneKind::Arena | SceneKind::Cubes => None,
        }
    }
}

impl fmt::Display for SceneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scene name that is neither `arena` nor `cubes`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scene {0:?} (expected arena, cubes or massive)")]
pub struct UnknownSceneError(pub String);

impl FromStr for SceneKind {
    type Err = UnknownSceneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "arena" => Ok(SceneKind::Arena),
            "cubes" => Ok(SceneKind::Cubes),
            "massive" => Ok(SceneKind::Massive),
            _ => Err(UnknownSceneError(s.to_owned())),
        }
    }
}

/// A deterministic world the server advances one fixed tick at a time.
///
/// `Debug` is a supertrait so a server holding a `Box<dyn Scene>` can still derive `Debug`.
pub trait Scene: Send + fmt::Debug {
    /// Advances the world by one tick of `dt` seconds (non-positive or non-finite `dt` is
    /// ignored; `dt` above 0.1 s is cut to 0.1 s).
    fn step(&mut self, dt: f32);

    /// Current state of every body, sorted by ascending id.
    fn bodies(&self) -> &[Body];

    /// Connects `player` and returns the entity id of the body it controls.
    ///
    /// Adding a player that is already connected returns the same id again. In `arena`
    /// each player gets an avatar of its own; in `cubes` all players share entity 0.
    fn add_player(&mut self, player: u32) -> u32;

    /// Disconnects `player`; unknown players are ignored.
    fn remove_player(&mut self, player: u32);

    /// Applies one input of `player`, for one tick of `dt` seconds; inputs of players that
    /// were never added are ignored. In `arena` the avatar walks at once, by
    /// [`walk_avatar`]; in `cubes` the input steers the player cube from the next `step` on.
    fn apply_input(&mut self, player: u32, input: &PlayerInput, dt: f32);
}

/// How one input moves a player's entity, shared by the server and a predicting client.
pub type AvatarStep = fn(&mut snapsync::snapshot::EntityState, &PlayerInput, f32);

/// Builds the scene `kind` with `entities` bodies (default per kind, clamped to
/// [`MAX_SCENE_ENTITIES`]) from `seed`.
///
/// For `cubes`, `entities` counts the player cube too (default 901 = 1 + 30×30); for
/// `arena` it counts the bouncing bodies, avatars come on top.
/// `respawns_per_s`: NPCs of `massive` replaced by new ones each second (see
/// [`MassiveScene::with_respawns`]); the other scenes have none.
pub fn build_scene(
    kind: SceneKind,
    entities: Option<usize>,
    seed: u64,
    respawns_per_s: f64,
) -> Box<dyn Scene> {
    let entities = entities
        .unwrap_or_else(|| kind.default_entities())
        .min(MAX_SCENE_ENTITIES);
    match kind {
        SceneKind::Arena => Box::new(ArenaScene::new(entities, seed)),
        SceneKind::Cubes => Box::new(CubesScene::new(entities, seed)),
        SceneKind::Massive => {
            Box::new(MassiveScene::new(entities, seed).with_respawns(respawns_per_s))
        }
    }
}

/// `dt` as the scenes integrate it: `None` for a tick that must be skipped.
pub(crate) fn usable_dt(dt: f32) -> Option<f32> {
    (dt.is_finite() && dt > 0.0).then(|| dt.min(MAX_STEP_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_kind_parses_and_displays() {
        for kind in [SceneKind::Arena, SceneKind::Cubes, SceneKind::Massive] {
            assert_eq!(kind.to_string().parse::<SceneKind>(), Ok(kind));
        }
        assert_eq!(" Cubes ".parse::<SceneKind>(), Ok(SceneKind::Cubes));
        let err = "space".parse::<SceneKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown scene \"space\" (expected arena, cubes or massive)"
        );
    }

    #[test]
    fn build_scene_uses_default_and_clamped_counts() {
        assert_eq!(
            build_scene(SceneKind::Cubes, None, 1, 0.0).bodies().len(),
            901
        );
        assert_eq!(
            build_scene(SceneKind::Arena, None, 1, 0.0).bodies().len(),
            64
        );
        assert_eq!(
            build_scene(SceneKind::Arena, Some(3), 1, 0.0)
                .bodies()
                .len(),
            3
        );
        let huge = build_scene(SceneKind::Arena, Some(usize::MAX), 1, 0.0);
        assert_eq!(huge.bodies().len(), MAX_SCENE_ENTITIES);
    }

    #[test]
    fn bad_dt_is_skipped_and_long_dt_is_cut() {
        assert_eq!(usable_dt(f32::NAN), None);
        assert_eq!(usable_dt(0.0), None);
        assert_eq!(usable_dt(-1.0), None);
        assert_eq!(usable_dt(5.0), Some(MAX_STEP_S));
        assert_eq!(usable_dt(1.0 / 60.0), Some(1.0 / 60.0));
    }

    #[test]
    fn bodies_are_sorted_by_id_in_both_scenes() {
        for kind in [SceneKind::Arena, SceneKind::Cubes, SceneKind::Massive] {
            let mut scene = build_scene(kind, Some(50), 7, 0.0);
            scene.add_player(3);
            scene.add_player(9);
            scene.remove_player(3);
            scene.step(1.0 / 60.0);
            let ids: Vec<u32> = scene.bodies().iter().map(|b| b.id).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{kind}: {ids:?}");
        }
    }
}
