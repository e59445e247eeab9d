//! `demo-client view` in a real browser: headless Chromium, driven over the Chrome DevTools
//! Protocol (a WebSocket), opens the page and checks what a visitor would see.
//!
//! `SNAPSYNC_VIEW_SCREENSHOT=PATH` saves the screenshot taken under the starting link (5 %
//! loss, 40 ms each way) there; by default it goes to the target directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on every wait.
const DEADLINE: Duration = Duration::from_secs(60);

/// Kills a child process when dropped (a failed assert must not leave a browser behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One page driven over the DevTools protocol (a flattened session on the browser's socket).
struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Page {
    async fn call_on(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .expect("send to the browser");
        let end = Instant::now() + DEADLINE;
        loop {
            let m = tokio::time::timeout_at(end.into(), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{method}: no answer"))
                .expect("the browser's socket is open")
                .expect("a message from the browser");
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).expect("JSON from the browser");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call_on(Some(&session), method, params).await
    }

    /// Evaluate an expression in the page and return its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Press the element with this id with the mouse, as a visitor would.
    async fn click(&mut self, id: &str) {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    async fn screenshot(&mut self, path: &PathBuf) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

/// Start `demo-client view` and return it with the URL it printed.
fn start_view() -> (Reaped, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_demo-client"))
        .args(["view", "--http", "127.0.0.1:0", "--duration", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start demo-client view");
    let stdout = child.stdout.take().unwrap();
    let child = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (child, url)
}

/// Start headless Chromium and return it with its DevTools WebSocket URL.
fn start_chromium(profile: &std::path::Path) -> (Reaped, String) {
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("chromium is installed (.ci/run installs Debian's)");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1150",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let child = Reaped(child);
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("chromium printed its DevTools URL")
            .unwrap();
        if let Some(rest) = line.strip_prefix("DevTools listening on ") {
            break rest.trim().to_string();
        }
    };
    // Keep reading its stderr, or a chatty browser would block on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// Numbers as the page shows them: "12.3 %" → 12.3; "–" → None.
fn number(v: &Value) -> Option<f64> {
    v.as_str()?.split_whitespace().next()?.parse().ok()
}

/// The shown value of `key` (a `.v-KEY` cell) for every stream, in page order.
const SHOWN: &str = "(key) => [...document.querySelectorAll('figure.stream')].map(f => { const c = f.querySelector('.v-' + key); return c ? c.textContent : null; })";

async fn shown(page: &mut Page, key: &str) -> Vec<Value> {
    page.eval(&format!("({SHOWN})('{key}')"))
        .await
        .as_array()
        .expect("an array")
        .clone()
}

/// Poll `check` every 100 ms until it holds or `within` passes; true if it held.
async fn within(page: &mut Page, within: Duration, expr: &str) -> bool {
    let end = Instant::now() + within;
    loop {
        if page.eval(expr).await == json!(true) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium: .ci/run installs it and runs it"]
async fn the_page_shows_every_transport_live_and_the_bad_preset_raises_the_loss() {
    let (_view, url) = start_view();
    let profile = std::env::temp_dir().join(format!("snapsync-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let (_browser, devtools) = start_chromium(&profile);
    let (ws, _) = tokio_tungstenite::connect_async(&devtools)
        .await
        .expect("connect to the DevTools socket");
    let mut page = Page {
        ws,
        session: String::new(),
        next_id: 0,
    };
    let target = page
        .call_on(None, "Target.createTarget", json!({ "url": "about:blank" }))
        .await;
    let attached = page
        .call_on(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await;
    page.session = attached["sessionId"].as_str().unwrap().to_string();
    page.call("Page.enable", json!({})).await;
    page.call("Page.navigate", json!({ "url": url })).await;

    // The page builds one canvas per stream from the hello: the truth and three transports.
    assert!(
        within(
            &mut page,
            Duration::from_secs(20),
            "document.querySelectorAll('figure.stream canvas').length === 4 && [...document.querySelectorAll('figure.stream .v-snaps')].every(c => Number(c.textContent) > 60)"
        )
        .await,
        "the page shows four streams with snapshots arriving"
    );
    let names = page
        .eval("[...document.querySelectorAll('figure.stream')].map(f => f.dataset.stream)")
        .await;
    assert_eq!(names, json!(["server", "udp", "udp-reliable", "tcp"]));

    // Let the figures fill their windows under the starting link (5 % loss, 40 ms), then
    // keep the picture.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Best effort: catch a moment when the stream is frozen behind a retransmission (its
    // canvas framed in red), as a visitor sees it every second or so.
    let frozen = within(
        &mut page,
        Duration::from_secs(5),
        "document.querySelector('[data-stream=\"udp-reliable\"] canvas').classList.contains('frozen')",
    )
    .await;
    println!("screenshot while udp-reliable is frozen: {frozen}");
    let path = std::env::var_os("SNAPSYNC_VIEW_SCREENSHOT").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("view.png"),
        PathBuf::from,
    );
    page.screenshot(&path).await;

    // Every canvas changes between two moments (a short digest of its pixels).
    let pixels = "[...document.querySelectorAll('figure.stream canvas')].map(c => { const d = c.toDataURL(); let h = 0; for (let i = 0; i < d.length; i++) h = (h * 31 + d.charCodeAt(i)) | 0; return h; })";
    println!(
        "playback: {}",
        page.eval(
            "JSON.stringify([snapsyncView.playback(), snapsyncView.offset(), performance.now()])"
        )
        .await
    );
    // A busy machine may hold one stream back for a moment (its view server shares the
    // cores), so each canvas is given up to ten seconds to change, sampled every 100 ms;
    // a canvas that stands still that long is a page that stopped drawing.
    page.eval(&format!("window.firstPixels = {pixels}; window.changedPixels = window.firstPixels.map(() => false); true"))
        .await;
    let all_changed = format!(
        "(() => {{ const now = {pixels}; window.changedPixels = now.map((h, i) => window.changedPixels[i] || h !== window.firstPixels[i]); return window.changedPixels.every(Boolean); }})()"
    );
    let changed = within(&mut page, Duration::from_secs(10), &all_changed).await;
    assert!(
        changed,
        "a canvas did not change in 10 s (changed: {}); playback {}",
        page.eval("JSON.stringify(window.changedPixels)").await,
        page.eval(
            "JSON.stringify([snapsyncView.playback(), snapsyncView.offset(), performance.now()])"
        )
        .await
    );

    // The numbers update: every transport's snapshot count and the server's tick grow
    // (again within ten seconds, read every 250 ms).
    let snaps = shown(&mut page, "snaps").await;
    let ticks = shown(&mut page, "tick").await;
    let end = Instant::now() + Duration::from_secs(10);
    let (snaps_later, ticks_later) = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let snaps_later = shown(&mut page, "snaps").await;
        let ticks_later = shown(&mut page, "tick").await;
        let grew = snaps
            .iter()
            .zip(&snaps_later)
            .skip(1)
            .all(|(a, b)| number(b) > number(a))
            && number(&ticks_later[0]) > number(&ticks[0]);
        if grew || Instant::now() >= end {
            break (snaps_later, ticks_later);
        }
    };
    for (i, (a, b)) in snaps.iter().zip(&snaps_later).enumerate().skip(1) {
        assert!(number(b) > number(a), "stream {i}: snapshots {a} then {b}");
    }
    assert!(
        number(&ticks_later[0]) > number(&ticks[0]),
        "ticks {ticks:?} then {ticks_later:?}"
    );
    println!(
        "shown: gaps {:?}, staleness {:?}, loss {:?}",
        shown(&mut page, "gap").await,
        shown(&mut page, "stale").await,
        shown(&mut page, "loss").await
    );

    // A clean link first (`lan`: no loss), until the shown loss has gone to zero ...
    page.click("preset-lan").await;
    let zero = "(() => { const l = document.querySelector('[data-stream=udp] .v-loss').textContent; return parseFloat(l) === 0; })()";
    assert!(
        within(&mut page, Duration::from_secs(10), zero).await,
        "the shown loss falls to 0 on lan"
    );
    // ... then `bad`: the shown loss rises within two seconds.
    page.click("preset-bad").await;
    let pressed = Instant::now();
    let raised = "(() => { const l = document.querySelector('[data-stream=udp] .v-loss').textContent; return parseFloat(l) > 0; })()";
    let rose = within(&mut page, Duration::from_secs(2), raised).await;
    let took = pressed.elapsed();
    let loss = shown(&mut page, "loss").await;
    assert!(
        rose,
        "the shown loss did not rise within 2 s of pressing bad: {loss:?}"
    );
    println!("pressing bad raised the shown loss in {took:?}: {loss:?}");
    let link = page
        .eval("document.getElementById('link').textContent")
        .await;
    assert!(
        link.as_str().is_some_and(|l| l.contains("loss 10%")),
        "{link}"
    );
    page.screenshot(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("view-bad.png"))
        .await;
    let _ = std::fs::remove_dir_all(&profile);
}
