//! The network lab end to end: real kernel packet drop in a network namespace.

use std::process::Command;

#[test]
#[ignore = "needs root, nftables and iproute2: creates a network namespace; .ci/run runs it"]
fn kernel_drop_stalls_tcp_but_not_udp() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
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
        .current_dir(&root)
        .status()
        .expect("run cargo");
    assert!(status.success());
    let out_dir = std::env::temp_dir().join(format!("snapsync-netlab-{}", std::process::id()));
    let out = Command::new(root.join("scripts/netlab.sh"))
        .env("DURATION", "6")
        .env("LOSSES", "0 5")
        .env("OUT", &out_dir)
        .env("BIN_DIR", root.join("target/release"))
        .output()
        .expect("run scripts/netlab.sh");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netlab failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{table}");
    let staleness_p99 = |transport: &str, loss: &str| -> f64 {
        let path = out_dir.join(format!("client-{transport}-{loss}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("client json")).unwrap();
        assert_eq!(v["aggregate"]["connected"], true, "{transport} at {loss}%");
        assert_eq!(v["aggregate"]["disconnects"], 0, "{transport} at {loss}%");
        v["aggregate"]["staleness_ms"]["p99"].as_f64().unwrap()
    };
    for t in ["udp", "udp-reliable", "tcp"] {
        // A clean link: every transport keeps state within about a tick.
        assert!(staleness_p99(t, "0") < 40.0, "{t} at 0%");
    }
    // At 5% kernel drop the streams wait for retransmissions; UDP does not.
    let udp = staleness_p99("udp", "5");
    let tcp = staleness_p99("tcp", "5");
    let reliable = staleness_p99("udp-reliable", "5");
    assert!(udp < 60.0, "udp p99 staleness {udp}");
    // Kernel TCP falls back to its 200 ms retransmission timer now and then: several times
    // UDP's p99 in every run so far (4.5x to 5x).
    assert!(tcp > 1.5 * udp, "tcp {tcp} vs udp {udp}");
    // The engine's reliable channel detects a loss from the ack bits within a tick or two on
    // this sub-millisecond round trip, so it is only somewhat worse than UDP here (1.4x to
    // 1.6x seen); a fixed ratio would fail now and then. That every later snapshot waits
    // behind the resend is what must show.
    assert!(reliable >= udp, "udp-reliable {reliable} vs udp {udp}");
}
