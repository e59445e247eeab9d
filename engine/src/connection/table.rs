//! The server's connections, with each one's next timeout indexed.
//!
//! A server is asked for its next timeout after every datagram, and runs its timers each time
//! one is due. Scanning every connection for either costs O(clients) each time: with a
//! thousand clients sending a packet a tick, a thousand scans of a thousand per tick. The
//! table keeps every connection's next timeout in an ordered set instead. Whoever takes a
//! connection mutably marks it dirty; its entry is recomputed on the next [`reindex`]
//! (which the server runs at the end of every call that can change a connection), and
//! until then [`next_timeout`] also looks at the dirty ones, so it is never stale. Each
//! connection keeps beside it the timeout the set holds for it, so an entry whose timeout
//! did not change (a connection taken twice, or for something that moved no timer) costs
//! the set nothing: a server sending a packet to each of a thousand clients a tick reindexes
//! each of them several times.
//!
//! [`reindex`]: ClientTable::reindex
//! [`next_timeout`]: ClientTable::next_timeout

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeBounds;
use std::time::Instant;

use super::ClientId;
use super::established::Established;

#[derive(Debug)]
pub(super) struct Client {
    pub(super) nonce: u64,
    pub(super) conn: Established,
}

/// A connection and the timeout `timers` holds for it.
#[derive(Debug)]
struct Entry {
    client: Client,
    indexed: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct ClientTable {
    map: BTreeMap<ClientId, Entry>,
    timers: BTreeSet<(Instant, ClientId)>,
    /// Connections taken mutably since the last reindex (may repeat).
    dirty: Vec<ClientId>,
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
        let entry = Entry {
            client,
            indexed: None,
        };
        if let Some(Entry {
            indexed: Some(t), ..
        }) = self.map.insert(id, entry)
        {
            self.timers.remove(&(t, id));
        }
        self.dirty.push(id);
    }

    pub(super) fn remove(&mut self, id: &ClientId) -> Option<Client> {
        let e = self.map.remove(id)?;
        if let Some(t) = e.indexed {
            self.timers.remove(&(t, *id));
        }
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
            .filter_map(|id| self.map.get(id).and_then(|e| e.client.conn.poll_timeout()))
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
            let Some(e) = self.map.get_mut(&id) else {
                continue;
            };
            self.dirty.push(id);
            if let Some(r) = f(id, &mut e.client) {
                return Some(r);
            }
        }
        None
    }

    /// Recompute the timeouts of the connections taken mutably since the last call.
    pub(super) fn reindex(&mut self) {
        for id in self.dirty.drain(..) {
            // A connection removed since is no longer indexed.
            let Some(e) = self.map.get_mut(&id) else {
                continue;
            };
            let t = e.client.conn.refresh_timeout();
            if t == e.indexed {
                continue;
            }
            if let Some(old) = e.indexed {
                self.timers.remove(&(old, id));
            }
            if let Some(t) = t {
                self.timers.insert((t, id));
            }
            e.indexed = t;
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
            // The set holds exactly each connection's own timeout.
            let held: BTreeSet<(Instant, ClientId)> = table
                .map
                .iter()
                .filter_map(|(id, e)| Some((e.client.conn.poll_timeout()?, *id)))
                .collect();
            assert_eq!(table.timers, held, "round {round}");
        }
    }
}
