//! The "changed entity" test used to tune the scenes, matching the snapshot quantizer:
//! position at 1/512 m per axis, rotation smallest-three with 9 bits per component.

use std::f32::consts::FRAC_1_SQRT_2;

use super::Body;

/// Quantization steps per metre.
const POSITION_STEPS_PER_M: f32 = 512.0;
/// Bits per smallest-three rotation component.
const ROTATION_COMPONENT_BITS: u32 = 9;

/// The quantized state of one body: position steps, largest-component index, three components.
type QuantizedBody = ([i32; 3], usize, [u32; 3]);

fn quantize(body: &Body) -> QuantizedBody {
    let p = body.position * POSITION_STEPS_PER_M;
    let position = [p.x.round() as i32, p.y.round() as i32, p.z.round() as i32];
    let q = body.rotation.normalize().to_array();
    let mut largest = 0;
    for i in 1..4 {
        if q[i].abs() > q[largest].abs() {
            largest = i;
        }
    }
    // q and -q are the same rotation; make the dropped component positive.
    let sign = if q[largest] < 0.0 { -1.0 } else { 1.0 };
    let max_step = ((1u32 << ROTATION_COMPONENT_BITS) - 1) as f32;
    let mut small = [0u32; 3];
    let mut k = 0;
    for (i, c) in q.iter().enumerate() {
        if i != largest {
            let unit = ((c * sign / FRAC_1_SQRT_2) + 1.0) * 0.5;
            small[k] = (unit.clamp(0.0, 1.0) * max_step).round() as u32;
            k += 1;
        }
    }
    (position, largest, small)
}

/// How many bodies of `current` have a different quantized state than in `previous`.
///
/// Both slices hold the same ids in the same order.
pub(crate) fn changed_count(previous: &[Body], current: &[Body]) -> usize {
    assert_eq!(previous.len(), current.len());
    previous
        .iter()
        .zip(current)
        .filter(|(a, b)| {
            assert_eq!(a.id, b.id);
            quantize(a) != quantize(b)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use glam::{Quat, Vec3};

    use super::*;

    fn body(position: Vec3, rotation: Quat) -> Body {
        Body {
            id: 0,
            position,
            rotation,
            velocity: Vec3::ZERO,
            half_extent: 0.5,
        }
    }

    #[test]
    fn tiny_moves_are_not_changes_and_visible_moves_are() {
        let a = body(Vec3::new(1.0, 2.0, 3.0), Quat::IDENTITY);
        let nudged = body(Vec3::new(1.0001, 2.0, 3.0), Quat::IDENTITY);
        let moved = body(Vec3::new(1.004, 2.0, 3.0), Quat::IDENTITY);
        let turned = body(a.position, Quat::from_rotation_y(1.0f32.to_radians()));
        let flipped = body(a.position, -Quat::IDENTITY);
        assert_eq!(changed_count(&[a], &[nudged]), 0);
        assert_eq!(changed_count(&[a], &[flipped]), 0);
        assert_eq!(changed_count(&[a], &[moved]), 1);
        assert_eq!(changed_count(&[a], &[turned]), 1);
    }
}
