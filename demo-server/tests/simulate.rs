//! The virtual-time demo: clients connect, play, and see a steady snapshot stream under loss.

use std::time::Duration;

use demo_server::scene::SceneKind;
use demo_server::simulate::{SimulationOptions, run};
use snapsync::conditioner::ConditionerConfig;

fn lossy(loss_pct: f64) -> ConditionerConfig {
    ConditionerConfig {
        enabled: true,
        loss_pct,
        latency: Duration::from_millis(20),
        ..ConditionerConfig::off()
    }
}

#[test]
fn four_clients_at_60hz_under_5pct_loss() {
    let opts = SimulationOptions {
        clients: 4,
        conditioner: lossy(5.0),
        seed: 7,
        predict: true,
        ..SimulationOptions::default()
    };
    let r = run(&opts, Duration::from_secs(1), Duration::from_secs(10)).unwrap();
    let (gap, stale) = (r.update_gap.percentiles(), r.staleness.percentiles());
    println!(
        "4 clients, 60 Hz, 5 % loss: {:.2} snapshots/s/client, update gap p50 {:.1} p99 {:.1} ms, \
         staleness p50 {:.1} p99 {:.1} ms, {:.0} kbit/s down per client",
        r.snapshots_per_client_per_s(),
        gap.p50,
        gap.p99,
        stale.p50,
        stale.p99,
        r.kbps_down_per_client
    );
    assert_eq!(r.connected, 4, "every client connected and welcomed");
    assert_eq!(r.disconnects, 0);
    assert_eq!(r.ticks, 600, "10 s at 60 Hz");
    // 60 snapshots/s are sent; 5 % of the parts are lost, and a lost part's tick is
    // replaced by the next one, so about 57/s arrive.
    let rate = r.snapshots_per_client_per_s();
    assert!((52.0..=60.5).contains(&rate), "snapshots/s/client {rate}");
    assert!(gap.p99 < 100.0, "p99 update gap {} ms", gap.p99);
    // Nothing is resent, so the median gap is one tick period (about 16.7 ms, measured at
    // 60 Hz client frames).
    assert!(
        (10.0..=25.0).contains(&gap.p50),
        "p50 update gap {} ms",
        gap.p50
    );
    // Staleness at least the one-way latency.
    assert!(stale.p50 >= 20.0, "p50 staleness {} ms", stale.p50);
    assert!(r.kbps_down_per_client > 0.0 && r.kbps_up_per_client > 0.0);
}

#[test]
fn perfect_link_delivers_every_snapshot() {
    let opts = SimulationOptions {
        clients: 2,
        ..SimulationOptions::default()
    };
    let r = run(&opts, Duration::from_secs(1), Duration::from_secs(3)).unwrap();
    assert_eq!(r.connected, 2);
    let rate = r.snapshots_per_client_per_s();
    assert!((59.0..=61.0).contains(&rate), "snapshots/s/client {rate}");
    assert_eq!(r.parts_rejected, 0);
}

#[test]
fn same_seed_same_run() {
    let opts = SimulationOptions {
        clients: 3,
        conditioner: lossy(10.0),
        seed: 42,
        predict: true,
        ..SimulationOptions::default()
    };
    let a = run(&opts, Duration::from_millis(500), Duration::from_secs(2)).unwrap();
    let b = run(&opts, Duration::from_millis(500), Duration::from_secs(2)).unwrap();
    assert_eq!(a.snapshots_received, b.snapshots_received);
    assert_eq!(a.update_gap.percentiles(), b.update_gap.percentiles());
    assert_eq!(a.staleness.percentiles(), b.staleness.percentiles());
    assert_eq!(a.kbps_down_per_client, b.kbps_down_per_client);
    let c = run(
        &SimulationOptions { seed: 43, ..opts },
        Duration::from_millis(500),
        Duration::from_secs(2),
    )
    .unwrap();
    assert_ne!(
        (a.snapshots_received, a.kbps_down_per_client),
        (c.snapshots_received, c.kbps_down_per_client),
        "another seed loses other packets"
    );
}

#[test]
fn bad_options_are_refused() {
    let none = SimulationOptions {
        clients: 0,
        ..SimulationOptions::default()
    };
    assert!(run(&none, Duration::ZERO, Duration::from_secs(1)).is_err());
    let bad_link = SimulationOptions {
        conditioner: ConditionerConfig {
            enabled: true,
            loss_pct: 150.0,
            ..ConditionerConfig::off()
        },
        ..SimulationOptions::default()
    };
    assert!(run(&bad_link, Duration::ZERO, Duration::from_secs(1)).is_err());
    // Respawns: a count a second, and only where there are NPCs to respawn.
    for (scene, respawns) in [
        (SceneKind::Massive, -1.0),
        (SceneKind::Massive, f64::NAN),
        (SceneKind::Arena, 5.0),
    ] {
        let mut opts = SimulationOptions::default();
        opts.game.scene = scene;
        opts.game.respawns_per_s = respawns;
        let e = run(&opts, Duration::ZERO, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("--respawns"), "{e}");
    }
}

#[test]
fn every_client_is_welcomed_when_handshakes_lose_packets() {
    // A client whose `Accepted` is lost drops the server's first packets until it connects;
    // the welcome they carried must count as lost and be resent, not be taken as acked.
    let mut opts = SimulationOptions {
        clients: 48,
        conditioner: lossy(20.0),
        seed: 3,
        predict: true,
        ..SimulationOptions::default()
    };
    opts.game.tick_rate = 10.0;
    opts.game.send_rate = 10.0;
    let r = run(&opts, Duration::from_secs(2), Duration::from_millis(500)).unwrap();
    assert_eq!(r.connected, 48);
    assert!(r.snapshots_received > 0);
}
