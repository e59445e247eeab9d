//! Entity deltas encoded once per tick for every scoped client that needs them.
//!
//! Clients with their own scope each get their own snapshot, but at low loss most of them
//! hold a baseline of the same age, and an entity's encoded delta depends only on its
//! baseline state, its new state, the baseline's age in ticks and the section's code. A
//! client whose baseline is a view of the server's world of a tick holds that world's state
//! of every entity it holds, the same as every other such client. So per tick and per
//! baseline age one code is fixed from the whole world (a sample of its changes), and each
//! entity's delta under that code is encoded by the first such client that needs it and
//! appended as bits by the rest, which never read the entity's states. For an age whose
//! clients will read nearly every changed entity, the server may instead encode them all
//! before the clients, in world order (`SharedDeltas::fill`), which reads the two worlds as
//! runs of memory instead of in the scattered order of each client's scope.
//!
//! The code depends on the world alone and the bits are a function of their inputs, so who
//! fills the cache first changes nothing in the output: one thread or several, the same
//! bytes go out.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::bits::BitString;
use super::part::{self, EncodeScratch, EntityCode, EntityDelta};
use super::quantize::Limits;
use super::world::{QuantizedEntity, Tick, TickWorld, changed_within, next_with_id};

/// Every this many entities of the world, one measures the changes a shared code is chosen
/// from: a few hundred changes of the massive scene describe it as well as all of them.
const CODE_SAMPLE_STRIDE: usize = 8;

/// One entity's delta under its section's shared code, as its slot keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SharedDelta {
    /// The entity holds the same state as in the baseline.
    Unchanged,
    /// The code cannot write this change, or it is longer than a slot keeps: each client
    /// measures and writes it with a code of its own.
    Own,
    /// The delta written with the code.
    Bits {
        bits: BitString,
        /// What the packer must charge: never below what either code spends (the sender's
        /// estimate, [`part::delta_bits`], or the shared code).
        payload_bits: usize,
    },
}

/// A slot's first word: filled, which [`SharedDelta`] (bits 32–33), the payload bits (bits
/// 16–31) and the length (bits 0–15); the string's first word follows it ([`Slot`]).
const FILLED: u64 = 1 << 63;
const KIND_SHIFT: u32 = 32;
const UNCHANGED: u64 = 0;
const OWN: u64 = 1;
const BITS: u64 = 2;

/// One entity's slot: [`FILLED`] and the rest of the first word, then the string's first
/// word. Slots are read by every client that holds the entity, so they are small (four in
/// a cache line of 64 bytes: 160 KB for 10,000 entities, where the slots of a tick's
/// changes compete for the core's caches with every client's own state) and need no lock:
/// two clients that fill a slot at once write the same words, and a reader that sees the
/// first word filled (acquire) sees the words stored before it (release).
type Slot = [AtomicU64; 2];

/// A string's words past its first, for the deltas longer than 64 bits (spawns, large
/// updates): beside the slots, so that they take no room in the cache lines every client
/// reads.
type Rest = [AtomicU64; BitString::WORDS - 1];

/// One slot per entity of the tick's world, and which of them were filled, so that emptying
/// them for the next tick touches those alone (a few thousand of 10,000), not every slot.
#[derive(Debug, Default)]
struct Slots {
    slots: Vec<Slot>,
    /// The rest of each slot's string, by the same index.
    rest: Vec<Rest>,
    /// One bit per slot filled.
    filled: Vec<AtomicU64>,
}

impl Slots {
    /// Empty, with `len` slots.
    fn reset(&mut self, len: usize) {
        if self.slots.len() == len {
            for (w, word) in self.filled.iter_mut().enumerate() {
                let mut bits = std::mem::take(word.get_mut());
                while bits != 0 {
                    let i = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    if let Some(slot) = self.slots.get_mut(i) {
                        *slot[0].get_mut() = 0;
                    }
                }
            }
        } else {
            self.slots.clear();
            self.slots.resize_with(len, Default::default);
            self.rest.clear();
            self.rest.resize_with(len, Default::default);
            self.filled.clear();
            self.filled
                .resize_with(len.div_ceil(64), AtomicU64::default);
        }
    }

    fn load(&self, index: usize) -> Option<SharedDelta> {
        let slot = self.slots.get(index)?;
        let head = slot[0].load(Ordering::Acquire);
        if head & FILLED == 0 {
            return None;
        }
        Some(match (head >> KIND_SHIFT) & 3 {
            UNCHANGED => SharedDelta::Unchanged,
            BITS => {
                let len = (head & 0xffff) as usize;
                let mut words = [0; BitString::WORDS];
                words[0] = slot[1].load(Ordering::Relaxed);
                if len > 64
                    && let Some(rest) = self.rest.get(index)
                {
                    for (w, r) in words[1..].iter_mut().zip(rest) {
                        *w = r.load(Ordering::Relaxed);
                    }
                }
                SharedDelta::Bits {
                    bits: BitString::from_words(words, len),
                    payload_bits: ((head >> 16) & 0xffff) as usize,
                }
            }
            _ => SharedDelta::Own,
        })
    }

    /// Fill the slot at `index` with `delta`, unless another thread just did: whether this
    /// one did. The words two threads store are the same; the first word is set once.
    fn store(&self, index: usize, delta: &SharedDelta) -> bool {
        let (Some(slot), Some(rest)) = (self.slots.get(index), self.rest.get(index)) else {
            return false;
        };
        let head = match delta {
            SharedDelta::Unchanged => UNCHANGED << KIND_SHIFT,
            SharedDelta::Own => OWN << KIND_SHIFT,
            SharedDelta::Bits { bits, payload_bits } => {
                let [first, more @ ..] = bits.words();
                slot[1].store(*first, Ordering::Relaxed);
                if bits.len() > 64 {
                    for (word, &bits) in rest.iter().zip(more) {
                        word.store(bits, Ordering::Relaxed);
                    }
                }
                // Both fit 16 bits: `SharedSection::encode` keeps no longer string.
                (BITS << KIND_SHIFT) | ((*payload_bits as u64) << 16) | bits.len() as u64
            }
        };
        let set = slot[0]
            .compare_exchange(0, FILLED | head, Ordering::Release, Ordering::Relaxed)
            .is_ok();
        if set && let Some(word) = self.filled.get(index / 64) {
            word.fetch_or(1 << (index % 64), Ordering::Relaxed);
        }
        set
    }
}

/// The shared code for deltas `ticks` after their baseline (0: spawns), and the deltas
/// encoded with it so far, by the entity's index in the tick's world.
#[derive(Debug)]
pub(crate) struct SharedSection {
    pub(crate) ticks: u32,
    pub(crate) code: EntityCode,
    slots: Slots,
    /// Its deltas are encoded up front this tick ([`SharedDeltas::fill`]): nearly every
    /// lookup finds its slot filled, and reads no state.
    up_front: AtomicBool,
}

impl SharedSection {
    /// The delta of the entity at `index` of the tick's world against its state in the
    /// world of the section's baseline tick (or against the spawn base, for spawns),
    /// encoding it from `states` (base, new) when no client did yet.
    ///
    /// Every client looks up each changed entity of its scope here, a hundred and more a
    /// tick: when an unrelated change made the compiler call it out of line, every client's
    /// build took about a fifth longer (docs/BENCHMARKS.md, "States asked for ahead for the
    /// clients behind").
    #[inline(always)]
    pub(crate) fn delta<'a>(
        &self,
        index: usize,
        states: impl FnOnce() -> (&'a QuantizedEntity, &'a QuantizedEntity),
        lim: &Limits,
    ) -> Option<SharedLookup> {
        if index >= self.slots.slots.len() {
            return None;
        }
        if let Some(d) = self.slots.load(index) {
            return Some(SharedLookup::Hit(d));
        }
        // Another thread may fill the slot meanwhile, with the same words (a function of
        // the same states): then this lookup counts as a hit, as it would had it come
        // second, so which thread comes first does not change the counts either (a section
        // filled up front, see `fill`, makes every lookup a hit).
        let (base, cur) = states();
        let d = self.encode(base, cur, lim);
        Some(if self.slots.store(index, &d) {
            SharedLookup::Kept(d)
        } else {
            SharedLookup::Hit(d)
        })
    }

    /// Ask for the slots at `indices` to be brought into the caches, so that the lookups
    /// after find them there: the misses overlap each other and the work on the first
    /// entities, where each lookup between the encoding of its neighbours would wait for
    /// its own (a client's scope is scattered over the tick's world).
    pub(crate) fn touch(&self, indices: impl Iterator<Item = usize>) {
        for i in indices {
            if let Some(slot) = self.slots.slots.get(i) {
                crate::prefetch::value(slot);
            }
        }
    }

    /// Whether its deltas were encoded up front this tick: otherwise a lookup's first
    /// client encodes, from the two states it reads then.
    pub(crate) fn filled_up_front(&self) -> bool {
        self.up_front.load(Ordering::Relaxed)
    }

    fn encode(&self, base: &QuantizedEntity, cur: &QuantizedEntity, lim: &Limits) -> SharedDelta {
        let delta = EntityDelta::new(base, cur, self.ticks, lim);
        if delta.is_empty() {
            return SharedDelta::Unchanged;
        }
        if !part::code_covers(&self.code, &delta) {
            return SharedDelta::Own;
        }
        let bits = part::shared_bits(&delta, cur, lim, &self.code);
        let payload_bits = part::delta_bits(&delta, cur, self.ticks, lim).max(bits.len());
        if bits.overflowed() || payload_bits > 0xffff {
            return SharedDelta::Own;
        }
        SharedDelta::Bits { bits, payload_bits }
    }
}

/// A delta from a [`SharedSection`]: encoded by another client, or by this one and kept for
/// the others.
#[derive(Debug)]
pub(crate) enum SharedLookup {
    Hit(SharedDelta),
    Kept(SharedDelta),
}

impl SharedLookup {
    pub(crate) fn get(&self) -> SharedDelta {
        match self {
            SharedLookup::Hit(d) | SharedLookup::Kept(d) => *d,
        }
    }
}

/// A shared code is used for this many ticks from the tick it was chosen on, then chosen
/// again from the world of the day. The changes of a game's world keep their sizes from one
/// tick to the next (the same walkers at the same speeds), and sampling the world for each
/// age's code every tick took 2.5 % of the `massive` scene's tick at 1,000 clients, and 4 %
/// in its loss run, where the clients hold three or four ages at once (docs/BENCHMARKS.md).
const CODE_KEPT_TICKS: u32 = 8;

/// The code chosen for one baseline age, and when.
#[derive(Clone, Copy, Debug)]
struct ChosenCode {
    ticks: u32,
    code: EntityCode,
    at: Tick,
}

/// The changes a code for age `k` (0: spawns) is chosen from, in `deltas`: those of
/// every [`CODE_SAMPLE_STRIDE`]th entity of `now` since that age's world in `history` (none
/// when that world is not there).
fn sample_changes(
    now: &TickWorld,
    history: &[TickWorld],
    k: u32,
    lim: &Limits,
    deltas: &mut Vec<EntityDelta>,
) {
    deltas.clear();
    let cur = now.world.entities();
    if k == 0 {
        let spawn_base = part::spawn_base();
        deltas.extend(
            cur.iter()
                .step_by(CODE_SAMPLE_STRIDE)
                .map(|(_, e)| EntityDelta::new(&spawn_base, e, 0, lim)),
        );
        return;
    }
    let Some(then) = history.iter().find(|h| h.tick.0 + k == now.tick.0) else {
        return;
    };
    if then.same_layout(now) {
        // An index means the same entity in both, and an entity that did not change since
        // `then` holds the same state in both: only the sampled entities that moved are read
        // (a walk through the old world read all of it, for each age).
        let before = then.world.entities();
        for g in (0..cur.len()).step_by(CODE_SAMPLE_STRIDE) {
            if changed_within(now.changed[g], k) {
                let (b, e) = (&before[g].1, &cur[g].1);
                if b != e {
                    deltas.push(EntityDelta::new(b, e, k, lim));
                }
            }
        }
    } else {
        // Both are sorted by id: one walk, not a search per entity.
        let mut before = then.world.entities().iter().peekable();
        for (id, e) in cur.iter().step_by(CODE_SAMPLE_STRIDE) {
            if let Some((_, b)) = next_with_id(&mut before, *id, |(b, _)| *b)
                && b != e
            {
                deltas.push(EntityDelta::new(b, e, k, lim));
            }
        }
    }
}

/// The shared codes and deltas of one tick's world.
#[derive(Debug, Default)]
pub(crate) struct SharedDeltas {
    tick: Tick,
    sections: Vec<SharedSection>,
    /// The sample of changes a code is chosen from, kept from tick to tick.
    sample: Vec<EntityDelta>,
    /// The codes in use, one per age, each younger than [`CODE_KEPT_TICKS`].
    codes: Vec<ChosenCode>,
}

impl SharedDeltas {
    /// Start the world of `now`: a section per age in `ticks` (0: spawns), with the code
    /// chosen for that age within the last [`CODE_KEPT_TICKS`] ticks, or else one chosen now
    /// from a sample of the changes since that age's world in `history` (no section when
    /// that world is not there or nothing in the sample changed).
    pub(crate) fn prepare(
        &mut self,
        now: &TickWorld,
        history: &[TickWorld],
        ticks: &[u32],
        lim: &Limits,
        scratch: &mut EncodeScratch,
    ) {
        let tick = now.tick;
        self.tick = tick;
        let mut old = std::mem::take(&mut self.sections);
        self.sections.clear();
        let cur = now.world.entities();
        let mut deltas = std::mem::take(&mut self.sample);
        // Codes past their time are chosen again below.
        self.codes
            .retain(|c| tick.0.wrapping_sub(c.at.0) < CODE_KEPT_TICKS);
        for &k in ticks {
            let kept = self.codes.iter().find(|c| c.ticks == k).map(|c| c.code);
            let code = match kept {
                Some(code) => code,
                None => {
                    sample_changes(now, history, k, lim, &mut deltas);
                    if deltas.is_empty() {
                        continue;
                    }
                    let code = part::choose_code(deltas.iter().copied(), k, scratch);
                    self.codes.push(ChosenCode {
                        ticks: k,
                        code,
                        at: tick,
                    });
                    code
                }
            };
            // Reuse a section's slots from an earlier tick.
            let mut slots = old.pop().map(|s| s.slots).unwrap_or_default();
            slots.reset(cur.len());
            self.sections.push(SharedSection {
                ticks: k,
                code,
                slots,
                up_front: AtomicBool::new(false),
            });
        }
        old.clear();
        deltas.clear();
        self.sample = deltas;
    }

    /// Encode now the delta of every entity that changed since the baseline of the section
    /// for `ticks` (> 0), for a section whose clients will read nearly all of them anyway:
    /// in world order, both worlds are read as two runs of memory, where encoding on a
    /// client's first lookup reads them in the scattered order of its scope. Needs the
    /// baseline's world in `history` (otherwise nothing is encoded); when entities came or
    /// went since, the two worlds are walked side by side by id, and an entity the baseline
    /// does not hold is left to the clients (a spawn for them). Only the entities at `range`
    /// of the tick's world are encoded: threads that fill ranges that do not overlap fill the
    /// section together. Returns the deltas encoded.
    pub(crate) fn fill(
        &self,
        now: &TickWorld,
        history: &[TickWorld],
        ticks: u32,
        lim: &Limits,
        range: Range<usize>,
    ) -> usize {
        let Some(section) = self.section(now.tick, ticks).filter(|_| ticks > 0) else {
            return 0;
        };
        let Some(then) = history.iter().find(|h| h.tick.0 + ticks == now.tick.0) else {
            return 0;
        };
        section.up_front.store(true, Ordering::Relaxed);
        let (before, cur) = (then.world.entities(), now.world.entities());
        let end = range.end.min(cur.len()).min(now.changed.len());
        let start = range.start.min(end);
        let (changed, cur) = (&now.changed[start..end], &cur[start..end]);
        let mut encoded = 0;
        let mut encode = |g: usize, b: &QuantizedEntity, e: &QuantizedEntity| {
            let d = section.encode(b, e, lim);
            encoded += usize::from(section.slots.store(g, &d));
        };
        // An entity that last changed as long before as the baseline or longer holds the
        // same state in both: clients skip it without a lookup, and it is not encoded.
        if then.same_layout(now) {
            // The same entities, at the same indices, in both worlds.
            let before = &before[start..end.min(before.len())];
            for (i, ((&c, b), e)) in changed.iter().zip(before).zip(cur).enumerate() {
                if changed_within(c, ticks) {
                    encode(start + i, &b.1, &e.1);
                }
            }
        } else {
            // Entities came or went (a spawn, a respawn, a player who joined or left, on
            // nearly every tick of a busy game): both worlds are sorted by id, so the range's
            // first entity is searched for once and the rest found by walking on.
            let first = cur.first().map_or(before.len(), |(id, _)| {
                before.partition_point(|(b, _)| b < id)
            });
            let mut walk = before[first..].iter().peekable();
            for (i, (&c, (id, e))) in changed.iter().zip(cur).enumerate() {
                if changed_within(c, ticks)
                    && let Some((_, b)) = next_with_id(&mut walk, *id, |(b, _)| *b)
                {
                    encode(start + i, b, e);
                }
            }
        }
        encoded
    }

    /// The section for deltas `ticks` after their baseline at `tick`, if any. The entity
    /// indices it takes are those of the world [`Self::prepare`] was given.
    pub(crate) fn section(&self, tick: Tick, ticks: u32) -> Option<&SharedSection> {
        if tick != self.tick {
            return None;
        }
        self.sections.iter().find(|s| s.ticks == ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{
        EntityId, EntityState, QuantizeConfig, QuantizedWorld, Transform, World,
    };

    /// Every entity of a world.
    const ALL: Range<usize> = 0..usize::MAX;

    /// A world of `n` entities scattered, turned and some moving (`t` moves them on), the
    /// first of them carrying `component` bytes and some others a few.
    fn world(n: u32, t: f32, component: usize) -> QuantizedWorld {
        world_of(0..n, t, component)
    }

    /// The entities `ids` of such a world (each the same entity as in [`world`]).
    fn world_of(ids: impl Iterator<Item = u32>, t: f32, component: usize) -> QuantizedWorld {
        let mut w = World::new();
        for i in ids {
            // A scatter of values from the index alone.
            let h =
                |k: u32| ((i.wrapping_mul(2_654_435_761).wrapping_add(k * 40_503)) % 1000) as f32;
            let moving = i % 3 != 0;
            let speed = if moving { h(1) / 100.0 - 5.0 } else { 0.0 };
            let mut e = EntityState::new(Transform {
                position: glam::Vec3::new(h(2) - 500.0 + speed * t, h(3) / 50.0, 400.0 - h(4) + t),
                rotation: glam::Quat::from_rotation_y(h(5) / 100.0 + t * speed / 10.0),
                velocity: (moving && i % 5 != 0).then(|| glam::Vec3::new(speed, 0.0, 1.0)),
            });
            if i == 0 && component > 0 {
                e.component = Some(vec![0xa5; component]);
            } else if i % 7 == 1 {
                // A few bytes of component: spawns past two words.
                e.component = Some(vec![i as u8; 2 + i as usize % 4]);
            }
            w.insert(EntityId(i), e);
        }
        QuantizedWorld::from_world(&w, &QuantizeConfig::default())
    }

    #[test]
    fn a_slot_keeps_the_bits_the_code_writes_and_leaves_longer_deltas_to_each_client() {
        let lim = QuantizeConfig::default().limits();
        let mut scratch = EncodeScratch::default();
        let spawn_base = part::spawn_base();
        // Entity 0 spawns with 40 bytes of component: longer than a slot keeps.
        let (then, now) = (world(64, 0.0, 40), world(64, 0.1, 40));
        let history = [TickWorld::new(then.clone(), Tick(1), None)];
        let now_tick = TickWorld::new(now.clone(), Tick(3), Some(&history[0]));
        let mut shared = SharedDeltas::default();
        shared.prepare(&now_tick, &history, &[0, 2], &lim, &mut scratch);
        // The code of an age is the same whether the old world is read by index (one
        // layout) or walked by id (another layout).
        let mut walked = SharedDeltas::default();
        walked.prepare(
            &TickWorld::new(now.clone(), Tick(3), None),
            &history,
            &[2],
            &lim,
            &mut scratch,
        );
        assert!(now_tick.same_layout(&history[0]));
        assert_eq!(
            walked.section(Tick(3), 2).map(|s| &s.code),
            shared.section(Tick(3), 2).map(|s| &s.code)
        );
        let (spawns, updates) = (
            shared.section(Tick(3), 0).expect("a spawn section"),
            shared
                .section(Tick(3), 2)
                .expect("a section two ticks after tick 1"),
        );
        let cur = now.entities();
        let (mut long, mut unchanged) = (0, 0);
        for (i, (_, e)) in cur.iter().enumerate() {
            let spawn = spawns.delta(i, || (&spawn_base, e), &lim).unwrap().get();
            let base = &then.entities()[i].1;
            let update = updates.delta(i, || (base, e), &lim).unwrap().get();
            for (section, d, old, ticks) in
                [(spawns, spawn, &spawn_base, 0), (updates, update, base, 2)]
            {
                let delta = EntityDelta::new(old, e, ticks, &lim);
                let written = part::shared_bits(&delta, e, &lim, &section.code);
                match d {
                    SharedDelta::Bits { bits, payload_bits } => {
                        assert!(part::code_covers(&section.code, &delta));
                        assert_eq!(bits, written, "entity {i}, {ticks} ticks");
                        long += usize::from(bits.len() > 128);
                        let estimate = part::delta_bits(&delta, e, ticks, &lim);
                        assert_eq!(payload_bits, estimate.max(written.len()));
                    }
                    SharedDelta::Own => assert!(
                        written.overflowed() || !part::code_covers(&section.code, &delta),
                        "entity {i}, {ticks} ticks: a delta the slot could keep"
                    ),
                    SharedDelta::Unchanged => {
                        assert!(delta.is_empty(), "entity {i}, {ticks} ticks");
                        unchanged += 1;
                    }
                }
            }
            // The component's 320 bits do not fit a slot; every other spawn does.
            assert_eq!(matches!(spawn, SharedDelta::Own), i == 0, "entity {i}");
            // A second lookup reads what the first one kept.
            assert!(
                matches!(spawns.delta(i, || unreachable!(), &lim), Some(SharedLookup::Hit(d)) if d == spawn)
            );
        }
        // Strings reach the slot's third word, and resting entities are unchanged.
        assert!(
            long > 0 && unchanged > 0,
            "{long} long, {unchanged} unchanged"
        );
        // The next tick starts empty: the slots filled are cleared.
        let next = TickWorld::new(now.clone(), Tick(4), Some(&now_tick));
        shared.prepare(&next, &[], &[0], &lim, &mut scratch);
        let spawns = shared.section(Tick(4), 0).expect("a spawn section");
        assert!(matches!(
            spawns.delta(5, || (&spawn_base, &cur[5].1), &lim),
            Some(SharedLookup::Kept(_))
        ));
    }

    #[test]
    fn an_age_s_code_is_kept_for_its_ticks_then_chosen_again_from_the_world() {
        let lim = QuantizeConfig::default().limits();
        let mut scratch = EncodeScratch::default();
        // The world at `tick` after moving for `t`, with its world two ticks before.
        let at = |tick: u32, t: f32| {
            let then = TickWorld::new(world(300, 0.0, 0), Tick(tick - 2), None);
            let now = TickWorld::new(world(300, t, 0), Tick(tick), Some(&then));
            (now, [then])
        };
        let code = |shared: &SharedDeltas, tick: u32| shared.section(Tick(tick), 2).map(|s| s.code);
        let chosen = |tick: u32, t: f32| {
            let (now, history) = at(tick, t);
            let mut fresh = SharedDeltas::default();
            fresh.prepare(&now, &history, &[2], &lim, &mut EncodeScratch::default());
            code(&fresh, tick).expect("a section")
        };
        // Small moves and large ones are coded differently.
        let (small, large) = (chosen(3, 0.1), chosen(4, 40.0));
        assert_ne!(small, large);

        let mut shared = SharedDeltas::default();
        let (now, history) = at(3, 0.1);
        shared.prepare(&now, &history, &[2], &lim, &mut scratch);
        assert_eq!(code(&shared, 3), Some(small));
        // Within its ticks the code stays, whatever the world, even without the age's world.
        let (now, history) = at(4, 40.0);
        shared.prepare(&now, &history, &[2], &lim, &mut scratch);
        assert_eq!(code(&shared, 4), Some(small));
        let (now, _) = at(3 + CODE_KEPT_TICKS - 1, 40.0);
        shared.prepare(&now, &[], &[2], &lim, &mut scratch);
        assert_eq!(code(&shared, 3 + CODE_KEPT_TICKS - 1), Some(small));
        // Then it is chosen again from the world of the day; an age not asked for has no
        // section.
        let tick = 3 + CODE_KEPT_TICKS;
        let (now, history) = at(tick, 40.0);
        shared.prepare(&now, &history, &[2], &lim, &mut scratch);
        assert_eq!(code(&shared, tick), Some(large));
        assert!(shared.section(Tick(tick), 3).is_none());
    }

    #[test]
    fn a_section_filled_up_front_holds_what_first_lookups_encode() {
        let lim = QuantizeConfig::default().limits();
        let mut scratch = EncodeScratch::default();
        let (then, now) = (world(300, 0.0, 0), world(300, 0.1, 0));
        let history = [TickWorld::new(then.clone(), Tick(1), None)];
        let now_tick = TickWorld::new(now.clone(), Tick(3), Some(&history[0]));
        let (mut filled, mut lazy) = (SharedDeltas::default(), SharedDeltas::default());
        filled.prepare(&now_tick, &history, &[0, 2], &lim, &mut scratch);
        lazy.prepare(&now_tick, &history, &[0, 2], &lim, &mut scratch);
        // Spawns and ages without a section, or without their world, are not filled.
        assert_eq!(filled.fill(&now_tick, &history, 0, &lim, ALL), 0);
        assert_eq!(filled.fill(&now_tick, &history, 5, &lim, ALL), 0);
        assert_eq!(filled.fill(&now_tick, &[], 2, &lim, ALL), 0);
        // Only a fill that encodes marks its section: the clients of the others ask ahead
        // for the states their lookups will encode from.
        let marked = |d: &SharedDeltas| d.section(Tick(3), 2).expect("section").filled_up_front();
        assert!(!marked(&filled));
        let moved: Vec<usize> = (0..now_tick.changed.len())
            .filter(|&g| changed_within(now_tick.changed[g], 2))
            .collect();
        assert!(
            moved.len() > 100 && moved.len() < 300,
            "{} moved",
            moved.len()
        );
        assert_eq!(filled.fill(&now_tick, &history, 2, &lim, ALL), moved.len());
        assert!(marked(&filled) && !marked(&lazy));
        // A second fill finds every slot filled.
        assert_eq!(filled.fill(&now_tick, &history, 2, &lim, ALL), 0);
        let (f, l) = (
            filled.section(Tick(3), 2).expect("section"),
            lazy.section(Tick(3), 2).expect("section"),
        );
        let (before, cur) = (then.entities(), now.entities());
        for &g in &moved {
            let states = || (&before[g].1, &cur[g].1);
            let Some(SharedLookup::Hit(up_front)) = f.delta(g, || unreachable!(), &lim) else {
                panic!("entity {g} was not filled");
            };
            let Some(SharedLookup::Kept(first)) = l.delta(g, states, &lim) else {
                panic!("entity {g} was filled without a lookup");
            };
            assert_eq!(up_front, first, "entity {g}");
        }
        // The next tick's sections start unfilled, though they reuse these slots.
        filled.prepare(&now_tick, &history, &[0, 2], &lim, &mut scratch);
        assert!(!marked(&filled));
    }

    /// Fill the deltas of `now` against `then` (two ticks older) up front, once whole and
    /// once in the ranges `cuts` of `now`'s world, and check both against what a client's
    /// first lookup encodes: every entity that changed and that `then` holds is filled with
    /// that delta, and no other. Returns how many were filled.
    fn assert_filled_as_first_lookups(
        then: &QuantizedWorld,
        now: &QuantizedWorld,
        cuts: &[Range<usize>],
    ) -> usize {
        let lim = QuantizeConfig::default().limits();
        let scratch = EncodeScratch::default();
        let history = [TickWorld::new(then.clone(), Tick(1), None)];
        let now_tick = TickWorld::new(now.clone(), Tick(3), Some(&history[0]));
        let sections = || {
            let mut s = SharedDeltas::default();
            s.prepare(&now_tick, &history, &[2], &lim, &mut scratch.clone());
            s
        };
        let (whole, ranges, lazy) = (sections(), sections(), sections());
        let cur = now.entities();
        let base = |(id, _): &(EntityId, QuantizedEntity)| then.get(*id);
        // What a fill must encode: the entities that changed and that the baseline holds.
        let want: Vec<usize> = (0..cur.len())
            .filter(|&g| changed_within(now_tick.changed[g], 2) && base(&cur[g]).is_some())
            .collect();
        assert_eq!(whole.fill(&now_tick, &history, 2, &lim, ALL), want.len());
        let counts: usize = cuts
            .iter()
            .map(|r| ranges.fill(&now_tick, &history, 2, &lim, r.clone()))
            .sum();
        assert_eq!(counts, want.len());
        let (w, r, l) = (
            whole.section(Tick(3), 2).expect("section"),
            ranges.section(Tick(3), 2).expect("section"),
            lazy.section(Tick(3), 2).expect("section"),
        );
        for (g, e) in cur.iter().enumerate() {
            let filled = |s: &SharedSection| match s.delta(g, || unreachable!(), &lim) {
                Some(SharedLookup::Hit(d)) => Some(d),
                _ => None,
            };
            match base(e) {
                // Each delta filled is the one a client's first lookup encodes.
                Some(b) if want.contains(&g) => {
                    let Some(SharedLookup::Kept(first)) = l.delta(g, || (b, &e.1), &lim) else {
                        panic!("entity {g} was filled without a lookup");
                    };
                    assert_eq!(filled(w), Some(first), "entity {g}");
                    assert_eq!(filled(r), Some(first), "entity {g}");
                }
                // Unchanged since the baseline, or new to it (a spawn): not filled.
                _ => {
                    let spawn_base = part::spawn_base();
                    let states = || (&spawn_base, &e.1);
                    assert!(matches!(
                        w.delta(g, states, &lim),
                        Some(SharedLookup::Kept(_))
                    ));
                    assert!(matches!(
                        r.delta(g, states, &lim),
                        Some(SharedLookup::Kept(_))
                    ));
                }
            }
        }
        want.len()
    }

    #[test]
    fn a_section_is_filled_by_id_when_entities_came_or_went() {
        // Since the baseline, entities 10–19 and 150 left, and 300–309 came.
        let gone = |i: &u32| !(10..20).contains(i) && *i != 150;
        let then = world(300, 0.0, 0);
        let now = world_of((0..310).filter(gone), 0.1, 0);
        let history = TickWorld::new(then.clone(), Tick(1), None);
        assert!(!TickWorld::new(now.clone(), Tick(3), Some(&history)).same_layout(&history));
        // In ranges: one starts right after an entity that left (with 151, at 140 now), one
        // at the first entity that came.
        let at_300 = now
            .entities()
            .iter()
            .position(|(id, _)| id.0 == 300)
            .expect("entity 300");
        let cuts = [0..140, 140..at_300, at_300..usize::MAX];
        let filled = assert_filled_as_first_lookups(&then, &now, &cuts);
        assert!(filled > 100, "{filled} filled");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whichever entities left and came, and wherever the runs of the world are cut,
        /// a fill encodes exactly the deltas clients' first lookups would.
        #[test]
        fn any_entities_that_came_or_went_are_filled_as_first_lookups_encode(
            then_has in proptest::collection::vec(proptest::bool::weighted(0.8), 120),
            stays in proptest::collection::vec(proptest::bool::weighted(0.85), 120),
            comes in proptest::collection::vec(proptest::bool::weighted(0.2), 120),
            cut_at in proptest::collection::vec(0usize..200, 0..6),
        ) {
            // Of ids 0..120 the baseline held some; of those, some are still there. An id
            // the baseline did not hold may come (so new entities fall between old ones),
            // and ids 120..240 may come after them all.
            let then_ids = (0..120u32).filter(|&i| then_has[i as usize]);
            let now_ids = (0..240u32).filter(|&i| {
                let i = i as usize;
                match then_has.get(i) {
                    Some(&held) => if held { stays[i] } else { comes[i] },
                    None => comes[i - 120],
                }
            });
            let then = world_of(then_ids, 0.0, 0);
            let now = world_of(now_ids, 0.1, 0);
            let mut cuts = cut_at;
            cuts.push(0);
            cuts.sort_unstable();
            cuts.dedup();
            let ranges: Vec<Range<usize>> = cuts
                .iter()
                .zip(cuts.iter().skip(1).chain([&usize::MAX]))
                .map(|(&a, &b)| a..b)
                .collect();
            assert_filled_as_first_lookups(&then, &now, &ranges);
        }
    }

    #[test]
    fn threads_filling_ranges_of_the_world_fill_the_section_as_one_fill_does() {
        let lim = QuantizeConfig::default().limits();
        let mut scratch = EncodeScratch::default();
        let (then, now) = (world(300, 0.0, 0), world(300, 0.1, 0));
        let history = [TickWorld::new(then, Tick(1), None)];
        let now_tick = TickWorld::new(now, Tick(3), Some(&history[0]));
        let (mut whole, mut ranges) = (SharedDeltas::default(), SharedDeltas::default());
        whole.prepare(&now_tick, &history, &[2], &lim, &mut scratch);
        ranges.prepare(&now_tick, &history, &[2], &lim, &mut scratch);
        let encoded = whole.fill(&now_tick, &history, 2, &lim, ALL);
        assert!(encoded > 100, "{encoded} encoded");
        // Three threads, ranges that meet but do not overlap; the last runs past the end.
        let cuts = [0..97, 97..211, 211..1_000];
        let counts: Vec<usize> = std::thread::scope(|s| {
            let threads: Vec<_> = cuts
                .iter()
                .map(|r| {
                    let (ranges, now_tick, history, lim) = (&ranges, &now_tick, &history, &lim);
                    s.spawn(move || ranges.fill(now_tick, history, 2, lim, r.clone()))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("a fill thread"))
                .collect()
        });
        // Each thread encoded the entities of its own range that changed, and only those.
        let moved_in = |r: &Range<usize>| {
            (r.start..r.end.min(now_tick.changed.len()))
                .filter(|&g| changed_within(now_tick.changed[g], 2))
                .count()
        };
        let want: Vec<usize> = cuts.iter().map(moved_in).collect();
        assert_eq!(counts, want);
        assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
        assert_eq!(counts.iter().sum::<usize>(), encoded, "{counts:?}");
        // A range past the world's end fills nothing, and a second fill finds all filled.
        assert_eq!(ranges.fill(&now_tick, &history, 2, &lim, 400..500), 0);
        assert_eq!(ranges.fill(&now_tick, &history, 2, &lim, ALL), 0);
        let (w, r) = (
            whole.section(Tick(3), 2).expect("section"),
            ranges.section(Tick(3), 2).expect("section"),
        );
        for g in 0..now_tick.world.len() {
            let held = |s: &SharedSection| match s.delta(g, || unreachable!(), &lim) {
                Some(SharedLookup::Hit(d)) => Some(d),
                _ => None,
            };
            // Entities that did not change are in neither: a lookup would encode them.
            if changed_within(now_tick.changed[g], 2) {
                assert_eq!(held(w), held(r), "entity {g}");
                assert!(held(r).is_some(), "entity {g} was not filled");
            }
        }
    }
}
