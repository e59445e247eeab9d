//! The server's side of the three transports behind one interface: `udp` (parts as
//! datagrams), `udp-reliable` (parts on a reliable-ordered channel over the same simulated
//! link) and `tcp` (a kernel TCP stream per client, length-prefixed frames).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use snapsync::conditioner::ConditionerConfig;
use snapsync::net::{NetServer, frame};
use snapsync::packet::IP_UDP_HEADER_BYTES;
use snapsync::{Event, Sequence, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::cli::{Transport, describe};
use crate::metrics::DurationHistogram;
use crate::protocol::{RELIABLE_CHANNEL, ServerMsg, Welcome};
use crate::server::{ConditionerSummary, ServerError, ServerOptions};

/// Bytes of IPv4 + TCP header counted per frame on the TCP transport (with TCP_NODELAY each
/// frame leaves as its own segment; coalesced segments make this a slight overestimate).
pub const IP_TCP_HEADER_BYTES: u64 = 40;
/// Largest frame a TCP peer may send us.
const MAX_TCP_FRAME_BYTES: usize = 64 * 1024;
/// Frames queued per TCP client before we consider it too slow and drop the frame.
const TCP_WRITE_QUEUE_FRAMES: usize = 1024;

/// A client of the demo, whatever the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u32);

/// What happened on the transport since the last poll.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// A client connected.
    Joined(PeerId),
    /// A client left, for this reason.
    Left(PeerId, String),
    /// Input bytes from a client.
    Input(PeerId, Vec<u8>),
    /// A packet that carried a snapshot part was acked or lost (`udp` only).
    Delivery(PeerId, Sequence, bool),
}

/// Traffic totals over the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkTotals {
    /// Bytes out including per-datagram (or per-frame) IP headers.
    pub wire_bytes_out: u64,
    /// Bytes in including headers.
    pub wire_bytes_in: u64,
    /// Datagrams or frames in.
    pub packets_in: u64,
    /// Datagrams or frames out.
    pub packets_out: u64,
    /// Dropped as invalid.
    pub invalid_packets: u64,
    /// The simulated link's counters (both directions).
    pub conditioner: ConditionerSummary,
}

/// What the per-client TCP tasks report to the tick loop.
pub enum TcpIn {
    /// A client connected; frames for it go into this sender.
    Joined(PeerId, mpsc::Sender<Vec<u8>>),
    /// A frame arrived from a client.
    Frame(PeerId, Vec<u8>),
    /// A client's stream ended.
    Closed(PeerId, String),
}

/// The server's transport.
pub enum ServerLink {
    /// `udp` and `udp-reliable`.
    Udp {
        /// The engine on its socket.
        net: Box<NetServer>,
        /// Parts go on the reliable channel instead of as datagrams.
        reliable: bool,
        /// Counter for fake sequence numbers of parts on the reliable channel.
        next_part: Sequence,
        /// Invalid inputs seen above the engine.
        extra_invalid: u64,
    },
    /// `tcp`.
    Tcp {
        /// Local address.
        local: SocketAddr,
        /// Frames and connection changes from the per-client tasks.
        rx: mpsc::Receiver<TcpIn>,
        /// Writers, one per client.
        writers: BTreeMap<PeerId, mpsc::Sender<Vec<u8>>>,
        /// Events gathered for the next poll.
        pending: Vec<LinkEvent>,
        /// The accept loop.
        accept: tokio::task::JoinHandle<()>,
        /// Counter for fake sequence numbers of parts.
        next_part: Sequence,
        /// Totals.
        totals: LinkTotals,
    },
}

impl std::fmt::Debug for ServerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Udp { reliable, .. } => write!(f, "ServerLink::Udp {{ reliable: {reliable} }}"),
            Self::Tcp { local, .. } => write!(f, "ServerLink::Tcp {{ {local} }}"),
        }
    }
}

impl std::fmt::Debug for TcpIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Joined(p, _) => write!(f, "Joined({p:?})"),
            Self::Frame(p, b) => write!(f, "Frame({p:?}, {} bytes)", b.len()),
            Self::Closed(p, r) => write!(f, "Closed({p:?}, {r})"),
        }
    }
}

impl ServerLink {
    /// Listen as `opts` says.
    pub async fn bind(opts: &ServerOptions) -> Result<Self, ServerError> {
        match opts.transport {
            Transport::Udp | Transport::UdpReliable => {
                let mut config = ServerConfig {
                    max_clients: opts.max_clients,
                    ..ServerConfig::default()
                };
                config.connection.channels = crate::protocol::channels_config();
                let mut net = NetServer::bind(opts.bind, config, rand::random())
                    .await
                    .map_err(|source| ServerError::Bind {
                        addr: opts.bind,
                        source,
                    })?;
                net.set_conditioner(opts.conditioner.clone(), opts.conditioner.clone())
                    .map_err(|e| ServerError::Options(e.to_string()))?;
                Ok(Self::Udp {
                    net: Box::new(net),
                    reliable: opts.transport == Transport::UdpReliable,
                    next_part: Sequence(0),
                    extra_invalid: 0,
                })
            }
            Transport::Tcp => {
                let listener =
                    TcpListener::bind(opts.bind)
                        .await
                        .map_err(|source| ServerError::Bind {
                            addr: opts.bind,
                            source,
                        })?;
                let local = listener.local_addr()?;
                let (tx, rx) = mpsc::channel(4096);
                let max_clients = opts.max_clients;
                let accept = tokio::spawn(accept_loop(listener, tx, max_clients));
                Ok(Self::Tcp {
                    local,
                    rx,
                    writers: BTreeMap::new(),
                    pending: Vec::new(),
                    accept,
                    next_part: Sequence(0),
                    totals: LinkTotals::default(),
                })
            }
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            // The socket was bound successfully, so it has an address.
            Self::Udp { net, .. } => net
                .local_addr()
                .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into()),
            Self::Tcp { local, .. } => *local,
        }
    }

    /// Change the simulated link (UDP transports; TCP cannot be conditioned in-process).
    pub fn set_conditioner(&mut self, c: &ConditionerConfig) {
        if let Self::Udp { net, .. } = self {
            // The console validated `c` before handing it over.
            let _ = net.set_conditioner(c.clone(), c.clone());
        }
    }

    /// Receive and run timers until `deadline`.
    pub async fn drive_until(&mut self, deadline: tokio::time::Instant) -> std::io::Result<()> {
        match self {
            Self::Udp { net, .. } => net.drive_until(deadline).await,
            Self::Tcp {
                rx,
                writers,
                pending,
                totals,
                ..
            } => {
                loop {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => on_tcp(m, writers, pending, totals),
                            None => return Ok(()),
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                    }
                }
                while let Ok(m) = rx.try_recv() {
                    on_tcp(m, writers, pending, totals);
                }
                Ok(())
            }
        }
    }

    /// Everything that happened since the last call.
    pub fn poll_events(&mut self) -> Vec<LinkEvent> {
        match self {
            Self::Udp {
                net, extra_invalid, ..
            } => {
                let mut out = Vec::new();
                while let Some((id, e)) = net.poll_event() {
                    let peer = PeerId(id.0);
                    match e {
                        Event::Connected { .. } => out.push(LinkEvent::Joined(peer)),
                        Event::Disconnected { reason } => {
                            out.push(LinkEvent::Left(peer, reason.to_string()))
                        }
                        Event::Datagram { payload, .. } => {
                            out.push(LinkEvent::Input(peer, payload))
                        }
                        Event::Message {
                            channel, payload, ..
                        } if channel == RELIABLE_CHANNEL => {
                            out.push(LinkEvent::Input(peer, payload))
                        }
                        Event::Message { .. } => *extra_invalid += 1,
                        Event::Delivery { sequence, acked } => {
                            out.push(LinkEvent::Delivery(peer, sequence, acked))
                        }
                    }
                }
                out
            }
            Self::Tcp { pending, .. } => std::mem::take(pending),
        }
    }

    /// Tell a new client about the server.
    pub fn send_welcome(&mut self, now: Instant, peer: PeerId, welcome: &Welcome) {
        let Ok(bytes) = snapsync::codec::encode(&ServerMsg::Welcome(welcome.clone())) else {
            return;
        };
        self.send_reliable(now, peer, bytes);
    }

    fn send_reliable(&mut self, now: Instant, peer: PeerId, bytes: Vec<u8>) -> bool {
        match self {
            Self::Udp { net, .. } => net
                .endpoint_mut()
                .send_message(now, snapsync::ClientId(peer.0), RELIABLE_CHANNEL, &bytes)
                .is_ok(),
            Self::Tcp {
                writers, totals, ..
            } => match writers.get(&peer) {
                Some(w) => {
                    let len = bytes.len() as u64;
                    let ok = w.try_send(bytes).is_ok();
                    if ok {
                        totals.packets_out += 1;
                        totals.wire_bytes_out += len + 4 + IP_TCP_HEADER_BYTES;
                    }
                    ok
                }
                None => false,
            },
        }
    }

    /// Send one snapshot part. Returns the sequence to report to the snapshot sender, and
    /// for streams the delivery outcome known at once (`Some(true)` when the stream took
    /// it); `None` when the peer is unknown.
    pub fn send_part(
        &mut self,
        now: Instant,
        peer: PeerId,
        part: &[u8],
    ) -> Option<(Sequence, Option<bool>)> {
        match self {
            Self::Udp {
                net,
                reliable: false,
                ..
            } => net
                .endpoint_mut()
                .send_datagram(now, snapsync::ClientId(peer.0), part)
                .ok()
                .map(|seq| (seq, None)),
            Self::Udp { next_part, .. } | Self::Tcp { next_part, .. } => {
                let seq = *next_part;
                *next_part = seq.next();
                let bytes = snapsync::codec::encode(&ServerMsg::Part(part.to_vec())).ok()?;
                let ok = self.send_reliable(now, peer, bytes);
                Some((seq, Some(ok)))
            }
        }
    }

    /// Send what is ready.
    pub fn flush(&mut self) {
        if let Self::Udp { net, .. } = self {
            net.flush();
        }
    }

    /// Count an invalid message found above the engine (a bad input).
    pub fn count_invalid(&mut self) {
        match self {
            Self::Udp { extra_invalid, .. } => *extra_invalid += 1,
            Self::Tcp { totals, .. } => totals.invalid_packets += 1,
        }
    }

    /// Totals so far.
    pub fn totals(&self) -> LinkTotals {
        match self {
            Self::Udp {
                net, extra_invalid, ..
            } => {
                let s = net.endpoint().stats();
                let (inb, outb) = net.conditioners();
                let (i, o) = (inb.stats(), outb.stats());
                LinkTotals {
                    wire_bytes_out: s.bytes_out + s.packets_out * IP_UDP_HEADER_BYTES,
                    wire_bytes_in: s.bytes_in + s.packets_in * IP_UDP_HEADER_BYTES,
                    packets_in: s.packets_in,
                    packets_out: s.packets_out,
                    invalid_packets: s.invalid_packets + extra_invalid,
                    conditioner: ConditionerSummary {
                        dropped: i.dropped + o.dropped,
                        duplicated: i.duplicated + o.duplicated,
                        reordered: i.reordered + o.reordered,
                    },
                }
            }
            Self::Tcp { totals, .. } => *totals,
        }
    }

    /// One stats line.
    pub fn stats_line(
        &self,
        clients: usize,
        tick_cost: &DurationHistogram,
        c: &ConditionerConfig,
    ) -> String {
        let t = self.totals();
        let p = tick_cost.percentiles();
        let (kin, kout, loss) = match self {
            Self::Udp { net, .. } => {
                let now = net.now();
                let ids: Vec<_> = net.endpoint().clients().collect();
                let mut kin = 0.0;
                let mut kout = 0.0;
                let mut loss = 0.0;
                for id in &ids {
                    if let Some(s) = net.endpoint().connection_stats(*id) {
                        kin += s.link.kbps_in(now);
                        kout += s.link.kbps_out(now);
                        loss += s.link.loss_pct();
                    }
                }
                (
                    kin,
                    kout,
                    if ids.is_empty() {
                        0.0
                    } else {
                        loss / ids.len() as f64
                    },
                )
            }
            Self::Tcp { .. } => (f64::NAN, f64::NAN, 0.0),
        };
        format!(
            "clients {clients} | tick p50 {:.0}us p99 {:.0}us | kbps out {kout:.0} in {kin:.0} | loss seen {loss:.1}% | invalid {} | link dropped {} dup {} reord {} | conditioner {}",
            p.p50 * 1000.0,
            p.p99 * 1000.0,
            t.invalid_packets,
            t.conditioner.dropped,
            t.conditioner.duplicated,
            t.conditioner.reordered,
            describe(c),
        )
    }

    /// Disconnect everyone cleanly.
    pub async fn shutdown(&mut self) {
        match self {
            Self::Udp { net, .. } => {
                let _ = net.shutdown().await;
            }
            Self::Tcp {
                writers, accept, ..
            } => {
                accept.abort();
                // Dropping the writers closes each stream after its queued frames.
                writers.clear();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn on_tcp(
    m: TcpIn,
    writers: &mut BTreeMap<PeerId, mpsc::Sender<Vec<u8>>>,
    pending: &mut Vec<LinkEvent>,
    totals: &mut LinkTotals,
) {
    match m {
        TcpIn::Joined(peer, w) => {
            writers.insert(peer, w);
            pending.push(LinkEvent::Joined(peer));
        }
        TcpIn::Frame(peer, bytes) => {
            totals.packets_in += 1;
            totals.wire_bytes_in += bytes.len() as u64 + 4 + IP_TCP_HEADER_BYTES;
            pending.push(LinkEvent::Input(peer, bytes));
        }
        TcpIn::Closed(peer, why) => {
            if writers.remove(&peer).is_some() {
                pending.push(LinkEvent::Left(peer, why));
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<TcpIn>, max_clients: usize) {
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut next_id = 1u32;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if live.load(std::sync::atomic::Ordering::Relaxed) >= max_clients {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let peer = PeerId(next_id);
        next_id = next_id.wrapping_add(1).max(1);
        let (mut rd, mut wr) = stream.into_split();
        let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(TCP_WRITE_QUEUE_FRAMES);
        if tx.send(TcpIn::Joined(peer, wtx)).await.is_err() {
            return;
        }
        live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            while let Some(f) = wrx.recv().await {
                if frame::write_frame(&mut wr, &f).await.is_err() {
                    break;
                }
            }
        });
        let tx = tx.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let why = loop {
                match frame::read_frame(&mut rd, MAX_TCP_FRAME_BYTES).await {
                    Ok(Some(f)) => {
                        if tx.send(TcpIn::Frame(peer, f)).await.is_err() {
                            break "server stopped".to_string();
                        }
                    }
                    Ok(None) => break "peer closed the stream".to_string(),
                    Err(e) => break format!("stream error: {e}"),
                }
            };
            live.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(TcpIn::Closed(peer, why)).await;
        });
    }
}
