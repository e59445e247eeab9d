//! The server's connections, with each one's next timeout indexed.
//!
//! A server is asked for its next timeout after every datagram, and runs its timers each time
//! one is due. Scanning every connection for either costs O(clients) each time: with a
//! thousand clients sending a packet a tick, a thousand scans of a thousand per tick. The
//! table keeps every connection's next timeout in an ordered set instead. Whoever takes a
//! connection mutably marks it dirty; its entry is recomputed on the next [`reindex`]
//! (which the server runs at the end of every call that can change a connection), and
//! until then [`next_timeout`] also looks at the dirty ones, so it is never stale.
//!
//! [`reindex`]: ClientTable::reindex
//! [`next_timeout`]: ClientTable::next_timeout

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeBounds;
use std::time::Instant;

use super::ClientId;
use super::established::Established;

#[derive(Debug)]
pub(super) struct Client {
    pub(super) nonce: u64,
    pub(super) conn: Established,
}

#[derive(Debug, Default)]
pub(super) struct ClientTable {
    map: BTreeMap<ClientId, Client>,
    timers: BTreeSet<(Instant, ClientId)>,
    timer_of: HashMap<ClientId, Instant>,
    /// Connections taken mutably since the last reindex (may repeat).
    dirty: Vec<ClientId>,
}

impl ClientTable {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, id: &ClientId) -> Option<&Client> {
        self.map.get(id)
    }

    pub(super) fn get_mut(&mut self, id: &ClientId) -> Option<&mut Client> {
        let c = self.map.get_mut(id)?;
        self.dirty.push(*id);
        Some(c)
    }

    pub(super) fn insert(&mut self, id: ClientId, client: Client) {
        self.unindex(id);
        self.map.insert(id, client);
        self.dirty.push(id);
    }

    pub(super) fn remove(&mut self, id: &ClientId) -> Option<Client> {
        self.unindex(*id);
        self.map.remove(id)
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
        self.map.range_mut(range).map(move |(id, c)| {
            dirty.push(*id);
            (id, c)
        })
    }

    /// Every connection, each marked dirty.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Client> {
        self.range_mut(..).map(|(_, c)| c)
    }

    /// Connections whose timeout is at or before `now` (as of the last reindex), plus the
    /// dirty ones.
    pub(super) fn due(&self, now: Instant) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = self
            .timers
            .range(..=(now, ClientId(u32::MAX)))
            .map(|(_, id)| *id)
            .chain(self.dirty.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The earliest timeout of any connection.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        // A dirty connection's indexed entry may be out of date: its live value counts.
        let indexed = self
            .timers
            .iter()
            .find(|(_, id)| !self.dirty.contains(id))
            .map(|(t, _)| *t);
        self.dirty
            .iter()
            .filter_map(|id| self.map.get(id).and_then(|c| c.conn.poll_timeout()))
            .chain(indexed)
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
        for &(_, id) in self.timers.range(..=(now, ClientId(u32::MAX))) {
            let Some(c) = self.map.get_mut(&id) else {
                continue;
            };
            self.dirty.push(id);
            if let Some(r) = f(id, c) {
                return Some(r);
            }
        }
        None
    }

    /// Recompute the timeouts of the connections taken mutably since the last call.
    pub(super) fn reindex(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            self.unindex(id);
            if let Some(t) = self.map.get(&id).and_then(|c| c.conn.poll_timeout()) {
                self.timers.insert((t, id));
                self.timer_of.insert(id, t);
            }
        }
        // Keep the allocation for the next round.
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn unindex(&mut self, id: ClientId) {
        if let Some(t) = self.timer_of.remove(&id) {
            self.timers.remove(&(t, id));
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

    fn scan(t: &ClientTable) -> Option<Instant> {
        t.map.values().filter_map(|c| c.conn.poll_timeout()).min()
    }

    #[test]
    fn the_indexed_timeout_is_always_the_earliest_of_all_connections() {
        let start = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut table = ClientTable::default();
        let mut now = start;
        let mut buf = vec![0u8; MAX_PACKET_BYTES];
        for round in 0..2000 {
            now += Duration::from_millis(rng.random_range(0..40));
            let id = ClientId(rng.random_range(1..40));
            match rng.random_range(0..6) {
                0 => table.insert(
                    id,
                    Client {
                        nonce: 0,
                        conn: Established::new(
                            "127.0.0.1:9".parse().unwrap(),
                            0,
                            ConnectionConfig::default(),
                            now,
                            MAX_PACKET_BYTES,
                        ),
                    },
                ),
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
                        if c.conn.poll_transmit(now, &mut buf).is_some() {
                            break;
                        }
                    }
                }
                _ => {
                    if let Some(c) = table.get_mut(&id) {
                        let _ = c.conn.send_datagram(now, b"part");
                    }
                }
            }
            // Right before and after a reindex: never stale.
            assert_eq!(table.next_timeout(), scan(&table), "round {round}, before");
            table.reindex();
            assert_eq!(table.next_timeout(), scan(&table), "round {round}, after");
            assert!(table.dirty.is_empty());
            assert_eq!(table.timers.len(), table.timer_of.len());
        }
    }
}
