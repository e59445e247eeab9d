//! A map from ticks to values, kept as a list sorted by tick.
//!
//! A client keeps its snapshots, incomplete ticks and input acks by tick, a ring of up to a
//! few dozen: new ticks come at the newest end and old ones leave at the other. A
//! `BTreeMap` allocates and frees nodes as its leaves split and merge under that traffic,
//! a few times a second for the whole session; this list grows to the ring's size once and
//! then takes and gives back from its two ends. A lookup is a binary search.

use std::collections::VecDeque;

use super::world::Tick;

#[derive(Clone, Debug)]
pub(crate) struct TickMap<V> {
    /// Sorted by tick, each tick once.
    entries: VecDeque<(Tick, V)>,
}

impl<V> Default for TickMap<V> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<V> TickMap<V> {
    fn find(&self, tick: Tick) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&tick, |(t, _)| *t)
    }

    pub(crate) fn get(&self, tick: Tick) -> Option<&V> {
        self.find(tick).ok().map(|i| &self.entries[i].1)
    }

    pub(crate) fn get_mut(&mut self, tick: Tick) -> Option<&mut V> {
        self.find(tick).ok().map(|i| &mut self.entries[i].1)
    }

    pub(crate) fn contains(&self, tick: Tick) -> bool {
        self.find(tick).is_ok()
    }

    /// Sets `tick`'s value; returns the one it replaced.
    pub(crate) fn insert(&mut self, tick: Tick, value: V) -> Option<V> {
        match self.find(tick) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (tick, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, tick: Tick) -> Option<V> {
        let i = self.find(tick).ok()?;
        self.entries.remove(i).map(|(_, v)| v)
    }

    pub(crate) fn first_tick(&self) -> Option<Tick> {
        self.entries.front().map(|(t, _)| *t)
    }

    pub(crate) fn last_tick(&self) -> Option<Tick> {
        self.entries.back().map(|(t, _)| *t)
    }

    pub(crate) fn pop_first(&mut self) -> Option<(Tick, V)> {
        self.entries.pop_front()
    }

    /// The entry of the newest tick at or before `tick`.
    pub(crate) fn at_or_before(&self, tick: Tick) -> Option<(Tick, &V)> {
        let i = match self.find(tick) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        self.entries.get(i).map(|(t, v)| (*t, v))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Tick, &V)> {
        self.entries.iter().map(|(t, v)| (*t, v))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    /// Removes the ticks `keep` refuses, handing each value to `gone`.
    pub(crate) fn retain(&mut self, keep: impl Fn(Tick) -> bool, mut gone: impl FnMut(V)) {
        if self.entries.iter().all(|(t, _)| keep(*t)) {
            return;
        }
        // Rotated through once: each entry is taken from the front and put back at the
        // end if kept, so the order stays sorted and nothing is allocated.
        for _ in 0..self.entries.len() {
            if let Some((t, v)) = self.entries.pop_front() {
                if keep(t) {
                    self.entries.push_back((t, v));
                } else {
                    gone(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, u8),
        Remove(u32),
        PopFirst,
        Retain(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..40, any::<u8>()).prop_map(|(t, v)| Op::Insert(t, v)),
            1 => (0u32..40).prop_map(Op::Remove),
            1 => Just(Op::PopFirst),
            1 => (0u32..40).prop_map(Op::Retain),
        ]
    }

    proptest! {
        /// Every operation gives what a `BTreeMap` gives, and leaves the same entries.
        #[test]
        fn behaves_as_a_btree_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut map = TickMap::default();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(t, v) => {
                        prop_assert_eq!(map.insert(Tick(t), v), model.insert(Tick(t), v));
                    }
                    Op::Remove(t) => prop_assert_eq!(map.remove(Tick(t)), model.remove(&Tick(t))),
                    Op::PopFirst => prop_assert_eq!(map.pop_first(), model.pop_first()),
                    Op::Retain(below) => {
                        let mut gone = Vec::new();
                        map.retain(|t| t.0 < below, |v| gone.push(v));
                        let mut expected = Vec::new();
                        model.retain(|t, v| {
                            if t.0 >= below {
                                expected.push(*v);
                            }
                            t.0 < below
                        });
                        prop_assert_eq!(gone, expected);
                    }
                }
                prop_assert_eq!(map.iter().count(), model.len());
                prop_assert_eq!(map.first_tick(), model.keys().next().copied());
                prop_assert_eq!(map.last_tick(), model.keys().next_back().copied());
                let listed: Vec<(Tick, u8)> = map.iter().map(|(t, v)| (t, *v)).collect();
                let expected: Vec<(Tick, u8)> = model.iter().map(|(t, v)| (*t, *v)).collect();
                prop_assert_eq!(listed, expected);
                for t in 0..42 {
                    prop_assert_eq!(map.get(Tick(t)), model.get(&Tick(t)));
                    prop_assert_eq!(map.contains(Tick(t)), model.contains_key(&Tick(t)));
                    prop_assert_eq!(
                        map.at_or_before(Tick(t)),
                        model.range(..=Tick(t)).next_back().map(|(k, v)| (*k, v))
                    );
                }
            }
        }
    }
}
