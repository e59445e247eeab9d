//! The stream fallback end to end, against a real UDP block: a network namespace whose
//! nftables drop every UDP packet to the server's port, the demo binaries inside it.
//!
//! The namespace is this test's own (its name carries the process id) and is deleted,
//! with every process in it, even when an assertion fails.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// The server's UDP port, and its WebSocket's TCP port: a fresh namespace has every port
/// free.
const PORT: u16 = 7777;
/// The token endpoint's port.
const HTTP_PORT: u16 = 8080;
/// Longest the server may take to print a line.
const LINE_LIMIT: Duration = Duration::from_secs(30);
/// Longest any client may run before the test kills it and fails.
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

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace with only its loopback up; deleted on drop with everything in it.
struct Namespace {
    name: String,
}

impl Namespace {
    fn new() -> Self {
        let ns = Self {
            name: format!("snapsync-fallback-{}", std::process::id()),
        };
        // A namespace left over from an earlier run of the same pid.
        ns.delete();
        run("ip", &["netns", "add", &ns.name]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace to its end; it must succeed.
    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A command to spawn inside the namespace.
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Load an nftables ruleset into the namespace.
    fn nft(&self, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f: {rules}");
    }

    fn delete(&self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Every UDP packet to the server's port dropped on the input hook: the client's requests
/// never reach the server, as behind a firewall that blocks UDP. Counted, so the test can
/// show the block was hit.
const BLOCK_UDP: &str = "
table inet fallback {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 7777 counter drop
  }
}
";

/// Packets the block has dropped so far.
fn blocked_packets(ns: &Namespace) -> u64 {
    let out = ns.exec(&["nft", "list", "table", "inet", "fallback"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("counter packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {text}"))
}

/// demo-server inside the namespace, with its console and output lines.
struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Server {
    fn start(ns: &Namespace, dir: &Path) -> Self {
        let bind = format!("127.0.0.1:{PORT}");
        let http = format!("127.0.0.1:{HTTP_PORT}");
        let mut child = ns
            .command(&server_bin())
            .args(["--bind", &bind, "--http", &http, "--stats-interval", "0"])
            .args(["--duration", "120", "--key-file"])
            .arg(dir.join("server.key"))
            .arg("--json")
            .arg(dir.join("server.json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start demo-server");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        // A reader on its own thread, so a full pipe never blocks the server.
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Self {
            child,
            stdin,
            lines,
        };
        let ws = server.wait_line("websocket fallback on tcp ");
        assert!(ws.contains(&bind), "{ws}");
        server.wait_line("connect tokens at ");
        server
    }

    fn wait_line(&mut self, part: &str) -> String {
        let end = Instant::now() + LINE_LIMIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(part) => return line,
                Ok(_) => {}
                Err(_) => panic!("demo-server printed no {part:?} within {LINE_LIMIT:?}"),
            }
        }
    }

    /// `quit`, and a clean exit.
    fn quit(mut self) {
        writeln!(self.stdin, "quit").unwrap();
        self.stdin.flush().unwrap();
        let start = Instant::now();
        while start.elapsed() < PROCESS_LIMIT {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "demo-server exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("demo-server outlived {PROCESS_LIMIT:?} after quit");
    }
}

/// One demo-client run inside the namespace (secure, the default: a token over HTTP first);
/// returns its JSON summary.
fn play(ns: &Namespace, json: &Path) -> serde_json::Value {
    let server = format!("127.0.0.1:{PORT}");
    let token_url = format!("http://127.0.0.1:{HTTP_PORT}/connect");
    let mut child = ns
        .command(&client_bin())
        .args(["--server", &server, "--token-url", &token_url])
        .args(["--duration", "3", "--stats-interval", "0", "--json"])
        .arg(json)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start demo-client");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > PROCESS_LIMIT {
            let _ = child.kill();
            panic!("demo-client outlived {PROCESS_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(status.success(), "demo-client: {stderr}");
    let text = std::fs::read_to_string(json).unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    serde_json::from_str(&text).unwrap()
}

fn assert_played(j: &serde_json::Value, transport: &str) {
    let c = &j["clients"][0];
    assert_eq!(c["connected"], true, "{c}");
    assert_eq!(c["disconnects"], 0, "{c}");
    assert!(c["snapshots_received"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(c["transport_in_use"], transport, "{c}");
    assert_eq!(j["aggregate"]["transport_in_use"], transport, "{j}");
}

#[test]
#[ignore = "needs root, nftables and iproute2: creates a network namespace; .ci/run runs it"]
fn a_udp_block_sends_the_client_to_the_websocket_and_lifting_it_brings_udp_back() {
    let dir = std::env::temp_dir().join(format!("snapsync-fallback-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Built before the namespace exists, so a slow build holds nothing up inside it.
    let _ = server_bin();
    let ns = Namespace::new();
    let server = Server::start(&ns, &dir);

    ns.nft(BLOCK_UDP);
    let started = Instant::now();
    let blocked = play(&ns, &dir.join("blocked.json"));
    // The default fallback time (2 s) passed before the stream was tried.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_played(&blocked, "websocket");
    let dropped = blocked_packets(&ns);
    assert!(dropped > 0, "the block dropped the udp attempt's packets");

    ns.exec(&["nft", "delete", "table", "inet", "fallback"]);
    let open = play(&ns, &dir.join("open.json"));
    assert_played(&open, "udp");

    server.quit();
    let text = std::fs::read_to_string(dir.join("server.json")).unwrap();
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["websockets_opened"], 1, "{s}");
    assert_eq!(s["clients_peak"], 1, "{s}");
    assert_eq!(s["invalid_packets"], 0, "{s}");
    println!(
        "blocked: {} snapshots over a websocket ({dropped} udp packets dropped); open: {} over udp",
        blocked["clients"][0]["snapshots_received"], open["clients"][0]["snapshots_received"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
