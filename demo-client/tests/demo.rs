//! The demo binaries end to end on loopback: JSON contract, runtime console, every transport,
//! `compare`, bad input.
//!
//! Servers bind port 0 and the test learns the port from the server's "listening on" line;
//! every wait is on a line or an exit, never a sleep, and every process has a limit after
//! which it is killed. Nothing here asserts a rate or a latency: those depend on the machine
//! (the virtual-time figures are in demo-server/tests/simulate.rs, the measured ones in
//! benches).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest a server may take to print its "listening on" line, or to answer a console line.
const LINE_LIMIT: Duration = Duration::from_secs(30);
/// Longest any process may run before the test kills it and fails.
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

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
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A fresh directory for one test's files.
fn tmp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snapsync-demo-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A demo-server process on a port it picked, with its console and its output lines.
struct Server {
    child: Child,
    addr: String,
    /// The "listening on" line.
    listening: String,
    /// `--server ADDR` and, in secure mode, `--token-url URL` (else `--insecure`): what a
    /// client needs to reach this server.
    target: Vec<String>,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Start `demo-server --bind 127.0.0.1:0 ARGS` and wait for its "listening on" line (and
    /// in secure mode, the default, for its token endpoint on a port it picks).
    fn start(args: &[&str]) -> Self {
        let secure = !args.contains(&"--insecure");
        let key = tmp_dir(&format!("key-{}", rand_suffix())).join("server.key");
        let mut command = Command::new(server_bin());
        command.args(["--bind", "127.0.0.1:0", "--stats-interval", "0"]);
        if secure {
            command
                .args(["--http", "127.0.0.1:0", "--key-file"])
                .arg(&key);
        }
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        // Readers on their own threads, so a full pipe never blocks the server.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut server = Self {
            child,
            addr: String::new(),
            listening: String::new(),
            target: Vec::new(),
            stdin,
            lines,
            stderr,
        };
        // "demo-server: <transport> listening on <addr>, scene ..."
        let line = server.wait_line(|l| l.contains(" listening on "));
        let addr = line
            .split(" listening on ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        assert!(addr.starts_with("127.0.0.1:"), "{line}");
        assert!(!addr.ends_with(":0"), "the server reported port 0: {line}");
        server.addr = addr.to_string();
        server.listening = line;
        server.target = vec!["--server".into(), server.addr.clone()];
        if secure {
            // "demo-server: connect tokens at http://<addr>/connect"
            let line = server.wait_line(|l| l.contains("connect tokens at "));
            let url = line.split("connect tokens at ").nth(1).unwrap().to_string();
            server.target.extend(["--token-url".into(), url]);
        } else {
            server.target.push("--insecure".into());
        }
        server
    }

    /// The client arguments to reach this server, then `more`.
    fn client_args<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        self.target
            .iter()
            .map(String::as_str)
            .chain(more.iter().copied())
            .collect()
    }

    /// The next output line that `want` accepts (earlier ones are skipped).
    fn wait_line(&mut self, want: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + LINE_LIMIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    panic!(
                        "demo-server printed no expected line within {LINE_LIMIT:?}; stderr: {}",
                        self.stderr.lock().unwrap()
                    );
                }
            }
        }
    }

    /// Type a console line.
    fn console(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// `stats`, and the stats line it prints.
    fn stats(&mut self) -> String {
        self.console("stats");
        self.wait_line(|l| l.starts_with("clients "))
    }

    /// `quit`, then the exit status within the limit.
    fn quit(mut self) {
        self.console("quit");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "server: {}", self.stderr.lock().unwrap());
                return;
            }
            if start.elapsed() > PROCESS_LIMIT {
                let _ = self.child.kill();
                panic!("server outlived {PROCESS_LIMIT:?} after quit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Run `demo-client ARGS --json PATH` to its end; returns its exit output and, on success,
/// the JSON.
fn run_client(args: &[&str], json: &Path) -> (Output, Option<serde_json::Value>) {
    let child = Command::new(client_bin())
        .args(args)
        .args(["--stats-interval", "0", "--json"])
        .arg(json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_with_limit(child, PROCESS_LIMIT);
    let j = out.status.success().then(|| read_json(json));
    (out, j)
}

/// The number after `key ` in a stats line.
fn stat(line: &str, key: &str) -> u64 {
    line.split(key)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
}

fn assert_played(c: &serde_json::Value, transport: &str) {
    assert_eq!(c["connected"], true, "{c}");
    assert_eq!(c["disconnects"], 0, "{c}");
    assert!(c["snapshots_received"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["transport_in_use"], transport, "{c}");
}

#[test]
fn udp_clients_under_loss_keep_the_json_contract() {
    let dir = tmp_dir("udp");
    let server_json = dir.join("server.json");
    let server_json_arg = server_json.to_string_lossy().to_string();
    // The duration is only a bound: the test quits the server itself.
    let server = Server::start(&[
        "--duration",
        "50",
        "--loss",
        "10",
        "--json",
        &server_json_arg,
    ]);
    let (c, cj) = run_client(
        &server.client_args(&["--clients", "2", "--duration", "2"]),
        &dir.join("client.json"),
    );
    assert!(
        c.status.success(),
        "client: {}",
        String::from_utf8_lossy(&c.stderr)
    );
    server.quit();

    let cj = cj.unwrap();
    assert_eq!(cj["transport"], "udp");
    let clients = cj["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    for c in clients {
        assert_played(c, "udp");
        for key in ["update_gap_ms", "staleness_ms", "rtt_ms"] {
            for p in ["p50", "p95", "p99", "max"] {
                assert!(c[key][p].as_f64().is_some(), "{key}.{p}");
            }
        }
        for key in ["loss_pct", "kbps_in", "kbps_out"] {
            assert!(c[key].as_f64().is_some(), "{key}");
        }
    }
    assert_eq!(cj["aggregate"]["connected"], true);

    let sj = read_json(&server_json);
    assert_eq!(sj["transport"], "udp");
    assert_eq!(sj["clients_peak"], 2);
    assert_eq!(sj["invalid_packets"], 0);
    // `--loss 10` reached the server's link: over two clients' handshakes, inputs and
    // snapshots (hundreds of datagrams), some were dropped.
    assert!(sj["conditioner"]["dropped"].as_u64().unwrap() > 0, "{sj}");
    for key in [
        "ticks",
        "tick_rate",
        "tick_cost_us",
        "kbps_out",
        "kbps_in",
        "packets_in",
        "packets_out",
        "entities",
        "changed_pct",
        "bits_per_changed_entity",
        "entities_per_client",
    ] {
        assert!(sj.get(key).is_some(), "server JSON lacks {key}");
    }
}

#[test]
fn in_the_massive_scene_each_client_is_sent_its_neighbourhood() {
    let dir = tmp_dir("massive");
    let server_json = dir.join("server.json");
    let server_json_arg = server_json.to_string_lossy().to_string();
    let server = Server::start(&[
        "--duration",
        "50",
        "--scene",
        "massive",
        "--entities",
        "3000",
        "--tick-rate",
        "30",
        "--json",
        &server_json_arg,
    ]);
    let (c, cj) = run_client(
        &server.client_args(&["--clients", "2", "--duration", "2"]),
        &dir.join("client.json"),
    );
    assert!(
        c.status.success(),
        "client: {}",
        String::from_utf8_lossy(&c.stderr)
    );
    server.quit();
    for c in cj.unwrap()["clients"].as_array().unwrap() {
        assert_played(c, "udp");
    }
    let sj = read_json(&server_json);
    assert_eq!(sj["scene"], "massive");
    // NPCs plus the avatars still there at the last snapshot (a client may have left).
    let entities = sj["entities"].as_u64().unwrap();
    assert!((3000..=3002).contains(&entities), "{sj}");
    // 3000 NPCs on 1 km²: about 94 within the default 100 m of an avatar, plus the avatar.
    let scope = sj["entities_per_client"].as_f64().unwrap();
    assert!((10.0..300.0).contains(&scope), "{sj}");
}

#[test]
fn console_loss_command_changes_the_servers_link_without_restart() {
    let dir = tmp_dir("console");
    // Plain mode here (secure mode is the other tests'): the console is the same in both.
    let mut server = Server::start(&["--duration", "50", "--insecure"]);
    // By host name, as a person would type it.
    let addr = server.addr.replace("127.0.0.1", "localhost");
    // No fallback: the WebSocket bypasses the simulated link, so with it a client would
    // get through `loss 100` as through a real UDP block.
    let play = |json: &str| {
        run_client(
            &[
                "--server",
                &addr,
                "--insecure",
                "--duration",
                "1",
                "--fallback-after",
                "0",
            ],
            &dir.join(json),
        )
    };
    // A clean link: the client plays and the server's link drops nothing.
    let (out, before) = play("before.json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_played(&before.unwrap()["clients"][0], "udp");
    assert_eq!(stat(&server.stats(), "link dropped"), 0);

    // `loss 100` on the running server: nothing gets through, so a new client cannot even
    // complete its handshake, and the server's link counts what it dropped.
    server.console("loss 100");
    server.wait_line(|l| l == "conditioner: loss 100% latency 0ms jitter 0ms");
    let (out, _) = play("lossy.json");
    assert!(!out.status.success(), "a client got through 100 % loss");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    let line = server.stats();
    assert!(stat(&line, "link dropped") > 0, "{line}");
    assert!(
        line.ends_with("conditioner loss 100% latency 0ms jitter 0ms"),
        "{line}"
    );

    // And back, still without a restart.
    server.console("loss 0");
    server.wait_line(|l| l.starts_with("conditioner: loss 0%"));
    let (out, after) = play("after.json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_played(&after.unwrap()["clients"][0], "udp");
    server.quit();
}

#[test]
fn udp_reliable_and_tcp_transports_deliver_snapshots() {
    let dir = tmp_dir("transports");
    for transport in ["udp-reliable", "tcp"] {
        let server = Server::start(&["--duration", "50", "--transport", transport]);
        let serving = format!("demo-server: {transport} listening on ");
        assert!(
            server.listening.starts_with(&serving),
            "{}",
            server.listening
        );
        let (out, j) = run_client(
            &server.client_args(&[
                "--transport",
                transport,
                "--clients",
                "2",
                "--duration",
                "2",
            ]),
            &dir.join(format!("{transport}.json")),
        );
        assert!(
            out.status.success(),
            "{transport} client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.quit();
        let j = j.unwrap();
        assert_eq!(j["transport"], transport);
        let clients = j["clients"].as_array().unwrap();
        assert_eq!(clients.len(), 2);
        for c in clients {
            assert_played(c, transport);
        }
    }
}

#[test]
fn a_client_that_hears_nothing_over_udp_falls_back_to_a_websocket() {
    let dir = tmp_dir("fallback");
    let server_json = dir.join("server.json");
    let server_json_arg = server_json.to_string_lossy().to_string();
    let server = Server::start(&["--duration", "50", "--json", &server_json_arg]);
    assert!(
        server.listening.starts_with("demo-server: udp "),
        "{}",
        server.listening
    );
    // `--loss 100` drops every datagram this client sends or receives, as a network that
    // blocks UDP would; the fallback is short so the test is quick.
    let (out, j) = run_client(
        &server.client_args(&[
            "--loss",
            "100",
            "--fallback-after",
            "0.3",
            "--duration",
            "2",
        ]),
        &dir.join("client.json"),
    );
    assert!(
        out.status.success(),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.quit();
    let j = j.unwrap();
    assert_eq!(j["transport"], "udp", "the transport asked for");
    assert_played(&j["clients"][0], "websocket");
    assert_eq!(j["aggregate"]["transport_in_use"], "websocket");
    let sj = read_json(&server_json);
    assert_eq!(sj["websockets_opened"], 1, "{sj}");
    assert_eq!(sj["invalid_packets"], 0, "{sj}");
}

#[test]
fn compare_runs_every_transport_and_writes_csv_json_and_svg() {
    let dir = tmp_dir("compare");
    let out = wait_with_limit(
        Command::new(client_bin())
            .args(["compare", "--duration", "2", "--clients", "2", "--out"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        PROCESS_LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let csv = std::fs::read_to_string(dir.join("compare.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "transport");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(names, ["udp", "udp-reliable", "tcp"]);
    for r in &rows {
        assert_eq!(r.len(), header.len(), "{csv}");
    }

    let json = read_json(&dir.join("compare.json"));
    let runs = json.as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for (run, name) in runs.iter().zip(names) {
        assert_eq!(run["transport"], name);
        let clients = run["clients"].as_array().unwrap();
        assert_eq!(clients.len(), 2, "{name}");
        for c in clients {
            assert_played(c, name);
        }
        assert_eq!(run["aggregate"]["connected"], true, "{name}");
        assert!(run["aggregate"]["snapshots_received"].as_u64().unwrap() > 0);
    }

    let svg = std::fs::read_to_string(dir.join("update_gap.svg")).unwrap();
    assert!(svg.contains("<svg"), "not an SVG");
    for name in ["udp", "udp-reliable", "tcp"] {
        assert!(svg.contains(name), "the plot has no {name} series");
    }
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
                "--insecure",
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
            vec!["--tick-rate", "0", "--duration", "1", "--insecure"],
            "tick-rate",
        ),
        (
            server_bin(),
            vec!["--key-file", "/proc/version", "--duration", "1"],
            "exactly 32 bytes",
        ),
        (
            client_bin(),
            vec!["--token-url", "not a url", "--duration", "1"],
            "--token-url",
        ),
        (
            client_bin(),
            vec!["--secure", "--insecure"],
            "cannot be used with",
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
        (
            client_bin(),
            vec!["view", "--scene", "massive", "--duration", "1"],
            "massive is 1 km wide",
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
            .args(["--bind", &addr, "--duration", "1", "--insecure"])
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

#[test]
fn secure_mode_needs_a_token_and_a_plain_client_gets_nowhere() {
    let dir = tmp_dir("secure");
    let server = Server::start(&["--duration", "50"]);
    assert!(server.listening.contains("secure"), "{}", server.listening);
    // A plain client: its handshake means nothing to a secure server.
    let (out, _) = run_client(
        &["--server", &server.addr, "--insecure", "--duration", "1"],
        &dir.join("plain.json"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not answer"), "{err}");
    // No token endpoint where the client looks: a clear one-line error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/connect", closed.local_addr().unwrap());
    drop(closed);
    let (out, _) = run_client(
        &[
            "--server",
            &server.addr,
            "--token-url",
            &url,
            "--duration",
            "1",
        ],
        &dir.join("notoken.json"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no connect token from"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    server.quit();
}

/// A suffix no other test process uses.
fn rand_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
