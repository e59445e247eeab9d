//! One transport's client, played live for the page: a [`GameClient`] on a socket (or a TCP
//! stream), its view published after every frame, its figures over a sliding window.
//!
//! Everything it hands out goes into `watch` slots (latest value only), so nothing a viewer
//! does can hold up this loop.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use demo_server::cli::Transport;
use demo_server::player::GameClient;
use demo_server::protocol::unix_micros_now;
use demo_server::scene::PlayerInput;
use demo_server::server::header_bytes;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use snapsync::net::ReplicationClient;
use snapsync::replication::{self, ClientEvent};
use tokio::sync::watch;

use super::frame::{self, Drawn, FrameHeader};

/// Client frames per second: the view is sampled at a display's rate whatever the tick
/// rate, so interpolation shows at low tick rates too.
pub(crate) const FRAME_RATE_HZ: f64 = 60.0;
/// How often the figures are recomputed.
pub(crate) const FIGURES_INTERVAL: Duration = Duration::from_millis(250);
/// Percentiles cover this much of the recent past.
pub(crate) const PERCENTILE_WINDOW: Duration = Duration::from_secs(5);
/// Loss and bandwidth cover this much (short, so a change of the link shows at once).
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(2);
/// The update gaps handed to the page's plot cover this much.
pub(crate) const PLOT_WINDOW: Duration = Duration::from_secs(10);
/// Wait before joining again after a session ended or a join failed.
const REJOIN_DELAY: Duration = Duration::from_secs(1);

/// What one live client needs.
#[derive(Debug)]
pub(crate) struct LiveOptions {
    /// Stream index on the page.
    pub(crate) index: u8,
    /// The hosted server of this transport.
    pub(crate) server: SocketAddr,
    /// Transport.
    pub(crate) transport: Transport,
    /// Seed of the bot.
    pub(crate) seed: u64,
    /// Predict the own entity.
    pub(crate) predict: bool,
    /// Time zero of every frame's timestamp.
    pub(crate) epoch: Instant,
    /// Latest frame.
    pub(crate) frames: watch::Sender<Bytes>,
    /// Latest figures.
    pub(crate) figures: watch::Sender<LiveFigures>,
    /// Becomes true when the view stops.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Secure mode: tokens for the hosted server, minted in-process.
    pub(crate) mint: Option<std::sync::Arc<demo_server::tokens::TokenMint>>,
}

/// One transport's live figures, as the page shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct LiveFigures {
    /// A session is up.
    pub(crate) connected: bool,
    /// Sessions started (more than one: the link was bad enough to end one).
    pub(crate) sessions: u32,
    /// Newer snapshots received in this session.
    pub(crate) snapshots: u64,
    /// Update gap p50 over the percentile window, ms.
    pub(crate) gap_p50_ms: f64,
    /// Update gap p99 over the percentile window, ms.
    pub(crate) gap_p99_ms: f64,
    /// Staleness p50 over the percentile window, ms.
    pub(crate) stale_p50_ms: f64,
    /// Staleness p99 over the percentile window, ms.
    pub(crate) stale_p99_ms: f64,
    /// Received kbit/s over the rate window, headers included.
    pub(crate) kbps_in: f64,
    /// The client's own packets lost over the rate window (from acks), percent.
    pub(crate) client_loss_pct: f64,
    /// Interpolation underruns in this session.
    pub(crate) underruns: u64,
    /// Underruns within the percentile window.
    pub(crate) underruns_recent: u64,
    /// `[seconds since the view started, gap ms]` over the plot window, oldest first.
    pub(crate) gaps: Vec<[f32; 2]>,
}

/// Cumulative counters sampled at each figures update.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    bytes_in: u64,
    packets_in: u64,
    acked: u64,
    lost: u64,
    underruns: u64,
}

/// Recent samples of one session.
#[derive(Debug, Default)]
struct Window {
    gaps: VecDeque<(Instant, Duration)>,
    staleness: VecDeque<(Instant, Duration)>,
    counters: VecDeque<(Instant, Counters)>,
}

fn prune<T>(q: &mut VecDeque<(Instant, T)>, now: Instant, keep: Duration) {
    while q
        .front()
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) > keep)
    {
        q.pop_front();
    }
}

fn percentile_ms(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn p50_p99(samples: impl Iterator<Item = Duration>) -> (f64, f64) {
    let mut v: Vec<f64> = samples.map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    (percentile_ms(&v, 0.50), percentile_ms(&v, 0.99))
}

impl Window {
    fn figures(&mut self, now: Instant, epoch: Instant, header: u64) -> LiveFigures {
        prune(&mut self.gaps, now, PLOT_WINDOW);
        prune(&mut self.staleness, now, PERCENTILE_WINDOW);
        prune(&mut self.counters, now, PERCENTILE_WINDOW);
        let recent = |t: &Instant| now.saturating_duration_since(*t) <= PERCENTILE_WINDOW;
        let (gap_p50_ms, gap_p99_ms) =
            p50_p99(self.gaps.iter().filter(|(t, _)| recent(t)).map(|g| g.1));
        let (stale_p50_ms, stale_p99_ms) = p50_p99(self.staleness.iter().map(|s| s.1));
        let mut f = LiveFigures {
            gap_p50_ms,
            gap_p99_ms,
            stale_p50_ms,
            stale_p99_ms,
            gaps: self
                .gaps
                .iter()
                // Rounded to 1 ms and 0.1 ms: the JSON stays short.
                .map(|(t, g)| {
                    [
                        (t.saturating_duration_since(epoch).as_secs_f32() * 1e3).round() / 1e3,
                        (g.as_secs_f32() * 1e4).round() / 10.0,
                    ]
                })
                .collect(),
            ..LiveFigures::default()
        };
        if let (Some((t0, c0)), Some((t1, c1))) = (
            self.counters
                .iter()
                .find(|(t, _)| now.saturating_duration_since(*t) <= RATE_WINDOW),
            self.counters.back(),
        ) {
            let secs = t1.saturating_duration_since(*t0).as_secs_f64();
            if secs > 0.0 {
                let bytes = (c1.bytes_in - c0.bytes_in) + (c1.packets_in - c0.packets_in) * header;
                f.kbps_in = bytes as f64 * 8.0 / 1000.0 / secs;
            }
            let resolved = (c1.acked - c0.acked) + (c1.lost - c0.lost);
            if resolved > 0 {
                f.client_loss_pct = (c1.lost - c0.lost) as f64 * 100.0 / resolved as f64;
            }
        }
        if let (Some((_, first)), Some((_, last))) = (self.counters.front(), self.counters.back()) {
            f.underruns = last.underruns;
            f.underruns_recent = last.underruns - first.underruns;
        }
        f
    }
}

async fn join(opts: &LiveOptions) -> Result<ReplicationClient<PlayerInput>, String> {
    let mut config = replication::ClientConfig::default();
    if let Some(mint) = &opts.mint {
        let token = mint.mint().map_err(|e| e.to_string())?;
        config.client.security = snapsync::connection::ClientSecurity::Secure { token };
    }
    let joined = match opts.transport {
        // The link is simulated once, at the server, as `compare` does.
        Transport::Udp | Transport::UdpReliable => {
            ReplicationClient::join(opts.server, config, None).await
        }
        Transport::Tcp => ReplicationClient::join_stream(opts.server, config).await,
    };
    joined.map_err(|e| e.to_string())
}

/// Play until the view stops, joining again whenever a session ends.
pub(crate) async fn run(opts: LiveOptions) {
    let mut shutdown = opts.shutdown.clone();
    let mut sessions = 0u32;
    while !*shutdown.borrow() {
        let net = tokio::select! {
            joined = join(&opts) => joined,
            _ = shutdown.changed() => break,
        };
        match net {
            Ok(net) => {
                sessions += 1;
                play(&opts, net, sessions).await;
            }
            Err(e) => tracing::warn!(transport = %opts.transport, "view: cannot join: {e}"),
        }
        opts.figures.send_modify(|f| f.connected = false);
        publish_empty(&opts);
        tokio::select! {
            _ = tokio::time::sleep(REJOIN_DELAY) => {}
            _ = shutdown.changed() => break,
        }
    }
}

fn publish_empty(opts: &LiveOptions) {
    let header = FrameHeader {
        stream: opts.index,
        t_ms: opts.epoch.elapsed().as_secs_f64() * 1e3,
        figure_ms: None,
        tick: None,
        owned: None,
        connected: false,
    };
    opts.frames
        .send_replace(frame::encode(&header, std::iter::empty()));
}

/// One session: frames at [`FRAME_RATE_HZ`] until it ends or the view stops.
async fn play(opts: &LiveOptions, mut net: ReplicationClient<PlayerInput>, session: u32) {
    let mut game = GameClient::new(opts.seed.wrapping_add(u64::from(session)), opts.predict);
    let mut window = Window::default();
    let period = Duration::from_secs_f64(1.0 / FRAME_RATE_HZ);
    let start = tokio::time::Instant::now();
    let mut next_figures = start + FIGURES_INTERVAL;
    let mut last_arrival: Option<Instant> = None;
    // As in `session`: frames at a random phase of each period, so staleness is not
    // sampled at one phase of the server's tick.
    let mut phase = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5EED);
    let header = header_bytes(opts.transport);
    let mut n = 0u32;
    loop {
        n += 1;
        let next = start + period.mul_f64(f64::from(n) + phase.random_range(0.0..1.0));
        if net.drive_until(next).await.is_err() {
            return;
        }
        while let Some(e) = net.poll_event() {
            if let ClientEvent::Snapshot { received_at, .. } = &e {
                if let Some(prev) = last_arrival {
                    window
                        .gaps
                        .push_back((*received_at, received_at.saturating_duration_since(prev)));
                }
                last_arrival = Some(*received_at);
            }
            game.on_event(net.endpoint_mut(), e);
        }
        if game.closed().is_some() {
            return;
        }
        let now = Instant::now();
        game.on_frame(net.endpoint_mut(), now, unix_micros_now());
        net.flush();
        if let Some(s) = game.last_staleness() {
            window.staleness.push_back((now, s));
        }
        let view = game.last_view();
        let client = net.endpoint();
        let frame_header = FrameHeader {
            stream: opts.index,
            t_ms: now.saturating_duration_since(opts.epoch).as_secs_f64() * 1e3,
            figure_ms: game.last_staleness().map(|s| s.as_secs_f32() * 1e3),
            tick: client.newest_tick().map(|t| t.0),
            owned: view.owned.map(|e| e.0),
            connected: game.is_ready(),
        };
        let drawn = view.entities.iter().map(|(id, t)| Drawn {
            id: id.0,
            position: t.position,
            rotation: t.rotation,
            half_extent: 0.0,
        });
        opts.frames
            .send_replace(frame::encode(&frame_header, drawn));

        if tokio::time::Instant::now() >= next_figures {
            next_figures += FIGURES_INTERVAL;
            let link = client.connection().connection_stats().map(|s| s.link);
            window.counters.push_back((
                now,
                Counters {
                    bytes_in: link.map_or(0, |l| l.bytes_received),
                    packets_in: link.map_or(0, |l| l.packets_received),
                    acked: link.map_or(0, |l| l.packets_acked),
                    lost: link.map_or(0, |l| l.packets_lost),
                    underruns: client.interpolation().map_or(0, |i| i.stats().underruns),
                },
            ));
            let mut f = window.figures(now, opts.epoch, header);
            f.connected = game.is_ready();
            f.sessions = session;
            f.snapshots = client.stats().snapshots_received;
            opts.figures.send_replace(f);
        }
        if *opts.shutdown.borrow() {
            let _ = net.close().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_figures_cover_their_windows() {
        let t0 = Instant::now();
        let epoch = t0;
        let mut w = Window::default();
        // 10 s of 60 Hz gaps, one 100 ms stall 8 s ago (outside the percentile window, inside
        // the plot's).
        for i in 0..600u32 {
            let t = t0 + Duration::from_millis(u64::from(i) * 50 / 3);
            let gap = if i == 120 { 100 } else { 17 };
            w.gaps.push_back((t, Duration::from_millis(gap)));
        }
        let now = t0 + Duration::from_secs(10);
        for s in 0..=10u64 {
            let c = Counters {
                bytes_in: s * 1000,
                packets_in: s * 10,
                acked: s * 90,
                lost: s * 10,
                underruns: s / 4,
            };
            w.counters.push_back((t0 + Duration::from_secs(s), c));
        }
        let f = w.figures(now, epoch, 28);
        assert_eq!(f.gap_p50_ms, 17.0);
        assert_eq!(f.gap_p99_ms, 17.0, "the stall is older than the window");
        assert!(f.gaps.iter().any(|g| g[1] == 100.0), "but still plotted");
        // 1000 B + 10 × 28 B per second.
        assert!((f.kbps_in - 10.24).abs() < 1e-9, "{}", f.kbps_in);
        assert!((f.client_loss_pct - 10.0).abs() < 1e-9);
        assert_eq!(f.underruns, 2);
        assert_eq!(f.underruns_recent, 1);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
        assert_eq!(percentile_ms(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
