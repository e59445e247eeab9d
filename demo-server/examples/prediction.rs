//! What client-side prediction buys, in virtual time: the demo's arena with bots playing,
//! 50 ms latency each way (100 ms round trip), at 0 % and 5 % loss, prediction on and off.
//!
//! Input latency is the time from an input to the first client frame whose drawn avatar
//! reflects it; a correction is a reconciliation that moved the predicted avatar by more
//! than 1 cm. Run with `cargo run --release -p demo-server --example prediction`
//! (`PREDICTION_SECONDS` sets the measured time, default 30).

use std::time::Duration;

use demo_server::game::GameOptions;
use demo_server::scene::SceneKind;
use demo_server::server::DEFAULT_BUDGET_BYTES;
use demo_server::simulate::{SimulationOptions, run};
use snapsync::conditioner::ConditionerConfig;

const TICK_RATE: f64 = 60.0;
const CLIENTS: usize = 4;

fn main() {
    let seconds: u64 = std::env::var("PREDICTION_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    println!(
        "arena, {CLIENTS} clients, {TICK_RATE} Hz ticks and frames (one frame: {:.1} ms), 50 ms each way, {seconds} s measured",
        1000.0 / TICK_RATE
    );
    println!();
    println!(
        "| loss | prediction | input latency p50 | p95 | p99 | max | corrections | correction p99 | max |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for loss in [0.0, 5.0] {
        for predict in [true, false] {
            let opts = SimulationOptions {
                game: GameOptions {
                    scene: SceneKind::Arena,
                    entities: None,
                    tick_rate: TICK_RATE,
                    send_rate: TICK_RATE,
                    budget_bytes: DEFAULT_BUDGET_BYTES,
                    seed: 1,
                    aoi_radius_m: None,
                    snapshot_threads: 1,
                    respawns_per_s: 0.0,
                },
                clients: CLIENTS,
                frame_rate: TICK_RATE,
                conditioner: ConditionerConfig {
                    enabled: true,
                    loss_pct: loss,
                    latency: Duration::from_millis(50),
                    ..ConditionerConfig::off()
                },
                seed: 3,
                predict,
                secure: false,
            };
            let r = run(&opts, Duration::from_secs(3), Duration::from_secs(seconds))
                .expect("valid options");
            let l = r.input_latency.percentiles();
            let c = r.correction_m.percentiles();
            println!(
                "| {loss:.0} % | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.3} m | {:.3} m |",
                if predict { "on" } else { "off" },
                l.p50,
                l.p95,
                l.p99,
                l.max,
                r.correction_m.count(),
                c.p99,
                c.max
            );
        }
    }
}
