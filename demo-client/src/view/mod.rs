//! `demo-client view`: the same game through every transport, side by side in a browser.
//!
//! Like `compare`, it hosts one server per transport in-process and plays one client on
//! each ([`live`]); unlike it, it serves a page ([`http`]) that draws what every client
//! shows at its render time, beside the server's truth, with live figures and the link's
//! controls.
//!
//! The game loops never wait for a browser. Each client publishes its latest frame into a
//! `watch` slot (latest value only); each viewer has its own task that reads the slots
//! and a bounded queue in front of its socket: when the queue is full the frame is
//! dropped for that viewer and counted, and the game goes on.
//!
//! The page's controls send the server console's own commands
//! ([`ConsoleCommand`](demo_server::cli::ConsoleCommand)) to every hosted server: the same
//! code path as typing them on `demo-server`'s console.

mod frame;
mod http;
mod live;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use demo_server::cli::{ConsoleCommand, ConsoleConditioner, Transport, describe};
use demo_server::scene::SceneKind;
use demo_server::server::{self, Control, ServerOptions, TruthFrame};
use serde::Serialize;
use snapsync::conditioner::{ConditionerConfig, ConditionerStats};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use frame::{Drawn, FrameHeader};
use live::{LiveFigures, LiveOptions};

/// Most browsers watching at once; more get HTTP 503.
pub(crate) const MAX_VIEWERS: usize = 32;
/// Messages waiting for one viewer's socket; beyond, frames are dropped for that viewer.
/// About an eighth of a second of frames for four streams at 60 Hz.
pub(crate) const VIEWER_QUEUE_MESSAGES: usize = 32;
/// A viewer whose socket took nothing for this long while frames waited is closed.
pub(crate) const VIEWER_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long stopping waits for each task before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What `view` runs.
#[derive(Debug, Clone)]
pub(crate) struct ViewOptions {
    /// Where the page is served.
    pub(crate) http: SocketAddr,
    /// Ticks (and snapshots) per second.
    pub(crate) tick_rate: f64,
    /// Scene.
    pub(crate) scene: SceneKind,
    /// The simulated link, once per direction, for the UDP transports.
    pub(crate) conditioner: ConditionerConfig,
    /// Seed of the scene, the link and the bots.
    pub(crate) seed: u64,
    /// Predict each client's own entity.
    pub(crate) predict: bool,
    /// Transports, in the page's order.
    pub(crate) transports: Vec<Transport>,
    /// Secure mode (tokens minted in-process with a fresh key) or plain.
    pub(crate) secure: bool,
}

/// One viewer's counters.
#[derive(Debug, Default)]
pub(crate) struct ViewerCounters {
    /// Messages handed to the socket.
    pub(crate) sent: AtomicU64,
    /// Frames dropped because the socket did not take them in time.
    pub(crate) dropped: AtomicU64,
}

/// The browsers watching.
#[derive(Debug, Default)]
pub(crate) struct Viewers {
    next_id: AtomicU64,
    live: Mutex<BTreeMap<u64, Arc<ViewerCounters>>>,
    /// Frames dropped for viewers that have left.
    dropped_by_gone: AtomicU64,
}

impl Viewers {
    /// Register a viewer, unless [`MAX_VIEWERS`] are watching.
    fn join(&self) -> Option<(u64, Arc<ViewerCounters>)> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.len() >= MAX_VIEWERS {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(ViewerCounters::default());
        live.insert(id, c.clone());
        Some((id, c))
    }

    fn leave(&self, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = live.remove(&id) {
            self.dropped_by_gone
                .fetch_add(c.dropped.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Viewers now, and frames dropped for all viewers ever.
    pub(crate) fn totals(&self) -> (usize, u64) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let dropped: u64 = live
            .values()
            .map(|c| c.dropped.load(Ordering::Relaxed))
            .sum();
        (
            live.len(),
            dropped + self.dropped_by_gone.load(Ordering::Relaxed),
        )
    }

    /// Each viewer's counters, by id.
    #[cfg(test)]
    pub(crate) fn each(&self) -> Vec<(u64, Arc<ViewerCounters>)> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().map(|(id, c)| (*id, c.clone())).collect()
    }
}

/// Why a control did not take.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ControlError {
    /// Not a command, or not one the page may send.
    #[error("{0}")]
    Refused(String),
    /// A server's queue is full or it has stopped.
    #[error("the servers are busy; try again")]
    Busy,
}

/// What the HTTP side shares with everything else.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The first message to every viewer: scene and streams.
    pub(crate) hello: Utf8Bytes,
    /// Latest frame per stream: 0 the truth, then one per transport.
    pub(crate) frames: Vec<watch::Receiver<Bytes>>,
    /// Latest figures, as JSON.
    pub(crate) stats: watch::Receiver<Utf8Bytes>,
    /// Each hosted server's world after each tick, in transport order (for the tests; the
    /// page's feeds each hold their own receiver).
    #[cfg(test)]
    pub(crate) truth: Vec<watch::Receiver<TruthFrame>>,
    /// The browsers watching.
    pub(crate) viewers: Viewers,
    /// Becomes true when the view stops.
    pub(crate) shutdown: watch::Receiver<bool>,
    controls: Vec<mpsc::Sender<Control>>,
    /// The console's state as every UDP server has it (they all take the same commands).
    conditioner: Mutex<ConsoleConditioner>,
}

impl Hub {
    /// Apply one console command to every hosted server (the page's controls).
    pub(crate) fn control(&self, line: &str) -> Result<String, ControlError> {
        let cmd: ConsoleCommand = line.parse().map_err(ControlError::Refused)?;
        if matches!(
            cmd,
            ConsoleCommand::Stats | ConsoleCommand::Help | ConsoleCommand::Quit
        ) {
            return Err(ControlError::Refused(format!(
                "`{}`: the page changes the link only",
                line.trim()
            )));
        }
        let described = {
            let mut c = self.conditioner.lock().unwrap_or_else(|e| e.into_inner());
            // The servers run the same check on the same state: refused here, refused there.
            match cmd.apply(&mut c) {
                Some(Ok(())) => describe(c.active()),
                Some(Err(e)) => return Err(ControlError::Refused(e)),
                None => unreachable!("stats, help and quit were refused above"),
            }
        };
        for tx in &self.controls {
            tx.try_send(Control::Console(cmd.clone()))
                .map_err(|_| ControlError::Busy)?;
        }
        Ok(described)
    }

    fn conditioner(&self) -> ConditionerConfig {
        let c = self.conditioner.lock().unwrap_or_else(|e| e.into_inner());
        c.active().clone()
    }
}

/// A running view.
#[derive(Debug)]
pub(crate) struct ViewHandle {
    /// Where the page is.
    pub(crate) addr: SocketAddr,
    /// Shared state.
    pub(crate) hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    servers: Vec<(
        Transport,
        JoinHandle<Result<server::ServerSummary, server::ServerError>>,
    )>,
    clients: Vec<JoinHandle<()>>,
    helpers: Vec<JoinHandle<()>>,
    http: JoinHandle<()>,
}

#[derive(Debug, Serialize)]
struct StreamMeta {
    name: String,
    /// `truth`, or the transport.
    kind: &'static str,
    conditioned: bool,
}

#[derive(Debug, Serialize)]
struct Hello<'a> {
    scene: &'a str,
    tick_rate: f64,
    predict: bool,
    streams: Vec<StreamMeta>,
}

/// Start everything: the HTTP listener first (a port in use fails before anything runs),
/// then the servers, the clients and the page's feeds.
pub(crate) async fn start(opts: ViewOptions) -> Result<ViewHandle, String> {
    let listener = tokio::net::TcpListener::bind(opts.http)
        .await
        .map_err(|e| format!("--http {}: cannot listen: {e}", opts.http))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("--http {}: {e}", opts.http))?;
    let epoch = Instant::now();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let key = snapsync::netcode::generate_key();
    let mut servers = Vec::new();
    let mut controls = Vec::new();
    let mut truth = Vec::new();
    let mut addrs = Vec::new();
    for &transport in &opts.transports {
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (truth_tx, truth_rx) = watch::channel(TruthFrame::default());
        let server_opts = ServerOptions {
            bind: "127.0.0.1:0".parse().expect("literal address"),
            tick_rate: opts.tick_rate,
            send_rate: opts.tick_rate,
            scene: opts.scene,
            transport,
            stats_interval: None,
            // The kernel's TCP cannot be conditioned from inside the process.
            conditioner: if transport == Transport::Tcp {
                ConditionerConfig::off()
            } else {
                opts.conditioner.clone()
            },
            seed: opts.seed,
            quiet: true,
            truth: Some(Arc::new(truth_tx)),
            security: if opts.secure {
                demo_server::server::ServerSecurity::Secure { key, http: None }
            } else {
                demo_server::server::ServerSecurity::Insecure
            },
            // The view's clients join over the transport they show; none falls back.
            websocket: false,
            ..ServerOptions::default()
        };
        servers.push((
            transport,
            tokio::spawn(server::run(server_opts, ctl_rx, Some(ready_tx))),
        ));
        controls.push(ctl_tx);
        truth.push(truth_rx);
        addrs.push(ready_rx);
    }
    let mut server_addrs = Vec::new();
    for (rx, &transport) in addrs.into_iter().zip(&opts.transports) {
        match rx.await {
            Ok(a) => server_addrs.push(a),
            Err(_) => {
                // The server ended before it listened: its error says why.
                let (_, handle) = servers.remove(server_addrs.len());
                let why = match handle.await {
                    Ok(Err(e)) => e.to_string(),
                    _ => "stopped".into(),
                };
                return Err(format!("{transport} server failed to start: {why}"));
            }
        }
    }

    let (truth_frames_tx, truth_frames_rx) = watch::channel(Bytes::new());
    let mut frames = vec![truth_frames_rx];
    let mut figures = Vec::new();
    let mut clients = Vec::new();
    for (i, (&transport, &server)) in opts.transports.iter().zip(&server_addrs).enumerate() {
        let (frames_tx, frames_rx) = watch::channel(Bytes::new());
        let (figures_tx, figures_rx) = watch::channel(LiveFigures::default());
        frames.push(frames_rx);
        figures.push(figures_rx);
        clients.push(tokio::spawn(live::run(LiveOptions {
            index: (i + 1) as u8,
            server,
            transport,
            seed: opts.seed.wrapping_add(1),
            predict: opts.predict,
            epoch,
            frames: frames_tx,
            figures: figures_tx,
            shutdown: shutdown_rx.clone(),
            mint: opts
                .secure
                .then(|| Arc::new(demo_server::tokens::TokenMint::new(key, server))),
        })));
    }

    let (stats_tx, stats_rx) = watch::channel(Utf8Bytes::from_static("{}"));
    let streams = std::iter::once(StreamMeta {
        name: "server".into(),
        kind: "truth",
        conditioned: false,
    })
    .chain(opts.transports.iter().map(|t| StreamMeta {
        name: t.to_string(),
        kind: t.name(),
        conditioned: *t != Transport::Tcp,
    }))
    .collect();
    let hello = serde_json::to_string(&serde_json::json!({
        "hello": Hello {
            scene: opts.scene.as_str(),
            tick_rate: opts.tick_rate,
            predict: opts.predict,
            streams,
        }
    }))
    .map_err(|e| e.to_string())?;
    let hub = Arc::new(Hub {
        hello: hello.into(),
        frames,
        stats: stats_rx,
        #[cfg(test)]
        truth: truth.clone(),
        viewers: Viewers::default(),
        shutdown: shutdown_rx.clone(),
        controls,
        conditioner: Mutex::new(ConsoleConditioner::new(opts.conditioner.clone())),
    });

    let mut helpers = Vec::new();
    let mut windows = Vec::new();
    let mut truth_frames = Some(truth_frames_tx);
    for rx in &truth {
        let w = Arc::new(Mutex::new(ServerWindow::default()));
        windows.push(w.clone());
        helpers.push(tokio::spawn(observe_server(
            rx.clone(),
            truth_frames.take(),
            w,
            epoch,
            shutdown_rx.clone(),
        )));
    }
    helpers.push(tokio::spawn(publish_stats(
        hub.clone(),
        opts.transports.clone(),
        windows,
        figures,
        stats_tx,
        epoch,
    )));
    let http = tokio::spawn(http::serve(listener, hub.clone()));
    Ok(ViewHandle {
        addr,
        hub,
        shutdown: shutdown_tx,
        servers,
        clients,
        helpers,
        http,
    })
}

impl ViewHandle {
    /// Stop: the clients leave, then the servers shut down, then the page.
    pub(crate) async fn stop(self) -> Result<(), String> {
        let _ = self.shutdown.send(true);
        for c in self.clients {
            let _ = tokio::time::timeout(STOP_TIMEOUT, c).await;
        }
        for tx in &self.hub.controls {
            let _ = tx.send(Control::Shutdown).await;
        }
        let mut first_error = None;
        for (transport, s) in self.servers {
            match tokio::time::timeout(STOP_TIMEOUT, s).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => {
                    first_error.get_or_insert(format!("{transport} server: {e}"));
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(format!("{transport} server task failed: {e}"));
                }
                Err(_) => {
                    first_error.get_or_insert(format!("{transport} server did not stop"));
                }
            }
        }
        for h in self.helpers {
            h.abort();
        }
        let _ = tokio::time::timeout(STOP_TIMEOUT, self.http).await;
        first_error.map_or(Ok(()), Err)
    }
}

/// Follow one server's ticks: record what each cost and what the link did, and (for the
/// first server) encode its world for the page.
async fn observe_server(
    mut truth: watch::Receiver<TruthFrame>,
    frames: Option<watch::Sender<Bytes>>,
    window: Arc<Mutex<ServerWindow>>,
    epoch: Instant,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut bodies = Vec::new();
    loop {
        tokio::select! {
            r = truth.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
        // Copy out and let go at once: the server waits for the slot only that long.
        let header = {
            let t = truth.borrow_and_update();
            window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sample(Instant::now(), &t);
            if frames.is_some() {
                bodies.clear();
                bodies.extend_from_slice(&t.bodies);
            }
            FrameHeader {
                stream: 0,
                t_ms: t.at.map_or(0.0, |at| {
                    at.saturating_duration_since(epoch).as_secs_f64() * 1e3
                }),
                figure_ms: Some(t.tick_cost.as_secs_f32() * 1e3),
                tick: Some(t.tick),
                owned: None,
                connected: true,
            }
        };
        if let Some(frames) = &frames {
            let drawn = bodies.iter().map(|b| Drawn {
                id: b.id,
                position: b.position,
                rotation: b.rotation,
                half_extent: b.half_extent,
            });
            frames.send_replace(frame::encode(&header, drawn));
        }
    }
}

#[derive(Debug, Serialize)]
struct ConditionerJson {
    text: String,
    enabled: bool,
    loss_pct: f64,
    latency_ms: f64,
    jitter_ms: f64,
}

#[derive(Debug, Serialize)]
struct StreamJson {
    name: String,
    conditioned: bool,
    /// Share of this transport's datagrams the simulated link dropped over the rate
    /// window, both directions; `None` for kernel TCP.
    link_loss_pct: Option<f64>,
    /// The server's tick and what ticks cost it lately.
    server_tick: u32,
    tick_cost_p99_us: f64,
    #[serde(flatten)]
    client: LiveFigures,
}

#[derive(Debug, Serialize)]
struct StatsJson {
    t_s: f64,
    conditioner: ConditionerJson,
    viewers: usize,
    frames_dropped: u64,
    streams: Vec<StreamJson>,
}

/// Recent link counters and tick costs of one server.
#[derive(Debug, Default)]
struct ServerWindow {
    link: VecDeque<(Instant, ConditionerStats, ConditionerStats)>,
    costs: VecDeque<(Instant, Duration)>,
    last_tick: u32,
}

impl ServerWindow {
    fn sample(&mut self, now: Instant, t: &TruthFrame) {
        if t.tick == self.last_tick {
            return;
        }
        self.last_tick = t.tick;
        self.costs.push_back((now, t.tick_cost));
        if self
            .link
            .back()
            .is_none_or(|(at, _, _)| now.saturating_duration_since(*at) >= live::FIGURES_INTERVAL)
        {
            self.link.push_back((now, t.link_in, t.link_out));
        }
        while self
            .link
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > live::RATE_WINDOW)
        {
            self.link.pop_front();
        }
        while self
            .costs
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > live::PERCENTILE_WINDOW)
        {
            self.costs.pop_front();
        }
    }

    fn link_loss_pct(&self) -> f64 {
        let (Some((_, i0, o0)), Some((_, i1, o1))) = (self.link.front(), self.link.back()) else {
            return 0.0;
        };
        let pushed = (i1.pushed - i0.pushed) + (o1.pushed - o0.pushed);
        let dropped = (i1.dropped - i0.dropped) + (o1.dropped - o0.dropped);
        if pushed == 0 {
            0.0
        } else {
            dropped as f64 * 100.0 / pushed as f64
        }
    }

    fn tick_cost_p99_us(&self) -> f64 {
        let mut v: Vec<Duration> = self.costs.iter().map(|c| c.1).collect();
        v.sort();
        v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
}

/// Gather every stream's figures into one JSON message, [`live::FIGURES_INTERVAL`] apart.
async fn publish_stats(
    hub: Arc<Hub>,
    transports: Vec<Transport>,
    windows: Vec<Arc<Mutex<ServerWindow>>>,
    figures: Vec<watch::Receiver<LiveFigures>>,
    stats: watch::Sender<Utf8Bytes>,
    epoch: Instant,
) {
    let mut every = tokio::time::interval(live::FIGURES_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        let now = Instant::now();
        let c = hub.conditioner();
        let (viewers, frames_dropped) = hub.viewers.totals();
        let mut streams = Vec::new();
        for (i, &t) in transports.iter().enumerate() {
            let w = windows[i].lock().unwrap_or_else(|e| e.into_inner());
            let conditioned = t != Transport::Tcp;
            streams.push(StreamJson {
                name: t.to_string(),
                conditioned,
                link_loss_pct: conditioned.then(|| w.link_loss_pct()),
                server_tick: w.last_tick,
                tick_cost_p99_us: w.tick_cost_p99_us(),
                client: figures[i].borrow().clone(),
            });
        }
        let json = StatsJson {
            t_s: now.saturating_duration_since(epoch).as_secs_f64(),
            conditioner: ConditionerJson {
                text: describe(&c),
                enabled: c.enabled,
                loss_pct: c.loss_pct,
                latency_ms: c.latency.as_secs_f64() * 1e3,
                jitter_ms: c.jitter.as_secs_f64() * 1e3,
            },
            viewers,
            frames_dropped,
            streams,
        };
        if let Ok(text) = serde_json::to_string(&json) {
            stats.send_replace(text.into());
        }
    }
}

/// Run the view until `duration` (zero: until Ctrl-C).
pub(crate) async fn run(opts: ViewOptions, duration: Duration) -> Result<(), String> {
    let view = start(opts.clone()).await?;
    println!(
        "demo-client view: open http://{}/ in a browser ({} at {} Hz, {} per direction on the UDP transports; tcp is kernel TCP, unconditioned){}",
        view.addr,
        opts.scene,
        opts.tick_rate,
        describe(&opts.conditioner),
        if duration.is_zero() {
            "; Ctrl-C stops".to_string()
        } else {
            format!("; stops after {} s", duration.as_secs_f64())
        }
    );
    let stopped_by = if duration.is_zero() {
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        "Ctrl-C"
    } else {
        tokio::select! {
            _ = tokio::time::sleep(duration) => "--duration",
            r = tokio::signal::ctrl_c() => { r.map_err(|e| e.to_string())?; "Ctrl-C" }
        }
    };
    let (_, dropped) = view.hub.viewers.totals();
    view.stop().await?;
    println!(
        "demo-client view: stopped ({stopped_by}); frames dropped for slow viewers: {dropped}"
    );
    Ok(())
}
