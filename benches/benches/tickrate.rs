//! Tick-rate sweep: what each tick rate costs the server and buys the players.
//!
//! Run: `cargo bench -p benches --bench tickrate [-- --quick] [--out PATH] [--hz R]
//! [--send-hz R] [--clients N] [--scene arena|cubes|massive] [--threads N]
//! [--respawns PER_S] [--tick-log PATH] [--secure]` (`--hz` and `--clients` narrow the sweep, and a
//! value outside it is run as asked, e.g. 1,000 clients; `--send-hz` sends each client
//! fewer snapshots than ticks; `--threads` builds snapshots on N threads, 0 = one per core;
//! `--respawns` replaces that many of `massive`'s NPCs a second with new ones, so
//! entities come and go every tick; `--tick-log` writes every measured tick's cost, one CSV
//! row each, to show how slow ticks come: alone or in stretches, and whether the ticking
//! thread had the core all along (its CPU time beside the wall time); `--secure` runs secure
//! mode, every packet sealed and opened, as a shipped server does). Every flag and value is
//! checked before anything runs (`benches::cli`).
//! For 10 / 20 / 30 / 60 / 128 Hz × 1 / 16 / 64 / 256 clients (by default the arena scene,
//! 64 bodies plus one avatar per client; `massive`: 10,000 NPCs on 1 km², each client sent
//! what is within 100 m; bots playing, 20 ms latency each way), the whole `udp` demo runs
//! in virtual time through `demo_server::simulate`, once on a clean link and once with 5 %
//! loss. Printed as a markdown table, written as CSV (default `target/tickrate.csv`); each
//! row's line on stderr adds each run's own tick cost, its fastest 10 ticks in a row
//! (what the work costs when the shared host leaves the core alone: compare builds by it),
//! and the ticking thread's CPU time as a share of the ticks' wall time (near 100 %: the
//! thread had its core throughout, and a slow tick was the core running slower).
//!
//! Without `--bench` (under `cargo test`) or with `--test` / `--quick` it runs a small subset
//! in seconds, as a smoke test.

/// The allocator of the demo's binaries and of the benches that time its server (why: the
/// workspace's Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser as _;
use demo_server::game::GameOptions;
use demo_server::metrics::DurationHistogram;
use demo_server::scene::SceneKind;
use demo_server::server::DEFAULT_BUDGET_BYTES;
use demo_server::simulate::{
    DEFAULT_FRAME_RATE_HZ, FLOOR_TICKS, SimulationOptions, SimulationReport, run,
};
use snapsync::conditioner::ConditionerConfig;

const TICK_RATES_HZ: [f64; 5] = [10.0, 20.0, 30.0, 60.0, 128.0];
const CLIENTS: [usize; 4] = [1, 16, 64, 256];
const QUICK_TICK_RATES_HZ: [f64; 2] = [20.0, 60.0];
const QUICK_CLIENTS: [usize; 2] = [1, 4];
/// One-way latency on every link.
const LATENCY: Duration = Duration::from_millis(20);
/// Loss of the lossy run, percent.
const LOSS_PCT: f64 = 5.0;
/// Unmeasured time for connecting and the first full snapshots.
const WARM_UP: Duration = Duration::from_secs(1);
/// Least measured virtual time per run in the full sweep.
const FULL_MIN_DURATION: Duration = Duration::from_secs(3);
/// Least server ticks measured per run in the full sweep, so slow rates still give a p99
/// (the full sweep takes about 8 min of real time on 2 cores, mostly at 256 clients).
const FULL_MIN_TICKS: f64 = 150.0;
/// Measured virtual time per run in quick mode.
const QUICK_DURATION: Duration = Duration::from_secs(2);

struct Row {
    tick_rate: f64,
    clients: usize,
    clean: SimulationReport,
    lossy: SimulationReport,
}

impl Row {
    /// One histogram of both runs together.
    fn merged(&self, of: fn(&SimulationReport) -> &DurationHistogram) -> DurationHistogram {
        let mut h = of(&self.clean).clone();
        h.merge(of(&self.lossy));
        h
    }

    /// Tick cost of both runs together.
    fn tick_cost(&self) -> DurationHistogram {
        self.merged(|r| &r.tick_cost)
    }

    fn tick_cost_pct(&self, q: f64) -> f64 {
        self.pct(|r| &r.tick_cost, q)
    }

    /// A histogram of both runs together, as a share of the tick period at quantile `q`.
    fn pct(&self, of: fn(&SimulationReport) -> &DurationHistogram, q: f64) -> f64 {
        self.merged(of).quantile_ms(q) / 1000.0 * self.tick_rate * 100.0
    }
}

/// A run of `game` with `clients` bots, its link losing `loss_pct` of the datagrams.
fn options(game: &GameOptions, clients: usize, loss_pct: f64, secure: bool) -> SimulationOptions {
    SimulationOptions {
        game: game.clone(),
        clients,
        frame_rate: DEFAULT_FRAME_RATE_HZ,
        conditioner: ConditionerConfig {
            enabled: true,
            loss_pct,
            latency: LATENCY,
            ..ConditionerConfig::off()
        },
        seed: game.seed,
        predict: true,
        secure,
    }
}

/// A share a run may not have (its fastest ticks in a row, when too short; its ticking
/// thread's CPU time, without ticks), or `-`.
fn pct_or_dash(pct: Option<f64>) -> String {
    pct.map_or_else(|| "-".to_string(), |pct| format!("{pct:.1}"))
}

/// Every measured tick of every run, in run order: rate, clients, loss, then the tick.
fn tick_log(rows: &[Row]) -> String {
    let mut s =
        String::from("tick_hz,clients,loss_pct,tick,tick_cost_us,between_ticks_us,tick_cpu_us\n");
    for r in rows {
        for (loss, report) in [(0.0, &r.clean), (LOSS_PCT, &r.lossy)] {
            for t in &report.tick_log {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{}",
                    r.tick_rate,
                    r.clients,
                    loss,
                    t.tick,
                    t.cost.as_micros(),
                    t.between.as_micros(),
                    t.cpu.as_micros()
                );
            }
        }
    }
    s
}

/// `target/tickrate.csv`, in `CARGO_TARGET_DIR` when set.
fn default_out_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("tickrate.csv")
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| tick Hz | clients | entities per client | tick cost p50 | tick cost p99 | kbit/s per client | update gap p99 (0% / 5% loss) | staleness p99 (0% / 5% loss) |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.1} % | {:.1} % | {:.0} | {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
            r.tick_rate,
            r.clients,
            r.clean.entities_per_client,
            r.tick_cost_pct(0.5),
            r.tick_cost_pct(0.99),
            r.clean.kbps_down_per_client,
            r.clean.update_gap.quantile_ms(0.99),
            r.lossy.update_gap.quantile_ms(0.99),
            r.clean.staleness.quantile_ms(0.99),
            r.lossy.staleness.quantile_ms(0.99),
        );
    }
    s
}

/// Per-entity staleness: how long a client held an entity's state after the server's had
/// changed (zero while current), over every client frame × entity held. Printed apart from
/// the table above, whose columns outside scripts read.
fn entity_staleness(rows: &[Row]) -> String {
    let mut s = String::from(
        "Per-entity staleness (how long a client holds an entity's state after the server's changed; \
         0 while current), every client frame × entity held:\n\n\
         | tick Hz | clients | p50 (0% / 5% loss) | p99 (0% / 5% loss) | max (0% / 5% loss) |\n\
         |---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (c, l) = (&r.clean.entity_staleness, &r.lossy.entity_staleness);
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
            r.tick_rate,
            r.clients,
            c.quantile_ms(0.5),
            l.quantile_ms(0.5),
            c.quantile_ms(0.99),
            l.quantile_ms(0.99),
            c.quantile_ms(1.0),
            l.quantile_ms(1.0),
        );
        let beyond =
            r.clean.entity_staleness_beyond_history + r.lossy.entity_staleness_beyond_history;
        if beyond > 0 {
            let _ = writeln!(
                s,
                "  ({beyond} samples were older than the states kept and count at that age: a lower bound)"
            );
        }
    }
    s
}

/// The server's whole work per tick period: the tick (the table's tick cost) plus what the
/// network made it do since the last tick (datagrams received, timers, events). Printed
/// apart from the table above, whose columns outside scripts read.
fn period_cost(rows: &[Row]) -> String {
    let mut s = String::from(
        "Server CPU per tick period in all: the tick (tick cost above) plus its work between ticks \
         (inputs and acks received, timers), both runs together, as a share of the period:\n\n\
         | tick Hz | clients | between ticks p50 / p99 | whole period p50 | whole period p99 |\n\
         |---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} / {:.1} % | {:.1} % | {:.1} % |",
            r.tick_rate,
            r.clients,
            r.pct(|r| &r.between_ticks_cost, 0.5),
            r.pct(|r| &r.between_ticks_cost, 0.99),
            r.pct(|r| &r.period_cost, 0.5),
            r.pct(|r| &r.period_cost, 0.99),
        );
    }
    s
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "tick_hz,clients,entities,tick_cost_p50_us,tick_cost_p99_us,tick_cost_p50_pct,tick_cost_p99_pct,\
         kbps_down_per_client,kbps_up_per_client,snapshots_per_client_per_s,\
         update_gap_p50_ms,update_gap_p99_ms,staleness_p50_ms,staleness_p99_ms,\
         loss5_kbps_down_per_client,loss5_snapshots_per_client_per_s,loss5_update_gap_p50_ms,\
         loss5_update_gap_p99_ms,loss5_staleness_p50_ms,loss5_staleness_p99_ms,connected,disconnects\n",
    );
    for r in rows {
        let h = r.tick_cost();
        let (c, l) = (&r.clean, &r.lossy);
        let _ = writeln!(
            s,
            "{},{},{},{:.1},{:.1},{:.2},{:.2},{:.1},{:.1},{:.2},{:.2},{:.2},{:.2},{:.2},{:.1},{:.2},{:.2},{:.2},{:.2},{:.2},{},{}",
            r.tick_rate,
            r.clients,
            c.entities,
            h.quantile_ms(0.5) * 1000.0,
            h.quantile_ms(0.99) * 1000.0,
            r.tick_cost_pct(0.5),
            r.tick_cost_pct(0.99),
            c.kbps_down_per_client,
            c.kbps_up_per_client,
            c.snapshots_per_client_per_s(),
            c.update_gap.quantile_ms(0.5),
            c.update_gap.quantile_ms(0.99),
            c.staleness.quantile_ms(0.5),
            c.staleness.quantile_ms(0.99),
            l.kbps_down_per_client,
            l.snapshots_per_client_per_s(),
            l.update_gap.quantile_ms(0.5),
            l.update_gap.quantile_ms(0.99),
            l.staleness.quantile_ms(0.5),
            l.staleness.quantile_ms(0.99),
            c.connected.min(l.connected),
            c.disconnects + l.disconnects,
        );
    }
    s
}

fn main() {
    let args = benches::cli::Tickrate::parse();
    if !args.common.runs("tickrate") {
        return;
    }
    let quick = args.common.quick();
    let (rates, clients): (&[f64], &[usize]) = if quick {
        (&QUICK_TICK_RATES_HZ, &QUICK_CLIENTS)
    } else {
        (&TICK_RATES_HZ, &CLIENTS)
    };
    let duration_at = |rate: f64| {
        if quick {
            QUICK_DURATION
        } else {
            FULL_MIN_DURATION.max(Duration::from_secs_f64(FULL_MIN_TICKS / rate))
        }
    };
    // `--hz R` / `--clients N` narrow the sweep to one rate or one client count; one
    // outside it (e.g. 1000 clients) is run as asked.
    let rates: Vec<f64> = args.hz.map_or_else(|| rates.to_vec(), |r| vec![r]);
    if let Err(e) = args.check_send_hz(&rates) {
        e.exit();
    }
    let benches::cli::Tickrate {
        common: _,
        out,
        hz: _,
        send_hz,
        clients: only_clients,
        scene,
        threads,
        respawns,
        tick_log: tick_log_path,
        secure,
    } = args;
    let clients: Vec<usize> = only_clients.map_or_else(|| clients.to_vec(), |n| vec![n as usize]);
    let path = out.unwrap_or_else(default_out_path);
    make_folders(std::iter::once(path.as_path()).chain(tick_log_path.as_deref()));
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in &clients {
        for &rate in &rates {
            let seed = 1000 + n as u64;
            let duration = duration_at(rate);
            let game = GameOptions {
                scene,
                entities: None,
                tick_rate: rate,
                send_rate: send_hz.unwrap_or(rate),
                budget_bytes: DEFAULT_BUDGET_BYTES,
                seed,
                aoi_radius_m: None,
                snapshot_threads: threads,
                respawns_per_s: respawns,
            };
            let clean = run(&options(&game, n, 0.0, secure), WARM_UP, duration);
            let lossy = run(&options(&game, n, LOSS_PCT, secure), WARM_UP, duration);
            let (clean, lossy) = match (clean, lossy) {
                (Ok(c), Ok(l)) => (c, l),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("tickrate: {rate} Hz × {n} clients: {e}");
                    std::process::exit(1);
                }
            };
            // Everything below depends on the clients having played the whole run.
            if clean.connected != n || lossy.connected != n {
                eprintln!(
                    "tickrate: {rate} Hz × {n} clients: only {} / {} connected",
                    clean.connected, lossy.connected
                );
                std::process::exit(1);
            }
            eprintln!(
                "tickrate: {rate} Hz × {n} clients done ({:.0} s so far; shared: {:.0} % of snapshots, \
                 {:.0} / {:.0} % of entity deltas without / with loss; scopes scanned: {:.1} / {:.1} %; \
                 tick cost p50 / p99 {:.1} / {:.1} % without loss, {:.1} / {:.1} % at {LOSS_PCT} % loss; \
                 fastest {FLOOR_TICKS} ticks in a row {} / {} %; the ticking thread's CPU time \
                 {} / {} % of the ticks' wall time)",
                started.elapsed().as_secs_f64(),
                clean.shared_pct,
                clean.shared_deltas_pct,
                lossy.shared_deltas_pct,
                clean.scope_scan_pct,
                lossy.scope_scan_pct,
                clean.tick_cost_pct(0.5),
                clean.tick_cost_pct(0.99),
                lossy.tick_cost_pct(0.5),
                lossy.tick_cost_pct(0.99),
                pct_or_dash(clean.tick_cost_floor_pct()),
                pct_or_dash(lossy.tick_cost_floor_pct()),
                pct_or_dash(clean.tick_cpu_pct()),
                pct_or_dash(lossy.tick_cpu_pct()),
            );
            rows.push(Row {
                tick_rate: rate,
                clients: n,
                clean,
                lossy,
            });
        }
    }
    rows.sort_by(|a, b| {
        a.tick_rate
            .total_cmp(&b.tick_rate)
            .then(a.clients.cmp(&b.clients))
    });
    println!(
        "\nTick-rate sweep ({}): {} scene, {}, {} ms latency each way, {} measured per run after \
         {} s warm-up. Tick cost is server CPU per tick as a share of the tick period; a tick's \
         update counts when all of its parts arrived.\n",
        if quick { "quick" } else { "full" },
        match scene {
            SceneKind::Arena => "arena: 64 bodies + 1 avatar per client".to_string(),
            SceneKind::Massive =>
                "massive: 10,000 NPCs on 1 km² + 1 avatar per client, 100 m area of interest"
                    .to_string(),
            s => s.to_string(),
        },
        if secure {
            "secure mode (every packet sealed and opened)"
        } else {
            "plain protocol"
        },
        LATENCY.as_millis(),
        if quick {
            format!("{} s", QUICK_DURATION.as_secs())
        } else {
            format!(
                "max({} s, {} ticks)",
                FULL_MIN_DURATION.as_secs(),
                FULL_MIN_TICKS
            )
        },
        WARM_UP.as_secs()
    );
    print!("{}", markdown(&rows));
    print!("\n{}", entity_staleness(&rows));
    print!("\n{}", period_cost(&rows));
    println!();
    let written = write(&path, &csv(&rows), "CSV");
    let logged = tick_log_path
        .as_ref()
        .is_none_or(|p| write(p, &tick_log(&rows), "Tick log"));
    println!(
        "sweep took {:.0} s of real time",
        started.elapsed().as_secs_f64()
    );
    if !(written && logged) {
        std::process::exit(1);
    }
}

/// Make the folder of each output file, before a run that may take an hour: a path that
/// cannot be written is an error now, not after it.
fn make_folders<'a>(paths: impl IntoIterator<Item = &'a Path>) {
    for path in paths {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!("tickrate: cannot create {}: {e}", dir.display());
            std::process::exit(2);
        }
    }
}

/// Write `text` to `path`; whether it was written (an error is printed).
fn write(path: &Path, text: &str, what: &str) -> bool {
    match std::fs::write(path, text) {
        Ok(()) => {
            println!("{what}: {}", path.display());
            true
        }
        Err(e) => {
            eprintln!("tickrate: cannot write {}: {e}", path.display());
            false
        }
    }
}
