//! Per-entity staleness, measured from outside the protocol: how long a client has held an
//! entity's state after the server's state of that entity moved on.
//!
//! A client's newest tick says how old the newest news is; it does not say whether every
//! entity in it is current. Under a tight budget an entity that changed can wait several
//! ticks for its turn while the tick around it arrives on time, and with an area of interest
//! each client holds a different set. The harness sees both sides, so it keeps each entity's
//! recent quantized states on the server and, at every client frame, finds when the state the
//! client holds stopped being the server's: zero while it still is.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use snapsync::snapshot::{
    EntityId, QuantizeCache, QuantizeConfig, QuantizedEntity, QuantizedWorld, World,
};

/// States kept per entity. A moving entity changes every tick, so this is the longest
/// staleness measured exactly (at 30 Hz about a second); older is counted as this old.
const HISTORY_STATES: usize = 32;

/// Each entity's recent states on the server, by the tick each began.
#[derive(Debug)]
pub(crate) struct EntityHistory {
    config: QuantizeConfig,
    cache: QuantizeCache,
    /// Per entity, oldest first: (first tick of the state, the state).
    states: HashMap<EntityId, VecDeque<(u32, QuantizedEntity)>>,
    /// The newest tick recorded.
    tick: u32,
    /// Samples whose state was older than the whole history.
    beyond_history: u64,
}

impl EntityHistory {
    pub(crate) fn new(config: QuantizeConfig) -> Self {
        Self {
            config,
            cache: QuantizeCache::default(),
            states: HashMap::new(),
            tick: 0,
            beyond_history: 0,
        }
    }

    /// Record the world the server replicated at `tick`, quantized as the server does.
    pub(crate) fn record(&mut self, tick: u32, world: &World) {
        self.tick = tick;
        let q = QuantizedWorld::from_world_cached(world, &self.config, &mut self.cache);
        for (id, e) in q.entities() {
            let states = self.states.entry(*id).or_default();
            if states.back().is_none_or(|(_, s)| s != e) {
                if states.len() == HISTORY_STATES {
                    states.pop_front();
                }
                states.push_back((tick, e.clone()));
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
        let states = self.states.get(&id)?;
        // The tick at which the held state was replaced: the start of the state after it.
        let superseded = match states.iter().rposition(|(_, s)| s == held) {
            Some(i) if i + 1 == states.len() => return Some(Duration::ZERO),
            Some(i) => states[i + 1].0,
            None => {
                self.beyond_history += 1;
                states.front()?.0
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

    fn world_at(x: f32) -> World {
        let mut w = World::new();
        w.insert(
            EntityId(1),
            EntityState {
                transform: Transform {
                    position: Vec3::new(x, 0.0, 0.0),
                    ..Transform::default()
                },
                ..EntityState::default()
            },
        );
        w
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
