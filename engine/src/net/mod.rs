//! The tokio driver: owns a `UdpSocket`, feeds the sans-IO core datagrams and time, sends
//! what it produces, and applies the link [`Conditioner`] in both directions.
//!
//! The driver runs inside the application's own loop rather than in a spawned task, so the
//! game keeps plain `&mut` access to the endpoint:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use snapsync::net::NetServer;
//! // The seed makes the cookie key and session salts: the operating system's randomness.
//! let seed = rand::random();
//! let mut server = NetServer::bind("127.0.0.1:7777".parse().unwrap(), Default::default(), seed).await?;
//! let tick = std::time::Duration::from_micros(16_667);
//! let mut next = tokio::time::Instant::now();
//! loop {
//!     next += tick;
//!     server.drive_until(next).await?;        // receive, time out, send until the next tick
//!     while let Some((client, event)) = server.poll_event() { /* ... */ }
//!     // simulate, then send snapshots through server.endpoint_mut() ...
//!     server.flush();
//! }
//! # }
//! ```
//!
//! Where a network blocks UDP, the same packets can ride a stream: a server that also
//! [`listen_websocket`](Driver::listen_websocket)s on its port number over TCP serves
//! clients that [`join_with_fallback`](ReplicationClient::join_with_fallback), which try UDP
//! first and move to a WebSocket when nothing answered within [`Fallback::after`]. The
//! session above is the same; only the link changes, and with it the cost of a loss: a lost
//! TCP segment holds back everything behind it.

mod capture;
pub mod frame;
mod stream;
mod udp;

pub use capture::PcapCapture;
pub use udp::UdpOffloads;

pub use stream::{StreamStats, WEBSOCKET_PATH, WEBSOCKET_SUBPROTOCOL};

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::conditioner::{Conditioner, ConditionerConfig, ConfigError};
use crate::connection::{
    Client, ClientConfig, ClientId, DisconnectReason, Event, Server, ServerConfig, Transmit,
};
use crate::packet::MAX_PACKET_BYTES;
use crate::replication;
use serde::Serialize;

/// Receive buffer size per datagram (and the largest stream frame): larger than any valid
/// packet, so oversized datagrams are seen whole enough to be counted and dropped rather
/// than silently truncated into something valid.
const RECV_BUFFER_BYTES: usize = 2048;
/// Datagrams read per wake-up before yielding to timers, so a flood cannot starve ticks.
const MAX_RECV_BATCH: usize = 256;

/// What the driver needs from a sans-IO endpoint; implemented by [`Server`] and [`Client`].
pub trait Endpoint {
    /// The endpoint's event type.
    type Event: std::fmt::Debug;
    /// Feed a datagram.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]);
    /// Advance timers.
    fn handle_timeout(&mut self, now: Instant);
    /// Next datagram to send.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;
    /// Next event.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// Next timer deadline.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The stream carrying `peer`'s packets (TCP or WebSocket) closed. The connection
    /// endpoints end that connection at once; the default ignores it (datagrams only).
    fn stream_closed(&mut self, now: Instant, peer: SocketAddr) {
        let _ = (now, peer);
    }
}

impl Endpoint for Server {
    type Event = (ClientId, Event);
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        Server::handle_datagram(self, now, from, datagram)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Server::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Server::poll_transmit(self, now, buf)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        Server::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Server::poll_timeout(self)
    }
    fn stream_closed(&mut self, now: Instant, peer: SocketAddr) {
        Server::stream_closed(self, now, peer)
    }
}

impl Endpoint for Client {
    type Event = Event;
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        Client::handle_datagram(self, now, from, datagram)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Client::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Client::poll_transmit(self, now, buf)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        Client::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Client::poll_timeout(self)
    }
    // A client has one stream, to its server: whichever closes, it is that one.
    fn stream_closed(&mut self, now: Instant, _peer: SocketAddr) {
        Client::stream_closed(self, now)
    }
}

impl Endpoint for replication::Server {
    type Event = replication::ServerEvent;
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        replication::Server::handle_datagram(self, now, from, datagram)
    }
    fn handle_timeout(&mut self, now: Instant) {
        replication::Server::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        replication::Server::poll_transmit(self, now, buf)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        replication::Server::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        replication::Server::poll_timeout(self)
    }
    fn stream_closed(&mut self, now: Instant, peer: SocketAddr) {
        replication::Server::stream_closed(self, now, peer)
    }
}

impl<I: Serialize> Endpoint for replication::Client<I> {
    type Event = replication::ClientEvent;
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        replication::Client::handle_datagram(self, now, from, datagram)
    }
    fn handle_timeout(&mut self, now: Instant) {
        replication::Client::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        replication::Client::poll_transmit(self, now, buf)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        replication::Client::poll_event(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        replication::Client::poll_timeout(self)
    }
    // A client has one stream, to its server: whichever closes, it is that one.
    fn stream_closed(&mut self, now: Instant, _peer: SocketAddr) {
        replication::Client::stream_closed(self, now)
    }
}

/// A conditioner carrying datagrams with their remote address.
pub type LinkConditioner = Conditioner<(SocketAddr, Vec<u8>)>;

/// Socket-level counters (the core keeps the protocol ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketStats {
    /// Datagrams handed to the socket.
    pub sent: u64,
    /// Datagrams the socket refused (buffer full, unreachable): lost, as on any network.
    pub send_errors: u64,
    /// Datagrams read from the socket.
    pub received: u64,
    /// Datagrams larger than any valid packet, dropped before the core saw them.
    pub oversized: u64,
    /// System calls that sent datagrams: `sent / send_calls` is how many one call carried
    /// (several to one peer with UDP GSO).
    pub send_calls: u64,
    /// System calls that received datagrams: `received / recv_calls` is how many one call
    /// brought (several buffers with `recvmmsg`, several datagrams a buffer with UDP GRO).
    pub recv_calls: u64,
}

/// The transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TransportInUse {
    /// Datagrams on the driver's UDP socket: the engine's normal transport.
    Udp,
    /// A TCP stream of length-prefixed frames ([`Driver::listen_stream`]).
    Tcp,
    /// A WebSocket over TCP, one binary message per packet ([`Driver::listen_websocket`]):
    /// the fallback where UDP is blocked.
    WebSocket,
}

impl TransportInUse {
    /// The lowercase name reports use: `udp`, `tcp` or `websocket`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
        }
    }
}

impl std::fmt::Display for TransportInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A sans-IO endpoint on a real UDP socket, with a conditioner per direction.
#[derive(Debug)]
pub struct Driver<E: Endpoint> {
    udp: udp::UdpIo,
    endpoint: E,
    inbound: LinkConditioner,
    outbound: LinkConditioner,
    events: VecDeque<E::Event>,
    /// What a flush sends, written in place by the endpoint; fixed size.
    send: udp::SendBatch,
    /// What one receive call brings; fixed size.
    recv: udp::RecvBatch,
    stats: SocketStats,
    /// TCP streams carrying the same packets, once listened for or connected.
    streams: Option<stream::Streams>,
    /// Where every UDP datagram sent and received is recorded, with the socket's address.
    capture: Option<(PcapCapture, SocketAddr)>,
    /// What a client's connection runs on, as its join chose.
    transport: TransportInUse,
}

/// The server on a socket.
pub type NetServer = Driver<Server>;
/// A client on a socket.
pub type NetClient = Driver<Client>;

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<E: Endpoint> Driver<E> {
    /// Wrap an endpoint and a bound socket.
    pub fn new(socket: UdpSocket, endpoint: E, seed: u64) -> Self {
        let udp = udp::UdpIo::new(socket);
        Self {
            recv: udp::RecvBatch::new(&udp),
            udp,
            endpoint,
            // The off config always validates.
            inbound: Conditioner::new(ConditionerConfig::off(), seed ^ 0x1111)
                .expect("off is valid"),
            outbound: Conditioner::new(ConditionerConfig::off(), seed ^ 0x2222)
                .expect("off is valid"),
            events: VecDeque::new(),
            send: udp::SendBatch::new(),
            stats: SocketStats::default(),
            streams: None,
            capture: None,
            transport: TransportInUse::Udp,
        }
    }

    /// Record every UDP datagram this driver sends or receives from now on into a pcap file
    /// at `path` (as the wire carries them: after the outbound conditioner, before the
    /// inbound one). Streams are not recorded.
    pub fn capture_to(&mut self, path: &std::path::Path) -> io::Result<()> {
        let local = self.udp.local_addr()?;
        self.capture = Some((PcapCapture::create(path)?, local));
        Ok(())
    }

    /// Datagrams recorded so far, when capturing.
    pub fn captured_packets(&self) -> Option<u64> {
        self.capture.as_ref().map(|(c, _)| c.packets())
    }

    fn record(&mut self, from: Option<SocketAddr>, to: Option<SocketAddr>, bytes: &[u8]) {
        record(&mut self.capture, from, to, bytes);
    }

    /// Also accept TCP streams at `addr` (which may be the UDP socket's own address: the
    /// port spaces are separate). Stream peers speak the same protocol, one packet per
    /// length-prefixed frame, and bypass the conditioner: the kernel's TCP is their link.
    /// Returns the address listened on.
    pub async fn listen_stream(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        self.streams
            .get_or_insert_with(stream::Streams::new)
            .listen(listener, stream::Framing::LengthPrefixed);
        Ok(local)
    }

    /// Also accept WebSockets at `addr` (typically the UDP socket's own address: the same
    /// port number over TCP, where [`ReplicationClient::join_with_fallback`] looks by
    /// default). A WebSocket peer speaks the same protocol, one packet per binary message,
    /// and bypasses the conditioner as any stream does. Returns the address listened on.
    pub async fn listen_websocket(&mut self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        self.listen_websocket_on(listener)
    }

    /// [`listen_websocket`](Self::listen_websocket) on a listener the caller bound (to pick
    /// a port free for both UDP and TCP, say).
    pub fn listen_websocket_on(
        &mut self,
        listener: tokio::net::TcpListener,
    ) -> io::Result<SocketAddr> {
        let local = listener.local_addr()?;
        self.streams
            .get_or_insert_with(stream::Streams::new)
            .listen(listener, stream::Framing::WebSocket);
        Ok(local)
    }

    /// Counters of the stream side (zero when no stream was ever used).
    pub fn stream_stats(&self) -> StreamStats {
        self.streams
            .as_ref()
            .map(stream::Streams::stats)
            .unwrap_or_default()
    }

    /// What this client's connection runs on: [`TransportInUse::Udp`] unless it joined over
    /// a stream, or fell back to one. A server reports `Udp` here; see
    /// [`peer_transport`](Self::peer_transport) for each of its peers.
    pub fn transport_in_use(&self) -> TransportInUse {
        self.transport
    }

    /// What the packets for `peer` travel on: a stream when one from (or to) that address
    /// is open, else UDP.
    pub fn peer_transport(&self, peer: SocketAddr) -> TransportInUse {
        match self.streams.as_ref().and_then(|s| s.framing_of(peer)) {
            Some(stream::Framing::LengthPrefixed) => TransportInUse::Tcp,
            Some(stream::Framing::WebSocket) => TransportInUse::WebSocket,
            None => TransportInUse::Udp,
        }
    }

    /// The sans-IO endpoint, for sends and queries.
    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// Mutable access to the endpoint; call [`flush`](Self::flush) after sending.
    pub fn endpoint_mut(&mut self) -> &mut E {
        &mut self.endpoint
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// What the kernel offers this socket for batching (UDP GSO and GRO), as quinn-udp
    /// probed it when the driver was made; GSO is given up for good on a path that refuses
    /// a GSO send.
    pub fn udp_offloads(&self) -> UdpOffloads {
        self.udp.offloads()
    }

    /// Condition what this side receives and what it sends. Takes effect for the next
    /// packet. An invalid setting is refused and the previous one kept.
    pub fn set_conditioner(
        &mut self,
        inbound: ConditionerConfig,
        outbound: ConditionerConfig,
    ) -> Result<(), ConfigError> {
        inbound.validate()?;
        outbound.validate()?;
        self.inbound.set_config(inbound)?;
        self.outbound.set_config(outbound)
    }

    /// The inbound and outbound conditioners, for their counters.
    pub fn conditioners(&self) -> (&LinkConditioner, &LinkConditioner) {
        (&self.inbound, &self.outbound)
    }

    /// Socket-level counters.
    pub fn socket_stats(&self) -> SocketStats {
        self.stats
    }

    /// The current time as the driver feeds it to the core.
    pub fn now(&self) -> Instant {
        now()
    }

    /// Next event, oldest first.
    pub fn poll_event(&mut self) -> Option<E::Event> {
        self.pump_events();
        self.events.pop_front()
    }

    fn pump_events(&mut self) {
        while let Some(e) = self.endpoint.poll_event() {
            self.events.push_back(e);
        }
    }

    /// Send everything the endpoint has ready (through the outbound conditioner), and
    /// anything the conditioner now releases. Never blocks: a full socket buffer drops the
    /// datagram, as a congested network would.
    ///
    /// The datagrams leave in batches: the endpoint writes each straight into a fixed batch
    /// buffer, and a full batch (or the end of the flush) goes to the socket with as few
    /// system calls as the kernel allows (one per run of one peer's datagrams, with GSO).
    pub fn flush(&mut self) {
        let t = now();
        loop {
            if self.send.is_full() {
                self.send_batch();
            }
            let slot = self.send.next_slot();
            let Some(tx) = self.endpoint.poll_transmit(t, slot) else {
                break;
            };
            // A transmit is never longer than the buffer it was written into.
            let bytes = &slot[..tx.len];
            if let Some(streams) = self.streams.as_mut()
                && streams.send(tx.destination, bytes)
            {
                continue;
            }
            // With the conditioner off and nothing held in it, the datagram stays where the
            // endpoint wrote it: no allocation, no copy, no queue round trip.
            if self.outbound.is_idle() && self.outbound.config().is_pass_through() {
                self.send.commit(tx.destination, tx.len);
                continue;
            }
            let bytes = bytes.to_vec();
            self.outbound.push(t, (tx.destination, bytes), tx.len);
        }
        while let Some((to, bytes)) = self.outbound.poll(t) {
            if self.send.is_full() {
                self.send_batch();
            }
            if !self.send.push(to, &bytes) {
                // Only the endpoint's own packets pass through the conditioner, and none is
                // longer than a packet; counted rather than trusted.
                self.stats.send_errors += 1;
            }
        }
        self.send_batch();
        self.pump_events();
    }

    /// Hand the queued batch to the socket; count and record what left.
    fn send_batch(&mut self) {
        if self.send.is_empty() {
            return;
        }
        let (stats, capture) = (&mut self.stats, &mut self.capture);
        self.send
            .send(&self.udp, |to, bytes, segment, result| match result {
                Ok(()) => {
                    stats.send_calls += 1;
                    for d in udp::datagrams(bytes, segment) {
                        stats.sent += 1;
                        record(capture, None, Some(to), d);
                    }
                }
                Err(e) => {
                    stats.send_errors += udp::datagrams(bytes, segment).count() as u64;
                    tracing::debug!(%to, error = %e, "send failed");
                }
            });
    }

    fn deliver_inbound(&mut self, t: Instant) {
        while let Some((from, bytes)) = self.inbound.poll(t) {
            self.endpoint.handle_datagram(t, from, &bytes);
        }
    }

    fn on_datagram(&mut self, t: Instant, from: SocketAddr, bytes: &[u8]) {
        self.stats.received += 1;
        self.record(Some(from), None, bytes);
        if bytes.len() > MAX_PACKET_BYTES {
            self.stats.oversized += 1;
            // Let the core count it as invalid too, without copying the whole thing.
            self.endpoint.handle_datagram(t, from, bytes);
            return;
        }
        // Conditioner off and empty: hand the datagram over in place, keeping arrival order.
        if self.inbound.is_idle() && self.inbound.config().is_pass_through() {
            self.endpoint.handle_datagram(t, from, bytes);
            return;
        }
        self.inbound.push(t, (from, bytes.to_vec()), bytes.len());
    }

    fn on_stream_message(&mut self, m: Option<stream::StreamIn>) {
        let Some(m) = m else {
            return;
        };
        self.take_stream_message(m);
        // Frames that queued up meanwhile, without waiting for another wake-up.
        while let Some(m) = self.streams.as_mut().and_then(|s| s.rx.try_recv().ok()) {
            self.take_stream_message(m);
        }
    }

    fn take_stream_message(&mut self, m: stream::StreamIn) {
        let Some(streams) = self.streams.as_mut() else {
            return;
        };
        // A closed stream ends its connection now: nothing more can come over it, and
        // waiting for the timeout would hold the slot (and the player) for seconds.
        let closed = match &m {
            stream::StreamIn::Closed(peer) => Some(*peer),
            _ => None,
        };
        if let Some((from, bytes)) = streams.on_message(m) {
            self.stats.received += 1;
            self.endpoint.handle_datagram(now(), from, &bytes);
        }
        if let Some(peer) = closed {
            self.endpoint.stream_closed(now(), peer);
        }
    }

    /// Read what the socket holds, a batch per system call, until it is empty or
    /// `MAX_RECV_BATCH` datagrams came in. Errors other than transient ones are returned.
    fn recv_ready(&mut self, t: Instant) -> io::Result<()> {
        // Out of `self` while its datagrams are handed on, which needs `&mut self`; the
        // empty batch left behind is never read.
        let mut batch = std::mem::take(&mut self.recv);
        let mut received = 0;
        let mut calls = 0;
        let result = loop {
            if received >= MAX_RECV_BATCH || calls >= MAX_RECV_BATCH {
                break Ok(());
            }
            calls += 1;
            match batch.recv(&self.udp) {
                Ok(n) => {
                    self.stats.recv_calls += 1;
                    for i in 0..n {
                        let (from, bytes, stride) = batch.get(i);
                        for d in udp::datagrams(bytes, stride) {
                            received += 1;
                            self.on_datagram(t, from, d);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                // ICMP errors surface here on some platforms; a datagram socket carries on.
                Err(e) if is_transient(&e) => {}
                Err(e) => break Err(e),
            }
        };
        self.recv = batch;
        result
    }

    /// Run receive, timers and sends until `deadline`, then return (events wait in
    /// [`poll_event`](Self::poll_event)).
    pub async fn drive_until(&mut self, deadline: tokio::time::Instant) -> io::Result<()> {
        loop {
            // Drain what is already queued first, so a caller that arrives late (deadline
            // already past) still receives. An error shows again once the socket wakes us.
            let _ = self.recv_ready(now());
            let t = now();
            self.deliver_inbound(t);
            if self.endpoint.poll_timeout().is_some_and(|w| w <= t) {
                self.endpoint.handle_timeout(t);
            }
            self.flush();
            let t = now();
            let wake = [
                self.endpoint.poll_timeout(),
                self.inbound.poll_timeout(),
                self.outbound.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .map(|w| tokio::time::Instant::from_std(w.max(t)))
            .chain(std::iter::once(deadline))
            .min()
            .unwrap_or(deadline);
            if tokio::time::Instant::now() >= deadline {
                return Ok(());
            }
            tokio::select! {
                r = self.udp.readable() => {
                    r?;
                    self.recv_ready(now())?;
                }
                m = async {
                    match self.streams.as_mut() {
                        Some(s) => s.rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.on_stream_message(m);
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// Record a datagram into the capture, if one runs; a write error ends the capture, never
/// the game.
fn record(
    capture: &mut Option<(PcapCapture, SocketAddr)>,
    from: Option<SocketAddr>,
    to: Option<SocketAddr>,
    bytes: &[u8],
) {
    if let Some((c, local)) = capture.as_mut() {
        let (from, to) = (from.unwrap_or(*local), to.unwrap_or(*local));
        if let Err(e) = c.record(from, to, bytes) {
            tracing::warn!(error = %e, "packet capture stopped");
            *capture = None;
        }
    }
}

impl<E: Endpoint> Driver<E> {
    /// Bind a UDP socket at `addr` for an endpoint built by the caller (e.g. a
    /// [`replication::Server`]); the endpoint's clock must be this driver's (tokio's).
    pub async fn on_socket(addr: SocketAddr, endpoint: E) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        Ok(Self::new(socket, endpoint, rand::random()))
    }

    /// Keep driving until every datagram held in the outbound conditioner has left (a
    /// goodbye delayed by simulated latency, say), or until `limit` passes.
    pub async fn drain_outbound(&mut self, limit: std::time::Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        self.flush();
        while !self.outbound.is_idle() && tokio::time::Instant::now() < deadline {
            let step =
                (tokio::time::Instant::now() + std::time::Duration::from_millis(5)).min(deadline);
            self.drive_until(step).await?;
        }
        Ok(())
    }
}

/// Longest a client waits for its goodbye to leave a delayed outbound link.
const CLOSE_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::Interrupted
    )
}

impl NetServer {
    /// Bind a server socket at `addr`; fails on an unusable config or socket.
    pub async fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        seed: u64,
    ) -> Result<Self, ConnectError> {
        let server = Server::new(config, now(), seed).map_err(replication::ConfigError::from)?;
        let socket = UdpSocket::bind(addr).await?;
        Ok(Self::new(socket, server, seed))
    }

    /// Tell every client the server is shutting down, send the goodbyes, and wait (at most
    /// a second) for them to leave the socket.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.endpoint.shutdown();
        let limit = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.endpoint.client_count() > 0 && tokio::time::Instant::now() < limit {
            self.flush();
            self.drive_until(tokio::time::Instant::now() + std::time::Duration::from_millis(5))
                .await?;
        }
        Ok(())
    }
}

/// Why [`NetClient::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket could not be bound or used.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    /// The conditioner settings are invalid.
    #[error("bad link simulation: {0}")]
    Conditioner(ConfigError),
    /// The server refused or never answered.
    #[error("could not connect to {server}: {reason}")]
    Refused {
        /// Where we tried to connect.
        server: SocketAddr,
        /// What happened.
        reason: DisconnectReason,
    },
    /// The configuration is unusable.
    #[error("bad config: {0}")]
    Config(#[from] replication::ConfigError),
    /// The session ended before it was ready (e.g. an unusable welcome).
    #[error("could not join {server}: {reason}")]
    Closed {
        /// Where we tried to connect.
        server: SocketAddr,
        /// What happened.
        reason: replication::CloseReason,
    },
    /// Nothing answered the handshake over UDP in time: the sign of a network that blocks
    /// UDP, and the cue to fall back to a stream.
    #[error("no answer over udp from {server} within {after:?}")]
    NoAnswer {
        /// Where we tried to connect.
        server: SocketAddr,
        /// How long we waited.
        after: Duration,
    },
}

/// When a client gives up on UDP, and where it goes instead: a WebSocket to the server.
///
/// Checked when the join starts (an unusable one is a [`ConnectError::Config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    /// Give up on UDP when the server has not answered the handshake within this long
    /// ([`Fallback::DEFAULT_AFTER`] by default). Only silence counts: once the server has
    /// answered, UDP gets through, and a slow handshake goes on until the connect timeout.
    pub after: Duration,
    /// Where the server accepts WebSockets. `None` (the default): the server's IP and port
    /// number, over TCP (the address the endpoint talks to, which in secure mode is the
    /// connect token's).
    pub addr: Option<SocketAddr>,
}

impl Fallback {
    /// 2 s: twenty handshake attempts at the default 10 Hz. A UDP path that works answers
    /// within one round trip, and even at 50 % loss each way one of twenty attempts gets
    /// through both ways 99.7 % of the time; a player whose network blocks UDP waits only
    /// this long before playing over the stream.
    pub const DEFAULT_AFTER: Duration = Duration::from_secs(2);

    fn validate(&self) -> Result<(), replication::ConfigError> {
        if self.after.is_zero() {
            return Err(replication::ConfigError::Invalid(
                "fallback time must be above zero",
            ));
        }
        if let Some(a) = self.addr
            && (a.port() == 0 || a.ip().is_unspecified())
        {
            return Err(replication::ConfigError::Invalid(
                "fallback address must name a host and a port",
            ));
        }
        Ok(())
    }
}

impl Default for Fallback {
    fn default() -> Self {
        Self {
            after: Self::DEFAULT_AFTER,
            addr: None,
        }
    }
}

impl NetClient {
    /// Bind an ephemeral local socket and connect to `server`, waiting until connected or
    /// until the connect timeout of `config` (default 5 s) has passed.
    pub async fn connect(
        server: SocketAddr,
        config: ClientConfig,
        seed: u64,
        conditioner: Option<(ConditionerConfig, ConditionerConfig)>,
    ) -> Result<Self, ConnectError> {
        let client =
            Client::new(config, server, now(), seed).map_err(replication::ConfigError::from)?;
        let socket = UdpSocket::bind(unspecified_for(server)).await?;
        let mut driver = Self::new(socket, client, seed);
        if let Some((inbound, outbound)) = conditioner {
            driver
                .set_conditioner(inbound, outbound)
                .map_err(ConnectError::Conditioner)?;
        }
        loop {
            let step = tokio::time::Instant::now() + std::time::Duration::from_millis(10);
            driver.drive_until(step).await?;
            // Leave events queued for the application; only look at the state.
            match driver.endpoint.state() {
                crate::ClientState::Connected(_) => return Ok(driver),
                crate::ClientState::Disconnected(reason) => {
                    return Err(ConnectError::Refused { server, reason });
                }
                _ => {}
            }
        }
    }
}

impl NetClient {
    /// Say goodbye and wait (at most a second) until it has left this side's link, so a
    /// simulated latency cannot swallow it.
    pub async fn close(&mut self) -> io::Result<()> {
        self.endpoint.disconnect();
        self.drain_outbound(CLOSE_DRAIN_LIMIT).await
    }
}

/// The replication server on a socket.
pub type ReplicationServer = Driver<replication::Server>;
/// The replication client on a socket.
pub type ReplicationClient<I> = Driver<replication::Client<I>>;

impl ReplicationServer {
    /// Bind a replication server at `addr`.
    pub async fn bind_replication(
        addr: SocketAddr,
        config: replication::ServerConfig,
    ) -> Result<Self, ConnectError> {
        let server = replication::Server::new(config, now())?;
        Ok(Self::on_socket(addr, server).await?)
    }

    /// Tell every client the server is shutting down, send the goodbyes, and wait (at most
    /// a second) for them to leave the socket.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.endpoint.shutdown();
        let limit = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.endpoint.client_count() > 0 && tokio::time::Instant::now() < limit {
            self.flush();
            self.drive_until(tokio::time::Instant::now() + std::time::Duration::from_millis(5))
                .await?;
        }
        self.drain_outbound(CLOSE_DRAIN_LIMIT).await
    }
}

impl<I: Serialize> ReplicationClient<I> {
    /// Connect to `server` and wait until its welcome arrived (or the connect timeout of
    /// `config` passed). The events so far (connected, welcomed) stay queued for the game.
    pub async fn join(
        server: SocketAddr,
        config: replication::ClientConfig,
        conditioner: Option<(ConditionerConfig, ConditionerConfig)>,
    ) -> Result<Self, ConnectError> {
        Self::join_captured(server, config, conditioner, None).await
    }

    /// [`join`](Self::join), recording every datagram (the handshake too) into a pcap file
    /// at `capture`.
    pub async fn join_captured(
        server: SocketAddr,
        config: replication::ClientConfig,
        conditioner: Option<(ConditionerConfig, ConditionerConfig)>,
        capture: Option<&std::path::Path>,
    ) -> Result<Self, ConnectError> {
        Self::join_udp(server, config, conditioner, capture, None).await
    }

    /// [`join_captured`](Self::join_captured), giving up with [`ConnectError::NoAnswer`]
    /// when nothing at all answered the handshake within `give_up_after` (or by the connect
    /// timeout, if that comes first). An answer that came keeps the join going until the
    /// welcome or the connect timeout: UDP gets through, so there is nothing to fall back
    /// from.
    pub async fn join_udp(
        server: SocketAddr,
        config: replication::ClientConfig,
        conditioner: Option<(ConditionerConfig, ConditionerConfig)>,
        capture: Option<&std::path::Path>,
        give_up_after: Option<Duration>,
    ) -> Result<Self, ConnectError> {
        let socket = UdpSocket::bind(unspecified_for(server)).await?;
        let client = replication::Client::new(config, server, now())?;
        let mut driver = Self::new(socket, client, rand::random());
        if let Some(path) = capture {
            driver.capture_to(path)?;
        }
        if let Some((inbound, outbound)) = conditioner {
            driver
                .set_conditioner(inbound, outbound)
                .map_err(ConnectError::Conditioner)?;
        }
        driver.wait_for_welcome(server, give_up_after).await
    }

    /// Join over UDP; when nothing answers within `fallback.after`, abandon that attempt
    /// and join afresh (a new handshake) over a WebSocket to `fallback.addr`, with the same
    /// `config`. [`transport_in_use`](Driver::transport_in_use) tells which one won. The
    /// conditioner applies to the UDP attempt only: a stream's link is the kernel's TCP.
    ///
    /// In secure mode the stream reuses the connect token. That is right where UDP never
    /// reached the server, the usual way networks block it. Where requests may reach the
    /// server but no answer comes back, the server has bound the token to the UDP address
    /// and refuses it from the stream's (netcode forbids a token's reuse from another
    /// address): compose [`join_udp`](Self::join_udp) and
    /// [`join_websocket`](Self::join_websocket) with a fresh token instead.
    pub async fn join_with_fallback(
        server: SocketAddr,
        config: replication::ClientConfig,
        conditioner: Option<(ConditionerConfig, ConditionerConfig)>,
        fallback: Fallback,
    ) -> Result<Self, ConnectError> {
        fallback.validate()?;
        match Self::join_udp(
            server,
            config.clone(),
            conditioner,
            None,
            Some(fallback.after),
        )
        .await
        {
            Err(ConnectError::NoAnswer { after, .. }) => {
                tracing::info!(%server, ?after, "no answer over udp; falling back to a websocket");
                Self::join_websocket(server, config, fallback.addr).await
            }
            joined => joined,
        }
    }

    /// Like [`join`](Self::join), but over a WebSocket to `websocket` (default: the
    /// server's IP and port number, over TCP), which the server must
    /// [`listen_websocket`](Driver::listen_websocket) on. The endpoint still talks to
    /// `server` (in secure mode, to its token's address, which the server checks against
    /// its own): only the bytes take the stream.
    pub async fn join_websocket(
        server: SocketAddr,
        config: replication::ClientConfig,
        websocket: Option<SocketAddr>,
    ) -> Result<Self, ConnectError> {
        let timeout = config.client.connect_timeout;
        let client = replication::Client::new(config, server, now())?;
        let peer = client.connection().server_addr();
        let target = websocket.unwrap_or(peer);
        let socket = UdpSocket::bind(unspecified_for(server)).await?;
        let mut driver = Self::new(socket, client, rand::random());
        let mut streams = stream::Streams::new();
        match tokio::time::timeout(timeout, streams.connect_websocket(target, peer)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ConnectError::Refused {
                    server,
                    reason: DisconnectReason::ConnectTimedOut,
                });
            }
        }
        driver.streams = Some(streams);
        driver.transport = TransportInUse::WebSocket;
        driver.wait_for_welcome(server, None).await
    }

    /// Like [`join`](Self::join), but over a TCP stream to `server` (which must
    /// [`listen_stream`](Driver::listen_stream)): the same protocol, the kernel's TCP as
    /// the link.
    pub async fn join_stream(
        server: SocketAddr,
        config: replication::ClientConfig,
    ) -> Result<Self, ConnectError> {
        let timeout = config.client.connect_timeout;
        let socket = UdpSocket::bind(unspecified_for(server)).await?;
        let client = replication::Client::new(config, server, now())?;
        let mut driver = Self::new(socket, client, rand::random());
        let mut streams = stream::Streams::new();
        match tokio::time::timeout(timeout, streams.connect(server)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ConnectError::Refused {
                    server,
                    reason: DisconnectReason::ConnectTimedOut,
                });
            }
        }
        driver.streams = Some(streams);
        driver.transport = TransportInUse::Tcp;
        driver.wait_for_welcome(server, None).await
    }

    /// Drive until the welcome, the end of the session, or (with `give_up_after`) that long
    /// without any answer to the handshake.
    async fn wait_for_welcome(
        mut self,
        server: SocketAddr,
        give_up_after: Option<Duration>,
    ) -> Result<Self, ConnectError> {
        let started = tokio::time::Instant::now();
        let give_up_at = give_up_after.map(|d| started + d);
        // Whether the server ever answered: a challenge moves the state past Requesting.
        let mut answered = false;
        loop {
            let mut step = tokio::time::Instant::now() + Duration::from_millis(10);
            if let Some(g) = give_up_at {
                step = step.min(g);
            }
            self.drive_until(step).await?;
            if self.endpoint.welcome().is_some() {
                return Ok(self);
            }
            match self.endpoint.connection().state() {
                crate::ClientState::Requesting | crate::ClientState::Disconnected(_) => {}
                _ => answered = true,
            }
            let unanswered = give_up_after.is_some() && !answered;
            if let Some(reason) = self.endpoint.close_reason().cloned() {
                return Err(match reason {
                    replication::CloseReason::Connection(DisconnectReason::ConnectTimedOut)
                        if unanswered =>
                    {
                        ConnectError::NoAnswer {
                            server,
                            after: started.elapsed(),
                        }
                    }
                    replication::CloseReason::Connection(reason) => {
                        ConnectError::Refused { server, reason }
                    }
                    reason => ConnectError::Closed { server, reason },
                });
            }
            if let (Some(at), Some(after)) = (give_up_at, give_up_after)
                && unanswered
                && tokio::time::Instant::now() >= at
            {
                return Err(ConnectError::NoAnswer { server, after });
            }
        }
    }

    /// Say goodbye and wait (at most a second) until it has left this side's link.
    pub async fn close(&mut self) -> io::Result<()> {
        self.endpoint.disconnect();
        self.drain_outbound(CLOSE_DRAIN_LIMIT).await
    }
}

fn unspecified_for(server: SocketAddr) -> SocketAddr {
    if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod udp_tests;

#[cfg(test)]
mod close_tests {
    //! A goodbye through a delayed link, on loopback.

    use std::time::Duration;

    use super::*;
    use crate::conditioner::ConditionerConfig;

    #[tokio::test(flavor = "current_thread")]
    async fn a_goodbye_crosses_the_clients_own_latency_and_the_server_stops_sending() {
        let mut server = ReplicationServer::bind_replication(
            "127.0.0.1:0".parse().unwrap(),
            replication::ServerConfig::default(),
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let delayed = ConditionerConfig {
            enabled: true,
            latency: Duration::from_millis(40),
            ..ConditionerConfig::off()
        };
        let joining = tokio::spawn(async move {
            ReplicationClient::<u8>::join(
                addr,
                replication::ClientConfig::default(),
                Some((delayed.clone(), delayed)),
            )
            .await
        });
        fn tick(server: &mut ReplicationServer) {
            let now = server.now();
            server
                .endpoint_mut()
                .tick(now, &crate::snapshot::World::new());
            server.flush();
        }
        // Serve until the client is in (bounded: 5 s of 16 ms steps).
        for _ in 0..300 {
            server
                .drive_until(tokio::time::Instant::now() + Duration::from_millis(16))
                .await
                .unwrap();
            tick(&mut server);
            if joining.is_finished() {
                break;
            }
        }
        let mut client = joining.await.unwrap().expect("joined");
        // The goodbye waits 40 ms in the client's outbound link; close() sees it out.
        let serving = tokio::spawn(async move {
            let mut left = None;
            for _ in 0..120 {
                server
                    .drive_until(tokio::time::Instant::now() + Duration::from_millis(16))
                    .await
                    .unwrap();
                while let Some(e) = server.poll_event() {
                    if let replication::ServerEvent::ClientLeft { reason, .. } = e {
                        left = Some(reason);
                    }
                }
                tick(&mut server);
                if left.is_some() {
                    break;
                }
            }
            let sent_at_leave = server.endpoint().connection().stats().packets_out;
            for _ in 0..5 {
                server
                    .drive_until(tokio::time::Instant::now() + Duration::from_millis(16))
                    .await
                    .unwrap();
                tick(&mut server);
            }
            let sent_after = server.endpoint().connection().stats().packets_out;
            (
                left,
                server.endpoint().client_count(),
                sent_after - sent_at_leave,
            )
        });
        client.close().await.unwrap();
        let (left, clients, sent_after) = serving.await.unwrap();
        assert_eq!(
            left,
            Some(DisconnectReason::Peer(
                crate::packet::DisconnectReasonCode::Requested
            )),
            "the goodbye arrived, not a timeout"
        );
        assert_eq!(clients, 0);
        assert_eq!(sent_after, 0, "nothing is sent to a client that has left");
    }
}
