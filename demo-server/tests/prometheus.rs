//! A real Prometheus scrapes a real demo-server while clients play; then the server drains on
//! SIGTERM. Needs Debian's `prometheus` on the PATH: `.ci/run` installs it and runs this.
//! Every wait is bounded; every process is killed if it outlives its limit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use std::io::Write;

use snapsync::connection::DisconnectReason;
use snapsync::net::{ConnectError, ReplicationClient};
use snapsync::packet::{DenyReason, DisconnectReasonCode};
use snapsync::replication::{ClientConfig, ClientEvent, CloseReason};

/// Longest wait for any one expected thing.
const LIMIT: Duration = Duration::from_secs(30);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_of(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(lines: &Receiver<String>, want: &str) -> String {
    let end = Instant::now() + LIMIT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line containing {want:?} within {LIMIT:?}"));
        if line.contains(want) {
            return line;
        }
    }
}

/// The address after `marker` in `line`, up to the next `/` or `,`.
fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let rest = line.split(marker).nth(1).unwrap();
    let end = rest.find(['/', ',']).unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// A fresh directory of this test's own (the tests of this file run side by side).
fn tmp_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("snapsync-prometheus-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Start Prometheus scraping `target` every second; returns it and its HTTP address.
/// Prometheus cannot report a port it picked, so a free one is chosen and the start is
/// retried (a few times) should another process take it first.
fn start_prometheus(dir: &std::path::Path, target: SocketAddr) -> (Killed, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: snapsync\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    for attempt in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let web = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join(format!("data{attempt}")).display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus on the PATH (apt-get install prometheus)");
        let mut prom = Killed(child);
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            if prom.0.try_wait().unwrap().is_some() {
                break; // the port was taken: try another
            }
            if http_get(&format!("http://{web}/-/ready")).is_some_and(|(s, _)| s == 200) {
                return (prom, web);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("prometheus did not start");
}

/// `method` on `url`, given two seconds: the status and the body, if it answered.
fn http(method: reqwest::Method, url: &str) -> Option<(u16, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .request(method, url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.bytes().await.ok()?.to_vec()))
    })
}

fn http_get(url: &str) -> Option<(u16, String)> {
    http(reqwest::Method::GET, url).map(|(s, body)| (s, String::from_utf8_lossy(&body).into()))
}

/// The value of a PromQL query's first sample, if any.
fn query(web: &str, promql: &str) -> Option<f64> {
    let url = format!(
        "http://{web}/api/v1/query?query={}",
        promql
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    );
    let (_, body) = http_get(&url)?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The value of `promql` now, asked again (bounded) while Prometheus does not answer in time
/// (a busy machine).
fn query_answered(web: &str, promql: &str) -> f64 {
    let end = Instant::now() + LIMIT;
    loop {
        if let Some(v) = query(web, promql) {
            return v;
        }
        assert!(Instant::now() < end, "{promql}: no answer within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A player's inputs due now, sent: a player that sends none is not playing.
fn send_inputs(c: &mut ReplicationClient<u8>) {
    let now = c.now();
    let e = c.endpoint_mut();
    for _ in 0..e.inputs_due(now) {
        let _ = e.send_input(now, 1);
    }
    c.flush();
}

/// Poll `done` every 100 ms until it holds (bounded); whether it did.
fn poll_until(mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + LIMIT;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Poll `promql` until `ok` holds for its value (bounded).
fn eventually(web: &str, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let end = Instant::now() + LIMIT;
    let mut last = None;
    while Instant::now() < end {
        last = query(web, promql);
        if let Some(v) = last
            && ok(v)
        {
            return v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{promql}: last value {last:?}");
}

#[test]
#[ignore = "needs Debian's prometheus: .ci/run installs it and runs it"]
fn prometheus_sees_players_and_rising_counters_and_sigterm_drains() {
    let dir = tmp_dir("drain");
    let summary = dir.join("summary.json");
    let mut server = Command::new(env!("CARGO_BIN_EXE_demo-server"))
        .args([
            "--insecure",
            "--bind",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--stats-interval",
            "0",
            "--drain-timeout",
            "3",
            "--duration",
            "120",
            "--json",
        ])
        .arg(&summary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut server);
    let mut stdin = server.stdin.take().unwrap();
    let server = Killed(server);
    let game = addr_after(&wait_line(&lines, " listening on "), " listening on ");
    let metrics = addr_after(
        &wait_line(&lines, "metrics at http://"),
        "metrics at http://",
    );
    let (_prom, web) = start_prometheus(&dir, metrics);

    // Four players on their own runtime, playing until the server ends their session.
    let draining = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = draining.clone();
    let players = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let draining = seen.clone();
                tasks.push(tokio::spawn(async move {
                    let mut c = ReplicationClient::<u8>::join(game, ClientConfig::default(), None)
                        .await
                        .expect("join");
                    let mut during_drain = 0u64;
                    // Bounded: at most two minutes of frames.
                    for _ in 0..7200 {
                        c.drive_until(tokio::time::Instant::now() + Duration::from_millis(16))
                            .await
                            .unwrap();
                        while let Some(e) = c.poll_event() {
                            if matches!(e, ClientEvent::Snapshot { .. })
                                && draining.load(std::sync::atomic::Ordering::Relaxed)
                            {
                                during_drain += 1;
                            }
                        }
                        if let Some(reason) = c.endpoint().close_reason() {
                            return (reason.clone(), during_drain);
                        }
                        send_inputs(&mut c);
                    }
                    panic!("the server never ended the session");
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    });

    // Prometheus, through its own query API, sees the players and counters that rise.
    eventually(&web, "snapsync_connections", |v| v == 4.0);
    let first = eventually(&web, "snapsync_packets_total{direction=\"in\"}", |v| {
        v > 0.0
    });
    eventually(&web, "snapsync_packets_total{direction=\"in\"}", |v| {
        v > first
    });
    eventually(&web, "snapsync_packets_total{direction=\"out\"}", |v| {
        v > 0.0
    });
    eventually(
        &web,
        "snapsync_handshakes_total{outcome=\"accepted\"}",
        |v| v >= 4.0,
    );
    eventually(&web, "snapsync_tick_seconds_count", |v| v > 60.0);

    // A stuck tick loop (the console's test hook blocks it) turns /health to 503, and back.
    let health = format!("http://{metrics}/health");
    assert_eq!(http_get(&health).unwrap().0, 200);
    writeln!(stdin, "stall 3000").unwrap();
    stdin.flush().unwrap();
    let stalled = poll_until(|| http_get(&health).is_some_and(|(s, _)| s == 503));
    assert!(stalled, "/health never noticed the stalled loop");
    assert!(poll_until(
        || http_get(&health).is_some_and(|(s, _)| s == 200)
    ));

    // SIGTERM drains: not ready, new players denied with a reason, the current ones play on
    // until the drain timeout, then everyone is disconnected cleanly and the server exits 0.
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    wait_line(&lines, "draining:");
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let ready = http_get(&format!("http://{metrics}/ready")).unwrap().0;
    assert_eq!(ready, 503, "a draining server is not ready");
    eventually(&web, "snapsync_accepting", |v| v == 0.0);
    let newcomer = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(ReplicationClient::<u8>::join(
            game,
            ClientConfig::default(),
            None,
        ))
    };
    match newcomer {
        Err(ConnectError::Refused {
            reason: DisconnectReason::Denied(DenyReason::ShuttingDown),
            ..
        }) => {}
        other => panic!("a newcomer while draining: {other:?}"),
    }
    let ended = players.join().unwrap();
    assert_eq!(ended.len(), 4);
    for (reason, during_drain) in &ended {
        assert_eq!(
            *reason,
            CloseReason::Connection(DisconnectReason::Peer(DisconnectReasonCode::ServerShutdown)),
            "told, not timed out"
        );
        assert!(
            *during_drain > 60,
            "played on while draining: {during_drain} snapshots"
        );
    }
    wait_line(&lines, "drained:");
    let mut server = server;
    let end = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "server outlived its drain");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["clients_peak"], 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `POST` to `url`; the body, if it answered 200.
fn http_post(url: &str) -> Option<Vec<u8>> {
    http(reqwest::Method::POST, url)
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}

#[test]
#[ignore = "needs Debian's prometheus: .ci/run installs it and runs it"]
fn prometheus_sees_a_secure_servers_drops_by_reason_while_a_player_plays() {
    use snapsync::connection::ClientSecurity;
    use snapsync::netcode;

    let dir = tmp_dir("secure");
    let mut server = Command::new(env!("CARGO_BIN_EXE_demo-server"))
        .arg("--key-file")
        .arg(dir.join("server.key"))
        .args([
            "--bind",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--stats-interval",
            "0",
            "--duration",
            "120",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut server);
    let _server = Killed(server);
    let game = addr_after(&wait_line(&lines, " listening on "), " listening on ");
    let tokens = addr_after(
        &wait_line(&lines, "connect tokens at http://"),
        "connect tokens at http://",
    );
    let metrics = addr_after(
        &wait_line(&lines, "metrics at http://"),
        "metrics at http://",
    );
    let token_url = format!("http://{tokens}/connect");
    let token = || http_post(&token_url).expect("a connect token from the endpoint");
    let (_prom, web) = start_prometheus(&dir, metrics);

    // One player with a token of its own, playing until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let told = stop.clone();
    let mut config = ClientConfig::default();
    config.client.security = ClientSecurity::Secure { token: token() };
    let player = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = ReplicationClient::<u8>::join(game, config, None)
                .await
                .expect("a secure join");
            let mut snapshots = 0u64;
            // Bounded: at most two minutes of frames.
            for _ in 0..7200 {
                if told.load(std::sync::atomic::Ordering::Relaxed) {
                    return snapshots;
                }
                c.drive_until(tokio::time::Instant::now() + Duration::from_millis(16))
                    .await
                    .unwrap();
                while let Some(e) = c.poll_event() {
                    snapshots += u64::from(matches!(e, ClientEvent::Snapshot { .. }));
                }
                assert!(c.endpoint().close_reason().is_none(), "the session ended");
                send_inputs(&mut c);
            }
            panic!("never told to stop");
        })
    });
    eventually(&web, "snapsync_connections", |v| v == 1.0);

    // Strangers send what a secure server must drop, each of its own kind and count: three
    // datagrams too short to be a packet, two of no packet type, and a valid request whose
    // token was already used from another address.
    let stranger = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a, b) = (stranger(), stranger());
    for _ in 0..3 {
        // (Not starting with 0, which would make it a connection request of the wrong size.)
        a.send_to(&[0xff; 5], game).unwrap();
    }
    for _ in 0..2 {
        a.send_to(&[0x17; 40], game).unwrap();
    }
    let now = std::time::Instant::now();
    let mut client = netcode::Client::new(now, &token()).unwrap();
    let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
    let request = client.poll_transmit(now, &mut buf).unwrap();
    a.send_to(&buf[..request.len], game).unwrap();
    // The first use is answered (a challenge), so the second is surely the later one.
    a.set_read_timeout(Some(LIMIT)).unwrap();
    let mut answer = [0u8; 2048];
    let (n, from) = a
        .recv_from(&mut answer)
        .expect("a challenge to the first request");
    assert_eq!(from, game);
    assert!(n <= request.len, "a challenge no larger than the request");
    b.send_to(&buf[..request.len], game).unwrap();

    // Prometheus, through its own query API, sees each drop under its own reason.
    let dropped = |reason: &str| format!("snapsync_secure_dropped_total{{reason=\"{reason}\"}}");
    eventually(&web, &dropped("too_small"), |v| v == 3.0);
    eventually(&web, &dropped("unknown_type"), |v| v == 2.0);
    eventually(&web, &dropped("token_reused"), |v| v == 1.0);
    eventually(
        &web,
        "snapsync_invalid_packets_total{reason=\"secure\"}",
        |v| v >= 6.0,
    );
    // The player's own packets all opened, and it is still playing.
    assert_eq!(query_answered(&web, &dropped("decrypt_failed")), 0.0);
    assert_eq!(query_answered(&web, &dropped("replayed")), 0.0);
    assert_eq!(query_answered(&web, "snapsync_connections"), 1.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let snapshots = player.join().unwrap();
    assert!(snapshots > 30, "the player was sent the game: {snapshots}");
    let _ = std::fs::remove_dir_all(&dir);
}
