//! Link estimates: round-trip time, jitter, loss, and bandwidth.

use std::time::{Duration, Instant};

/// Bytes of IPv4 + UDP header added to every datagram on the wire; bandwidth figures include them.
pub const IP_UDP_HEADER_BYTES: u64 = 28;

/// Smoothed round-trip time in the manner of RFC 6298, plus the minimum seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct RttEstimator {
    smoothed: Option<Duration>,
    variation: Duration,
    min: Option<Duration>,
    latest: Duration,
}

impl RttEstimator {
    /// Take one sample: time from send to ack, minus how long the peer held the ack.
    pub fn on_sample(&mut self, round_trip: Duration, ack_delay: Duration) {
        let min = self.min.map_or(round_trip, |m| m.min(round_trip));
        self.min = Some(min);
        // As QUIC does: subtract the peer's hold time only when the result stays at or above
        // the minimum ever seen, so a lying or coarse ack delay cannot drive the estimate down.
        // The ack delay travels in whole units, so allow one unit of slack: otherwise a
        // minimum measured a microsecond high stops every later subtraction.
        let slack = Duration::from_micros(super::ConnectedHeader::ACK_DELAY_UNIT_MICROS);
        let sample = if round_trip + slack >= min + ack_delay {
            round_trip.saturating_sub(ack_delay)
        } else {
            round_trip
        };
        self.latest = sample;
        match self.smoothed {
            None => {
                self.smoothed = Some(sample);
                self.variation = sample / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(sample);
                self.variation = (self.variation * 3 + diff) / 4;
                self.smoothed = Some((s * 7 + sample) / 8);
            }
        }
    }

    /// Smoothed RTT, or `None` before the first sample.
    pub fn smoothed(&self) -> Option<Duration> {
        self.smoothed
    }

    /// Smoothed RTT, or `default` before the first sample.
    pub fn smoothed_or(&self, default: Duration) -> Duration {
        self.smoothed.unwrap_or(default)
    }

    /// Smallest RTT sample seen.
    pub fn min(&self) -> Option<Duration> {
        self.min
    }

    /// Mean deviation of RTT samples: the jitter estimate.
    pub fn jitter(&self) -> Duration {
        self.variation
    }

    /// The most recent sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }
}

/// Counts per one-second window; the rate is the last complete window.
#[derive(Debug, Clone, Copy, Default)]
struct RateMeter {
    window_start: Option<Instant>,
    current: u64,
    last_rate: u64,
}

impl RateMeter {
    fn add(&mut self, now: Instant, amount: u64) {
        self.roll(now);
        self.current += amount;
    }
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= Duration::from_secs(1) {
            // A window with no traffic since the last roll counts as a zero rate.
            self.last_rate = if elapsed >= Duration::from_secs(2) {
                0
            } else {
                self.current
            };
            self.current = 0;
            self.window_start = Some(now);
        }
    }
}

/// Traffic and quality counters for one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkStats {
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets received and accepted.
    pub packets_received: u64,
    /// Bytes sent, payload of the datagram (without IP/UDP headers).
    pub bytes_sent: u64,
    /// Bytes received, payload of the datagram.
    pub bytes_received: u64,
    /// Sent packets whose notice was "acked".
    pub packets_acked: u64,
    /// Sent packets whose notice was "lost".
    pub packets_lost: u64,
    /// Datagrams from this peer that were dropped as invalid (bad salt, replay, garbage).
    pub invalid_received: u64,
    /// Smoothed loss estimate, 0..=1 (exponentially weighted over recent notices).
    loss_ewma: f64,
    out_meter: RateMeter,
    in_meter: RateMeter,
}

/// Weight of one delivery notice in the loss average (about the last 100 packets).
const LOSS_EWMA_WEIGHT: f64 = 0.01;

impl LinkStats {
    /// Count a datagram sent at `now`.
    pub fn on_sent(&mut self, now: Instant, bytes: usize) {
        self.packets_sent += 1;
        self.bytes_sent += bytes as u64;
        self.out_meter.add(now, bytes as u64 + IP_UDP_HEADER_BYTES);
    }

    /// Count a datagram received at `now`.
    pub fn on_received(&mut self, now: Instant, bytes: usize) {
        self.packets_received += 1;
        self.bytes_received += bytes as u64;
        self.in_meter.add(now, bytes as u64 + IP_UDP_HEADER_BYTES);
    }

    /// Count a delivery notice.
    pub fn on_notice(&mut self, acked: bool) {
        if acked {
            self.packets_acked += 1;
        } else {
            self.packets_lost += 1;
        }
        let x = if acked { 0.0 } else { 1.0 };
        self.loss_ewma += LOSS_EWMA_WEIGHT * (x - self.loss_ewma);
    }

    /// Recent packet loss, in percent.
    pub fn loss_pct(&self) -> f64 {
        self.loss_ewma * 100.0
    }

    /// Loss over the whole connection, in percent of resolved packets.
    pub fn total_loss_pct(&self) -> f64 {
        let resolved = self.packets_acked + self.packets_lost;
        if resolved == 0 {
            0.0
        } else {
            self.packets_lost as f64 * 100.0 / resolved as f64
        }
    }

    /// Outgoing bandwidth over the last complete second, kbit/s including IP+UDP headers.
    pub fn kbps_out(&self, now: Instant) -> f64 {
        let mut m = self.out_meter;
        m.roll(now);
        m.last_rate as f64 * 8.0 / 1000.0
    }

    /// Incoming bandwidth over the last complete second, kbit/s including IP+UDP headers.
    pub fn kbps_in(&self, now: Instant) -> f64 {
        let mut m = self.in_meter;
        m.roll(now);
        m.last_rate as f64 * 8.0 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_converges_and_subtracts_ack_delay() {
        let mut r = RttEstimator::default();
        for i in 0..100 {
            let held = Duration::from_millis(i % 17);
            r.on_sample(Duration::from_millis(100) + held, held);
        }
        let s = r.smoothed().unwrap();
        assert!(
            s >= Duration::from_millis(99) && s <= Duration::from_millis(101),
            "{s:?}"
        );
        assert_eq!(r.min(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn loss_estimate_tracks_notices() {
        let mut s = LinkStats::default();
        for i in 0..2000 {
            s.on_notice(i % 10 != 0);
        }
        assert!((s.loss_pct() - 10.0).abs() < 3.0, "{}", s.loss_pct());
        assert!((s.total_loss_pct() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn bandwidth_counts_headers_per_datagram() {
        let t0 = Instant::now();
        let mut s = LinkStats::default();
        for i in 0..100 {
            s.on_sent(t0 + Duration::from_millis(i * 10), 97);
        }
        // 100 datagrams of 97 + 28 bytes in the first second.
        let kbps = s.kbps_out(t0 + Duration::from_millis(1000));
        assert!((kbps - 100.0).abs() < 1e-9, "{kbps}");
        assert_eq!(s.kbps_out(t0 + Duration::from_secs(5)), 0.0);
    }
}
