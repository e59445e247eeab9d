//! Command lines of the benches that run without criterion (`tickrate`, `loopback`).
//!
//! `cargo bench` hands every bench binary the same arguments: `--bench`, then whatever
//! follows `--` (a name filter, criterion's own flags). These binaries take their flags,
//! check every value (a typo or a bad number is a one-line error and exit status 2, never a
//! silently different run: a full sweep takes an hour), skip the run when a name filter
//! does not match them, as criterion skips its benches, and take criterion's flags without
//! acting on them.

use std::path::PathBuf;

use clap::{Args, Parser};
use demo_server::game::send_rates;
use demo_server::scene::SceneKind;

/// The mode and filter arguments every such bench shares.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct Common {
    /// A short run of a small subset, as a smoke test (also the default without `--bench`,
    /// as under `cargo test`).
    #[arg(long)]
    pub quick: bool,
    /// The same as `--quick` (criterion's test mode, which CI asks every bench for).
    #[arg(long)]
    pub test: bool,
    /// Set by `cargo bench`: the full run.
    #[arg(long)]
    pub bench: bool,
    /// `cargo bench -- --list`: print this bench's name and exit.
    #[arg(long)]
    pub list: bool,
    /// A name filter, as `cargo bench -- FILTER` gives every bench: this one runs only
    /// when its name contains FILTER.
    #[arg(value_name = "FILTER")]
    pub filter: Option<String>,
    /// Criterion's flags without a value, which `cargo bench -- ...` hands every bench.
    #[arg(long, hide = true)]
    noplot: bool,
    #[arg(long, hide = true)]
    discard_baseline: bool,
    #[arg(long, hide = true)]
    exact: bool,
    #[arg(long, hide = true)]
    ignored: bool,
    #[arg(long, hide = true)]
    nocapture: bool,
    #[arg(long, hide = true)]
    quiet: bool,
    #[arg(long, hide = true)]
    verbose: bool,
    /// Criterion's flags with a value, taken and not acted on.
    #[arg(long, hide = true, value_name = "V")]
    save_baseline: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    baseline: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    baseline_lenient: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    load_baseline: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    sample_size: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    warm_up_time: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    measurement_time: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    profile_time: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    color: Option<String>,
    #[arg(long, hide = true, value_name = "V")]
    format: Option<String>,
}

impl Common {
    /// The short run: asked for, or not run by `cargo bench`.
    pub fn quick(&self) -> bool {
        self.quick || self.test || !self.bench
    }

    /// Whether the bench called `name` should run at all; prints why not, and the name for
    /// `--list`.
    pub fn runs(&self, name: &str) -> bool {
        if self.list {
            println!("{name}: bench");
            return false;
        }
        match &self.filter {
            Some(f) if !name.contains(f.as_str()) => {
                eprintln!("{name}: skipped (the filter {f:?} does not match)");
                false
            }
            _ => true,
        }
    }
}

/// `cargo bench -p benches --bench tickrate -- [flags]`.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "tickrate",
    bin_name = "cargo bench -p benches --bench tickrate --",
    about = "Tick-rate sweep: what each tick rate costs the server and buys the players"
)]
pub struct Tickrate {
    #[command(flatten)]
    pub common: Common,
    /// Where to write the CSV (default: target/tickrate.csv).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Run only this tick rate (one of the sweep's, or any other, run as asked).
    #[arg(long, value_name = "R", value_parser = positive_rate)]
    pub hz: Option<f64>,
    /// Snapshots a second to each client (default: one every tick; at most the tick rate).
    /// Below the tick rate, each tick sends to its own share of the clients.
    #[arg(long, value_name = "R", value_parser = positive_rate)]
    pub send_hz: Option<f64>,
    /// Run only this client count (one of the sweep's, or any other, e.g. 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clients: Option<u32>,
    /// The scene: arena, cubes or massive.
    #[arg(long, default_value = "arena")]
    pub scene: SceneKind,
    /// Threads building snapshots (0: one per core; 1, the default, is the single-thread
    /// figure).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// massive: NPCs a second replaced by new ones, so entities come and go every tick.
    #[arg(long, value_name = "PER_S", default_value_t = 0.0, value_parser = rate_or_zero)]
    pub respawns: f64,
    /// Write every measured tick's cost to PATH, one CSV row each.
    #[arg(long, value_name = "PATH")]
    pub tick_log: Option<PathBuf>,
    /// Secure mode (netcode 1.02), as a shipped server runs: clients connect with tokens and
    /// every packet is sealed and opened, so the tick cost includes sealing what the server
    /// sends. Without it, the plain protocol.
    #[arg(long)]
    pub secure: bool,
}

impl Tickrate {
    /// `--send-hz` against the tick rates to run (`--hz`, or else the sweep's): a send rate
    /// a server at one of them cannot send (the demo server's `--send-rate` range) is an
    /// error, as clap gives for a bad value.
    pub fn check_send_hz(&self, rates: &[f64]) -> Result<(), clap::Error> {
        let Some(s) = self.send_hz else {
            return Ok(());
        };
        let refused = rates
            .iter()
            .map(|&r| send_rates(r))
            .find(|ok| !ok.contains(&s));
        match refused {
            Some(ok) => Err(<Self as clap::CommandFactory>::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--send-hz {s} is outside {} to {} Hz, for the tick rate {} (use --hz)",
                    ok.start(),
                    ok.end(),
                    ok.end()
                ),
            )),
            None => Ok(()),
        }
    }
}

/// `cargo bench -p benches --bench loopback -- [flags]`.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "loopback",
    bin_name = "cargo bench -p benches --bench loopback --",
    about = "Loopback throughput: the engine against a raw send_to loop on 127.0.0.1"
)]
pub struct Loopback {
    #[command(flatten)]
    pub common: Common,
}

/// A rate in Hz: finite and above zero.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err("expected a number above 0".into()),
    }
}

/// A rate that may be zero: finite and not negative.
fn rate_or_zero(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err("expected a number, 0 or more".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tickrate(args: &[&str]) -> Result<Tickrate, clap::Error> {
        Tickrate::try_parse_from(std::iter::once("tickrate").chain(args.iter().copied()))
    }

    #[test]
    fn the_documented_commands_parse_to_what_they_say() {
        let a = tickrate(&[
            "--scene",
            "massive",
            "--hz",
            "30",
            "--clients",
            "1000",
            "--out",
            "f.csv",
            "--tick-log",
            "t.csv",
            "--threads",
            "2",
            "--respawns",
            "50",
            "--secure",
            "--bench",
        ])
        .expect("parses");
        assert_eq!(a.scene, SceneKind::Massive);
        assert_eq!(a.hz, Some(30.0));
        assert_eq!(a.clients, Some(1000));
        assert_eq!(a.out, Some(PathBuf::from("f.csv")));
        assert_eq!(a.tick_log, Some(PathBuf::from("t.csv")));
        assert_eq!((a.threads, a.respawns, a.secure), (2, 50.0, true));
        assert!(!a.common.quick());
        // What CI runs (`cargo bench -p benches -- --test`): the short run.
        let ci = tickrate(&["--test", "--bench"]).expect("parses");
        assert!(ci.common.quick() && ci.common.runs("tickrate"));
        assert_eq!(
            (ci.scene, ci.threads, ci.hz, ci.secure),
            (SceneKind::Arena, 1, None, false)
        );
        // Without `--bench` (under `cargo test`): the short run too.
        assert!(tickrate(&[]).expect("parses").common.quick());
    }

    #[test]
    fn bad_values_and_unknown_flags_are_errors_not_another_run() {
        for bad in [
            &["--hz", "abc"][..],
            &["--hz", "0"],
            &["--hz", "-30"],
            &["--hz", "inf"],
            &["--hz"],
            &["--clients", "0"],
            &["--clients", "x"],
            &["--clients", "-4"],
            &["--threads", "-1"],
            &["--threads", "two"],
            &["--respawns", "-1"],
            &["--respawns", "NaN"],
            &["--send-hz", "0"],
            &["--send-hz", "x"],
            &["--scene", "bogus"],
            &["--scene"],
            &["--client", "1000"],
            &["--out"],
            &["a", "b"],
        ] {
            let e = tickrate(bad).expect_err(&format!("{bad:?} must not parse"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert!(Loopback::try_parse_from(["loopback", "--bogus"]).is_err());
        // A send rate above the tick rate run: an error before anything runs.
        let a = tickrate(&["--hz", "60", "--send-hz", "30"]).expect("parses");
        assert_eq!(a.send_hz, Some(30.0));
        assert!(a.check_send_hz(&[60.0]).is_ok());
        let e = a.check_send_hz(&[20.0, 60.0]).expect_err("above 20 Hz");
        assert_eq!(e.exit_code(), 2);
        // More than 1024 ticks between snapshots: the same.
        let slow = tickrate(&["--send-hz", "0.05"]).expect("parses");
        assert!(slow.check_send_hz(&[51.2]).is_ok());
        let e = slow.check_send_hz(&[60.0]).expect_err("below 60/1024 Hz");
        assert_eq!(e.exit_code(), 2);
        assert!(tickrate(&[]).unwrap().check_send_hz(&[10.0]).is_ok());
    }

    #[test]
    fn a_name_filter_or_a_criterion_flag_from_cargo_bench_is_taken_as_criterion_would() {
        // `cargo bench -p benches -- 'cubes|massive' --noplot --save-baseline main`.
        let a = tickrate(&[
            "cubes|massive",
            "--noplot",
            "--save-baseline",
            "main",
            "--bench",
        ])
        .expect("parses");
        assert!(!a.common.runs("tickrate"));
        let b = tickrate(&["tick", "--bench"]).expect("parses");
        assert!(b.common.runs("tickrate"));
        let l = Loopback::try_parse_from(["loopback", "--list"]).expect("parses");
        assert!(!l.common.runs("loopback"));
        let q = Loopback::try_parse_from(["loopback", "--quick", "--bench"]).expect("parses");
        assert!(q.common.quick() && q.common.runs("loopback"));
    }
}
