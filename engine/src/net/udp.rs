//! The driver's UDP socket, batched: one system call carries several datagrams each way.
//!
//! Sends: the datagrams of one [`flush`](super::Driver::flush) are written by the endpoint
//! straight into a fixed [`SendBatch`], then leave peer by peer: a run of one peer's
//! datagrams of one size (the last may be shorter) goes out in one `sendmsg` with UDP GSO,
//! and the kernel cuts it into datagrams. Receives: `recvmmsg` fills several buffers per
//! call, and with UDP GRO the kernel puts consecutive datagrams of one sender into one
//! buffer, cut at a stride that [`datagrams`] splits at. The system calls and the probing of
//! what the kernel supports are quinn-udp's; where the kernel has no GSO or GRO, or the
//! socket refuses quinn-udp's options, every datagram takes its own call, as on a plain
//! socket, and nothing else changes.
//!
//! quinn-udp also sets the don't-fragment bit without fragmenting locally
//! (`IP_PMTUDISC_PROBE`): the engine's packets, at most 1428 bytes on the wire, fit any
//! 1500-byte link, and an interface with a smaller MTU refuses them (a send error, counted)
//! rather than sending fragments, of which losing one loses the packet.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::RECV_BUFFER_BYTES;
use crate::packet::MAX_PACKET_BYTES;

/// Datagrams one send batch holds; a flush with more sends several batches. 64 is the most
/// segments Linux's UDP GSO takes in one call, and the buffer stays at 64 packets (88 KiB).
pub(super) const SEND_BATCH_DATAGRAMS: usize = 64;
/// Most bytes in one GSO send: the largest UDP payload an IPv4 packet carries
/// (65 535 − 20 − 8); a GSO buffer must fit in one, before the kernel cuts it.
const GSO_MAX_BYTES: usize = 65_507;
/// Receive buffer per call slot with GRO: the kernel coalesces up to 64 KiB including its
/// headers, and a coalesced buffer cut short would lose whole datagrams.
const GRO_SLOT_BYTES: usize = 65_536;
/// Buffers one receive call fills without GRO, each of `RECV_BUFFER_BYTES` (quinn-udp's `recvmmsg` batch on Linux).
const RECV_SLOTS: usize = 32;
/// Buffers one receive call fills with GRO: each holds up to 64 datagrams of one sender,
/// and four keep a driver's receive memory at 256 KiB.
const GRO_RECV_SLOTS: usize = 4;

/// What the kernel offers a driver's UDP socket, as quinn-udp probed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UdpOffloads {
    /// Most datagrams one send call carries to one peer (UDP GSO); 1 without GSO. It drops
    /// to 1 for good when the path refuses a GSO send.
    pub gso_segments: usize,
    /// Most datagrams the kernel hands over in one receive buffer (UDP GRO); 1 without GRO.
    pub gro_segments: usize,
    /// Whether sends and receives go through quinn-udp's batched calls; `false` where the
    /// socket refused its options, and each datagram takes its own call.
    pub batched: bool,
}

/// The socket, and quinn-udp's view of it.
#[derive(Debug)]
pub(super) struct UdpIo {
    socket: UdpSocket,
    /// `None` where quinn-udp could not set the socket up; tokio's calls then carry one
    /// datagram each.
    state: Option<UdpSocketState>,
}

impl UdpIo {
    pub(super) fn new(socket: UdpSocket) -> Self {
        let state = match UdpSocketState::new((&socket).into()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no batched udp on this socket: one datagram per call");
                None
            }
        };
        Self { socket, state }
    }

    pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(super) fn offloads(&self) -> UdpOffloads {
        UdpOffloads {
            gso_segments: self.max_gso_segments(),
            gro_segments: self.state.as_ref().map_or(1, |s| s.gro_segments()),
            batched: self.state.is_some(),
        }
    }

    fn max_gso_segments(&self) -> usize {
        self.state.as_ref().map_or(1, |s| s.max_gso_segments())
    }

    /// Wait until the socket may have something to read.
    pub(super) async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Send without waiting: a full socket buffer is `WouldBlock`.
    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match &self.state {
            Some(state) => self.socket.try_io(Interest::WRITABLE, || {
                state.try_send((&self.socket).into(), transmit)
            }),
            // Without quinn-udp there is no GSO, so a transmit is one datagram.
            None => self
                .socket
                .try_send_to(transmit.contents, transmit.destination)
                .map(|_| ()),
        }
    }

    /// One receive call without waiting; returns how many of `bufs` it filled.
    fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        match &self.state {
            Some(state) => self.socket.try_io(Interest::READABLE, || {
                state.recv((&self.socket).into(), bufs, meta)
            }),
            None => {
                let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
                    return Ok(0);
                };
                let (len, from) = self.socket.try_recv_from(buf)?;
                m.addr = from;
                m.len = len;
                m.stride = len;
                Ok(1)
            }
        }
    }
}

/// The datagrams in a buffer of several cut at `stride` (the last may be shorter). An empty
/// buffer is one empty datagram; a zero stride, which the kernel never reports, is read as
/// one datagram rather than trusted.
pub(super) fn datagrams(buf: &[u8], stride: usize) -> impl Iterator<Item = &[u8]> {
    let stride = if stride == 0 {
        buf.len().max(1)
    } else {
        stride
    };
    let empty = buf.is_empty().then_some(buf);
    buf.chunks(stride).chain(empty)
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    to: SocketAddr,
    start: usize,
    len: usize,
}

/// The datagrams of a flush, written in place by the endpoint, waiting to leave together.
pub(super) struct SendBatch {
    /// `SEND_BATCH_DATAGRAMS` packets' room; datagrams packed one after the other.
    buf: Vec<u8>,
    used: usize,
    queued: Vec<Queued>,
    /// Where one peer's datagrams are put side by side when others came between them (GSO
    /// sends one contiguous buffer); grows to `GSO_MAX_BYTES` at most, and only on a server.
    staging: Vec<u8>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("queued", &self.queued.len())
            .field("bytes", &self.used)
            .finish()
    }
}

impl SendBatch {
    pub(super) fn new() -> Self {
        Self {
            buf: vec![0; SEND_BATCH_DATAGRAMS * MAX_PACKET_BYTES],
            used: 0,
            queued: Vec::with_capacity(SEND_BATCH_DATAGRAMS),
            staging: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether it must be sent before another datagram fits.
    pub(super) fn is_full(&self) -> bool {
        self.queued.len() >= SEND_BATCH_DATAGRAMS || self.buf.len() - self.used < MAX_PACKET_BYTES
    }

    /// Room for the next datagram, for an endpoint to write into: `MAX_PACKET_BYTES`, the
    /// room endpoints ask for. Only called when the batch is not full.
    pub(super) fn next_slot(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..self.used + MAX_PACKET_BYTES]
    }

    /// Keep the first `len` bytes of the slot as a datagram to `to`.
    pub(super) fn commit(&mut self, to: SocketAddr, len: usize) {
        // A transmit is never longer than the buffer it was written into.
        let len = len.min(MAX_PACKET_BYTES);
        self.queued.push(Queued {
            to,
            start: self.used,
            len,
        });
        self.used += len;
    }

    /// Queue a copy of `bytes` (a datagram the link conditioner held). Only called when the
    /// batch is not full; returns `false` for a datagram longer than any packet.
    pub(super) fn push(&mut self, to: SocketAddr, bytes: &[u8]) -> bool {
        let Some(slot) = self.next_slot().get_mut(..bytes.len()) else {
            return false;
        };
        slot.copy_from_slice(bytes);
        self.commit(to, bytes.len());
        true
    }

    /// Send everything queued and empty the batch. Each peer's datagrams leave in the order
    /// they were queued (peers are independent of each other, so their runs may leave in any
    /// order); `sent` hears of every call: the peer, the bytes (several datagrams cut at the
    /// segment size when more than one), the segment size, and the outcome.
    pub(super) fn send(
        &mut self,
        io: &UdpIo,
        mut sent: impl FnMut(SocketAddr, &[u8], usize, &io::Result<()>),
    ) {
        let max_segments = io.max_gso_segments().clamp(1, SEND_BATCH_DATAGRAMS);
        let n = self.queued.len();
        let mut gone = [false; SEND_BATCH_DATAGRAMS];
        let mut run = [0usize; SEND_BATCH_DATAGRAMS];
        for first in 0..n {
            if gone[first] {
                continue;
            }
            let head = self.queued[first];
            // The peer's next datagrams in order, as many as one GSO send carries: all of
            // the head's size, except that a shorter one may end the run.
            let (mut count, mut total, mut contiguous) = (0, 0, true);
            for (i, q) in self.queued.iter().enumerate().skip(first) {
                if gone[i] || q.to != head.to {
                    continue;
                }
                if count > 0
                    && (count == max_segments
                        || head.len == 0
                        || q.len == 0
                        || q.len > head.len
                        || total + q.len > GSO_MAX_BYTES)
                {
                    break;
                }
                contiguous &= q.start == head.start + total;
                run[count] = i;
                gone[i] = true;
                count += 1;
                total += q.len;
                if q.len < head.len {
                    break;
                }
            }
            let contents: &[u8] = if contiguous {
                &self.buf[head.start..head.start + total]
            } else {
                self.staging.clear();
                for &i in &run[..count] {
                    let q = self.queued[i];
                    self.staging
                        .extend_from_slice(&self.buf[q.start..q.start + q.len]);
                }
                &self.staging
            };
            let transmit = Transmit {
                destination: head.to,
                ecn: None,
                contents,
                segment_size: (count > 1).then_some(head.len),
                src_ip: None,
            };
            match io.try_send(&transmit) {
                // A path may refuse GSO (a device without the offload: quinn-udp then stops
                // offering it on this socket) or one large send: each datagram on its own,
                // as a plain socket sends them. A full buffer is not retried: it drops the
                // datagrams, as a congested network would.
                Err(e) if count > 1 && e.kind() != io::ErrorKind::WouldBlock => {
                    tracing::debug!(to = %head.to, error = %e, "gso send failed; one by one");
                    for d in datagrams(contents, head.len) {
                        let alone = Transmit {
                            contents: d,
                            segment_size: None,
                            ..transmit.clone()
                        };
                        sent(head.to, d, d.len(), &io.try_send(&alone));
                    }
                }
                r => sent(head.to, contents, head.len, &r),
            }
        }
        self.queued.clear();
        self.used = 0;
    }
}

/// Buffers for one receive call, and what it brought.
#[derive(Default)]
pub(super) struct RecvBatch {
    buf: Vec<u8>,
    slot_bytes: usize,
    meta: Vec<RecvMeta>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.meta.len())
            .field("slot_bytes", &self.slot_bytes)
            .finish()
    }
}

impl RecvBatch {
    /// Buffers sized for what `io` may hand over: 64 KiB slots with GRO, else one packet's.
    pub(super) fn new(io: &UdpIo) -> Self {
        let (slots, slot_bytes) = if io.offloads().gro_segments > 1 {
            (GRO_RECV_SLOTS, GRO_SLOT_BYTES)
        } else {
            (
                RECV_SLOTS.min(quinn_udp::BATCH_SIZE.max(1)),
                RECV_BUFFER_BYTES,
            )
        };
        Self {
            buf: vec![0; slots * slot_bytes],
            slot_bytes,
            meta: vec![RecvMeta::default(); slots],
        }
    }

    /// One receive call without waiting; returns how many buffers it filled, which
    /// [`get`](Self::get) then reads.
    pub(super) fn recv(&mut self, io: &UdpIo) -> io::Result<usize> {
        let mut chunks = self.buf.chunks_mut(self.slot_bytes.max(1));
        let mut bufs: [IoSliceMut<'_>; RECV_SLOTS] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
        let slots = self.meta.len().min(RECV_SLOTS);
        let n = io.try_recv(&mut bufs[..slots], &mut self.meta[..slots])?;
        Ok(n.min(slots))
    }

    /// Buffer `i` of the last call: the sender, its bytes, and the stride the datagrams in it
    /// are cut at.
    pub(super) fn get(&self, i: usize) -> (SocketAddr, &[u8], usize) {
        let m = &self.meta[i];
        let start = i * self.slot_bytes;
        // The kernel never reports more than it wrote; the bound keeps a lie harmless.
        let len = m.len.min(self.slot_bytes);
        (m.addr, &self.buf[start..start + len], m.stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_coalesced_buffer_splits_at_its_stride_and_odd_ones_stay_whole() {
        let buf: Vec<u8> = (0..25).collect();
        let parts: Vec<&[u8]> = datagrams(&buf, 10).collect();
        assert_eq!(parts, [&buf[..10], &buf[10..20], &buf[20..]]);
        assert_eq!(datagrams(&buf, 25).count(), 1);
        assert_eq!(datagrams(&buf, 100).collect::<Vec<_>>(), [&buf[..]]);
        assert_eq!(
            datagrams(&buf, 0).collect::<Vec<_>>(),
            [&buf[..]],
            "zero stride"
        );
        assert_eq!(datagrams(&[], 0).collect::<Vec<_>>(), [&[] as &[u8]]);
        assert_eq!(datagrams(&[], 1400).count(), 1, "an empty datagram is one");
    }
}
