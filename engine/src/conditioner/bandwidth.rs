//! The bandwidth cap: a token bucket in front of a bounded tail-drop queue.
//!
//! The queue is FIFO and the bucket refills at a fixed rate, so a datagram's departure time
//! is known the moment it arrives. The cap therefore stores no datagrams: it hands back the
//! departure time and only remembers, per waiting datagram, when it leaves and how big it is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes the bucket holds when full: two full-size datagrams may leave back to back.
///
/// Larger buckets let a shaper pass bursts at line rate; two datagrams keep the delivered
/// rate close to the cap even over short windows.
pub const BUCKET_DEPTH_BYTES: usize = 3000;

/// Token bucket with its waiting queue; tokens are kept as transmit time (bits / rate).
#[derive(Debug, Clone)]
pub(crate) struct BandwidthCap {
    kbps: Option<u32>,
    /// Transmit time the bucket holds as of `last_departure`.
    credit: Duration,
    /// When the most recently admitted datagram leaves the queue.
    last_departure: Option<Instant>,
    /// (departure, bytes) of admitted datagrams still waiting, oldest first.
    waiting: VecDeque<(Instant, usize)>,
    /// Sum of the bytes in `waiting`.
    queued_bytes: usize,
}

impl BandwidthCap {
    /// A cap of `kbps` kbit/s, or no cap for `None`; the bucket starts full.
    pub(crate) fn new(kbps: Option<u32>) -> Self {
        let mut cap = Self {
            kbps: None,
            credit: Duration::ZERO,
            last_departure: None,
            waiting: VecDeque::new(),
            queued_bytes: 0,
        };
        cap.set_rate(kbps);
        cap
    }

    /// Changes the rate; datagrams already admitted keep their departure times.
    pub(crate) fn set_rate(&mut self, kbps: Option<u32>) {
        if self.kbps == kbps {
            return;
        }
        self.kbps = kbps;
        // Starting full avoids a warm-up stall; the depth is re-expressed at the new rate.
        self.credit = self.depth();
    }

    /// Bytes waiting for the cap as of the last `admit`.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Time to put `bytes` on the wire at the cap; zero without a cap.
    fn transmit_time(&self, bytes: usize) -> Duration {
        match self.kbps {
            // 1 kbit/s sends one bit per ms = 1e6 ns; u128 cannot overflow for any usize.
            Some(kbps) => {
                let ns = (bytes as u128) * 8 * 1_000_000 / u128::from(kbps.max(1));
                Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
            }
            None => Duration::ZERO,
        }
    }

    fn depth(&self) -> Duration {
        self.transmit_time(BUCKET_DEPTH_BYTES)
    }

    /// When a datagram of `bytes` arriving at `now` leaves the queue, or `None` when it
    /// must wait and the queue already holds too much (tail drop).
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        bytes: usize,
        limit_bytes: usize,
    ) -> Option<Instant> {
        if self.kbps.is_none() {
            return Some(now);
        }
        while let Some(&(departure, len)) = self.waiting.front() {
            if departure > now {
                break;
            }
            self.waiting.pop_front();
            self.queued_bytes -= len;
        }
        let start = self.last_departure.map_or(now, |last| last.max(now));
        let refill = self
            .last_departure
            .map_or(Duration::ZERO, |last| start.saturating_duration_since(last));
        let credit = (self.credit + refill).min(self.depth());
        let cost = self.transmit_time(bytes);
        let (departure, credit_left) = if credit >= cost {
            (start, credit - cost)
        } else {
            // A datagram whose wait overflows `Instant` could never leave: drop it.
            (start.checked_add(cost - credit)?, Duration::ZERO)
        };
        if departure > now {
            let queued = self
                .queued_bytes
                .checked_add(bytes)
                .filter(|&total| total <= limit_bytes)?;
            self.waiting.push_back((departure, bytes));
            self.queued_bytes = queued;
        }
        self.credit = credit_left;
        self.last_departure = Some(departure);
        Some(departure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_bucket_passes_a_burst_then_paces() {
        let t0 = Instant::now();
        let mut cap = BandwidthCap::new(Some(1000));
        // 1000 kbit/s: 1200 bytes take 9.6 ms; the bucket holds 3000 bytes = 24 ms.
        assert_eq!(cap.admit(t0, 1200, 10_000), Some(t0));
        assert_eq!(cap.admit(t0, 1200, 10_000), Some(t0));
        // 600 bytes of credit left, 600 short: 4.8 ms.
        assert_eq!(
            cap.admit(t0, 1200, 10_000),
            Some(t0 + Duration::from_micros(4800))
        );
        assert_eq!(
            cap.admit(t0, 1200, 10_000),
            Some(t0 + Duration::from_micros(14_400))
        );
        assert_eq!(cap.queued_bytes(), 2400);
        // Queue holds 2400; one more 1200 would exceed a 3000-byte limit.
        assert_eq!(cap.admit(t0, 1200, 3000), None);
        // Once the queue drains the bucket refills again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(cap.admit(later, 1200, 3000), Some(later));
        assert_eq!(cap.queued_bytes(), 0);
    }

    #[test]
    fn no_cap_departs_at_once() {
        let t0 = Instant::now();
        let mut cap = BandwidthCap::new(None);
        for _ in 0..10 {
            assert_eq!(cap.admit(t0, 1_000_000, 0), Some(t0));
        }
        assert_eq!(cap.queued_bytes(), 0);
    }
}
