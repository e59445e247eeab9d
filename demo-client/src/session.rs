//! One client session over any transport: a replication client on a socket (or a TCP
//! stream), a `GameClient` playing it at the frame rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use demo_server::cli::Transport;
use demo_server::player::GameClient;
use demo_server::protocol::unix_micros_now;
use demo_server::scene::PlayerInput;
use demo_server::server::header_bytes;
use rand::{Rng, SeedableRng};
use snapsync::conditioner::ConditionerConfig;
use snapsync::connection::{ClientSecurity, DisconnectReason};
use snapsync::net::{ConnectError, Fallback, ReplicationClient, TransportInUse};
use snapsync::packet::DisconnectReasonCode;
use snapsync::replication::{self, CloseReason};

use crate::report::ClientReport;

/// How one session runs.
#[derive(Debug, Clone)]
pub(crate) struct SessionOptions {
    /// Server address.
    pub(crate) server: SocketAddr,
    /// Transport.
    pub(crate) transport: Transport,
    /// How long to play.
    pub(crate) duration: Duration,
    /// Client frames per second.
    pub(crate) frame_rate: f64,
    /// Link simulation for what this client sends and receives (UDP transports).
    pub(crate) conditioner: ConditionerConfig,
    /// Seed of the bot and the conditioner.
    pub(crate) seed: u64,
    /// Print a stats line this often (with `label`).
    pub(crate) stats_interval: Option<Duration>,
    /// Name in stats lines.
    pub(crate) label: String,
    /// Fixed interpolation delay (`None`: adaptive).
    pub(crate) interp: Option<Duration>,
    /// Predict this player's own entity.
    pub(crate) predict: bool,
    /// Where the connect token comes from (secure mode), or `None` (plain).
    pub(crate) token: Option<TokenSource>,
    /// Record every datagram into this pcap file (UDP transports).
    pub(crate) pcap: Option<std::path::PathBuf>,
    /// On the UDP transports: when and where to move to a WebSocket if UDP gets no answer
    /// (`None`: never).
    pub(crate) fallback: Option<Fallback>,
}

/// Where a secure client gets its connect token.
#[derive(Debug, Clone)]
pub(crate) enum TokenSource {
    /// `POST` to this URL (the server's token endpoint).
    Url(reqwest::Url),
    /// Minted in-process with the server's key (`compare`, which hosts its servers).
    Mint(std::sync::Arc<demo_server::tokens::TokenMint>),
}

impl TokenSource {
    async fn token(&self) -> Result<Vec<u8>, String> {
        match self {
            TokenSource::Mint(m) => m.mint().map_err(|e| e.to_string()),
            TokenSource::Url(url) => {
                let fail = |e: reqwest::Error| format!("no connect token from {url}: {e}");
                let response = reqwest::Client::new()
                    .post(url.clone())
                    .send()
                    .await
                    .map_err(fail)?
                    .error_for_status()
                    .map_err(fail)?;
                let bytes = response.bytes().await.map_err(fail)?;
                if bytes.len() != snapsync::netcode::CONNECT_TOKEN_BYTES {
                    return Err(format!(
                        "{url} answered {} bytes, not a {}-byte connect token",
                        bytes.len(),
                        snapsync::netcode::CONNECT_TOKEN_BYTES
                    ));
                }
                Ok(bytes.to_vec())
            }
        }
    }
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// Could not connect.
    #[error("{0}")]
    Connect(String),
}

async fn connect(opts: &SessionOptions) -> Result<ReplicationClient<PlayerInput>, SessionError> {
    let mut config = replication::ClientConfig {
        interpolation_delay: opts.interp,
        ..replication::ClientConfig::default()
    };
    if let Some(source) = &opts.token {
        let token = source.token().await.map_err(SessionError::Connect)?;
        config.client.security = ClientSecurity::Secure { token };
    }
    let failed = |e: ConnectError| SessionError::Connect(e.to_string());
    match opts.transport {
        Transport::Udp | Transport::UdpReliable => {
            let c = opts.conditioner.clone();
            let udp = ReplicationClient::join_udp(
                opts.server,
                config.clone(),
                Some((c.clone(), c)),
                opts.pcap.as_deref(),
                opts.fallback.map(|f| f.after),
            )
            .await;
            match (udp, opts.fallback) {
                (Err(ConnectError::NoAnswer { after, .. }), Some(fallback)) => {
                    fall_back(opts, config, fallback, after).await
                }
                (udp, _) => udp.map_err(failed),
            }
        }
        Transport::Tcp => ReplicationClient::join_stream(opts.server, config)
            .await
            .map_err(failed),
    }
}

/// Join afresh over a WebSocket, after UDP got no answer within `after`.
async fn fall_back(
    opts: &SessionOptions,
    mut config: replication::ClientConfig,
    fallback: Fallback,
    after: Duration,
) -> Result<ReplicationClient<PlayerInput>, SessionError> {
    let after = after.as_secs_f64();
    // Beside the stats lines: if the stream fails too, the error stays one line on stderr.
    if opts.stats_interval.is_some() {
        println!(
            "{}: no answer over udp within {after:.1} s; falling back to a websocket",
            opts.label
        );
    }
    // A fresh token: if the UDP requests did reach the server, it has bound the first token
    // to the UDP address and would refuse it from the stream's.
    if let Some(source) = &opts.token {
        let token = source.token().await.map_err(SessionError::Connect)?;
        config.client.security = ClientSecurity::Secure { token };
    }
    let to = fallback.addr.unwrap_or(opts.server);
    ReplicationClient::join_websocket(opts.server, config, fallback.addr)
        .await
        .map_err(|e| {
            SessionError::Connect(format!(
                "{} did not answer over udp within {after:.1} s, and the websocket fallback to {to} failed: {e}",
                opts.server
            ))
        })
}

/// Play one session to its end and report what it measured.
pub(crate) async fn run(opts: SessionOptions) -> Result<ClientReport, SessionError> {
    let mut net = connect(&opts).await?;
    let mut game = GameClient::new(opts.seed, opts.predict);
    let mut report = ClientReport {
        connected: true,
        ..ClientReport::default()
    };
    let frame = Duration::from_secs_f64(1.0 / opts.frame_rate);
    let start = tokio::time::Instant::now();
    let end = start + opts.duration;
    let mut rtt = demo_server::metrics::DurationHistogram::new();
    let mut n = 0u32;
    let mut next_stats = opts.stats_interval.map(|i| start + i);
    // Frames fall at a seeded random point within each period: a client's frame clock is not
    // phase-locked to the server's tick, and staleness sampled at a fixed phase would carry
    // that phase (anything from 0 to a whole tick) into every percentile.
    let mut phase_rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5EED);
    loop {
        n += 1;
        let offset: f64 = phase_rng.random_range(0.0..1.0);
        let next = start + frame.mul_f64(f64::from(n) + offset);
        if next > end {
            break;
        }
        if net.drive_until(next).await.is_err() {
            report.disconnects += 1;
            report.disconnect_reason = Some("socket error".into());
            break;
        }
        while let Some(e) = net.poll_event() {
            game.on_event(net.endpoint_mut(), e);
        }
        if let Some(reason) = game.closed() {
            report.disconnects += 1;
            report.server_closed = matches!(
                reason,
                CloseReason::Connection(DisconnectReason::Peer(
                    DisconnectReasonCode::ServerShutdown
                ))
            );
            report.disconnect_reason = Some(reason.to_string());
            break;
        }
        game.on_frame(net.endpoint_mut(), Instant::now(), unix_micros_now());
        net.flush();
        if n.is_multiple_of(10)
            && let Some(r) = game.link().and_then(|s| s.rtt)
        {
            rtt.record(r);
        }
        if let (Some(ns), Some(interval)) = (next_stats, opts.stats_interval)
            && tokio::time::Instant::now() >= ns
        {
            next_stats = Some(ns + interval);
            let gap = game.update_gap.percentiles();
            let stale = game.staleness.percentiles();
            let (rtt_ms, loss) = game.link().map_or((0.0, 0.0), |s| {
                (
                    s.rtt.unwrap_or_default().as_secs_f64() * 1e3,
                    s.link.loss_pct(),
                )
            });
            println!(
                "{}: {} snapshots | gap p50 {:.1} p99 {:.1} ms | staleness p50 {:.1} p99 {:.1} ms | rtt {:.1} ms | loss {:.1}% | input latency p50 {:.1} ms",
                opts.label,
                net.endpoint().stats().snapshots_received,
                gap.p50,
                gap.p99,
                stale.p50,
                stale.p99,
                rtt_ms,
                loss,
                game.input_latency.percentiles().p50,
            );
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let over_websocket = net.transport_in_use() == TransportInUse::WebSocket;
    // A WebSocket message's header (2 to 8 bytes) is about the TCP transport's frame length.
    let header = if over_websocket {
        header_bytes(Transport::Tcp)
    } else {
        header_bytes(opts.transport)
    };
    // The last figures seen while connected: they outlive a session the server ended.
    if let Some(f) = game.link_figures(header, elapsed) {
        report.loss_pct = f.loss_pct;
        report.kbps_in = f.kbps_in;
        report.kbps_out = f.kbps_out;
    }
    if game.closed().is_none() {
        let _ = net.close().await;
    }
    let client = net.endpoint();
    report.snapshots_received = client.stats().snapshots_received;
    report.parts_rejected = client.stats().parts_rejected;
    report.corrections = client.stats().corrections;
    if let Some(i) = client.interpolation() {
        let s = i.stats();
        report.underruns = s.underruns;
        report.extrapolated_frames = s.extrapolated_frames;
    }
    if let Some(r) = client.receiver() {
        report.late_parts = r.stats().late_dropped;
    }
    report.inputs_refused = game.inputs_refused;
    report.update_gap = game.update_gap.clone();
    report.staleness = game.staleness.clone();
    report.input_latency = game.input_latency.clone();
    report.correction_m = game.correction_m.clone();
    report.rtt = rtt;
    report.duration_s = elapsed;
    // The transport asked for, unless the client had to fall back from it.
    report.transport_in_use = Some(if over_websocket {
        TransportInUse::WebSocket.name().to_string()
    } else {
        opts.transport.name().to_string()
    });
    Ok(report)
}
