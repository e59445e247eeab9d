//! The priority accumulator (Fiedler, "State Synchronization"): entities that need sending
//! gain priority every tick they wait; sending one resets it.

use std::collections::HashMap;

use super::world::EntityId;

/// Per-client priorities of the entities that differ from the client's baseline.
#[derive(Debug, Default, Clone)]
pub(crate) struct PriorityAccumulator {
    priority: HashMap<EntityId, f32>,
    /// The map the next tick's priorities are written into, then swapped with `priority`:
    /// a sender whose budget binds accumulates every tick, and a new map each time would
    /// be an allocation per client and tick.
    next: HashMap<EntityId, f32>,
    weights: HashMap<EntityId, f32>,
}

impl PriorityAccumulator {
    /// Scale how fast `id` gains priority (default 1). Non-positive or non-finite weights
    /// are raised to a tiny positive value so nothing can wait forever.
    pub(crate) fn set_weight(&mut self, id: EntityId, weight: f32) {
        let w = if weight.is_finite() && weight > f32::EPSILON {
            weight
        } else {
            f32::EPSILON
        };
        self.weights.insert(id, w);
    }

    /// Forget the weight of `id` (back to 1).
    pub(crate) fn clear_weight(&mut self, id: EntityId) {
        self.weights.remove(&id);
    }

    /// Add one tick of priority to every candidate (times `boost`) and write the new
    /// priorities into `out` (cleared first), in the same order. Entities that are no
    /// longer candidates are forgotten, so memory follows the number of pending entities.
    pub(crate) fn accumulate_into(&mut self, candidates: &[(EntityId, f32)], out: &mut Vec<f32>) {
        self.next.clear();
        out.clear();
        for (id, boost) in candidates {
            let w = self.weights.get(id).copied().unwrap_or(1.0);
            let p = self.priority.get(id).copied().unwrap_or(0.0) + w * boost;
            self.next.insert(*id, p);
            out.push(p);
        }
        std::mem::swap(&mut self.priority, &mut self.next);
    }

    /// [`Self::accumulate_into`] a new list (tests).
    #[cfg(test)]
    fn accumulate(&mut self, candidates: &[(EntityId, f32)]) -> Vec<f32> {
        let mut out = Vec::new();
        self.accumulate_into(candidates, &mut out);
        out
    }

    /// Everything was sent: no entity is waiting (the weights stay).
    pub(crate) fn clear_priorities(&mut self) {
        self.priority.clear();
    }

    /// `id` was sent: start accumulating from zero again.
    pub(crate) fn reset(&mut self, id: EntityId) {
        // When every difference fits, nothing waits and the map is empty: a removal would
        // still hash the id, once for every entity sent.
        if !self.priority.is_empty() {
            self.priority.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_entities_gain_and_sent_ones_reset() {
        let mut acc = PriorityAccumulator::default();
        acc.set_weight(EntityId(2), 3.0);
        let c = [(EntityId(1), 1.0), (EntityId(2), 1.0)];
        assert_eq!(acc.accumulate(&c), vec![1.0, 3.0]);
        acc.reset(EntityId(2));
        assert_eq!(acc.accumulate(&c), vec![2.0, 3.0]);
        // No longer a candidate: forgotten.
        assert_eq!(acc.accumulate(&c[1..]), vec![6.0]);
        assert_eq!(acc.accumulate(&c[..1]), vec![1.0]);
        acc.clear_weight(EntityId(2));
        acc.set_weight(EntityId(1), -5.0);
        assert!(acc.accumulate(&c)[0] > 1.0);
    }
}
