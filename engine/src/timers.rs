//! Timers by slot: a binary min-heap of deadlines, each slot's place in it kept by slot.
//!
//! Servers keep one timer per connection, and are asked for the earliest after every
//! datagram: a scan of every connection for it costs O(clients) each time, a thousand scans of
//! a thousand per tick at a thousand clients. Here the earliest is the heap's first node, and
//! a timer that moves is moved in place (up or down the heap) and one that goes is taken
//! out, found by its slot without a search. A heap in a `Vec` rather than an ordered set:
//! nearly every packet moves its connection's timer, and a B-tree's nodes are allocated and
//! freed as entries come and go; the heap's memory, once grown, is kept.
//!
//! Used by the connection layer's table (`connection/table.rs`) and by the netcode server's
//! keep-alives and timeouts.

use std::time::Instant;

/// One timer in the heap: when, whose, and its slot. Ordered by time, then id (a slot has
/// one timer and ids differ, so that order is total).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer<Id> {
    pub(crate) at: Instant,
    pub(crate) id: Id,
    pub(crate) slot: u32,
}

/// A slot with no timer in the heap.
pub(crate) const NOWHERE: u32 = u32::MAX;

/// Children of heap node `i`.
pub(crate) fn children(i: usize) -> [usize; 2] {
    [2 * i + 1, 2 * i + 2]
}

/// A binary min-heap of timers (each node no later than its children), with the place of
/// each slot's timer.
#[derive(Debug)]
pub(crate) struct Timers<Id> {
    pub(crate) heap: Vec<Timer<Id>>,
    /// By slot: where its timer is in `heap`, or [`NOWHERE`].
    pub(crate) places: Vec<u32>,
}

impl<Id> Default for Timers<Id> {
    fn default() -> Self {
        Self {
            heap: Vec::new(),
            places: Vec::new(),
        }
    }
}

impl<Id: Copy + Ord> Timers<Id> {
    /// Timers for `slots` slots, none set.
    pub(crate) fn with_slots(slots: usize) -> Self {
        Self {
            heap: Vec::with_capacity(slots),
            places: vec![NOWHERE; slots],
        }
    }

    /// One more slot, with no timer; returns it.
    pub(crate) fn add_slot(&mut self) -> u32 {
        // Fewer than u32::MAX slots: one per connection, and ids are u32.
        self.places.push(NOWHERE);
        (self.places.len() - 1) as u32
    }

    /// The earliest timer.
    pub(crate) fn first(&self) -> Option<&Timer<Id>> {
        self.heap.first()
    }

    /// Heap node `i`.
    pub(crate) fn get(&self, i: usize) -> Option<&Timer<Id>> {
        self.heap.get(i)
    }

    /// The time of `slot`'s timer, if it has one.
    pub(crate) fn at(&self, slot: u32) -> Option<Instant> {
        match self.places[slot as usize] {
            NOWHERE => None,
            i => Some(self.heap[i as usize].at),
        }
    }

    /// Note where node `i`'s timer now is.
    fn place(&mut self, i: usize) {
        let slot = self.heap[i].slot as usize;
        // A heap holds fewer than u32::MAX timers (one per slot).
        self.places[slot] = i as u32;
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        self.place(i);
        self.place(j);
    }

    /// Move node `i` up or down until the heap is in order again.
    fn restore(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] >= self.heap[parent] {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
        loop {
            let [l, r] = children(i);
            if l >= self.heap.len() {
                return;
            }
            let c = if r < self.heap.len() && self.heap[r] < self.heap[l] {
                r
            } else {
                l
            };
            if self.heap[c] >= self.heap[i] {
                return;
            }
            self.swap(c, i);
            i = c;
        }
    }

    /// Give `slot` (whose owner is `id`) the timer `at` (`None`: no timer).
    pub(crate) fn set(&mut self, slot: u32, id: Id, at: Option<Instant>) {
        let place = self.places[slot as usize];
        match (place, at) {
            (NOWHERE, None) => {}
            (NOWHERE, Some(at)) => {
                self.heap.push(Timer { at, id, slot });
                let last = self.heap.len() - 1;
                self.place(last);
                self.restore(last);
            }
            (i, Some(at)) => {
                let i = i as usize;
                self.heap[i].at = at;
                self.restore(i);
            }
            (i, None) => {
                let i = i as usize;
                let last = self.heap.len() - 1;
                self.swap(i, last);
                self.heap.pop();
                self.places[slot as usize] = NOWHERE;
                if i < self.heap.len() {
                    self.restore(i);
                }
            }
        }
    }
}
