//! The engine's packets over TCP streams, in one of two framings.
//!
//! A stream peer speaks the same protocol as a UDP peer — handshake, acks, channels,
//! snapshot parts — one packet per frame; the driver hands frames to the sans-IO endpoint as
//! datagrams from the stream's peer address and writes the endpoint's transmits to that
//! address as frames. The kernel's TCP is the link, so the conditioner does not apply: a
//! stream delivers everything, in order, and a lost segment holds back all behind it
//! (head-of-line blocking). That is why it is here: to compare, or to get through networks
//! that block UDP.
//!
//! The framings differ only in how a packet is delimited on the byte stream:
//! [`Framing::LengthPrefixed`] (a u32 length, see [`super::frame`]) for the comparison
//! transport, and [`Framing::WebSocket`] (one binary message per packet, RFC 6455) for the
//! fallback, because a WebSocket passes the proxies and firewalls that let the web through.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::RECV_BUFFER_BYTES;
use super::frame::{read_frame, write_frame};

/// Frames queued for one stream before further ones are dropped (a peer that does not read).
const WRITE_QUEUE_FRAMES: usize = 1024;
/// Frames from all streams queued for the driver.
const READ_QUEUE_FRAMES: usize = 4096;
/// Streams open (or in their WebSocket handshake) at once on one driver; further
/// connections are closed at once. Each costs two tasks and a write queue, so a flood of
/// connections must not be able to open unboundedly many.
const MAX_OPEN_STREAMS: usize = 1024;
/// Longest an accepted connection may take to complete its WebSocket upgrade: a peer that
/// opens TCP and then says nothing must not hold a stream slot for ever.
const WEBSOCKET_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The WebSocket subprotocol a client offers and the server echoes (RFC 6455 section 1.9),
/// so a WebSocket endpoint of something else is told apart at the upgrade.
pub const WEBSOCKET_SUBPROTOCOL: &str = "snapsync";
/// The path a client asks for; the server accepts any path (a proxy may rewrite it).
pub const WEBSOCKET_PATH: &str = "/snapsync";

/// How packets are delimited on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// A u32 little-endian length, then the packet.
    LengthPrefixed,
    /// One binary WebSocket message per packet.
    WebSocket,
}

/// What the per-stream tasks tell the driver.
#[derive(Debug)]
pub(crate) enum StreamIn {
    /// A stream opened; frames for it go into this sender.
    Open(SocketAddr, Framing, mpsc::Sender<Vec<u8>>),
    /// A frame arrived.
    Frame(SocketAddr, Vec<u8>),
    /// A stream ended.
    Closed(SocketAddr),
}

/// Counters of the stream side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Streams opened, of either framing.
    pub opened: u64,
    /// Of those, WebSockets.
    pub websockets_opened: u64,
    /// Connections closed at once: 1024 streams were open already, or the WebSocket
    /// upgrade failed or took longer than 5 s.
    pub refused: u64,
    /// Frames received.
    pub frames_in: u64,
    /// Frames written.
    pub frames_out: u64,
    /// Frames dropped because the peer's write queue was full.
    pub dropped_slow_peer: u64,
}

/// Every stream of one driver.
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) rx: mpsc::Receiver<StreamIn>,
    tx: mpsc::Sender<StreamIn>,
    writers: HashMap<SocketAddr, (Framing, mpsc::Sender<Vec<u8>>)>,
    accept: Vec<JoinHandle<()>>,
    slots: Arc<Semaphore>,
    /// Connections the accept tasks closed without opening a stream (shared with them).
    refused: Arc<std::sync::atomic::AtomicU64>,
    pub(crate) stats: StreamStats,
}

impl Drop for Streams {
    fn drop(&mut self) {
        for a in self.accept.drain(..) {
            a.abort();
        }
    }
}

impl Streams {
    pub(crate) fn new() -> Self {
        let (tx, rx) = mpsc::channel(READ_QUEUE_FRAMES);
        Self {
            rx,
            tx,
            writers: HashMap::new(),
            accept: Vec::new(),
            slots: Arc::new(Semaphore::new(MAX_OPEN_STREAMS)),
            refused: Arc::default(),
            stats: StreamStats::default(),
        }
    }

    /// The counters, with the accept tasks' refusals folded in.
    pub(crate) fn stats(&self) -> StreamStats {
        StreamStats {
            refused: self.refused.load(std::sync::atomic::Ordering::Relaxed),
            ..self.stats
        }
    }

    /// Accept streams of `framing` on `listener` from now on (alongside any other listener).
    pub(crate) fn listen(&mut self, listener: TcpListener, framing: Framing) {
        let tx = self.tx.clone();
        let slots = self.slots.clone();
        let refused = self.refused.clone();
        self.accept.push(tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(s) => s,
                    // A failed accept (out of descriptors, a reset) is the one stream's.
                    Err(_) => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                match framing {
                    Framing::LengthPrefixed => {
                        if open_framed(stream, peer, &tx, slot).await.is_err() {
                            return;
                        }
                    }
                    // The upgrade is a round trip of HTTP: off the accept loop, so one slow
                    // peer does not hold up the others.
                    Framing::WebSocket => {
                        let tx = tx.clone();
                        let refused = refused.clone();
                        tokio::spawn(async move {
                            let upgrade = tokio::time::timeout(
                                WEBSOCKET_HANDSHAKE_TIMEOUT,
                                accept_websocket(stream),
                            )
                            .await;
                            match upgrade {
                                Ok(Ok(ws)) => {
                                    let _ = open_websocket(ws, peer, &tx, slot).await;
                                }
                                _ => {
                                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        });
                    }
                }
            }
        }));
    }

    /// Connect a length-prefixed stream to `server`; its frames arrive as from `server`.
    pub(crate) async fn connect(&mut self, server: SocketAddr) -> io::Result<()> {
        let stream = TcpStream::connect(server).await?;
        // Registered before the first send: a handshake packet that went out over UDP
        // instead would earn a cookie for the wrong address.
        let writer = spawn_framed(stream, server, self.tx.clone(), None);
        self.register(server, Framing::LengthPrefixed, writer);
        Ok(())
    }

    /// Open a WebSocket to `target` and carry the packets for `peer` on it: the endpoint
    /// keeps talking to `peer` (the address its connect token names, say) while the bytes
    /// go to wherever the server listens for WebSockets.
    pub(crate) async fn connect_websocket(
        &mut self,
        target: SocketAddr,
        peer: SocketAddr,
    ) -> io::Result<()> {
        let stream = TcpStream::connect(target).await?;
        let _ = stream.set_nodelay(true);
        let mut request = format!("ws://{target}{WEBSOCKET_PATH}")
            .into_client_request()
            .map_err(ws_error)?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(WEBSOCKET_SUBPROTOCOL),
        );
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config()))
                .await
                .map_err(ws_error)?;
        let writer = spawn_websocket(ws, peer, self.tx.clone(), None);
        self.register(peer, Framing::WebSocket, writer);
        Ok(())
    }

    fn register(&mut self, peer: SocketAddr, framing: Framing, writer: mpsc::Sender<Vec<u8>>) {
        self.stats.opened += 1;
        if framing == Framing::WebSocket {
            self.stats.websockets_opened += 1;
        }
        self.writers.insert(peer, (framing, writer));
    }

    /// The framing of `peer`'s stream, if it is a stream peer.
    pub(crate) fn framing_of(&self, peer: SocketAddr) -> Option<Framing> {
        self.writers.get(&peer).map(|(f, _)| *f)
    }

    /// Take one message from the stream tasks; returns a frame to hand to the endpoint.
    pub(crate) fn on_message(&mut self, m: StreamIn) -> Option<(SocketAddr, Vec<u8>)> {
        match m {
            StreamIn::Open(peer, framing, writer) => {
                self.register(peer, framing, writer);
                None
            }
            StreamIn::Frame(peer, bytes) => {
                self.stats.frames_in += 1;
                Some((peer, bytes))
            }
            StreamIn::Closed(peer) => {
                self.writers.remove(&peer);
                None
            }
        }
    }

    /// Write `bytes` to the stream of `to`, if `to` is a stream peer; false if it is not.
    pub(crate) fn send(&mut self, to: SocketAddr, bytes: &[u8]) -> bool {
        let Some((_, w)) = self.writers.get(&to) else {
            return false;
        };
        if w.try_send(bytes.to_vec()).is_ok() {
            self.stats.frames_out += 1;
        } else {
            self.stats.dropped_slow_peer += 1;
        }
        true
    }
}

/// Limits of every WebSocket: no message or frame larger than a datagram the driver would
/// read, so a hostile peer cannot make it buffer megabytes (tungstenite's default is 64 MiB).
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(RECV_BUFFER_BYTES))
        .max_frame_size(Some(RECV_BUFFER_BYTES))
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

/// The server's half of the upgrade: any path; the subprotocol echoed when offered.
async fn accept_websocket(stream: TcpStream) -> io::Result<WebSocketStream<TcpStream>> {
    let _ = stream.set_nodelay(true);
    // The signature is tungstenite's callback's; its error is an HTTP response it sends.
    #[allow(clippy::result_large_err)]
    let echo = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let offered = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == WEBSOCKET_SUBPROTOCOL);
        if offered {
            response.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(WEBSOCKET_SUBPROTOCOL),
            );
        }
        Ok(response)
    };
    tokio_tungstenite::accept_hdr_async_with_config(stream, echo, Some(websocket_config()))
        .await
        .map_err(ws_error)
}

/// Tell the driver about an accepted length-prefixed stream, then start its tasks. The
/// driver learns of the stream before any frame from it, so its first answer (the
/// handshake's) already goes back on the stream. Fails when the driver is gone.
async fn open_framed(
    stream: TcpStream,
    peer: SocketAddr,
    tx: &mpsc::Sender<StreamIn>,
    slot: OwnedSemaphorePermit,
) -> Result<(), ()> {
    let (wtx, wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    tx.send(StreamIn::Open(peer, Framing::LengthPrefixed, wtx))
        .await
        .map_err(drop)?;
    start_framed(stream, peer, tx.clone(), wrx, Some(slot));
    Ok(())
}

/// [`open_framed`] for an upgraded WebSocket.
async fn open_websocket(
    ws: WebSocketStream<TcpStream>,
    peer: SocketAddr,
    tx: &mpsc::Sender<StreamIn>,
    slot: OwnedSemaphorePermit,
) -> Result<(), ()> {
    let (wtx, wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    tx.send(StreamIn::Open(peer, Framing::WebSocket, wtx))
        .await
        .map_err(drop)?;
    start_websocket(ws, peer, tx.clone(), wrx, Some(slot));
    Ok(())
}

/// Start the tasks of a length-prefixed stream; returns where its frames go.
fn spawn_framed(
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<StreamIn>,
    slot: Option<OwnedSemaphorePermit>,
) -> mpsc::Sender<Vec<u8>> {
    let (wtx, wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    start_framed(stream, peer, tx, wrx, slot);
    wtx
}

/// Start the tasks of a WebSocket; returns where its frames go.
fn spawn_websocket(
    ws: WebSocketStream<TcpStream>,
    peer: SocketAddr,
    tx: mpsc::Sender<StreamIn>,
    slot: Option<OwnedSemaphorePermit>,
) -> mpsc::Sender<Vec<u8>> {
    let (wtx, wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    start_websocket(ws, peer, tx, wrx, slot);
    wtx
}

/// The reader and writer tasks of one length-prefixed stream. The reader holds the stream's
/// slot until the stream ends.
fn start_framed(
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<StreamIn>,
    mut frames: mpsc::Receiver<Vec<u8>>,
    slot: Option<OwnedSemaphorePermit>,
) {
    // One frame per packet, sent at once: Nagle's delay would add up to a round trip.
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if write_frame(&mut wr, &f).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let _slot = slot;
        // A frame larger than any packet is a broken or hostile peer: the stream ends.
        while let Ok(Some(f)) = read_frame(&mut rd, RECV_BUFFER_BYTES).await {
            if tx.send(StreamIn::Frame(peer, f)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(StreamIn::Closed(peer)).await;
    });
}

/// The reader and writer tasks of one WebSocket.
fn start_websocket(
    ws: WebSocketStream<TcpStream>,
    peer: SocketAddr,
    tx: mpsc::Sender<StreamIn>,
    mut frames: mpsc::Receiver<Vec<u8>>,
    slot: Option<OwnedSemaphorePermit>,
) {
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if sink.send(Message::Binary(f.into())).await.is_err() {
                break;
            }
        }
        // The driver dropped the stream (the session is over): close it properly.
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        let _slot = slot;
        while let Some(m) = source.next().await {
            match m {
                Ok(Message::Binary(bytes)) => {
                    if tx.send(StreamIn::Frame(peer, bytes.into())).await.is_err() {
                        return;
                    }
                }
                // tungstenite answers pings itself; pongs carry nothing for us.
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                // Text is not this protocol, and a close or an error (an oversized message
                // among them) ends the stream.
                Ok(Message::Text(_) | Message::Close(_) | Message::Frame(_)) | Err(_) => break,
            }
        }
        let _ = tx.send(StreamIn::Closed(peer)).await;
    });
}
