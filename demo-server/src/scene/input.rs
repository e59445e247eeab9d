//! What a player asks its avatar to do, as sent by a client every tick.

use glam::Vec2;
use serde::{Deserialize, Serialize};

/// The latest controls of one player: planar movement and a jump button.
///
/// It arrives from the network, so scenes only ever read it through
/// [`PlayerInput::sanitized`], which turns any value (NaN, huge axes) into a valid command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PlayerInput {
    /// Desired movement on the ground plane, each axis in `-1.0..=1.0`: `x` along world +X,
    /// `y` along world +Z.
    pub movement: Vec2,
    /// Jump while held, whenever the avatar stands on the ground.
    pub jump: bool,
}

impl PlayerInput {
    /// The same command made safe to simulate: axes clamped to `-1..=1`, non-finite axes
    /// read as 0, and the vector shortened to length 1 so diagonals are not faster.
    pub fn sanitized(&self) -> PlayerInput {
        let axis = |v: f32| {
            if v.is_finite() {
                v.clamp(-1.0, 1.0)
            } else {
                0.0
            }
        };
        let movement = Vec2::new(axis(self.movement.x), axis(self.movement.y));
        PlayerInput {
            movement: movement.clamp_length_max(1.0),
            jump: self.jump,
        }
    }

    /// True when the input asks for nothing: no movement and no jump.
    pub fn is_idle(&self) -> bool {
        let sane = self.sanitized();
        sane.movement == Vec2::ZERO && !sane.jump
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitized_clamps_axes_and_length() {
        let input = PlayerInput {
            movement: Vec2::new(5.0, -3.0),
            jump: true,
        };
        let sane = input.sanitized();
        assert!((sane.movement.length() - 1.0).abs() < 1e-6);
        assert!(sane.movement.x > 0.0 && sane.movement.y < 0.0);
        assert!(sane.jump);
    }

    #[test]
    fn sanitized_reads_non_finite_axes_as_zero() {
        let input = PlayerInput {
            movement: Vec2::new(f32::NAN, f32::INFINITY),
            jump: false,
        };
        assert_eq!(input.sanitized().movement, Vec2::ZERO);
        assert!(input.is_idle());
    }

    #[test]
    fn small_movement_is_kept_as_is() {
        let input = PlayerInput {
            movement: Vec2::new(0.5, 0.25),
            jump: false,
        };
        assert_eq!(input.sanitized(), input);
        assert!(!input.is_idle());
    }
}
