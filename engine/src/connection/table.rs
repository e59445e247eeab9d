//! The server's connections, with each one's next timeout indexed.
//!
//! A server is asked for its next timeout after every datagram, and runs its timers each time
//! one is due. Scanning every connection for either costs O(clients) each time: with a
//! thousand clients sending a packet a tick, a thousand scans of a thousand per tick. The
//! table keeps every connection's next timeout in a binary heap instead. Whoever takes a
//! connection mutably marks it dirty; its timeout is recomputed on the next [`reindex`]
//! (which the server runs at the end of every call that can change a connection), and
//! until then [`next_timeout`] also looks at the dirty ones, so it is never stale. The
//! timeout the heap holds for a connection is found by its slot, so one whose timeout
//! did not change (a connection taken twice, or for something that moved no timer) costs
//! the heap nothing: a server sending a packet to each of a thousand clients a tick reindexes
//! each of them several times.
//!
//! The heap is [`Timers`] (`crate::timers`): each connection has a slot, by which its timer is
//! found, moved in place and taken out without a search.
//!
//! [`reindex`]: ClientTable::reindex
//! [`next_timeout`]: ClientTable::next_timeout

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::RangeBounds;
use std::time::Instant;

use super::ClientId;
use super::established::Established;
use crate::timers::{Timer, Timers, children};

#[derive(Debug)]
pub(super) struct Client {
    pub(super) nonce: u64,
    pub(super) conn: Established,
}

/// A connection and its slot, by which the heap finds its timer ([`Timers::places`]).
#[derive(Debug)]
struct Entry {
    client: Client,
    slot: u32,
}

#[derive(Debug, Default)]
pub(super) struct ClientTable {
    map: BTreeMap<ClientId, Entry>,
    timers: Timers<ClientId>,
    /// Slots of connections removed, for the next ones.
    free_slots: Vec<u32>,
    /// Connections taken mutably since the last reindex (may repeat).
    dirty: Vec<ClientId>,
    /// The heap's nodes [`Self::first_due`] visits next, earliest first: kept, so that
    /// finding the due connections in order allocates nothing once grown.
    frontier: BinaryHeap<Reverse<(Timer<ClientId>, usize)>>,
}

impl ClientTable {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, id: &ClientId) -> Option<&Client> {
        self.map.get(id).map(|e| &e.client)
    }

    pub(super) fn get_mut(&mut self, id: &ClientId) -> Option<&mut Client> {
        let e = self.map.get_mut(id)?;
        self.dirty.push(*id);
        Some(&mut e.client)
    }

    pub(super) fn insert(&mut self, id: ClientId, client: Client) {
        // A connection it replaces gives it its slot, without its timer.
        let slot = match self.map.get(&id) {
            Some(old) => {
                self.timers.set(old.slot, id, None);
                old.slot
            }
            None => self.free_slots.pop().unwrap_or_else(|| {
                // Fewer than u32::MAX connections (ids are u32).
                self.timers.add_slot()
            }),
        };
        let entry = Entry { client, slot };
        self.map.insert(id, entry);
        self.dirty.push(id);
    }

    pub(super) fn remove(&mut self, id: &ClientId) -> Option<Client> {
        let e = self.map.remove(id)?;
        self.timers.set(e.slot, *id, None);
        self.free_slots.push(e.slot);
        Some(e.client)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &ClientId> {
        self.map.keys()
    }

    /// Every connection in `range`, each marked dirty as it is handed out.
    pub(super) fn range_mut(
        &mut self,
        range: impl RangeBounds<ClientId>,
    ) -> impl Iterator<Item = (&ClientId, &mut Client)> {
        let dirty = &mut self.dirty;
        self.map.range_mut(range).map(move |(id, e)| {
            dirty.push(*id);
            (id, &mut e.client)
        })
    }

    /// Every connection, each marked dirty.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Client> {
        self.range_mut(..).map(|(_, c)| c)
    }

    /// Connections whose timeout is at or before `now` (as of the last reindex), plus the
    /// dirty ones.
    pub(super) fn due(&self, now: Instant) -> Vec<ClientId> {
        let mut ids = self.dirty.clone();
        self.due_below(0, now, &mut ids);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Add the connections of the timers at or before `now` under heap node `i`.
    fn due_below(&self, i: usize, now: Instant, ids: &mut Vec<ClientId>) {
        let Some(t) = self.timers.get(i) else {
            return;
        };
        // Nothing under a node is earlier than it.
        if t.at > now {
            return;
        }
        ids.push(t.id);
        for c in children(i) {
            self.due_below(c, now, ids);
        }
    }

    /// The earliest timeout of any connection.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        // A dirty connection's indexed timer may be out of date: its live value counts.
        self.dirty
            .iter()
            .filter_map(|id| self.map.get(id).and_then(|e| e.client.conn.poll_timeout()))
            .chain(self.earliest_clean(0))
            .min()
    }

    /// The earliest timer of a connection that is not dirty under heap node `i`.
    fn earliest_clean(&self, i: usize) -> Option<Instant> {
        let t = self.timers.get(i)?;
        if !self.dirty.contains(&t.id) {
            // Nothing under it is earlier.
            return Some(t.at);
        }
        children(i)
            .into_iter()
            .filter_map(|c| self.earliest_clean(c))
            .min()
    }

    /// The first `Some` that `f` gives for a connection due at `now`, trying them in order
    /// of their timeouts (the longest waiting first); each one tried is marked dirty.
    ///
    /// A connection has something to send only once its timeout is due (its timeout covers
    /// every reason it sends), so this looks at the due ones alone, not at every connection.
    pub(super) fn first_due<R>(
        &mut self,
        now: Instant,
        mut f: impl FnMut(ClientId, &mut Client) -> Option<R>,
    ) -> Option<R> {
        self.reindex();
        // The heap's nodes in order of time, each one's children added as it is taken; the
        // usual call stops at the top, before any is added.
        let mut frontier = std::mem::take(&mut self.frontier);
        frontier.clear();
        let mut next = self.timers.first().map(|&t| (t, 0));
        let mut found = None;
        while let Some((t, i)) = next {
            if t.at > now {
                break;
            }
            if let Some(e) = self.map.get_mut(&t.id) {
                self.dirty.push(t.id);
                if let Some(r) = f(t.id, &mut e.client) {
                    found = Some(r);
                    break;
                }
            }
            for c in children(i) {
                if let Some(&child) = self.timers.get(c) {
                    frontier.push(Reverse((child, c)));
                }
            }
            next = frontier.pop().map(|Reverse(n)| n);
        }
        self.frontier = frontier;
        found
    }

    /// Recompute the timeouts of the connections taken mutably since the last call.
    pub(super) fn reindex(&mut self) {
        for id in self.dirty.drain(..) {
            // A connection removed since is no longer indexed.
            let Some(e) = self.map.get_mut(&id) else {
                continue;
            };
            let t = e.client.conn.refresh_timeout();
            if t != self.timers.at(e.slot) {
                self.timers.set(e.slot, id, t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::connection::ConnectionConfig;
    use crate::packet::MAX_PACKET_BYTES;
    use crate::timers::NOWHERE;
    use std::collections::BTreeSet;

    /// A fresh connection, established at `now`.
    fn client(now: Instant) -> Client {
        Client {
            nonce: 0,
            conn: Established::new(
                "127.0.0.1:9".parse().unwrap(),
                0,
                ConnectionConfig::default(),
                now,
                MAX_PACKET_BYTES,
            ),
        }
    }

    fn scan(t: &ClientTable) -> Option<Instant> {
        t.map
            .values()
            .filter_map(|e| e.client.conn.poll_timeout())
            .min()
    }

    #[test]
    fn the_indexed_timeout_is_always_the_earliest_of_all_connections() {
        let start = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut table = ClientTable::default();
        let mut now = start;
        let mut buf = vec![0u8; MAX_PACKET_BYTES];
        let mut scratch = Vec::new();
        for round in 0..2000 {
            now += Duration::from_millis(rng.random_range(0..40));
            let id = ClientId(rng.random_range(1..40));
            match rng.random_range(0..6) {
                0 => table.insert(id, client(now)),
                1 => {
                    table.remove(&id);
                }
                2 => {
                    if let Some(c) = table.get_mut(&id) {
                        let _ = c.conn.send_message(now, 0, b"hello");
                    }
                }
                3 => {
                    for id in table.due(now) {
                        if let Some(c) = table.get_mut(&id) {
                            c.conn.handle_timeout(now);
                        }
                    }
                }
                4 => {
                    for (_, c) in table.range_mut(id..) {
                        if c.conn.poll_transmit(now, &mut buf, &mut scratch).is_some() {
                            break;
                        }
                    }
                }
                _ => {
                    if let Some(c) = table.get_mut(&id) {
                        let _ = c.conn.send_datagram(now, b"part", &mut scratch);
                    }
                }
            }
            // Right before and after a reindex: never stale.
            assert_eq!(table.next_timeout(), scan(&table), "round {round}, before");
            table.reindex();
            assert_eq!(table.next_timeout(), scan(&table), "round {round}, after");
            assert!(table.dirty.is_empty());
            // The heap holds exactly each connection's own timeout, one each, in heap
            // order, and each slot knows where its timer is.
            let held: BTreeSet<(Instant, ClientId)> = table
                .map
                .iter()
                .filter_map(|(id, e)| Some((e.client.conn.poll_timeout()?, *id)))
                .collect();
            let heap = &table.timers.heap;
            assert_eq!(heap.len(), held.len(), "round {round}: one timer each");
            assert_eq!(
                heap.iter().map(|t| (t.at, t.id)).collect::<BTreeSet<_>>(),
                held,
                "round {round}"
            );
            for (i, t) in heap.iter().enumerate() {
                assert!(
                    i == 0 || heap[(i - 1) / 2] <= *t,
                    "round {round}: heap order"
                );
                assert_eq!(
                    table.timers.places[t.slot as usize], i as u32,
                    "round {round}"
                );
                assert_eq!(table.map[&t.id].slot, t.slot, "round {round}: its own slot");
            }
            let placed = table
                .timers
                .places
                .iter()
                .filter(|&&p| p != NOWHERE)
                .count();
            assert_eq!(
                placed,
                heap.len(),
                "round {round}: no slot points at a lost timer"
            );
            for slot in &table.free_slots {
                assert!(
                    table.map.values().all(|e| e.slot != *slot),
                    "round {round}: a free slot in use"
                );
            }
        }
    }

    /// Due connections come in order of their timeouts, whatever the heap's shape, and the
    /// search stops at the first that `f` takes.
    #[test]
    fn due_connections_are_tried_longest_waiting_first() {
        let start = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut table = ClientTable::default();
        let mut now = start;
        let mut scratch = Vec::new();
        for id in 1..60 {
            table.insert(ClientId(id), client(now));
        }
        let mut busy_rounds = 0;
        for round in 0..300 {
            now += Duration::from_millis(rng.random_range(0..30));
            // Some connections get something to send, which moves their timeouts.
            for _ in 0..rng.random_range(0..8) {
                let id = ClientId(rng.random_range(1..60));
                if let Some(c) = table.get_mut(&id) {
                    let _ = c.conn.send_datagram(now, b"part", &mut scratch);
                }
            }
            table.reindex();
            let mut expected: Vec<(Instant, ClientId)> = table
                .map
                .iter()
                .filter_map(|(id, e)| Some((e.client.conn.poll_timeout()?, *id)))
                .filter(|(t, _)| *t <= now)
                .collect();
            expected.sort();
            busy_rounds += usize::from(expected.len() >= 3);
            let mut tried = Vec::new();
            let stop_after = rng.random_range(0..expected.len() + 2);
            let found = table.first_due(now, |id, _| {
                tried.push(id);
                (tried.len() == stop_after).then_some(id)
            });
            let expected: Vec<ClientId> = expected.into_iter().map(|(_, id)| id).collect();
            let want = expected.len().min(stop_after.max(1));
            let want = if stop_after == 0 {
                expected.len()
            } else {
                want
            };
            assert_eq!(tried, expected[..want], "round {round}");
            assert_eq!(
                found,
                (stop_after >= 1 && stop_after <= expected.len()).then(|| expected[stop_after - 1]),
                "round {round}"
            );
            let mut due = table.due(now);
            due.sort();
            let mut all = expected.clone();
            all.sort();
            // `due` also names the connections `first_due` marked dirty (all were due).
            assert_eq!(due, all, "round {round}");
            for id in due {
                if let Some(c) = table.get_mut(&id) {
                    c.conn.handle_timeout(now);
                }
            }
            table.reindex();
        }
        // Most rounds had several connections due, so their order was tested.
        assert!(
            busy_rounds > 100,
            "{busy_rounds} rounds with three or more due"
        );
    }
}
