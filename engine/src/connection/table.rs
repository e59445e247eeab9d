//! The server's connections, with each one's next timeout indexed.
//!
//! A server is asked for its next timeout after every datagram, and runs its timers each time
//! one is due. Scanning every connection for either costs O(clients) each time: with a
//! thousand clients sending a packet a tick, a thousand scans of a thousand per tick. The
//! table keeps every connection's next timeout in a binary heap instead. Whoever takes a
//! connection mutably marks it dirty; its timeout is recomputed on the next [`reindex`]
//! (which the server runs at the end of every call that can change a connection), and
//! until then [`next_timeout`] also looks at the dirty ones, so it is never stale. Each
//! connection keeps beside it the timeout the heap holds for it, so an entry whose timeout
//! did not change (a connection taken twice, or for something that moved no timer) costs
//! the heap nothing: a server sending a packet to each of a thousand clients a tick reindexes
//! each of them several times.
//!
//! A heap in a `Vec` rather than an ordered set: nearly every packet moves its connection's
//! timeout, and a B-tree's nodes are allocated and freed as entries come and go, an
//! allocation every few packets; the heap's memory, once grown, is kept. A timeout that
//! moves is pushed anew and its old timer left in place, stale (each connection knows which
//! of its timers is live): stale timers are dropped when they come to the top, and all at
//! once when they outnumber the live ones.
//!
//! [`reindex`]: ClientTable::reindex
//! [`next_timeout`]: ClientTable::next_timeout

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::RangeBounds;
use std::time::Instant;

use super::ClientId;
use super::established::Established;

#[derive(Debug)]
pub(super) struct Client {
    pub(super) nonce: u64,
    pub(super) conn: Established,
}

/// A connection and the timeout the heap holds for it.
#[derive(Debug)]
struct Entry {
    client: Client,
    indexed: Option<Instant>,
    /// The number of its live timer (0: none).
    timer: u64,
}

/// One timeout in the heap: when, whose, and the number the table gave it when it was set,
/// unique for the table's life, so that a timer whose connection has been given another
/// since (or was removed, or replaced) is known to be stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    id: ClientId,
    set: u64,
}

/// Whether `t` is the timer its connection holds.
fn live(map: &BTreeMap<ClientId, Entry>, t: &Timer) -> bool {
    map.get(&t.id).is_some_and(|e| e.timer == t.set)
}

/// Children of heap node `i`.
fn children(i: usize) -> [usize; 2] {
    [2 * i + 1, 2 * i + 2]
}

/// Restore the heap order (each node no later than its children) above node `i`.
fn sift_up(heap: &mut [Timer], mut i: usize) {
    while i > 0 {
        let parent = (i - 1) / 2;
        if heap[i] >= heap[parent] {
            break;
        }
        heap.swap(i, parent);
        i = parent;
    }
}

/// Restore the heap order below node `i`.
fn sift_down(heap: &mut [Timer], mut i: usize) {
    loop {
        let [l, r] = children(i);
        if l >= heap.len() {
            return;
        }
        let c = if r < heap.len() && heap[r] < heap[l] {
            r
        } else {
            l
        };
        if heap[c] >= heap[i] {
            return;
        }
        heap.swap(c, i);
        i = c;
    }
}

#[derive(Debug, Default)]
pub(super) struct ClientTable {
    map: BTreeMap<ClientId, Entry>,
    /// A binary min-heap of timers (each node no later than its children), the live ones
    /// and at most as many stale ones again (plus a few).
    timers: Vec<Timer>,
    /// The number of the last timer set.
    last_timer: u64,
    /// Connections taken mutably since the last reindex (may repeat).
    dirty: Vec<ClientId>,
    /// The heap's nodes [`Self::first_due`] visits next, earliest first: kept, so that
    /// finding the due connections in order allocates nothing once grown.
    frontier: BinaryHeap<Reverse<(Timer, usize)>>,
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
            timer: 0,
        };
        // A connection it replaces leaves its timer stale.
        self.map.insert(id, entry);
        self.dirty.push(id);
        self.drop_stale();
    }

    pub(super) fn remove(&mut self, id: &ClientId) -> Option<Client> {
        let e = self.map.remove(id)?;
        self.drop_stale();
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

    /// Add the connections of the live timers at or before `now` under heap node `i`.
    fn due_below(&self, i: usize, now: Instant, ids: &mut Vec<ClientId>) {
        let Some(t) = self.timers.get(i) else {
            return;
        };
        // Nothing under a node is earlier than it.
        if t.at > now {
            return;
        }
        if live(&self.map, t) {
            ids.push(t.id);
        }
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

    /// The earliest live timer of a connection that is not dirty under heap node `i`.
    fn earliest_clean(&self, i: usize) -> Option<Instant> {
        let t = self.timers.get(i)?;
        if live(&self.map, t) && !self.dirty.contains(&t.id) {
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
        // The heap's nodes in order of time, each one's children added as it is taken: the
        // usual call stops at the first.
        let mut frontier = std::mem::take(&mut self.frontier);
        frontier.clear();
        if let Some(&t) = self.timers.first() {
            frontier.push(Reverse((t, 0)));
        }
        let mut found = None;
        while let Some(Reverse((t, i))) = frontier.pop() {
            if t.at > now {
                break;
            }
            for c in children(i) {
                if let Some(&child) = self.timers.get(c) {
                    frontier.push(Reverse((child, c)));
                }
            }
            if !live(&self.map, &t) {
                continue;
            }
            let Some(e) = self.map.get_mut(&t.id) else {
                continue;
            };
            self.dirty.push(t.id);
            if let Some(r) = f(t.id, &mut e.client) {
                found = Some(r);
                break;
            }
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
            if t == e.indexed {
                continue;
            }
            e.indexed = t;
            // Its timer until now, if any, is stale from here on.
            e.timer = 0;
            if let Some(at) = t {
                self.last_timer += 1;
                e.timer = self.last_timer;
                self.timers.push(Timer {
                    at,
                    id,
                    set: e.timer,
                });
                let last = self.timers.len() - 1;
                sift_up(&mut self.timers, last);
            }
        }
        self.drop_stale();
    }

    /// Drop the stale timers at the top, so that the top is live; and every stale timer
    /// once they outnumber the live ones (a few dozen aside), so the heap stays at most
    /// about twice the connections.
    fn drop_stale(&mut self) {
        let map = &self.map;
        if self.timers.len() > 2 * map.len() + 64 {
            self.timers.retain(|t| live(map, t));
            for i in (0..self.timers.len() / 2).rev() {
                sift_down(&mut self.timers, i);
            }
        }
        while self.timers.first().is_some_and(|t| !live(map, t)) {
            let last = self.timers.len() - 1;
            self.timers.swap(0, last);
            self.timers.pop();
            sift_down(&mut self.timers, 0);
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
    use std::collections::BTreeSet;

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
        let mut stale_seen = 0;
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
            // The live timers are exactly each connection's own timeout, one each.
            let held: BTreeSet<(Instant, ClientId)> = table
                .map
                .iter()
                .filter_map(|(id, e)| Some((e.client.conn.poll_timeout()?, *id)))
                .collect();
            let live: Vec<(Instant, ClientId)> = table
                .timers
                .iter()
                .filter(|t| super::live(&table.map, t))
                .map(|t| (t.at, t.id))
                .collect();
            assert_eq!(live.len(), held.len(), "round {round}: one live timer each");
            assert_eq!(
                live.into_iter().collect::<BTreeSet<_>>(),
                held,
                "round {round}"
            );
            // A heap whose top is live, and at most about twice the connections.
            for (i, t) in table.timers.iter().enumerate().skip(1) {
                assert!(table.timers[(i - 1) / 2] <= *t, "round {round}: heap order");
            }
            if let Some(top) = table.timers.first() {
                assert!(super::live(&table.map, top), "round {round}: stale top");
            }
            assert!(
                table.timers.len() <= 2 * table.map.len() + 65,
                "round {round}"
            );
            stale_seen = stale_seen.max(table.timers.len() - held.len());
        }
        // The stale timers were there to be dropped (or the checks above test little).
        assert!(
            stale_seen >= 10,
            "at most {stale_seen} stale timers at once"
        );
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
            table.insert(
                ClientId(id),
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
            );
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
