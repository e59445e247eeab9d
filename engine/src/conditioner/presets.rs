//! Named link profiles: `lan`, `wifi`, `mobile`, `bad`.
//!
//! | preset | one-way delay | loss | mean burst | duplicate | reorder |
//! |--------|---------------|------|------------|-----------|---------|
//! | lan    | 0.5–1.5 ms    | 0 %  | –          | 0 %       | 0 %     |
//! | wifi   | 4–10 ms       | 1 %  | 2          | 0 %       | 0 %     |
//! | mobile | 40–70 ms      | 3 %  | 2          | 0 %       | 0 %     |
//! | bad    | 120–200 ms    | 10 % | 3          | 1 %       | 2 % (+ up to 40 ms) |
//!
//! None caps bandwidth: a cap is a property of the game's traffic budget, set on its own.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use super::config::ConditionerConfig;

/// A named link profile, from a quiet wired LAN to a congested mobile link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Wired LAN: ~1 ms, no loss.
    Lan,
    /// Home Wi-Fi: a few ms with jitter, 1 % loss in short bursts.
    Wifi,
    /// Mobile data: tens of ms, more jitter, 3 % loss.
    Mobile,
    /// A bad link: 120–200 ms, 10 % bursty loss, some duplicates and reordering.
    Bad,
}

impl Preset {
    /// Every preset, mildest first.
    pub const ALL: [Preset; 4] = [Preset::Lan, Preset::Wifi, Preset::Mobile, Preset::Bad];

    /// The lowercase name used on the command line and the console.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Lan => "lan",
            Preset::Wifi => "wifi",
            Preset::Mobile => "mobile",
            Preset::Bad => "bad",
        }
    }

    /// The settings of this preset, switched on.
    pub fn config(self) -> ConditionerConfig {
        let ms = Duration::from_millis;
        let on = ConditionerConfig {
            enabled: true,
            ..ConditionerConfig::off()
        };
        match self {
            Preset::Lan => ConditionerConfig {
                latency: Duration::from_micros(500),
                jitter: ms(1),
                ..on
            },
            Preset::Wifi => ConditionerConfig {
                loss_pct: 1.0,
                burst_len: 2.0,
                latency: ms(4),
                jitter: ms(6),
                ..on
            },
            Preset::Mobile => ConditionerConfig {
                loss_pct: 3.0,
                burst_len: 2.0,
                latency: ms(40),
                jitter: ms(30),
                ..on
            },
            Preset::Bad => ConditionerConfig {
                loss_pct: 10.0,
                burst_len: 3.0,
                latency: ms(120),
                jitter: ms(80),
                duplicate_pct: 1.0,
                reorder_pct: 2.0,
                reorder_window: ms(40),
                ..on
            },
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A preset name that is not one of `lan`, `wifi`, `mobile`, `bad`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown preset {0:?} (expected lan, wifi, mobile or bad)")]
pub struct ParsePresetError(pub String);

impl FromStr for Preset {
    type Err = ParsePresetError;

    /// Parses a preset name, ignoring ASCII case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| ParsePresetError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(p.to_string().parse::<Preset>(), Ok(p));
        }
        assert_eq!(" WiFi ".parse::<Preset>(), Ok(Preset::Wifi));
    }

    #[test]
    fn unknown_name_is_a_clear_error() {
        let err = "cellular".parse::<Preset>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown preset \"cellular\" (expected lan, wifi, mobile or bad)"
        );
    }

    #[test]
    fn presets_get_worse_in_order() {
        let configs: Vec<_> = Preset::ALL.into_iter().map(Preset::config).collect();
        for pair in configs.windows(2) {
            assert!(pair[0].latency < pair[1].latency);
            assert!(pair[0].loss_pct < pair[1].loss_pct);
        }
    }
}
