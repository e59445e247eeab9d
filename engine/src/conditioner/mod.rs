//! Seeded, sans-IO simulation of one direction of a bad network link.
//!
//! A [`Conditioner`] sits between a sender and a receiver: datagrams go in with
//! [`push`](Conditioner::push) and come out with [`poll`](Conditioner::poll) once their time
//! has come. It never reads the clock and never sleeps; the driver asks
//! [`poll_timeout`](Conditioner::poll_timeout) when to come back. Hold one per direction.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use snapsync::conditioner::{Conditioner, ConditionerConfig, Preset};
//!
//! let mut link = Conditioner::new(ConditionerConfig::preset(Preset::Wifi), 7).unwrap();
//! let t0 = Instant::now();
//! link.push(t0, b"snapshot".to_vec(), 8);
//! // After every input, drain what is due, then sleep until `poll_timeout`.
//! let mut now = t0;
//! while let Some(at) = link.poll_timeout() {
//!     now = now.max(at);
//!     while let Some(datagram) = link.poll(now) {
//!         assert_eq!(datagram, b"snapshot");
//!     }
//! }
//! assert!(now - t0 <= Duration::from_millis(10)); // wifi: 4..=10 ms
//! ```
//!
//! What happens to a datagram, in order: loss (uniform or Gilbert-Elliott bursts), the
//! bandwidth cap (token bucket, tail-drop queue), duplication (the copy is made after the
//! bottleneck and gets its own delay), latency + jitter (never reordering: a datagram never
//! comes out before one pushed earlier), and reordering (a share of datagrams is held back so
//! later ones overtake it). The same seed and the same inputs give the same outputs.

mod bandwidth;
mod config;
mod delay;
mod loss;
mod presets;
mod stats;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use bandwidth::BUCKET_DEPTH_BYTES;
pub use config::{
    ConditionerConfig, ConfigError, DEFAULT_MAX_IN_FLIGHT_PACKETS, DEFAULT_QUEUE_LIMIT_BYTES,
    MAX_DELAY,
};
pub use presets::{ParsePresetError, Preset};
pub use stats::ConditionerStats;

use bandwidth::BandwidthCap;
use delay::{Arrival, DelayLine};
use loss::LossModel;

/// One direction of a simulated link, generic over the datagram type `P`.
///
/// The driver uses `P = (SocketAddr, Vec<u8>)`; tests use plain numbers.
#[derive(Debug)]
pub struct Conditioner<P> {
    config: ConditionerConfig,
    /// Cached `config.is_pass_through()`: checked on every push.
    pass_through: bool,
    rng: ChaCha8Rng,
    loss: LossModel,
    bandwidth: BandwidthCap,
    line: DelayLine<P>,
    /// Push-order number of the next datagram.
    next_seq: u64,
    /// Highest push-order number handed out so far, to spot reordering.
    newest_out: Option<u64>,
    stats: ConditionerStats,
}

impl<P: Clone> Conditioner<P> {
    /// A link with these settings whose random choices all come from `seed`.
    pub fn new(config: ConditionerConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            pass_through: config.is_pass_through(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss: LossModel::new(config.loss_pct, config.burst_len),
            bandwidth: BandwidthCap::new(effective_rate(&config)),
            line: DelayLine::new(),
            next_seq: 0,
            newest_out: None,
            stats: ConditionerStats::default(),
            config,
        })
    }

    /// Replaces the settings; they apply to datagrams pushed after this call.
    ///
    /// Datagrams already inside keep their release times. On error nothing changes.
    pub fn set_config(&mut self, config: ConditionerConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.pass_through = config.is_pass_through();
        self.loss.configure(config.loss_pct, config.burst_len);
        self.bandwidth.set_rate(effective_rate(&config));
        self.config = config;
        Ok(())
    }

    /// The settings in use.
    pub fn config(&self) -> &ConditionerConfig {
        &self.config
    }

    /// One datagram of `len_bytes` bytes enters the link at `now`.
    ///
    /// `len_bytes` is what the bandwidth cap and the queue limits count; pass the payload
    /// length (the size on the wire is the driver's business).
    pub fn push(&mut self, now: Instant, packet: P, len_bytes: usize) {
        self.stats.pushed += 1;
        let arrival = Arrival {
            seq: self.next_seq,
            pushed_at: now,
            bytes: len_bytes,
            is_copy: false,
        };
        self.next_seq += 1;
        if self.line.len() >= self.config.max_in_flight_packets {
            self.drop_overflow();
            return;
        }
        if self.pass_through {
            self.line.insert_in_order(now, arrival, packet);
            return;
        }
        if self.loss.lose(&mut self.rng) {
            self.stats.dropped += 1;
            self.stats.dropped_loss += 1;
            return;
        }
        let admitted = self
            .bandwidth
            .admit(now, len_bytes, self.config.queue_limit_bytes);
        self.stats.queued_bytes = self.bandwidth.queued_bytes();
        let Some(departure) = admitted else {
            self.drop_overflow();
            return;
        };
        let copy = chance(&mut self.rng, self.config.duplicate_pct).then(|| packet.clone());
        let Some(release) = self.release_after(departure) else {
            self.drop_overflow();
            return;
        };
        if chance(&mut self.rng, self.config.reorder_pct) {
            let hold = draw_up_to(&mut self.rng, self.config.reorder_window).max(MIN_HOLD);
            self.line.insert_held_back(release, hold, arrival, packet);
        } else {
            self.line.insert_in_order(release, arrival, packet);
        }
        if let Some(copy) = copy {
            // The original may have taken the last slot; a copy is never worth an overflow.
            if self.line.len() < self.config.max_in_flight_packets
                && let Some(release) = self.release_after(departure)
            {
                self.stats.duplicated += 1;
                let arrival = Arrival {
                    is_copy: true,
                    ..arrival
                };
                self.line.insert_in_order(release, arrival, copy);
            }
        }
    }

    /// The next datagram due at or before `now`, in release order.
    pub fn poll(&mut self, now: Instant) -> Option<P> {
        let out = self.line.pop_due(now)?;
        self.stats.passed += 1;
        if out.release > out.pushed_at {
            self.stats.delayed += 1;
        }
        if !out.is_copy {
            match self.newest_out {
                Some(newest) if out.seq < newest => self.stats.reordered += 1,
                _ => self.newest_out = Some(out.seq),
            }
        }
        Some(out.packet)
    }

    /// When the next datagram becomes due; `None` when the link is empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.line.next_release()
    }

    /// Counters so far.
    pub fn stats(&self) -> ConditionerStats {
        ConditionerStats {
            in_flight_packets: self.line.len(),
            in_flight_bytes: self.line.bytes(),
            ..self.stats
        }
    }

    /// True when no datagram is inside the link.
    pub fn is_idle(&self) -> bool {
        self.line.len() == 0
    }

    fn drop_overflow(&mut self) {
        self.stats.dropped += 1;
        self.stats.dropped_overflow += 1;
    }

    /// When a datagram leaving the bandwidth queue at `departure` reaches the far end, before
    /// the in-order rule; `None` only when it would overflow `Instant`.
    fn release_after(&mut self, departure: Instant) -> Option<Instant> {
        let delay = self.config.latency + draw_up_to(&mut self.rng, self.config.jitter);
        departure.checked_add(delay)
    }
}

/// The cap in force: a switched-off link has none, so switching on starts with a full bucket.
fn effective_rate(config: &ConditionerConfig) -> Option<u32> {
    config.bandwidth_kbps.filter(|_| config.enabled)
}

/// Shortest hold of a reordered datagram, so a held datagram never ties with its successor.
const MIN_HOLD: Duration = Duration::from_nanos(1);

/// True with probability `pct` percent; draws nothing when `pct` is zero.
fn chance(rng: &mut ChaCha8Rng, pct: f64) -> bool {
    pct > 0.0 && rng.random::<f64>() * 100.0 < pct
}

/// A duration drawn uniformly in `0..=max`; draws nothing when `max` is zero.
fn draw_up_to(rng: &mut ChaCha8Rng, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    // `validate` caps delays at 60 s, far below u64 nanoseconds.
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=max_ns))
}

#[cfg(test)]
mod tests;
