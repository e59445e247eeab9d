//! Sequence allocation, ack fields, and the delivery notice every sent packet ends with.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::stats::RttEstimator;
use crate::{Sequence, SequenceBuffer};

/// How many sent packets may await their notice at once; older ones are declared lost.
const SENT_WINDOW_PACKETS: usize = 1024;
/// How far back received sequences are remembered, for acks and replay rejection.
const RECEIVED_WINDOW_PACKETS: usize = 1024;
/// The first sequence each side sends; see [`AckTracker::new`].
const FIRST_SEQUENCE: Sequence = Sequence(1);
/// A packet is lost once a packet sent this many after it has been acked (QUIC's
/// kPacketThreshold, RFC 9002): the ack bits say exactly what arrived, so a gap three packets
/// deep is a loss, not reordering, and waiting for a timeout would only delay the resend.
const PACKET_THRESHOLD: u16 = 3;
/// Floor of the time-threshold loss delay (QUIC's kGranularity).
const TIME_THRESHOLD_GRANULARITY: Duration = Duration::from_millis(1);
/// Ack bits cover this many sequences before the `ack` field.
const ACK_BITS: u16 = 32;

/// The fate of one sent packet, reported exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryNotice {
    /// The packet's sequence.
    pub sequence: Sequence,
    /// `true`: the peer acked it. `false`: it was declared lost (not acked in time, or fell
    /// out of the ack window); a late ack after that is ignored.
    pub acked: bool,
    /// When it was sent.
    pub sent_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct SentPacket {
    sent_at: Instant,
}

/// Per-connection ack state: numbers outgoing packets, builds ack fields for them, reads the
/// peer's acks, and turns every sent packet into exactly one [`DeliveryNotice`].
#[derive(Debug)]
pub struct AckTracker {
    next_sequence: Sequence,
    /// Oldest sequence that may still be awaiting its notice.
    oldest_pending: Sequence,
    sent: SequenceBuffer<SentPacket>,
    received: SequenceBuffer<()>,
    newest_received_at: Option<Instant>,
    newest_peer_ack: Option<Sequence>,
    notices: VecDeque<DeliveryNotice>,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl AckTracker {
    /// A tracker whose first packet will be sequence 1.
    ///
    /// Not 0: a side that has received nothing yet sends `ack = 0` with no ack bits, and
    /// that must not acknowledge a real packet. Starting at 1, sequence 0 is first sent
    /// after 65,535 packets, long after the peer has heard something (or timed out).
    pub fn new() -> Self {
        Self::starting_at(FIRST_SEQUENCE)
    }

    /// A tracker whose first packet will be `first` (tests use this to exercise wrap-around).
    pub fn starting_at(first: Sequence) -> Self {
        Self {
            next_sequence: first,
            oldest_pending: first,
            sent: SequenceBuffer::new(SENT_WINDOW_PACKETS),
            received: SequenceBuffer::new(RECEIVED_WINDOW_PACKETS),
            newest_received_at: None,
            newest_peer_ack: None,
            notices: VecDeque::new(),
        }
    }

    /// Allocate the sequence for a packet sent at `now` and start awaiting its notice.
    pub fn on_send(&mut self, now: Instant) -> Sequence {
        let seq = self.next_sequence;
        // The ring slot is about to be reused: whatever still waits there is lost.
        let evicted = seq.minus(SENT_WINDOW_PACKETS as u16);
        if let Some(old) = self.sent.remove(evicted) {
            self.notices.push_back(DeliveryNotice {
                sequence: evicted,
                acked: false,
                sent_at: old.sent_at,
            });
        }
        self.sent.insert(seq, SentPacket { sent_at: now });
        self.next_sequence = seq.next();
        seq
    }

    /// The sequence the next [`on_send`](Self::on_send) will return.
    pub fn peek_next_sequence(&self) -> Sequence {
        self.next_sequence
    }

    /// Record a received sequence. Returns `false` for a duplicate or for one too old to
    /// tell apart from a replay; the caller must drop such a packet.
    pub fn on_receive(&mut self, now: Instant, seq: Sequence) -> bool {
        if let Some(newest) = self.received.newest()
            && (newest.distance(seq) >= RECEIVED_WINDOW_PACKETS as i32
                || self.received.contains(seq))
        {
            return false;
        }
        let is_newest = self.received.newest().is_none_or(|n| seq.is_newer_than(n));
        self.received.insert(seq, ());
        if is_newest {
            self.newest_received_at = Some(now);
        }
        true
    }

    /// The `(ack, ack_bits, ack_delay)` fields for a packet sent at `now`.
    pub fn ack_fields(&self, now: Instant) -> (Sequence, u32, u16) {
        let Some(ack) = self.received.newest() else {
            return (Sequence(0), 0, 0);
        };
        let mut bits = 0u32;
        for i in 0..ACK_BITS {
            if self.received.contains(ack.minus(i + 1)) {
                bits |= 1 << i;
            }
        }
        let held = self
            .newest_received_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let units = held.as_micros() / u128::from(super::ConnectedHeader::ACK_DELAY_UNIT_MICROS);
        (ack, bits, u16::try_from(units).unwrap_or(u16::MAX))
    }

    /// Apply the peer's ack fields: every newly acked packet gets its notice, the newest one
    /// feeds `rtt`, and packets that fell out of the ack window are declared lost.
    pub fn on_ack(
        &mut self,
        now: Instant,
        ack: Sequence,
        ack_bits: u32,
        ack_delay: u16,
        rtt: &mut RttEstimator,
    ) {
        // An ack for a sequence we never sent is ignored (spoofed or stale).
        if !self.next_sequence.is_newer_than(ack) {
            return;
        }
        if let Some(p) = self.sent.remove(ack) {
            let delay = Duration::from_micros(
                u64::from(ack_delay) * super::ConnectedHeader::ACK_DELAY_UNIT_MICROS,
            );
            rtt.on_sample(now.saturating_duration_since(p.sent_at), delay);
            self.notices.push_back(DeliveryNotice {
                sequence: ack,
                acked: true,
                sent_at: p.sent_at,
            });
        }
        for i in 0..ACK_BITS {
            if ack_bits & (1 << i) != 0 {
                let seq = ack.minus(i + 1);
                if let Some(p) = self.sent.remove(seq) {
                    self.notices.push_back(DeliveryNotice {
                        sequence: seq,
                        acked: true,
                        sent_at: p.sent_at,
                    });
                }
            }
        }
        if self.newest_peer_ack.is_none_or(|n| ack.is_newer_than(n)) {
            self.newest_peer_ack = Some(ack);
        }
        // Lost, as in QUIC (RFC 9002 6.1): anything PACKET_THRESHOLD or more before the newest
        // acked packet (this also covers everything that fell out of the 33-packet ack
        // window), and anything before it that has been out longer than the time threshold.
        self.detect_lost(now, rtt);
    }

    /// The time threshold: 9/8 of the larger of the smoothed and the latest RTT.
    fn loss_delay(rtt: &RttEstimator) -> Option<Duration> {
        let base = rtt.smoothed()?.max(rtt.latest());
        Some((base * 9 / 8).max(TIME_THRESHOLD_GRANULARITY))
    }

    fn detect_lost(&mut self, now: Instant, rtt: &RttEstimator) {
        let Some(newest) = self.newest_peer_ack else {
            return;
        };
        let horizon = newest.minus(PACKET_THRESHOLD - 1);
        let delay = Self::loss_delay(rtt);
        // Both rules hold for a prefix of the pending packets (sent in order), so the walk
        // can stop at the first packet that neither condemns.
        self.expire_while(|seq, p| {
            horizon.is_newer_than(seq)
                || (newest.is_newer_than(seq)
                    && delay.is_some_and(|d| now.saturating_duration_since(p.sent_at) >= d))
        });
    }

    /// Declare lost every packet unacked for longer than `loss_timeout`, and every packet
    /// before the newest acked one that is past the time threshold.
    pub fn handle_timeout(&mut self, now: Instant, loss_timeout: Duration, rtt: &RttEstimator) {
        self.detect_lost(now, rtt);
        self.expire_while(|_, p| now.saturating_duration_since(p.sent_at) >= loss_timeout);
    }

    /// When the next pending packet will be declared lost: by the time threshold if it was
    /// sent before the newest acked packet, else by `loss_timeout`.
    pub fn next_loss_deadline(
        &self,
        loss_timeout: Duration,
        rtt: &RttEstimator,
    ) -> Option<Instant> {
        let (seq, p) = self.first_pending()?;
        let by_timeout = p.sent_at + loss_timeout;
        match (self.newest_peer_ack, Self::loss_delay(rtt)) {
            (Some(newest), Some(d)) if newest.is_newer_than(seq) => {
                Some(by_timeout.min(p.sent_at + d))
            }
            _ => Some(by_timeout),
        }
    }

    /// Packets sent that have not yet had their notice.
    pub fn pending_count(&self) -> usize {
        self.sent.iter().count()
    }

    /// Next delivery notice, oldest first.
    pub fn poll_notice(&mut self) -> Option<DeliveryNotice> {
        self.notices.pop_front()
    }

    fn first_pending(&self) -> Option<(Sequence, SentPacket)> {
        let mut seq = self.oldest_pending;
        while seq != self.next_sequence {
            if let Some(p) = self.sent.get(seq) {
                return Some((seq, *p));
            }
            seq = seq.next();
        }
        None
    }

    /// Walk pending packets oldest first, declaring each lost while `expired` holds; packets
    /// are sent in order, so the first one that does not hold ends the walk.
    fn expire_while(&mut self, expired: impl Fn(Sequence, &SentPacket) -> bool) {
        while self.oldest_pending != self.next_sequence {
            let seq = self.oldest_pending;
            match self.sent.get(seq) {
                None => {}
                Some(p) if expired(seq, p) => {
                    let sent_at = p.sent_at;
                    self.sent.remove(seq);
                    self.notices.push_back(DeliveryNotice {
                        sequence: seq,
                        acked: false,
                        sent_at,
                    });
                }
                Some(_) => return,
            }
            self.oldest_pending = seq.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(t: &mut AckTracker) -> Vec<DeliveryNotice> {
        std::iter::from_fn(|| t.poll_notice()).collect()
    }

    #[test]
    fn acked_and_lost_each_reported_once() {
        let t0 = Instant::now();
        let mut a = AckTracker::new();
        let mut b = AckTracker::new();
        let mut rtt = RttEstimator::default();
        for i in 0..10u64 {
            let now = t0 + Duration::from_millis(i);
            let s = a.on_send(now);
            if !s.0.is_multiple_of(3) {
                assert!(b.on_receive(now, s));
            }
        }
        let now = t0 + Duration::from_millis(50);
        let (ack, bits, delay) = b.ack_fields(now);
        a.on_ack(now, ack, bits, delay, &mut rtt);
        a.on_ack(now, ack, bits, delay, &mut rtt); // repeated ack: no second notice
        a.handle_timeout(
            now + Duration::from_secs(1),
            Duration::from_millis(500),
            &rtt,
        );
        let notices = drain(&mut a);
        assert_eq!(notices.len(), 10);
        for n in notices {
            assert_eq!(n.acked, n.sequence.0 % 3 != 0, "{n:?}");
        }
        assert_eq!(a.pending_count(), 0);
    }

    #[test]
    fn the_empty_ack_acknowledges_nothing() {
        let t0 = Instant::now();
        let mut sender = AckTracker::new();
        let silent_peer = AckTracker::new();
        let mut rtt = RttEstimator::default();
        let first = sender.on_send(t0);
        let (ack, bits, delay) = silent_peer.ack_fields(t0);
        sender.on_ack(t0, ack, bits, delay, &mut rtt);
        assert!(
            sender.poll_notice().is_none(),
            "nothing was received, nothing is acked"
        );
        assert_eq!(sender.pending_count(), 1);
        assert_ne!(first, ack);
    }

    #[test]
    fn duplicates_and_ancient_sequences_are_refused() {
        let t0 = Instant::now();
        let mut b = AckTracker::new();
        assert!(b.on_receive(t0, Sequence(5)));
        assert!(!b.on_receive(t0, Sequence(5)));
        assert!(b.on_receive(t0, Sequence(3)));
        assert!(b.on_receive(t0, Sequence(2000)));
        assert!(!b.on_receive(t0, Sequence(6)));
    }

    #[test]
    fn ack_for_unsent_sequence_is_ignored() {
        let t0 = Instant::now();
        let mut a = AckTracker::new();
        let mut rtt = RttEstimator::default();
        a.on_send(t0);
        a.on_ack(t0, Sequence(500), u32::MAX, 0, &mut rtt);
        assert!(a.poll_notice().is_none());
        assert_eq!(a.pending_count(), 1);
    }

    #[test]
    fn an_older_packet_past_the_time_threshold_is_loss() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = AckTracker::starting_at(Sequence(0));
        let mut rtt = RttEstimator::default();
        rtt.on_sample(ms(40), Duration::ZERO); // smoothed 40 ms: threshold 45 ms
        a.on_send(t0); // 0: will be lost
        a.on_send(t0 + ms(16)); // 1: acked
        // Only one packet behind the newest acked: the packet threshold does not apply, and
        // at 30 ms of age the time threshold has not passed.
        a.on_ack(t0 + ms(30), Sequence(1), 0, 0, &mut rtt);
        assert_eq!(drain(&mut a).iter().filter(|n| !n.acked).count(), 0);
        let deadline = a.next_loss_deadline(Duration::from_secs(1), &rtt).unwrap();
        assert!(
            deadline <= t0 + ms(60),
            "the time threshold sets the timer: {deadline:?}"
        );
        a.handle_timeout(deadline, Duration::from_secs(1), &rtt);
        let lost: Vec<_> = drain(&mut a).into_iter().filter(|n| !n.acked).collect();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].sequence, Sequence(0));
    }

    #[test]
    fn a_gap_three_packets_deep_is_loss() {
        let t0 = Instant::now();
        let mut a = AckTracker::starting_at(Sequence(0));
        let mut rtt = RttEstimator::default();
        for _ in 0..40 {
            a.on_send(t0);
        }
        // Peer acks 39 and, by bits, 38 and 36 (bits 0 and 2), nothing else.
        a.on_ack(t0, Sequence(39), 0b101, 0, &mut rtt);
        let n = drain(&mut a);
        let acked: Vec<u16> = n.iter().filter(|n| n.acked).map(|n| n.sequence.0).collect();
        assert_eq!(acked, vec![39, 38, 36]);
        // 37 is only two behind 39: it may still be in flight. 0..=35 are lost.
        let lost: Vec<u16> = n
            .iter()
            .filter(|n| !n.acked)
            .map(|n| n.sequence.0)
            .collect();
        assert_eq!(lost, (0..36).collect::<Vec<_>>());
        assert_eq!(a.pending_count(), 1);
        a.on_ack(t0, Sequence(39), 0b111, 0, &mut rtt);
        let late = drain(&mut a);
        assert_eq!(late.len(), 1);
        assert!(
            late[0].acked && late[0].sequence == Sequence(37),
            "37 acked late but in time"
        );
    }

    #[test]
    fn an_ack_after_the_loss_verdict_is_ignored() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = AckTracker::starting_at(Sequence(0));
        let mut rtt = RttEstimator::default();
        for i in 0..3 {
            a.on_send(t0 + ms(i));
        }
        a.handle_timeout(t0 + ms(600), ms(500), &rtt);
        let lost = drain(&mut a);
        assert_eq!(lost.len(), 3);
        assert!(lost.iter().all(|n| !n.acked));
        // The acks were only slow: they arrive after the verdict and change nothing.
        a.on_ack(t0 + ms(700), Sequence(2), 0b11, 0, &mut rtt);
        assert_eq!(drain(&mut a), vec![], "a verdict is final");
        assert_eq!(a.pending_count(), 0);
        assert_eq!(
            rtt.smoothed(),
            None,
            "no RTT sample from a packet already judged"
        );
        // Packets sent after it are acked as usual.
        let s = a.on_send(t0 + ms(800));
        a.on_ack(t0 + ms(850), s, 0b111, 0, &mut rtt);
        let n = drain(&mut a);
        assert_eq!(n.len(), 1);
        assert!(n[0].acked && n[0].sequence == s);
    }

    #[test]
    fn window_overflow_declares_oldest_lost() {
        let t0 = Instant::now();
        let mut a = AckTracker::new();
        for _ in 0..SENT_WINDOW_PACKETS + 5 {
            a.on_send(t0);
        }
        let n = drain(&mut a);
        assert_eq!(n.len(), 5);
        assert!(n.iter().all(|n| !n.acked));
        assert_eq!(a.pending_count(), SENT_WINDOW_PACKETS);
    }
}
