//! The replicated model: ticks, entity ids, float worlds and their quantized twins.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use glam::{Quat, Vec3};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::quantize::{QuantizeConfig, QuantizedTransform};
use crate::codec::{self, CodecError};

/// A server simulation step number.
///
/// Ticks are plain `u32` and compare as integers: at 60 Hz they last 2.2 years before
/// wrapping, far longer than any session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u32);

impl Tick {
    /// The tick after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Tick(self.0.wrapping_add(1))
    }
}

/// Identifies one replicated entity for its whole life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntityId(pub u32);

/// Where an entity is, how it is turned and how fast it moves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transform {
    /// Position in metres.
    pub position: Vec3,
    /// Orientation (normalised on quantization).
    pub rotation: Quat,
    /// Linear velocity in m/s, if the entity moves physically (used for extrapolation).
    pub velocity: Option<Vec3>,
}

impl Default for Transform {
    fn default() -> Self {
        Self {
            position: Vec3::ZERO,
            rotation: Quat::IDENTITY,
            velocity: None,
        }
    }
}

/// One entity's replicated state: a transform plus optional application bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityState {
    /// The physical state, quantized on the wire.
    pub transform: Transform,
    /// Application data (health, colour...) encoded with [`crate::codec`]; sent verbatim
    /// whenever it changes.
    pub component: Option<Vec<u8>>,
}

impl EntityState {
    /// An entity with a transform and no component.
    pub fn new(transform: Transform) -> Self {
        Self {
            transform,
            component: None,
        }
    }

    /// An entity whose component is `value` encoded with [`crate::codec::encode`].
    pub fn with_component<T: Serialize>(
        transform: Transform,
        value: &T,
    ) -> Result<Self, CodecError> {
        Ok(Self {
            transform,
            component: Some(codec::encode(value)?),
        })
    }

    /// Decode the component as `T`; `None` when the entity has no component.
    pub fn component_as<T: DeserializeOwned>(&self) -> Option<Result<T, CodecError>> {
        self.component.as_deref().map(codec::decode)
    }
}

/// The float world the game fills every tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct World {
    entities: BTreeMap<EntityId, EntityState>,
}

impl World {
    /// An empty world.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace an entity.
    pub fn insert(&mut self, id: EntityId, state: EntityState) {
        self.entities.insert(id, state);
    }

    /// Remove every entity (keeps the allocation for the next tick's fill).
    pub fn clear(&mut self) {
        self.entities.clear();
    }

    /// Remove an entity (it will be despawned on the clients).
    pub fn remove(&mut self, id: EntityId) -> Option<EntityState> {
        self.entities.remove(&id)
    }

    /// The state of one entity.
    pub fn get(&self, id: EntityId) -> Option<&EntityState> {
        self.entities.get(&id)
    }

    /// Mutable access to one entity.
    pub fn get_mut(&mut self, id: EntityId) -> Option<&mut EntityState> {
        self.entities.get_mut(&id)
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// True when there are no entities.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// All entities in id order.
    pub fn iter(&self) -> impl Iterator<Item = (EntityId, &EntityState)> {
        self.entities.iter().map(|(id, s)| (*id, s))
    }

    /// All entities in id order, to update in place (cheaper than clearing and refilling
    /// when the same entities exist from tick to tick).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (EntityId, &mut EntityState)> {
        self.entities.iter_mut().map(|(id, s)| (*id, s))
    }
}

/// One entity as it travels: quantized transform plus the component bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantizedEntity {
    /// The quantized transform.
    pub transform: QuantizedTransform,
    /// Application bytes, shared so that cloning a world does not copy them.
    pub component: Option<Arc<[u8]>>,
}

/// A world after quantization: entities sorted by id, shared behind an `Arc`.
///
/// Cloning is one reference-count increment, so the server quantizes once per tick and hands
/// the same value to every client's sender; senders and receivers keep rings of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuantizedWorld {
    entities: Arc<Vec<(EntityId, QuantizedEntity)>>,
}

/// What [`QuantizedWorld::from_world_cached`] remembers between ticks: each entity's last
/// float transform and component, and what they quantized to.
///
/// Most entities of a game world do not move every tick (two thirds of the `massive` scene's
/// NPCs rest, most of the cubes lie still), and quantizing a rotation costs tens of
/// nanoseconds; an unchanged entity is one comparison instead, and keeps sharing its
/// component's bytes.
///
/// It also keeps the last few worlds it built, to build the next ones in their memory once
/// no one else holds them: a world of 10,000 entities is over half a megabyte, and taking
/// fresh pages for it every tick cost a scoped server a few percent of its tick.
#[derive(Debug, Default, Clone)]
pub struct QuantizeCache {
    config: Option<QuantizeConfig>,
    entries: Vec<CachedEntity>,
    built: VecDeque<Arc<Vec<(EntityId, QuantizedEntity)>>>,
    /// Whether the last call found the same entities as the one before, in the same order,
    /// with the same config; then `moved` names every entity whose quantized state it
    /// changed.
    same_entities: bool,
    /// By index, the entities the last call quantized to another state than they held.
    moved: Vec<u32>,
    /// When the last call found entities that came or went (same config): for each entity,
    /// its index in the world of the call before, or [`CAME`] for one that came.
    from: Vec<u32>,
    /// The length of the world of the call before, which `from` indexes.
    from_len: usize,
    /// Whether `from` describes the last call.
    carried: bool,
    /// For each run of the in-place walk, the entries whose quantized state it changed
    /// (kept for their memory).
    walk_moved: Vec<Vec<u32>>,
    /// The entries of the call before last, kept for their memory: a call where entities
    /// came or went builds its entries here instead of in a fresh allocation of 10,000
    /// entries (a game with projectiles or respawns takes that path every tick).
    spare: Vec<CachedEntity>,
    /// Whether [`QuantizeCache::stock_spares`] made the spare worlds.
    stocked: bool,
}

/// In [`QuantizeCache::carried`]: an entity that was not in the world before.
const CAME: u32 = u32::MAX;

impl QuantizeCache {
    /// Make [`FREE_WORLDS_KEPT`] spare worlds with room for `len` entities and more (the
    /// next power of two), their memory written once, oldest in the list so that the
    /// worlds let go are built in first.
    ///
    /// A server's first ticks add the worlds one by one as its history fills, and leave
    /// none spare: from then on each tick builds in the world the history let go. On the
    /// first tick a client's late baseline still held that one, the world was built in
    /// memory new to the process, 5–8 ms at 10,000 entities where it takes 0.3 ms in
    /// memory used before (page faults; a world built while clients joined is also too
    /// small for the world after: docs/BENCHMARKS.md, "A world held one tick longer").
    /// So the first tick that takes the last free world makes the spares, once.
    fn stock_spares(&mut self, len: usize) {
        self.stocked = true;
        let room = len.next_power_of_two();
        for _ in 0..FREE_WORLDS_KEPT {
            let mut spare = Vec::with_capacity(room);
            spare.resize_with(room, Default::default);
            spare.truncate(len);
            self.built.push_front(Arc::new(spare));
        }
    }

    /// The float transform of each entity of the world last quantized, in id order: a
    /// `Vec` read where the world itself is a `BTreeMap`, tens of instructions an entity
    /// dearer to walk.
    pub(crate) fn transforms(&self) -> impl ExactSizeIterator<Item = &Transform> {
        self.entries.iter().map(|e| &e.transform)
    }

    /// When the last world quantized held the same entities in the same order as the one
    /// before it: the indices of those whose quantized state differs between the two,
    /// increasing. The cache compared them already (only an entity whose floats changed is
    /// quantized again), so a caller holding the world before need not compare them all.
    pub(crate) fn moved(&self) -> Option<&[u32]> {
        self.same_entities.then_some(&self.moved[..])
    }

    /// When the last world quantized held other entities than the one before it (with the
    /// same config): for each of its entities, its index in that world (or [`CAME`]); the
    /// length of that world; and the indices (in the new world, increasing) of the entities
    /// that were there before and now have another quantized state. An entity that came
    /// counts as changed by itself.
    pub(crate) fn carried(&self) -> Option<(&[u32], usize, &[u32])> {
        self.carried
            .then_some((&self.from[..], self.from_len, &self.moved[..]))
    }
}

/// Worlds no one else holds that a [`QuantizeCache`] keeps for their memory, counted once
/// the tick's world took its own: a server frees about one a tick (the oldest it kept for
/// shared codes) and takes it again the next, so these are spares for a tick on which a
/// client's late baseline still holds that one (see [`QuantizeCache::stock_spares`]).
const FREE_WORLDS_KEPT: usize = 2;

/// At most this many worlds are tracked, held elsewhere or not: more than a server keeps for
/// its shared codes (8 per phase of the send interval, up to 8 phases) with a few in flight.
const WORLDS_TRACKED: usize = 80;

#[derive(Debug, Clone)]
struct CachedEntity {
    id: EntityId,
    transform: Transform,
    quantized: QuantizedEntity,
}

impl CachedEntity {
    /// Bring the entry to `s`, quantizing it again only when its floats changed (and then
    /// given the entry, so that the parts whose floats stayed are kept): whether its
    /// quantized state changed. Inlined: it runs for every entity of every world, and
    /// a call cost the quantize cache 7 % more instructions.
    #[inline(always)]
    fn refresh(
        &mut self,
        s: &EntityState,
        quantize: impl Fn(&EntityState, Option<&Self>) -> QuantizedEntity,
    ) -> bool {
        if self.holds(s) {
            return false;
        }
        let quantized = quantize(s, Some(self));
        self.transform = s.transform;
        let moved = quantized != self.quantized;
        self.quantized = quantized;
        moved
    }

    fn holds(&self, s: &EntityState) -> bool {
        // Float equality: equal floats quantize alike (a -0.0 and a 0.0 too), and a NaN is
        // never equal, so it is quantized afresh.
        self.transform == s.transform
            && self.quantized.component.as_deref() == s.component.as_deref()
    }
}

/// A change to apply to a world: `Some` sets (spawns or updates) an entity, `None` despawns it.
pub(crate) type Change = (EntityId, Option<QuantizedEntity>);

impl QuantizedWorld {
    /// Quantize every entity of `world` with `config`.
    pub fn from_world(world: &World, config: &QuantizeConfig) -> Self {
        let limits = config.limits();
        let entities = world
            .iter()
            .map(|(id, s)| {
                let q = QuantizedEntity {
                    transform: config.quantize_with(&s.transform, &limits),
                    component: s.component.as_deref().map(Arc::from),
                };
                (id, q)
            })
            .collect();
        Self {
            entities: Arc::new(entities),
        }
    }

    /// [`Self::from_world`], quantizing only the entities whose state changed since the
    /// last call with the same `cache` (the result is the same).
    pub fn from_world_cached(
        world: &World,
        config: &QuantizeConfig,
        cache: &mut QuantizeCache,
    ) -> Self {
        Self::from_world_cached_on(world, config, cache, None)
    }

    /// [`Self::from_world_cached`], with the usual tick's walk (the same entities as
    /// before) shared out over `pool`'s threads and the calling one, each a run of the
    /// world: on a server with several threads, the others would only wait for it.
    pub(crate) fn from_world_cached_on(
        world: &World,
        config: &QuantizeConfig,
        cache: &mut QuantizeCache,
        pool: Option<&rayon::ThreadPool>,
    ) -> Self {
        let limits = config.limits();
        // An entity that was quantized before keeps the quantized parts of its transform
        // whose floats did not change (one that walks without turning keeps its rotation).
        let quantize = |s: &EntityState, before: Option<&CachedEntity>| QuantizedEntity {
            transform: match before {
                Some(b) => config.requantize_with(
                    &s.transform,
                    &limits,
                    &b.transform,
                    &b.quantized.transform,
                ),
                None => config.quantize_with(&s.transform, &limits),
            },
            component: s.component.as_deref().map(Arc::from),
        };
        // A world after another config's is not compared with it.
        let same_config = cache.config.as_ref() == Some(config);
        if !same_config {
            cache.config = Some(*config);
            cache.entries.clear();
        }
        cache.moved.clear();
        // The newest kept world no one else holds, if there is one: holders let go of
        // worlds in the order they took them, so it is the one let go of last and the most
        // likely still in the caches (an older one's memory was measured slower to write
        // than a fresh allocation, docs/BENCHMARKS.md).
        let free = cache.built.iter().rposition(|w| Arc::strong_count(w) == 1);
        let mut entities = free
            .and_then(|i| cache.built.remove(i))
            .and_then(|w| Arc::try_unwrap(w).ok())
            .unwrap_or_default();
        if !cache.stocked
            && free.is_some()
            && !cache.built.iter().any(|w| Arc::strong_count(w) == 1)
        {
            cache.stock_spares(world.len());
        }
        // The usual tick: the same entities as before, updated in place and written to the
        // new world in one walk (a walk of a `BTreeMap` costs tens of instructions an
        // entity, so the ids are not checked in a walk of their own first). Should an id
        // differ, the entries walked were still updated for their own ids: the merge below
        // reuses them.
        let mut same_ids = same_config && cache.entries.len() == world.len();
        if same_ids {
            same_ids = refresh_in_place(world, &quantize, cache, &mut entities, pool);
        }
        cache.same_entities = same_ids;
        cache.carried = !same_ids && same_config;
        cache.from.clear();
        if !same_ids {
            // Entities came or went: one merge of the entries (by id) with the world. The
            // walk above may have updated entries for their own ids; those that moved are
            // in `cache.moved` by their index in the entries, and are noted again here by
            // their index in the new world.
            let walked = std::mem::take(&mut cache.moved);
            let mut walked = walked.iter().copied().peekable();
            cache.from_len = cache.entries.len();
            let mut entries = std::mem::take(&mut cache.spare);
            entries.clear();
            entries.reserve(world.len());
            let mut old = cache.entries.drain(..).enumerate().peekable();
            for (n, (id, s)) in world.iter().enumerate() {
                let entry = match next_with_id(&mut old, id, |(_, e)| e.id) {
                    Some((i, mut e)) => {
                        // A world holds fewer than u32::MAX entities (ids are u32).
                        cache.from.push(i as u32);
                        while walked.next_if(|&w| w < i as u32).is_some() {}
                        let moved_in_walk = walked.next_if(|&w| w == i as u32).is_some();
                        if e.refresh(s, quantize) || moved_in_walk {
                            cache.moved.push(n as u32);
                        }
                        e
                    }
                    None => {
                        cache.from.push(CAME);
                        CachedEntity {
                            id,
                            transform: s.transform,
                            quantized: quantize(s, None),
                        }
                    }
                };
                entries.push(entry);
            }
            drop(old);
            cache.spare = std::mem::replace(&mut cache.entries, entries);
            entities.clear();
            // (With room to the next power of two, as in `refresh_in_place`.)
            entities.reserve(cache.entries.len().next_power_of_two());
            entities.extend(cache.entries.iter().map(|e| (e.id, e.quantized.clone())));
        }
        let entities = Arc::new(entities);
        cache.built.push_back(Arc::clone(&entities));
        // Every world still held elsewhere stays tracked (its memory is in use anyway, and
        // comes free once its holder lets go: a server keeps more worlds the more phases
        // its send interval has), and the newest few free ones.
        let mut free = cache
            .built
            .iter()
            .filter(|w| Arc::strong_count(w) == 1)
            .count();
        cache.built.retain(|w| {
            let held = Arc::strong_count(w) > 1;
            free -= usize::from(!held);
            held || free < FREE_WORLDS_KEPT
        });
        while cache.built.len() > WORLDS_TRACKED {
            cache.built.pop_front();
        }
        Self { entities }
    }

    /// Build from entities in any order; a later duplicate id replaces an earlier one.
    pub fn from_entities(entities: impl IntoIterator<Item = (EntityId, QuantizedEntity)>) -> Self {
        let map: BTreeMap<_, _> = entities.into_iter().collect();
        Self {
            entities: Arc::new(map.into_iter().collect()),
        }
    }

    /// Turn back into a float world (what the client renders).
    pub fn to_world(&self, config: &QuantizeConfig) -> World {
        let mut world = World::new();
        for (id, q) in self.iter() {
            world.insert(
                id,
                EntityState {
                    transform: config.dequantize(&q.transform),
                    component: q.component.as_deref().map(<[u8]>::to_vec),
                },
            );
        }
        world
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// True when there are no entities.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// The entities, sorted by id.
    pub fn entities(&self) -> &[(EntityId, QuantizedEntity)] {
        &self.entities
    }

    /// All entities in id order.
    pub fn iter(&self) -> impl Iterator<Item = (EntityId, &QuantizedEntity)> {
        self.entities.iter().map(|(id, e)| (*id, e))
    }

    /// Position of `id` in [`Self::entities`].
    pub fn index_of(&self, id: EntityId) -> Option<usize> {
        self.entities.binary_search_by_key(&id, |(i, _)| *i).ok()
    }

    /// The quantized state of one entity.
    pub fn get(&self, id: EntityId) -> Option<&QuantizedEntity> {
        self.index_of(id).map(|i| &self.entities[i].1)
    }

    /// Which value this is: equal for clones of one world, different for separately built
    /// worlds (even with equal contents). Lets the server see that clients hold the same
    /// world without comparing it.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.entities) as usize
    }

    /// This world with `changes` (sorted by id, each id once) applied, written in the memory
    /// of `spare` when no one else holds it (else in new memory): a receiver gives each
    /// snapshot it completes the memory of one it let go.
    pub(crate) fn apply_into(
        &self,
        changes: &[Change],
        spare: Option<QuantizedWorld>,
    ) -> QuantizedWorld {
        Self::patched(self.entities.iter().map(|(id, e)| (*id, e)), changes, spare)
    }

    /// The world `base` (sorted by id, each id once) with `changes` (the same) applied,
    /// written in the memory of `spare` when no one else holds it.
    pub(crate) fn patched<'a>(
        base: impl ExactSizeIterator<Item = (EntityId, &'a QuantizedEntity)>,
        changes: &[Change],
        spare: Option<QuantizedWorld>,
    ) -> QuantizedWorld {
        let mut entities = spare
            .and_then(|mut w| w.is_unique().then_some(w.entities))
            .unwrap_or_else(|| Arc::new(Vec::with_capacity(base.len() + changes.len())));
        // Just made, or checked above to be held by no one else.
        if let Some(out) = Arc::get_mut(&mut entities) {
            out.clear();
            let mut base = base.peekable();
            for (id, change) in changes {
                while let Some((bid, e)) = base.next_if(|(bid, _)| bid < id) {
                    out.push((bid, e.clone()));
                }
                base.next_if(|(bid, _)| bid == id);
                if let Some(e) = change {
                    out.push((*id, e.clone()));
                }
            }
            out.extend(base.map(|(id, e)| (id, e.clone())));
        }
        QuantizedWorld { entities }
    }

    /// Whether no one else holds this world's memory (so it could be written again).
    pub(crate) fn is_unique(&mut self) -> bool {
        Arc::get_mut(&mut self.entities).is_some()
    }
}

/// The server's world of one send tick, with the send tick at which each of its entities
/// last changed: what clients' scopes are views of.
#[derive(Clone, Debug)]
pub(crate) struct TickWorld {
    pub(crate) world: QuantizedWorld,
    pub(crate) tick: Tick,
    /// By index in `world`: how many ticks before `tick` the entity's quantized state last
    /// changed (at most [`MAX_CHANGE_AGE`]): the same in every world the server built since,
    /// so a client holding it from a world that many ticks old or newer holds its current
    /// state. One byte an entity, so that the 10,000 of a large world stay in the first-level
    /// cache while every client's merge reads them (docs/BENCHMARKS.md).
    pub(crate) changed: Arc<Vec<u8>>,
    /// The ids of `world`, in order: the same `Arc` as the previous tick's while the world
    /// holds the same entities, so two views whose worlds share it name entities by the
    /// same indices, and their indices compare as their ids do.
    pub(crate) ids: Arc<Vec<EntityId>>,
}

/// The oldest change age a [`TickWorld`] tells apart: an entity that changed longer ago is
/// counted as changed this many ticks ago, so a client whose baseline is older still has
/// its states compared (and finds them the same).
pub(crate) const MAX_CHANGE_AGE: u8 = u8::MAX;

/// Whether an entity of change age `age` may hold another state than in the world `ticks`
/// older: it changed since then. One that did not is skipped without reading its states.
#[inline(always)]
pub(crate) fn changed_within(age: u8, ticks: u32) -> bool {
    u32::from(age) < ticks
}

/// Change ages `ticks` later, saturating at [`MAX_CHANGE_AGE`].
fn aged(age: u8, ticks: u32) -> u8 {
    u8::try_from(ticks).map_or(MAX_CHANGE_AGE, |t| age.saturating_add(t))
}

impl TickWorld {
    /// The world of send tick `tick`, with change ages found against `previous` (the world
    /// the server built before, if any).
    pub(crate) fn new(world: QuantizedWorld, tick: Tick, previous: Option<&TickWorld>) -> Self {
        let mut changed = Vec::with_capacity(world.len());
        // The ids, gathered in the walk that reads each entity anyway; kept only when they
        // differ from the previous world's.
        let mut ids = Vec::with_capacity(world.len());
        // How many of this world's entities the previous world holds.
        let mut kept = 0;
        match previous {
            Some(p) => {
                let later = tick.0.wrapping_sub(p.tick.0);
                // Both are sorted by id: one merge walk, not a search per entity.
                let mut before = p.world.entities().iter().zip(p.changed.iter()).peekable();
                for (id, e) in world.entities() {
                    ids.push(*id);
                    let found = next_with_id(&mut before, *id, |((p, _), _)| *p);
                    kept += usize::from(found.is_some());
                    changed.push(match found {
                        Some(((_, old), &age)) if old == e => aged(age, later),
                        _ => 0,
                    });
                }
            }
            None => {
                changed.resize(world.len(), 0);
                ids.extend(world.entities().iter().map(|(id, _)| *id));
            }
        }
        let ids = match previous {
            // Every entity of each is in the other: the same ids, in the same order.
            Some(p) if kept == world.len() && kept == p.world.len() => p.ids.clone(),
            _ => Arc::new(ids),
        };
        Self {
            world,
            tick,
            changed: Arc::new(changed),
            ids,
        }
    }

    /// The world of send tick `tick` quantized by a cache that quantized `previous`'s world
    /// in its call before, and found the same entities there and the ones at `moved` moved
    /// (see [`QuantizeCache::moved`]): they changed now, the others' changes age. A copy
    /// and a few thousand writes, where [`Self::new`] compares every entity.
    pub(crate) fn moved_on(
        world: QuantizedWorld,
        tick: Tick,
        previous: &TickWorld,
        moved: &[u32],
    ) -> Self {
        debug_assert_eq!(world.len(), previous.world.len());
        let later = tick.0.wrapping_sub(previous.tick.0);
        let mut changed: Vec<u8> = previous.changed.iter().map(|&a| aged(a, later)).collect();
        for &i in moved {
            if let Some(a) = changed.get_mut(i as usize) {
                *a = 0;
            }
        }
        Self {
            world,
            tick,
            changed: Arc::new(changed),
            ids: previous.ids.clone(),
        }
    }

    /// The world of send tick `tick` quantized by a cache that quantized `previous`'s world
    /// in its call before and found entities came or went (see [`QuantizeCache::carried`]):
    /// each entity that was there keeps its change, aged, unless it is in `moved`, and the
    /// others (moved or came) changed now. A lookup an entity, where [`Self::new`] compares
    /// every entity's state.
    pub(crate) fn carried_on(
        world: QuantizedWorld,
        tick: Tick,
        previous: &TickWorld,
        (from, from_len, moved): (&[u32], usize, &[u32]),
    ) -> Self {
        debug_assert_eq!((from.len(), from_len), (world.len(), previous.world.len()));
        let later = tick.0.wrapping_sub(previous.tick.0);
        let mut changed: Vec<u8> = from
            .iter()
            .map(|&o| {
                previous
                    .changed
                    .get(o as usize)
                    .map_or(0, |&a| aged(a, later))
            })
            .collect();
        for &i in moved {
            if let Some(a) = changed.get_mut(i as usize) {
                *a = 0;
            }
        }
        let ids = Arc::new(world.entities().iter().map(|(id, _)| *id).collect());
        Self {
            world,
            tick,
            changed: Arc::new(changed),
            ids,
        }
    }

    /// Whether `self` and `other` hold the same entities in the same order (by identity of
    /// their ids: one check, not a walk).
    pub(crate) fn same_layout(&self, other: &TickWorld) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids)
    }

    /// How many entities changed since the previous world (those whose change age is 0).
    pub(crate) fn changed_now(&self) -> usize {
        self.changed.iter().filter(|&&a| a == 0).count()
    }

    /// The view of the entities `picks` names: indices in this world, increasing (so their
    /// ids increase too).
    pub(crate) fn view(&self, picks: Arc<Vec<u32>>) -> WorldView {
        debug_assert!(picks.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(
            picks
                .last()
                .is_none_or(|&i| (i as usize) < self.world.len())
        );
        WorldView {
            of: self.clone(),
            picks,
        }
    }
}

/// Some entities of a [`TickWorld`] — one client's scope — named by index, not copied: a
/// scope of a few hundred entities is a few kilobytes of indices instead of tens of
/// kilobytes of states, and a sender comparing two views of the server's worlds reads the
/// states only of entities whose change age says they moved.
#[derive(Clone, Debug)]
pub(crate) struct WorldView {
    pub(crate) of: TickWorld,
    /// The index in `of.world` of each entity in view, increasing; `of.ids` has their ids.
    pub(crate) picks: Arc<Vec<u32>>,
}

impl WorldView {
    /// The entities in view as a world of their own (a copy).
    pub(crate) fn to_world(&self) -> QuantizedWorld {
        let all = self.of.world.entities();
        QuantizedWorld {
            entities: Arc::new(
                self.picks
                    .iter()
                    .map(|&i| all[i as usize].clone())
                    .collect(),
            ),
        }
    }
}

/// The least number of entities a thread walks in [`QuantizedWorld::from_world_cached_on`],
/// so that a small world is walked on the calling thread alone, without waking another.
#[cfg(not(test))]
const MIN_WALK_RUN: usize = 2048;
/// (Runs of a few entities in tests, whose worlds are small.)
#[cfg(test)]
const MIN_WALK_RUN: usize = 4;

/// The usual tick of [`QuantizedWorld::from_world_cached_on`]: when the world holds the
/// entities of `cache`, in order, update each entry in place and write the new world into
/// `entities`, in runs over `pool`'s threads and the calling one. Returns whether the ids
/// matched; either way `cache.moved` lists (increasing) the entries whose quantized state
/// changed, by their index among the entries, which is their index in the world when the
/// ids matched.
fn refresh_in_place<Q>(
    world: &World,
    quantize: &Q,
    cache: &mut QuantizeCache,
    entities: &mut Vec<(EntityId, QuantizedEntity)>,
    pool: Option<&rayon::ThreadPool>,
) -> bool
where
    Q: Fn(&EntityState, Option<&CachedEntity>) -> QuantizedEntity + Sync,
{
    let n = cache.entries.len();
    if entities.len() != n {
        entities.clear();
        // Room to the next power of two: a world a few entities larger (a player who
        // joined) is then still built in this memory, not in a new allocation.
        entities.reserve(n.next_power_of_two());
        entities.resize_with(n, Default::default);
    }
    let threads = pool.map_or(1, |p| p.current_num_threads() + 1);
    let size = n.div_ceil(threads.min(n / MIN_WALK_RUN).max(1)).max(1);
    // The runs of that size there are (none in an empty world), each with its list.
    let runs = n.div_ceil(size);
    cache.walk_moved.resize_with(runs, Vec::new);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let mut jobs = cache
        .entries
        .chunks_mut(size)
        .zip(entities.chunks_mut(size))
        .zip(&mut cache.walk_moved)
        .enumerate()
        .map(|(r, ((entries, out), moved))| {
            let failed = &failed;
            move || {
                if !refresh_run(world, quantize, r * size, entries, out, moved) {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    match pool {
        Some(pool) if runs > 1 => pool.in_place_scope(|scope| {
            let here = jobs.next();
            for job in jobs {
                scope.spawn(move |_| {
                    let mut job = job;
                    job()
                });
            }
            if let Some(mut job) = here {
                job();
            }
        }),
        _ => jobs.for_each(|mut job| job()),
    }
    for moved in &cache.walk_moved {
        cache.moved.extend_from_slice(moved);
    }
    !failed.into_inner()
}

/// One run of [`refresh_in_place`]: `entries`, from entry `start` on, against the world
/// from the first entry's id, each written to `out`; `moved` gets those whose quantized
/// state changed. Stops, returning false, at the first id that differs.
#[inline(always)]
fn refresh_run(
    world: &World,
    quantize: &impl Fn(&EntityState, Option<&CachedEntity>) -> QuantizedEntity,
    start: usize,
    entries: &mut [CachedEntity],
    out: &mut [(EntityId, QuantizedEntity)],
    moved: &mut Vec<u32>,
) -> bool {
    moved.clear();
    let Some(first) = entries.first() else {
        return true;
    };
    let mut walk = world.entities.range(first.id..);
    for (i, (e, o)) in entries.iter_mut().zip(out).enumerate() {
        let Some((&id, s)) = walk.next() else {
            return false;
        };
        if e.id != id {
            return false;
        }
        if e.refresh(s, quantize) {
            // A world holds fewer than u32::MAX entities (ids are u32).
            moved.push((start + i) as u32);
        }
        *o = (id, e.quantized.clone());
    }
    true
}

/// The item of `walk` (sorted by id) with id `id`, if there is one, skipping those before
/// it: looking up ids in increasing order this way is one walk, not a search per id.
pub(crate) fn next_with_id<I: Iterator>(
    walk: &mut std::iter::Peekable<I>,
    id: EntityId,
    id_of: impl Fn(&I::Item) -> EntityId,
) -> Option<I::Item> {
    while walk.next_if(|item| id_of(item) < id).is_some() {}
    walk.next_if(|item| id_of(item) == id)
}

/// Merges `older` and `newer`, each sorted by id with each id once, into `out` (cleared
/// first), in the same order: where both change an id, `newer`'s change stands. `each` is
/// shown every change of `newer` with the change of `older` it replaces, if any.
pub(crate) fn merge_changes(
    older: &[Change],
    newer: &[Change],
    out: &mut Vec<Change>,
    mut each: impl FnMut(&Change, Option<&Change>),
) {
    out.clear();
    out.reserve(older.len() + newer.len());
    let mut old = older.iter().peekable();
    for c in newer {
        while let Some(o) = old.next_if(|o| o.0 < c.0) {
            out.push(o.clone());
        }
        let replaced = old.next_if(|o| o.0 == c.0);
        each(c, replaced);
        out.push(c.clone());
    }
    out.extend(old.cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(x: u32) -> QuantizedEntity {
        let mut e = QuantizedEntity::default();
        e.transform.position = [x, 0, 0];
        e
    }

    /// Entities 0..100 of `world`, each at x = its id + `t`: at every `t`, all of them move.
    fn move_all(world: &mut World, t: u32) {
        for i in 0..100u32 {
            let position = Vec3::new((i + t) as f32, 0.0, 0.0);
            let state = EntityState::new(Transform {
                position,
                ..Transform::default()
            });
            world.insert(EntityId(i), state);
        }
    }

    #[test]
    fn a_cache_builds_in_worlds_no_one_holds_and_never_in_held_ones() {
        let config = QuantizeConfig::default();
        let mut cache = QuantizeCache::default();
        let mut world = World::new();
        let step = |world: &mut World, cache: &mut QuantizeCache, t: u32| {
            move_all(world, t);
            QuantizedWorld::from_world_cached(world, &config, cache)
        };
        let held: Vec<QuantizedWorld> = (0..3).map(|t| step(&mut world, &mut cache, t)).collect();
        let copies: Vec<QuantizedWorld> = held
            .iter()
            .map(|w| QuantizedWorld::from_entities(w.entities().iter().cloned()))
            .collect();
        let mut buffers = std::collections::HashSet::new();
        for t in 3..30 {
            let w = step(&mut world, &mut cache, t);
            assert!(
                held.iter()
                    .all(|h| h.entities().as_ptr() != w.entities().as_ptr())
            );
            buffers.insert(w.entities().as_ptr());
        }
        assert_eq!(held, copies, "held worlds are untouched");
        // Dropped worlds lend their memory: a couple of buffers serve 27 worlds.
        assert!(buffers.len() <= 3, "{} buffers", buffers.len());
    }

    /// Of the free worlds, the next is built in the newest, let go of last (the likeliest
    /// to be still in a cache), not in the one kept longest.
    #[test]
    fn a_cache_builds_in_the_world_let_go_of_last() {
        let config = QuantizeConfig::default();
        let mut cache = QuantizeCache::default();
        let mut world = World::new();
        let mut step = |t: u32| {
            move_all(&mut world, t);
            QuantizedWorld::from_world_cached(&world, &config, &mut cache)
        };
        let (first, second, third) = (step(0), step(1), step(2));
        let second_at = second.entities().as_ptr();
        // Let go of the first world, then of the second: both are free, the second newer.
        drop(first);
        drop(second);
        let next = step(3);
        assert_eq!(
            next.entities().as_ptr(),
            second_at,
            "built in the world let go of last"
        );
        assert_ne!(next.entities().as_ptr(), third.entities().as_ptr());
    }

    /// A holder that keeps the last 24 worlds (a server's shared-code history at three
    /// phases of the send interval) and lets go of the oldest each tick: the cache still
    /// holds the memory of the world let go (the allocator never gets it back) and builds
    /// the next world in it, however many worlds are held.
    #[test]
    fn a_cache_reuses_the_world_let_go_behind_a_long_history() {
        let config = QuantizeConfig::default();
        let mut cache = QuantizeCache::default();
        let mut world = World::new();
        let mut history: VecDeque<QuantizedWorld> = VecDeque::new();
        for t in 0..200u32 {
            move_all(&mut world, t);
            let let_go = (history.len() >= 24)
                .then(|| history.pop_front())
                .flatten()
                .map(|w| w.entities().as_ptr());
            if let Some(p) = let_go {
                assert!(
                    cache.built.iter().any(|b| b.as_ptr() == p),
                    "tick {t}: the world let go is the cache's to reuse"
                );
            }
            let w = QuantizedWorld::from_world_cached(&world, &config, &mut cache);
            if let Some(p) = let_go {
                assert_eq!(w.entities().as_ptr(), p, "tick {t}: built in its memory");
            }
            history.push_back(w);
        }
        assert!(cache.built.len() <= 24 + 1 + FREE_WORLDS_KEPT);
    }

    /// A holder keeps the last 8 worlds and lets go of the oldest each tick, but now and
    /// then keeps one, or two at once, a few ticks longer (a client's baseline whose acks
    /// were lost), and the world grows by a few entities (players joining). Once the cache
    /// has made its spares, every world is built in memory it already had, with room
    /// enough: none in memory new to the process.
    #[test]
    fn a_cache_builds_in_its_own_memory_when_worlds_are_held_longer() {
        let config = QuantizeConfig::default();
        let mut cache = QuantizeCache::default();
        let mut world = World::new();
        let mut history: VecDeque<QuantizedWorld> = VecDeque::new();
        // Worlds held beyond the history, each with the tick it is let go at.
        let mut late: Vec<(u32, QuantizedWorld)> = Vec::new();
        let mut fresh = Vec::new();
        let mut held_longer = 0;
        for t in 0..400u32 {
            move_all(&mut world, t);
            // Ten players join at tick 200, one at a time.
            for id in 100..(100 + t.saturating_sub(199).min(10)) {
                world.insert(EntityId(id), EntityState::default());
            }
            let memory: Vec<(*const (EntityId, QuantizedEntity), usize)> = cache
                .built
                .iter()
                .map(|b| (b.as_ptr(), b.capacity()))
                .collect();
            let stocked = cache.stocked;
            let w = QuantizedWorld::from_world_cached(&world, &config, &mut cache);
            let mine = (w.entities.as_ptr(), w.entities.capacity());
            if stocked && !memory.contains(&mine) {
                fresh.push(t);
            }
            history.push_back(w);
            late.retain(|(until, _)| *until > t);
            if history.len() > 8
                && let Some(oldest) = history.pop_front()
            {
                // Every 50 ticks, one world held three ticks longer (tick 20 of the 50),
                // and two at once (ticks 45 and 46, each held four ticks longer).
                if t % 50 == 20 || t % 50 == 45 || t % 50 == 46 {
                    held_longer += 1;
                    late.push((t + 3 + u32::from(t % 50 != 20), oldest));
                }
            }
        }
        assert!(cache.stocked, "spares made");
        assert_eq!(held_longer, 24);
        assert_eq!(fresh, Vec::<u32>::new(), "ticks that built in new memory");
    }

    #[test]
    fn change_ages_count_the_ticks_since_a_change_and_stop_at_the_oldest_told_apart() {
        let world = |xs: [u32; 3]| {
            QuantizedWorld::from_entities((0..3).map(|i| (EntityId(i), q(xs[i as usize]))))
        };
        let first = TickWorld::new(world([0, 0, 0]), Tick(1), None);
        assert_eq!(*first.changed, [0, 0, 0], "new entities changed now");
        // Entity 1 moves at tick 4; the others keep their states. Built by comparison and
        // from the cache's moves, the same ages.
        let compared = TickWorld::new(world([0, 5, 0]), Tick(4), Some(&first));
        let moved = TickWorld::moved_on(world([0, 5, 0]), Tick(4), &first, &[1]);
        assert_eq!(*compared.changed, [3, 0, 3]);
        assert_eq!(compared.changed, moved.changed);
        // 300 ticks on, entity 2 moves: ages beyond the oldest told apart stay there.
        let later = TickWorld::new(world([0, 5, 7]), Tick(304), Some(&compared));
        assert_eq!(*later.changed, [MAX_CHANGE_AGE, MAX_CHANGE_AGE, 0]);
        let carried = TickWorld::carried_on(
            world([0, 5, 7]),
            Tick(304),
            &compared,
            (&[0, 1, 2], 3, &[2]),
        );
        assert_eq!(later.changed, carried.changed);
        assert_eq!(aged(250, 3), 253);
        assert_eq!(aged(250, 6), MAX_CHANGE_AGE);
        assert_eq!(aged(0, 1 << 20), MAX_CHANGE_AGE);
    }

    #[test]
    fn tick_worlds_share_their_ids_while_they_hold_the_same_entities() {
        let world = |ids: &[u32], x: u32| {
            QuantizedWorld::from_entities(ids.iter().map(|&i| (EntityId(i), q(i + x))))
        };
        let mut previous = TickWorld::new(world(&[1, 2, 3], 0), Tick(1), None);
        // (ids, same layout as the world before)
        let steps: [(&[u32], bool); 6] = [
            (&[1, 2, 3], true),
            (&[1, 2, 4], false),
            (&[1, 2, 4], true),
            (&[1, 2], false),
            (&[0, 1, 2], false),
            (&[0, 1, 2], true),
        ];
        for (t, (ids, same)) in steps.into_iter().enumerate() {
            // Every entity moves: the layout is the ids alone.
            let next = TickWorld::new(
                world(ids, t as u32 + 1),
                Tick(t as u32 + 2),
                Some(&previous),
            );
            assert_eq!(next.same_layout(&previous), same, "step {t}");
            assert_eq!(
                *next.ids,
                ids.iter().map(|&i| EntityId(i)).collect::<Vec<_>>()
            );
            previous = next;
        }
    }

    #[test]
    fn apply_merges_updates_spawns_and_despawns() {
        let w = QuantizedWorld::from_entities([(EntityId(1), q(1)), (EntityId(3), q(3))]);
        // Two parts' changes: the later one's change of an id stands.
        let older = [
            (EntityId(1), None),
            (EntityId(3), Some(q(30))),
            (EntityId(5), Some(q(5))),
        ];
        let newer = [(EntityId(0), Some(q(0))), (EntityId(5), Some(q(50)))];
        let (mut changes, mut replaced) = (Vec::new(), Vec::new());
        merge_changes(&older, &newer, &mut changes, |c, r| {
            replaced.push((c.0, r.map(|r| r.0)));
        });
        assert_eq!(
            replaced,
            [(EntityId(0), None), (EntityId(5), Some(EntityId(5)))]
        );
        let out = w.apply_into(&changes, None);
        let want = QuantizedWorld::from_entities([
            (EntityId(0), q(0)),
            (EntityId(3), q(30)),
            (EntityId(5), q(50)),
        ]);
        assert_eq!(out, want);
        // The original is untouched.
        assert_eq!(w.len(), 2);

        // A spare no one else holds is written over; one still held is left alone.
        let mut spare = w.apply_into(&[], None);
        assert!(spare.is_unique());
        let at = spare.identity();
        let again = w.apply_into(&changes, Some(spare));
        assert_eq!((again.identity(), &again), (at, &want));
        let held = again.clone();
        let fresh = w.apply_into(&[], Some(again));
        assert_ne!(fresh.identity(), at);
        assert_eq!((&fresh, &held), (&w, &want));
    }

    /// The tick world after `previous` of the world `cache` just quantized (`cached`), built
    /// as a server builds it, with the cache's moves where it has them: those are checked
    /// against the change ages a comparison of the whole worlds finds. Whether the moves
    /// were used, and how many there were.
    fn next_tick_world(
        cached: &QuantizedWorld,
        cache: &QuantizeCache,
        previous: Option<&TickWorld>,
    ) -> (TickWorld, Option<usize>) {
        let tick = Tick(previous.map_or(1, |p| p.tick.0 + 1));
        let compared = TickWorld::new(cached.clone(), tick, previous);
        if let (Some(previous), Some(carried)) = (previous, cache.carried()) {
            // Entities came or went: where each one was, and which moved, give the change
            // ticks a comparison gives.
            assert!(cache.moved().is_none());
            assert!(!compared.same_layout(previous));
            let by_carry = TickWorld::carried_on(cached.clone(), tick, previous, carried);
            assert_eq!(by_carry.changed, compared.changed, "tick {}", tick.0);
            assert_eq!(by_carry.ids, compared.ids);
            return (by_carry, None);
        }
        let (Some(previous), Some(moved)) = (previous, cache.moved()) else {
            return (compared, None);
        };
        assert!(
            compared.same_layout(previous),
            "moves without the same entities"
        );
        let by_moves = TickWorld::moved_on(cached.clone(), tick, previous, moved);
        assert_eq!(by_moves.changed, compared.changed, "tick {}", tick.0);
        assert!(by_moves.same_layout(&compared));
        (by_moves, Some(moved.len()))
    }

    #[test]
    fn the_cache_quantizes_exactly_what_a_fresh_quantization_gives() {
        cache_quantizes_as_a_fresh_quantization(None);
    }

    /// The same, with the walk of the same entities shared out over two threads in runs
    /// of a few entities each: a run after an entity that went or came walks the world
    /// from its own first id, so it may find its ids there at other places.
    #[test]
    fn a_cache_walked_in_runs_on_several_threads_quantizes_the_same() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool");
        cache_quantizes_as_a_fresh_quantization(Some(&pool));
    }

    fn cache_quantizes_as_a_fresh_quantization(pool: Option<&rayon::ThreadPool>) {
        use rand::{Rng, SeedableRng};
        let quantize = |world: &World, config: &QuantizeConfig, cache: &mut QuantizeCache| {
            QuantizedWorld::from_world_cached_on(world, config, cache, pool)
        };
        let config = QuantizeConfig::default();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let mut cache = QuantizeCache::default();
        let mut world = World::new();
        // The tick worlds a server would build from the cache's worlds, and how often the
        // cache's moves built them: (calls, with moves, with none).
        let mut previous: Option<TickWorld> = None;
        let mut by_moves = (0, 0, 0);
        // Calls where entities came or went, whose tick worlds the cache's record of where
        // each entity was built.
        let mut carried = 0;
        let mut follow = |cached: &QuantizedWorld, cache: &QuantizeCache| {
            carried += usize::from(previous.is_some() && cache.carried().is_some());
            let (next, moved) = next_tick_world(cached, cache, previous.as_ref());
            if let Some(n) = moved {
                by_moves.0 += 1;
                by_moves.1 += usize::from(n > 0);
                by_moves.2 += usize::from(n == 0);
            }
            previous = Some(next);
        };
        for round in 0..300 {
            // Entities come and go, some move, some change their component, one is NaN.
            for _ in 0..rng.random_range(0..20) {
                let id = EntityId(rng.random_range(0..60));
                if rng.random_bool(0.2) {
                    world.remove(id);
                    continue;
                }
                let x = if rng.random_bool(0.02) {
                    f32::NAN
                } else {
                    rng.random_range(-50.0..50.0)
                };
                let component = rng.random_bool(0.3).then(|| vec![rng.random::<u8>(); 3]);
                world.insert(
                    id,
                    EntityState {
                        transform: Transform {
                            position: Vec3::new(x, 1.0, -0.0),
                            rotation: Quat::from_rotation_y(rng.random_range(-3.0..3.0)),
                            velocity: rng.random_bool(0.5).then_some(Vec3::X),
                        },
                        component,
                    },
                );
            }
            let cached = quantize(&world, &config, &mut cache);
            assert_eq!(
                cached,
                QuantizedWorld::from_world(&world, &config),
                "round {round}"
            );
            follow(&cached, &cache);
            // The same entities, a few of them moved: the in-place path.
            let ids: Vec<EntityId> = world
                .iter()
                .map(|(id, _)| id)
                .filter(|_| rng.random_bool(0.3))
                .collect();
            for id in ids {
                if let Some(e) = world.get_mut(id) {
                    match rng.random_range(0..3) {
                        0 => e.transform.position.y += 0.25,
                        // Other floats that quantize alike: quantized again, not moved.
                        1 => e.transform.position.y += 1e-5,
                        // Only the component changes.
                        _ => e.component = Some(vec![round as u8, 1]),
                    }
                }
            }
            let cached = quantize(&world, &config, &mut cache);
            assert_eq!(
                cached,
                QuantizedWorld::from_world(&world, &config),
                "moved {round}"
            );
            follow(&cached, &cache);
            // Nothing changed: nothing moved.
            let cached = quantize(&world, &config, &mut cache);
            assert_eq!(cache.moved(), Some(&[][..]), "unchanged {round}");
            follow(&cached, &cache);
            // As many entities as before, entity `gone` replaced by a new `came`: the walk in
            // place stops where the ids differ, and the merge takes over.
            let mut replace = |world: &mut World, gone: EntityId, came: EntityId, what: &str| {
                if let Some(state) = world.remove(gone) {
                    world.insert(came, state);
                }
                let cached = quantize(world, &config, &mut cache);
                let fresh = QuantizedWorld::from_world(world, &config);
                assert_eq!(cached, fresh, "{what} {round}");
                assert_eq!(cache.moved(), None, "{what} {round}");
                follow(&cached, &cache);
                world.remove(came);
            };
            // The first moved and the last replaced: the walk updates the first and stops
            // at the last.
            let ids: Vec<EntityId> = world.iter().map(|(id, _)| id).collect();
            if let [first, .., last] = ids[..] {
                if let Some(e) = world.get_mut(first) {
                    e.transform.position.x += 0.5;
                }
                replace(&mut world, last, EntityId(100 + round), "replaced");
            }
            // One in the middle replaced by a new last one, and those after it moved: a run
            // that starts after it finds its ids one place earlier.
            let ids: Vec<EntityId> = world.iter().map(|(id, _)| id).collect();
            if ids.len() >= 3 {
                let middle = ids.len() / 2;
                for &id in &ids[middle..] {
                    if let Some(e) = world.get_mut(id) {
                        e.transform.position.z += 0.5;
                    }
                }
                replace(&mut world, ids[middle], EntityId(200 + round), "middle");
            }
        }
        // Another config starts afresh, and is not compared with the world before.
        let other = QuantizeConfig {
            position_resolution_m: 0.01,
            ..config
        };
        let cached = quantize(&world, &other, &mut cache);
        assert_eq!(cached, QuantizedWorld::from_world(&world, &other));
        assert_eq!(cache.moved(), None);
        assert_eq!(cache.carried(), None);
        assert!(
            carried >= 300,
            "{carried} calls with entities that came or went"
        );
        // Most calls found the same entities; their moves built the tick worlds, some with
        // none at all.
        let (calls, moved, unmoved) = by_moves;
        assert!(
            calls >= 600 && moved >= 200 && unmoved >= 300,
            "{calls} by moves, {moved} with some, {unmoved} with none"
        );
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Health(u16);

    #[test]
    fn typed_component_round_trips() {
        let s = EntityState::with_component(Transform::default(), &Health(75)).unwrap();
        assert_eq!(s.component_as::<Health>().unwrap().unwrap(), Health(75));
        assert!(EntityState::default().component_as::<Health>().is_none());
    }
}
