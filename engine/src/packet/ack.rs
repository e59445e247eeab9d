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
    /// The tag the packet was sent with ([`AckTracker::on_send`]).
    pub tag: u8,
}

#[derive(Debug, Clone, Copy)]
struct SentPacket {
    sent_at: Instant,
    tag: u8,
}

impl SentPacket {
    /// The notice of packet `sequence`, sent as this record says.
    fn notice(self, sequence: Sequence, acked: bool) -> DeliveryNotice {
        DeliveryNotice {
            sequence,
            acked,
            sent_at: self.sent_at,
            tag: self.tag,
        }
    }
}

/// The packets awaiting their notice: a ring of their records, and one bit per slot that
/// says whether it holds one.
///
/// An ack names 33 sequences, most of them acknowledged by earlier acks already; the bits
/// answer for those without reading the ring (33 records span 17 cache lines, cold by the
/// time a server hears from that client again).
#[derive(Debug)]
struct SentRing {
    records: SequenceBuffer<SentPacket>,
    occupied: SequenceBits<{ SENT_WINDOW_PACKETS / 64 }>,
}

impl SentRing {
    fn new() -> Self {
        Self {
            records: SequenceBuffer::new(SENT_WINDOW_PACKETS),
            occupied: SequenceBits::new(),
        }
    }

    fn insert(&mut self, seq: Sequence, p: SentPacket) {
        // Sequences are sent in order, so the ring takes each one and skips no slot.
        if self.records.insert(seq, p) {
            self.occupied.set(seq);
        }
    }

    fn get(&self, seq: Sequence) -> Option<&SentPacket> {
        self.occupied
            .get(seq)
            .then(|| self.records.get(seq))
            .flatten()
    }

    fn remove(&mut self, seq: Sequence) -> Option<SentPacket> {
        if !self.occupied.get(seq) {
            return None;
        }
        // The slot may hold a packet a lap apart: the ring compares the sequence.
        let p = self.records.remove(seq)?;
        self.occupied.clear(seq);
        Some(p)
    }

    fn len(&self) -> usize {
        self.occupied.count()
    }
}

/// One bit per sequence, at the sequence modulo `64 * W`.
#[derive(Debug, Clone)]
struct SequenceBits<const W: usize>([u64; W]);

impl<const W: usize> SequenceBits<W> {
    fn new() -> Self {
        Self([0; W])
    }

    fn at(seq: Sequence) -> (usize, u64) {
        let i = usize::from(seq.0) % (64 * W);
        (i / 64, 1 << (i % 64))
    }

    fn get(&self, seq: Sequence) -> bool {
        let (word, mask) = Self::at(seq);
        self.0[word] & mask != 0
    }

    fn set(&mut self, seq: Sequence) {
        let (word, mask) = Self::at(seq);
        self.0[word] |= mask;
    }

    fn clear(&mut self, seq: Sequence) {
        let (word, mask) = Self::at(seq);
        self.0[word] &= !mask;
    }

    fn clear_all(&mut self) {
        self.0 = [0; W];
    }

    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// Which of the last [`RECEIVED_WINDOW_PACKETS`] sequences arrived, one bit each, at the
/// sequence modulo the window.
///
/// A bitmap inside the tracker rather than a ring of entries on the heap: checking a packet
/// and writing the 32 ack bits read two cache lines the connection already holds. A server
/// goes through its clients' connections one after another, so each is cold by its turn, and
/// a separate ring was one more miss on every packet sent and received.
#[derive(Debug, Clone)]
struct ReceivedWindow {
    newest: Option<Sequence>,
    bits: SequenceBits<{ RECEIVED_WINDOW_PACKETS / 64 }>,
}

impl ReceivedWindow {
    fn new() -> Self {
        Self {
            newest: None,
            bits: SequenceBits::new(),
        }
    }

    /// True when `seq` is within the window and arrived.
    fn contains(&self, seq: Sequence) -> bool {
        self.newest.is_some_and(|newest| {
            (0..RECEIVED_WINDOW_PACKETS as i32).contains(&newest.distance(seq))
                && self.bits.get(seq)
        })
    }

    /// Mark `seq` arrived; the caller refused sequences older than the window.
    fn insert(&mut self, seq: Sequence) {
        match self.newest {
            Some(newest) if seq.is_newer_than(newest) => {
                // The sequences skipped over take the bits of ones a lap older: clear them.
                let gap = seq.distance(newest);
                if gap as usize >= RECEIVED_WINDOW_PACKETS {
                    self.bits.clear_all();
                } else {
                    for i in 1..gap {
                        self.bits.clear(newest.plus(i as u16));
                    }
                }
                self.newest = Some(seq);
            }
            Some(_) => {}
            None => self.newest = Some(seq),
        }
        self.bits.set(seq);
    }
}

/// Per-connection ack state: numbers outgoing packets, builds ack fields for them, reads the
/// peer's acks, and turns every sent packet into exactly one [`DeliveryNotice`].
#[derive(Debug)]
pub struct AckTracker {
    next_sequence: Sequence,
    /// Oldest sequence that may still be awaiting its notice.
    oldest_pending: Sequence,
    sent: SentRing,
    received: ReceivedWindow,
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
            sent: SentRing::new(),
            received: ReceivedWindow::new(),
            newest_received_at: None,
            newest_peer_ack: None,
            notices: VecDeque::new(),
        }
    }

    /// Allocate the sequence for a packet sent at `now` and start awaiting its notice, which
    /// will carry `tag` (the caller's own bits about the packet, e.g. what it carried).
    pub fn on_send(&mut self, now: Instant, tag: u8) -> Sequence {
        let seq = self.next_sequence;
        // The ring slot is about to be reused: whatever still waits there is lost.
        let evicted = seq.minus(SENT_WINDOW_PACKETS as u16);
        if let Some(old) = self.sent.remove(evicted) {
            self.notices.push_back(old.notice(evicted, false));
        }
        // Nothing up to the evicted slot is pending any more: the walks that look for the
        // oldest pending packet start past it. (Left behind, the start fell further back with
        // every packet sent to a peer that acks nothing, until each deadline the connection
        // asks for after a send walked thousands of empty slots.)
        let past = evicted.next();
        if past.is_newer_than(self.oldest_pending) {
            self.oldest_pending = past;
        }
        self.sent.insert(seq, SentPacket { sent_at: now, tag });
        self.next_sequence = seq.next();
        seq
    }

    /// Ask for what the next send reads and writes to be brought into the caches: the sent
    /// ring's slot for the next sequence (the packet that send evicts, a lap of the ring
    /// older, is in the same slot) and the bit windows.
    pub(crate) fn prefetch_send(&self) {
        self.sent.records.prefetch(self.next_sequence);
        crate::prefetch::slice(&self.sent.occupied.0);
        crate::prefetch::slice(&self.received.bits.0);
    }

    /// The sequence the next [`on_send`](Self::on_send) will return.
    pub fn peek_next_sequence(&self) -> Sequence {
        self.next_sequence
    }

    /// Record a received sequence. Returns `false` for a duplicate or for one too old to
    /// tell apart from a replay; the caller must drop such a packet.
    pub fn on_receive(&mut self, now: Instant, seq: Sequence) -> bool {
        if let Some(newest) = self.received.newest
            && (newest.distance(seq) >= RECEIVED_WINDOW_PACKETS as i32
                || self.received.contains(seq))
        {
            return false;
        }
        let is_newest = self.received.newest.is_none_or(|n| seq.is_newer_than(n));
        self.received.insert(seq);
        if is_newest {
            self.newest_received_at = Some(now);
        }
        true
    }

    /// The `(ack, ack_bits, ack_delay)` fields for a packet sent at `now`.
    pub fn ack_fields(&self, now: Instant) -> (Sequence, u32, u16) {
        let Some(ack) = self.received.newest else {
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
            self.notices.push_back(p.notice(ack, true));
        }
        for i in 0..ACK_BITS {
            if ack_bits & (1 << i) != 0 {
                let seq = ack.minus(i + 1);
                if let Some(p) = self.sent.remove(seq) {
                    self.notices.push_back(p.notice(seq, true));
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
        self.sent.len()
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
                Some(&p) if expired(seq, &p) => {
                    self.sent.remove(seq);
                    self.notices.push_back(p.notice(seq, false));
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
            let s = a.on_send(now, 0);
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
    fn a_peer_that_acks_nothing_leaves_the_pending_window_its_size() {
        let t0 = Instant::now();
        let mut a = AckTracker::new();
        let rtt = RttEstimator::default();
        let timeout = Duration::from_secs(1);
        // More than the window, and past the halfway point of the sequence space, where a
        // start left behind would even look newer than the next sequence.
        let sent = 40_000u32;
        for i in 0..sent {
            a.on_send(t0 + Duration::from_micros(u64::from(i)), 0);
        }
        let window = SENT_WINDOW_PACKETS as u32;
        // The oldest pending packet is the first of the window, and the walk starts there.
        let first = a.next_sequence.minus(SENT_WINDOW_PACKETS as u16);
        assert_eq!(a.oldest_pending, first);
        assert_eq!(a.first_pending().map(|(s, _)| s), Some(first));
        let first_sent_at = t0 + Duration::from_micros(u64::from(sent - window));
        assert_eq!(
            a.next_loss_deadline(timeout, &rtt),
            Some(first_sent_at + timeout)
        );
        // Each packet pushed out of the window was declared lost once, in order.
        let notices = drain(&mut a);
        assert_eq!(notices.len() as u32, sent - window);
        assert!(notices.iter().all(|n| !n.acked));
        assert!(
            notices
                .windows(2)
                .all(|w| w[1].sequence == w[0].sequence.next())
        );
        assert_eq!(a.pending_count(), SENT_WINDOW_PACKETS);
        // The window expires as one when its time comes.
        a.handle_timeout(
            first_sent_at + timeout + Duration::from_secs(1),
            timeout,
            &rtt,
        );
        assert_eq!(drain(&mut a).len(), SENT_WINDOW_PACKETS);
        assert_eq!(a.next_loss_deadline(timeout, &rtt), None);
    }

    #[test]
    fn the_empty_ack_acknowledges_nothing() {
        let t0 = Instant::now();
        let mut sender = AckTracker::new();
        let silent_peer = AckTracker::new();
        let mut rtt = RttEstimator::default();
        let first = sender.on_send(t0, 0);
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
        a.on_send(t0, 0);
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
        a.on_send(t0, 0); // 0: will be lost
        a.on_send(t0 + ms(16), 0); // 1: acked
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
            a.on_send(t0, 0);
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
            a.on_send(t0 + ms(i), 0);
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
        let s = a.on_send(t0 + ms(800), 0);
        a.on_ack(t0 + ms(850), s, 0b111, 0, &mut rtt);
        let n = drain(&mut a);
        assert_eq!(n.len(), 1);
        assert!(n[0].acked && n[0].sequence == s);
    }

    /// The received window against a model that counts sequences without wrapping: which
    /// packets are refused and which ack bits go out, over reordering, duplicates, gaps
    /// larger than the window and wrap-arounds of the 16-bit sequence.
    #[test]
    fn the_received_window_matches_a_model_without_wrapping() {
        use rand::{Rng, SeedableRng};
        let t0 = Instant::now();
        for seed in 0..20u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut a = AckTracker::new();
            let mut got = std::collections::HashSet::new();
            let mut newest: Option<u64> = None;
            let mut next = 100_000u64;
            for _ in 0..20_000 {
                next += match rng.random_range(0..100) {
                    0 => rng.random_range(1000..30_000),
                    1..=4 => rng.random_range(2..60),
                    _ => 1,
                };
                // Mostly the next sequence; sometimes one from behind (reordered, a
                // duplicate, or older than the window).
                let abs = match rng.random_range(0..10) {
                    0 => next - rng.random_range(0..1100),
                    1 => next - rng.random_range(0..40),
                    _ => next,
                };
                let fresh = match newest {
                    Some(n) if abs + RECEIVED_WINDOW_PACKETS as u64 <= n => false,
                    _ => !got.contains(&abs),
                };
                let seq = Sequence(abs as u16);
                assert_eq!(a.on_receive(t0, seq), fresh, "seed {seed}, sequence {abs}");
                if fresh {
                    got.insert(abs);
                    newest = newest.max(Some(abs));
                }
                let n = newest.unwrap();
                let (ack, bits, _) = a.ack_fields(t0);
                assert_eq!(ack, Sequence(n as u16));
                let want = (0..32u64)
                    .filter(|i| got.contains(&(n - 1 - i)))
                    .fold(0u32, |b, i| b | 1 << i);
                assert_eq!(bits, want, "seed {seed}, newest {n}");
            }
        }
    }

    /// Every packet sent gets exactly one notice, through acks that repeat, arrive late or
    /// name packets a lap of the ring apart, sequence wrap-around and window overflow; the
    /// count of packets awaiting theirs stays exact.
    #[test]
    fn every_packet_gets_one_notice_whatever_the_acks() {
        use rand::{Rng, SeedableRng};
        let t0 = Instant::now();
        for seed in 0..20u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut a = AckTracker::starting_at(Sequence(rng.random_range(0..=u16::MAX)));
            let mut rtt = RttEstimator::default();
            let mut noticed = std::collections::HashMap::<u64, bool>::new();
            let mut sent = 0u64;
            let first = a.peek_next_sequence().0 as u64;
            let mut now = t0;
            for step in 0..6_000u64 {
                now += Duration::from_micros(rng.random_range(0..3_000));
                for _ in 0..rng.random_range(0..4) {
                    a.on_send(now, (sent % 251) as u8);
                    sent += 1;
                }
                if sent > 0 && rng.random_range(0..3) == 0 {
                    // An ack for a packet up to 1,200 back, with random bits.
                    let back = rng.random_range(1..=sent.min(1_200));
                    let ack = Sequence((first + sent - back) as u16);
                    a.on_ack(now, ack, rng.random(), 0, &mut rtt);
                }
                if step % 500 == 0 {
                    a.handle_timeout(now, Duration::from_millis(300), &rtt);
                }
                while let Some(n) = a.poll_notice() {
                    // The sequence's place in the send order: the newest one with its value.
                    let lap = (first + sent - 1 - n.sequence.0 as u64) % 65_536;
                    let abs = first + sent - 1 - lap;
                    assert_eq!(n.tag, ((abs - first) % 251) as u8, "seed {seed}");
                    assert!(
                        noticed.insert(abs, n.acked).is_none(),
                        "seed {seed}: {n:?} twice"
                    );
                }
                assert_eq!(a.pending_count() as u64, sent - noticed.len() as u64);
            }
        }
    }

    #[test]
    fn each_notice_carries_its_packet_s_tag() {
        let t0 = Instant::now();
        let mut a = AckTracker::starting_at(Sequence(0));
        let mut rtt = RttEstimator::default();
        for i in 0..8u8 {
            a.on_send(t0, i * 3);
        }
        // 7 and 6 acked; 0..=4 are three or more behind and lost; 5 still in flight.
        a.on_ack(t0, Sequence(7), 0b1, 0, &mut rtt);
        a.handle_timeout(t0 + Duration::from_secs(5), Duration::from_secs(1), &rtt);
        let mut n = drain(&mut a);
        n.sort_by_key(|n| n.sequence.0);
        assert_eq!(n.len(), 8);
        for n in n {
            assert_eq!(n.tag, n.sequence.0 as u8 * 3, "{n:?}");
        }
    }

    #[test]
    fn window_overflow_declares_oldest_lost() {
        let t0 = Instant::now();
        let mut a = AckTracker::new();
        for _ in 0..SENT_WINDOW_PACKETS + 5 {
            a.on_send(t0, 0);
        }
        let n = drain(&mut a);
        assert_eq!(n.len(), 5);
        assert!(n.iter().all(|n| !n.acked));
        assert_eq!(a.pending_count(), SENT_WINDOW_PACKETS);
    }
}
