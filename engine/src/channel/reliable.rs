//! Reliable channels: the send window with resends, and the receive window.
//!
//! Every part (an unfragmented message or one fragment) gets its own wrapping id; the fragments
//! of a message have consecutive ids. The sender keeps parts until the packet layer reports a
//! packet holding them as acked, makes a part due again when its latest packet is reported lost
//! or when `max(rtt, min_resend_interval)` passed since it was last sent, and only sends ids
//! within `window` of the first part of the oldest message not fully acked. That keeps every id
//! the receiver sees within `window` of the first id it still lacks, so the receiver's window is
//! a fixed ring and duplicates older than it are recognised without remembering them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Sequence;

use super::ChannelError;
use super::config::Limits;
use super::wire::{Fragment, Record, SectionWriter, record_bytes};

/// Bookkeeping bytes charged per queued part on top of its payload (an upper bound of the
/// in-memory size of a queued part).
pub(crate) const PART_OVERHEAD_BYTES: usize = std::mem::size_of::<SentPart>();

/// Most parts a reliable send queue holds, so that an id's offset from the queue start always
/// fits the wrapping comparison (half the u16 id space).
pub(crate) const MAX_QUEUED_PARTS: usize = 32 * 1024;

#[derive(Debug)]
struct SentPart {
    id: Sequence,
    fragment: Option<Fragment>,
    /// Emptied once acked, to give the memory back before the whole message is acked.
    payload: Vec<u8>,
    payload_len: usize,
    queued_at: Instant,
    /// When it became due without waiting for the resend interval (queued or reported lost).
    ready_at: Instant,
    /// True when never sent or when its latest packet was reported lost.
    pending: bool,
    last_sent: Option<Instant>,
    last_packet: Option<Sequence>,
    acked: bool,
}

impl SentPart {
    fn due_at(&self, interval: Duration) -> Option<Instant> {
        if self.acked {
            None
        } else if self.pending {
            Some(self.ready_at)
        } else {
            self.last_sent.map(|t| t + interval)
        }
    }

    fn is_due(&self, now: Instant, interval: Duration) -> bool {
        self.due_at(interval).is_some_and(|t| t <= now)
    }

    /// Parts of the message this part starts (1 when unfragmented).
    fn span(&self) -> usize {
        self.fragment.map_or(1, |f| usize::from(f.count))
    }
}

/// True when the message of the part at `offset` from the window start ends within `window`.
fn fits_window(offset: usize, fragment: Option<Fragment>, window: usize) -> bool {
    let (index, count) = fragment.map_or((0, 1), |f| (usize::from(f.index), usize::from(f.count)));
    // Parts are queued whole messages at a time, so `index <= offset` always holds.
    offset.saturating_sub(index) + count <= window
}

/// What a write did, for stats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WriteOutcome {
    pub(crate) bytes: usize,
    pub(crate) first_sends: u64,
    pub(crate) resends: u64,
}

/// The sending half of a reliable channel.
#[derive(Debug)]
pub(crate) struct ReliableSender {
    /// Parts in id order; `parts[0]` starts the oldest message not fully acked.
    parts: VecDeque<SentPart>,
    /// Id of `parts[0]`, or of the next part when empty.
    base: Sequence,
    window: usize,
    memory_bytes: usize,
}

impl ReliableSender {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            parts: VecDeque::new(),
            base: Sequence(0),
            window,
            memory_bytes: 0,
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    /// Parts held, acked or not.
    pub(crate) fn queued_parts(&self) -> usize {
        self.parts.len()
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.parts.iter().filter(|p| !p.acked).count()
    }

    pub(crate) fn oldest_unacked(&self) -> Option<Instant> {
        self.parts.iter().find(|p| !p.acked).map(|p| p.queued_at)
    }

    /// Memory a message of `len` bytes split into `parts` parts would take.
    pub(crate) fn cost(len: usize, parts: usize) -> usize {
        len + parts * PART_OVERHEAD_BYTES
    }

    /// Queue one part; the caller has checked the memory budget.
    pub(crate) fn push(&mut self, now: Instant, fragment: Option<Fragment>, payload: &[u8]) {
        // Ids are consecutive from `base`; the id space is far larger than any queue allowed
        // by the memory budget, but the wrap is harmless anyway because ids are only compared
        // within the window.
        let id = self.base.plus(self.parts.len() as u16);
        self.memory_bytes += Self::cost(payload.len(), 1);
        self.parts.push_back(SentPart {
            id,
            fragment,
            payload: payload.to_vec(),
            payload_len: payload.len(),
            queued_at: now,
            ready_at: now,
            pending: true,
            last_sent: None,
            last_packet: None,
            acked: false,
        });
    }

    /// Parts that may be sent: the whole message they belong to lies within the window.
    ///
    /// Whole messages, not just parts: the unordered receiver needs every part of a message
    /// inside its window at once, so a part whose message would overhang the window waits.
    fn in_window(&self) -> impl Iterator<Item = &SentPart> {
        let window = self.window;
        self.parts
            .iter()
            .take(window)
            .enumerate()
            .filter(move |(offset, p)| fits_window(*offset, p.fragment, window))
            .map(|(_, p)| p)
    }

    pub(crate) fn wants_to_send(&self, now: Instant, interval: Duration) -> bool {
        self.in_window().any(|p| p.is_due(now, interval))
    }

    pub(crate) fn poll_timeout(&self, interval: Duration) -> Option<Instant> {
        self.in_window().filter_map(|p| p.due_at(interval)).min()
    }

    /// Write due parts, oldest first, within `limit` bytes; note their ids in `sent`.
    #[allow(clippy::too_many_arguments)] // One call site; a context struct would only rename them.
    pub(crate) fn write(
        &mut self,
        now: Instant,
        packet: Sequence,
        interval: Duration,
        channel: u8,
        writer: &mut SectionWriter<'_>,
        limit: usize,
        sent: &mut Vec<(u8, Sequence)>,
    ) -> WriteOutcome {
        let mut outcome = WriteOutcome::default();
        let window = self.window;
        for (offset, part) in self.parts.iter_mut().take(window).enumerate() {
            if writer.is_full() {
                break;
            }
            if !fits_window(offset, part.fragment, window) {
                continue;
            }
            if !part.is_due(now, interval) {
                continue;
            }
            let len = record_bytes(part.fragment.is_some(), part.payload.len());
            if outcome.bytes + len > limit {
                continue;
            }
            writer.push(&Record {
                channel,
                id: part.id,
                fragment: part.fragment,
                payload: &part.payload,
            });
            outcome.bytes += len;
            if part.last_sent.is_some() {
                tracing::debug!(id = ?part.id, pending = part.pending, since_last_ms = part.last_sent.map(|t| now.saturating_duration_since(t).as_millis() as u64), "resend");
                outcome.resends += 1;
            } else {
                outcome.first_sends += 1;
            }
            part.pending = false;
            part.last_sent = Some(now);
            part.last_packet = Some(packet);
            sent.push((channel, part.id));
        }
        outcome
    }

    /// The packet layer's verdict on `packet`, which carried part `id`.
    pub(crate) fn on_delivery(
        &mut self,
        now: Instant,
        packet: Sequence,
        id: Sequence,
        acked: bool,
    ) {
        let offset = id.distance(self.base);
        let Some(part) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.parts.get_mut(o))
        else {
            // Acked and released already.
            return;
        };
        if part.acked {
            return;
        }
        if acked {
            part.acked = true;
            self.memory_bytes -= part.payload_len;
            part.payload = Vec::new();
            self.release_acked();
        } else if part.last_packet == Some(packet) {
            // Only the latest copy counts: an older copy's loss says nothing about a resend.
            tracing::debug!(id = ?part.id, since_sent_ms = part.last_sent.map(|t| now.saturating_duration_since(t).as_millis() as u64), "lost");
            part.pending = true;
            part.ready_at = now;
        }
    }

    /// Drop whole messages from the front once all their parts are acked.
    fn release_acked(&mut self) {
        while let Some(front) = self.parts.front() {
            let span = front.span().min(self.parts.len());
            if !self.parts.iter().take(span).all(|p| p.acked) {
                break;
            }
            self.parts.drain(..span);
            self.memory_bytes -= span * PART_OVERHEAD_BYTES;
            self.base = self.base.plus(span as u16);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Part(Option<Fragment>, Vec<u8>),
    /// Delivered already (unordered channels mark delivered ids ahead of the window start).
    Delivered,
}

#[derive(Debug)]
struct Assembling {
    count: u16,
    next: u16,
    bytes: Vec<u8>,
}

/// The receiving half of a reliable channel.
#[derive(Debug)]
pub(crate) struct ReliableReceiver {
    ordered: bool,
    /// Every id before this one has been received (and, ordered, delivered).
    next_expected: Sequence,
    /// Slot `i` holds id `next_expected + i`; always `window` long.
    slots: VecDeque<Option<Slot>>,
    assembling: Option<Assembling>,
    max_message_bytes: usize,
}

impl ReliableReceiver {
    pub(crate) fn new(limits: &Limits, ordered: bool) -> Self {
        let mut slots = VecDeque::with_capacity(limits.window);
        slots.resize_with(limits.window, || None);
        Self {
            ordered,
            next_expected: Sequence(0),
            slots,
            assembling: None,
            max_message_bytes: limits.max_message_bytes,
        }
    }

    /// Bytes held for parts not yet delivered.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        let slots: usize = self
            .slots
            .iter()
            .map(|s| match s {
                Some(Slot::Part(_, p)) => p.len(),
                _ => 0,
            })
            .sum();
        slots + self.assembling.as_ref().map_or(0, |a| a.bytes.len())
    }

    /// Accept one validated record; completed messages go to `deliver`.
    pub(crate) fn on_record(
        &mut self,
        record: &Record<'_>,
        deliver: &mut impl FnMut(Vec<u8>),
    ) -> Result<(), ChannelError> {
        let window = self.slots.len();
        let Ok(offset) = usize::try_from(record.id.distance(self.next_expected)) else {
            // Before the window: received already, this is a duplicate or a resend.
            return Ok(());
        };
        if offset >= window {
            return Err(ChannelError::OutsideWindow);
        }
        if !self.ordered
            && let Some(f) = record.fragment
        {
            // The whole message must lie within the window, or it could never complete.
            let first = offset as i64 - i64::from(f.index);
            if first < 0 || first + i64::from(f.count) > window as i64 {
                return Err(ChannelError::OutsideWindow);
            }
        }
        // `offset < window == slots.len()`.
        let slot = &mut self.slots[offset];
        match slot {
            Some(Slot::Part(fragment, payload)) => {
                if *fragment == record.fragment && payload.as_slice() == record.payload {
                    return Ok(());
                }
                return Err(ChannelError::ConflictingFragment);
            }
            Some(Slot::Delivered) => return Ok(()),
            None => *slot = Some(Slot::Part(record.fragment, record.payload.to_vec())),
        }
        if self.ordered {
            self.advance_ordered(deliver)
        } else {
            self.complete_unordered(offset, record.fragment, deliver);
            self.advance_unordered();
            Ok(())
        }
    }

    fn pop_front(&mut self) -> Option<Slot> {
        let slot = self.slots.pop_front().flatten();
        self.slots.push_back(None);
        self.next_expected = self.next_expected.next();
        slot
    }

    fn advance_ordered(&mut self, deliver: &mut impl FnMut(Vec<u8>)) -> Result<(), ChannelError> {
        let mut result = Ok(());
        while matches!(self.slots.front(), Some(Some(Slot::Part(..)))) {
            let Some(Slot::Part(fragment, payload)) = self.pop_front() else {
                break;
            };
            if let Err(e) = self.assemble(fragment, payload, deliver) {
                result = Err(e);
            }
        }
        result
    }

    fn assemble(
        &mut self,
        fragment: Option<Fragment>,
        payload: Vec<u8>,
        deliver: &mut impl FnMut(Vec<u8>),
    ) -> Result<(), ChannelError> {
        let Some(f) = fragment else {
            let broken = self.assembling.take().is_some();
            deliver(payload);
            return if broken {
                Err(ChannelError::ConflictingFragment)
            } else {
                Ok(())
            };
        };
        if f.index == 0 {
            let broken = self.assembling.is_some();
            self.assembling = Some(Assembling {
                count: f.count,
                next: 1,
                bytes: payload,
            });
            if broken {
                return Err(ChannelError::ConflictingFragment);
            }
            return Ok(());
        }
        match &mut self.assembling {
            Some(a) if a.count == f.count && a.next == f.index => {
                a.bytes.extend_from_slice(&payload);
                a.next += 1;
                if a.bytes.len() > self.max_message_bytes {
                    self.assembling = None;
                    return Err(ChannelError::FragmentLength);
                }
                if a.next == a.count
                    && let Some(done) = self.assembling.take()
                {
                    deliver(done.bytes);
                }
                Ok(())
            }
            _ => {
                // A fragment out of place: the peer broke the numbering; drop the message.
                self.assembling = None;
                Err(ChannelError::ConflictingFragment)
            }
        }
    }

    /// Deliver the message the part at `offset` belongs to, if all its parts are here.
    fn complete_unordered(
        &mut self,
        offset: usize,
        fragment: Option<Fragment>,
        deliver: &mut impl FnMut(Vec<u8>),
    ) {
        let Some(f) = fragment else {
            if let Some(slot) = self.slots.get_mut(offset)
                && let Some(Slot::Part(_, payload)) = slot.replace(Slot::Delivered)
            {
                deliver(payload);
            }
            return;
        };
        // on_record checked that the message's range lies within the window.
        let first = offset - usize::from(f.index);
        let count = usize::from(f.count);
        let complete = (0..count).all(|k| {
            matches!(
                self.slots.get(first + k),
                Some(Some(Slot::Part(Some(g), _))) if g.index as usize == k && g.count == f.count
            )
        });
        if !complete {
            return;
        }
        let mut bytes = Vec::new();
        for k in 0..count {
            if let Some(slot) = self.slots.get_mut(first + k)
                && let Some(Slot::Part(_, payload)) = slot.replace(Slot::Delivered)
            {
                bytes.extend_from_slice(&payload);
            }
        }
        deliver(bytes);
    }

    fn advance_unordered(&mut self) {
        while matches!(self.slots.front(), Some(Some(Slot::Delivered))) {
            self.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resend_waits_for_interval_unless_lost() {
        let base = Instant::now();
        let interval = Duration::from_millis(100);
        let mut s = ReliableSender::new(8);
        s.push(base, None, b"a");
        assert!(s.wants_to_send(base, interval));
        let mut out = Vec::new();
        let mut w = SectionWriter::new(&mut out);
        let mut sent = Vec::new();
        let o = s.write(base, Sequence(1), interval, 0, &mut w, 100, &mut sent);
        assert_eq!((o.first_sends, o.resends), (1, 0));
        assert_eq!(sent, vec![(0, Sequence(0))]);
        assert!(!s.wants_to_send(base + Duration::from_millis(99), interval));
        assert_eq!(s.poll_timeout(interval), Some(base + interval));
        assert!(s.wants_to_send(base + interval, interval));
        // A loss report for the latest packet makes it due at once.
        let t = base + Duration::from_millis(30);
        s.on_delivery(t, Sequence(1), Sequence(0), false);
        assert!(s.wants_to_send(t, interval));
        let o = s.write(t, Sequence(2), interval, 0, &mut w, 100, &mut sent);
        assert_eq!(o.resends, 1);
        // A late loss report for the older packet does not.
        s.on_delivery(t, Sequence(1), Sequence(0), false);
        assert!(!s.wants_to_send(t, interval));
        s.on_delivery(t, Sequence(2), Sequence(0), true);
        assert_eq!(s.memory_bytes(), 0);
        assert_eq!(s.poll_timeout(interval), None);
        w.finish();
    }

    #[test]
    fn window_limits_parts_in_flight() {
        let base = Instant::now();
        let interval = Duration::from_millis(100);
        let mut s = ReliableSender::new(2);
        for _ in 0..3 {
            s.push(base, None, b"x");
        }
        let mut out = Vec::new();
        let mut w = SectionWriter::new(&mut out);
        let mut sent = Vec::new();
        s.write(base, Sequence(0), interval, 0, &mut w, 1000, &mut sent);
        assert_eq!(sent.len(), 2);
        assert!(!s.wants_to_send(base, interval));
        s.on_delivery(base, Sequence(0), Sequence(0), true);
        assert!(s.wants_to_send(base, interval));
        w.finish();
    }
}
