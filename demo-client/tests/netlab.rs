//! The network lab end to end (scripts/netlab.sh, as root): real kernel TCP and UDP, on
//! loopback with kernel packet drop, and over netlab-link's TUN link at a real round trip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The labs run one at a time: two at once on a 2-core machine would disturb each other's
/// timing, and the figures are what the tests check.
static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn build_release() {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "demo-server",
            "-p",
            "demo-client",
        ])
        .current_dir(root())
        .status()
        .expect("run cargo");
    assert!(status.success());
}

/// Runs scripts/netlab.sh with these flags and environment; returns its output directory.
fn run_lab(name: &str, args: &[&str], env: &[(&str, &str)]) -> PathBuf {
    let out_dir = std::env::temp_dir().join(format!("snapsync-{name}-{}", std::process::id()));
    let mut cmd = Command::new(root().join("scripts/netlab.sh"));
    cmd.args(args)
        .env("OUT", &out_dir)
        .env("BIN_DIR", root().join("target/release"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run scripts/netlab.sh");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "netlab failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out_dir
}

/// The aggregate of one run's client summary.
fn client_aggregate(out_dir: &Path, transport: &str, loss: &str) -> serde_json::Value {
    let path = out_dir.join(format!("client-{transport}-{loss}.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("client json")).unwrap();
    assert_eq!(v["aggregate"]["connected"], true, "{transport} at {loss}%");
    assert_eq!(v["aggregate"]["disconnects"], 0, "{transport} at {loss}%");
    v["aggregate"].clone()
}

#[test]
#[ignore = "needs root, nftables and iproute2: creates a network namespace; .ci/run runs it"]
fn kernel_drop_on_loopback_costs_udp_a_tick_and_the_reliable_channel_a_resend() {
    let _lab = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    build_release();
    // The environment variables are the script's older interface; they still work.
    let out_dir = run_lab(
        "netlab-nft",
        &[],
        &[("DURATION", "6"), ("LOSSES", "0 5"), ("LINK", "nft")],
    );
    let staleness = |transport: &str, loss: &str, q: &str| -> f64 {
        client_aggregate(&out_dir, transport, loss)["staleness_ms"][q]
            .as_f64()
            .unwrap()
    };
    let staleness_p99 = |transport: &str, loss: &str| staleness(transport, loss, "p99");
    for t in ["udp", "udp-reliable", "tcp"] {
        for loss in ["0", "5"] {
            // A new snapshot every tick (16.7 ms) at the median, for every transport.
            let gap = client_aggregate(&out_dir, t, loss)["update_gap_ms"]["p50"]
                .as_f64()
                .unwrap();
            assert!((10.0..25.0).contains(&gap), "{t} at {loss}%: gap p50 {gap}");
        }
        // A clean link keeps state within a few ticks. This is wall-clock time on a shared
        // machine, and staleness includes the client's playout delay, which grows with the
        // jitter it sees: p99 from 19 to 62 ms over runs of this lab, lower on a quiet
        // machine (a bound of 40 ms failed on a busy one).
        assert!(staleness_p99(t, "0") < 90.0, "{t} at 0%");
    }
    // The kernel drop takes effect: the engine's own loss estimate over UDP (from its acks)
    // sees about the 5 % the rule drops (4.4 % to 5.4 % in ten runs).
    let udp_loss = client_aggregate(&out_dir, "udp", "5")["loss_pct"]
        .as_f64()
        .unwrap();
    assert!(
        (2.5..9.0).contains(&udp_loss),
        "udp measured loss {udp_loss} %"
    );
    // At 5 % drop UDP keeps state within a few ticks (p99 34 to 86 ms over runs of this lab,
    // as above).
    let udp = staleness_p99("udp", "5");
    assert!(udp < 100.0, "udp p99 staleness {udp}");
    // Every later snapshot on the engine's reliable channel waits behind a resend, which
    // comes a tick or two later on this round trip: 1.45x to 1.65x UDP's p99 in ten runs.
    let reliable = staleness_p99("udp-reliable", "5");
    assert!(reliable > udp, "udp-reliable {reliable} vs udp {udp}");
    // Kernel TCP is not compared here: on a sub-millisecond round trip it repairs most losses
    // within a tick (fast retransmit, tail-loss probes), and both its p99 (1.3x to 18x UDP's)
    // and its worst case (69 ms to 700 ms) vary from run to run with how many
    // retransmissions were lost in turn. Its cost shows on a real round trip, which
    // `a_real_round_trip_makes_tcp_pay_for_every_loss` asserts.
}

/// One row of `netlab.sh --json`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    transport: String,
    loss_pct: f64,
    rtt_ms: f64,
    update_gap_ms: Percentiles,
    staleness_ms: Percentiles,
    disconnects: u64,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

#[test]
#[ignore = "needs root, iproute2 and /dev/net/tun: creates namespaces and TUN devices; .ci/run runs it"]
fn a_real_round_trip_makes_tcp_pay_for_every_loss() {
    let _lab = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    build_release();
    let json =
        std::env::temp_dir().join(format!("snapsync-netlab-tun-{}.json", std::process::id()));
    let json_arg = json.to_str().expect("a UTF-8 temp path");
    let out_dir = run_lab(
        "netlab-tun",
        &[
            "--latency",
            "40",
            "--loss",
            "0,5",
            "--transports",
            "udp,udp-reliable,tcp",
            "--duration",
            DURATION_SECS,
            "--json",
            json_arg,
        ],
        &[],
    );
    let rows: Vec<Row> =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json output"))
            .expect("rows with exactly the documented keys");
    assert_eq!(rows.len(), 6);
    let row = |transport: &str, loss: f64| -> &Row {
        rows.iter()
            .find(|r| r.transport == transport && r.loss_pct == loss)
            .unwrap_or_else(|| panic!("no row for {transport} at {loss}%"))
    };
    for r in &rows {
        let loss = format!("{}", r.loss_pct);
        client_aggregate(&out_dir, &r.transport, &loss);
        assert_eq!(r.disconnects, 0, "{r:?}");
        // 40 ms each way through netlab-link: the engine measures about 82 ms (timer
        // granularity and scheduling add a little); a stream's measured round trip grows
        // with its stalls under loss (about 97 ms at 5 %).
        assert!((70.0..150.0).contains(&r.rtt_ms), "{r:?}");
        assert!(
            r.update_gap_ms.p50 > 10.0 && r.update_gap_ms.p50 < 25.0,
            "{r:?}"
        );
        assert!(r.staleness_ms.p50 <= r.staleness_ms.p99, "{r:?}");
        assert!(r.staleness_ms.p99 <= r.staleness_ms.max, "{r:?}");
    }
    for t in ["udp", "udp-reliable", "tcp"] {
        // A clean link: 40 ms one way, about a tick, and the client's playout delay (p50
        // 51 ms for all three, README). The median, not the p99: one late delivery in a
        // run of eight seconds set a clean link's p99 to 163 ms in a clean-clone CI run
        // (udp-reliable, gap max 155 ms), where quiet runs gave 59.5–60.3 ms and busy ones
        // up to 90.1.
        let r = row(t, 0.0);
        assert!(r.staleness_ms.p50 < CLEAN_LINK_P50_MS, "{r:?}");
    }
    let udp = row("udp", 5.0).staleness_ms.p99;
    let reliable = row("udp-reliable", 5.0).staleness_ms.p99;
    let tcp = row("tcp", 5.0).staleness_ms.p99;
    // A lost snapshot costs UDP a tick: 40 ms one way plus a few ticks at p99.
    assert!(udp < 100.0, "udp staleness p99 {udp}");
    // A stream repairs a loss a round trip later at best (kernel TCP: fast retransmit, or
    // its retransmission timer). RATIO_FLOOR is below every ratio seen in repeated runs.
    assert!(tcp > RATIO_FLOOR * udp, "tcp {tcp} vs udp {udp}");
    assert!(
        reliable > RATIO_FLOOR * udp,
        "udp-reliable {reliable} vs udp {udp}"
    );
}

/// Staleness p50 on the TUN link without loss that every transport must stay under: the
/// 40 ms one way and a tick, with room for the playout delay.
const CLEAN_LINK_P50_MS: f64 = 70.0;

/// Seconds per run of the TUN lab: six runs and their setup take about a minute.
const DURATION_SECS: &str = "8";

/// Staleness p99 at 5 % loss, stream over UDP, that every run must exceed.
///
/// Ten 8 s runs of this lab (seeds 1 to 10, on the shared 2-core machine) gave tcp / udp
/// 2.25 to 3.22 and udp-reliable / udp 2.15 to 3.13, with udp's p99 at 72 to 75 ms; 20 s
/// runs gave 2.6 to 3.2. The ratio is far from the 4x of a bare loss because both sides
/// carry the same 40 ms of one-way latency. 1.6 leaves room for a busier machine: a UDP
/// stream cannot reach 1.6 x 73 = 117 ms at p99 without stalls.
const RATIO_FLOOR: f64 = 1.6;
