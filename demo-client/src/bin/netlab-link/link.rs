//! One direction of the emulated link, sans-IO: IP packets in, the same packets out when
//! the engine's conditioner lets them through.
//!
//! The forwarder's loop only moves bytes between the TUN devices and these two queues, so
//! what the lab does to packets (which are lost, when each one comes out) is decided here,
//! with time as an argument, and tested in virtual time.

use std::time::Instant;

use snapsync::conditioner::{Conditioner, ConditionerConfig, ConditionerStats, ConfigError};

/// Largest packet accepted: the IPv4 and IPv6 length fields stop at 65 535 bytes.
///
/// A TUN device without offloads hands out packets no larger than its MTU (1500 in the lab);
/// the reader's buffer is one byte larger than this, so a read that fills it is known to be
/// cut short and is refused rather than forwarded truncated.
pub(crate) const MAX_PACKET_BYTES: usize = 65_535;

/// Shortest IPv4 header; an IPv6 header is 40 bytes.
const MIN_IPV4_BYTES: usize = 20;
const MIN_IPV6_BYTES: usize = 40;

/// What one direction did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DirectionCounters {
    /// Packets read from the sending side's device.
    pub(crate) received: u64,
    /// Packets written to the receiving side's device.
    pub(crate) forwarded: u64,
    /// Packets the conditioner's loss model dropped.
    pub(crate) dropped_loss: u64,
    /// Packets dropped because the conditioner's queue (bandwidth cap, in-flight limit) was
    /// full.
    pub(crate) dropped_overflow: u64,
    /// Reads that were no IP packet (empty, shorter than a header, an unknown version, or
    /// larger than [`MAX_PACKET_BYTES`]).
    pub(crate) rejected: u64,
    /// Packets the receiving device refused (down, or a packet its kernel would not take).
    pub(crate) write_errors: u64,
    /// Packets inside the link now, waiting for their release time.
    pub(crate) in_flight: usize,
}

impl DirectionCounters {
    /// Every packet that did not come out of the far end.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped_loss + self.dropped_overflow + self.rejected + self.write_errors
    }
}

/// One direction of the link: a conditioner holding whole IP packets.
#[derive(Debug)]
pub(crate) struct Direction {
    conditioner: Conditioner<Vec<u8>>,
    received: u64,
    rejected: u64,
    forwarded: u64,
    write_errors: u64,
}

impl Direction {
    /// A direction with these settings whose random choices all come from `seed`.
    pub(crate) fn new(config: ConditionerConfig, seed: u64) -> Result<Self, ConfigError> {
        Ok(Self {
            conditioner: Conditioner::new(config, seed)?,
            received: 0,
            rejected: 0,
            forwarded: 0,
            write_errors: 0,
        })
    }

    /// A packet read from the sending side at `now`; anything that is no IP packet is
    /// counted and dropped, never forwarded.
    pub(crate) fn push(&mut self, now: Instant, packet: &[u8]) {
        self.received += 1;
        if !is_ip_packet(packet) {
            self.rejected += 1;
            return;
        }
        // The whole IP packet is what a link carries, so the bandwidth cap counts it all.
        self.conditioner.push(now, packet.to_vec(), packet.len());
    }

    /// The next packet due at or before `now`, to write to the receiving side.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.conditioner.poll(now)
    }

    /// When the next packet becomes due; `None` when nothing is in flight.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.conditioner.poll_timeout()
    }

    /// The outcome of writing a polled packet to the receiving side.
    pub(crate) fn record_write(&mut self, written: bool) {
        if written {
            self.forwarded += 1;
        } else {
            self.write_errors += 1;
        }
    }

    /// Counters so far.
    pub(crate) fn counters(&self) -> DirectionCounters {
        let ConditionerStats {
            dropped_loss,
            dropped_overflow,
            in_flight_packets,
            ..
        } = self.conditioner.stats();
        DirectionCounters {
            received: self.received,
            forwarded: self.forwarded,
            dropped_loss,
            dropped_overflow,
            rejected: self.rejected,
            write_errors: self.write_errors,
            in_flight: in_flight_packets,
        }
    }
}

/// True when `packet` starts like an IPv4 or IPv6 packet and fits the length fields.
///
/// Only the version nibble and a minimum length are checked: the receiving kernel checks
/// the rest, and the lab must carry every packet its senders make, unchanged.
pub(crate) fn is_ip_packet(packet: &[u8]) -> bool {
    if packet.len() > MAX_PACKET_BYTES {
        return false;
    }
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.len() >= MIN_IPV4_BYTES,
        Some(6) => packet.len() >= MIN_IPV6_BYTES,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ipv4(len: usize, tag: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[len - 1] = tag;
        p
    }

    fn link(loss_pct: f64, latency_ms: u64, jitter_ms: u64) -> ConditionerConfig {
        ConditionerConfig {
            loss_pct,
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            enabled: true,
            ..ConditionerConfig::off()
        }
    }

    /// Drives a direction in virtual time: one packet every `interval`, drained at every
    /// release time; returns each packet's (tag, delay).
    fn run(
        dir: &mut Direction,
        t0: Instant,
        packets: usize,
        interval: Duration,
    ) -> Vec<(u8, Duration)> {
        let mut sent_at = Vec::new();
        let mut out = Vec::new();
        for i in 0..packets {
            let now = t0 + interval * i as u32;
            // Everything due before this packet's send time comes out first.
            while let Some(at) = dir.poll_timeout().filter(|&at| at <= now) {
                while let Some(p) = dir.poll(at) {
                    out.push((p, at));
                }
            }
            dir.push(now, &ipv4(60, i as u8));
            sent_at.push(now);
        }
        while let Some(at) = dir.poll_timeout() {
            while let Some(p) = dir.poll(at) {
                out.push((p, at));
            }
        }
        out.into_iter()
            .map(|(p, at)| {
                dir.record_write(true);
                let tag = p[59];
                // Tags wrap at 256; the tests send fewer packets than that per check.
                (tag, at - sent_at[tag as usize])
            })
            .collect()
    }

    #[test]
    fn packets_come_out_unchanged_after_the_latency() {
        let mut dir = Direction::new(link(0.0, 40, 0), 1).unwrap();
        let t0 = Instant::now();
        let sent = ipv4(1500, 9);
        dir.push(t0, &sent);
        assert_eq!(dir.poll(t0 + Duration::from_millis(39)), None);
        assert_eq!(dir.poll_timeout(), Some(t0 + Duration::from_millis(40)));
        assert_eq!(dir.poll(t0 + Duration::from_millis(40)), Some(sent));
        dir.record_write(true);
        let c = dir.counters();
        assert_eq!(
            (c.received, c.forwarded, c.dropped(), c.in_flight),
            (1, 1, 0, 0)
        );
    }

    #[test]
    fn delay_stays_within_latency_and_jitter_and_order_is_kept() {
        let mut dir = Direction::new(link(0.0, 40, 5), 7).unwrap();
        let out = run(&mut dir, Instant::now(), 200, Duration::from_millis(1));
        assert_eq!(out.len(), 200);
        for (i, (tag, delay)) in out.iter().enumerate() {
            // The conditioner never reorders by jitter alone: a packet may wait behind an
            // earlier one, so its delay can exceed latency + jitter only by that wait.
            assert_eq!(*tag as usize, i);
            assert!(*delay >= Duration::from_millis(40), "{delay:?}");
            assert!(*delay <= Duration::from_millis(46), "{delay:?}");
        }
    }

    #[test]
    fn loss_is_seeded_and_near_the_setting() {
        let t0 = Instant::now();
        let lost = |seed| {
            let mut dir = Direction::new(link(5.0, 40, 0), seed).unwrap();
            let out = run(&mut dir, t0, 250, Duration::from_millis(2));
            let c = dir.counters();
            assert_eq!(c.received, 250);
            assert_eq!(c.forwarded as usize, out.len());
            assert_eq!(c.dropped_loss + c.forwarded, 250);
            out.iter().map(|(tag, _)| *tag).collect::<Vec<_>>()
        };
        let a = lost(3);
        assert_eq!(a, lost(3), "the same seed loses the same packets");
        // The forwarder seeds its two directions seed and seed + 1: they lose different
        // packets, as two directions of a real path do.
        assert_ne!(a, lost(4));
        // 5 % of 250 is 12.5; a seeded run lands near it.
        assert!(
            (230..=245).contains(&a.len()),
            "{} of 250 came out",
            a.len()
        );
    }

    #[test]
    fn garbage_and_oversize_reads_are_counted_never_forwarded() {
        let mut dir = Direction::new(link(0.0, 0, 0), 1).unwrap();
        let t0 = Instant::now();
        let mut v6 = vec![0u8; 40];
        v6[0] = 0x60;
        for bad in [
            Vec::new(),
            vec![0x45; 19],
            vec![0x60; 39],
            vec![0x00; 1500],
            vec![0xff; 64],
            ipv4(MAX_PACKET_BYTES + 1, 0),
        ] {
            dir.push(t0, &bad);
        }
        dir.push(t0, &v6);
        dir.push(t0, &ipv4(MAX_PACKET_BYTES, 1));
        let mut out = Vec::new();
        while let Some(p) = dir.poll(t0) {
            out.push(p.len());
            dir.record_write(true);
        }
        assert_eq!(out, vec![40, MAX_PACKET_BYTES]);
        let c = dir.counters();
        assert_eq!((c.received, c.rejected, c.forwarded), (8, 6, 2));
    }

    #[test]
    fn a_refused_write_is_a_drop() {
        let mut dir = Direction::new(link(0.0, 0, 0), 1).unwrap();
        dir.record_write(false);
        assert_eq!(dir.counters().write_errors, 1);
        assert_eq!(dir.counters().dropped(), 1);
    }

    #[test]
    fn a_bandwidth_cap_queues_then_drops() {
        let config = ConditionerConfig {
            bandwidth_kbps: Some(1000),
            queue_limit_bytes: 15_000,
            ..link(0.0, 10, 0)
        };
        let mut dir = Direction::new(config, 1).unwrap();
        let t0 = Instant::now();
        // 100 packets of 1500 bytes at once: 1.2 Mbit into a 1 Mbit/s link with a
        // 15 kB queue; the bucket passes a few at once, the queue holds ten, the rest drop.
        for i in 0..100 {
            dir.push(t0, &ipv4(1500, i));
        }
        let c = dir.counters();
        assert!(c.dropped_overflow > 70, "{c:?}");
        assert_eq!(c.dropped_overflow as usize + c.in_flight, 100);
        let mut last = t0;
        while let Some(at) = dir.poll_timeout() {
            while dir.poll(at).is_some() {
                dir.record_write(true);
                last = at;
            }
        }
        // Each queued packet waits its 12 ms of serialisation at 1 Mbit/s.
        assert!(last - t0 >= Duration::from_millis(100), "{:?}", last - t0);
    }
}
