//! What the simulated link does: the settings a user toggles, and their checks.

use std::time::Duration;

use thiserror::Error;

use super::presets::Preset;

/// Default byte limit of the queue in front of a bandwidth cap.
///
/// 64 KiB is about half a second of buffering at 1 Mbit/s: enough to absorb a burst of
/// snapshots, small enough that a saturated link drops instead of hiding seconds of delay.
pub const DEFAULT_QUEUE_LIMIT_BYTES: usize = 64 * 1024;

/// Default cap on datagrams held inside the link at once (queued or delayed).
///
/// Bounds memory whatever the latency: 16 384 datagrams of 1200 bytes is ~20 MB. A server
/// sending 8 000 datagrams/s through the `bad` preset (up to ~230 ms) holds under 2 000.
pub const DEFAULT_MAX_IN_FLIGHT_PACKETS: usize = 16_384;

/// Longest latency, jitter or reorder window accepted.
///
/// Keeps every computed release time far from `Instant` overflow; nothing a game would
/// want to simulate is longer.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// Settings of one direction of a simulated link.
///
/// Stages, in the order a datagram meets them: loss, bandwidth cap (token bucket with a
/// tail-drop queue), duplication, latency + jitter, reordering. `Default` is [`off`].
///
/// [`off`]: ConditionerConfig::off
#[derive(Debug, Clone, PartialEq)]
pub struct ConditionerConfig {
    /// Share of datagrams lost, in percent (`0.0..=100.0`).
    pub loss_pct: f64,
    /// Mean length of a loss burst, in datagrams.
    ///
    /// `<= 1` means uniform (independent) loss. Above 1 the Gilbert-Elliott two-state model
    /// is used: the long-run loss stays `loss_pct`, the losses come in runs of this mean.
    pub burst_len: f64,
    /// Minimum one-way delay added to every datagram.
    pub latency: Duration,
    /// Extra delay drawn uniformly in `0..=jitter`; never reorders on its own.
    pub jitter: Duration,
    /// Share of datagrams delivered twice, in percent; the copy gets its own delay.
    pub duplicate_pct: f64,
    /// Share of datagrams held back so later ones overtake them, in percent.
    pub reorder_pct: f64,
    /// Extra delay of a held-back datagram, drawn uniformly in `(0, reorder_window]`.
    pub reorder_window: Duration,
    /// Bandwidth cap in kbit/s (1 kbit = 1000 bits, payload bytes as given to `push`);
    /// `None` for no cap.
    pub bandwidth_kbps: Option<u32>,
    /// Bytes that may wait for the bandwidth cap; a datagram that does not fit is dropped.
    pub queue_limit_bytes: usize,
    /// Datagrams the link may hold at once; beyond it new ones are dropped.
    pub max_in_flight_packets: usize,
    /// Master switch: when false every datagram passes at once, in order. A config with
    /// settings but the switch off is refused by [`validate`](Self::validate): it would
    /// silently simulate nothing.
    pub enabled: bool,
}

impl Default for ConditionerConfig {
    fn default() -> Self {
        Self::off()
    }
}

impl ConditionerConfig {
    /// A perfect link: nothing lost, delayed or reordered, and the switch off.
    pub fn off() -> Self {
        Self {
            loss_pct: 0.0,
            burst_len: 0.0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            duplicate_pct: 0.0,
            reorder_pct: 0.0,
            reorder_window: Duration::ZERO,
            bandwidth_kbps: None,
            queue_limit_bytes: DEFAULT_QUEUE_LIMIT_BYTES,
            max_in_flight_packets: DEFAULT_MAX_IN_FLIGHT_PACKETS,
            enabled: false,
        }
    }

    /// The settings of a named preset, switched on.
    pub fn preset(preset: Preset) -> Self {
        preset.config()
    }

    /// True when datagrams would pass untouched: switched off, or every setting neutral.
    pub fn is_pass_through(&self) -> bool {
        !self.enabled || self.is_neutral()
    }

    /// True when no setting would change a datagram's fate.
    fn is_neutral(&self) -> bool {
        self.loss_pct == 0.0
            && self.latency.is_zero()
            && self.jitter.is_zero()
            && self.duplicate_pct == 0.0
            && self.reorder_pct == 0.0
            && self.bandwidth_kbps.is_none()
    }

    /// Checks every setting; the conditioner only ever runs a config that passes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled && !self.is_neutral() {
            return Err(ConfigError::SwitchedOff);
        }
        let pct_ok = |v: f64| (0.0..=100.0).contains(&v);
        if !pct_ok(self.loss_pct) {
            return Err(ConfigError::Loss(self.loss_pct));
        }
        if !pct_ok(self.duplicate_pct) {
            return Err(ConfigError::Duplicate(self.duplicate_pct));
        }
        if !pct_ok(self.reorder_pct) {
            return Err(ConfigError::Reorder(self.reorder_pct));
        }
        if !self.burst_len.is_finite() || self.burst_len < 0.0 {
            return Err(ConfigError::Burst(self.burst_len));
        }
        if self.burst_len > 1.0 && self.loss_pct < 100.0 {
            // The chain enters the loss state with p = L / (1 - L) / burst; p must be <= 1.
            let loss = self.loss_pct / 100.0;
            let min_burst = loss / (1.0 - loss);
            // The slack absorbs rounding: 0.8 / 0.2 is 4.000000000000001.
            if self.burst_len < min_burst - 1e-9 {
                return Err(ConfigError::BurstTooShort {
                    burst: self.burst_len,
                    loss_pct: self.loss_pct,
                    min_burst,
                });
            }
        }
        for (name, d) in [
            ("latency", self.latency),
            ("jitter", self.jitter),
            ("reorder window", self.reorder_window),
        ] {
            if d > MAX_DELAY {
                return Err(ConfigError::TooLong(name));
            }
        }
        if self.reorder_pct > 0.0 && self.reorder_window.is_zero() {
            return Err(ConfigError::ZeroReorderWindow);
        }
        if self.bandwidth_kbps == Some(0) {
            return Err(ConfigError::ZeroBandwidth);
        }
        if self.max_in_flight_packets == 0 {
            return Err(ConfigError::ZeroInFlight);
        }
        Ok(())
    }
}

/// A setting of [`ConditionerConfig`] out of range.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `loss_pct` outside `0..=100`.
    #[error("loss must be 0..=100 % (got {0})")]
    Loss(f64),
    /// `duplicate_pct` outside `0..=100`.
    #[error("duplicate must be 0..=100 % (got {0})")]
    Duplicate(f64),
    /// `reorder_pct` outside `0..=100`.
    #[error("reorder must be 0..=100 % (got {0})")]
    Reorder(f64),
    /// `burst_len` negative or not finite.
    #[error("burst length must be a number >= 0 (got {0})")]
    Burst(f64),
    /// A burst too short to reach the loss: the loss state would have to be entered with
    /// probability above 1.
    #[error(
        "mean burst of {burst} packets cannot give {loss_pct} % loss (needs >= {min_burst:.2})"
    )]
    BurstTooShort {
        /// The configured mean burst length.
        burst: f64,
        /// The configured loss.
        loss_pct: f64,
        /// The shortest mean burst that gives this loss.
        min_burst: f64,
    },
    /// A delay above [`MAX_DELAY`].
    #[error("{0} must be at most 60 s")]
    TooLong(&'static str),
    /// Reordering asked for with nothing to reorder by.
    #[error("reorder window must be > 0 when reorder is on")]
    ZeroReorderWindow,
    /// `bandwidth_kbps == Some(0)`.
    #[error("bandwidth must be > 0 kbps")]
    ZeroBandwidth,
    /// `max_in_flight_packets == 0`.
    #[error("in-flight limit must be > 0 packets")]
    ZeroInFlight,
    /// Settings given with the switch off: nothing would be simulated.
    #[error("link settings given but `enabled` is false: nothing would be simulated")]
    SwitchedOff,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_and_presets_validate() {
        assert_eq!(ConditionerConfig::off().validate(), Ok(()));
        assert!(ConditionerConfig::off().is_pass_through());
        for p in Preset::ALL {
            let c = ConditionerConfig::preset(p);
            assert_eq!(c.validate(), Ok(()), "{p}");
            assert!(c.enabled);
        }
    }

    #[test]
    fn out_of_range_settings_are_rejected() {
        let base = ConditionerConfig {
            enabled: true,
            ..ConditionerConfig::off()
        };
        let err = |c: ConditionerConfig| c.validate().unwrap_err().to_string();
        assert_eq!(
            err(ConditionerConfig {
                loss_pct: 150.0,
                ..base.clone()
            }),
            "loss must be 0..=100 % (got 150)"
        );
        assert!(
            ConditionerConfig {
                loss_pct: f64::NAN,
                ..base.clone()
            }
            .validate()
            .is_err()
        );
        assert_eq!(
            err(ConditionerConfig {
                duplicate_pct: -1.0,
                ..base.clone()
            }),
            "duplicate must be 0..=100 % (got -1)"
        );
        assert_eq!(
            err(ConditionerConfig {
                reorder_pct: 5.0,
                ..base.clone()
            }),
            "reorder window must be > 0 when reorder is on"
        );
        assert_eq!(
            err(ConditionerConfig {
                bandwidth_kbps: Some(0),
                ..base.clone()
            }),
            "bandwidth must be > 0 kbps"
        );
        assert_eq!(
            err(ConditionerConfig {
                latency: Duration::from_secs(61),
                ..base.clone()
            }),
            "latency must be at most 60 s"
        );
        // 80 % loss needs bursts of at least 4 packets on average.
        assert_eq!(
            err(ConditionerConfig {
                loss_pct: 80.0,
                burst_len: 2.0,
                ..base.clone()
            }),
            "mean burst of 2 packets cannot give 80 % loss (needs >= 4.00)"
        );
        assert_eq!(
            ConditionerConfig {
                loss_pct: 80.0,
                burst_len: 4.0,
                ..base
            }
            .validate(),
            Ok(())
        );
    }

    #[test]
    fn neutral_settings_are_pass_through_even_when_enabled() {
        let mut c = ConditionerConfig {
            enabled: true,
            ..ConditionerConfig::off()
        };
        assert!(c.is_pass_through());
        c.jitter = Duration::from_millis(1);
        assert!(!c.is_pass_through());
        c.enabled = false;
        assert!(c.is_pass_through());
    }

    #[test]
    fn settings_with_the_switch_off_are_refused() {
        let forgot = ConditionerConfig {
            loss_pct: 5.0,
            latency: Duration::from_millis(40),
            ..ConditionerConfig::off()
        };
        assert_eq!(forgot.validate(), Err(ConfigError::SwitchedOff));
        assert!(crate::conditioner::Conditioner::<u8>::new(forgot, 1).is_err());
        let on = ConditionerConfig {
            enabled: true,
            ..ConditionerConfig::off()
        };
        assert_eq!(on.validate(), Ok(()));
        assert_eq!(ConditionerConfig::off().validate(), Ok(()));
    }
}
