//! Client-side playout: received states by tick, sampled at `now − playout delay` with
//! lerp/slerp, bounded extrapolation on underrun.
//!
//! The delay adapts: `(lost_to_ride_out + 1) × send interval + jitter_multiplier × jitter`,
//! where the send interval is the median tick gap of recently arriving snapshots and the jitter
//! is the RFC 3550-style smoothed deviation of arrival times from the tick clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::world::{EntityId, Tick, Transform};

/// Playout settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InterpolationConfig {
    /// The server's tick period (default 1/60 s).
    pub tick_interval: Duration,
    /// Send interval assumed before any has been measured (default 1/60 s).
    pub initial_send_interval: Duration,
    /// Consecutive lost snapshots the delay should hide (default 2: delay ≈ 3 send
    /// intervals plus the jitter allowance).
    pub lost_to_ride_out: u32,
    /// Jitter allowance in multiples of the measured jitter (default 3).
    pub jitter_multiplier: f64,
    /// Longest extrapolation past the newest state (default 100 ms); after it, hold.
    pub max_extrapolation: Duration,
    /// Most ticks kept (default 128, about 2 s at 60 Hz).
    pub capacity: usize,
    /// A fixed playout delay instead of the adaptive one (default `None`: adapt to the
    /// measured send interval and jitter).
    pub fixed_delay: Option<Duration>,
}

impl Default for InterpolationConfig {
    fn default() -> Self {
        Self {
            tick_interval: Duration::from_secs(1) / 60,
            initial_send_interval: Duration::from_secs(1) / 60,
            lost_to_ride_out: 2,
            jitter_multiplier: 3.0,
            max_extrapolation: Duration::from_millis(100),
            capacity: 128,
            fixed_delay: None,
        }
    }
}

/// Playout counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterpolationStats {
    /// Times render time ran past the newest state (counted once per episode).
    pub underruns: u64,
    /// Samples that extrapolated (or held) past the newest state.
    pub extrapolated_frames: u64,
    /// States pushed after render time had already passed them.
    pub late_dropped: u64,
    /// Samples taken.
    pub samples: u64,
}

#[derive(Debug)]
struct Entry {
    tick: Tick,
    /// Sorted by id.
    states: Vec<(EntityId, Transform)>,
}

/// Buffers received states and samples smooth transforms at render time.
#[derive(Debug)]
pub struct InterpolationBuffer {
    config: InterpolationConfig,
    entries: VecDeque<Entry>,
    origin: Option<Instant>,
    /// Smoothed (arrival − tick time), seconds since `origin`.
    offset_s: f64,
    jitter_s: f64,
    send_interval_s: f64,
    /// Recent gaps between newest ticks, seconds.
    gaps_s: VecDeque<f64>,
    render_tick: f64,
    in_underrun: bool,
    stats: InterpolationStats,
    /// Lists of entries let go, to hold the next ticks' states: a client pushes 30 to 60
    /// ticks a second for the whole session, and a list a tick would be as many
    /// allocations.
    spare: Vec<Vec<(EntityId, Transform)>>,
}

/// Spare lists kept: as many as a push and a sample let go at once, with room.
const SPARE_LISTS: usize = 4;

/// Gaps between arriving ticks the send-interval estimate looks at.
const SEND_GAP_WINDOW: usize = 15;

/// Gain of the smoothed offset and jitter (1/16, as RFC 3550).
const SMOOTHING: f64 = 1.0 / 16.0;

impl InterpolationBuffer {
    /// An empty buffer.
    pub fn new(config: InterpolationConfig) -> Self {
        Self {
            send_interval_s: config.initial_send_interval.as_secs_f64(),
            gaps_s: VecDeque::with_capacity(SEND_GAP_WINDOW),
            config,
            entries: VecDeque::new(),
            origin: None,
            offset_s: 0.0,
            jitter_s: 0.0,
            render_tick: f64::NEG_INFINITY,
            in_underrun: false,
            stats: InterpolationStats::default(),
            spare: Vec::new(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> InterpolationStats {
        self.stats
    }

    /// The current playout delay: the fixed one if configured, else the adaptive one.
    pub fn playout_delay(&self) -> Duration {
        if let Some(d) = self.config.fixed_delay {
            return d;
        }
        let s = f64::from(self.config.lost_to_ride_out + 1) * self.send_interval_s
            + self.config.jitter_multiplier * self.jitter_s;
        Duration::from_secs_f64(s.max(0.0))
    }

    /// The learnt send interval.
    pub fn send_interval(&self) -> Duration {
        Duration::from_secs_f64(self.send_interval_s)
    }

    /// The measured arrival jitter.
    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter_s)
    }

    fn tick_s(&self) -> f64 {
        self.config.tick_interval.as_secs_f64()
    }

    /// Add the states of `tick`, received at `now`. Pushing a tick again replaces its
    /// states (more parts arrived). Returns false when render time already passed it.
    ///
    /// The states are copied into a list of the buffer's own, the memory of one it let go
    /// once it holds enough ticks: a warm buffer allocates nothing here.
    pub fn push(
        &mut self,
        now: Instant,
        tick: Tick,
        states: impl IntoIterator<Item = (EntityId, Transform)>,
    ) -> bool {
        if f64::from(tick.0) < self.render_tick {
            self.stats.late_dropped += 1;
            return false;
        }
        let mut list = self.spare.pop().unwrap_or_default();
        list.clear();
        list.extend(states);
        if !list.is_sorted_by_key(|(id, _)| *id) {
            // Only a caller's own unsorted list pays for the sort's memory.
            list.sort_by_key(|(id, _)| *id);
        }
        let states = list;
        let origin = *self.origin.get_or_insert(now);
        let newest = self.entries.back().map(|e| e.tick);
        if newest.is_none_or(|n| tick > n) {
            let d = now.saturating_duration_since(origin).as_secs_f64()
                - f64::from(tick.0) * self.tick_s();
            match newest {
                None => self.offset_s = d,
                Some(n) => {
                    self.offset_s += (d - self.offset_s) * SMOOTHING;
                    self.jitter_s += ((d - self.offset_s).abs() - self.jitter_s) * SMOOTHING;
                    // The median of recent gaps: a lost snapshot widens one gap, but only a
                    // slower sender moves the median.
                    let gap = f64::from(tick.0 - n.0) * self.tick_s();
                    if self.gaps_s.len() == SEND_GAP_WINDOW {
                        self.gaps_s.pop_front();
                    }
                    self.gaps_s.push_back(gap);
                    let mut sorted = [0.0; SEND_GAP_WINDOW];
                    let n = self.gaps_s.len();
                    for (s, g) in sorted.iter_mut().zip(&self.gaps_s) {
                        *s = *g;
                    }
                    sorted[..n].sort_unstable_by(f64::total_cmp);
                    // Non-empty: a gap was pushed just above.
                    self.send_interval_s = sorted[n / 2];
                }
            }
        }
        match self.entries.binary_search_by_key(&tick, |e| e.tick) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.entries[i].states, states);
                self.keep(old);
            }
            Err(i) => self.entries.insert(i, Entry { tick, states }),
        }
        while self.entries.len() > self.config.capacity.max(2) {
            if let Some(e) = self.entries.pop_front() {
                self.keep(e.states);
            }
        }
        true
    }

    fn keep(&mut self, states: Vec<(EntityId, Transform)>) {
        if self.spare.len() < SPARE_LISTS {
            self.spare.push(states);
        }
    }

    /// The tick being rendered at `now` (fractional); `None` before the first push.
    pub fn render_tick(&self, now: Instant) -> Option<f64> {
        let origin = self.origin?;
        let t = now.saturating_duration_since(origin).as_secs_f64()
            - self.offset_s
            - self.playout_delay().as_secs_f64();
        Some((t / self.tick_s()).max(self.render_tick))
    }

    /// Transforms to draw at `now`, by id.
    pub fn sample(&mut self, now: Instant) -> Vec<(EntityId, Transform)> {
        let mut out = Vec::new();
        self.sample_into(now, &mut out);
        out
    }

    /// [`Self::sample`] written into `out` (cleared first), whose memory a frame loop keeps
    /// from one frame to the next: a frame then allocates nothing.
    pub fn sample_into(&mut self, now: Instant, out: &mut Vec<(EntityId, Transform)>) {
        out.clear();
        let Some(rt) = self.render_tick(now) else {
            return;
        };
        self.render_tick = rt;
        self.stats.samples += 1;
        // Keep one state at or before render time; older ones are no longer needed.
        while self.entries.len() >= 2 && f64::from(self.entries[1].tick.0) <= rt {
            if let Some(e) = self.entries.pop_front() {
                self.keep(e.states);
            }
        }
        let (Some(first), Some(last)) = (self.entries.front(), self.entries.back()) else {
            return;
        };
        if rt >= f64::from(last.tick.0) {
            if !self.in_underrun && rt > f64::from(last.tick.0) {
                self.in_underrun = true;
                self.stats.underruns += 1;
            }
            if rt > f64::from(last.tick.0) {
                self.stats.extrapolated_frames += 1;
            }
            let ahead = ((rt - f64::from(last.tick.0)) * self.tick_s())
                .min(self.config.max_extrapolation.as_secs_f64()) as f32;
            out.extend(last.states.iter().map(|(id, t)| {
                let mut t = *t;
                if let Some(v) = t.velocity {
                    t.position += v * ahead;
                }
                (*id, t)
            }));
            return;
        }
        self.in_underrun = false;
        if rt <= f64::from(first.tick.0) || self.entries.len() < 2 {
            out.extend_from_slice(&first.states);
            return;
        }
        // rt lies strictly between entries[0] and entries[1] after the pruning above.
        let (a, b) = (&self.entries[0], &self.entries[1]);
        let alpha = ((rt - f64::from(a.tick.0)) / f64::from(b.tick.0 - a.tick.0)) as f32;
        out.extend(a.states.iter().map(|(id, ta)| {
            let t = match b.states.binary_search_by_key(id, |(i, _)| *i) {
                Ok(j) => {
                    let tb = &b.states[j].1;
                    Transform {
                        position: ta.position.lerp(tb.position, alpha),
                        rotation: ta.rotation.slerp(tb.rotation, alpha),
                        velocity: match (ta.velocity, tb.velocity) {
                            (Some(va), Some(vb)) => Some(va.lerp(vb, alpha)),
                            (_, v) => v,
                        },
                    }
                }
                Err(_) => *ta,
            };
            (*id, t)
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glam::{Quat, Vec3};

    const TICK: Duration = Duration::from_micros(16_667);

    fn state(tick: u32) -> Vec<(EntityId, Transform)> {
        vec![(
            EntityId(1),
            Transform {
                position: Vec3::new(tick as f32 * 0.1, 0.0, 0.0),
                rotation: Quat::from_rotation_y(tick as f32 * 0.01),
                velocity: Some(Vec3::new(6.0, 0.0, 0.0)),
            },
        )]
    }

    fn x_of(s: &[(EntityId, Transform)]) -> f32 {
        s[0].1.position.x
    }

    #[test]
    fn a_fixed_delay_overrides_the_adaptive_one() {
        let buf = InterpolationBuffer::new(InterpolationConfig {
            fixed_delay: Some(Duration::from_millis(80)),
            ..InterpolationConfig::default()
        });
        assert_eq!(buf.playout_delay(), Duration::from_millis(80));
        let adaptive = InterpolationBuffer::new(InterpolationConfig::default());
        // Adaptive by default: three send intervals (1/60 s each) with no jitter yet.
        let d = adaptive.playout_delay().as_secs_f64();
        assert!((d - 0.05).abs() < 1e-6, "{d}");
    }

    #[test]
    fn interpolates_between_ticks_and_rides_out_two_losses() {
        let base = Instant::now();
        let mut buf = InterpolationBuffer::new(InterpolationConfig::default());
        let mut frames = 0;
        for tick in 0..300u32 {
            let arrival = base + TICK * tick;
            // Ticks 100 and 101 are lost: a gap of three intervals.
            if tick != 100 && tick != 101 {
                assert!(buf.push(arrival, Tick(tick), state(tick)));
            }
            // Render at 120 Hz between arrivals.
            for k in 0..2 {
                let now = arrival + TICK / 2 * k;
                let s = buf.sample(now);
                if tick > 10 {
                    let rt = buf.render_tick(now).unwrap();
                    assert!((x_of(&s) - rt as f32 * 0.1).abs() < 1e-3, "tick {tick}");
                    frames += 1;
                }
            }
        }
        assert!(frames > 500);
        assert_eq!(buf.stats().underruns, 0);
        assert_eq!(buf.stats().extrapolated_frames, 0);
        // Delay is three send intervals with no jitter.
        let d = buf.playout_delay().as_secs_f64();
        assert!((d - 3.0 * TICK.as_secs_f64()).abs() < 1e-3, "delay {d}");
    }

    #[test]
    fn underrun_extrapolates_then_holds() {
        let base = Instant::now();
        let mut buf = InterpolationBuffer::new(InterpolationConfig::default());
        for tick in 0..60u32 {
            buf.push(base + TICK * tick, Tick(tick), state(tick));
            buf.sample(base + TICK * tick);
        }
        // The feed stops. 50 ms later we extrapolate at 6 m/s.
        let last_x = 59.0 * 0.1;
        let now = base + TICK * 59 + buf.playout_delay() + Duration::from_millis(50);
        let s = buf.sample(now);
        assert!((x_of(&s) - (last_x + 0.3)).abs() < 0.01, "{}", x_of(&s));
        // After 100 ms the position holds.
        let s = buf.sample(now + Duration::from_millis(500));
        assert!((x_of(&s) - (last_x + 0.6)).abs() < 0.01, "{}", x_of(&s));
        let st = buf.stats();
        assert_eq!(st.underruns, 1);
        assert_eq!(st.extrapolated_frames, 2);
        // A state older than render time is dropped.
        assert!(!buf.push(now, Tick(40), state(40)));
        assert_eq!(buf.stats().late_dropped, 1);
        // Fresh states end the underrun.
        for tick in 90..200u32 {
            buf.push(base + TICK * tick, Tick(tick), state(tick));
        }
        buf.sample(base + TICK * 199);
        assert_eq!(buf.stats().underruns, 1);
    }

    #[test]
    fn delay_follows_a_slower_send_rate() {
        let base = Instant::now();
        let mut buf = InterpolationBuffer::new(InterpolationConfig::default());
        // 60 Hz ticks sent at 20 Hz.
        for tick in (0..600u32).step_by(3) {
            buf.push(base + TICK * tick, Tick(tick), state(tick));
            buf.sample(base + TICK * tick);
        }
        let si = buf.send_interval().as_secs_f64();
        assert!((si - 3.0 * TICK.as_secs_f64()).abs() < 1e-3, "{si}");
        let d = buf.playout_delay().as_secs_f64();
        assert!((d - 9.0 * TICK.as_secs_f64()).abs() < 2e-3, "{d}");
        assert_eq!(buf.stats().underruns, 0);
    }

    #[test]
    fn jitter_grows_the_delay() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let base = Instant::now();
        let mut buf = InterpolationBuffer::new(InterpolationConfig::default());
        let mut pushes = Vec::new();
        for tick in 0..400u32 {
            let jitter = Duration::from_micros(rng.random_range(0..20_000));
            pushes.push((base + TICK * tick + jitter, tick));
        }
        pushes.sort();
        for (at, tick) in pushes {
            buf.push(at, Tick(tick), state(tick));
            buf.sample(at);
        }
        let quiet = 3.0 * TICK.as_secs_f64();
        assert!(buf.jitter() > Duration::from_millis(2));
        assert!(buf.playout_delay().as_secs_f64() > quiet + 0.006);
        // With three intervals plus three jitters of slack, ±10 ms of jitter rarely underruns.
        assert!(buf.stats().underruns <= 2, "{:?}", buf.stats());
    }
}
