//! The engine's packets over TCP streams, as length-prefixed frames.
//!
//! A stream peer speaks the same protocol as a UDP peer — handshake, acks, channels,
//! snapshot parts — one packet per frame; the driver hands frames to the sans-IO endpoint as
//! datagrams from the stream's peer address and writes the endpoint's transmits to that
//! address as frames. The kernel's TCP is the link, so the conditioner does not apply: a
//! stream delivers everything, in order, and a lost segment holds back all behind it
//! (head-of-line blocking). That is why it is here: to compare, or to get through networks
//! that block UDP.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::RECV_BUFFER_BYTES;
use super::frame::{read_frame, write_frame};

/// Frames queued for one stream before further ones are dropped (a peer that does not read).
const WRITE_QUEUE_FRAMES: usize = 1024;
/// Frames from all streams queued for the driver.
const READ_QUEUE_FRAMES: usize = 4096;

/// What the per-stream tasks tell the driver.
#[derive(Debug)]
pub(crate) enum StreamIn {
    /// A stream opened; frames for it go into this sender.
    Open(SocketAddr, mpsc::Sender<Vec<u8>>),
    /// A frame arrived.
    Frame(SocketAddr, Vec<u8>),
    /// A stream ended.
    Closed(SocketAddr),
}

/// Counters of the stream side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Streams opened.
    pub opened: u64,
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
    writers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    accept: Option<JoinHandle<()>>,
    pub(crate) stats: StreamStats,
}

impl Drop for Streams {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
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
            accept: None,
            stats: StreamStats::default(),
        }
    }

    /// Accept streams on `listener` from now on.
    pub(crate) fn listen(&mut self, listener: TcpListener) {
        let tx = self.tx.clone();
        self.accept = Some(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        let writer = spawn_stream(stream, peer, tx.clone());
                        if tx.send(StreamIn::Open(peer, writer)).await.is_err() {
                            return;
                        }
                    }
                    // A failed accept (out of descriptors, a reset) is the one stream's.
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        }));
    }

    /// Connect a stream to `server`; its frames arrive as from `server`.
    pub(crate) async fn connect(&mut self, server: SocketAddr) -> io::Result<()> {
        let stream = TcpStream::connect(server).await?;
        // Known before the first send: a handshake packet that went out over UDP instead
        // would earn a cookie for the wrong address.
        let writer = spawn_stream(stream, server, self.tx.clone());
        self.stats.opened += 1;
        self.writers.insert(server, writer);
        Ok(())
    }

    /// Take one message from the stream tasks; returns a frame to hand to the endpoint.
    pub(crate) fn on_message(&mut self, m: StreamIn) -> Option<(SocketAddr, Vec<u8>)> {
        match m {
            StreamIn::Open(peer, writer) => {
                self.stats.opened += 1;
                self.writers.insert(peer, writer);
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
        let Some(w) = self.writers.get(&to) else {
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

/// Start the reader and writer tasks of one stream; returns where its frames go.
fn spawn_stream(
    stream: TcpStream,
    peer: SocketAddr,
    tx: mpsc::Sender<StreamIn>,
) -> mpsc::Sender<Vec<u8>> {
    // One frame per packet, sent at once: Nagle's delay would add up to a round trip.
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (wtx, mut wrx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE_FRAMES);
    tokio::spawn(async move {
        while let Some(f) = wrx.recv().await {
            if write_frame(&mut wr, &f).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        // A frame larger than any packet is a broken or hostile peer: the stream ends.
        while let Ok(Some(f)) = read_frame(&mut rd, RECV_BUFFER_BYTES).await {
            if tx.send(StreamIn::Frame(peer, f)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(StreamIn::Closed(peer)).await;
    });
    wtx
}
