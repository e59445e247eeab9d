//! Float transforms to integers and back: bounded positions, smallest-three rotations,
//! bounded velocities.
//!
//! The server quantizes its own state before encoding, so server and client hold bit-identical
//! integers and deltas between them are exact.

use std::f64::consts::FRAC_1_SQRT_2;
use std::time::Duration;

use glam::{Quat, Vec3};

use super::SnapshotError;
use super::world::Transform;

/// Largest number of bits one quantized axis may use (keeps every value in a `u32`
/// and every difference in an `i64` far from overflow).
pub const MAX_AXIS_BITS: u32 = 30;

/// Largest error of a dequantized rotation with the default 9 bits per component, in radians.
///
/// Each of the three coded components is off by at most half a step,
/// `h = (√2 / 510) / 2 ≈ 0.00139`, so the three together by at most `√3·h`. The largest
/// component is at least 1/2 and is rebuilt from the other three, which adds at most
/// `(√3/2)/(1/2) = √3` times their error; the quaternion chord error is then at most
/// `√(1 + 3)·√3·h = 2√3·h ≈ 0.0048`, and a rotation angle is twice the quaternion angle:
/// `≤ 4√3·h ≈ 0.0096 rad ≈ 0.55°`. Tests check random quaternions against this bound.
pub const MAX_ROTATION_ERROR_RAD_9_BITS: f32 = 0.0096;

/// How floats become integers. Both ends of a connection must use the same config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeConfig {
    /// Lower corner of the playable box, in metres (default −512 on every axis).
    /// Positions outside the box are clamped onto it.
    pub position_min: Vec3,
    /// Upper corner of the playable box, in metres (default +512 on every axis).
    pub position_max: Vec3,
    /// Position step in metres (default 1/512 m ≈ 2 mm: invisible, and 1024 m at this step
    /// needs 20 bits per axis).
    pub position_resolution_m: f32,
    /// Bits per smallest-three rotation component (default 9: under 0.6° worst case, see
    /// [`MAX_ROTATION_ERROR_RAD_9_BITS`]).
    pub rotation_bits: u32,
    /// Largest speed per axis in m/s (default 32); faster velocities are clamped.
    pub max_speed_mps: f32,
    /// Velocity step in m/s (default 1/32: velocity only feeds extrapolation and position
    /// prediction).
    pub velocity_resolution_mps: f32,
    /// The server's tick period (default 1/60 s). Positions are coded against the baseline
    /// position moved by the baseline velocity over the ticks in between, when that is
    /// cheaper; both ends must agree on this value.
    pub tick_interval: Duration,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        Self {
            position_min: Vec3::splat(-512.0),
            position_max: Vec3::splat(512.0),
            position_resolution_m: 1.0 / 512.0,
            rotation_bits: 9,
            max_speed_mps: 32.0,
            velocity_resolution_mps: 1.0 / 32.0,
            tick_interval: Duration::from_secs(1) / 60,
        }
    }
}

/// A quantized transform; every field is in range for the config that produced it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantizedTransform {
    /// Steps from `position_min` on each axis, `0..=position_steps(axis)`.
    pub position: [u32; 3],
    /// Smallest-three rotation.
    pub rotation: QuantizedRotation,
    /// Steps from `-max_speed_mps` on each axis, `0..=velocity_steps()`.
    pub velocity: Option<[u32; 3]>,
}

/// Smallest-three rotation: which component is largest (dropped, rebuilt from unit length,
/// always made non-negative) and the other three in `0..=rotation_max()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantizedRotation {
    /// Index (x=0, y=1, z=2, w=3) of the component with the largest magnitude.
    pub largest: u8,
    /// The other three components in x, y, z, w order.
    pub smallest: [u16; 3],
}

fn bits_for(max_value: u32) -> u32 {
    32 - max_value.leading_zeros()
}

fn steps(range: f32, resolution: f32) -> u32 {
    // Saturating cast; validate() rejects configs whose step count is out of range.
    round_half_away(f64::from(range) / f64::from(resolution)) as u32
}

/// Step counts and bit widths derived from a config, computed once instead of per entity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Limits {
    pub(crate) position_steps: [u32; 3],
    pub(crate) position_bits: [u32; 3],
    pub(crate) velocity_steps: u32,
    pub(crate) velocity_bits: u32,
    pub(crate) rotation_bits: u32,
    pub(crate) rotation_max: u32,
    /// Velocity-to-position factor: position steps per (velocity m/s × tick).
    pub(crate) position_steps_per_mps_tick: f64,
    pub(crate) velocity_resolution_mps: f64,
    pub(crate) max_speed_mps: f64,
}

impl Limits {
    /// `position` moved over `ticks` ticks at the mean of velocities `old` and `new`, in
    /// steps, clamped into the box: where a body under constant acceleration goes (pass the
    /// same velocity twice for constant speed).
    ///
    /// Plain f64 arithmetic (no fused operations) and a final round: IEEE 754 makes this
    /// bit-identical on every platform, which both ends rely on.
    pub(crate) fn predict(
        &self,
        position: [u32; 3],
        old: [u32; 3],
        new: [u32; 3],
        ticks: u32,
    ) -> [u32; 3] {
        let mut out = position;
        for axis in 0..3 {
            let mps = |v: u32| f64::from(v) * self.velocity_resolution_mps - self.max_speed_mps;
            // Exact for equal velocities: halving a doubled f64 loses nothing.
            let v = (mps(old[axis]) + mps(new[axis])) * 0.5;
            let moved = round_half_away(v * f64::from(ticks) * self.position_steps_per_mps_tick);
            let p = (f64::from(position[axis]) + moved)
                .clamp(0.0, f64::from(self.position_steps[axis]));
            // Clamped into 0..=steps (a u32) just above.
            out[axis] = p as u32;
        }
        out
    }
}

/// `x.round()` (half away from zero), computed inline.
///
/// Without SSE4.1, which the baseline x86-64 target lacks, `f64::round` is a call into libm;
/// quantizing a world rounds about ten values per entity, so the call showed in profiles.
/// Truncation through `i64` is one instruction, and the result is the same for every input.
fn round_half_away(x: f64) -> f64 {
    // Every f64 of at least 2^52 in magnitude is an integer already.
    const EXACT: f64 = 4_503_599_627_370_496.0;
    if x.is_nan() || x.abs() >= EXACT {
        return x;
    }
    // |x| < 2^52: the cast truncates toward zero without saturating, and `x - t` is exact.
    let t = (x as i64) as f64;
    let frac = x - t;
    // Selects rather than branches: the fraction is as good as random (a prediction, a
    // position), and a mispredicted branch cost more than the arithmetic. Adding or
    // subtracting zero or one is exact, and `t` is never −0.0.
    let up = if frac >= 0.5 { 1.0 } else { 0.0 };
    let down = if frac <= -0.5 { 1.0 } else { 0.0 };
    t + up - down
}

impl QuantizeConfig {
    /// The derived step counts and widths.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            position_steps: [
                self.position_steps(0),
                self.position_steps(1),
                self.position_steps(2),
            ],
            position_bits: [
                self.position_bits(0),
                self.position_bits(1),
                self.position_bits(2),
            ],
            velocity_steps: self.velocity_steps(),
            velocity_bits: self.velocity_bits(),
            rotation_bits: self.rotation_bits,
            rotation_max: self.rotation_max(),
            position_steps_per_mps_tick: self.tick_interval.as_secs_f64()
                / f64::from(self.position_resolution_m),
            velocity_resolution_mps: f64::from(self.velocity_resolution_mps),
            max_speed_mps: f64::from(self.max_speed_mps),
        }
    }

    /// Check the config can be used: positive resolutions, non-empty box, bit widths in range.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |why: &'static str| Err(SnapshotError::Config(why));
        if !(self.position_resolution_m > 0.0 && self.velocity_resolution_mps > 0.0) {
            return bad("resolutions must be positive");
        }
        if self.max_speed_mps.is_nan() || self.max_speed_mps <= 0.0 {
            return bad("max speed must be positive");
        }
        for axis in 0..3 {
            let range = self.position_max[axis] - self.position_min[axis];
            if !(range.is_finite() && range > 0.0) {
                return bad("position box must be non-empty and finite");
            }
            if self.position_bits(axis) > MAX_AXIS_BITS {
                return bad("position box too large for its resolution");
            }
        }
        if self.velocity_bits() > MAX_AXIS_BITS {
            return bad("velocity range too large for its resolution");
        }
        if self.tick_interval.is_zero() {
            return bad("tick interval must be positive");
        }
        if !(2..=15).contains(&self.rotation_bits) {
            return bad("rotation bits must be 2..=15");
        }
        // The step count rounds, so the last step can lie past the box's top (or past the
        // top speed): near f32::MAX that is infinity. Every value a decoder accepts must
        // come back finite, whoever sent the config (a client takes it from the welcome).
        let last = self.dequantize(&QuantizedTransform {
            position: [0, 1, 2].map(|axis| self.position_steps(axis)),
            rotation: QuantizedRotation::default(),
            velocity: Some([self.velocity_steps(); 3]),
        });
        let finite = |v: Vec3| v.is_finite();
        if !finite(last.position) || !last.velocity.is_some_and(finite) {
            return bad("the last step of the position box or speed range is not a finite f32");
        }
        Ok(())
    }

    /// Largest quantized position value on `axis` (0, 1 or 2).
    pub fn position_steps(&self, axis: usize) -> u32 {
        steps(
            self.position_max[axis] - self.position_min[axis],
            self.position_resolution_m,
        )
    }

    /// Bits of an absolute position on `axis`.
    pub fn position_bits(&self, axis: usize) -> u32 {
        bits_for(self.position_steps(axis))
    }

    /// Largest quantized velocity value on any axis.
    pub fn velocity_steps(&self) -> u32 {
        steps(2.0 * self.max_speed_mps, self.velocity_resolution_mps)
    }

    /// Bits of an absolute velocity axis.
    pub fn velocity_bits(&self) -> u32 {
        bits_for(self.velocity_steps())
    }

    /// Largest quantized rotation component: `2^rotation_bits − 2`, an even number of
    /// steps, so that a zero component (identity, axis-aligned turns) is exact.
    pub fn rotation_max(&self) -> u32 {
        (1u32 << self.rotation_bits) - 2
    }

    /// Quantize a float transform (positions and velocities are clamped into range; NaN
    /// becomes the lowest value, a degenerate rotation becomes identity).
    pub fn quantize(&self, t: &Transform) -> QuantizedTransform {
        self.quantize_with(t, &self.limits())
    }

    /// [`Self::quantize`] with the limits computed by the caller once for many entities.
    pub(crate) fn quantize_with(&self, t: &Transform, lim: &Limits) -> QuantizedTransform {
        QuantizedTransform {
            position: self.quantize_position(t.position, lim),
            rotation: self.quantize_rotation_with(t.rotation, lim.rotation_max),
            velocity: t.velocity.map(|v| self.quantize_velocity(v, lim)),
        }
    }

    #[inline(always)]
    fn quantize_position(&self, p: Vec3, lim: &Limits) -> [u32; 3] {
        let mut out = [0u32; 3];
        for (axis, o) in out.iter_mut().enumerate() {
            let offset = f64::from(p[axis]) - f64::from(self.position_min[axis]);
            let q = round_half_away(offset / f64::from(self.position_resolution_m));
            // `as` saturates and maps NaN to 0; min() keeps it inside the box.
            *o = (q as u32).min(lim.position_steps[axis]);
        }
        out
    }

    #[inline(always)]
    fn quantize_velocity(&self, v: Vec3, lim: &Limits) -> [u32; 3] {
        let mut out = [0u32; 3];
        for (axis, o) in out.iter_mut().enumerate() {
            let offset = f64::from(v[axis]) + f64::from(self.max_speed_mps);
            let q = round_half_away(offset / f64::from(self.velocity_resolution_mps));
            *o = (q as u32).min(lim.velocity_steps);
        }
        out
    }

    /// [`Self::quantize_with`] of `t`, for an entity whose transform was `before`,
    /// quantized as `was`: the rotation and the velocity are taken from `was` when their
    /// floats are the same (a NaN never is), which gives what quantizing them would. The
    /// rotation's smallest-three is the dearest part, and most moving entities keep theirs.
    pub(crate) fn requantize_with(
        &self,
        t: &Transform,
        lim: &Limits,
        before: &Transform,
        was: &QuantizedTransform,
    ) -> QuantizedTransform {
        let velocity = match (t.velocity, before.velocity) {
            (Some(v), Some(b)) if v == b => was.velocity,
            (v, _) => v.map(|v| self.quantize_velocity(v, lim)),
        };
        let rotation = if t.rotation == before.rotation {
            was.rotation
        } else {
            self.quantize_rotation_with(t.rotation, lim.rotation_max)
        };
        QuantizedTransform {
            position: self.quantize_position(t.position, lim),
            rotation,
            velocity,
        }
    }

    /// Turn a quantized transform back into floats.
    pub fn dequantize(&self, q: &QuantizedTransform) -> Transform {
        let mut position = Vec3::ZERO;
        for axis in 0..3 {
            let v = f64::from(self.position_min[axis])
                + f64::from(q.position[axis]) * f64::from(self.position_resolution_m);
            position[axis] = v as f32;
        }
        let velocity = q.velocity.map(|qv| {
            let mut v = Vec3::ZERO;
            for axis in 0..3 {
                let f = f64::from(qv[axis]) * f64::from(self.velocity_resolution_mps)
                    - f64::from(self.max_speed_mps);
                v[axis] = f as f32;
            }
            v
        });
        Transform {
            position,
            rotation: self.dequantize_rotation(&q.rotation),
            velocity,
        }
    }

    /// Smallest-three quantization; `q` and `-q` give the same result.
    pub fn quantize_rotation(&self, q: Quat) -> QuantizedRotation {
        self.quantize_rotation_with(q, self.rotation_max())
    }

    fn quantize_rotation_with(&self, q: Quat, rotation_max: u32) -> QuantizedRotation {
        let q = if q.is_finite() && q.length_squared() > 1e-12 {
            q.normalize()
        } else {
            Quat::IDENTITY
        };
        let mut c = [
            f64::from(q.x),
            f64::from(q.y),
            f64::from(q.z),
            f64::from(q.w),
        ];
        let mut largest = 0;
        for i in 1..4 {
            if c[i].abs() > c[largest].abs() {
                largest = i;
            }
        }
        // q and -q are the same rotation: make the dropped component non-negative so the
        // receiver can rebuild it as +sqrt(1 - rest).
        if c[largest] < 0.0 {
            c.iter_mut().for_each(|v| *v = -*v);
        }
        let max = f64::from(rotation_max);
        let mut smallest = [0u16; 3];
        let mut k = 0;
        for (i, v) in c.iter().enumerate() {
            if i == largest {
                continue;
            }
            let unit = (v + FRAC_1_SQRT_2) / (2.0 * FRAC_1_SQRT_2);
            // Clamped to 0..=max (< 2^15), so the cast is exact.
            smallest[k] = round_half_away(unit * max).clamp(0.0, max) as u16;
            k += 1;
        }
        QuantizedRotation {
            largest: largest as u8,
            smallest,
        }
    }

    /// Rebuild a unit quaternion from smallest-three.
    pub fn dequantize_rotation(&self, r: &QuantizedRotation) -> Quat {
        let max = f64::from(self.rotation_max());
        let mut c = [0f64; 4];
        let largest = usize::from(r.largest & 3);
        let mut sum = 0.0;
        let mut k = 0;
        for (i, v) in c.iter_mut().enumerate() {
            if i == largest {
                continue;
            }
            *v = f64::from(r.smallest[k]) / max * 2.0 * FRAC_1_SQRT_2 - FRAC_1_SQRT_2;
            sum += *v * *v;
            k += 1;
        }
        c[largest] = (1.0 - sum).max(0.0).sqrt();
        Quat::from_xyzw(c[0] as f32, c[1] as f32, c[2] as f32, c[3] as f32).normalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same_rounding(x: f64) {
        let (want, got) = (x.round(), round_half_away(x));
        assert!(
            want == got || (want.is_nan() && got.is_nan()),
            "{x:e}: {want:e} vs {got:e}"
        );
    }

    #[test]
    fn inline_rounding_is_f64_round_at_the_edges() {
        for x in [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4_503_599_627_370_495.5,
            4_503_599_627_370_496.0,
            9.3e18,
            -9.3e18,
            1e300,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::EPSILON,
        ] {
            same_rounding(x);
        }
    }

    proptest! {
        #[test]
        fn inline_rounding_is_f64_round(bits in any::<u64>(), small in -1e7f64..1e7) {
            same_rounding(f64::from_bits(bits));
            same_rounding(small);
        }
    }

    fn quat_from(a: f32, b: f32, c: f32, d: f32) -> Quat {
        let q = Quat::from_xyzw(a, b, c, d);
        if q.length_squared() < 1e-6 {
            Quat::IDENTITY
        } else {
            q.normalize()
        }
    }

    #[test]
    fn default_config_is_valid_and_uses_expected_bits() {
        let c = QuantizeConfig::default();
        c.validate().unwrap();
        assert_eq!(c.position_steps(0), 524_288);
        assert_eq!(c.position_bits(0), 20);
        assert_eq!(c.velocity_bits(), 12);
        assert_eq!(c.rotation_max(), 510);
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut c = QuantizeConfig {
            position_resolution_m: 0.0,
            ..QuantizeConfig::default()
        };
        assert!(c.validate().is_err());
        c = QuantizeConfig {
            position_resolution_m: 1e-9,
            ..QuantizeConfig::default()
        };
        assert!(c.validate().is_err());
        c = QuantizeConfig {
            rotation_bits: 16,
            ..QuantizeConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_box_whose_far_corner_is_no_finite_f32_is_rejected() {
        // A thousand steps from 0 reach just past f32::MAX: the step count rounds up, so the
        // last step lies beyond the box's top. A config a client takes from a server's
        // welcome must not let any value it decodes become infinite.
        let resolution = f32::MAX / 999.5;
        let c = QuantizeConfig {
            position_min: Vec3::ZERO,
            position_max: Vec3::new(f32::MAX, 1.0, 1.0),
            position_resolution_m: resolution,
            ..QuantizeConfig::default()
        };
        assert_eq!(c.position_steps(0), 1000);
        let far = QuantizedTransform {
            position: [c.position_steps(0), 0, 0],
            ..QuantizedTransform::default()
        };
        assert!(c.dequantize(&far).position.x.is_infinite());
        assert!(c.validate().is_err());
        // The same box one step lower is finite to its far corner, and valid.
        let c = QuantizeConfig {
            position_max: Vec3::new(f32::MAX - resolution, 1.0, 1.0),
            ..c
        };
        c.validate().unwrap();
        let far = QuantizedTransform {
            position: [c.position_steps(0), 0, 0],
            ..QuantizedTransform::default()
        };
        assert!(c.dequantize(&far).position.x.is_finite());
    }

    #[test]
    fn out_of_box_and_nan_are_clamped() {
        let c = QuantizeConfig::default();
        let t = Transform {
            position: Vec3::new(1e9, -1e9, f32::NAN),
            rotation: Quat::from_xyzw(f32::NAN, 0.0, 0.0, 1.0),
            velocity: Some(Vec3::new(1e9, -1e9, 0.0)),
        };
        let q = c.quantize(&t);
        assert_eq!(q.position, [c.position_steps(0), 0, 0]);
        assert_eq!(q.velocity.unwrap()[0], c.velocity_steps());
        assert_eq!(q.velocity.unwrap()[1], 0);
        assert_eq!(c.dequantize_rotation(&q.rotation), Quat::IDENTITY);
    }

    /// A float from its bits, or one of the values that quantize specially.
    fn any_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            -2f32..2.0,
            Just(0.0f32),
            Just(-0.0f32),
            Just(f32::NAN),
            Just(f32::INFINITY),
            any::<u32>().prop_map(f32::from_bits),
        ]
    }

    fn any_transform() -> impl Strategy<Value = Transform> {
        (
            prop::array::uniform3(any_f32()),
            prop::array::uniform4(any_f32()),
            prop::option::of(prop::array::uniform3(any_f32())),
        )
            .prop_map(|(p, r, v)| Transform {
                position: Vec3::from_array(p).map(|x| x * 100.0),
                rotation: Quat::from_array(r),
                velocity: v.map(|v| Vec3::from_array(v).map(|x| x * 10.0)),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Quantizing again with what an entity was is quantizing afresh, whichever parts
        /// kept their floats (a NaN included, which is never the same).
        #[test]
        fn requantizing_is_quantizing_afresh(
            before in any_transform(),
            now in any_transform(),
            keep_rotation in any::<bool>(),
            keep_velocity in any::<bool>(),
        ) {
            let c = QuantizeConfig::default();
            let lim = c.limits();
            let mut t = now;
            if keep_rotation {
                t.rotation = before.rotation;
            }
            if keep_velocity {
                t.velocity = before.velocity;
            }
            let was = c.quantize_with(&before, &lim);
            prop_assert_eq!(
                c.requantize_with(&t, &lim, &before, &was),
                c.quantize_with(&t, &lim)
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn position_error_is_at_most_half_a_step(
            x in -512f32..512.0, y in -512f32..512.0, z in -512f32..512.0,
        ) {
            let c = QuantizeConfig::default();
            let t = Transform { position: Vec3::new(x, y, z), ..Transform::default() };
            let back = c.dequantize(&c.quantize(&t));
            // Half a step, plus f32 rounding of a value up to 512 (ulp 2^-14).
            let bound = c.position_resolution_m / 2.0 + 512.0 * f32::EPSILON;
            for axis in 0..3 {
                prop_assert!((back.position[axis] - t.position[axis]).abs() <= bound);
            }
        }

        #[test]
        fn velocity_error_is_at_most_half_a_step(x in -32f32..32.0, y in -32f32..32.0) {
            let c = QuantizeConfig::default();
            let v = Vec3::new(x, y, 0.0);
            let t = Transform { velocity: Some(v), ..Transform::default() };
            let back = c.dequantize(&c.quantize(&t)).velocity.unwrap();
            let bound = c.velocity_resolution_mps / 2.0 + 32.0 * f32::EPSILON;
            prop_assert!((back - v).abs().max_element() <= bound);
        }

        #[test]
        fn rotation_error_is_within_stated_bound(
            a in -1f32..1.0, b in -1f32..1.0, cc in -1f32..1.0, d in -1f32..1.0,
        ) {
            let c = QuantizeConfig::default();
            let q = quat_from(a, b, cc, d);
            let back = c.dequantize_rotation(&c.quantize_rotation(q));
            prop_assert!(q.angle_between(back) <= MAX_ROTATION_ERROR_RAD_9_BITS,
                "angle {}", q.angle_between(back));
        }

        #[test]
        fn negated_quaternion_quantizes_alike(
            a in -1f32..1.0, b in -1f32..1.0, cc in -1f32..1.0, d in -1f32..1.0,
        ) {
            let c = QuantizeConfig::default();
            let q = quat_from(a, b, cc, d);
            let qa = c.quantize_rotation(q);
            let qb = c.quantize_rotation(-q);
            // Exactly equal unless the largest two magnitudes tie within rounding.
            prop_assert!(qa == qb || c.dequantize_rotation(&qa).angle_between(c.dequantize_rotation(&qb)) < 0.01);
        }

        #[test]
        fn requantizing_is_stable(
            a in -1f32..1.0, b in -1f32..1.0, cc in -1f32..1.0, d in -1f32..1.0,
            x in -500f32..500.0,
        ) {
            let c = QuantizeConfig::default();
            let t = Transform {
                position: Vec3::new(x, 0.0, -x),
                rotation: quat_from(a, b, cc, d),
                velocity: Some(Vec3::new(1.0, 2.0, 3.0)),
            };
            let q = c.quantize(&t);
            prop_assert_eq!(c.quantize(&c.dequantize(&q)).position, q.position);
            prop_assert_eq!(c.quantize(&c.dequantize(&q)).velocity, q.velocity);
        }
    }

    #[test]
    fn prediction_follows_the_velocity_and_stays_in_the_box() {
        let c = QuantizeConfig::default();
        let lim = c.limits();
        let t = Transform {
            position: Vec3::new(10.0, 0.5, -3.0),
            velocity: Some(Vec3::new(3.0, 0.0, -1.5)),
            ..Transform::default()
        };
        let q = c.quantize(&t);
        let v = q.velocity.unwrap();
        let p = lim.predict(q.position, v, v, 6);
        let moved = c.dequantize(&QuantizedTransform {
            position: p,
            ..QuantizedTransform::default()
        });
        // Six ticks at 60 Hz: 0.3 m and -0.15 m, exact to a step.
        let want = Vec3::new(10.3, 0.5, -3.15);
        assert!((moved.position - want).abs().max_element() <= c.position_resolution_m);
        // Far in the future the prediction is clamped to the box, never wraps.
        let far = lim.predict(q.position, v, v, 100_000);
        assert_eq!(far[0], c.position_steps(0));
        assert_eq!(far[2], 0);
    }

    #[test]
    fn worst_rotation_error_over_many_quaternions() {
        use rand::{Rng, SeedableRng};
        let c = QuantizeConfig::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut worst = 0f32;
        for _ in 0..20_000 {
            let q = quat_from(
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
            );
            worst = worst.max(q.angle_between(c.dequantize_rotation(&c.quantize_rotation(q))));
        }
        eprintln!("worst rotation error over 20000 quaternions: {worst} rad");
        assert!(worst <= MAX_ROTATION_ERROR_RAD_9_BITS, "worst {worst}");
        // The bound is not vacuous: quantization does lose precision.
        assert!(worst > 0.001, "worst {worst}");
    }
}
