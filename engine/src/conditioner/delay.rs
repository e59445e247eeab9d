//! Datagrams inside the link, ordered by the time they come out.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// One datagram on its way through the link.
#[derive(Debug)]
pub(crate) struct InFlight<P> {
    /// When it comes out.
    pub(crate) release: Instant,
    /// Tie-break so equal release times come out in insertion order.
    order: u64,
    /// Position in push order (shared by a datagram and its copy).
    pub(crate) seq: u64,
    pub(crate) pushed_at: Instant,
    pub(crate) bytes: usize,
    /// True for the extra copy made by duplication.
    pub(crate) is_copy: bool,
    pub(crate) packet: P,
}

impl<P> PartialEq for InFlight<P> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<P> Eq for InFlight<P> {}

impl<P> PartialOrd for InFlight<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> Ord for InFlight<P> {
    /// Reversed so `BinaryHeap`, a max-heap, yields the earliest release first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release, other.order).cmp(&(self.release, self.order))
    }
}

/// What `DelayLine::insert` needs besides the datagram itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) seq: u64,
    pub(crate) pushed_at: Instant,
    pub(crate) bytes: usize,
    pub(crate) is_copy: bool,
}

/// The datagrams inside the link.
///
/// Pass-through datagrams that find the line empty go to `ready`, a plain FIFO, so a
/// switched-off link costs a `VecDeque` push and pop. Everything else goes to `delayed`.
/// Every datagram in `ready` was pushed before every one in `delayed`, so draining `ready`
/// first keeps push order.
#[derive(Debug)]
pub(crate) struct DelayLine<P> {
    ready: VecDeque<InFlight<P>>,
    delayed: BinaryHeap<InFlight<P>>,
    /// Latest release of an in-order datagram: later in-order ones may not come out earlier.
    last_release: Option<Instant>,
    next_order: u64,
    bytes: usize,
}

impl<P> DelayLine<P> {
    pub(crate) fn new() -> Self {
        Self {
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            last_release: None,
            next_order: 0,
            bytes: 0,
        }
    }

    /// Datagrams inside.
    pub(crate) fn len(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// Bytes inside.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a datagram that comes out at `release`, or later if needed to stay behind the
    /// in-order datagrams already inside.
    pub(crate) fn insert_in_order(&mut self, release: Instant, arrival: Arrival, packet: P) {
        let release = self.last_release.map_or(release, |last| last.max(release));
        self.last_release = Some(release);
        if self.delayed.is_empty() && release <= arrival.pushed_at {
            self.push(release, arrival, packet, true);
        } else {
            self.push(release, arrival, packet, false);
        }
    }

    /// Adds a datagram that comes out `hold` after its in-order release, letting later ones
    /// overtake it.
    ///
    /// Held from its in-order slot, not from its own release: from its own release it could
    /// come out before earlier datagrams still waiting behind a slow one, which would make
    /// them the reordered ones.
    pub(crate) fn insert_held_back(
        &mut self,
        release: Instant,
        hold: Duration,
        arrival: Arrival,
        packet: P,
    ) {
        let in_order = self.last_release.map_or(release, |last| last.max(release));
        // Saturating keeps a pathological release time from panicking; it then just isn't held.
        let release = in_order.checked_add(hold).unwrap_or(in_order);
        self.push(release, arrival, packet, false);
    }

    fn push(&mut self, release: Instant, arrival: Arrival, packet: P, ready: bool) {
        let entry = InFlight {
            release,
            order: self.next_order,
            seq: arrival.seq,
            pushed_at: arrival.pushed_at,
            bytes: arrival.bytes,
            is_copy: arrival.is_copy,
            packet,
        };
        self.next_order += 1;
        // Saturating: `len_bytes` is the caller's word, and a count is not worth a panic.
        self.bytes = self.bytes.saturating_add(arrival.bytes);
        if ready {
            self.ready.push_back(entry);
        } else {
            self.delayed.push(entry);
        }
    }

    /// When the next datagram comes out.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        match self.ready.front() {
            Some(e) => Some(e.release),
            None => self.delayed.peek().map(|e| e.release),
        }
    }

    /// Takes the next datagram if it comes out at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<InFlight<P>> {
        let entry = if self.ready.front().is_some_and(|e| e.release <= now) {
            self.ready.pop_front()
        } else if self.ready.is_empty() && self.delayed.peek().is_some_and(|e| e.release <= now) {
            self.delayed.pop()
        } else {
            None
        }?;
        self.bytes = self.bytes.saturating_sub(entry.bytes);
        Some(entry)
    }
}
