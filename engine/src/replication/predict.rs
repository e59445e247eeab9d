//! Client-side prediction of an owned entity: apply inputs at once, rewind to the server's
//! state on each snapshot, replay what the server has not applied yet, and blend any
//! correction out over time.

use std::time::{Duration, Instant};

use glam::Vec3;

use super::InputTick;
use super::config::PredictionConfig;
use crate::snapshot::{EntityState, Transform};

/// The game's deterministic step: advance `state` by one input over `dt_s` seconds.
///
/// The server applies each input with the same function, so a prediction that saw the same
/// inputs from the same state lands on the same result.
pub type StepFn<I> = Box<dyn Fn(&mut EntityState, &I, f32) + Send>;

/// The predicted state of the owned entity.
#[derive(Debug, Default)]
pub(crate) struct Prediction {
    /// The server's state moved by every pending input; `None` until a snapshot held the
    /// entity.
    state: Option<EntityState>,
    /// The newest input folded into `state`.
    newest_input: Option<InputTick>,
    /// What is left of the last correction: drawn = predicted + offset, fading to zero.
    offset: Vec3,
    offset_since: Option<Instant>,
}

impl Prediction {
    /// Forget everything (a new owned entity, or it vanished).
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }

    /// The newest input the predicted state reflects.
    pub(crate) fn newest_input(&self) -> Option<InputTick> {
        self.state.as_ref().and(self.newest_input)
    }

    /// Apply a new input at once.
    pub(crate) fn apply<I>(&mut self, step: &StepFn<I>, tick: InputTick, input: &I, dt_s: f32) {
        if let Some(s) = self.state.as_mut() {
            step(s, input, dt_s);
            self.newest_input = Some(tick);
        }
    }

    /// Rewind to `server` (the state after the inputs the server applied, and the newest of
    /// those inputs) and replay `pending` (the inputs after those, oldest first). Returns the size of the jump, in
    /// metres, when it exceeds the threshold (a correction).
    pub(crate) fn reconcile<'a, I: 'a>(
        &mut self,
        now: Instant,
        (server, server_input): (EntityState, Option<InputTick>),
        pending: impl Iterator<Item = (InputTick, &'a I)>,
        step: &StepFn<I>,
        dt_s: f32,
        config: &PredictionConfig,
    ) -> Option<f32> {
        let mut s = server;
        let mut newest = server_input;
        for (tick, input) in pending {
            step(&mut s, input, dt_s);
            newest = Some(tick);
        }
        let jump = self
            .state
            .as_ref()
            .map(|old| old.transform.position - s.transform.position);
        self.state = Some(s);
        self.newest_input = newest;
        let jump = jump?;
        let size = jump.length();
        if size.is_nan() || size <= config.correction_threshold_m {
            return None;
        }
        // Start from where the entity is drawn now, so a second correction during the
        // blend does not jump either.
        self.offset = self.offset_at(now, config) + jump;
        self.offset_since = Some(now);
        Some(size)
    }

    fn offset_at(&self, now: Instant, config: &PredictionConfig) -> Vec3 {
        let Some(since) = self.offset_since else {
            return Vec3::ZERO;
        };
        if config.smoothing.is_zero() {
            return Vec3::ZERO;
        }
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= config.smoothing {
            return Vec3::ZERO;
        }
        let left = 1.0 - elapsed.as_secs_f32() / config.smoothing.as_secs_f32();
        self.offset * left
    }

    /// The transform to draw at `now`: predicted, plus what is left of the last correction.
    pub(crate) fn display(&self, now: Instant, config: &PredictionConfig) -> Option<Transform> {
        let s = self.state.as_ref()?;
        let mut t = s.transform;
        t.position += self.offset_at(now, config);
        Some(t)
    }

    /// The predicted state without smoothing (what the next inputs build on).
    pub(crate) fn state(&self) -> Option<&EntityState> {
        self.state.as_ref()
    }
}

/// Longest correction blend accepted, so a typo cannot freeze corrections for hours.
pub(crate) const MAX_SMOOTHING: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn walk() -> StepFn<f32> {
        Box::new(|s: &mut EntityState, v: &f32, dt: f32| s.transform.position.x += v * dt)
    }

    fn at(x: f32) -> EntityState {
        EntityState::new(Transform {
            position: Vec3::new(x, 0.0, 0.0),
            ..Transform::default()
        })
    }

    #[test]
    fn replay_after_the_acknowledged_input_matches_the_server_and_counts_no_correction() {
        let step = walk();
        let cfg = PredictionConfig::default();
        let now = Instant::now();
        let mut p = Prediction::default();
        assert!(
            p.reconcile(now, (at(0.0), None), std::iter::empty(), &step, 1.0, &cfg)
                .is_none()
        );
        for t in 1..=3 {
            p.apply(&step, t, &1.0, 1.0);
        }
        assert_eq!(p.state().unwrap().transform.position.x, 3.0);
        // The server applied input 1 (x = 1); inputs 2 and 3 are replayed on top.
        let pending = [(2, &1.0), (3, &1.0)];
        let c = p.reconcile(
            now,
            (at(1.0), Some(1)),
            pending.into_iter(),
            &step,
            1.0,
            &cfg,
        );
        assert_eq!(c, None);
        assert_eq!(p.newest_input(), Some(3));
        assert_eq!(p.display(now, &cfg).unwrap().position.x, 3.0);
    }

    #[test]
    fn a_misprediction_is_counted_and_blended_out_over_the_smoothing_time() {
        let step = walk();
        let cfg = PredictionConfig::default();
        let now = Instant::now();
        let mut p = Prediction::default();
        p.reconcile(now, (at(0.0), None), std::iter::empty(), &step, 1.0, &cfg);
        p.apply(&step, 1, &1.0, 1.0);
        // The server put the entity elsewhere (a wall, a push): 0.5 m off.
        let c = p.reconcile(
            now,
            (at(0.5), Some(1)),
            std::iter::empty(),
            &step,
            1.0,
            &cfg,
        );
        assert_eq!(c, Some(0.5));
        assert_eq!(p.display(now, &cfg).unwrap().position.x, 1.0, "no snap");
        let half = p.display(now + cfg.smoothing / 2, &cfg).unwrap().position.x;
        assert!((half - 0.75).abs() < 1e-4, "{half}");
        assert_eq!(
            p.display(now + cfg.smoothing, &cfg).unwrap().position.x,
            0.5
        );
    }
}
