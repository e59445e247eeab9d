//! Command-line and console pieces shared by demo-server and demo-client, so both sides
//! take the same conditioner flags and speak the same transport names.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use snapsync::conditioner::{ConditionerConfig, Preset};

/// A `--flag SECS` value as a duration: a finite number of seconds, 0 or more.
pub fn seconds(flag: &str, v: f64) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=1e7).contains(&v) {
        return Err(format!(
            "--{flag} must be a number of seconds >= 0 (got {v})"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Log to stderr, at `warn` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// How snapshots travel from server to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Unreliable, unordered datagrams: a lost snapshot is replaced by the next one.
    Udp,
    /// The same snapshots on a reliable-ordered channel over the same simulated link:
    /// stream semantics, with head-of-line blocking.
    UdpReliable,
    /// A real kernel TCP stream (TCP_NODELAY, length-prefixed frames).
    Tcp,
}

impl Transport {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::UdpReliable => "udp-reliable",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn parse_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{v} is outside 0..=100 %"));
    }
    Ok(v)
}

fn parse_ms(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=60_000.0).contains(&v) {
        return Err(format!("{v} ms is outside 0..=60000"));
    }
    Ok(v)
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse::<Preset>().map_err(|e| e.to_string())
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v / 1000.0)
}

/// Link simulation flags; they apply to what this side sends and what it receives.
#[derive(Debug, Clone, Default, Args)]
pub struct ConditionerArgs {
    /// Start from a named link profile (lan, wifi, mobile, bad); other flags override it.
    #[arg(long, value_parser = parse_preset)]
    pub preset: Option<Preset>,
    /// Packet loss, percent (0-100).
    #[arg(long, value_name = "PCT", value_parser = parse_pct)]
    pub loss: Option<f64>,
    /// Mean loss-burst length in packets (Gilbert-Elliott); 1 or less means uniform loss.
    #[arg(long, value_name = "LEN")]
    pub burst: Option<f64>,
    /// One-way latency added, milliseconds.
    #[arg(long, value_name = "MS", value_parser = parse_ms)]
    pub latency: Option<f64>,
    /// Extra random delay 0..=MS on top of latency (never reorders by itself).
    #[arg(long, value_name = "MS", value_parser = parse_ms)]
    pub jitter: Option<f64>,
    /// Packets delivered twice, percent.
    #[arg(long, value_name = "PCT", value_parser = parse_pct)]
    pub duplicate: Option<f64>,
    /// Packets held back so later ones overtake them, percent (by up to 50 ms).
    #[arg(long, value_name = "PCT", value_parser = parse_pct)]
    pub reorder: Option<f64>,
    /// Bandwidth cap, kbit/s.
    #[arg(long, value_name = "KBPS", value_parser = clap::value_parser!(u32).range(1..))]
    pub bandwidth: Option<u32>,
    /// Seed of the link simulation (same seed, same losses).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
}

/// Window in which a reordered packet is held back.
pub const REORDER_WINDOW: Duration = Duration::from_millis(50);

impl ConditionerArgs {
    /// True when any link-simulation flag was given.
    pub fn any(&self) -> bool {
        self.preset.is_some()
            || self.loss.is_some()
            || self.burst.is_some()
            || self.latency.is_some()
            || self.jitter.is_some()
            || self.duplicate.is_some()
            || self.reorder.is_some()
            || self.bandwidth.is_some()
    }

    /// The conditioner settings these flags describe, checked.
    pub fn to_config(&self) -> Result<ConditionerConfig, String> {
        let mut c = match self.preset {
            Some(p) => ConditionerConfig::preset(p),
            None => ConditionerConfig::off(),
        };
        if let Some(v) = self.loss {
            c.loss_pct = v;
        }
        if let Some(v) = self.burst {
            c.burst_len = v;
        }
        if let Some(v) = self.latency {
            c.latency = ms(v);
        }
        if let Some(v) = self.jitter {
            c.jitter = ms(v);
        }
        if let Some(v) = self.duplicate {
            c.duplicate_pct = v;
        }
        if let Some(v) = self.reorder {
            c.reorder_pct = v;
            if c.reorder_window.is_zero() {
                c.reorder_window = REORDER_WINDOW;
            }
        }
        if self.bandwidth.is_some() {
            c.bandwidth_kbps = self.bandwidth;
        }
        c.enabled = self.any();
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

/// A one-line description of a conditioner setting, for logs and stats lines.
pub fn describe(c: &ConditionerConfig) -> String {
    if !c.enabled {
        return "off".to_string();
    }
    let mut s = format!(
        "loss {}% latency {}ms jitter {}ms",
        c.loss_pct,
        c.latency.as_secs_f64() * 1e3,
        c.jitter.as_secs_f64() * 1e3
    );
    if c.burst_len > 1.0 {
        s += &format!(" burst {}", c.burst_len);
    }
    if c.duplicate_pct > 0.0 {
        s += &format!(" duplicate {}%", c.duplicate_pct);
    }
    if c.reorder_pct > 0.0 {
        s += &format!(" reorder {}%", c.reorder_pct);
    }
    if let Some(b) = c.bandwidth_kbps {
        s += &format!(" bandwidth {b}kbps");
    }
    s
}

/// A command typed on the server's console while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsoleCommand {
    /// `loss PCT`
    Loss(f64),
    /// `latency MS`
    Latency(f64),
    /// `jitter MS`
    Jitter(f64),
    /// `duplicate PCT`
    Duplicate(f64),
    /// `reorder PCT`
    Reorder(f64),
    /// `burst LEN`
    Burst(f64),
    /// `preset NAME`
    Preset(Preset),
    /// `conditioner on|off`
    Enabled(bool),
    /// `stats`: print a stats line now.
    Stats,
    /// `help`
    Help,
    /// `quit`: disconnect everyone and exit, writing the summary.
    Quit,
    /// `drain`: accept no new players, let the current ones finish, then stop.
    Drain,
    /// `stall MS`: block the tick loop for MS milliseconds (at most 10 s), to check that
    /// health probes notice a stuck server.
    Stall(u64),
}

/// The console's help text.
pub const CONSOLE_HELP: &str = "commands: loss PCT | latency MS | jitter MS | duplicate PCT | \
reorder PCT | burst LEN | preset lan|wifi|mobile|bad | conditioner on|off | stats | drain | stall MS | help | quit";

impl FromStr for ConsoleCommand {
    type Err = String;
    fn from_str(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let cmd = words.next().ok_or("empty command")?;
        let arg = words.next();
        if words.next().is_some() {
            return Err(format!("too many words in `{}`", line.trim()));
        }
        let need = |what: &str| arg.ok_or(format!("`{cmd}` needs {what}"));
        Ok(match cmd {
            "loss" => Self::Loss(parse_pct(need("a percentage")?)?),
            "latency" => Self::Latency(parse_ms(need("milliseconds")?)?),
            "jitter" => Self::Jitter(parse_ms(need("milliseconds")?)?),
            "duplicate" => Self::Duplicate(parse_pct(need("a percentage")?)?),
            "reorder" => Self::Reorder(parse_pct(need("a percentage")?)?),
            "burst" => {
                let v: f64 = need("a length")?
                    .parse()
                    .map_err(|_| "burst needs a number".to_string())?;
                Self::Burst(v)
            }
            "preset" => Self::Preset(parse_preset(need("a name")?)?),
            "conditioner" => match need("on or off")? {
                "on" => Self::Enabled(true),
                "off" => Self::Enabled(false),
                other => return Err(format!("`conditioner {other}`: say on or off")),
            },
            "stats" if arg.is_none() => Self::Stats,
            "help" if arg.is_none() => Self::Help,
            "quit" | "exit" if arg.is_none() => Self::Quit,
            "drain" if arg.is_none() => Self::Drain,
            "stall" => {
                let ms: u64 = need("milliseconds")?
                    .parse()
                    .map_err(|_| "stall needs whole milliseconds".to_string())?;
                if ms > 10_000 {
                    return Err(format!("stall {ms}: at most 10000 ms"));
                }
                Self::Stall(ms)
            }
            _ => return Err(format!("unknown command `{}`; {CONSOLE_HELP}", line.trim())),
        })
    }
}

/// The server console's link settings: those in effect, and those kept while the
/// conditioner is switched off, so `conditioner on` brings them back.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleConditioner {
    active: ConditionerConfig,
    kept: ConditionerConfig,
}

impl ConsoleConditioner {
    /// Start from the command line's settings.
    pub fn new(config: ConditionerConfig) -> Self {
        Self {
            kept: config.clone(),
            active: config,
        }
    }

    /// The settings in effect.
    pub fn active(&self) -> &ConditionerConfig {
        &self.active
    }
}

impl ConsoleCommand {
    /// Apply a conditioner command, keeping the result only when it is valid; `None` for
    /// commands that do not touch the conditioner, else whether it took.
    pub fn apply(&self, state: &mut ConsoleConditioner) -> Option<Result<(), String>> {
        let mut c = state.kept.clone();
        match *self {
            Self::Loss(v) => c.loss_pct = v,
            Self::Latency(v) => c.latency = ms(v),
            Self::Jitter(v) => c.jitter = ms(v),
            Self::Duplicate(v) => c.duplicate_pct = v,
            Self::Reorder(v) => {
                c.reorder_pct = v;
                if c.reorder_window.is_zero() {
                    c.reorder_window = REORDER_WINDOW;
                }
            }
            Self::Burst(v) => c.burst_len = v,
            Self::Preset(p) => c = ConditionerConfig::preset(p),
            Self::Enabled(false) => {
                // The settings stay kept for `conditioner on`.
                state.active = ConditionerConfig::off();
                return Some(Ok(()));
            }
            Self::Enabled(true) => {}
            Self::Stats | Self::Help | Self::Quit | Self::Drain | Self::Stall(_) => return None,
        }
        // Changing a setting means the user wants it in effect.
        c.enabled = true;
        Some(c.validate().map_err(|e| e.to_string()).map(|()| {
            state.kept = c.clone();
            state.active = c;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_build_a_checked_config() {
        let args = ConditionerArgs {
            loss: Some(5.0),
            latency: Some(40.0),
            ..ConditionerArgs::default()
        };
        let c = args.to_config().unwrap();
        assert!(c.enabled);
        assert_eq!(c.loss_pct, 5.0);
        assert_eq!(c.latency, Duration::from_millis(40));
        assert!(!ConditionerArgs::default().to_config().unwrap().enabled);
        let preset = ConditionerArgs {
            preset: Some(Preset::Bad),
            loss: Some(1.0),
            ..ConditionerArgs::default()
        };
        let c = preset.to_config().unwrap();
        assert_eq!(c.loss_pct, 1.0, "a flag overrides the preset");
        assert_eq!(c.latency, ConditionerConfig::preset(Preset::Bad).latency);
    }

    #[test]
    fn console_commands_parse_and_apply() {
        let mut state = ConsoleConditioner::new(ConditionerConfig::off());
        let c: ConsoleCommand = "loss 30".parse().unwrap();
        c.apply(&mut state).unwrap().unwrap();
        assert_eq!(state.active().loss_pct, 30.0);
        assert!(state.active().enabled);
        let off: ConsoleCommand = "conditioner off".parse().unwrap();
        off.apply(&mut state).unwrap().unwrap();
        assert!(state.active().is_pass_through());
        assert_eq!(state.active().validate(), Ok(()));
        let on: ConsoleCommand = "conditioner on".parse().unwrap();
        on.apply(&mut state).unwrap().unwrap();
        assert_eq!(
            state.active().loss_pct,
            30.0,
            "switched back on, settings kept"
        );
        assert_eq!(
            "quit".parse::<ConsoleCommand>().unwrap(),
            ConsoleCommand::Quit
        );
        assert!(
            "loss 150"
                .parse::<ConsoleCommand>()
                .unwrap_err()
                .contains("outside")
        );
        assert!("preset moon".parse::<ConsoleCommand>().is_err());
        assert!(
            "fly"
                .parse::<ConsoleCommand>()
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(
            "loss"
                .parse::<ConsoleCommand>()
                .unwrap_err()
                .contains("needs")
        );
        // A burst too short for the loss is refused with the conditioner's own reason, and
        // the settings in effect stay as they were.
        "loss 80"
            .parse::<ConsoleCommand>()
            .unwrap()
            .apply(&mut state)
            .unwrap()
            .unwrap();
        let before = state.clone();
        let short: ConsoleCommand = "burst 2".parse().unwrap();
        assert!(short.apply(&mut state).unwrap().is_err());
        assert_eq!(state, before);
    }
}
