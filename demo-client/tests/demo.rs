//! The demo binaries end to end on loopback: JSON contract, runtime console, bad input.
//! Every process runs with a bounded duration and is killed if it outlives its limit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn client_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_demo-client"))
}

/// demo-server lives in another package: build it (a no-op when fresh) next to demo-client.
fn server_bin() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "demo-server",
            "--bin",
            "demo-server",
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building demo-server failed");
    let dir = client_bin().parent().expect("bin dir").to_path_buf();
    dir.join(format!("demo-server{}", std::env::consts::EXE_SUFFIX))
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn wait_with_limit(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "process outlived {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snapsync-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn four_clients_at_ten_percent_loss_keep_up() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server_json = tmp("server-10.json");
    let client_json = tmp("client-10.json");
    let server = Command::new(server_bin())
        .args([
            "--bind",
            &addr,
            "--duration",
            "9",
            "--stats-interval",
            "0",
            "--loss",
            "10",
        ])
        .arg("--json")
        .arg(&server_json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let client = Command::new(client_bin())
        .args([
            "--server",
            &addr,
            "--clients",
            "4",
            "--duration",
            "5",
            "--stats-interval",
            "0",
        ])
        .arg("--json")
        .arg(&client_json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let c = wait_with_limit(client, Duration::from_secs(30));
    assert!(
        c.status.success(),
        "client: {}",
        String::from_utf8_lossy(&c.stderr)
    );
    let s = wait_with_limit(server, Duration::from_secs(30));
    assert!(
        s.status.success(),
        "server: {}",
        String::from_utf8_lossy(&s.stderr)
    );

    let cj = read_json(&client_json);
    assert_eq!(cj["transport"], "udp");
    let clients = cj["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 4);
    for c in clients {
        assert_eq!(c["connected"], true);
        assert_eq!(c["disconnects"], 0);
        // 60 snapshots/s for ~5 s, 10% of datagrams lost each way on the server's side.
        let n = c["snapshots_received"].as_u64().unwrap();
        assert!((200..=320).contains(&n), "snapshots received {n}");
        let loss = c["loss_pct"].as_f64().unwrap();
        assert!((3.0..=30.0).contains(&loss), "loss {loss}");
        for key in ["update_gap_ms", "staleness_ms", "rtt_ms"] {
            for p in ["p50", "p95", "p99", "max"] {
                assert!(c[key][p].as_f64().is_some(), "{key}.{p}");
            }
        }
        assert!(c["update_gap_ms"]["p50"].as_f64().unwrap() < 25.0);
    }
    assert_eq!(cj["aggregate"]["connected"], true);

    let sj = read_json(&server_json);
    assert_eq!(sj["clients_peak"], 4);
    assert_eq!(sj["invalid_packets"], 0);
    assert!(sj["conditioner"]["dropped"].as_u64().unwrap() > 0);
    let ticks = sj["ticks"].as_u64().unwrap();
    assert!(
        (500..=560).contains(&ticks),
        "ticks {ticks} in 9 s at 60 Hz"
    );
    for key in [
        "tick_rate",
        "tick_cost_us",
        "kbps_out",
        "kbps_in",
        "packets_in",
        "packets_out",
        "entities",
        "changed_pct",
        "bits_per_changed_entity",
    ] {
        assert!(sj.get(key).is_some(), "server JSON lacks {key}");
    }
}

#[test]
fn console_loss_command_changes_the_clients_loss_without_restart() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(server_bin())
        .args(["--bind", &addr, "--duration", "12", "--stats-interval", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let run_client = |json: &Path| {
        let c = Command::new(client_bin())
            .args([
                "--server",
                &addr,
                "--clients",
                "2",
                "--duration",
                "3",
                "--stats-interval",
                "0",
            ])
            .arg("--json")
            .arg(json)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_with_limit(c, Duration::from_secs(20));
        assert!(
            out.status.success(),
            "client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        read_json(json)["aggregate"]["loss_pct"].as_f64().unwrap()
    };
    let before = run_client(&tmp("before.json"));
    let stdin = server.stdin.as_mut().unwrap();
    stdin.write_all(b"loss 30\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let after = run_client(&tmp("after.json"));
    stdin.write_all(b"quit\n").unwrap();
    let s = wait_with_limit(server, Duration::from_secs(20));
    assert!(s.status.success());
    let out = String::from_utf8_lossy(&s.stdout);
    assert!(out.contains("conditioner: loss 30%"), "server said: {out}");
    assert!(before < 2.0, "loss before the command: {before}");
    assert!(after > 15.0, "loss after `loss 30`: {after}");
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A bound socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = wait_with_limit(
        Command::new(client_bin())
            .args([
                "--server",
                &addr,
                "--duration",
                "2",
                "--stats-interval",
                "0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(20),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_command_lines_exit_non_zero_with_a_reason() {
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (server_bin(), vec!["--loss", "150"], "outside 0..=100"),
        (server_bin(), vec!["--preset", "moon"], "unknown preset"),
        (
            server_bin(),
            vec!["--tick-rate", "0", "--duration", "1"],
            "tick-rate",
        ),
        (client_bin(), vec!["--clients", "0"], "--clients"),
        (
            client_bin(),
            vec!["compare", "--loss", "250"],
            "outside 0..=100",
        ),
        (
            client_bin(),
            vec!["--transport", "carrier-pigeon"],
            "carrier-pigeon",
        ),
    ];
    for (bin, args, needle) in cases {
        let out = Command::new(&bin).args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = wait_with_limit(
        Command::new(server_bin())
            .args(["--bind", &addr, "--duration", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(10),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen"), "{err}");
}
