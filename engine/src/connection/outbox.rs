//! Packets built by `send_datagram`, waiting for `poll_transmit`, one after another in one
//! buffer.
//!
//! A server sends a packet to each of its clients every tick and writes them all out right
//! after. Kept by each connection, every packet went into that connection's own buffer, cold
//! by its turn, and was found again through the timer index when the transmits were polled.
//! Here a tick's packets are written one after the other into memory reused from tick to
//! tick, and read back in the order they were sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;

/// Bytes already sent at the front of the buffer past which it is compacted while packets
/// still wait: a caller that sends one more datagram for every one it polls never empties
/// the outbox, and the buffer must not grow for it.
const COMPACT_AFTER_BYTES: usize = 256 * 1024;

/// One packet waiting: for whom (`K`: the server's client id), where to, and its bytes.
#[derive(Debug, Clone)]
struct Queued<K> {
    to: K,
    destination: SocketAddr,
    bytes: Range<usize>,
}

#[derive(Debug)]
pub(crate) struct Outbox<K> {
    /// Every waiting packet's bytes, in sending order; emptied (not freed) once all are out.
    bytes: Vec<u8>,
    packets: VecDeque<Queued<K>>,
}

impl<K> Default for Outbox<K> {
    fn default() -> Self {
        Self {
            bytes: Vec::new(),
            packets: VecDeque::new(),
        }
    }
}

impl<K: Copy + PartialEq> Outbox<K> {
    pub(crate) fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Queue the packet `write` appends to the buffer (nothing when it fails or writes
    /// nothing) for `to` at `destination`.
    pub(crate) fn push<T, E>(
        &mut self,
        to: K,
        destination: SocketAddr,
        write: impl FnOnce(&mut Vec<u8>) -> Result<T, E>,
    ) -> Result<T, E> {
        let start = self.bytes.len();
        let result = write(&mut self.bytes);
        if result.is_err() {
            self.bytes.truncate(start);
        } else if self.bytes.len() > start {
            self.packets.push_back(Queued {
                to,
                destination,
                bytes: start..self.bytes.len(),
            });
        }
        result
    }

    /// The oldest packet, copied into `buf` (cut to its length), with whom it is for.
    pub(crate) fn pop(&mut self, buf: &mut [u8]) -> Option<(K, SocketAddr, usize)> {
        let p = self.packets.pop_front()?;
        let bytes = &self.bytes[p.bytes];
        let len = bytes.len().min(buf.len());
        buf[..len].copy_from_slice(&bytes[..len]);
        match self.packets.front() {
            None => self.bytes.clear(),
            Some(next) if next.bytes.start >= COMPACT_AFTER_BYTES.max(self.bytes.len() / 2) => {
                // Move what waits to the front: each byte moves at most once per its own
                // length of bytes sent before it, so this costs O(1) per byte sent.
                let sent = next.bytes.start;
                self.bytes.drain(..sent);
                for q in &mut self.packets {
                    q.bytes = q.bytes.start - sent..q.bytes.end - sent;
                }
            }
            Some(_) => {}
        }
        Some((p.to, p.destination, len))
    }

    /// Drop every packet waiting for `to` (its connection ends, or says goodbye first).
    pub(crate) fn forget(&mut self, to: K) {
        self.packets.retain(|p| p.to != to);
        if self.packets.is_empty() {
            self.bytes.clear();
        }
    }

    /// Drop every packet waiting.
    pub(crate) fn clear(&mut self) {
        self.packets.clear();
        self.bytes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_come_out_in_order_and_forgotten_ones_never() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut out: Outbox<u32> = Outbox::default();
        let mut buf = [0u8; 16];
        for (who, bytes) in [(1, &b"one"[..]), (2, b"two!"), (1, b"three"), (3, b"")] {
            let r: Result<(), ()> = out.push(who, to, |v| {
                v.extend_from_slice(bytes);
                Ok(())
            });
            assert!(r.is_ok());
        }
        // A failed write leaves nothing behind, even what it wrote before failing.
        let r: Result<(), ()> = out.push(4, to, |v| {
            v.extend_from_slice(b"half");
            Err(())
        });
        assert!(r.is_err());
        assert_eq!(out.pop(&mut buf), Some((1, to, 3)));
        assert_eq!(&buf[..3], b"one");
        out.forget(1);
        assert_eq!(out.pop(&mut buf), Some((2, to, 4)));
        assert_eq!(&buf[..4], b"two!");
        // Client 1's second packet was forgotten; the empty write queued nothing.
        assert_eq!(out.pop(&mut buf), None);
        assert!(out.is_empty() && out.bytes.is_empty());
        // A buffer too short gets the start of the packet, as a datagram socket would.
        let _: Result<(), ()> = out.push(5, to, |v| {
            v.extend_from_slice(&[7; 20]);
            Ok(())
        });
        assert_eq!(out.pop(&mut buf), Some((5, to, 16)));
        out.clear();
        assert!(out.is_empty());
    }

    #[test]
    fn an_outbox_never_emptied_stays_small() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut out: Outbox<u32> = Outbox::default();
        let mut buf = [0u8; 1200];
        let push = |out: &mut Outbox<u32>, n: u32| {
            let _: Result<(), ()> = out.push(n, to, |v| {
                v.extend_from_slice(&n.to_le_bytes());
                v.resize(v.len() + 996, n as u8);
                Ok(())
            });
        };
        push(&mut out, 0);
        // One packet in, one out, with one always waiting: 10 MB go through.
        for n in 1..10_000u32 {
            push(&mut out, n);
            let (who, _, len) = out.pop(&mut buf).expect("a packet waits");
            assert_eq!((who, len), (n - 1, 1000));
            assert_eq!(
                buf[..4],
                (n - 1).to_le_bytes(),
                "the bytes of packet {}",
                n - 1
            );
            assert!(out.bytes.len() <= 2 * COMPACT_AFTER_BYTES + 1000);
        }
        assert_eq!(out.pop(&mut buf).map(|p| p.0), Some(9_999));
        assert!(out.is_empty() && out.bytes.is_empty());
    }
}
