//! One client connection over any transport, driving a `GameClient` at the frame rate.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use demo_server::cli::Transport;
use demo_server::game::GameClient;
use demo_server::protocol::{RELIABLE_CHANNEL, ServerMsg, channels_config, unix_micros_now};
use rand::{Rng, SeedableRng};
use snapsync::conditioner::ConditionerConfig;
use snapsync::net::{NetClient, frame};
use snapsync::packet::IP_UDP_HEADER_BYTES;
use snapsync::{ClientConfig, Event};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::report::ClientReport;

/// Largest frame accepted from the server on TCP.
const MAX_TCP_FRAME_BYTES: usize = 1 << 20;
/// Bytes of IPv4 + TCP header counted per frame.
const IP_TCP_HEADER_BYTES: u64 = 40;
/// Frames run before giving up on a server that never sends its welcome.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How one session runs.
#[derive(Debug, Clone)]
pub(crate) struct SessionOptions {
    /// Server address.
    pub(crate) server: SocketAddr,
    /// Transport.
    pub(crate) transport: Transport,
    /// How long to play.
    pub(crate) duration: Duration,
    /// Client frames (and inputs) per second.
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
}

enum Link {
    Udp {
        net: Box<NetClient>,
        reliable: bool,
    },
    Tcp {
        writer: OwnedWriteHalf,
        frames: mpsc::Receiver<Option<(Instant, Vec<u8>)>>,
        bytes_in: u64,
        bytes_out: u64,
        frames_in: u64,
        frames_out: u64,
    },
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// Could not connect.
    #[error("{0}")]
    Connect(String),
}

async fn connect(opts: &SessionOptions) -> Result<Link, SessionError> {
    match opts.transport {
        Transport::Udp | Transport::UdpReliable => {
            let config = ClientConfig {
                connection: snapsync::ConnectionConfig {
                    channels: channels_config(),
                    ..snapsync::ConnectionConfig::default()
                },
                ..ClientConfig::default()
            };
            let c = opts.conditioner.clone();
            let net = NetClient::connect(opts.server, config, opts.seed, Some((c.clone(), c)))
                .await
                .map_err(|e| SessionError::Connect(e.to_string()))?;
            Ok(Link::Udp {
                net: Box::new(net),
                reliable: opts.transport == Transport::UdpReliable,
            })
        }
        Transport::Tcp => {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(opts.server))
                .await
                .map_err(|_| {
                    SessionError::Connect(format!(
                        "could not connect to {}: no answer within {} s",
                        opts.server,
                        CONNECT_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| {
                    SessionError::Connect(format!("could not connect to {}: {e}", opts.server))
                })?;
            let _ = stream.set_nodelay(true);
            let (mut rd, writer) = stream.into_split();
            let (tx, frames) = mpsc::channel(4096);
            tokio::spawn(async move {
                loop {
                    match frame::read_frame(&mut rd, MAX_TCP_FRAME_BYTES).await {
                        Ok(Some(f)) => {
                            // Stamped on arrival, not when the frame loop gets to it.
                            if tx.send(Some((Instant::now(), f))).await.is_err() {
                                return;
                            }
                        }
                        _ => {
                            let _ = tx.send(None).await;
                            return;
                        }
                    }
                }
            });
            Ok(Link::Tcp {
                writer,
                frames,
                bytes_in: 0,
                bytes_out: 0,
                frames_in: 0,
                frames_out: 0,
            })
        }
    }
}

/// Play one session to its end and report what it measured.
pub(crate) async fn run(opts: SessionOptions) -> Result<ClientReport, SessionError> {
    let mut link = connect(&opts).await?;
    let mut game = GameClient::new(opts.seed);
    game.set_fixed_interp_delay(opts.interp);
    let mut report = ClientReport {
        connected: true,
        ..ClientReport::default()
    };
    let frame = Duration::from_secs_f64(1.0 / opts.frame_rate);
    let start = tokio::time::Instant::now();
    let end = start + opts.duration;
    let welcome_by = start + CONNECT_TIMEOUT;
    let mut rtt = demo_server::metrics::DurationHistogram::new();
    let mut n = 0u32;
    let mut alive = true;
    let mut next_stats = opts.stats_interval.map(|i| start + i);
    // Frames fall at a seeded random point within each period: a client's frame clock is not
    // phase-locked to the server's tick, and staleness sampled at a fixed phase would carry
    // that phase (anything from 0 to a whole tick) into every percentile.
    let mut phase_rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ 0x5EED);
    while alive {
        n += 1;
        let offset: f64 = phase_rng.random_range(0.0..1.0);
        let next = start + frame.mul_f64(f64::from(n) + offset);
        if next > end {
            break;
        }
        match &mut link {
            Link::Udp { net, reliable } => {
                if net.drive_until(next).await.is_err() {
                    report.disconnects += 1;
                    break;
                }
                while let Some(e) = net.poll_event() {
                    match e {
                        Event::Datagram {
                            payload,
                            received_at,
                            ..
                        } if !*reliable => {
                            let _ = game.on_part(received_at, &payload);
                        }
                        Event::Message {
                            channel,
                            payload,
                            received_at,
                        } if channel == RELIABLE_CHANNEL => {
                            on_server_msg(&mut game, received_at, &payload);
                        }
                        Event::Disconnected { reason } => {
                            report.disconnects += 1;
                            report.disconnect_reason = Some(reason.to_string());
                            alive = false;
                        }
                        _ => {}
                    }
                }
            }
            Link::Tcp {
                frames,
                bytes_in,
                frames_in,
                ..
            } => loop {
                tokio::select! {
                    f = frames.recv() => match f {
                        Some(Some((at, bytes))) => {
                            *frames_in += 1;
                            *bytes_in += bytes.len() as u64 + 4 + IP_TCP_HEADER_BYTES;
                            on_server_msg(&mut game, at, &bytes);
                        }
                        _ => {
                            report.disconnects += 1;
                            report.disconnect_reason = Some("server closed the stream".into());
                            alive = false;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(next) => break,
                }
            },
        }
        if !alive {
            break;
        }
        if !game.is_ready() {
            if tokio::time::Instant::now() > welcome_by {
                return Err(SessionError::Connect(format!(
                    "connected to {} but no welcome arrived within {} s",
                    opts.server,
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            continue;
        }
        let input = game.on_frame(Instant::now(), unix_micros_now());
        if let (Some(ns), Some(interval)) = (next_stats, opts.stats_interval)
            && tokio::time::Instant::now() >= ns
        {
            next_stats = Some(ns + interval);
            let gap = game.update_gap.percentiles();
            let stale = game.staleness.percentiles();
            let (rtt_ms, loss) = match &link {
                Link::Udp { net, .. } => {
                    net.endpoint().connection_stats().map_or((0.0, 0.0), |s| {
                        (
                            s.rtt.unwrap_or_default().as_secs_f64() * 1e3,
                            s.link.loss_pct(),
                        )
                    })
                }
                Link::Tcp { .. } => (0.0, 0.0),
            };
            println!(
                "{}: {} snapshots | gap p50 {:.1} p99 {:.1} ms | staleness p50 {:.1} p99 {:.1} ms | rtt {:.1} ms | loss {:.1}%",
                opts.label,
                game.snapshots_received,
                gap.p50,
                gap.p99,
                stale.p50,
                stale.p99,
                rtt_ms,
                loss
            );
        }
        match &mut link {
            Link::Udp { net, reliable } => {
                let now = net.now();
                let sent = if *reliable {
                    net.endpoint_mut()
                        .send_message(now, RELIABLE_CHANNEL, &input)
                        .is_ok()
                } else {
                    net.endpoint_mut().send_datagram(now, &input).is_ok()
                };
                if !sent {
                    report.inputs_refused += 1;
                }
                net.flush();
                if n.is_multiple_of(10)
                    && let Some(r) = net.endpoint().connection_stats().and_then(|s| s.rtt)
                {
                    rtt.record(r);
                }
            }
            Link::Tcp {
                writer,
                bytes_out,
                frames_out,
                ..
            } => {
                if frame::write_frame(writer, &input).await.is_err() {
                    report.disconnects += 1;
                    break;
                }
                *frames_out += 1;
                *bytes_out += input.len() as u64 + 4 + IP_TCP_HEADER_BYTES;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    match &mut link {
        Link::Udp { net, .. } => {
            if let Some(s) = net.endpoint().connection_stats() {
                report.loss_pct = s.link.total_loss_pct();
                report.kbps_in =
                    (s.link.bytes_received + s.link.packets_received * IP_UDP_HEADER_BYTES) as f64
                        * 8.0
                        / 1000.0
                        / elapsed;
                report.kbps_out =
                    (s.link.bytes_sent + s.link.packets_sent * IP_UDP_HEADER_BYTES) as f64 * 8.0
                        / 1000.0
                        / elapsed;
            }
            net.endpoint_mut().disconnect();
            net.flush();
            let _ = net
                .drive_until(tokio::time::Instant::now() + Duration::from_millis(20))
                .await;
        }
        Link::Tcp {
            bytes_in,
            bytes_out,
            ..
        } => {
            report.kbps_in = *bytes_in as f64 * 8.0 / 1000.0 / elapsed;
            report.kbps_out = *bytes_out as f64 * 8.0 / 1000.0 / elapsed;
        }
    }
    report.snapshots_received = game.snapshots_received;
    report.parts_rejected = game.parts_rejected;
    if let Some(i) = game.interpolation() {
        let s = i.stats();
        report.underruns = s.underruns;
        report.extrapolated_frames = s.extrapolated_frames;
    }
    if let Some(r) = game.receiver() {
        report.late_parts = r.stats().late_dropped;
    }
    report.update_gap = game.update_gap.clone();
    report.staleness = game.staleness.clone();
    report.rtt = rtt;
    report.duration_s = elapsed;
    Ok(report)
}

fn on_server_msg(game: &mut GameClient, now: Instant, bytes: &[u8]) {
    match snapsync::codec::decode::<ServerMsg>(bytes) {
        Ok(ServerMsg::Welcome(w)) => {
            if let Err(e) = game.on_welcome(w) {
                tracing::warn!(error = %e, "bad welcome");
            }
        }
        Ok(ServerMsg::Part(p)) => {
            let _ = game.on_part(now, &p);
        }
        Err(e) => tracing::debug!(error = %e, "undecodable server message"),
    }
}
