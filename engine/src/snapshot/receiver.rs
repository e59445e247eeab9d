//! Client side: decode parts against held baselines, complete composites, keep the live view.

use std::time::Instant;

use super::SnapshotError;
use super::bits::BitReader;
use super::part::{self, DecodeScratch, FieldBits};
use super::quantize::{Limits, QuantizeConfig};
use super::tick_map::TickMap;
use super::world::{
    Change, EntityId, QuantizedEntity, QuantizedWorld, Tick, Transform, merge_changes,
};

/// Receiver settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReceiverConfig {
    /// Must equal the sender's.
    pub quantize: QuantizeConfig,
    /// Ticks of completed snapshots kept as possible baselines (default 64, must be at least
    /// the sender's `ring_ticks`, or the server may pick a baseline this side has dropped).
    pub ring_ticks: u32,
    /// Most entities a snapshot or the live view may hold (default 65,536). A part that would
    /// complete a larger snapshot is refused ([`SnapshotError::TooManyEntities`]); one that
    /// would take the live view past it is not shown and waits for its tick
    /// ([`ReceiverStats::held_back`]). So what a server can make a client keep is bounded:
    /// at most `ring_ticks` snapshots of this many entities. Raise it for a world whose
    /// clients see more.
    pub max_entities: usize,
    /// Most entity states the held snapshots and the changes waiting for their ticks may
    /// take together (default 1,048,576, about 56 MB at 56 bytes a state, components aside;
    /// at least four times `max_entities`). Past it the oldest are forgotten first, never
    /// the newest complete snapshot nor what the part being read needs
    /// ([`ReceiverStats::evicted`]); a baseline forgotten that way is asked for again as a
    /// missing one. Without it a server could make a client hold `ring_ticks` snapshots of
    /// `max_entities` each: gigabytes. Raise it with `max_entities`.
    pub max_held_entities: usize,
}

/// The default [`ReceiverConfig::max_entities`].
pub const DEFAULT_MAX_ENTITIES: usize = 1 << 16;

/// The default [`ReceiverConfig::max_held_entities`]: sixteen snapshots of the default
/// [`DEFAULT_MAX_ENTITIES`].
pub const DEFAULT_MAX_HELD_ENTITIES: usize = 16 * DEFAULT_MAX_ENTITIES;

/// How many times [`ReceiverConfig::max_entities`] the held states must allow: the newest
/// snapshot, a part's baseline, and the changes its tick waits with (up to twice the limit)
/// always fit.
const HELD_PER_MAX_ENTITIES: usize = 4;

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            quantize: QuantizeConfig::default(),
            ring_ticks: 64,
            max_entities: DEFAULT_MAX_ENTITIES,
            max_held_entities: DEFAULT_MAX_HELD_ENTITIES,
        }
    }
}

impl ReceiverConfig {
    /// Whether the entity limits are usable (the quantization is checked on its own).
    pub(crate) fn validate_limits(&self) -> Result<(), SnapshotError> {
        if self.max_entities == 0 {
            return Err(SnapshotError::Config("max entities must be at least 1"));
        }
        if self.max_held_entities < self.max_entities.saturating_mul(HELD_PER_MAX_ENTITIES) {
            return Err(SnapshotError::Config(
                "max held entities must be at least four times max entities",
            ));
        }
        Ok(())
    }
}

/// Counters of what happened to received parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Every part handed to [`SnapshotReceiver::read_part`].
    pub parts_received: u64,
    /// Parts applied to the live view.
    pub parts_applied: u64,
    /// Valid parts older than the newest tick applied: kept for baselines, not applied.
    pub late_dropped: u64,
    /// Valid parts of the newest tick kept for their tick but not shown yet: on top of the
    /// live view they would have passed [`ReceiverConfig::max_entities`] (the tick shows
    /// once complete, if it is within the limit).
    pub held_back: u64,
    /// Parts whose baseline this receiver does not hold.
    pub missing_baseline_dropped: u64,
    /// Parts that failed to decode or contradicted earlier parts.
    pub invalid: u64,
    /// Parts received twice.
    pub duplicates: u64,
    /// Parts too old for the ring.
    pub too_old: u64,
    /// Ticks all of whose parts arrived (usable as baselines).
    pub ticks_completed: u64,
    /// Held snapshots and incomplete ticks forgotten, oldest first, to stay within
    /// [`ReceiverConfig::max_held_entities`].
    pub evicted: u64,
}

/// What one accepted part was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// The part's tick.
    pub tick: Tick,
    /// The tick it was encoded against (`None`: a full snapshot).
    pub baseline: Option<Tick>,
    /// Index of this part within its tick.
    pub part_index: u16,
    /// Number of parts of its tick.
    pub part_count: u16,
    /// Entities it set or removed.
    pub changes: usize,
    /// True when it was applied to the live view (false: late).
    pub applied: bool,
    /// True when it completed its tick.
    pub completed: bool,
}

#[derive(Debug, Clone, Default)]
struct PendingTick {
    baseline: Option<Tick>,
    received: Vec<bool>,
    received_count: usize,
    /// The changes of the parts received (a later part's change of an id replaces an
    /// earlier one's).
    changes: Runs,
}

/// Most runs a [`Runs`] holds: its runs at least halve in length from oldest to newest, so
/// a list of a million changes has about twenty.
const MAX_RUNS: usize = 40;

/// Changes kept as runs sorted by id, each id once in a run, oldest run first: a later
/// run's change of an id replaces an earlier one's. A new run is merged with the one before
/// while it is at least half as long (as a binary counter carries), so that the k parts of
/// a tick cost O(n log k) copies instead of the O(n k) of merging each part into one list,
/// and no memory beyond what the lists already hold.
#[derive(Debug, Clone, Default)]
struct Runs {
    list: Vec<Change>,
    /// Where each run ends in `list`.
    ends: Vec<usize>,
}

impl Runs {
    /// Changes held (an id changed by several runs counts once for each).
    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn clear(&mut self) {
        self.list.clear();
        self.ends.clear();
    }

    /// Add `run` (sorted by id, each id once) as the newest; `spare` is room to merge in.
    fn push(&mut self, run: &[Change], spare: &mut Vec<Change>) {
        if run.is_empty() {
            return;
        }
        self.list.extend_from_slice(run);
        self.ends.push(self.list.len());
        while let Some((a, b, c)) = self.last_two() {
            if (c - b) * 2 < b - a && self.ends.len() <= MAX_RUNS {
                break;
            }
            self.merge_last(a, b, c, spare);
        }
    }

    /// Where run `r` starts in `list`.
    fn start(&self, r: usize) -> usize {
        r.checked_sub(1).map_or(0, |p| self.ends[p])
    }

    /// Where the last two runs lie, `a..b` and `b..c`, if there are two.
    fn last_two(&self) -> Option<(usize, usize, usize)> {
        let n = self.ends.len();
        (n >= 2).then(|| (self.start(n - 2), self.ends[n - 2], self.ends[n - 1]))
    }

    /// Merge the last two runs, `a..b` and `b..c`, into one.
    fn merge_last(&mut self, a: usize, b: usize, c: usize, spare: &mut Vec<Change>) {
        merge_changes(&self.list[a..b], &self.list[b..c], spare, |_, _| {});
        self.list.truncate(a);
        self.list.extend_from_slice(spare);
        self.ends.pop();
        if let Some(end) = self.ends.last_mut() {
            *end = self.list.len();
        }
    }

    /// Into one run, sorted by id, each id once: what it holds.
    fn merged_in_place(&mut self, spare: &mut Vec<Change>) -> &[Change] {
        while let Some((a, b, c)) = self.last_two() {
            self.merge_last(a, b, c, spare);
        }
        &self.list
    }

    /// The change of `id`, if any run has one: the newest.
    fn get(&self, id: EntityId) -> Option<&Option<QuantizedEntity>> {
        (0..self.ends.len()).rev().find_map(|r| {
            let run = &self.list[self.start(r)..self.ends[r]];
            run.binary_search_by_key(&id, |(i, _)| *i)
                .ok()
                .map(|i| &run[i].1)
        })
    }

    /// The changes by id, each id once: the newest run's change of it.
    fn iter(&self) -> RunsIter<'_> {
        let mut at = [0; MAX_RUNS + 1];
        for (r, start) in at.iter_mut().enumerate().take(self.ends.len()) {
            *start = self.start(r);
        }
        RunsIter { runs: self, at }
    }
}

/// [`Runs::iter`]: one cursor a run, the least id next.
struct RunsIter<'a> {
    runs: &'a Runs,
    at: [usize; MAX_RUNS + 1],
}

impl<'a> Iterator for RunsIter<'a> {
    type Item = &'a Change;

    fn next(&mut self) -> Option<&'a Change> {
        let Runs { list, ends } = self.runs;
        let mut next: Option<(EntityId, usize)> = None;
        for (r, &end) in ends.iter().enumerate() {
            if self.at[r] < end {
                let id = list[self.at[r]].0;
                // A later run's change of the same id stands.
                if next.is_none_or(|(n, _)| id <= n) {
                    next = Some((id, r));
                }
            }
        }
        let (id, r) = next?;
        let item = &list[self.at[r]];
        for (r, &end) in ends.iter().enumerate() {
            if self.at[r] < end && list[self.at[r]].0 == id {
                self.at[r] += 1;
            }
        }
        Some(item)
    }
}

/// Spare worlds and incomplete ticks kept. A part takes one and the ring gives back the
/// one it lets go, but not in step: under loss the snapshots held swing by a few either
/// way (a lost part leaves its tick incomplete, a late one completes an older tick), and
/// a pool that ran dry at one end of the swing and was full at the other would allocate
/// at every swing.
const SPARES: usize = 16;

/// Memory a receiver keeps from part to part, so that once warm it allocates nothing to
/// take in a snapshot: a game's client takes in 30 to 60 a second for the whole session.
/// Nothing in it outlives a part but spare memory, so a clone of the receiver starts
/// without it.
#[derive(Debug, Default)]
struct Scratch {
    decode: DecodeScratch,
    /// The part being read's changes.
    changes: Vec<Change>,
    /// Where changes are merged.
    merged: Vec<Change>,
    /// Worlds no one else holds, to complete the next snapshots in.
    worlds: Vec<QuantizedWorld>,
    /// Incomplete ticks let go, to hold the next ones.
    ticks: Vec<PendingTick>,
}

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Scratch {
    fn keep_world(&mut self, mut world: QuantizedWorld) {
        if self.worlds.len() < SPARES && world.is_unique() {
            self.worlds.push(world);
        }
    }

    fn keep_tick(&mut self, tick: PendingTick) {
        if self.ticks.len() < SPARES {
            self.ticks.push(tick);
        }
    }

    fn tick(&mut self, baseline: Option<Tick>, parts: u16) -> PendingTick {
        let mut t = self.ticks.pop().unwrap_or_default();
        t.baseline = baseline;
        t.received.clear();
        t.received.resize(usize::from(parts), false);
        t.received_count = 0;
        t.changes.clear();
        t
    }
}

/// Decodes one server's snapshot parts; see the module docs of [`crate::snapshot`].
#[derive(Debug, Clone)]
pub struct SnapshotReceiver {
    config: ReceiverConfig,
    limits: Limits,
    composites: TickMap<QuantizedWorld>,
    pending: TickMap<PendingTick>,
    /// The live view is `live_base` with `live_overlay` on top: completing the newest tick
    /// swaps in its composite (one `Arc` clone) instead of copying every entity.
    live_base: QuantizedWorld,
    /// Changes from parts of ticks newer than `live_base`: `None` = despawned.
    live_overlay: Runs,
    /// Entities in the live view (`live_base` with `live_overlay` on top).
    live_len: usize,
    newest: Option<(Tick, Instant)>,
    stats: ReceiverStats,
    field_bits: FieldBits,
    scratch: Scratch,
}

impl SnapshotReceiver {
    /// A receiver; fails when the config is unusable.
    pub fn new(config: ReceiverConfig) -> Result<Self, SnapshotError> {
        config.quantize.validate()?;
        if !(1..=16_383).contains(&config.ring_ticks) {
            return Err(SnapshotError::Config("ring ticks must be 1..=16383"));
        }
        config.validate_limits()?;
        Ok(Self {
            limits: config.quantize.limits(),
            config,
            composites: TickMap::default(),
            pending: TickMap::default(),
            live_base: QuantizedWorld::default(),
            live_overlay: Runs::default(),
            live_len: 0,
            newest: None,
            stats: ReceiverStats::default(),
            field_bits: FieldBits::default(),
            scratch: Scratch::default(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Where the bits of every part decoded so far went, field by field.
    pub fn field_bits(&self) -> FieldBits {
        self.field_bits
    }

    /// The newest tick applied to the live view.
    pub fn newest_tick(&self) -> Option<Tick> {
        self.newest.map(|(t, _)| t)
    }

    /// The live view: the newest known state of every entity, by id.
    pub fn live(&self) -> impl Iterator<Item = (EntityId, &QuantizedEntity)> {
        LiveIter {
            base: self.live_base.entities().iter().peekable(),
            overlay: self.live_overlay.iter().peekable(),
        }
    }

    /// The live view as a quantized world.
    pub fn live_world(&self) -> QuantizedWorld {
        if self.live_overlay.is_empty() {
            return self.live_base.clone();
        }
        QuantizedWorld::from_entities(self.live().map(|(id, e)| (id, e.clone())))
    }

    /// How many entities the live view holds.
    pub fn live_count(&self) -> usize {
        self.live_len
    }

    /// Entity states held for baselines: every held snapshot's entities and every change a
    /// tick waits with (at most [`ReceiverConfig::max_held_entities`]).
    pub fn held_entities(&self) -> usize {
        self.composites
            .values()
            .map(QuantizedWorld::len)
            .sum::<usize>()
            + self
                .pending
                .values()
                .map(|p| p.changes.len())
                .sum::<usize>()
    }

    /// One entity of the live view.
    pub fn get(&self, id: EntityId) -> Option<&QuantizedEntity> {
        match self.live_overlay.get(id) {
            Some(change) => change.as_ref(),
            None => self.live_base.get(id),
        }
    }

    /// The live view dequantized, by id (what [`super::InterpolationBuffer::push`] takes).
    pub fn transforms(&self) -> impl Iterator<Item = (EntityId, Transform)> {
        self.live()
            .map(|(id, e)| (id, self.config.quantize.dequantize(&e.transform)))
    }

    /// The completed snapshot held for `tick`, if any (a possible baseline).
    pub fn composite(&self, tick: Tick) -> Option<&QuantizedWorld> {
        self.composites.get(tick)
    }

    /// Estimate of the server's current tick: the newest tick received plus the time since
    /// it arrived, in ticks. `None` before the first part.
    pub fn estimated_server_tick(&self, now: Instant) -> Option<f64> {
        self.newest.map(|(t, at)| {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            f64::from(t.0) + elapsed / self.config.quantize.tick_interval.as_secs_f64()
        })
    }

    /// Decode one received part (untrusted bytes).
    ///
    /// On error the part is counted and nothing else changes (but for a tick whose world
    /// would pass [`ReceiverConfig::max_entities`]: it is forgotten whole). A valid part
    /// older than the newest applied tick is not applied to the live view (`applied ==
    /// false`) but still completes its tick, because the server may choose that tick as a
    /// baseline; nor is a part that would take the live view past the limit (it waits for
    /// its tick, counted in `held_back`).
    pub fn read_part(&mut self, now: Instant, bytes: &[u8]) -> Result<PartInfo, SnapshotError> {
        self.stats.parts_received += 1;
        let result = self.read_part_inner(now, bytes);
        if let Err(e) = &result {
            match e {
                SnapshotError::MissingBaseline(_) => self.stats.missing_baseline_dropped += 1,
                SnapshotError::Duplicate => self.stats.duplicates += 1,
                SnapshotError::TooOld(_) => self.stats.too_old += 1,
                _ => self.stats.invalid += 1,
            }
        }
        result
    }

    fn read_part_inner(&mut self, now: Instant, bytes: &[u8]) -> Result<PartInfo, SnapshotError> {
        // Taken out for the part, so that the rest of the receiver can change beside it.
        let mut changes = std::mem::take(&mut self.scratch.changes);
        let result = self.read_part_into(now, bytes, &mut changes);
        self.scratch.changes = changes;
        result
    }

    fn read_part_into(
        &mut self,
        now: Instant,
        bytes: &[u8],
        changes: &mut Vec<Change>,
    ) -> Result<PartInfo, SnapshotError> {
        let mut r = BitReader::new(bytes);
        let h = part::read_header(&mut r)?;
        let ring = self.config.ring_ticks;
        if let Some((newest, _)) = self.newest
            && newest.0.saturating_sub(h.tick.0) >= ring
        {
            return Err(SnapshotError::TooOld(h.tick.0));
        }
        if self.composites.contains(h.tick) {
            return Err(SnapshotError::Duplicate);
        }
        if let Some(p) = self.pending.get(h.tick) {
            if p.baseline != h.baseline || p.received.len() != usize::from(h.count) {
                return Err(SnapshotError::Inconsistent);
            }
            // index < count == received.len(), checked by read_header and just above.
            if p.received[usize::from(h.index)] {
                return Err(SnapshotError::Duplicate);
            }
        }
        let base = match h.baseline {
            None => QuantizedWorld::default(),
            Some(b) => self
                .composites
                .get(b)
                .cloned()
                .ok_or(SnapshotError::MissingBaseline(b.0))?,
        };
        // Decoded into the part's own list: nothing else is touched until it succeeded.
        part::decode_body_into(
            &mut r,
            &h,
            &base,
            &self.limits,
            &mut self.field_bits,
            &mut self.scratch.decode,
            changes,
        )?;

        let completed = self
            .pending
            .get(h.tick)
            .map_or(h.count == 1, |p| p.received_count + 1 == p.received.len());
        let newest = self.newest.is_none_or(|(n, _)| h.tick >= n);
        let max = self.config.max_entities;
        let composite = if completed {
            // The tick's world may not pass the limit: a tick whose world would pass it is
            // forgotten whole (it can never complete within the limit).
            let spare = self.scratch.worlds.pop();
            let c = match self.pending.remove(h.tick) {
                Some(mut waiting) => {
                    let merged = &mut self.scratch.merged;
                    waiting.changes.push(changes, merged);
                    let c = base.apply_into(waiting.changes.merged_in_place(merged), spare);
                    self.scratch.keep_tick(waiting);
                    c
                }
                None => base.apply_into(changes, spare),
            };
            if c.len() > max || !self.make_room(c.len(), [h.tick, h.tick]) {
                self.scratch.keep_world(c);
                return Err(SnapshotError::TooManyEntities);
            }
            self.composites.insert(h.tick, c.clone());
            self.stats.ticks_completed += 1;
            Some(c)
        } else {
            // Nor may the changes a tick waits with: a tick between worlds within the
            // limit changes at most every entity of both.
            let waiting = self.pending.get(h.tick).map_or(0, |p| p.changes.len());
            let baseline = h.baseline.unwrap_or(h.tick);
            if waiting + changes.len() > 2 * max
                || !self.make_room(changes.len(), [h.tick, baseline])
            {
                return Err(SnapshotError::TooManyEntities);
            }
            if !self.pending.contains(h.tick) {
                let fresh = self.scratch.tick(h.baseline, h.count);
                self.pending.insert(h.tick, fresh);
            }
            if let Some(pending) = self.pending.get_mut(h.tick) {
                // Same bounds as the check above (the entry has h.count slots).
                pending.received[usize::from(h.index)] = true;
                pending.received_count += 1;
                pending.changes.push(changes, &mut self.scratch.merged);
            }
            None
        };

        // Shown unless late, or unless the part of an incomplete tick would take the live
        // view past the limit: then it waits for its tick (refused, it would keep the tick
        // from ever completing).
        let shown = newest
            && match &composite {
                // The newest tick is complete: it is the whole world at that tick.
                Some(c) => {
                    self.live_base = c.clone();
                    self.live_overlay.clear();
                    self.live_len = c.len();
                    true
                }
                None => self.show(changes),
            };
        if shown {
            if self.newest.is_none_or(|(n, _)| h.tick > n) {
                self.newest = Some((h.tick, now));
            }
            self.stats.parts_applied += 1;
        } else if newest {
            self.stats.held_back += 1;
        } else {
            self.stats.late_dropped += 1;
        }
        self.prune();
        Ok(PartInfo {
            tick: h.tick,
            baseline: h.baseline,
            part_index: h.index,
            part_count: h.count,
            changes: changes.len(),
            applied: shown,
            completed,
        })
    }

    /// Put one part's `changes` (sorted by id, each id once) on the live view, unless that
    /// would take it past the limit: whether it did.
    fn show(&mut self, changes: &[Change]) -> bool {
        let held = |replaced: Option<&Option<QuantizedEntity>>, base: &QuantizedWorld, id| {
            match replaced {
                Some(c) => c.is_some(),
                None => base.get(id).is_some(),
            }
        };
        // Each change moves the count by one at most: far enough from the limit, the
        // count is kept as the changes go on, else it is checked first.
        if changes.len() > self.config.max_entities.saturating_sub(self.live_len) {
            let after = changes.iter().fold(self.live_len, |n, (id, change)| {
                let was = held(self.live_overlay.get(*id), &self.live_base, *id);
                (n + usize::from(change.is_some())).saturating_sub(usize::from(was))
            });
            if after > self.config.max_entities {
                return false;
            }
        }
        for (id, change) in changes {
            let was = held(self.live_overlay.get(*id), &self.live_base, *id);
            self.live_len =
                (self.live_len + usize::from(change.is_some())).saturating_sub(usize::from(was));
        }
        self.live_overlay.push(changes, &mut self.scratch.merged);
        true
    }

    /// Forget the oldest held snapshots and incomplete ticks until `more` states fit within
    /// [`ReceiverConfig::max_held_entities`]: whether they do. Never forgets the newest
    /// snapshot nor the ticks in `keep` (the part's own and its baseline), and forgets
    /// nothing when even that would not make room.
    fn make_room(&mut self, more: usize, keep: [Tick; 2]) -> bool {
        let max = self.config.max_held_entities;
        let mut held = self.held_entities();
        if held + more <= max {
            return true;
        }
        let newest = self.composites.last_tick();
        let spare = |t: Tick| Some(t) != newest && !keep.contains(&t);
        let kept = self
            .composites
            .iter()
            .filter(|(t, _)| !spare(*t))
            .map(|(_, w)| w.len())
            .sum::<usize>()
            + self
                .pending
                .iter()
                .filter(|(t, _)| !spare(*t))
                .map(|(_, p)| p.changes.len())
                .sum::<usize>();
        if kept + more > max {
            return false;
        }
        while held + more > max {
            // Oldest first, snapshots and incomplete ticks alike (a tick is never both).
            let snapshot = self.composites.iter().map(|(t, _)| t).find(|t| spare(*t));
            let waiting = self.pending.iter().map(|(t, _)| t).find(|t| spare(*t));
            let freed = match (snapshot, waiting) {
                (Some(s), Some(w)) if w < s => self.pending.remove(w).map(|p| p.changes.len()),
                (Some(s), _) => self.composites.remove(s).map(|w| w.len()),
                (None, Some(w)) => self.pending.remove(w).map(|p| p.changes.len()),
                // Not reached: what is kept fits, so something spare is left while over.
                (None, None) => None,
            };
            let Some(freed) = freed else {
                return false;
            };
            held -= freed;
            self.stats.evicted += 1;
        }
        true
    }

    fn prune(&mut self) {
        let Some((newest, _)) = self.newest else {
            return;
        };
        let ring = self.config.ring_ticks;
        let keep = |t: Tick| newest.0.saturating_sub(t.0) < ring;
        let scratch = &mut self.scratch;
        self.composites.retain(keep, |w| scratch.keep_world(w));
        self.pending.retain(keep, |p| scratch.keep_tick(p));
    }
}

/// Merges the live base world with the overlay, both sorted by id.
struct LiveIter<'a, B, O>
where
    B: Iterator<Item = &'a (EntityId, QuantizedEntity)>,
    O: Iterator<Item = &'a Change>,
{
    base: std::iter::Peekable<B>,
    overlay: std::iter::Peekable<O>,
}

impl<'a, B, O> Iterator for LiveIter<'a, B, O>
where
    B: Iterator<Item = &'a (EntityId, QuantizedEntity)>,
    O: Iterator<Item = &'a Change>,
{
    type Item = (EntityId, &'a QuantizedEntity);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let next_base = self.base.peek().map(|(id, _)| *id);
            let next_over = self.overlay.peek().map(|(id, _)| *id);
            match (next_base, next_over) {
                (None, None) => return None,
                (Some(b), o) if o.is_none_or(|o| b < o) => {
                    return self.base.next().map(|(id, e)| (*id, e));
                }
                (b, Some(o)) => {
                    // The overlay entry replaces a base entry with the same id.
                    if b == Some(o) {
                        self.base.next();
                    }
                    if let Some((id, Some(e))) = self.overlay.next() {
                        return Some((*id, e));
                    }
                }
                // (Some, None) is covered by the first arm.
                (Some(_), None) => return self.base.next().map(|(id, e)| (*id, e)),
            }
        }
    }
}

#[cfg(test)]
mod runs_tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn state(x: u32) -> QuantizedEntity {
        let mut e = QuantizedEntity::default();
        e.transform.position = [x, 0, 0];
        e
    }

    proptest! {
        /// Runs pushed one after another read as a map into which each run's changes were
        /// inserted in turn, whatever the runs' lengths; merged into one, the same.
        #[test]
        fn runs_read_as_the_changes_inserted_in_turn(
            runs in proptest::collection::vec(
                proptest::collection::btree_map(0u32..300, proptest::option::of(0u32..9), 0..80),
                0..60,
            ),
        ) {
            let mut held = Runs::default();
            let mut spare = Vec::new();
            let mut model: BTreeMap<EntityId, Option<QuantizedEntity>> = BTreeMap::new();
            for run in &runs {
                let run: Vec<Change> = run
                    .iter()
                    .map(|(&id, x)| (EntityId(id), x.map(state)))
                    .collect();
                held.push(&run, &mut spare);
                model.extend(run.iter().cloned());
                prop_assert!(held.ends.len() <= MAX_RUNS);
                let listed: Vec<Change> = held.iter().cloned().collect();
                let expected: Vec<Change> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
                prop_assert_eq!(&listed, &expected);
                for id in (0..300).step_by(7) {
                    prop_assert_eq!(held.get(EntityId(id)), model.get(&EntityId(id)));
                }
            }
            let expected: Vec<Change> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
            prop_assert_eq!(held.merged_in_place(&mut spare), &expected[..]);
        }
    }
}
