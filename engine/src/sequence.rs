//! Wrapping 16-bit sequence numbers and a fixed-size buffer indexed by them.
//!
//! This is the one place where "newer than" is defined for wrapping sequences; every
//! layer (packets, channels, snapshot parts) compares through [`Sequence`].

use std::cmp::Ordering;
use std::fmt;

/// A 16-bit sequence number that wraps around; compares by the shorter distance on the circle.
///
/// `a` is newer than `b` when `a - b` (wrapping) lies in `1..=32767`. Two sequences exactly
/// 32768 apart are ambiguous; they are ordered by the raw value so the ordering stays total.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Sequence(pub u16);

impl Sequence {
    /// The sequence after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Sequence(self.0.wrapping_add(1))
    }

    /// The sequence `n` steps before this one.
    #[must_use]
    pub fn minus(self, n: u16) -> Self {
        Sequence(self.0.wrapping_sub(n))
    }

    /// The sequence `n` steps after this one.
    #[must_use]
    pub fn plus(self, n: u16) -> Self {
        Sequence(self.0.wrapping_add(n))
    }

    /// Signed distance from `other` to `self`: positive when `self` is newer.
    pub fn distance(self, other: Sequence) -> i32 {
        i32::from(self.0.wrapping_sub(other.0) as i16)
    }

    /// True when `self` is strictly newer than `other`.
    pub fn is_newer_than(self, other: Sequence) -> bool {
        self.distance(other) > 0
    }
}

impl Ord for Sequence {
    fn cmp(&self, other: &Self) -> Ordering {
        match self.distance(*other) {
            0 => Ordering::Equal,
            d if d > 0 => Ordering::Greater,
            _ => Ordering::Less,
        }
    }
}

impl PartialOrd for Sequence {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

impl fmt::Display for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A ring of `N` slots indexed by sequence number, each remembering which sequence it holds.
///
/// Inserting a sequence far newer than the newest clears the slots it skipped over, so a
/// lookup never returns an entry from a previous lap of the ring.
#[derive(Debug, Clone)]
pub struct SequenceBuffer<T> {
    slots: Vec<Option<(Sequence, T)>>,
    newest: Option<Sequence>,
}

impl<T> SequenceBuffer<T> {
    /// A buffer with `capacity` slots (at least 1, at most 32768).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 32768);
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || None);
        Self {
            slots,
            newest: None,
        }
    }

    /// How many slots the ring has.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The newest sequence ever inserted.
    pub fn newest(&self) -> Option<Sequence> {
        self.newest
    }

    fn index(&self, seq: Sequence) -> usize {
        let len = self.slots.len();
        // Every ring the engine keeps is a power of two long: a mask, not a division, on
        // each packet sent and received.
        if len.is_power_of_two() {
            usize::from(seq.0) & (len - 1)
        } else {
            usize::from(seq.0) % len
        }
    }

    /// Ask for the slot of `seq` to be brought into the caches (see [`crate::prefetch`]).
    pub(crate) fn prefetch(&self, seq: Sequence) {
        if let Some(slot) = self.slots.get(self.index(seq)) {
            crate::prefetch::value(slot);
        }
    }

    /// Store `value` at `seq`. Returns `false` (and stores nothing) when `seq` is too old to
    /// fit in the ring behind the newest entry.
    pub fn insert(&mut self, seq: Sequence, value: T) -> bool {
        let cap = self.slots.len() as i32;
        match self.newest {
            Some(newest) if newest.distance(seq) >= cap => return false,
            Some(newest) if seq.is_newer_than(newest) => {
                // Clear the slots between the old newest and seq: they belong to sequences
                // that were never inserted in this lap.
                let gap = seq.distance(newest);
                if gap >= cap {
                    self.slots.iter_mut().for_each(|s| *s = None);
                } else {
                    for i in 1..gap {
                        let idx = self.index(newest.plus(i as u16));
                        self.slots[idx] = None;
                    }
                }
                self.newest = Some(seq);
            }
            Some(_) => {}
            None => self.newest = Some(seq),
        }
        let idx = self.index(seq);
        self.slots[idx] = Some((seq, value));
        true
    }

    /// The entry stored for exactly `seq`, if it is still in the ring.
    pub fn get(&self, seq: Sequence) -> Option<&T> {
        match &self.slots[self.index(seq)] {
            Some((s, v)) if *s == seq => Some(v),
            _ => None,
        }
    }

    /// Mutable access to the entry stored for exactly `seq`.
    pub fn get_mut(&mut self, seq: Sequence) -> Option<&mut T> {
        let idx = self.index(seq);
        match &mut self.slots[idx] {
            Some((s, v)) if *s == seq => Some(v),
            _ => None,
        }
    }

    /// Remove and return the entry for exactly `seq`.
    pub fn remove(&mut self, seq: Sequence) -> Option<T> {
        let idx = self.index(seq);
        match &self.slots[idx] {
            Some((s, _)) if *s == seq => self.slots[idx].take().map(|(_, v)| v),
            _ => None,
        }
    }

    /// True when an entry for exactly `seq` is stored.
    pub fn contains(&self, seq: Sequence) -> bool {
        self.get(seq).is_some()
    }

    /// Iterate over the stored entries, in slot order (not sequence order).
    pub fn iter(&self) -> impl Iterator<Item = (Sequence, &T)> {
        self.slots
            .iter()
            .filter_map(|s| s.as_ref().map(|(seq, v)| (*seq, v)))
    }

    /// Remove every entry.
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.newest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newer_across_wrap() {
        assert!(Sequence(0).is_newer_than(Sequence(65535)));
        assert!(Sequence(10).is_newer_than(Sequence(65530)));
        assert!(!Sequence(65530).is_newer_than(Sequence(10)));
        assert!(Sequence(32767).is_newer_than(Sequence(0)));
        assert!(!Sequence(32768).is_newer_than(Sequence(0)));
        assert_eq!(Sequence(3).distance(Sequence(65534)), 5);
    }

    #[test]
    fn buffer_forgets_previous_lap() {
        let mut b = SequenceBuffer::new(8);
        assert!(b.insert(Sequence(1), 'a'));
        assert!(b.insert(Sequence(20), 'b'));
        assert_eq!(b.get(Sequence(1)), None);
        assert_eq!(b.get(Sequence(20)), Some(&'b'));
        // Too old for the ring behind 20.
        assert!(!b.insert(Sequence(12), 'c'));
        assert!(b.insert(Sequence(13), 'd'));
        assert_eq!(b.remove(Sequence(13)), Some('d'));
        assert!(!b.contains(Sequence(13)));
    }

    #[test]
    fn buffer_across_wrap() {
        let mut b = SequenceBuffer::new(16);
        for i in 0..70_000u32 {
            let s = Sequence(i as u16);
            assert!(b.insert(s, i));
            assert_eq!(b.get(s), Some(&i));
            if i >= 15 {
                assert_eq!(b.get(s.minus(15)), Some(&(i - 15)));
            }
            assert_eq!(b.get(s.minus(16)), None);
        }
    }

    proptest! {
        #[test]
        fn ordering_is_antisymmetric(a: u16, d in 1u16..32768) {
            let x = Sequence(a);
            let y = x.plus(d);
            prop_assert!(y.is_newer_than(x) || d == 32768);
            prop_assert!(!x.is_newer_than(y));
            prop_assert_eq!(y.distance(x), i32::from(d));
        }
    }
}
