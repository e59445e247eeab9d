//! Per-entity staleness, measured from outside the protocol: how long a client has held an
//! entity's state after the server's state of that entity moved on.
//!
//! A client's newest tick says how old the newest news is; it does not say whether every
//! entity in it is current. Under a tight budget an entity that changed can wait several
//! ticks for its turn while the tick around it arrives on time, and with an area of interest
//! each client holds a different set. The harness sees both sides, so it keeps each entity's
//! recent quantized states on the server and, at every client frame, finds when the state the
//! client holds stopped being the server's: zero while it still is.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use snapsync::snapshot::{
    EntityId, QuantizeCache, QuantizeConfig, QuantizedEntity, QuantizedWorld, World,
};

/// States kept per entity. A moving entity changes every tick, so this is the longest
/// staleness measured exactly (at 30 Hz about a second); older is counted as this old.
const HISTORY_STATES: usize = 32;

/// Each entity's recent states on the server, by the tick each began.
///
/// Asked once per client frame for every entity the client holds (at 1,000 clients, tens of
/// millions of times per simulated minute), and most answers are "its newest state": so an
/// entity is found by a binary search of a list of ids, and its newest state sits in one
/// dense list beside that, rather than behind a hash map and a queue of its own.
#[derive(Debug)]
pub(crate) struct EntityHistory {
    config: QuantizeConfig,
    cache: QuantizeCache,
    /// Every entity recorded, by increasing id: `newest[i]` and `older[i]` are `ids[i]`'s.
    ids: Vec<EntityId>,
    /// Each entity's current state, with the tick it began.
    newest: Vec<(u32, QuantizedEntity)>,
    /// Each entity's states before that, oldest first (at most `HISTORY_STATES - 1`).
    older: Vec<VecDeque<(u32, QuantizedEntity)>>,
    /// Samples whose state was older than the whole history.
    beyond_history: u64,
}

impl EntityHistory {
    pub(crate) fn new(config: QuantizeConfig) -> Self {
        Self {
            config,
            cache: QuantizeCache::default(),
            ids: Vec::new(),
            newest: Vec::new(),
            older: Vec::new(),
            beyond_history: 0,
        }
    }

    /// Record the world the server replicated at `tick`, quantized as the server does.
    pub(crate) fn record(&mut self, tick: u32, world: &World) {
        let q = QuantizedWorld::from_world_cached(world, &self.config, &mut self.cache);
        // Both lists are by increasing id: one walk. Entities seen for the first time are
        // merged in after it (players joining: rare).
        let mut first_seen = Vec::new();
        let mut i = 0;
        for (id, e) in q.entities() {
            while self.ids.get(i).is_some_and(|known| known < id) {
                i += 1;
            }
            if self.ids.get(i) != Some(id) {
                first_seen.push((*id, (tick, e.clone()), VecDeque::new()));
                continue;
            }
            let (since, newest) = &mut self.newest[i];
            if newest != e {
                let older = &mut self.older[i];
                if older.len() == HISTORY_STATES - 1 {
                    older.pop_front();
                }
                older.push_back((*since, std::mem::replace(newest, e.clone())));
                *since = tick;
            }
        }
        if !first_seen.is_empty() {
            let known = std::mem::take(&mut self.ids)
                .into_iter()
                .zip(std::mem::take(&mut self.newest))
                .zip(std::mem::take(&mut self.older))
                .map(|((id, newest), older)| (id, newest, older));
            let mut all: Vec<_> = known.chain(first_seen).collect();
            // Ids are unique: one entry each.
            all.sort_unstable_by_key(|(id, _, _)| *id);
            for (id, newest, older) in all {
                self.ids.push(id);
                self.newest.push(newest);
                self.older.push(older);
            }
        }
    }

    /// How long the state `held` of entity `id` has been out of date as of `now`, when tick
    /// `t` ran at `tick_time(t)`: zero while it is the server's newest, `None` for an
    /// entity the server never had.
    pub(crate) fn staleness(
        &mut self,
        id: EntityId,
        held: &QuantizedEntity,
        now: Instant,
        tick_time: impl Fn(u32) -> Instant,
    ) -> Option<Duration> {
        let i = self.ids.binary_search(&id).ok()?;
        let (since, newest) = &self.newest[i];
        if newest == held {
            return Some(Duration::ZERO);
        }
        let older = &self.older[i];
        // The tick at which the held state was replaced: the start of the state after it.
        let superseded = match older.iter().rposition(|(_, s)| s == held) {
            Some(j) => older.get(j + 1).map_or(*since, |(t, _)| *t),
            None => {
                self.beyond_history += 1;
                older.front().map_or(*since, |(t, _)| *t)
            }
        };
        Some(now.saturating_duration_since(tick_time(superseded)))
    }

    /// Samples whose state was older than the history kept (counted at its length).
    pub(crate) fn beyond_history(&self) -> u64 {
        self.beyond_history
    }

    /// Start counting those afresh (a new measurement).
    pub(crate) fn reset_beyond_history(&mut self) {
        self.beyond_history = 0;
    }
}

#[cfg(test)]
mod tests {
    use snapsync::glam::Vec3;
    use snapsync::snapshot::{EntityState, Transform};

    use super::*;

    /// A world of entities `(id, x)`.
    fn world_of(entities: &[(u32, f32)]) -> World {
        let mut w = World::new();
        for &(id, x) in entities {
            w.insert(
                EntityId(id),
                EntityState {
                    transform: Transform {
                        position: Vec3::new(x, 0.0, 0.0),
                        ..Transform::default()
                    },
                    ..EntityState::default()
                },
            );
        }
        w
    }

    /// A world of entity 1 at `x`.
    fn world_at(x: f32) -> World {
        world_of(&[(1, x)])
    }

    #[test]
    fn a_held_state_is_stale_from_the_tick_that_replaced_it() {
        let config = QuantizeConfig::default();
        let mut h = EntityHistory::new(config);
        let t0 = Instant::now();
        let tick_time = |t: u32| t0 + Duration::from_millis(u64::from(t) * 10);
        // Ticks 1..=3 at x = 1, then ticks 4.. at x = 2.
        for t in 1..=3 {
            h.record(t, &world_at(1.0));
        }
        let old = QuantizedWorld::from_world(&world_at(1.0), &config);
        let old = old.get(EntityId(1)).unwrap().clone();
        let now = tick_time(3) + Duration::from_millis(5);
        assert_eq!(
            h.staleness(EntityId(1), &old, now, tick_time),
            Some(Duration::ZERO)
        );
        h.record(4, &world_at(2.0));
        h.record(5, &world_at(2.0));
        let now = tick_time(5) + Duration::from_millis(5);
        // Replaced at tick 4: stale for 10 ms + 5 ms.
        assert_eq!(
            h.staleness(EntityId(1), &old, now, tick_time),
            Some(Duration::from_millis(15))
        );
        let new = QuantizedWorld::from_world(&world_at(2.0), &config);
        let new = new.get(EntityId(1)).unwrap().clone();
        assert_eq!(
            h.staleness(EntityId(1), &new, now, tick_time),
            Some(Duration::ZERO)
        );
        assert_eq!(h.staleness(EntityId(9), &new, now, tick_time), None);
        assert_eq!(h.beyond_history(), 0);
    }

    #[test]
    fn entities_that_join_later_keep_every_entity_s_history_apart() {
        let config = QuantizeConfig::default();
        let mut h = EntityHistory::new(config);
        let t0 = Instant::now();
        let tick_time = |t: u32| t0 + Duration::from_millis(u64::from(t) * 10);
        let state = |w: &World, id: u32| {
            let q = QuantizedWorld::from_world(w, &config);
            q.get(EntityId(id)).unwrap().clone()
        };
        // Ticks 1–2: entities 10 and 30. Tick 3: 20 joins between them, 5 before and 40
        // after, and 30 moves. Tick 4: 10 moves.
        let w1 = world_of(&[(10, 1.0), (30, 3.0)]);
        let w3 = world_of(&[(5, 0.5), (10, 1.0), (20, 2.0), (30, 3.5), (40, 4.0)]);
        let w4 = world_of(&[(5, 0.5), (10, 1.5), (20, 2.0), (30, 3.5), (40, 4.0)]);
        h.record(1, &w1);
        h.record(2, &w1);
        h.record(3, &w3);
        h.record(4, &w4);
        let now = tick_time(4) + Duration::from_millis(5);
        let ms = |n: u64| Some(Duration::from_millis(n));
        // Current states: zero, whether the entity joined late or not.
        for id in [5, 10, 20, 30, 40] {
            assert_eq!(
                h.staleness(EntityId(id), &state(&w4, id), now, tick_time),
                ms(0)
            );
        }
        // 30's first state was replaced at tick 3, 10's at tick 4.
        assert_eq!(
            h.staleness(EntityId(30), &state(&w1, 30), now, tick_time),
            ms(15)
        );
        assert_eq!(
            h.staleness(EntityId(10), &state(&w1, 10), now, tick_time),
            ms(5)
        );
        // 20 never held 30's state: older than its whole history, which began at tick 3.
        assert_eq!(
            h.staleness(EntityId(20), &state(&w1, 30), now, tick_time),
            ms(15)
        );
        assert_eq!(h.beyond_history(), 1);
        assert_eq!(
            h.staleness(EntityId(15), &state(&w1, 10), now, tick_time),
            None
        );
    }

    #[test]
    fn a_state_older_than_the_history_counts_at_its_length() {
        let config = QuantizeConfig::default();
        let mut h = EntityHistory::new(config);
        let t0 = Instant::now();
        let tick_time = |t: u32| t0 + Duration::from_millis(u64::from(t));
        for t in 0..(HISTORY_STATES as u32 + 10) {
            h.record(t, &world_at(t as f32 * 0.1));
        }
        let first = QuantizedWorld::from_world(&world_at(0.0), &config);
        let first = first.get(EntityId(1)).unwrap().clone();
        let now = tick_time(100);
        // The oldest state kept began at tick 10.
        assert_eq!(
            h.staleness(EntityId(1), &first, now, tick_time),
            Some(Duration::from_millis(90))
        );
        assert_eq!(h.beyond_history(), 1);
    }
}
