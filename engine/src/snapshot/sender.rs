//! Server side, one per client: delta against the newest fully acked tick, a byte budget
//! ranked by the priority accumulator, and the split into independently decodable parts.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::SnapshotError;
use super::bits::{BitString, BitWriter};
use super::part::{
    self, EncodeScratch, EntityDelta, MAX_INDEX_BITS, MAX_PARTS_PER_SNAPSHOT, PART_OVERHEAD_BITS,
    PartHeader,
};
use super::priority::PriorityAccumulator;
use super::quantize::{Limits, QuantizeConfig};
use super::shared::{SharedDelta, SharedDeltas, SharedLookup, SharedSection};
use super::world::{
    Change, EntityId, QuantizedEntity, QuantizedWorld, Tick, WorldView, changed_within,
};
use crate::Sequence;
use crate::prefetch;

/// Sender settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SenderConfig {
    /// Must equal the receiver's.
    pub quantize: QuantizeConfig,
    /// Largest part in bytes (default 1100: one datagram with room for the packet header
    /// under a 1200-byte path MTU budget). At most 2000.
    pub max_part_bytes: usize,
    /// How many ticks of sent history are kept, and so the oldest usable baseline
    /// (default 64: just over 1 s at 60 Hz). The receiver's ring must be at least as long.
    pub ring_ticks: u32,
    /// How much faster a spawn gains priority than a change (default 4), so new entities
    /// appear promptly under a tight budget.
    pub spawn_boost: f32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            quantize: QuantizeConfig::default(),
            max_part_bytes: 1100,
            ring_ticks: 64,
            spawn_boost: 4.0,
        }
    }
}

/// Running totals of what the sender produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Snapshots built (one per `build`).
    pub snapshots: u64,
    /// Snapshots built against the empty world (no usable baseline).
    pub full_snapshots: u64,
    /// Parts built.
    pub parts: u64,
    /// Bytes of all parts built.
    pub bytes: u64,
    /// Changed or spawned entities included.
    pub entities_sent: u64,
    /// Despawns included.
    pub despawns_sent: u64,
    /// Bits of the entity payloads (fields only, no headers or indices).
    pub entity_payload_bits: u64,
    /// Times [`SnapshotSender::reset_baseline`] was called.
    pub resets: u64,
    /// Entities that differed from the baseline but waited for budget (summed over ticks).
    pub entities_deferred: u64,
    /// Updates sent again at the state a snapshot still in flight gave them, in place of
    /// the newer one that waits for budget (counted in `entities_sent` too): left out, the
    /// client would draw them back at the baseline's older state.
    pub entities_repeated: u64,
    /// Entities too large to fit in any part (never sent).
    pub entities_oversized: u64,
    /// Entities whose encoding another client's snapshot of the same tick had already made
    /// (clients with their own scopes, when the server shares encodings).
    pub entities_shared: u64,
}

/// What was sent at one tick, enough to rebuild the composite the client will hold.
#[derive(Debug, Clone)]
struct SentTick {
    tick: Tick,
    /// What the client will hold once every part arrives.
    holds: Holds,
    /// How many parts the tick went out in (at most [`MAX_PARTS_PER_SNAPSHOT`]).
    parts: usize,
    /// One bit per part acknowledged (a bitmap, not a list: no allocation per tick).
    part_acked: [u64; MAX_PARTS_PER_SNAPSHOT / 64],
    acked_parts: usize,
}

/// The world a client holds once every part of a tick arrived.
#[derive(Debug, Clone)]
enum Holds {
    /// The baseline with the changes sent (sorted by id: `Some` = new state, `None` =
    /// despawn): some differences waited for budget.
    Patched {
        baseline: ClientWorld,
        changes: Vec<Change>,
        /// The world the snapshot was cut from, kept only to be let go with it: its scope
        /// list, which the client's scope holds until its next one, then goes back to the
        /// spares (a sender whose budget binds sends such a snapshot every time, and would
        /// need a new list each time).
        cut_from: ClientWorld,
    },
    /// Exactly the world of that tick: every difference was sent. Such a baseline is the
    /// same for every client that holds it, so a snapshot against it can be shared.
    Whole(ClientWorld),
}

impl Holds {
    /// The state of entity `id` the client will hold once every part of the tick arrives.
    fn state_of(&self, id: EntityId) -> Option<&QuantizedEntity> {
        match self {
            Holds::Whole(w) => w.state_of(id),
            Holds::Patched {
                baseline, changes, ..
            } => match changes.binary_search_by_key(&id, |c| c.0) {
                Ok(i) => changes[i].1.as_ref(),
                Err(_) => baseline.state_of(id),
            },
        }
    }
}

/// The world one client is sent at a tick, or holds: a world of its own, or a view of the
/// server's world of that tick (the client's scope).
#[derive(Debug, Clone)]
pub(crate) enum ClientWorld {
    Own(QuantizedWorld),
    View(WorldView),
}

impl Default for ClientWorld {
    fn default() -> Self {
        ClientWorld::Own(QuantizedWorld::default())
    }
}

impl ClientWorld {
    pub(crate) fn len(&self) -> usize {
        match self {
            ClientWorld::Own(w) => w.len(),
            ClientWorld::View(v) => v.picks.len(),
        }
    }

    fn id(&self, i: usize) -> EntityId {
        match self {
            ClientWorld::Own(w) => w.entities()[i].0,
            ClientWorld::View(v) => v.of.ids[v.picks[i] as usize],
        }
    }

    /// The state of entity `i`.
    fn state(&self, i: usize) -> &QuantizedEntity {
        match self {
            ClientWorld::Own(w) => &w.entities()[i].1,
            ClientWorld::View(v) => &v.of.world.entities()[v.picks[i] as usize].1,
        }
    }

    /// The state of entity `id`, if this world holds it.
    fn state_of(&self, id: EntityId) -> Option<&QuantizedEntity> {
        match self {
            ClientWorld::Own(w) => w.get(id),
            // A view's picks are indices into its tick's world, in increasing order.
            ClientWorld::View(v) => {
                let g = v.of.world.index_of(id)?;
                v.picks.binary_search(&(g as u32)).ok()?;
                Some(&v.of.world.entities()[g].1)
            }
        }
    }

    /// As a world of its own (a copy, for a view).
    fn to_world(&self) -> QuantizedWorld {
        match self {
            ClientWorld::Own(w) => w.clone(),
            ClientWorld::View(v) => v.to_world(),
        }
    }
}

/// The entities of a [`ClientWorld`] as the sender's merge reads them: sorted by id, their
/// states borrowed for `'w`.
trait Entries<'w> {
    fn count(&self) -> usize;
    /// What the merge orders entity `i` by: its id, or its index in the world of its tick
    /// when both sides are views of one layout (the same order, and no id to read).
    fn key(&self, i: usize) -> u32;
    fn id(&self, i: usize) -> EntityId;
    fn state(&self, i: usize) -> &'w QuantizedEntity;
    /// The index of entity `i` in the world of its tick.
    fn global(&self, i: usize) -> usize;
    /// The world indices this side is keyed by, when it is a view keyed by index.
    fn index_keys(&self) -> Option<&[u32]> {
        None
    }
}

impl<'w> Entries<'w> for &'w [(EntityId, QuantizedEntity)] {
    fn count(&self) -> usize {
        self.len()
    }
    fn key(&self, i: usize) -> u32 {
        self[i].0.0
    }
    fn id(&self, i: usize) -> EntityId {
        self[i].0
    }
    fn state(&self, i: usize) -> &'w QuantizedEntity {
        &self[i].1
    }
    fn global(&self, i: usize) -> usize {
        i
    }
}

/// Ask for the two states of each pair (index in `base`, index in `cur`). Out of line and
/// cold: it runs for a few clients a tick, and leaves the merge's loop as it was.
#[inline(never)]
#[cold]
fn prefetch_states<'w>(base: &impl Entries<'w>, cur: &impl Entries<'w>, pairs: &[(u32, u32)]) {
    for &(bi, wi) in pairs {
        crate::prefetch::value(base.state(bi as usize));
        crate::prefetch::value(cur.state(wi as usize));
    }
}

/// A [`WorldView`]'s entities.
#[derive(Clone, Copy)]
struct Picked<'a> {
    all: &'a [(EntityId, QuantizedEntity)],
    ids: &'a [EntityId],
    picks: &'a [u32],
    /// Keyed by index: the other side of the merge is a view of the same layout.
    by_index: bool,
}

impl<'w> Entries<'w> for Picked<'w> {
    fn count(&self) -> usize {
        self.picks.len()
    }
    fn key(&self, i: usize) -> u32 {
        let g = self.picks[i];
        if self.by_index {
            g
        } else {
            self.ids[g as usize].0
        }
    }
    fn id(&self, i: usize) -> EntityId {
        self.ids[self.picks[i] as usize]
    }
    fn state(&self, i: usize) -> &'w QuantizedEntity {
        &self.all[self.picks[i] as usize].1
    }
    fn global(&self, i: usize) -> usize {
        self.picks[i] as usize
    }
    fn index_keys(&self) -> Option<&[u32]> {
        self.by_index.then_some(self.picks)
    }
}

impl<'a> Picked<'a> {
    /// `v`'s entities, keyed by index when `by_index`.
    fn of(v: &'a WorldView, by_index: bool) -> Self {
        Picked {
            all: v.of.world.entities(),
            ids: &v.of.ids,
            picks: &v.picks,
            by_index,
        }
    }
}

/// How fast each entity gains priority for one client, beyond the weights set on its
/// sender (e.g. by distance to the client).
pub(crate) trait PriorityWeights {
    /// The weight of the entity at `index` of the world being sent.
    fn weight(&self, index: usize) -> f32;
}

/// A snapshot that every client holding the same baseline can be sent as is: it carries
/// every difference between that baseline and the tick's world (nothing waited for budget).
#[derive(Debug, Clone)]
pub(crate) struct SharedSnapshot {
    tick: Tick,
    baseline: Option<BaselineKey>,
    budget_bytes: usize,
    world: QuantizedWorld,
    /// The encoded parts, one per datagram.
    pub(crate) parts: Parts,
    /// This snapshot's share of the sender's counters.
    stats: SenderStats,
}

/// A snapshot's encoded parts, one per datagram, shared between the clients sent them.
pub(crate) type Parts = Arc<[Vec<u8>]>;

/// A baseline many clients can hold at once: a tick and the very world value (one `Arc`)
/// they hold for it. Two clients with equal keys hold the same world.
pub(crate) type BaselineKey = (Tick, usize);

/// One entity that differs from the client's baseline, as the merge found it: what ranking,
/// packing and writing it need. A merge lists a hundred or more of these per client and
/// tick, so it holds no states: those are looked up again for the few deltas the client
/// measures itself (docs/BENCHMARKS.md, "Smaller candidates").
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// An update's index in the baseline, or a spawn's id: what its part writes the gap to.
    key: u32,
    /// Its index in the world sent (its id and state are read from there, when needed).
    world_index: u32,
    payload_bits: u32,
    /// Its delta's index in the snapshot's own deltas ([`Scratch::own`]), or [`SHARED`]:
    /// `bits` is the string its section's shared code wrote.
    own: u32,
    bits: BitString,
}

/// [`Candidate::own`] of an entity written with its section's shared code.
const SHARED: u32 = u32::MAX;

/// How many entities the merge compares at once, where both lists are keyed by index.
const MERGE_RUN: usize = 8;

/// Spare scope lists a sender keeps (see [`SnapshotSender::spare_picks`]): enough for the
/// lists that come back at once when one ack releases several ticks. A client that sends
/// nothing of its own (a spectator) acknowledges with its keep-alive, every 100 ms by
/// default (six ticks at 60 Hz), and with two spares it allocated a list on about half its
/// ticks (`engine/tests/tick_allocation.rs`).
const SPARE_PICKS: usize = 8;

/// Spare worlds of a client's own, and spare lists of changes, a sender keeps: a partial
/// snapshot holds one list until it leaves the ring, and an acknowledged one becomes the
/// baseline, letting the one before go.
const SPARE_WORLDS: usize = 4;

/// The longest scope list kept as a spare.
const MAX_SPARE_PICKS_LEN: usize = 4096;

/// How the merge measured a candidate: by this client, or with its section's shared code.
enum Measured {
    Own(EntityDelta),
    Shared(BitString),
}

/// The state candidate `c` is sent at: its state in `cur`, the world sent, or for an update
/// repeated at the state a snapshot in flight gave it, that state (`repeated`: by the index
/// of the candidate's delta in the snapshot's own deltas, increasing).
fn sent_state<'a>(
    c: &Candidate,
    cur: &'a ClientWorld,
    repeated: &'a [(u32, QuantizedEntity)],
) -> &'a QuantizedEntity {
    // Nothing is repeated on most ticks: no search.
    if !repeated.is_empty()
        && let Ok(i) = repeated.binary_search_by_key(&c.own, |r| r.0)
    {
        return &repeated[i].1;
    }
    cur.state(c.world_index as usize)
}

/// What a part writes candidate `c` from: its delta in `own` and the state it is sent at,
/// or its shared string.
fn written<'a>(
    c: &'a Candidate,
    own: &'a [EntityDelta],
    cur: &'a ClientWorld,
    repeated: &'a [(u32, QuantizedEntity)],
) -> part::Coded<'a> {
    match own.get(c.own as usize) {
        Some(delta) => part::Coded::Own {
            delta,
            cur: sent_state(c, cur, repeated),
        },
        None => part::Coded::Shared(&c.bits),
    }
}

/// The code a part's section is written with: its `section`'s shared code when that covers
/// every delta in `list` the client measured itself (the others were written with it).
/// Otherwise, rarely, the part codes the section with a code of its own: `None`, and the
/// shared entities of `list` are measured as the client's own, from their `states` (base,
/// new) `ticks` apart.
fn section_code<'s, 'w>(
    list: &mut [Candidate],
    own: &mut Vec<EntityDelta>,
    section: Option<&'s SharedSection>,
    states: impl Fn(&Candidate) -> (&'w QuantizedEntity, &'w QuantizedEntity),
    ticks: u32,
    lim: &Limits,
) -> Option<&'s part::EntityCode> {
    let code = &section?.code;
    // Without own deltas (the usual case: every lookup found its bits shared) there is
    // nothing to check, and the walk over the list would still read every candidate.
    let covered = own.is_empty()
        || list
            .iter()
            .filter_map(|c| own.get(c.own as usize))
            .all(|d| part::code_covers(code, d));
    if covered {
        return Some(code);
    }
    for c in list.iter_mut().filter(|c| c.own == SHARED) {
        let (base, cur) = states(c);
        own.push(EntityDelta::new(base, cur, ticks, lim));
        // As in `Diff::push`: far below `SHARED`.
        c.own = (own.len() - 1) as u32;
    }
    None
}

/// Which entries of the sorted update, despawn and spawn lists one part carries.
#[derive(Debug, Clone, Default)]
struct PartRanges {
    updates: Range<usize>,
    despawns: Range<usize>,
    spawns: Range<usize>,
    /// The estimate of the part's size (never below what it spends).
    bits: usize,
}

/// End `part` with its estimated `bits` and start the next at positions `at` of the update,
/// despawn and spawn lists.
fn next_part(parts: &mut Vec<PartRanges>, part: &mut PartRanges, bits: &mut usize, at: [usize; 3]) {
    part.bits = *bits;
    let next = PartRanges {
        updates: at[0]..at[0],
        despawns: at[1]..at[1],
        spawns: at[2]..at[2],
        bits: 0,
    };
    parts.push(std::mem::replace(part, next));
    *bits = PART_OVERHEAD_BITS;
}

/// Pack the chosen `updates`, `despawns` and `spawns` into `parts` of at most
/// `part_capacity_bits` each, in wire order, weighing every entry's gap as it comes. Stops
/// when a snapshot has [`MAX_PARTS_PER_SNAPSHOT`] parts (what is left waits).
fn pack(
    parts: &mut Vec<PartRanges>,
    updates: &[Candidate],
    despawns: &[usize],
    spawns: &[Candidate],
    part_capacity_bits: usize,
) {
    let mut part = PartRanges::default();
    let mut bits = PART_OVERHEAD_BITS;
    let mut full = false;
    for (n, c) in updates.iter().enumerate() {
        let bi = c.key as usize;
        let prev = (!part.updates.is_empty()).then(|| updates[n - 1].key as usize);
        let mut cost = list_gap_bits(prev, bi) + c.payload_bits as usize;
        if bits + cost > part_capacity_bits {
            if parts.len() + 1 >= MAX_PARTS_PER_SNAPSHOT {
                full = true;
                break;
            }
            next_part(parts, &mut part, &mut bits, [n, 0, 0]);
            cost = list_gap_bits(None, bi) + c.payload_bits as usize;
        }
        bits += cost;
        part.updates.end = n + 1;
    }
    if !full {
        let at_updates = part.updates.end;
        for (n, &d) in despawns.iter().enumerate() {
            let prev = (!part.despawns.is_empty()).then(|| despawns[n - 1]);
            let mut cost = list_gap_bits(prev, d);
            if bits + cost > part_capacity_bits {
                if parts.len() + 1 >= MAX_PARTS_PER_SNAPSHOT {
                    full = true;
                    break;
                }
                next_part(parts, &mut part, &mut bits, [at_updates, n, 0]);
                cost = list_gap_bits(None, d);
            }
            bits += cost;
            part.despawns.end = n + 1;
        }
    }
    if !full {
        let at = [part.updates.end, part.despawns.end];
        for (n, c) in spawns.iter().enumerate() {
            let id = EntityId(c.key);
            let prev = (!part.spawns.is_empty()).then(|| EntityId(spawns[n - 1].key));
            let mut cost = spawn_gap_bits(prev, id) + c.payload_bits as usize;
            if bits + cost > part_capacity_bits {
                if parts.len() + 1 >= MAX_PARTS_PER_SNAPSHOT {
                    break;
                }
                next_part(parts, &mut part, &mut bits, [at[0], at[1], n]);
                cost = spawn_gap_bits(None, id) + c.payload_bits as usize;
            }
            bits += cost;
            part.spawns.end = n + 1;
        }
    }
    part.bits = bits;
    parts.push(part);
}

/// At most the bits one part of the chosen `updates`, `despawns` and `spawns` (their
/// payloads `payload_bits` in all) would be charged by [`pack`].
fn one_part_bound(
    payload_bits: usize,
    updates: &[Candidate],
    despawns: &[usize],
    spawns: &[Candidate],
) -> usize {
    let key = |c: &Candidate| c.key as usize;
    PART_OVERHEAD_BITS
        + payload_bits
        + gaps_bound(updates.len(), updates.last().map(key), part::index_gap_bits)
        + gaps_bound(despawns.len(), despawns.last().copied(), part::index_gap_bits)
        // Spawn keys are u32 ids: so is their mean gap.
        + gaps_bound(spawns.len(), spawns.last().map(key), |g| {
            part::id_gap_bits(g as u32)
        })
}

/// At most the bits [`list_gap_bits`] or [`spawn_gap_bits`] (`gap_bits`: an order-k
/// Exp-Golomb code's length) charges a list of `n` increasing keys ending at `last`, its
/// section code included. The gaps sum to `last + 1 − n`. A gap's code takes
/// `2·⌊log2(gap + 2^k)⌋ + 1 − k` bits, under `2·log2(gap + 2^k) + 1 − k`, which is concave
/// in the gap: the `n` gaps take at most `n` times that of their mean (Jensen), and the
/// mean rounded up, with the logarithm's floor, at most two bits more each.
fn gaps_bound(n: usize, last: Option<usize>, gap_bits: impl Fn(usize) -> usize) -> usize {
    let Some(last) = last else {
        return 0;
    };
    // Distinct increasing keys: `last ≥ n − 1` (the merge and the ranking keep them so).
    let mean = (last + 1).saturating_sub(n).div_ceil(n);
    part::SECTION_CODE_BITS + n * (gap_bits(mean) + 2)
}

/// The lists one snapshot is built in, kept from tick to tick: once grown to a tick's
/// size, building allocates only the parts themselves.
///
/// One set per thread ([`SCRATCH`]), used by every sender that thread builds for. A
/// server builds a thousand clients' snapshots in turn: lists of each sender's own were
/// cold by the sender's next turn, and writing and reading them back was about a tenth of
/// a 1,000-client tick. A thread's set stays in its core's cache.
#[derive(Debug, Default)]
struct Scratch {
    /// Entities that differ from the baseline: updates by increasing baseline index, spawns
    /// by increasing id. The merge finds them in these orders, which are the wire's, and
    /// the parts are written from these lists (once ranked, from what was chosen of them).
    updates: Vec<Candidate>,
    spawns: Vec<Candidate>,
    /// The deltas this client measured itself (those no shared slot keeps), by
    /// [`Candidate::own`].
    own: Vec<EntityDelta>,
    /// Baseline indices of entities the world no longer has, increasing.
    despawns: Vec<usize>,
    /// The last merge's entities in both the baseline and the new world, as (baseline index,
    /// world index), those that changed first (see [`Diff::run`]); as long as the most that
    /// merge could find.
    pairs: Vec<(u32, u32)>,
    parts: Vec<PartRanges>,
    encode: EncodeScratch,
    /// The states of the updates repeated at the state a snapshot in flight gave them, by
    /// the index of their delta in `own` (see [`sent_state`]).
    repeated: Vec<(u32, QuantizedEntity)>,
    /// The ranked path's lists (only when the budget binds), by candidate: its id and how
    /// fast it gains priority, its priority, and, when committed, the payload bits it costs
    /// if it does not earn its new state with its delta to the state in flight (`None`:
    /// that is its new state, or it is a spawn); whether it was chosen; then the
    /// candidates by rank, and the snapshots in flight by their place in the ring, newest
    /// first.
    boosts: Vec<(EntityId, f32)>,
    priorities: Vec<f32>,
    committed: Vec<Option<(usize, Option<EntityDelta>)>>,
    chosen: Vec<bool>,
    ranked: Vec<usize>,
    in_flight: Vec<usize>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Scratch {
    /// Give back memory a rare large tick (a full snapshot of a big world) grew, so a
    /// sender does not keep it for the rest of the connection. `used`: how many updates
    /// and spawns the last snapshot found (its lists may have dropped some since).
    fn shrink(&mut self, used: [usize; 2]) {
        /// Keep at most twice what the last tick used (and this many whatever it used),
        /// once a list holds four times that.
        fn shrink<T>(list: &mut Vec<T>, used: usize) {
            const KEEP: usize = 1024;
            if list.capacity() > KEEP.max(4 * used) {
                list.shrink_to(KEEP.max(2 * used));
            }
        }
        shrink(&mut self.updates, used[0]);
        shrink(&mut self.spawns, used[1]);
        let own = self.own.len();
        shrink(&mut self.own, own);
        let despawns = self.despawns.len();
        shrink(&mut self.despawns, despawns);
        let pairs = self.pairs.len();
        shrink(&mut self.pairs, pairs);
        let repeated = self.repeated.len();
        shrink(&mut self.repeated, repeated);
        // The ranked path's lists hold one entry a candidate.
        let candidates = used[0] + used[1];
        shrink(&mut self.boosts, candidates);
        shrink(&mut self.priorities, candidates);
        shrink(&mut self.committed, candidates);
        shrink(&mut self.chosen, candidates);
        shrink(&mut self.ranked, candidates);
    }
}

/// Encodes one client's snapshots; see the module docs of [`crate::snapshot`].
#[derive(Debug, Clone)]
pub struct SnapshotSender {
    config: SenderConfig,
    limits: Limits,
    ring: VecDeque<SentTick>,
    /// Each part awaiting its delivery notice: the packet's sequence, the part's tick and
    /// index, in the order sent. A few dozen at most (the parts of the ticks in flight), and
    /// notices come oldest first, so a search from the front finds one in the first few
    /// entries: cheaper than hashing, on memory that is cold by the client's next packet.
    part_of_seq: VecDeque<(Sequence, Tick, u16)>,
    /// The newest tick the client holds in full, its world, and whether that world is the
    /// tick's whole world (see [`Holds::Whole`]).
    acked: Option<(Tick, ClientWorld, bool)>,
    last_tick: Option<Tick>,
    priority: PriorityAccumulator,
    stats: SenderStats,
    /// Buffers of parts sent and given back ([`Self::recycle_parts`]), for the next
    /// snapshot's parts and its list of them.
    spare_parts: Vec<Vec<u8>>,
    /// Worlds of the client's own let go, and lists of changes of partial snapshots let go,
    /// for the next ones: a client whose budget binds has a partial snapshot every send.
    spare_worlds: Vec<QuantizedWorld>,
    spare_changes: Vec<Vec<Change>>,
    spare_list: Vec<Vec<u8>>,
    /// Scope picks this sender was given and no longer holds, to build the next ones in
    /// (see [`Self::spare_picks`]).
    spare: Vec<Arc<Vec<u32>>>,
    /// Whether [`Self::stock_spare_picks`] made the spares.
    stocked: bool,
    /// Tests: always take the ranked path, to check the shortcut against it.
    #[cfg(test)]
    always_rank: bool,
}

/// Bits a baseline index adds to a part after `prev`; the first of a section (`None`) also
/// brings the section's code.
fn list_gap_bits(prev: Option<usize>, index: usize) -> usize {
    match prev {
        Some(p) => part::index_gap_bits(index - p - 1),
        None => part::SECTION_CODE_BITS + part::index_gap_bits(index),
    }
}

/// Bits a spawned id adds to a part after `prev`; the first (`None`) also brings the
/// section's code.
fn spawn_gap_bits(prev: Option<EntityId>, id: EntityId) -> usize {
    match prev {
        Some(p) => part::id_gap_bits(id.0 - p.0 - 1),
        None => part::SECTION_CODE_BITS + part::id_gap_bits(id.0),
    }
}

/// The merge of a client's baseline with its new world into updates, spawns and despawns.
struct Diff<'a> {
    updates: &'a mut Vec<Candidate>,
    spawns: &'a mut Vec<Candidate>,
    own: &'a mut Vec<EntityDelta>,
    despawns: &'a mut Vec<usize>,
    pairs: &'a mut Vec<(u32, u32)>,
    update_section: Option<&'a SharedSection>,
    spawn_section: Option<&'a SharedSection>,
    /// Ticks since the baseline (0 without one).
    ticks: u32,
    lim: &'a Limits,
    /// Deltas another client encoded.
    hits: usize,
    /// The payload bits of every candidate, and of the largest.
    payload_bits: usize,
    largest_payload_bits: usize,
}

impl<'w> Diff<'_> {
    /// Count a shared delta another client encoded; the delta.
    fn count(&mut self, found: SharedLookup) -> SharedDelta {
        self.hits += usize::from(matches!(found, SharedLookup::Hit(_)));
        found.get()
    }

    /// A candidate: an update when `update`, else a spawn.
    fn push(
        &mut self,
        update: bool,
        key: usize,
        world_index: usize,
        payload_bits: usize,
        measured: Measured,
    ) {
        self.payload_bits += payload_bits;
        self.largest_payload_bits = self.largest_payload_bits.max(payload_bits);
        let (own, bits) = match measured {
            Measured::Shared(bits) => (SHARED, bits),
            Measured::Own(d) => {
                self.own.push(d);
                // A snapshot's own deltas are fewer than its candidates, far below `SHARED`.
                ((self.own.len() - 1) as u32, BitString::default())
            }
        };
        // Keys are baseline indices and ids, and world indices index a world of `u32` ids.
        // A payload is a few hundred bits; one beyond `u32` (a huge component) stays too
        // large for any part.
        let c = Candidate {
            key: key as u32,
            world_index: world_index as u32,
            payload_bits: u32::try_from(payload_bits).unwrap_or(u32::MAX),
            own,
            bits,
        };
        if update {
            self.updates.push(c);
        } else {
            self.spawns.push(c);
        }
    }

    /// Merge the two sorted entity lists into updates, spawns and despawns. Each candidate
    /// is measured against its base here, once (or found measured in its section's shared
    /// deltas): the estimate, the code of its section and the writing all reuse that. The
    /// update section must be one for the baseline's tick, and `base` a view of its world.
    /// With `since` (the change age of each entity of the new world, by index there, and the
    /// baseline's age in ticks) an entity unchanged since the baseline is skipped without
    /// reading its states.
    fn run(&mut self, base: impl Entries<'w>, cur: impl Entries<'w>, since: Option<(&[u8], u32)>) {
        // With `since`, the merge notes every entity in both lists and counts it only when
        // it changed since the baseline; the changed ones are measured after the merge. A
        // third of a scope changes in no order a branch predicts, and a mispredicted test
        // in the merge can also throw away the reads of the shared deltas under way behind
        // it (docs/BENCHMARKS.md, "Changed entities noted without a branch").
        match since {
            Some((ages, ticks)) => {
                // (Taken out so that the merge may borrow `self`; put back with its memory.)
                let mut pairs = std::mem::take(self.pairs);
                // Every pair read below is written first: only a longer list than the last
                // one is filled (a fill of the whole list showed in instruction counts).
                pairs.resize(base.count().min(cur.count()), (0, 0));
                let mut changed = 0;
                match (base.index_keys(), cur.index_keys()) {
                    // The scope kept the very list the baseline was sent (nothing crossed
                    // its edge since): every entity is in both at the same place, and the
                    // merge is a pass over the change ages, with nothing to compare.
                    (Some(b), Some(c)) if std::ptr::eq(b, c) => {
                        for (i, &g) in c.iter().enumerate() {
                            pairs[changed] = (i as u32, i as u32);
                            changed += usize::from(changed_within(ages[g as usize], ticks));
                        }
                    }
                    _ => self.merge(&base, &cur, |_, bi, wi| {
                        // Indices into worlds of `u32` ids fit a `u32`; `changed` ≤ `bi`.
                        pairs[changed] = (bi as u32, wi as u32);
                        changed += usize::from(changed_within(ages[cur.global(wi)], ticks));
                    }),
                }
                // The shared slots of the changed entities are scattered over the world's:
                // they are all asked for in one pass, so that their misses overlap, before
                // the lookups between encodings would each wait for theirs
                // (docs/BENCHMARKS.md, "Shared slots read ahead" and "The next client's
                // lists asked for ahead").
                if let Some(section) = self.update_section {
                    section.touch(
                        pairs[..changed]
                            .iter()
                            .map(|&(_, wi)| cur.global(wi as usize)),
                    );
                    // A section no one filled up front is one few clients read (a baseline
                    // older than most: two packets or acks lost in a row). Its lookups mostly
                    // encode, each from two states in worlds the tick has not read yet: they
                    // are asked for here too, so that those misses overlap as well.
                    if !section.filled_up_front() {
                        prefetch_states(&base, &cur, &pairs[..changed]);
                    }
                }
                // (The list keeps its length, the most this merge could note, so that
                // `Scratch::shrink` sizes it by that.)
                for &(bi, wi) in &pairs[..changed] {
                    self.update(&base, bi as usize, &cur, wi as usize);
                }
                *self.pairs = pairs;
            }
            None => self.merge(&base, &cur, |diff, bi, wi| diff.update(&base, bi, &cur, wi)),
        }
    }

    /// Walk the two sorted lists: spawns and despawns as found, and `both(self, bi, wi)` for
    /// entity `bi` of the baseline that is entity `wi` of the new world.
    fn merge<B: Entries<'w>, C: Entries<'w>>(
        &mut self,
        base: &B,
        cur: &C,
        mut both: impl FnMut(&mut Self, usize, usize),
    ) {
        let (nb, nc) = (base.count(), cur.count());
        // Both keyed by index, the lists are a scope then and now: it changes at its edge
        // alone, so they are long runs of the same indices at a fixed offset, compared a
        // run at a time. The test per entity below, mispredicted where an entity crossed,
        // is left for the runs that differ (docs/BENCHMARKS.md, "Runs of a scope compared
        // whole").
        let keys = base.index_keys().zip(cur.index_keys());
        let (mut bi, mut wi) = (0, 0);
        while bi < nb && wi < nc {
            if let Some((b, c)) = keys {
                while let (Some(x), Some(y)) =
                    (b.get(bi..bi + MERGE_RUN), c.get(wi..wi + MERGE_RUN))
                    && x == y
                {
                    for j in 0..MERGE_RUN {
                        both(self, bi + j, wi + j);
                    }
                    bi += MERGE_RUN;
                    wi += MERGE_RUN;
                }
                if bi >= nb || wi >= nc {
                    break;
                }
            }
            let (bk, wk) = (base.key(bi), cur.key(wi));
            if bk == wk {
                both(self, bi, wi);
                bi += 1;
                wi += 1;
            } else if bk < wk {
                self.despawns.push(bi);
                bi += 1;
            } else {
                self.spawn(cur, wi);
                wi += 1;
            }
        }
        self.despawns.extend(bi..nb);
        for wi in wi..nc {
            self.spawn(cur, wi);
        }
    }

    /// Entity `bi` of the baseline is entity `wi` of the new world: a candidate if it
    /// changed.
    fn update(&mut self, base: &impl Entries<'w>, bi: usize, cur: &impl Entries<'w>, wi: usize) {
        let g = cur.global(wi);
        let states = || (base.state(bi), cur.state(wi));
        let found = self
            .update_section
            .and_then(|s| s.delta(g, states, self.lim))
            .map(|found| self.count(found));
        match found {
            Some(SharedDelta::Unchanged) => {}
            Some(SharedDelta::Bits { bits, payload_bits }) => {
                self.push(true, bi, wi, payload_bits, Measured::Shared(bits));
            }
            Some(SharedDelta::Own) | None => {
                let (be, we) = states();
                if be != we {
                    let delta = EntityDelta::new(be, we, self.ticks, self.lim);
                    let code = self.update_section.map(|s| &s.code);
                    let bits = part::charged_bits(&delta, we, self.ticks, self.lim, code);
                    self.push(true, bi, wi, bits, Measured::Own(delta));
                }
            }
        }
    }

    /// Entity `wi` of the new world is not in the baseline: a candidate.
    fn spawn(&mut self, cur: &impl Entries<'w>, wi: usize) {
        let spawn_base = part::spawn_base();
        // Ids are u32; as usize they keep their order.
        let id = cur.id(wi).0 as usize;
        let we = cur.state(wi);
        let found = self
            .spawn_section
            .and_then(|s| s.delta(cur.global(wi), || (&spawn_base, we), self.lim))
            .map(|found| self.count(found));
        match found {
            Some(SharedDelta::Bits { bits, payload_bits }) => {
                self.push(false, id, wi, payload_bits, Measured::Shared(bits));
            }
            // A spawn is written even when it equals the spawn base.
            Some(SharedDelta::Unchanged | SharedDelta::Own) | None => {
                let delta = EntityDelta::new(&spawn_base, we, 0, self.lim);
                let code = self.spawn_section.map(|s| &s.code);
                let bits = part::charged_bits(&delta, we, 0, self.lim, code);
                self.push(false, id, wi, bits, Measured::Own(delta));
            }
        }
    }
}

impl SnapshotSender {
    /// A sender; fails when the config is unusable.
    pub fn new(config: SenderConfig) -> Result<Self, SnapshotError> {
        config.quantize.validate()?;
        if !(64..=2000).contains(&config.max_part_bytes) {
            return Err(SnapshotError::Config("max part bytes must be 64..=2000"));
        }
        if !(1..=16_383).contains(&config.ring_ticks) {
            return Err(SnapshotError::Config("ring ticks must be 1..=16383"));
        }
        Ok(Self {
            limits: config.quantize.limits(),
            config,
            ring: VecDeque::new(),
            part_of_seq: VecDeque::new(),
            acked: None,
            last_tick: None,
            priority: PriorityAccumulator::default(),
            stats: SenderStats::default(),
            spare_parts: Vec::new(),
            spare_worlds: Vec::new(),
            spare_changes: Vec::new(),
            spare_list: Vec::new(),
            spare: Vec::new(),
            stocked: false,
            #[cfg(test)]
            always_rank: false,
        })
    }

    /// The config in use.
    pub fn config(&self) -> &SenderConfig {
        &self.config
    }

    /// Totals so far.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// The newest tick the client holds in full, and the world it holds for it (a copy when
    /// the sender holds it as a view of the server's world).
    pub fn acked_baseline(&self) -> Option<(Tick, QuantizedWorld)> {
        self.acked.as_ref().map(|(t, w, _)| (*t, w.to_world()))
    }

    /// The newest tick the client holds in full.
    pub fn acked_tick(&self) -> Option<Tick> {
        self.acked.as_ref().map(|(t, _, _)| *t)
    }

    /// The baseline the next snapshot at `tick` would use, when a snapshot against it can
    /// be shared with other clients (`Some(None)`: a full snapshot, which any client
    /// without a baseline can share); `None` when the baseline is this client's own.
    pub(crate) fn shareable_baseline(&self, tick: Tick) -> Option<Option<BaselineKey>> {
        match &self.acked {
            Some((t, w, whole)) if tick.0.saturating_sub(t.0) < self.config.ring_ticks => match w {
                ClientWorld::Own(w) if *whole => Some(Some((*t, w.identity()))),
                _ => None,
            },
            _ => Some(None),
        }
    }

    /// Take a snapshot built for another client as this client's own for its tick: the
    /// same parts go out, and the same bookkeeping follows. False (and nothing changes)
    /// when it does not fit: another baseline or budget, or a tick not newer than the last.
    pub(crate) fn adopt(
        &mut self,
        shared: &SharedSnapshot,
        world: &QuantizedWorld,
        budget_bytes: usize,
    ) -> bool {
        let tick = shared.tick;
        if self.last_tick.is_some_and(|last| tick <= last)
            || budget_bytes != shared.budget_bytes
            || world.identity() != shared.world.identity()
            || self.shareable_baseline(tick) != Some(shared.baseline)
        {
            return false;
        }
        self.last_tick = Some(tick);
        self.prune(tick);
        // Every difference went out, so nothing is waiting: no priority to carry over.
        self.priority.clear_priorities();
        add_stats(&mut self.stats, &shared.stats);
        self.ring.push_back(SentTick {
            tick,
            holds: Holds::Whole(ClientWorld::Own(shared.world.clone())),
            parts: shared.parts.len(),
            part_acked: Default::default(),
            acked_parts: 0,
        });
        true
    }

    /// [`Self::build`] when the result can be shared: also returns it as a
    /// [`SharedSnapshot`] if it holds every difference from a shareable baseline. Share it
    /// only with clients given the very same `world` value (see [`Self::adopt`]).
    pub(crate) fn build_shareable(
        &mut self,
        tick: Tick,
        world: &QuantizedWorld,
        budget_bytes: usize,
    ) -> Result<(Parts, Option<SharedSnapshot>), SnapshotError> {
        let key = self.shareable_baseline(tick);
        let before = self.stats;
        let parts: Parts = self
            .build_weighted(
                tick,
                ClientWorld::Own(world.clone()),
                budget_bytes,
                None,
                None,
            )?
            .into();
        let whole = self
            .ring
            .back()
            .is_some_and(|s| s.tick == tick && matches!(s.holds, Holds::Whole(_)));
        let shared = match key {
            Some(baseline) if whole => Some(SharedSnapshot {
                tick,
                baseline,
                budget_bytes,
                world: world.clone(),
                parts: parts.clone(),
                stats: stats_since(&before, &self.stats),
            }),
            _ => None,
        };
        Ok((parts, shared))
    }

    /// Ask for the memory this sender's next snapshot reads first (its history, its
    /// baseline's list and the buffer its part is written in) to be brought into the
    /// caches, while the thread still works on another client (see [`crate::prefetch`]).
    pub(crate) fn prefetch(&mut self) {
        let (front, back) = self.ring.as_slices();
        prefetch::slice(front);
        prefetch::slice(back);
        if let Some((_, ClientWorld::View(v), _)) = &self.acked {
            prefetch::value(&*v.picks);
            prefetch::slice(&v.picks);
        }
        if let Some(buffer) = self.spare_parts.last_mut() {
            // A scoped client's part is a few hundred bytes.
            let spare = buffer.spare_capacity_mut();
            prefetch::slice(&spare[..spare.len().min(512)]);
        }
    }

    /// Ask for the sender's own fields to be brought into the caches (its lists are asked
    /// for by [`Self::prefetch`], which reads these fields to find them).
    pub(crate) fn prefetch_fields(&self) {
        prefetch::value(&self.config);
        prefetch::value(&self.limits);
        prefetch::value(&self.ring);
        prefetch::value(&self.part_of_seq);
        prefetch::value(&self.acked);
        prefetch::value(&self.priority);
        prefetch::value(&self.stats);
        prefetch::value(&self.spare_parts);
        prefetch::value(&self.spare);
    }

    /// An empty buffer for this client's next scope picks (see [`WorldView`]), held by no
    /// one else: one this sender no longer needs when there is one, so a scoped client
    /// costs no allocation for its scope per tick.
    pub(crate) fn spare_picks(&mut self) -> Arc<Vec<u32>> {
        self.spare.pop().unwrap_or_default()
    }

    /// Once, on the first scope of `scope_len` entities: make the spare lists the client's
    /// snapshots in flight will hold (room for scopes up to the next power of two), so that
    /// they are allocated now, not one by one on later ticks whenever loss holds one more
    /// list in flight than the client had. Each such allocation may land in memory the
    /// allocator gave back to the system, and then faults in the middle of a tick: with
    /// 1,000 clients, a few a tick for the first seconds (docs/BENCHMARKS.md, "Page faults
    /// in the tick").
    pub(crate) fn stock_spare_picks(&mut self, scope_len: usize) {
        if self.stocked || scope_len == 0 {
            return;
        }
        self.stocked = true;
        let room = scope_len.next_power_of_two().min(MAX_SPARE_PICKS_LEN);
        while self.spare.len() < SPARE_PICKS {
            self.spare.push(Arc::new(Vec::with_capacity(room)));
        }
    }

    /// Give back the parts of a snapshot [`Self::build`] returned, once sent: the next
    /// snapshots are written in their buffers instead of new ones.
    pub fn recycle_parts(&mut self, mut parts: Vec<Vec<u8>>) {
        /// Buffers kept: a snapshot of a scoped client is one or two parts.
        const SPARES: usize = 4;
        let spare = &mut self.spare_parts;
        let room = SPARES.saturating_sub(spare.len());
        // A part is at most `max_part_bytes`, but a buffer grown for one (from a smaller
        // one, by doubling) can hold up to twice that: such a buffer is as good as any.
        spare.extend(
            parts
                .drain(..)
                .filter(|p| p.capacity() <= 2 * self.config.max_part_bytes)
                .take(room),
        );
        if parts.capacity() <= SPARES {
            self.spare_list = parts;
        }
    }

    /// Keep what `world` holds as a spare when no one else holds it: a view's picks (a
    /// few, and only scope-sized ones), or a world of the client's own (a few).
    fn recycle(&mut self, world: ClientWorld) {
        if let ClientWorld::Own(mut w) = world {
            // A world of the client's own (a snapshot some differences of which waited):
            // the next one is made in its memory.
            if self.spare_worlds.len() < SPARE_WORLDS && w.is_unique() {
                self.spare_worlds.push(w);
            }
            return;
        }
        if self.spare.len() >= SPARE_PICKS {
            return;
        }
        if let ClientWorld::View(v) = world {
            let mut picks = v.picks;
            if let Some(p) = Arc::get_mut(&mut picks)
                && p.capacity() <= MAX_SPARE_PICKS_LEN
            {
                p.clear();
                self.spare.push(picks);
            }
        }
    }

    /// Drop a tick of history, keeping its world as a spare when it can be.
    fn recycle_tick(&mut self, sent: SentTick) {
        match sent.holds {
            Holds::Whole(world) => self.recycle(world),
            Holds::Patched {
                baseline,
                changes,
                cut_from,
            } => {
                self.recycle(baseline);
                self.recycle(cut_from);
                if self.spare_changes.len() < SPARE_WORLDS {
                    self.spare_changes.push(changes);
                }
            }
        }
    }

    /// Forget the acked baseline and every tick still awaiting acks, so the next snapshot is
    /// a full one.
    ///
    /// For when the client says it cannot decode: an ack proves a packet arrived, not that
    /// the receiver could use it (e.g. parts that beat the application's own setup). Ticks
    /// sent before the reset can no longer become baselines, even if acked later.
    pub fn reset_baseline(&mut self) {
        self.acked = None;
        self.ring.clear();
        self.part_of_seq.clear();
        self.stats.resets += 1;
    }

    /// Scale how fast `id` gains priority for this client (e.g. by distance to the player).
    pub fn set_priority_weight(&mut self, id: EntityId, weight: f32) {
        self.priority.set_weight(id, weight);
    }

    /// Back to the default weight of 1.
    pub fn clear_priority_weight(&mut self, id: EntityId) {
        self.priority.clear_weight(id);
    }

    /// Encode `world` at `tick` for this client within about `budget_bytes`.
    ///
    /// Returns the parts (at least one, each ≤ `max_part_bytes`), to be sent one per
    /// datagram; report each with [`Self::on_part_sent`]. Index costs are estimated before
    /// packing, so the total may miss the budget by a few bits per entity. What the snapshots
    /// still in flight carried goes first, so that no entity the client drew leaves its view
    /// or is drawn back (`docs/PROTOCOL.md`, "Budget and priority"). The entity with the
    /// highest priority is always included even when it alone exceeds the budget, so a tiny
    /// budget slows replication down but never stops it.
    pub fn build(
        &mut self,
        tick: Tick,
        world: &QuantizedWorld,
        budget_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, SnapshotError> {
        self.build_weighted(
            tick,
            ClientWorld::Own(world.clone()),
            budget_bytes,
            None,
            None,
        )
    }

    /// [`Self::build`], with priority weights by index in `world` (e.g. by distance to the
    /// client), on top of the per-entity weights set on this sender, and the tick's shared
    /// encodings (for views of the tick's world, whose indices they use).
    pub(crate) fn build_weighted(
        &mut self,
        tick: Tick,
        world: ClientWorld,
        budget_bytes: usize,
        weights: Option<&dyn PriorityWeights>,
        shared: Option<&SharedDeltas>,
    ) -> Result<Vec<Vec<u8>>, SnapshotError> {
        SCRATCH.with_borrow_mut(|scratch| {
            self.build_in(scratch, tick, world, budget_bytes, weights, shared)
        })
    }

    /// [`Self::build_weighted`] in a thread's lists.
    fn build_in(
        &mut self,
        scratch: &mut Scratch,
        tick: Tick,
        world: ClientWorld,
        budget_bytes: usize,
        weights: Option<&dyn PriorityWeights>,
        shared: Option<&SharedDeltas>,
    ) -> Result<Vec<Vec<u8>>, SnapshotError> {
        if self.last_tick.is_some_and(|last| tick <= last) {
            return Err(SnapshotError::TickNotNewer);
        }
        self.last_tick = Some(tick);
        self.prune(tick);

        let lim = self.limits;
        // The baseline is taken out for the build and put back after (its lists are read
        // while the sender changes): a copy would take and give back a count on each of
        // its lists, shared with every client, each tick. The world sent is kept as it is.
        let acked = self.acked.take();
        let none;
        let (baseline_tick, baseline) = match &acked {
            Some((t, w, _)) if tick.0 - t.0 < self.config.ring_ticks => (Some(*t), w),
            _ => {
                none = ClientWorld::default();
                (None, &none)
            }
        };
        let cur = &world;
        let ticks = baseline_tick.map_or(0, |b| tick.0 - b.0);
        let Scratch {
            updates,
            spawns,
            own,
            despawns,
            pairs,
            parts,
            encode,
            repeated,
            boosts,
            priorities,
            committed,
            chosen,
            ranked,
            in_flight,
        } = scratch;
        updates.clear();
        spawns.clear();
        own.clear();
        despawns.clear();
        repeated.clear();

        // Sections whose code is shared this tick.
        let update_section = shared
            .filter(|_| baseline_tick.is_some())
            .and_then(|s| s.section(tick, ticks));
        let spawn_section = shared.and_then(|s| s.section(tick, 0));
        let (update_section, spawn_section) = match (&baseline, cur) {
            (ClientWorld::View(_), ClientWorld::View(_)) => (update_section, spawn_section),
            // A world of the client's own holds states no other client's baseline is known
            // to share: its updates are its own.
            (ClientWorld::Own(_), ClientWorld::View(_)) => (None, spawn_section),
            // Shared deltas are found by index in the tick's world, which only a view has.
            (_, ClientWorld::Own(_)) => (None, None),
        };
        let mut diff = Diff {
            updates,
            spawns,
            own,
            despawns,
            pairs,
            update_section,
            spawn_section,
            ticks,
            lim: &lim,
            hits: 0,
            payload_bits: 0,
            largest_payload_bits: 0,
        };
        match (&baseline, cur) {
            (ClientWorld::View(b), ClientWorld::View(c)) => {
                // Two views of the server's worlds: an entity that last changed as long
                // before the new world as the baseline's or longer holds the same state in
                // both (not even read).
                let since =
                    (b.of.tick < c.of.tick).then(|| (&c.of.changed[..], c.of.tick.0 - b.of.tick.0));
                let by_index = b.of.same_layout(&c.of);
                diff.run(Picked::of(b, by_index), Picked::of(c, by_index), since);
            }
            (ClientWorld::Own(b), ClientWorld::View(c)) => {
                diff.run(b.entities(), Picked::of(c, false), None)
            }
            (ClientWorld::View(b), ClientWorld::Own(c)) => {
                diff.run(Picked::of(b, false), c.entities(), None)
            }
            (ClientWorld::Own(b), ClientWorld::Own(c)) => {
                diff.run(b.entities(), c.entities(), None)
            }
        }
        let (shared_hits, all_payload_bits, largest_payload_bits) =
            (diff.hits, diff.payload_bits, diff.largest_payload_bits);
        let candidates = updates.len() + spawns.len();
        let found = [updates.len(), spawns.len()];
        // An update's id, read only where needed: ranking and a partial snapshot's record.
        let update_id = |c: &Candidate| cur.id(c.world_index as usize);

        // Despawns first (a few bits each, and a ghost entity is the worst artefact), then
        // the highest priorities; skip what does not fit and let it wait. The estimate
        // charges one part header per part's worth of entries and the typical index gap, so
        // the total stays within about one index per entity of the budget.
        let budget_bits = budget_bytes.saturating_mul(8);
        let part_capacity_bits = self.config.max_part_bytes * 8;
        let fits = |bits: usize| {
            let parts = bits
                .div_ceil(part_capacity_bits - PART_OVERHEAD_BITS)
                .max(1);
            bits + parts * PART_OVERHEAD_BITS <= budget_bits
        };
        let typical_gap = baseline.len() / (candidates + despawns.len()).max(1);
        let index_bits = part::index_gap_bits(typical_gap);
        let fits_a_part = |payload_bits: usize| {
            PART_OVERHEAD_BITS + payload_bits + MAX_INDEX_BITS <= part_capacity_bits
        };
        let all_bits = (candidates + despawns.len()) * index_bits + all_payload_bits;
        #[cfg(test)]
        let shortcut = !self.always_rank;
        #[cfg(not(test))]
        let shortcut = true;
        let send_all = shortcut && fits(all_bits) && fits_a_part(largest_payload_bits);
        // How many despawns go (the first ones); `updates` and `spawns` keep the candidates
        // chosen to go out.
        let chosen_despawns = if send_all {
            // Every difference fits: nothing waits, so ranking could not change what is
            // sent (the ranked path below would choose the same) and no priority carries
            // over. The usual case, and the cheap one: the merge's lists are written as
            // they are.
            self.priority.clear_priorities();
            despawns.len()
        } else {
            // Every candidate, updates then spawns: its id and how fast it gains priority.
            let weight = |c: &Candidate| weights.map_or(1.0, |w| w.weight(c.world_index as usize));
            let spawn_boost = self.config.spawn_boost;
            boosts.clear();
            boosts.extend(
                updates.iter().map(|c| (update_id(c), weight(c))).chain(
                    spawns
                        .iter()
                        .map(|c| (EntityId(c.key), spawn_boost * weight(c))),
                ),
            );
            self.priority.accumulate_into(boosts, priorities);
            // Each snapshot is coded against the baseline, so one that leaves out what the
            // snapshot before it carried gives the client the baseline's state of it again.
            // What a snapshot sent since the baseline carried is therefore committed, and
            // goes out whatever it waited:
            // - a spawn such a snapshot holds (left out, the entity would leave the client's
            //   view until it came back): while a world larger than the budget arrives,
            //   every entity drawn stays drawn, and what a client holds grows by a
            //   snapshot's worth a round trip;
            // - an update the newest snapshot in flight holds at another state than the
            //   baseline's (left out, the entity would be drawn back where the baseline had
            //   it). It goes at its new state where its rank earns that, else again at the
            //   state in flight, a repeat that ends once a snapshot holding that state is
            //   acknowledged: so no update is committed for longer than a round trip unless
            //   it keeps earning its place.
            // (By the same rule, the newest snapshot in flight holds every update the ones
            // before it committed.)
            let ring = &self.ring;
            in_flight.clear();
            in_flight.extend(
                (0..ring.len())
                    .rev()
                    .take_while(|&i| baseline_tick.is_none_or(|b| ring[i].tick > b)),
            );
            let newest = in_flight.first().map(|&i| &ring[i]);
            committed.clear();
            committed.resize(candidates, None);
            if let Some(newest) = newest {
                let code = update_section.map(|s| &s.code);
                for (i, c) in updates.iter().enumerate() {
                    let Some(held) = newest.holds.state_of(update_id(c)) else {
                        continue;
                    };
                    let base = baseline.state(c.key as usize);
                    if held == base {
                        continue;
                    }
                    let now = cur.state(c.world_index as usize);
                    committed[i] = Some(if held == now {
                        (c.payload_bits as usize, None)
                    } else {
                        let delta = EntityDelta::new(base, held, ticks, &lim);
                        let bits = part::charged_bits(&delta, held, ticks, &lim, code);
                        (bits, Some(delta))
                    });
                }
                for (s, c) in spawns.iter().enumerate() {
                    let id = EntityId(c.key);
                    if in_flight
                        .iter()
                        .any(|&t| ring[t].holds.state_of(id).is_some())
                    {
                        committed[updates.len() + s] = Some((c.payload_bits as usize, None));
                    }
                }
            }
            let mut used = 0usize;
            let mut chosen_despawns = 0;
            for _ in despawns.iter() {
                if !fits(used + index_bits) && chosen_despawns > 0 {
                    break;
                }
                used += index_bits;
                chosen_despawns += 1;
            }
            // The committed go first: their cost is held back from the rest.
            let mut reserved: usize = committed
                .iter()
                .flatten()
                .map(|&(bits, _)| bits + index_bits)
                .sum();
            ranked.clear();
            ranked.extend(0..candidates);
            // Ids differ, so this order is total: the same whatever the sort.
            ranked.sort_unstable_by(|&a, &b| {
                priorities[b]
                    .total_cmp(&priorities[a])
                    .then(boosts[a].0.cmp(&boosts[b].0))
            });
            chosen.clear();
            chosen.resize(candidates, false);
            let mut any = false;
            // Once a candidate waits for budget, none ranked below it goes at its new state
            // in place of a repeat (that would keep it committed past its turn).
            let mut refused = false;
            // Once a candidate waits only for the committed, none ranked below it goes at
            // all: the committed are let go, and the budget they held goes to it. (Else the
            // smaller deltas of entities sent lately would take what the committed leave,
            // tick after tick, and a larger one could wait for ever.)
            let mut blocked = false;
            for &i in ranked.iter() {
                let c = match i.checked_sub(updates.len()) {
                    None => &updates[i],
                    Some(s) => &spawns[s],
                };
                let payload_bits = c.payload_bits as usize;
                if let Some((held_bits, _)) = committed[i] {
                    let rest = reserved - (held_bits + index_bits);
                    if !refused
                        && fits_a_part(payload_bits)
                        && fits(used + rest + payload_bits + index_bits)
                    {
                        used += payload_bits + index_bits;
                        reserved = rest;
                        chosen[i] = true;
                        committed[i] = None;
                        any = true;
                    }
                    continue;
                }
                if !fits_a_part(payload_bits) {
                    self.stats.entities_oversized += 1;
                    continue;
                }
                let cost = payload_bits + index_bits;
                // The first candidate goes even when it alone passes the budget.
                let alone = !any && chosen_despawns == 0 && !fits(used + cost);
                if !blocked && (fits(used + reserved + cost) || alone) {
                    used += cost;
                    chosen[i] = true;
                    any = true;
                } else {
                    refused = true;
                    blocked |= fits(used + cost);
                }
            }
            // The committed that did not earn their new state: at the state in flight, in
            // rank order while they fit (more than a budget's worth would be a budget
            // shrunk since, or a part limit: the rest are drawn back).
            for &i in ranked.iter() {
                let Some((held_bits, held)) = committed[i] else {
                    continue;
                };
                if !fits(used + held_bits + index_bits) || !fits_a_part(held_bits) {
                    continue;
                }
                used += held_bits + index_bits;
                chosen[i] = true;
                // An update (spawns repeat nothing): written from its delta to the state in
                // flight, kept with the snapshot's own deltas. (Committed only when a
                // snapshot in flight holds that state.)
                if let Some(delta) = held
                    && let Some(held) =
                        newest.and_then(|n| n.holds.state_of(update_id(&updates[i])))
                {
                    let c = &mut updates[i];
                    own.push(delta);
                    // As in `Diff::push`: far below `SHARED`.
                    c.own = (own.len() - 1) as u32;
                    c.payload_bits = held_bits as u32;
                    repeated.push((c.own, held.clone()));
                }
            }
            // The chosen in the merge's order, which is already the wire's.
            let (chosen_updates, chosen_spawns) = chosen.split_at(updates.len());
            let mut keep = chosen_updates.iter();
            updates.retain(|_| keep.next() == Some(&true));
            let mut keep = chosen_spawns.iter();
            spawns.retain(|_| keep.next() == Some(&true));
            chosen_despawns
        };
        debug_assert!(updates.is_sorted_by_key(|c| c.key));
        debug_assert!(spawns.is_sorted_by_key(|c| c.key));

        // Pack in wire order (updates by baseline index, despawns, spawns by id): each part
        // is a run of each list.
        parts.clear();
        let despawns_chosen = &despawns[..chosen_despawns];
        // Most snapshots fit one part, which a bound on the packing's estimate shows without
        // weighing each gap (`pack` weighs them one by one: about a fifth of `build_in`'s
        // own time in a scoped client's build, docs/BENCHMARKS.md, "One part seen at
        // once"). Where the bound fits, so does every sum `pack` would take: it would make
        // the same one part.
        let payload_bits_chosen = if send_all {
            all_payload_bits
        } else {
            updates
                .iter()
                .chain(spawns.iter())
                .map(|c| c.payload_bits as usize)
                .sum()
        };
        let one_part_bits = one_part_bound(payload_bits_chosen, updates, despawns_chosen, spawns);
        if one_part_bits <= part_capacity_bits {
            parts.push(PartRanges {
                updates: 0..updates.len(),
                despawns: 0..chosen_despawns,
                spawns: 0..spawns.len(),
                bits: one_part_bits,
            });
        } else {
            pack(parts, updates, despawns_chosen, spawns, part_capacity_bits);
        }
        // The last part ends where packing stopped.
        let sent = parts
            .last()
            .map_or([0; 3], |p| [p.updates.end, p.despawns.end, p.spawns.end]);

        let count = parts.len();
        let mut out = std::mem::take(&mut self.spare_list);
        out.clear();
        for (index, p) in parts.iter().enumerate() {
            let header = PartHeader {
                tick,
                baseline: baseline_tick,
                // count ≤ MAX_PARTS_PER_SNAPSHOT (256) by the packing above.
                index: index as u16,
                count: count as u16,
            };
            // The estimate is never below what the part spends: one allocation.
            let buffer = self.spare_parts.pop().unwrap_or_default();
            let mut w = BitWriter::in_buffer(buffer, p.bits.div_ceil(8));
            let (part_updates, part_spawns) = (
                &mut updates[p.updates.clone()],
                &mut spawns[p.spawns.clone()],
            );
            let base_states = |c: &Candidate| {
                let base = baseline.state(c.key as usize);
                (base, cur.state(c.world_index as usize))
            };
            let update_code =
                section_code(part_updates, own, update_section, base_states, ticks, &lim);
            let spawn_base = part::spawn_base();
            let spawn_states = |c: &Candidate| (&spawn_base, cur.state(c.world_index as usize));
            let spawn_code = section_code(part_spawns, own, spawn_section, spawn_states, 0, &lim);
            let own = &*own;
            part::encode_part(
                &mut w,
                &header,
                part_updates.iter().map(|c| written(c, own, cur, repeated)),
                &despawns[p.despawns.clone()],
                part_spawns.iter().map(|c| written(c, own, cur, repeated)),
                [&*part_updates, &*part_spawns].map(|l| l.iter().map(|c| c.key as usize)),
                &lim,
                encode,
                [update_code, spawn_code],
            );
            let bytes = w.finish();
            debug_assert!(bytes.len() <= self.config.max_part_bytes);
            self.stats.bytes += bytes.len() as u64;
            out.push(bytes);
        }

        let (sent_updates, sent_spawns) = (&updates[..sent[0]], &spawns[..sent[2]]);
        // A repeat is not the update its entity waits for: it keeps its priority.
        let is_repeat = |c: &Candidate| {
            !repeated.is_empty() && repeated.binary_search_by_key(&c.own, |r| r.0).is_ok()
        };
        let repeats = if repeated.is_empty() {
            0
        } else {
            sent_updates.iter().filter(|c| is_repeat(c)).count()
        };
        if !send_all {
            // (Sending everything cleared every priority above.)
            for c in sent_updates.iter().filter(|c| !is_repeat(c)) {
                self.priority.reset(update_id(c));
            }
            for c in sent_spawns {
                self.priority.reset(EntityId(c.key));
            }
        }
        let entities_sent = sent[0] + sent[2];
        let sent_payload_bits = || -> usize {
            sent_updates
                .iter()
                .chain(sent_spawns)
                .map(|c| c.payload_bits as usize)
                .sum()
        };
        // When everything chosen went out (no part limit cut it short), the total taken
        // before packing is the sum: another pass over the candidates would only repeat it.
        let payload_bits = if entities_sent == updates.len() + spawns.len() {
            debug_assert_eq!(payload_bits_chosen, sent_payload_bits());
            payload_bits_chosen
        } else {
            sent_payload_bits()
        };
        self.stats.entities_sent += entities_sent as u64;
        self.stats.despawns_sent += sent[1] as u64;
        self.stats.entities_deferred += (candidates - (entities_sent - repeats)) as u64;
        self.stats.entities_repeated += repeats as u64;
        self.stats.entity_payload_bits += payload_bits as u64;
        self.stats.snapshots += 1;
        self.stats.entities_shared += shared_hits as u64;
        self.stats.parts += count as u64;
        if baseline_tick.is_none() {
            self.stats.full_snapshots += 1;
        }

        // Every difference went out at its new state (no deferral, no repeat, nothing
        // oversized, no part limit hit): the client will hold exactly this tick's world.
        // Otherwise what it will hold is the baseline with what was sent.
        let whole = entities_sent + sent[1] == candidates + despawns.len() && repeats == 0;
        let changes = (!whole).then(|| {
            let mut changes = self.spare_changes.pop().unwrap_or_default();
            changes.clear();
            changes.extend(
                sent_updates
                    .iter()
                    .map(|c| (update_id(c), Some(sent_state(c, cur, repeated).clone()))),
            );
            changes.extend(sent_spawns.iter().map(|c| {
                let state = cur.state(c.world_index as usize).clone();
                (EntityId(c.key), Some(state))
            }));
            changes.extend(despawns[..sent[1]].iter().map(|&d| (baseline.id(d), None)));
            // Each id is there once (updates and despawns are entities of the baseline, the
            // first in the new world and the others not; spawns are not in the baseline),
            // so an unstable sort, which needs no memory of its own, gives the one order.
            changes.sort_unstable_by_key(|(id, _)| *id);
            changes
        });
        scratch.shrink(found);
        let holds = match changes {
            None => Holds::Whole(world),
            Some(changes) => Holds::Patched {
                baseline: baseline.clone(),
                changes,
                cut_from: world,
            },
        };
        self.acked = acked;
        self.ring.push_back(SentTick {
            tick,
            holds,
            parts: count,
            part_acked: Default::default(),
            acked_parts: 0,
        });
        Ok(out)
    }

    /// Part `part_index` of `tick` (as returned by [`Self::build`]) went out in the packet
    /// numbered `seq`.
    pub fn on_part_sent(&mut self, tick: Tick, part_index: usize, seq: Sequence) {
        // Newest first: parts go out as soon as their tick is built.
        let known = self
            .ring
            .iter()
            .rev()
            .any(|s| s.tick == tick && part_index < s.parts);
        if known {
            // part_index < part count ≤ 256.
            self.part_of_seq.push_back((seq, tick, part_index as u16));
        }
    }

    /// The packet numbered `seq` was acknowledged (`acked`) or declared lost.
    ///
    /// When every part of a tick is acknowledged, that tick becomes the baseline for the
    /// next snapshots (if it is newer than the current one). Call exactly once per packet,
    /// and only acknowledge packets whose part was given to the client's receiver.
    pub fn on_delivery(&mut self, seq: Sequence, acked: bool) {
        let Some((_, tick, index)) = self
            .part_of_seq
            .iter()
            .position(|&(s, _, _)| s == seq)
            .and_then(|i| self.part_of_seq.remove(i))
        else {
            return;
        };
        if !acked {
            return;
        }
        let Some(pos) = self.ring.iter().position(|s| s.tick == tick) else {
            return;
        };
        let sent = &mut self.ring[pos];
        let i = usize::from(index);
        let bit = 1u64 << (i % 64);
        if i >= sent.parts || sent.part_acked[i / 64] & bit != 0 {
            return;
        }
        sent.part_acked[i / 64] |= bit;
        sent.acked_parts += 1;
        if sent.acked_parts < sent.parts {
            return;
        }
        if self.acked.as_ref().is_some_and(|(t, _, _)| *t >= tick) {
            return;
        }
        let acked = match &sent.holds {
            Holds::Whole(world) => (tick, world.clone(), true),
            Holds::Patched {
                baseline, changes, ..
            } => {
                let entries = (0..baseline.len()).map(|i| (baseline.id(i), baseline.state(i)));
                let spare = self.spare_worlds.pop();
                let world = QuantizedWorld::patched(entries, changes, spare);
                (tick, ClientWorld::Own(world), false)
            }
        };
        if let Some((_, old, _)) = self.acked.replace(acked) {
            self.recycle(old);
        }
        // Older history can never become a baseline again.
        while self.ring.front().is_some_and(|s| s.tick < tick) {
            if let Some(old) = self.ring.pop_front() {
                self.recycle_tick(old);
            }
        }
        self.part_of_seq.retain(|&(_, t, _)| t >= tick);
    }

    fn prune(&mut self, now: Tick) {
        let ring = self.config.ring_ticks;
        let before = self.ring.len();
        while self.ring.front().is_some_and(|s| now.0 - s.tick.0 >= ring) {
            if let Some(old) = self.ring.pop_front() {
                self.recycle_tick(old);
            }
        }
        if self.ring.len() != before {
            let oldest = self.ring.front().map_or(now, |s| s.tick);
            self.part_of_seq.retain(|&(_, t, _)| t >= oldest);
        }
    }
}

/// Add `s` to `total`.
pub(crate) fn add_stats(total: &mut SenderStats, s: &SenderStats) {
    total.snapshots += s.snapshots;
    total.full_snapshots += s.full_snapshots;
    total.parts += s.parts;
    total.bytes += s.bytes;
    total.entities_sent += s.entities_sent;
    total.despawns_sent += s.despawns_sent;
    total.entity_payload_bits += s.entity_payload_bits;
    total.resets += s.resets;
    total.entities_deferred += s.entities_deferred;
    total.entities_repeated += s.entities_repeated;
    total.entities_oversized += s.entities_oversized;
    total.entities_shared += s.entities_shared;
}

/// What was added to the counters between `before` and `after`.
fn stats_since(before: &SenderStats, after: &SenderStats) -> SenderStats {
    SenderStats {
        snapshots: after.snapshots - before.snapshots,
        full_snapshots: after.full_snapshots - before.full_snapshots,
        parts: after.parts - before.parts,
        bytes: after.bytes - before.bytes,
        entities_sent: after.entities_sent - before.entities_sent,
        despawns_sent: after.despawns_sent - before.despawns_sent,
        entity_payload_bits: after.entity_payload_bits - before.entity_payload_bits,
        resets: after.resets - before.resets,
        entities_deferred: after.entities_deferred - before.entities_deferred,
        entities_repeated: after.entities_repeated - before.entities_repeated,
        entities_oversized: after.entities_oversized - before.entities_oversized,
        entities_shared: after.entities_shared - before.entities_shared,
    }
}

#[cfg(test)]
mod reset_tests {
    use super::*;
    use crate::snapshot::{EntityId, EntityState, Transform, World};

    fn world(x: f32) -> QuantizedWorld {
        let mut w = World::new();
        for i in 0..10 {
            w.insert(
                EntityId(i),
                EntityState::new(Transform {
                    position: glam::Vec3::new(x + i as f32, 0.0, 0.0),
                    rotation: glam::Quat::IDENTITY,
                    velocity: None,
                }),
            );
        }
        QuantizedWorld::from_world(&w, &QuantizeConfig::default())
    }

    #[test]
    fn part_buffers_a_doubling_grew_are_kept_for_the_next_snapshots() {
        let mut s = SnapshotSender::new(SenderConfig::default()).unwrap();
        let max = s.config.max_part_bytes;
        // A buffer of a 600-byte part that a 700-byte part grew (doubling), and one
        // beyond anything a part can grow a buffer to.
        let mut grown: Vec<u8> = Vec::with_capacity(600);
        grown.extend_from_slice(&[0; 600]);
        grown.clear();
        grown.reserve(700);
        assert!(grown.capacity() > max, "{}", grown.capacity());
        let huge: Vec<u8> = Vec::with_capacity(2 * max + 1);
        s.recycle_parts(vec![grown, huge]);
        assert_eq!(s.spare_parts.len(), 1);
        assert!(s.spare_parts[0].capacity() <= 2 * max);
    }

    #[test]
    fn memory_one_large_snapshot_grew_is_given_back_after_it() {
        let world = |n: u32| {
            let mut w = World::new();
            for i in 0..n {
                w.insert(
                    EntityId(i),
                    EntityState::new(Transform {
                        position: glam::Vec3::new(i as f32, 0.0, 0.0),
                        ..Transform::default()
                    }),
                );
            }
            QuantizedWorld::from_world(&w, &QuantizeConfig::default())
        };
        // The lists are this (test) thread's.
        let capacities = || {
            SCRATCH.with_borrow(|s| {
                [
                    ("spawns", s.spawns.capacity()),
                    ("updates", s.updates.capacity()),
                    ("despawns", s.despawns.capacity()),
                ]
            })
        };
        let mut s = SnapshotSender::new(SenderConfig::default()).unwrap();
        let big = s.build(Tick(1), &world(5000), 1 << 20).unwrap();
        // A first snapshot: spawns alone (no updates).
        let (what, capacity) = capacities()[0];
        assert!(capacity >= 5000, "{what}: {capacity}");
        s.recycle_parts(big);
        s.build(Tick(2), &world(10), 1 << 20).unwrap();
        for (what, capacity) in capacities()
            .into_iter()
            .chain([("spare parts", s.spare_parts.len())])
        {
            assert!(capacity <= 2048, "{what}: {capacity}");
        }
    }

    #[test]
    fn when_everything_fits_the_shortcut_sends_what_ranking_would() {
        // The fast sender is also given back its parts once sent, and writes the next
        // snapshot in them: the same bytes as in new buffers.
        let mut fast = SnapshotSender::new(SenderConfig::default()).unwrap();
        let mut ranked = fast.clone();
        ranked.always_rank = true;
        let mut seq = Sequence(0);
        let mut reused = 0;
        for tick in 1..40u32 {
            // Entities come and go and move; every other tick's parts are acknowledged.
            let mut w = World::new();
            for i in 0..30 {
                if (i + tick) % 7 != 0 {
                    w.insert(
                        EntityId(i),
                        EntityState::new(Transform {
                            position: glam::Vec3::new((i * tick) as f32 * 0.1, 0.0, 0.0),
                            rotation: glam::Quat::IDENTITY,
                            velocity: None,
                        }),
                    );
                }
            }
            let q = QuantizedWorld::from_world(&w, &QuantizeConfig::default());
            // The buffer the first part is written in, if a spare can hold it.
            let spare = fast.spare_parts.last().map(|b| (b.as_ptr(), b.capacity()));
            let a = fast.build(Tick(tick), &q, 8800).unwrap();
            let b = ranked.build(Tick(tick), &q, 8800).unwrap();
            assert_eq!(a, b, "tick {tick}");
            if let Some((at, capacity)) = spare
                && a[0].len() <= capacity
            {
                assert_eq!(a[0].as_ptr(), at, "tick {tick}");
                reused += 1;
            }
            for i in 0..a.len() {
                fast.on_part_sent(Tick(tick), i, seq);
                ranked.on_part_sent(Tick(tick), i, seq);
                fast.on_delivery(seq, tick % 2 == 0);
                ranked.on_delivery(seq, tick % 2 == 0);
                seq = seq.next();
            }
            fast.recycle_parts(a);
        }
        assert!(reused > 20, "{reused} snapshots written in a spare");
        assert_eq!(fast.stats(), ranked.stats());
        assert_eq!(fast.stats().entities_deferred, 0);
    }

    #[test]
    fn a_sender_given_views_sends_what_it_would_for_copies_and_reuses_its_picks() {
        // One sender is given views of the server's worlds (the change ages let it skip
        // entities that did not move without reading them), the other copies of the same
        // scopes: the same bytes and the same held worlds, whatever is lost.
        use crate::snapshot::TickWorld;
        let mut viewed = SnapshotSender::new(SenderConfig::default()).unwrap();
        let mut copied = viewed.clone();
        let mut previous: Option<TickWorld> = None;
        let mut seq = Sequence(0);
        let mut reused = Vec::new();
        let mut skipped = false;
        for tick in 1..60u32 {
            // Every third entity walks, every seventh turns now and then, one comes and goes.
            let mut w = World::new();
            for i in 0..40u32 {
                if i == 17 && (tick / 4) % 2 == 1 {
                    continue;
                }
                let x = if i % 3 == 0 { tick as f32 * 0.5 } else { 0.0 };
                let turn = if i % 7 == 0 {
                    (tick / 5) as f32 * 0.3
                } else {
                    0.0
                };
                w.insert(
                    EntityId(i),
                    EntityState::new(Transform {
                        position: glam::Vec3::new(x + i as f32, 0.0, 0.0),
                        rotation: glam::Quat::from_rotation_y(turn),
                        velocity: None,
                    }),
                );
            }
            let q = QuantizedWorld::from_world(&w, &QuantizeConfig::default());
            let tw = TickWorld::new(q, Tick(tick), previous.as_ref());
            skipped |= tw.changed.iter().any(|&a| a > 0);
            // The scope slides along the ids.
            let lo = (tick / 3) % 10;
            let mut picks = viewed.spare_picks();
            reused.push(picks.capacity() > 0);
            Arc::get_mut(&mut picks)
                .expect("a spare is held by no one")
                .extend(
                    tw.world
                        .entities()
                        .iter()
                        .enumerate()
                        .filter(|(_, (id, _))| (lo..lo + 25).contains(&id.0))
                        .map(|(i, _)| i as u32),
                );
            let view = ClientWorld::View(tw.view(picks));
            let copy = view.to_world();
            // A tight budget now and then, so some baselines are patched ones.
            let budget = if tick % 9 == 0 { 60 } else { 8800 };
            let a = viewed
                .build_weighted(Tick(tick), view, budget, None, None)
                .unwrap();
            let b = copied.build(Tick(tick), &copy, budget).unwrap();
            assert_eq!(a, b, "tick {tick}");
            for i in 0..a.len() {
                viewed.on_part_sent(Tick(tick), i, seq);
                copied.on_part_sent(Tick(tick), i, seq);
                let acked = tick % 4 != 1;
                viewed.on_delivery(seq, acked);
                copied.on_delivery(seq, acked);
                seq = seq.next();
            }
            assert_eq!(
                viewed.acked_baseline(),
                copied.acked_baseline(),
                "tick {tick}"
            );
            previous = Some(tw);
        }
        assert_eq!(viewed.stats(), copied.stats());
        assert!(
            viewed.stats().entities_deferred > 0,
            "some baselines were patched"
        );
        assert!(skipped, "some entities kept a change of an earlier tick");
        // Picks come back once the client holds a newer tick.
        assert!(
            !reused[0] && reused[5..].iter().filter(|&&r| r).count() > 30,
            "{reused:?}"
        );
        // A sender that is never given views keeps no spares.
        assert!(copied.spare.is_empty());
    }

    #[test]
    fn a_snapshot_is_shared_only_with_a_client_holding_the_same_whole_baseline() {
        let mut seq = Sequence(0);
        let mut deliver = |s: &mut SnapshotSender, tick: u32, parts: usize| {
            for i in 0..parts {
                s.on_part_sent(Tick(tick), i, seq);
                s.on_delivery(seq, true);
                seq = seq.next();
            }
        };
        let (w1, w2) = (world(0.0), world(1.0));
        let (mut a, mut b) = (
            SnapshotSender::new(SenderConfig::default()).unwrap(),
            SnapshotSender::new(SenderConfig::default()).unwrap(),
        );
        // Both start without a baseline: a full snapshot, built once.
        let (parts, shared) = a.build_shareable(Tick(1), &w1, 8800).unwrap();
        let shared = shared.expect("every entity fit: shareable");
        assert!(!b.adopt(&shared, &w1, 4000), "another budget");
        assert!(
            !b.adopt(&shared, &world(0.0), 8800),
            "another world value, equal or not"
        );
        assert!(b.adopt(&shared, &w1, 8800));
        assert_eq!(b.stats().bytes, a.stats().bytes);
        deliver(&mut a, 1, parts.len());
        deliver(&mut b, 1, parts.len());
        assert_eq!(b.acked_baseline(), Some((Tick(1), w1.clone())));

        // A delta both can take, then one the budget cuts: that one is not shareable, and
        // its baseline is the client's own.
        let (_, shared) = a.build_shareable(Tick(2), &w2, 8800).unwrap();
        assert!(b.adopt(&shared.expect("shareable"), &w2, 8800));
        let (parts, shared) = a.build_shareable(Tick(3), &world(2.0), 40).unwrap();
        assert!(
            shared.is_none(),
            "entities waited: not every difference was sent"
        );
        deliver(&mut a, 3, parts.len());
        assert_eq!(
            a.shareable_baseline(Tick(4)),
            None,
            "a patched baseline is its own"
        );
        assert!(b.shareable_baseline(Tick(4)).is_some());
    }

    #[test]
    fn reset_forces_a_full_snapshot_and_ignores_late_acks() {
        let mut s = SnapshotSender::new(SenderConfig::default()).unwrap();
        let mut seq = Sequence(0);
        let mut send = |s: &mut SnapshotSender, tick: u32, x: f32| -> Vec<Sequence> {
            let parts = s.build(Tick(tick), &world(x), 8800).unwrap();
            (0..parts.len())
                .map(|i| {
                    let q = seq;
                    seq = seq.next();
                    s.on_part_sent(Tick(tick), i, q);
                    q
                })
                .collect()
        };
        let first = send(&mut s, 1, 0.0);
        for q in &first {
            s.on_delivery(*q, true);
        }
        assert_eq!(s.acked_baseline().map(|(t, _)| t), Some(Tick(1)));
        let in_flight = send(&mut s, 2, 1.0);
        s.reset_baseline();
        assert!(s.acked_baseline().is_none());
        // A tick sent before the reset, acked after it, must not become the baseline.
        for q in &in_flight {
            s.on_delivery(*q, true);
        }
        assert!(s.acked_baseline().is_none());
        let before = s.stats().full_snapshots;
        send(&mut s, 3, 2.0);
        assert_eq!(
            s.stats().full_snapshots,
            before + 1,
            "the next snapshot is full"
        );
        assert_eq!(s.stats().resets, 1);
    }
}

#[cfg(test)]
mod packing_tests {
    use super::*;
    use proptest::prelude::*;

    /// Candidates at `keys` (increasing), each of `payload_bits`.
    fn candidates(keys: &[u32], payload_bits: u32) -> Vec<Candidate> {
        keys.iter()
            .map(|&key| Candidate {
                key,
                world_index: key,
                payload_bits,
                own: SHARED,
                bits: BitString::default(),
            })
            .collect()
    }

    /// Distinct increasing keys below `span` from the raw draws.
    fn keys(mut raw: Vec<u32>, span: u32) -> Vec<u32> {
        for k in &mut raw {
            *k %= span;
        }
        raw.sort_unstable();
        raw.dedup();
        raw
    }

    proptest! {
        /// The bound is never below what the packing charges a list, whatever its gaps.
        #[test]
        fn the_gaps_bound_holds_what_packing_charges(
            raw in proptest::collection::vec(any::<u32>(), 1..400),
            span in 1u32..20_000,
        ) {
            let keys = keys(raw, span);
            let last = *keys.last().unwrap() as usize;
            let updates: usize = keys
                .iter()
                .enumerate()
                .map(|(n, &k)| {
                    let prev = n.checked_sub(1).map(|p| keys[p] as usize);
                    list_gap_bits(prev, k as usize)
                })
                .sum();
            let spawns: usize = keys
                .iter()
                .enumerate()
                .map(|(n, &k)| {
                    let prev = n.checked_sub(1).map(|p| EntityId(keys[p]));
                    spawn_gap_bits(prev, EntityId(k))
                })
                .sum();
            prop_assert!(gaps_bound(keys.len(), Some(last), part::index_gap_bits) >= updates);
            let id_bits = |g: usize| part::id_gap_bits(g as u32);
            prop_assert!(gaps_bound(keys.len(), Some(last), id_bits) >= spawns);
        }

        /// Where the one-part bound fits, weighing every gap makes that same one part, its
        /// estimate within the bound.
        #[test]
        fn a_snapshot_the_bound_fits_is_the_one_part_packing_makes(
            raw_updates in proptest::collection::vec(any::<u32>(), 0..300),
            raw_despawns in proptest::collection::vec(any::<u32>(), 0..20),
            raw_spawns in proptest::collection::vec(any::<u32>(), 0..40),
            payload_bits in 1u32..40,
            span in 1u32..5_000,
        ) {
            let updates = candidates(&keys(raw_updates, span), payload_bits);
            let despawns: Vec<usize> =
                keys(raw_despawns, span).into_iter().map(|d| d as usize).collect();
            let spawns = candidates(&keys(raw_spawns, 4 * span), payload_bits);
            let capacity = 1100 * 8;
            let payload = (updates.len() + spawns.len()) * payload_bits as usize;
            let bound = one_part_bound(payload, &updates, &despawns, &spawns);
            let mut parts = Vec::new();
            pack(&mut parts, &updates, &despawns, &spawns, capacity);
            if bound <= capacity {
                prop_assert_eq!(parts.len(), 1);
                let p = &parts[0];
                prop_assert_eq!(p.updates.clone(), 0..updates.len());
                prop_assert_eq!(p.despawns.clone(), 0..despawns.len());
                prop_assert_eq!(p.spawns.clone(), 0..spawns.len());
                prop_assert!(p.bits <= bound);
            }
        }
    }
}
