//! Who sees what: rooms, and an area of interest around each client's point of view.
//!
//! Without either, every client receives every entity. With them, the server builds each
//! client's own world every send tick — the entities in its scope — and delta-encodes that.
//! An entity entering a scope is a spawn on that client (full state), one leaving it a
//! despawn, and both ride the same acknowledged-baseline machinery as any other change: the
//! sender compares against what the client holds in full, so a scope change is applied
//! exactly once however the link loses, duplicates or reorders parts.
//!
//! Scope rules, in order:
//! 1. a client always sees the entity it owns;
//! 2. an entity in one or more rooms is seen only by clients in one of those rooms; an
//!    entity in no room is public;
//! 3. with an [`InterestConfig`], a client sees a public or shared entity once it is within
//!    `radius_m` of the client's view point, measured on the ground plane (x and z), and
//!    keeps seeing it until it is beyond `radius_m + hysteresis_m`, so an entity on the edge
//!    does not flicker in and out. A client with no view point sees nothing by distance;
//! 4. an entity the game marks always visible
//!    ([`Server::set_always_visible`](super::Server::set_always_visible): a scoreboard, a
//!    flag, a boss on the map) skips rule 3: every client rule 2 lets see it sees it,
//!    wherever it and the client are.
//!
//! The view point is the position of the client's owned entity unless the game sets one
//! ([`Server::set_view_point`](super::Server::set_view_point)). Positions are indexed once
//! per send tick in a uniform grid whose cells are an eighth of the scope's outer radius
//! wide, stored row by row, so a client's scope reads one run of memory per row of cells
//! its circle crosses (about 1.25 times the circle's area), not the whole world. Such a scan
//! also notes the scope's band, the entities close enough to its edge to cross it soon; until
//! the view point and the fastest entities may have moved a skin (a tenth of the outer
//! radius) further, a send tick measures the band alone, because nothing else can have
//! crossed. The scope is the same either way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use glam::{Vec2, Vec3};

use super::config::ConfigError;
use crate::connection::ClientId;
use crate::snapshot::{ClientWorld, EntityId, PriorityWeights, TickWorld};

/// A named group of clients and entities (a match, a zone, a team's chat), chosen by the game.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId(pub u32);

/// The spatial area of interest: a client sees an entity once it is within `radius_m` of the
/// client's view point on the ground plane (x and z), and until it is beyond
/// `radius_m + hysteresis_m`. Rooms narrow that further, and a client always sees the entity
/// it owns. The view point is the owned entity's position unless the game sets one
/// ([`Server::set_view_point`](super::Server::set_view_point)).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct InterestConfig {
    /// Entities within this distance of a client's view point (ground plane, metres) enter
    /// its scope.
    pub radius_m: f32,
    /// How much further an entity may go before it leaves the scope again (default: a tenth
    /// of the radius), so one moving along the edge is not spawned and despawned each tick.
    pub hysteresis_m: f32,
    /// Weigh each entity's priority by its distance (default true): a change at the edge
    /// gains priority a fifth as fast as one next to the client, so under a tight budget far
    /// entities update less often and near ones keep their rate.
    pub distance_priority: bool,
}

impl InterestConfig {
    /// A scope of `radius_m`, with the default hysteresis and distance priority.
    pub fn radius(radius_m: f32) -> Self {
        Self {
            radius_m,
            hysteresis_m: radius_m * 0.1,
            distance_priority: true,
        }
    }

    /// Where an entity leaves the scope.
    pub fn outer_radius_m(&self) -> f32 {
        self.radius_m + self.hysteresis_m
    }

    /// How wide a scope's [`Band`] reaches on each side of its edge.
    fn skin_m(&self) -> f32 {
        self.outer_radius_m() * BAND_SKIN_PER_REACH
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.radius_m.is_finite() && self.radius_m > 0.0) {
            return Err(ConfigError::Invalid("interest radius must be above zero"));
        }
        if !(self.hysteresis_m.is_finite() && self.hysteresis_m >= 0.0) {
            return Err(ConfigError::Invalid(
                "interest hysteresis must be zero or more",
            ));
        }
        if !self.outer_radius_m().is_finite() {
            return Err(ConfigError::Invalid("interest radius too large"));
        }
        Ok(())
    }

    /// How fast an entity at `distance_m` gains priority: 1 next to the client, 0.2 at the
    /// radius.
    fn weight(&self, distance_m: f32) -> f32 {
        if self.distance_priority {
            1.0 / (1.0 + 4.0 * distance_m / self.radius_m)
        } else {
            1.0
        }
    }
}

/// Grid cells per scope reach. A scope reads, row by row, the run of cells its circle
/// crosses in that row (one slice of memory per row, see [`Grid`]), so the finer the cells,
/// the closer what it reads comes to the circle itself: with 8 cells per reach about 1.25
/// times the circle's area (the 5 × 5 cells half a reach wide read before were 2).
const GRID_CELLS_PER_REACH: f32 = 8.0;

/// Most cells a grid has per entity (and at least [`MIN_GRID_CELLS`]): entities beyond are
/// counted in the edge cells (a scope still measures each one it reads, so it stays exact;
/// only a world spread much wider than its scopes reads more than it needs), so a few
/// strays far out cannot make the grid huge.
const MAX_GRID_CELLS_PER_ENTITY: usize = 4;
const MIN_GRID_CELLS: usize = 4096;

/// The world positions of one send tick, bucketed by grid cell.
///
/// Cells are numbered row by row (z, then x) and the entities are stored sorted by cell, so
/// a run of cells in one row is one slice of `entities`: a scope reads one slice per row.
#[derive(Debug, Default)]
struct Grid {
    cell_m: f32,
    /// The cell of the grid's first column and row.
    origin: (i64, i64),
    /// Columns and rows.
    size: (i64, i64),
    /// Where each cell's entities start in `entities` (one more entry, the end).
    starts: Vec<u32>,
    /// The entities of every cell, cell by cell, each cell's by increasing index.
    entities: Vec<GridEntity>,
    /// Each entity's cell number, reused from tick to tick.
    cells: Vec<u32>,
}

/// One entity in a grid cell: its index in the tick's world, with its ground position beside
/// it, so that scanning a cell reads one run of memory and never the world itself. Twelve
/// bytes (a scope reads a few hundred each tick): the id, needed only with rooms or without
/// last tick's bits, is looked up by index.
#[derive(Clone, Copy, Debug)]
struct GridEntity {
    index: u32,
    position: Vec2,
}

impl Grid {
    /// The unbounded cell of `p` (`as` saturates, NaN becomes 0: a stray position lands in
    /// some cell, never panics).
    fn cell_of(&self, p: Vec2) -> (i64, i64) {
        (floor_i64(p.x / self.cell_m), floor_i64(p.y / self.cell_m))
    }

    /// Column or row `c` of axis `axis`, clamped into the grid.
    fn clamp(&self, c: i64, axis: usize) -> i64 {
        let (origin, size) = if axis == 0 {
            (self.origin.0, self.size.0)
        } else {
            (self.origin.1, self.size.1)
        };
        (c.saturating_sub(origin)).clamp(0, size - 1)
    }

    /// Bucket `positions` (ground positions, in world order) for scopes that reach `reach`.
    fn rebuild(&mut self, reach: f32, positions: &[Vec2]) {
        let (mut min, mut max) = (Vec2::MAX, Vec2::MIN);
        let n = positions.len();
        for &p in positions {
            if p.is_finite() {
                (min, max) = (min.min(p), max.max(p));
            }
        }
        if min.x > max.x {
            (min, max) = (Vec2::ZERO, Vec2::ZERO);
        }
        let limit = (MAX_GRID_CELLS_PER_ENTITY * n).max(MIN_GRID_CELLS) as i64;
        let span = |lo: i64, hi: i64| hi.saturating_sub(lo).saturating_add(1);
        // Fine cells, unless the world is too wide for that many: then coarser ones, down
        // to cells half a reach wide.
        self.cell_m = reach / GRID_CELLS_PER_REACH;
        let (lo, size) = loop {
            let (lo, hi) = (self.cell_of(min), self.cell_of(max));
            let size = (span(lo.0, hi.0), span(lo.1, hi.1));
            if size.0.saturating_mul(size.1) <= limit || self.cell_m >= reach / 2.0 {
                break (lo, size);
            }
            self.cell_m *= 2.0;
        };
        if size.0.saturating_mul(size.1) <= limit {
            self.origin = lo;
            self.size = size;
        } else {
            // Still too wide for its entities (strays far out): a square window of `limit`
            // cells centred on the median entity, the rest counted in its edge cells.
            let side = ((limit as f64).sqrt() as i64).max(1);
            let median = |axis: fn((i64, i64)) -> i64| {
                let mut v: Vec<i64> = positions.iter().map(|&p| axis(self.cell_of(p))).collect();
                let mid = v.len() / 2;
                *v.select_nth_unstable(mid).1
            };
            let (mx, mz) = (median(|c| c.0), median(|c| c.1));
            self.origin = (mx.saturating_sub(side / 2), mz.saturating_sub(side / 2));
            self.size = (side, side);
        }
        // At most `limit` cells: a few per entity.
        let cells = (self.size.0 * self.size.1) as usize;
        self.starts.clear();
        self.starts.resize(cells + 1, 0);
        self.cells.clear();
        for &p in positions {
            let (x, z) = self.cell_of(p);
            let cell = (self.clamp(z, 1) * self.size.0 + self.clamp(x, 0)) as u32;
            self.cells.push(cell);
            self.starts[cell as usize + 1] += 1;
        }
        for i in 0..cells {
            self.starts[i + 1] += self.starts[i];
        }
        // A counting sort: each entity goes to the next free place of its cell, in world
        // order, so each cell's entities keep increasing indices.
        let mut next = self.starts.clone();
        self.entities.clear();
        let placeholder = GridEntity {
            index: 0,
            position: Vec2::ZERO,
        };
        self.entities.resize(n, placeholder);
        for (i, (&position, &cell)) in positions.iter().zip(&self.cells).enumerate() {
            let at = &mut next[cell as usize];
            self.entities[*at as usize] = GridEntity {
                // A world holds fewer than u32::MAX entities (ids are u32).
                index: i as u32,
                position,
            };
            *at += 1;
        }
    }

    /// The entities of the cells that a circle of `reach` around `center` touches, a row of
    /// cells at a time (each row cut to the circle's chord across it).
    fn near(&self, center: Vec2, reach: f32, mut each: impl FnMut(&[GridEntity])) {
        if self.entities.is_empty() || !center.is_finite() {
            return;
        }
        let (_, z_lo) = self.cell_of(center - Vec2::splat(reach));
        let (_, z_hi) = self.cell_of(center + Vec2::splat(reach));
        let (z_lo, z_hi) = (self.clamp(z_lo, 1), self.clamp(z_hi, 1));
        for row in z_lo..=z_hi {
            // The row's band of z, and how far the circle reaches across it in x. The first
            // and last rows also hold what lies beyond the grid: read them whole.
            let half = if row == 0 || row == self.size.1 - 1 {
                reach
            } else {
                let z0 = (row + self.origin.1) as f32 * self.cell_m;
                let dz = (z0 - center.y).max(center.y - (z0 + self.cell_m)).max(0.0);
                (reach * reach - dz * dz).max(0.0).sqrt()
            };
            let (x_lo, _) = self.cell_of(Vec2::new(center.x - half, 0.0));
            let (x_hi, _) = self.cell_of(Vec2::new(center.x + half, 0.0));
            let first = (row * self.size.0 + self.clamp(x_lo, 0)) as usize;
            let last = (row * self.size.0 + self.clamp(x_hi, 0)) as usize;
            let run = self.starts[first] as usize..self.starts[last + 1] as usize;
            if !run.is_empty() {
                each(&self.entities[run]);
            }
        }
    }
}

/// `v.floor() as i64`, without the call to the C library's `floorf` that `floor` is on
/// x86-64's baseline (a grid places every entity each tick): truncate, then step down where
/// that rounded a negative number up. Saturates and takes NaN to 0, as the cast does.
fn floor_i64(v: f32) -> i64 {
    let t = v as i64;
    t.saturating_sub(i64::from(t as f32 > v))
}

/// One client's scope as of the last send tick.
#[derive(Debug, Default, Clone)]
pub(super) struct Scope {
    /// Rooms the client is in.
    pub(super) rooms: BTreeSet<RoomId>,
    /// Set by the game; otherwise the owned entity's position.
    pub(super) view_point: Option<Vec3>,
    /// The entities in scope: their indices in the last send tick's world, increasing. The
    /// very list the client's view of that tick holds (one `Arc`, never copied), and the
    /// next tick reads it for the hysteresis.
    picks: Arc<Vec<u32>>,
    /// The ids of that world, which `picks` index (see [`TickWorld::ids`]).
    ids: Arc<Vec<EntityId>>,
    /// Where the owned entity was in that world: usually where it still is, so finding it is
    /// one read instead of a binary search of the world (a dozen cache misses a client).
    owned_at: usize,
    /// The entities near the scope's edge, which alone may cross it for a while.
    band: Band,
}

impl Scope {
    /// Ask for the lists the next scope reads first to be brought into the caches (see
    /// [`crate::prefetch`]).
    pub(super) fn prefetch(&self) {
        crate::prefetch::value(&*self.picks);
        crate::prefetch::slice(&self.picks);
        crate::prefetch::slice(&self.band.entries);
    }

    /// Ask for the scope's own fields to be brought into the caches (its lists are asked
    /// for by [`Self::prefetch`], which reads these fields to find them).
    pub(super) fn prefetch_fields(&self) {
        crate::prefetch::value(&self.rooms);
        crate::prefetch::value(&self.view_point);
        crate::prefetch::value(&self.picks);
        crate::prefetch::value(&self.band);
        crate::prefetch::value(&self.band.entries);
    }

    /// The entities in scope, by increasing id.
    pub(super) fn visible(&self) -> impl ExactSizeIterator<Item = EntityId> + '_ {
        self.picks.iter().map(|&i| self.ids[i as usize])
    }
}

/// Bitmaps of the tick's world and lists a scope is worked out in, one set per thread and
/// used by every client that thread works for, in turn: a client's own were cold by its
/// next turn (a thousand clients' scopes are worked out in between).
#[derive(Debug, Default)]
struct ScopeBits {
    /// The client's last scope, by index.
    previous: Vec<u64>,
    /// To put the new scope's indices in order ([`sort_dedup`]).
    order: Vec<u64>,
    /// The client's last scope in the indices of this tick's world, when entities came or
    /// went ([`Remap`]).
    moved: Vec<u32>,
    /// The band's entities that entered or left the scope this tick ([`Band::update`]).
    crossed: Vec<(u32, bool)>,
    /// The entities of the band a scan finds ([`Interest::scan`]), by index.
    band: Vec<u64>,
}

thread_local! {
    static SCOPE_BITS: std::cell::RefCell<ScopeBits> = std::cell::RefCell::default();
}

/// What one client receives this send tick.
#[derive(Debug)]
pub(super) struct ScopedWorld<'a> {
    /// A view of the tick's world.
    pub(super) world: ClientWorld,
    /// Priority weight per entity of `world`, when distance priority is on.
    pub(super) weights: Option<DistanceWeights<'a>>,
    /// Whether the scope was found by a scan of the grid (or of the world), not kept by its
    /// band.
    pub(super) scanned: bool,
}

/// How fast each entity gains priority for one client: by its distance from the client's
/// view point.
///
/// Worked out only for the entities a sender ranks, which is none while everything that
/// changed fits the budget (the usual tick): measuring every entity in scope each tick was
/// a few percent of a scoped server's time.
#[derive(Clone, Copy, Debug)]
pub(super) struct DistanceWeights<'a> {
    config: InterestConfig,
    view: Vec2,
    /// Ground position of each entity of the tick's world, by index.
    positions: &'a [Vec2],
    /// The index in the tick's world of each entity in scope.
    indices: &'a [u32],
}

impl PriorityWeights for DistanceWeights<'_> {
    fn weight(&self, index: usize) -> f32 {
        let position = self
            .indices
            .get(index)
            .and_then(|&i| self.positions.get(i as usize));
        position.map_or(1.0, |p| self.config.weight(p.distance(self.view)))
    }
}

/// Bit `i` of `bits` (0 beyond them), as a number so that reading it needs no branch.
fn bit(bits: &[u64], i: u32) -> u64 {
    let i = i as usize;
    bits.get(i / 64).map_or(0, |w| (w >> (i % 64)) & 1)
}

/// Whether a bitmap of `words` words is cheaper to clear and read than `n` indices are to
/// sort or search.
fn bitmap_pays(words: usize, n: usize) -> bool {
    words <= 4 * n + 64
}

/// Set bit `i` of `bits` when `on` (a number, so that setting it or not needs no branch);
/// beyond the bitmap, nothing.
fn set_bit(bits: &mut [u64], i: u32, on: bool) {
    if let Some(word) = bits.get_mut(i as usize / 64) {
        *word |= u64::from(on) << (i % 64);
    }
}

/// Clear bit `i` of `bits`; beyond the bitmap, nothing.
fn clear_bit(bits: &mut [u64], i: u32) {
    if let Some(word) = bits.get_mut(i as usize / 64) {
        *word &= !(1 << (i % 64));
    }
}

/// Make `bits` a bitmap of `words` words with the bit of each of `indices` set.
fn set_bits(bits: &mut Vec<u64>, words: usize, indices: &[u32]) {
    bits.clear();
    bits.resize(words, 0);
    for &i in indices {
        set_bit(bits, i, true);
    }
}

/// `each(i)` for the index `i` of every bit set in `bits`, in increasing order.
fn each_bit(bits: &[u64], mut each: impl FnMut(u32)) {
    for (w, &word) in bits.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            // A bitmap of a world is as long as its entities, which fit a u32 (ids are u32).
            each((w * 64) as u32 + word.trailing_zeros());
            word &= word - 1;
        }
    }
}

/// Replace `indices` with the index of every bit set in `bits`, in increasing order.
fn read_bits(bits: &[u64], indices: &mut Vec<u32>) {
    indices.clear();
    each_bit(bits, |i| indices.push(i));
}

/// Put `indices` (each below `len`) in increasing order without duplicates.
///
/// A scope gathers its indices cell by cell, so they come out of order. Setting one bit per
/// index in a bitmap of the world and reading the bits back costs a word per 64 entities of
/// the world: far less than sorting, unless the scope is a small share of a huge world.
fn sort_dedup(indices: &mut Vec<u32>, seen: &mut Vec<u64>, len: usize) {
    let words = len.div_ceil(64);
    if !bitmap_pays(words, indices.len()) {
        indices.sort_unstable();
        indices.dedup();
        return;
    }
    set_bits(seen, words, indices);
    read_bits(seen, indices);
}

/// How far a scope's [`Band`] reaches on each side of the scope's edge, as a share of its
/// outer radius. The wider, the more entities a send tick measures, and the longer the band
/// lasts (it is found again, by a scan, once the view point and the entities may have moved
/// this far). At 100 m with 10 m of hysteresis that is 11 m: the band is the entities
/// between 99 and 111 m, and walkers at 6 m/s next to a view point walking as fast (a bound
/// that grows 0.4 m a tick at 30 Hz, against 5–10.5 m of slack) let it last some 12 to 26
/// ticks. A fortieth, a twentieth and a fifth of the outer radius
/// were no faster at 1,000 clients of the `massive` scene.
const BAND_SKIN_PER_REACH: f32 = 0.1;

/// At most this many entities a send tick are counted as leapers (see [`Motion`]): each
/// scope reads every one of them (two distances, in one run of memory), so many more would
/// cost each scope more than the scans they save. At 1,000 clients of the `massive` scene
/// with 5 % loss, 32 left most ticks without leapers.
const MAX_LEAPERS: usize = 128;

/// A step counts towards a leap only beyond this share of the skin: below it the longest
/// step is added as it is, and no second pass is made (the usual tick of a walking crowd).
const LEAP_PER_SKIN: f32 = 1.0 / 32.0;

/// How far the entities of the world have moved from send tick to send tick, in a form
/// that bounds how far any one of them went since a given tick: the sum over the ticks of
/// a bound on the step every entity took but the tick's *leapers*, and an epoch that counts
/// the ticks at which no bound was kept (a position went to or came from one that is not
/// finite, a step too long to bound, or too many leapers): a [`Band`] found before such a
/// tick is found again.
///
/// The leapers are the few entities whose step was far longer than the rest's (a teleport,
/// a respawn, an avatar catching up on inputs that came late) and those that arrived in the
/// world this tick: each scope measures those near it itself ([`Band::admit`]), so one of
/// them no longer uses up every scope's band.
#[derive(Debug, Default)]
struct Motion {
    travel: f64,
    epoch: u64,
    /// Send ticks counted, so that a band knows it saw every tick's leapers.
    ticks: u64,
    /// This tick's leapers, by increasing index; empty after a new epoch.
    leapers: Vec<Leap>,
}

impl Motion {
    /// Count the step from `before` to `now` (the positions of two send ticks, by index).
    fn advance(&mut self, before: &[Vec2], now: &[Vec2], skin: f32) {
        self.ticks += 1;
        self.leapers.clear();
        if before.len() != now.len() {
            self.epoch += 1;
            return;
        }
        // The usual tick, every position finite: the longest step squared, in one pass
        // without branches (a NaN anywhere shows in the sum), in eight lanes the compiler
        // can keep in vector registers (one running maximum would be a chain of 10,000).
        const LANES: usize = 8;
        let (mut top, mut sums) = ([0.0f32; LANES], [0.0f32; LANES]);
        let mut step = |lane: usize, a: &Vec2, b: &Vec2| {
            let d2 = a.distance_squared(*b);
            top[lane] = top[lane].max(d2);
            sums[lane] += d2;
        };
        let (whole, rest) = (before.len() / LANES * LANES, before.len() % LANES);
        for (a, b) in before[..whole]
            .chunks_exact(LANES)
            .zip(now[..whole].chunks_exact(LANES))
        {
            for lane in 0..LANES {
                step(lane, &a[lane], &b[lane]);
            }
        }
        for i in 0..rest {
            step(i, &before[whole + i], &now[whole + i]);
        }
        let longest2 = top.into_iter().fold(0.0f32, f32::max);
        let sum: f32 = sums.iter().sum();
        let (mut longest, mut jumped) = (longest2.sqrt(), false);
        if !sum.is_finite() {
            // Positions that are not finite, or steps too long for a square: step by step.
            longest = 0.0;
            for (a, b) in before.iter().zip(now) {
                match (a.is_finite(), b.is_finite()) {
                    (true, true) => longest = longest.max(a.distance(*b)),
                    // Out of every scope before and after.
                    (false, false) => {}
                    _ => jumped = true,
                }
            }
        }
        if !jumped && longest > skin * LEAP_PER_SKIN {
            longest = self.leap(before, now, longest);
        }
        // Also when the distance overflowed (to infinity).
        if jumped || longest > skin {
            self.epoch += 1;
            self.leapers.clear();
        } else {
            self.travel += f64::from(longest);
        }
    }

    /// Count the entities at `came` (indices of the new world, increasing) as leapers from
    /// nowhere: no scope held them, and each one near a scope joins its band. A new epoch
    /// when that makes too many leapers.
    fn arrive(&mut self, came: &[u32], now: &[Vec2]) {
        if came.is_empty() {
            return;
        }
        if self.leapers.len() + came.len() > MAX_LEAPERS {
            self.epoch += 1;
            self.leapers.clear();
            return;
        }
        self.leapers.extend(came.iter().map(|&index| Leap {
            index,
            before: Vec2::INFINITY,
            now: now.get(index as usize).copied().unwrap_or(Vec2::NAN),
        }));
        self.leapers.sort_unstable_by_key(|l| l.index);
    }

    /// Find the leapers among steps whose longest is `longest` (every position finite): the
    /// entities beyond the shortest bound of the form `longest / 2^j` that at most
    /// [`MAX_LEAPERS`] steps exceed. Returns the longest step of every other entity (`longest`
    /// itself, and no leapers, when more than that many are within a half of it).
    fn leap(&mut self, before: &[Vec2], now: &[Vec2], longest: f32) -> f32 {
        const LEVELS: usize = 24;
        // How many steps exceed each bound: a step's level is how many halvings of the
        // longest step are still below it, read off the exponents of the squares (two per
        // halving; the exact count is taken below).
        let mut beyond = [0usize; LEVELS + 1];
        let top = (longest * longest).to_bits() >> 23;
        for (a, b) in before.iter().zip(now) {
            let below = top.saturating_sub(a.distance_squared(*b).to_bits() >> 23) / 2;
            beyond[(below as usize).min(LEVELS)] += 1;
        }
        // A step at a level above `j` is shorter than `longest / 2^(j + 1/2)`: at most
        // the steps at levels up to `j` exceed that bound.
        let mut bound = longest;
        let mut count = 0;
        for (j, n) in beyond.iter().take(LEVELS).enumerate() {
            count += n;
            if count > MAX_LEAPERS {
                break;
            }
            bound = longest * std::f32::consts::FRAC_1_SQRT_2 / (1u32 << j) as f32;
        }
        if bound == longest {
            return longest;
        }
        // Every other step is within the bound but may fall well short of it (the levels go
        // by halves): the travel adds the longest of them instead, as every band's slack
        // runs out the sooner the more the travel adds. With loss that is most ticks: some
        // avatar catches up on late inputs with a step 1.5 or 2 times the crowd's.
        let b2 = bound * bound;
        let mut stayed2 = 0.0f32;
        for (i, (&a, &b)) in before.iter().zip(now).enumerate() {
            let d2 = a.distance_squared(b);
            if d2 > b2 {
                self.leapers.push(Leap {
                    // Indices of a world of u32 ids.
                    index: i as u32,
                    before: a,
                    now: b,
                });
            } else {
                stayed2 = stayed2.max(d2);
            }
        }
        if self.leapers.len() > MAX_LEAPERS {
            self.leapers.clear();
            return longest;
        }
        stayed2.sqrt()
    }
}

/// The indices of one send tick's world in the next one's, when entities came or went.
#[derive(Debug)]
struct Remap {
    /// The ids of the world the old indices index.
    from: Arc<Vec<EntityId>>,
    /// The new index of each old one; [`GONE`] for an entity that is no longer there.
    to_new: Vec<u32>,
}

/// How last tick's picks of a scope index this tick's world ([`Interest::scan`]).
#[derive(Clone, Copy)]
enum LastPicks<'a> {
    /// As they are: the world holds the same entities.
    Same,
    /// Moved along with their entities by the remap.
    Moved(&'a Remap),
    /// Not at all: each is found by its id.
    ById,
}

/// In [`Remap::to_new`]: the entity left the world.
const GONE: u32 = u32::MAX;

impl Remap {
    /// Where the entity at old index `i` is now, if it is still there.
    fn to(&self, i: u32) -> Option<u32> {
        self.to_new.get(i as usize).copied().filter(|&n| n != GONE)
    }

    /// `indices` (increasing) in the new world, those gone left out: still increasing,
    /// since both worlds are in id order. Every index is looked up, and the few gone are
    /// taken out after, when there are any (each scope runs this on every tick entities
    /// come or go).
    fn apply(&self, indices: &[u32], out: &mut Vec<u32>) {
        out.clear();
        out.extend(
            indices
                .iter()
                .map(|&i| self.to_new.get(i as usize).copied().unwrap_or(GONE)),
        );
        if out.contains(&GONE) {
            out.retain(|&n| n != GONE);
        }
    }
}

/// One entity that leapt this send tick: its index and where it was before and is now,
/// side by side so that every scope reads a tick's leapers in one run of memory.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Leap {
    index: u32,
    before: Vec2,
    now: Vec2,
}

/// The entities near the edge of one client's scope, found by the last scan: those that
/// could enter or leave the scope before the view point and the entities have moved, taken
/// together, a skin ([`BAND_SKIN_PER_REACH`]) further. Every other entity but a tick's
/// leapers (which join the band when near it, [`Band::admit`]) stays on its side until
/// then — one in scope that was a skin or more inside the outer radius, one out of it that
/// was more than a skin beyond the radius — so while the band holds, a send tick
/// measures the band's few dozen entities instead of scanning the few hundred around the
/// view point, and the scope it gives is the one a scan would give.
#[derive(Debug, Default, Clone)]
struct Band {
    /// Whether the last scope was found by a scan that also found this band.
    valid: bool,
    /// The [`Motion`] then.
    epoch: u64,
    travel: f64,
    /// The [`Motion::ticks`] of the last send tick the band was found or kept at: a band
    /// that missed a tick missed its leapers.
    seen: u64,
    /// Entities in the band when it was found: leapers join it, and a band grown far
    /// beyond that is found again.
    found: usize,
    /// The view point and the owned entity's index then.
    view: Vec2,
    owned: Option<u32>,
    /// [`Interest::always_changes`] then: a band found before the game marked or unmarked
    /// an entity always visible does not hold (the entity may be far from every band).
    always: u64,
    /// How far, taken together, things may move before the band is found again: a share
    /// of the skin that differs from scope to scope (see [`Interest::band_slack`]), so that
    /// clients' scans fall on different ticks instead of all on one.
    slack: f32,
    /// The band's entities by increasing index in the tick's world, each with whether it
    /// is in scope.
    entries: Vec<(u32, bool)>,
}

impl Band {
    /// Whether the band still holds every entity that may cross the scope's edge.
    fn holds(&self, motion: &Motion, view: Vec2, owned: Option<u32>, always: u64) -> bool {
        let moved = || (motion.travel - self.travel) as f32 + view.distance(self.view);
        self.valid
            && self.always == always
            && self.epoch == motion.epoch
            && self.seen + 1 == motion.ticks
            && self.owned == owned
            && self.entries.len() <= 2 * (self.found + MAX_LEAPERS)
            && moved() < self.slack
    }

    /// Take in this tick's leapers ([`Motion`]) that the scope must measure itself: each
    /// one that was or is now near the band's view point joins the band's entities (with
    /// whether it was in scope), so that the rule decides it now and at every tick until
    /// the next scan. One far from it before its leap was out of last tick's scope (whose
    /// view point was within the slack of the band's), and one far from it now is out of
    /// this one and more than a skin from entering: the band's bound holds for both.
    fn admit(&mut self, motion: &Motion, picks: &[u32], c: &InterestConfig, owned: Option<u32>) {
        let skin = c.skin_m();
        let gone = c.outer_radius_m() + skin;
        let near = c.radius_m + skin;
        let (gone2, near2) = (gone * gone, near * near);
        for leap in &motion.leapers {
            let f = leap.index;
            let far = leap.before.distance_squared(self.view) >= gone2
                && leap.now.distance_squared(self.view) > near2;
            if far && Some(f) != owned {
                continue;
            }
            if let Err(at) = self.entries.binary_search_by_key(&f, |&(e, _)| e) {
                let was = picks.binary_search(&f).is_ok();
                self.entries.insert(at, (f, was));
            }
        }
        self.seen = motion.ticks;
    }

    /// Follow the band's entities into the indices of a world that entities came to or left
    /// (those that left leave the band); a band whose owned entity left is found again.
    fn follow(&mut self, remap: &Remap) {
        self.entries.retain_mut(|(i, _)| match remap.to(*i) {
            Some(n) => {
                *i = n;
                true
            }
            None => false,
        });
        if let Some(owned) = self.owned {
            match remap.to(owned) {
                Some(n) => self.owned = Some(n),
                None => self.valid = false,
            }
        }
    }

    /// Apply the scope's rule to the band's entities (as a scan does, see
    /// [`Interest::scan`]): those that entered (`true`) or left (`false`) the scope go to
    /// `crossed`, by increasing index. `always` lists the entities always visible, by
    /// increasing index: they stay in scope wherever they go.
    fn update(
        &mut self,
        positions: &[Vec2],
        view: Vec2,
        c: &InterestConfig,
        (owned, always): (Option<u32>, &[u32]),
        crossed: &mut Vec<(u32, bool)>,
    ) {
        let outer = c.outer_radius_m();
        let (r2, outer2) = (c.radius_m * c.radius_m, outer * outer);
        crossed.clear();
        for (index, was) in &mut self.entries {
            let at = positions.get(*index as usize);
            let d2 = at.map_or(f32::NAN, |p| p.distance_squared(view));
            let pinned = (Some(*index) == owned)
                || (!always.is_empty() && always.binary_search(index).is_ok());
            let keep = (d2 <= r2) | ((d2 <= outer2) & *was) | pinned;
            // A few of a band's entities cross a tick: the push is rarely taken.
            if keep != *was {
                crossed.push((*index, keep));
            }
            *was = keep;
        }
    }

    /// Find the band around `view` of the scope `picks` (the indices in scope, increasing,
    /// of a world of `len` entities) that a scan just found.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        interest: &Interest,
        c: &InterestConfig,
        view: Vec2,
        owned: Option<u32>,
        picks: &[u32],
        len: usize,
        slack: impl FnOnce() -> f32,
    ) {
        let (stay2, enter2) = band_edges(c);
        let mut bits = SCOPE_BITS.take();
        let inside = &mut bits.previous;
        set_bits(inside, len.div_ceil(64), picks);
        self.entries.clear();
        // Every entity in scope is within the outer radius (but the owned one and those
        // always visible, which stay in), so this finds all that may leave and all that may
        // enter.
        interest.grid.near(view, band_reach(c), |cell| {
            for e in cell {
                let d2 = e.position.distance_squared(view);
                let was = bit(inside, e.index) != 0;
                // A NaN distance is in the band when in scope (it leaves), not when out.
                let edge = if was {
                    d2 >= stay2 || d2.is_nan()
                } else {
                    d2 <= enter2
                };
                if edge {
                    self.entries.push((e.index, was));
                }
            }
        });
        SCOPE_BITS.set(bits);
        // An entity always visible cannot leave, and is in scope: it needs no band. (One
        // that leaps near the band later joins it, and `update` keeps it in.)
        let always = &interest.always_at;
        if !always.is_empty() {
            self.entries
                .retain(|(i, _)| always.binary_search(i).is_err());
        }
        self.entries.sort_unstable_by_key(|&(i, _)| i);
        self.settle(interest, view, owned, slack);
    }

    /// The band's entities were just found (by [`Self::build`], or by the scan that found
    /// the scope, see [`Interest::scan`]): it holds from now on.
    fn settle(
        &mut self,
        interest: &Interest,
        view: Vec2,
        owned: Option<u32>,
        slack: impl FnOnce() -> f32,
    ) {
        self.valid = true;
        self.found = self.entries.len();
        let motion = interest.motion();
        self.epoch = motion.epoch;
        self.travel = motion.travel;
        self.seen = motion.ticks;
        self.view = view;
        self.owned = owned;
        self.always = interest.always_changes;
        if self.slack == 0.0 {
            self.slack = slack();
        }
    }
}

/// How far from the view point a [`Band`]'s entities are looked for: every entity in scope
/// is within the outer radius (but the owned one and those always visible, which stay in),
/// and one that may enter is within the radius and a skin.
fn band_reach(c: &InterestConfig) -> f32 {
    c.outer_radius_m().max(c.radius_m + c.skin_m())
}

/// The squared distances that put an entity in a [`Band`]: one in scope from the first on
/// (it may leave), one out of it up to the second (it may enter).
fn band_edges(c: &InterestConfig) -> (f32, f32) {
    let skin = c.skin_m();
    let (r, outer) = (c.radius_m, c.outer_radius_m());
    // With a scope narrower than its skin, every entity in it is in the band.
    let stay2 = if outer > skin {
        (outer - skin) * (outer - skin)
    } else {
        -1.0
    };
    (stay2, (r + skin) * (r + skin))
}

/// Rooms, the area of interest, and the per-tick index of positions.
#[derive(Debug, Default)]
pub(super) struct Interest {
    config: Option<InterestConfig>,
    rooms: BTreeMap<RoomId, BTreeSet<ClientId>>,
    entity_rooms: HashMap<EntityId, Vec<RoomId>>,
    grid: Grid,
    /// A positions buffer no phase holds any more, kept for its memory.
    spare: Vec<Vec2>,
    /// What the scopes of each phase of the send interval keep from one of their send
    /// ticks to the next (one phase when every client is sent every tick).
    phases: Vec<Phase>,
    /// The phase this tick's scopes are of.
    phase: usize,
    /// Hands each scope's band the share of the skin it may use ([`Band::slack`]).
    bands_started: AtomicU32,
    /// Where each entity of a tick's world was at the last send tick, and which entities
    /// are new, when entities came or went: kept for their memory.
    spare_before: Vec<Vec2>,
    spare_came: Vec<u32>,
    /// The entities the game marked always visible (rule 4 of the [module docs](self)).
    always: BTreeSet<EntityId>,
    /// Their indices in the tick's world, increasing (those it holds).
    always_at: Vec<u32>,
    /// Those of them that came to the world since the phase's last send tick.
    always_came: Vec<u32>,
    /// Counts the changes to `always`, so that the scopes kept by their bands are scanned
    /// once after each.
    always_changes: u64,
}

/// Phases of the send interval the scopes' [`Band`]s are kept for (the server gives clients
/// at most this many phases).
pub(super) const MAX_PHASES: usize = 8;

/// How the world changed between two send ticks of one phase: the scopes of that phase
/// were found in the first, and are updated in the second.
#[derive(Debug, Default)]
struct Phase {
    /// The positions at the phase's last send tick (kept to measure how far entities
    /// moved).
    positions: Vec<Vec2>,
    /// How far entities have moved, for the scopes' [`Band`]s.
    motion: Motion,
    /// The ids of the world `positions` are of.
    layout: Arc<Vec<EntityId>>,
    /// When this send tick's world holds other entities than the phase's last one's:
    /// where each entity of the last one is now, for the scopes and bands kept in its
    /// indices.
    remap: Option<Remap>,
}

fn ground(p: Vec3) -> Vec2 {
    Vec2::new(p.x, p.z)
}

impl Interest {
    pub(super) fn new(config: Option<InterestConfig>) -> Self {
        Self {
            config,
            // The phase `motion` reads before the first index.
            phases: vec![Phase::default()],
            ..Self::default()
        }
    }

    /// Whether clients get their own worlds (otherwise every client gets the whole one).
    pub(super) fn active(&self) -> bool {
        self.config.is_some() || !self.entity_rooms.is_empty()
    }

    /// The [`Band::slack`] of the next scope to find its first band: between 45 and 95 % of
    /// the skin, spread evenly (the golden ratio's steps) from scope to scope. Below the
    /// whole skin, so that rounding in the distances is far inside the bound.
    fn band_slack(&self, c: &InterestConfig) -> f32 {
        let n = self.bands_started.fetch_add(1, Ordering::Relaxed);
        let spread = (f64::from(n) * 0.618_033_988_749_895).fract() as f32;
        c.skin_m() * (0.45 + 0.5 * spread)
    }

    pub(super) fn join(&mut self, room: RoomId, client: ClientId) {
        self.rooms.entry(room).or_default().insert(client);
    }

    pub(super) fn leave(&mut self, room: RoomId, client: ClientId) {
        if let Some(members) = self.rooms.get_mut(&room) {
            members.remove(&client);
            if members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    pub(super) fn members(&self, room: RoomId) -> impl Iterator<Item = ClientId> + '_ {
        self.rooms.get(&room).into_iter().flatten().copied()
    }

    pub(super) fn add_entity(&mut self, entity: EntityId, room: RoomId) {
        let rooms = self.entity_rooms.entry(entity).or_default();
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }

    pub(super) fn remove_entity(&mut self, entity: EntityId, room: RoomId) {
        if let Some(rooms) = self.entity_rooms.get_mut(&entity) {
            rooms.retain(|r| *r != room);
            if rooms.is_empty() {
                self.entity_rooms.remove(&entity);
            }
        }
    }

    pub(super) fn forget_entity(&mut self, entity: EntityId) {
        self.entity_rooms.remove(&entity);
    }

    pub(super) fn entity_rooms(&self, entity: EntityId) -> &[RoomId] {
        self.entity_rooms.get(&entity).map_or(&[], Vec::as_slice)
    }

    pub(super) fn set_always_visible(&mut self, entity: EntityId, always: bool) {
        let changed = if always {
            self.always.insert(entity)
        } else {
            self.always.remove(&entity)
        };
        self.always_changes += u64::from(changed);
    }

    pub(super) fn is_always_visible(&self, entity: EntityId) -> bool {
        self.always.contains(&entity)
    }

    /// Index the positions of this send tick's world, each entity's in id order: the world
    /// its [`TickWorld`] holds, as the grid's entries are indices there (a scope reads their
    /// ids from it). The scopes updated next are of `phase` (below [`MAX_PHASES`]): motion
    /// and remaps are measured from that phase's last send tick.
    pub(super) fn index(
        &mut self,
        positions: impl Iterator<Item = Vec3>,
        ids: &Arc<Vec<EntityId>>,
        phase: usize,
    ) {
        // Rooms alone need no positions.
        let Some(c) = self.config else {
            return;
        };
        let mut now = std::mem::take(&mut self.spare);
        now.clear();
        now.extend(positions.map(ground));
        if self.phases.len() <= phase {
            self.phases.resize_with(phase + 1, Phase::default);
        }
        self.phase = phase;
        let ph = &mut self.phases[phase];
        let from = std::mem::replace(&mut ph.layout, ids.clone());
        // (Its buffers are reused for the next one.)
        let last_remap = ph.remap.take();
        let same_entities = Arc::ptr_eq(&from, ids) || from.is_empty();
        if same_entities {
            ph.motion.advance(&ph.positions, &now, c.skin_m());
        } else {
            // Entities came or went. The ones that stayed are measured as on any tick, by
            // their positions then and now side by side; the ones that came are leapers from
            // nowhere, which each scope measures if they are near it.
            let mut to_new = last_remap.map(|r| r.to_new).unwrap_or_default();
            to_new.clear();
            to_new.resize(from.len(), GONE);
            let mut before = std::mem::take(&mut self.spare_before);
            let mut came = std::mem::take(&mut self.spare_came);
            before.clear();
            came.clear();
            let mut old = from.iter().enumerate().peekable();
            for (n, id) in ids.iter().enumerate() {
                while old.next_if(|(_, o)| *o < id).is_some() {}
                let here = now.get(n).copied().unwrap_or(Vec2::NAN);
                match old.next_if(|(_, o)| *o == id) {
                    Some((o, _)) => {
                        // Indices of worlds of u32 ids.
                        to_new[o] = n as u32;
                        before.push(ph.positions.get(o).copied().unwrap_or(Vec2::NAN));
                    }
                    None => {
                        before.push(here);
                        came.push(n as u32);
                    }
                }
            }
            let epoch = ph.motion.epoch;
            ph.motion.advance(&before, &now, c.skin_m());
            if ph.motion.epoch == epoch {
                ph.motion.arrive(&came, &now);
            }
            (self.spare_before, self.spare_came) = (before, came);
            ph.remap = Some(Remap { from, to_new });
        }
        // The phase's positions are now the tick's; its old ones are the next tick's buffer.
        self.spare = std::mem::replace(&mut ph.positions, now);
        self.grid.rebuild(c.outer_radius_m(), &ph.positions);
        // (Both lists increase, and so do the indices found.)
        self.always_at.clear();
        for id in &self.always {
            if let Ok(i) = ids.binary_search(id) {
                // Indices of worlds of u32 ids.
                self.always_at.push(i as u32);
            }
        }
        self.always_came.clear();
        if !same_entities {
            let came = &self.spare_came;
            self.always_came.extend(
                self.always_at
                    .iter()
                    .filter(|a| came.binary_search(a).is_ok()),
            );
        }
    }

    /// The motion this tick's scopes are measured against.
    fn motion(&self) -> &Motion {
        &self.phases[self.phase].motion
    }

    /// Ground-plane position of each entity of the tick's world, by index.
    fn positions(&self) -> &[Vec2] {
        &self.phases[self.phase].positions
    }

    /// The world `client` receives this tick; updates its scope. Its picks are last tick's
    /// list when the scope did not change, or else written in `spare()`, a buffer held by
    /// no one else (it is cleared first).
    pub(super) fn scope<'a>(
        &'a self,
        tick_world: &TickWorld,
        owned: Option<EntityId>,
        scope: &'a mut Scope,
        spare: impl FnOnce() -> Arc<Vec<u32>>,
    ) -> ScopedWorld<'a> {
        let world = &tick_world.world;
        let entities = world.entities();
        // Last tick's picks index this tick's world too while the world holds the same
        // entities: its scope is then a bit test by index instead of a search by id.
        let same_layout = Arc::ptr_eq(&scope.ids, &tick_world.ids);
        // Entities came or went since the last send tick: a scope and band kept in that
        // world's indices follow their entities into this one's.
        let remap = self
            .phases
            .get(self.phase)
            .and_then(|p| p.remap.as_ref())
            .filter(|r| !same_layout && Arc::ptr_eq(&scope.ids, &r.from));
        let owned_index = owned.and_then(|id| {
            // Where the owned entity was last tick, in this tick's world (none if it left);
            // searched for by id when another entity is there now.
            let at = match remap {
                Some(r) => u32::try_from(scope.owned_at)
                    .ok()
                    .and_then(|i| r.to(i))
                    .map(|n| n as usize),
                None => Some(scope.owned_at),
            };
            at.filter(|&at| entities.get(at).is_some_and(|(e, _)| *e == id))
                .or_else(|| world.index_of(id))
        });
        if let Some(i) = owned_index {
            scope.owned_at = i;
        }
        let view = scope
            .view_point
            .map(ground)
            .or_else(|| owned_index.and_then(|i| self.positions().get(i).copied()));
        let rooms_in_use = !self.entity_rooms.is_empty();
        // A world index fits a u32 (ids are u32).
        let owned_at = owned_index.map(|i| i as u32);
        // The band stands for the scan while nothing near the edge can have crossed it
        // unseen; rooms are not positions, so with rooms in use every scope is scanned.
        let banded = match (self.config, view) {
            (Some(c), Some(v)) if !rooms_in_use && v.is_finite() => Some((c, v)),
            _ => None,
        };
        if let Some(r) = remap {
            scope.band.follow(r);
        }
        let mut scanned = false;
        match banded {
            Some((c, v))
                if (same_layout || remap.is_some())
                    && scope
                        .band
                        .holds(self.motion(), v, owned_at, self.always_changes) =>
            {
                let mut bits = SCOPE_BITS.take();
                let ScopeBits { moved, crossed, .. } = &mut bits;
                if let Some(r) = remap {
                    r.apply(&scope.picks, moved);
                }
                let kept: &[u32] = if remap.is_some() { moved } else { &scope.picks };
                scope.band.admit(self.motion(), kept, &c, owned_at);
                let always = self.always_at.as_slice();
                scope
                    .band
                    .update(self.positions(), v, &c, (owned_at, always), crossed);
                // An entity always visible that came to the world this tick far from the
                // band is in no band: it enters here. (Every other one is in scope since
                // the scan after it was marked, and in the band only if near its edge, where
                // it is kept; the scope's world is the phase's last one, which the tick's
                // remap and its newcomers are measured from.)
                let banded = crossed.len();
                let came: &[u32] = if remap.is_some() {
                    &self.always_came
                } else {
                    &[]
                };
                for &a in came {
                    if kept.binary_search(&a).is_err()
                        && crossed[..banded]
                            .binary_search_by_key(&a, |&(i, _)| i)
                            .is_err()
                    {
                        crossed.push((a, true));
                    }
                }
                if crossed.len() > banded {
                    crossed.sort_unstable_by_key(|&(i, _)| i);
                }
                if !crossed.is_empty() || remap.is_some() {
                    let mut picks = spare();
                    cross(
                        kept,
                        crossed,
                        writable(&mut picks, kept.len() + crossed.len()),
                    );
                    scope.picks = picks;
                }
                SCOPE_BITS.set(bits);
            }
            _ => {
                let last = match remap {
                    Some(r) => LastPicks::Moved(r),
                    None if same_layout => LastPicks::Same,
                    None => LastPicks::ById,
                };
                let found = self.scan(tick_world, owned_index, view, last, scope, spare);
                scanned = true;
                match banded {
                    Some((c, v)) => {
                        let slack = || self.band_slack(&c);
                        let band = &mut scope.band;
                        if found {
                            band.settle(self, v, owned_at, slack);
                        } else {
                            let picks = scope.picks.clone();
                            band.build(self, &c, v, owned_at, &picks, entities.len(), slack);
                        }
                    }
                    None => scope.band.valid = false,
                }
            }
        }
        if !same_layout {
            // (Only when it changed: a copy takes a count on a list every client shares.)
            scope.ids = tick_world.ids.clone();
        }
        let selected = ClientWorld::View(tick_world.view(scope.picks.clone()));
        let weights = match (self.config, view) {
            (Some(config), Some(view)) if config.distance_priority => Some(DistanceWeights {
                config,
                view,
                positions: self.positions(),
                indices: &scope.picks,
            }),
            _ => None,
        };
        ScopedWorld {
            world: selected,
            weights,
            scanned,
        }
    }

    /// Work out `scope` anew from every entity near its view point (and with rooms, from
    /// the rooms): its picks are last tick's list when the scope did not change, or else
    /// written in `spare()`. The usual scan (see below) of a scope that has a band (one of
    /// positions alone, from a view point) also finds the band, in the same walk of the
    /// grid: then it returns true, and the band's entries are written, for
    /// [`Band::settle`].
    fn scan(
        &self,
        tick_world: &TickWorld,
        owned_index: Option<usize>,
        view: Option<Vec2>,
        last: LastPicks<'_>,
        scope: &mut Scope,
        spare: impl FnOnce() -> Arc<Vec<u32>>,
    ) -> bool {
        let entities = tick_world.world.entities();
        let rooms_in_use = !self.entity_rooms.is_empty();
        let shares_room = |id: EntityId| {
            !rooms_in_use
                || self
                    .entity_rooms
                    .get(&id)
                    .is_none_or(|rooms| rooms.iter().any(|r| scope.rooms.contains(r)))
        };
        let mut bits = SCOPE_BITS.take();
        let ScopeBits {
            previous,
            order,
            band,
            moved,
            ..
        } = &mut bits;
        let words = entities.len().div_ceil(64);
        // Last tick's scope in the indices of this tick's world: its picks while the world
        // holds the same entities, or moved along with them when some came or went (else it
        // is searched by id below). Moved, a tick of entities coming and going scans as
        // fast as any other: by bits, finding the band in the same walk (docs/BENCHMARKS.md,
        // "Scans by index when entities come and go").
        let remapped = matches!(last, LastPicks::Moved(_));
        let last: Option<&[u32]> = match last {
            LastPicks::Same => Some(&scope.picks),
            LastPicks::Moved(r) => {
                r.apply(&scope.picks, moved);
                Some(moved)
            }
            LastPicks::ById => None,
        };
        let previous_bits = last
            .filter(|l| self.config.is_some() && bitmap_pays(words, l.len()))
            .map(|l| {
                set_bits(previous, words, l);
                previous.as_slice()
            });
        // The usual case (last tick's scope as bits, no rooms): the scan sets the bit of
        // each entity it keeps straight in a bitmap of the world, read back in order at the
        // end, rather than listing the indices to set them afterwards (see [`sort_dedup`]).
        // A scope that bits pay for last tick is about as large this tick.
        let gathered = previous_bits.filter(|_| !rooms_in_use);
        // The band's entities are found as bits too, in the same walk: a second walk of the
        // cells for them, and the sort of what it found, made a scan a third to a half
        // longer (docs/BENCHMARKS.md, "The band found in the scan's walk").
        // (As `scope` decides whether the scope has a band.)
        let find_band = self.config.is_some() && view.is_some_and(|v| v.is_finite());
        let band_bits = gathered.is_some() && find_band;
        if band_bits {
            band.clear();
            band.resize(words, 0);
        }
        if gathered.is_some() {
            order.clear();
            order.resize(words, 0);
        }
        // The spare is taken only to be written: always when the scope is listed, and when
        // it is gathered as bits only if it changed.
        let mut spare = Some(spare);
        let mut take_spare = || spare.take().map_or_else(Arc::default, |f| f());
        let mut buf: Option<Arc<Vec<u32>>> = None;
        let mut listed = Vec::new();
        let list: &mut Vec<u32> = if gathered.is_some() {
            &mut listed
        } else {
            // Every entity of the cells near the view point is written before the list is
            // cut to the scope: room for twice last tick's scope.
            let room = 2 * scope.picks.len();
            writable(buf.insert(take_spare()), room)
        };
        match self.config {
            Some(c) => {
                if let Some(view) = view.filter(|v| v.is_finite()) {
                    let (r2, outer) = (c.radius_m * c.radius_m, c.outer_radius_m());
                    let outer2 = outer * outer;
                    let previous = &scope.picks;
                    let previous_ids = &scope.ids;
                    let id_of = |e: &GridEntity| tick_world.ids[e.index as usize];
                    let was_visible = |e: &GridEntity| match (previous_bits, last) {
                        (Some(bits), _) => bit(bits, e.index) != 0,
                        (None, Some(last)) => last.binary_search(&e.index).is_ok(),
                        // Picks increase, and so do their ids.
                        (None, None) => previous
                            .binary_search_by_key(&id_of(e), |&i| previous_ids[i as usize])
                            .is_ok(),
                    };
                    // The band reaches a little beyond the outer radius: an entity there is
                    // out of scope either way.
                    let reach = if band_bits { band_reach(&c) } else { outer };
                    let (stay2, enter2) = band_edges(&c);
                    // (No entity has this index: a world holds fewer than u32::MAX.)
                    let owned = owned_index.map_or(u32::MAX, |i| i as u32);
                    self.grid.near(view, reach, |cell| {
                        // Whether an entity is in scope is as good as random (one at the
                        // edge is as likely in as out), and mispredicted branches dominated
                        // this loop: so the usual entity (well inside or outside, no rooms)
                        // takes no branch.
                        if let Some(was_bits) = gathered {
                            // The hysteresis is a bit read for every entity, and the entity
                            // is kept by or-ing its bit, set or not.
                            for e in cell {
                                let d2 = e.position.distance_squared(view);
                                let was = bit(was_bits, e.index) != 0;
                                let keep = (d2 <= r2) | ((d2 <= outer2) & was);
                                set_bit(order, e.index, keep);
                                if band_bits {
                                    // As `Band::build` decides, the owned entity in scope.
                                    let inside = keep | (e.index == owned);
                                    let edge = (inside & ((d2 >= stay2) | d2.is_nan()))
                                        | (!inside & (d2 <= enter2));
                                    set_bit(band, e.index, edge);
                                }
                            }
                            return;
                        }
                        // Otherwise every index is written and kept only when in scope.
                        let mut n = list.len();
                        list.resize(n + cell.len(), 0);
                        for e in cell {
                            let d2 = e.position.distance_squared(view);
                            // A NaN distance is neither.
                            let inside = d2 <= r2;
                            let near_edge = !inside & (d2 <= outer2);
                            let mut keep = inside & !rooms_in_use;
                            if near_edge | (inside & rooms_in_use) {
                                // Between the radius and the outer radius only what was in
                                // scope stays: that is the hysteresis.
                                keep = (inside || was_visible(e)) && shares_room(id_of(e));
                            }
                            list[n] = e.index;
                            n += usize::from(keep);
                        }
                        list.truncate(n);
                    });
                }
            }
            None => {
                for (i, (id, _)) in entities.iter().enumerate() {
                    if shares_room(*id) {
                        // A world holds fewer than u32::MAX entities (ids are u32).
                        list.push(i as u32);
                    }
                }
            }
        }
        // A world holds fewer than u32::MAX entities (ids are u32).
        let owned_index = owned_index.map(|i| i as u32);
        if gathered.is_some() {
            // (No rooms in use: every entity always visible is in scope.)
            for &i in owned_index.iter().chain(&self.always_at) {
                set_bit(order, i, true);
            }
            // Most ticks most clients' scopes stay as they were (entities cross the edge of
            // a scope now and then): then the client is sent last tick's list again,
            // neither written nor read anew.
            // (Moved picks are a new list even when the same entities are in scope.)
            if remapped || *order != *previous {
                let set = order.iter().map(|w| w.count_ones() as usize).sum();
                read_bits(order, writable(buf.insert(take_spare()), set));
            }
            if band_bits {
                // An entity always visible cannot leave: it is in no band (as in
                // `Band::build`).
                for &i in &self.always_at {
                    clear_bit(band, i);
                }
                let entries = &mut scope.band.entries;
                entries.clear();
                each_bit(band, |i| entries.push((i, bit(order, i) != 0)));
            }
        } else {
            list.extend(owned_index);
            list.extend(
                self.always_at
                    .iter()
                    .filter(|&&i| shares_room(tick_world.ids[i as usize])),
            );
            sort_dedup(list, order, entities.len());
        }
        SCOPE_BITS.set(bits);
        if let Some(picks) = buf {
            scope.picks = picks;
        }
        band_bits
    }
}

/// `picks` (last tick's scope, by increasing index) with the band entities that `crossed`
/// in or out of it, into `out`. A band entity is in `picks` exactly when it was in scope, so
/// the few that crossed are all that differ: the runs between them are copied whole. Walking
/// every pick against the band's entities instead cost 0.3–0.6 µs more a client at 1,000
/// clients of the `massive` scene (docs/BENCHMARKS.md).
fn cross(picks: &[u32], crossed: &[(u32, bool)], out: &mut Vec<u32>) {
    let mut from = 0;
    for &(i, entered) in crossed {
        let at = from + picks[from..].partition_point(|&p| p < i);
        out.extend_from_slice(&picks[from..at]);
        let held = picks.get(at) == Some(&i);
        debug_assert_eq!(
            held, !entered,
            "a band entity's last state is its place in the picks"
        );
        if entered {
            out.push(i);
        }
        from = at + usize::from(held);
    }
    out.extend_from_slice(&picks[from..]);
}

/// The list in `buf`, cleared, to write `room` entries in: in place when no one else holds
/// it, or else in a new one. The room is made at once: a spare list is not always at hand
/// (under loss, the lists of unacknowledged ticks come back late), and a new list grown
/// entry by entry to a scope of a few hundred was allocated and copied about eight times.
/// The room is rounded up to a power of two, so that a client's lists, which its scope
/// passes round, can hold the next scope, a few entries larger, without growing. Made to
/// the entry, 4.5 of the 182 lists written in a tick at 1,000 clients were grown, each an
/// allocation that could fault in fresh memory in the middle of the tick
/// (docs/BENCHMARKS.md, "Page faults in the tick").
fn writable(buf: &mut Arc<Vec<u32>>, room: usize) -> &mut Vec<u32> {
    if Arc::get_mut(buf).is_none() {
        *buf = Arc::default();
    }
    let list = Arc::make_mut(buf);
    list.clear();
    list.reserve(room.next_power_of_two());
    list
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::snapshot::{EntityState, QuantizeConfig, QuantizedWorld, Tick, Transform, World};

    /// A world as the server's only one so far.
    fn first(q: &QuantizedWorld) -> TickWorld {
        TickWorld::new(q.clone(), Tick(1), None)
    }

    fn world_at(points: &[(u32, f32, f32)]) -> World {
        let mut w = World::new();
        for &(id, x, z) in points {
            w.insert(
                EntityId(id),
                EntityState::new(Transform {
                    position: Vec3::new(x, 0.0, z),
                    ..Transform::default()
                }),
            );
        }
        w
    }

    fn positions(world: &World) -> impl Iterator<Item = Vec3> + '_ {
        world.iter().map(|(_, s)| s.transform.position)
    }

    fn ids(s: &Scope) -> Vec<u32> {
        s.visible().map(|e| e.0).collect()
    }

    #[test]
    fn crossings_add_and_remove_only_the_entities_that_crossed() {
        // Random scopes and band entities, each crossing to the other side of its place in
        // the picks: the result is the picks with exactly those in or out, in order.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..500 {
            let picks: Vec<u32> = (0..200u32).filter(|_| rng.random_bool(0.3)).collect();
            let crossed: Vec<(u32, bool)> = (0..200u32)
                .filter(|_| rng.random_bool(0.05))
                .map(|i| (i, picks.binary_search(&i).is_err()))
                .collect();
            let want: Vec<u32> = (0..200u32)
                .filter(|i| match crossed.iter().find(|c| c.0 == *i) {
                    Some(&(_, entered)) => entered,
                    None => picks.contains(i),
                })
                .collect();
            let mut out = Vec::new();
            cross(&picks, &crossed, &mut out);
            assert_eq!(out, want);
        }
    }

    #[test]
    fn the_grid_s_floor_is_the_library_s() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let edges = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            -1.0,
            1.0,
            -1.5,
            8_388_607.5,
            -8_388_607.5,
            16_777_217.0,
            -16_777_217.0,
            9.3e18,
            -9.3e18,
            1.0e30,
            -1.0e30,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let random: Vec<f32> = (0..200_000).map(|_| f32::from_bits(rng.random())).collect();
        let near_zero: Vec<f32> = (0..20_000)
            .map(|_| rng.random_range(-300.0f32..300.0))
            .collect();
        for v in edges.into_iter().chain(random).chain(near_zero) {
            assert_eq!(floor_i64(v), v.floor() as i64, "{v} ({:#x})", v.to_bits());
        }
    }

    #[test]
    fn the_grid_finds_exactly_what_a_full_scan_finds() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let config = InterestConfig::radius(30.0);
        for round in 0..40 {
            let mut points: Vec<(u32, f32, f32)> = (0..500)
                .map(|i| {
                    (
                        i,
                        rng.random_range(-200.0..200.0),
                        rng.random_range(-200.0..200.0),
                    )
                })
                .collect();
            // Half the rounds, a few strays far out (beyond what the grid spans, so they
            // share its edge cells) and a pair near each other out there.
            if round % 2 == 1 {
                points.extend([
                    (500, 3.0e7, 10.0),
                    (501, -5.0e6, -2.0e8),
                    (502, f32::NAN, 0.0),
                    (503, 1.0e9, 1.0e9),
                    (504, 1.0e9 + 64.0, 1.0e9),
                ]);
            }
            let world = world_at(&points);
            let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
            let mut interest = Interest::new(Some(config));
            let tw = first(&q);
            interest.index(positions(&world), &tw.ids, 0);
            let view = match round % 4 {
                // Out among the strays, or beyond everything.
                1 => Vec3::new(1.0e9 + 40.0, 0.0, 1.0e9),
                3 => Vec3::new(3.0e7 - 5.0, 0.0, 0.0),
                _ => Vec3::new(
                    rng.random_range(-260.0..260.0),
                    0.0,
                    rng.random_range(-260.0..260.0),
                ),
            };
            let mut scope = Scope {
                view_point: Some(view),
                ..Scope::default()
            };
            interest.scope(&tw, None, &mut scope, Arc::default);
            let want: Vec<u32> = points
                .iter()
                .filter(|(_, x, z)| Vec2::new(*x, *z).distance(ground(view)) <= config.radius_m)
                .map(|p| p.0)
                .collect();
            assert_eq!(ids(&scope), want, "round {round}");
        }
    }

    #[test]
    fn the_hysteresis_follows_each_entity_whether_or_not_the_world_s_entities_change() {
        // A crowd drifting around the view point, some ticks with entities coming and going
        // (indices then mean other entities: last tick's scope is moved into the new ones)
        // and some without (it is read as it is), checked against the rule itself: in
        // within the radius, out beyond the outer radius, otherwise as before.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let config = InterestConfig::radius(20.0);
        let mut interest = Interest::new(Some(config));
        let mut scope = Scope {
            view_point: Some(Vec3::ZERO),
            ..Scope::default()
        };
        let mut points: BTreeMap<u32, Vec2> = (0..300)
            .map(|i| {
                let p = Vec2::new(rng.random_range(-30.0..30.0), rng.random_range(-30.0..30.0));
                (i, p)
            })
            .collect();
        let mut want: BTreeSet<u32> = BTreeSet::new();
        let (mut as_is, mut moved) = (0, 0);
        let mut previous: Option<TickWorld> = None;
        for tick in 0..200 {
            if tick % 3 == 0 {
                let gone = rng.random_range(0..400);
                points.remove(&gone);
                let born = rng.random_range(0..400);
                points.entry(born).or_insert(Vec2::ZERO);
            }
            for p in points.values_mut() {
                *p += Vec2::new(rng.random_range(-1.5..1.5), rng.random_range(-1.5..1.5));
            }
            let list: Vec<(u32, f32, f32)> = points.iter().map(|(&i, p)| (i, p.x, p.y)).collect();
            let world = world_at(&list);
            let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
            let tw = TickWorld::new(q, Tick(tick + 1), previous.as_ref());
            interest.index(positions(&world), &tw.ids, 0);
            let same_layout = Arc::ptr_eq(&scope.ids, &tw.ids);
            if same_layout {
                as_is += 1;
            } else {
                moved += 1;
            }
            let (before, before_ids) = (scope.picks.clone(), ids(&scope));
            interest.scope(&tw, None, &mut scope, Arc::default);
            // Last tick's list is sent again exactly when it still names the scope.
            assert_eq!(
                Arc::ptr_eq(&scope.picks, &before),
                same_layout && ids(&scope) == before_ids,
                "tick {tick}"
            );
            want = points
                .iter()
                .filter(|&(i, p)| {
                    let d = p.length();
                    d <= config.radius_m || (d <= config.outer_radius_m() && want.contains(i))
                })
                .map(|(&i, _)| i)
                .collect();
            assert_eq!(
                ids(&scope),
                want.iter().copied().collect::<Vec<_>>(),
                "tick {tick}"
            );
            previous = Some(tw);
        }
        assert!(as_is > 50 && moved > 50, "{as_is} / {moved}");
    }

    impl Motion {
        fn leaper_indices(&self) -> Vec<u32> {
            self.leapers.iter().map(|l| l.index).collect()
        }
    }

    /// What one tick of `motion` promised: every entity but its leapers stepped no further
    /// than the travel it added, and there are at most [`MAX_LEAPERS`] of them, in order.
    fn assert_bounded(motion: &Motion, travel_before: f64, before: &[Vec2], now: &[Vec2]) {
        let added = motion.travel - travel_before;
        assert!(motion.leapers.len() <= MAX_LEAPERS);
        let leapers = motion.leaper_indices();
        assert!(leapers.is_sorted());
        for leap in &motion.leapers {
            let i = leap.index as usize;
            assert_eq!((leap.before, leap.now), (before[i], now[i]));
        }
        for (i, (a, b)) in before.iter().zip(now).enumerate() {
            if leapers.binary_search(&(i as u32)).is_err() {
                let step = f64::from(a.distance(*b));
                // Rounding of the squares: far below what a band's slack leaves over.
                assert!(
                    step <= added * (1.0 + 1e-5),
                    "entity {i}: {step} beyond {added}"
                );
            }
        }
    }

    #[test]
    fn motion_bounds_every_step_but_a_few_leaps_and_restarts_when_it_cannot() {
        let skin = 5.0;
        for n in (1..80).chain([MAX_LEAPERS + 1, 300]) {
            let before: Vec<Vec2> = (0..n).map(|i| Vec2::new(i as f32, -(i as f32))).collect();
            // A crowd that walks a little: the longest step is the travel, no leapers.
            let mut walked: Vec<Vec2> = before.iter().map(|p| *p + Vec2::X * 0.05).collect();
            walked[n / 2] += Vec2::new(0.03, 0.04);
            let mut motion = Motion::default();
            motion.advance(&before, &walked, skin);
            let longest = f64::from((before[n / 2] - walked[n / 2]).length());
            assert_eq!((motion.epoch, motion.travel), (0, longest), "{n}");
            assert!(motion.leapers.is_empty());
            for at in 0..n {
                // One step far longer than the rest, or one further than the skin: a
                // leaper, and the rest stay bounded by less than its step.
                for leap in [Vec2::new(1.5, 2.0), Vec2::new(9.0, 0.0), Vec2::splat(300.0)] {
                    let mut now: Vec<Vec2> = before.iter().map(|p| *p + Vec2::X * 0.5).collect();
                    now[at] += leap;
                    let mut m = Motion::default();
                    m.advance(&before, &now, skin);
                    assert_eq!(m.epoch, 0, "{n} {at} {leap}");
                    assert!(m.leaper_indices().contains(&(at as u32)), "{n} {at} {leap}");
                    assert!(m.travel < f64::from(before[at].distance(now[at])));
                    assert_bounded(&m, 0.0, &before, &now);
                    if n > MAX_LEAPERS {
                        // The crowd's steps are not leaps, and the travel is their step
                        // (not the bound that told them from the leap).
                        assert_eq!(m.leaper_indices(), vec![at as u32], "{n} {at} {leap}");
                        assert!(
                            (m.travel - 0.5).abs() < 1e-6,
                            "{n} {at} {leap}: {}",
                            m.travel
                        );
                    }
                }
                // To or from a position that is not finite: a new epoch, no travel, no
                // leapers.
                for p in [
                    Vec2::new(f32::NAN, 0.0),
                    Vec2::new(0.0, f32::INFINITY),
                    Vec2::splat(3.0e38),
                ] {
                    let mut moved = walked.clone();
                    moved[at] = p;
                    let mut m = Motion::default();
                    m.advance(&walked, &moved, skin);
                    assert_eq!((m.epoch, m.travel), (1, 0.0), "{n} {at} {p}");
                    assert!(m.leapers.is_empty());
                    // Not finite before and after: out of every scope, no jump.
                    if p.x.is_nan() || p.y.is_infinite() {
                        let mut still = moved.clone();
                        still[at] = Vec2::new(f32::NAN, f32::NAN);
                        let mut m = Motion::default();
                        m.advance(&moved, &still, skin);
                        assert_eq!(m.epoch, 0, "{n} {at} {p}");
                    }
                }
            }
            // More entities leaping further than the skin than can be leapers: no bound.
            if n > MAX_LEAPERS {
                let mut now = walked.clone();
                for p in now.iter_mut().take(MAX_LEAPERS + 1) {
                    *p += Vec2::new(0.0, 9.0);
                }
                let mut m = Motion::default();
                m.advance(&walked, &now, skin);
                assert_eq!((m.epoch, m.travel), (1, 0.0), "{n}");
                assert!(m.leapers.is_empty());
                // As many as can be: each a leaper, the rest bounded.
                now[MAX_LEAPERS] = walked[MAX_LEAPERS] + Vec2::X * 0.05;
                let mut m = Motion::default();
                m.advance(&walked, &now, skin);
                assert_eq!(m.epoch, 0, "{n}");
                assert_eq!(m.leapers.len(), MAX_LEAPERS);
                assert_bounded(&m, 0.0, &walked, &now);
                // Avatars catching up on late inputs (1.5 and 2 times the crowd's step):
                // leapers, so the travel stays the crowd's.
                let mut now: Vec<Vec2> = before.iter().map(|p| *p + Vec2::X * 0.5).collect();
                for (k, p) in now.iter_mut().enumerate().skip(3).step_by(5).take(20) {
                    *p += Vec2::X * if k % 2 == 0 { 0.25 } else { 0.5 };
                }
                let mut m = Motion::default();
                m.advance(&before, &now, skin);
                assert_eq!(m.leapers.len(), 20, "{n}");
                assert!((m.travel - 0.5).abs() < 1e-6, "{n}: {}", m.travel);
                assert_bounded(&m, 0.0, &before, &now);
            }
        }
        // Steps of every length, many seeds: the promise holds whatever the spread.
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..300 {
            let n = rng.random_range(1..400);
            let before: Vec<Vec2> = (0..n)
                .map(|_| Vec2::new(rng.random_range(-50.0..50.0), rng.random_range(-50.0..50.0)))
                .collect();
            let scale = 10f32.powi(rng.random_range(-3..2));
            let now: Vec<Vec2> = before
                .iter()
                .map(|p| {
                    let far = if rng.random_bool(0.05) { 20.0 } else { 1.0 };
                    *p + Vec2::new(rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0))
                        * scale
                        * far
                })
                .collect();
            let mut m = Motion::default();
            m.advance(&before, &now, skin);
            if m.epoch == 0 {
                assert_bounded(&m, 0.0, &before, &now);
            } else {
                assert!(m.leapers.is_empty());
            }
        }
        let mut m = Motion::default();
        m.advance(&[Vec2::ZERO], &[Vec2::ZERO, Vec2::ONE], skin);
        assert_eq!(m.epoch, 1);
    }

    #[test]
    fn a_scope_measures_the_leaps_near_it_itself_and_scans_when_too_many_leap() {
        // 200 entities standing 20 m apart on a square 280 m wide, a client at its middle
        // (radius 40 m): entity 0 sits far off, entity 1 near the client.
        let config = InterestConfig::radius(40.0);
        let mut interest = Interest::new(Some(config));
        let mut points: Vec<(u32, f32, f32)> = (0..200u32)
            .map(|i| {
                (
                    i,
                    (i % 14) as f32 * 20.0 - 130.0,
                    (i / 14) as f32 * 20.0 - 130.0,
                )
            })
            .collect();
        points[0] = (0, 400.0, 400.0);
        points[1] = (1, 5.0, 5.0);
        let mut scope = Scope {
            view_point: Some(Vec3::ZERO),
            ..Scope::default()
        };
        let mut previous: Option<TickWorld> = None;
        let mut tick = 0;
        let mut step = |points: &[(u32, f32, f32)], scope: &mut Scope| {
            tick += 1;
            let world = world_at(points);
            let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
            let tw = TickWorld::new(q, Tick(tick), previous.as_ref());
            interest.index(positions(&world), &tw.ids, 0);
            let scanned = interest.scope(&tw, None, scope, Arc::default).scanned;
            previous = Some(tw);
            (scanned, ids(scope))
        };
        let (scanned, first) = step(&points, &mut scope);
        assert!(scanned, "the first scope is a scan");
        assert!(first.contains(&1) && !first.contains(&0));
        // Far from the client before and after its leap: no scan, nothing changes.
        points[0] = (0, -400.0, 300.0);
        assert_eq!(step(&points, &mut scope), (false, first.clone()));
        // Into the scope from far away, then out of it: seen each time, without a scan.
        points[0] = (0, -3.0, 2.0);
        let (scanned, with) = step(&points, &mut scope);
        assert!(!scanned && with.contains(&0), "{with:?}");
        points[0] = (0, 300.0, -300.0);
        assert_eq!(step(&points, &mut scope), (false, first.clone()));
        // Out of it from near its middle.
        points[1] = (1, -350.0, 0.0);
        let (scanned, without) = step(&points, &mut scope);
        assert!(!scanned && !without.contains(&1), "{without:?}");
        // More entities leap than a tick counts as leapers: every scope is scanned.
        for p in points.iter_mut().skip(2).take(MAX_LEAPERS + 1) {
            p.2 += 37.0;
        }
        let (scanned, _) = step(&points, &mut scope);
        assert!(scanned);
        let outer = config.outer_radius_m();
        let want: Vec<u32> = points
            .iter()
            .filter(|&&(i, x, z)| {
                let d2 = x * x + z * z;
                d2 <= 40.0 * 40.0 || (d2 <= outer * outer && without.contains(&i))
            })
            .map(|&(i, _, _)| i)
            .collect();
        assert_eq!(ids(&scope), want);
    }

    /// One client of [`a_scope_kept_by_its_band_is_the_scope_the_rule_gives`]: it sees
    /// from its owned entity or from a view point of its own.
    struct Viewer {
        scope: Scope,
        owned: Option<u32>,
        /// What the rule says it sees.
        want: BTreeSet<u32>,
    }

    #[test]
    fn a_scope_kept_by_its_band_is_the_scope_the_rule_gives() {
        // Clients in a walking crowd, and now and then: an entity jumps far, one goes to a
        // position that is not finite and comes back, entities come and go, a view point
        // jumps, a client takes another entity, the game marks or unmarks an entity always
        // visible. Each tick every scope is checked against the rule itself, and most of
        // them must have come from the band, not a scan.
        let config = InterestConfig::radius(40.0);
        let (r2, outer) = (config.radius_m * config.radius_m, config.outer_radius_m());
        let (mut calls, mut scans, mut jumps, mut banded_scans) = (0u64, 0u64, 0u64, 0u64);
        for seed in 0..4 {
            let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
            let mut interest = Interest::new(Some(config));
            let spot = |rng: &mut ChaCha8Rng| {
                Vec2::new(
                    rng.random_range(-120.0..120.0),
                    rng.random_range(-120.0..120.0),
                )
            };
            // Position and step per tick; ids below 10 walk fastest and are owned.
            let mut points: BTreeMap<u32, (Vec2, Vec2)> = (0..1500)
                .map(|i| {
                    let top = if i < 10 { 0.1 } else { 0.05 };
                    let v = Vec2::new(rng.random_range(-top..top), rng.random_range(-top..top));
                    (i, (spot(&mut rng), v))
                })
                .collect();
            let mut next_id = 1500;
            // Always visible: two of the crowd, and two that have yet to come (they arrive
            // wherever newcomers do, most often far from a client's band).
            for id in [20, 21, 1501, 1503] {
                interest.set_always_visible(EntityId(id), true);
            }
            let mut viewers: Vec<Viewer> = (0..6)
                .map(|c| Viewer {
                    scope: Scope {
                        view_point: (c >= 3).then(|| Vec3::new(c as f32 * 10.0, 0.0, -20.0)),
                        ..Scope::default()
                    },
                    owned: (c < 3).then_some(c),
                    want: BTreeSet::new(),
                })
                .collect();
            // Entities away at a position that is not finite: id, where they come back,
            // and when.
            let mut away: Vec<(u32, Vec2, u32)> = Vec::new();
            let mut previous: Option<TickWorld> = None;
            for tick in 0..250u32 {
                let crowd = rng.random_range(10..next_id);
                if rng.random_bool(0.02) {
                    jumps += 1;
                    if let Some((p, _)) = points.get_mut(&crowd)
                        && p.is_finite()
                    {
                        *p += Vec2::new(30.0, -25.0);
                    }
                }
                if rng.random_bool(0.02) && !away.iter().any(|a| a.0 == crowd) {
                    jumps += 1;
                    if let Some((p, _)) = points.get_mut(&crowd) {
                        away.push((crowd, *p, tick + 5));
                        *p = Vec2::new(f32::NAN, 0.0);
                    }
                }
                away.retain(|&(id, back, when)| {
                    let stays = when > tick;
                    if !stays && let Some((p, _)) = points.get_mut(&id) {
                        *p = back;
                    }
                    stays
                });
                if rng.random_bool(0.02) && !away.iter().any(|a| a.0 == crowd) {
                    jumps += 1;
                    points.remove(&crowd);
                    points.insert(next_id, (spot(&mut rng), Vec2::ZERO));
                    next_id += 1;
                }
                // The game marks another entity, or unmarks one of those it marked (most
                // far from a given client, which must then see it leave).
                if rng.random_bool(0.04) {
                    let marked: Vec<u32> = (10..next_id)
                        .filter(|&i| interest.is_always_visible(EntityId(i)))
                        .collect();
                    let id = match rng.random_bool(0.5) {
                        true if !marked.is_empty() => marked[rng.random_range(0..marked.len())],
                        _ => rng.random_range(10..next_id),
                    };
                    let id = EntityId(id);
                    interest.set_always_visible(id, !interest.is_always_visible(id));
                }
                let c = rng.random_range(0..viewers.len());
                if rng.random_bool(0.02) {
                    jumps += 1;
                    let viewer = &mut viewers[c];
                    match viewer.owned.as_mut() {
                        Some(owned) => *owned = (*owned + 1) % 10,
                        None => {
                            if let Some(v) = viewer.scope.view_point.as_mut() {
                                *v += Vec3::new(15.0, 0.0, 0.0);
                            }
                        }
                    }
                }
                for (p, v) in points.values_mut() {
                    *p += *v;
                }
                for viewer in &mut viewers {
                    if let Some(v) = viewer.scope.view_point.as_mut() {
                        *v += Vec3::new(0.07, 0.0, -0.07);
                    }
                }
                // The last client sits out some ticks (as one that is not ready does);
                // meanwhile an entity leaps to its middle, and another leaps near a client.
                let sits_out = tick % 9 == 4;
                let last = viewers.len() - 1;
                let leaper = rng.random_range(10..next_id);
                if !away.iter().any(|a| a.0 == leaper)
                    && let Some((p, _)) = points.get_mut(&leaper)
                {
                    let c = if sits_out {
                        last
                    } else {
                        rng.random_range(0..viewers.len())
                    };
                    let near = viewers[c].scope.view_point.map(ground);
                    if let Some(v) = near {
                        let reach = if sits_out { 5.0 } else { 60.0 };
                        *p = v + Vec2::new(
                            rng.random_range(-reach..reach),
                            rng.random_range(-reach..reach),
                        );
                    }
                }
                let list: Vec<(u32, f32, f32)> =
                    points.iter().map(|(&i, (p, _))| (i, p.x, p.y)).collect();
                let world = world_at(&list);
                let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
                let tw = TickWorld::new(q, Tick(tick + 1), previous.as_ref());
                interest.index(positions(&world), &tw.ids, 0);
                for (c, viewer) in viewers.iter_mut().enumerate() {
                    if c == last && sits_out {
                        continue;
                    }
                    let owned = viewer.owned.map(EntityId);
                    let scanned = interest
                        .scope(&tw, owned, &mut viewer.scope, Arc::default)
                        .scanned;
                    // A band that missed a tick missed its leapers.
                    let back = c == last && tick % 9 == 5 && tick > 5;
                    assert!(scanned || !back, "seed {seed}, tick {tick}");
                    scans += u64::from(scanned);
                    calls += 1;
                    // A band a scan found in its own walk of the grid (the usual scan) is
                    // the one a walk for the band alone finds.
                    let band = &viewer.scope.band;
                    if scanned && band.valid {
                        let mut alone = band.clone();
                        let (view, owned) = (band.view, band.owned);
                        let picks = viewer.scope.picks.clone();
                        let len = tw.world.len();
                        alone.build(&interest, &config, view, owned, &picks, len, || 1.0);
                        assert_eq!(alone.entries, band.entries, "seed {seed}, tick {tick}");
                        banded_scans += 1;
                    }
                    let view = match viewer.scope.view_point {
                        Some(v) => ground(v),
                        None => points[&viewer.owned.expect("owned")].0,
                    };
                    let was = std::mem::take(&mut viewer.want);
                    viewer.want = points
                        .iter()
                        .filter(|&(i, (p, _))| {
                            let d2 = p.distance_squared(view);
                            d2 <= r2 || (d2 <= outer * outer && was.contains(i))
                        })
                        .map(|(&i, _)| i)
                        .chain(viewer.owned)
                        .chain(
                            points
                                .keys()
                                .copied()
                                .filter(|&i| interest.is_always_visible(EntityId(i))),
                        )
                        .collect();
                    assert_eq!(
                        ids(&viewer.scope),
                        viewer.want.iter().copied().collect::<Vec<_>>(),
                        "seed {seed}, tick {tick}, client {c}"
                    );
                }
                previous = Some(tw);
            }
        }
        // Clients scan after most jumps (all but the leaps of a single entity) and every
        // few ticks as things walk: far fewer than a scan a tick.
        assert!(jumps > 20, "{jumps} jumps");
        assert!(
            scans > jumps / 2 && scans * 4 < calls,
            "{scans} scans of {calls} scopes"
        );
        assert!(
            banded_scans * 2 > scans,
            "{banded_scans} of {scans} scans found a band"
        );
    }

    #[test]
    fn a_list_of_indices_moves_as_each_index_would_alone() {
        // Worlds of random ids, one after the other: the indices of any list of the first
        // world's entities, moved together, are each one's own place in the second, those
        // that left left out.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut moved = vec![7];
        for round in 0..300 {
            let len = |rng: &mut ChaCha8Rng| rng.random_range(0..200);
            let world = |rng: &mut ChaCha8Rng, n: usize| -> Vec<EntityId> {
                let ids: BTreeSet<u32> = (0..n).map(|_| rng.random_range(0..300)).collect();
                ids.into_iter().map(EntityId).collect()
            };
            let (n, m) = (len(&mut rng), len(&mut rng));
            let (from, to) = (world(&mut rng, n), world(&mut rng, m));
            let to_new: Vec<u32> = from
                .iter()
                .map(|id| to.binary_search(id).map_or(GONE, |n| n as u32))
                .collect();
            let remap = Remap {
                from: Arc::new(from.clone()),
                to_new,
            };
            let picks: Vec<u32> = (0..from.len() as u32)
                .filter(|_| rng.random_bool(0.3))
                .collect();
            remap.apply(&picks, &mut moved);
            let want: Vec<u32> = picks
                .iter()
                .filter_map(|&i| to.binary_search(&from[i as usize]).ok())
                .map(|n| n as u32)
                .collect();
            assert_eq!(moved, want, "round {round}");
        }
    }

    #[test]
    fn a_scope_that_stays_is_last_tick_s_list_and_one_that_changes_is_written_anew() {
        let mut interest = Interest::new(Some(InterestConfig::radius(10.0)));
        let mut scope = Scope {
            view_point: Some(Vec3::ZERO),
            ..Scope::default()
        };
        let mut previous: Option<TickWorld> = None;
        let mut spares = 0;
        // (x of entity 2, whether the scope changes at that tick)
        for (tick, (x, changes)) in [
            (5.0, true),
            (6.0, false),
            (7.0, false),
            (30.0, true),
            (31.0, false),
        ]
        .into_iter()
        .enumerate()
        {
            // Entities 1 and 3 stay in view, 4 stays out; 2 moves, in and then out.
            let world = world_at(&[(1, 1.0, 0.0), (2, x, 0.0), (3, 0.0, 2.0), (4, 50.0, 0.0)]);
            let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
            let tw = TickWorld::new(q, Tick(tick as u32 + 1), previous.as_ref());
            interest.index(positions(&world), &tw.ids, 0);
            let before = scope.picks.clone();
            let ScopedWorld { world: view, .. } = interest.scope(&tw, None, &mut scope, || {
                spares += 1;
                Arc::default()
            });
            let ClientWorld::View(view) = view else {
                panic!("a scope is a view");
            };
            assert!(Arc::ptr_eq(&view.picks, &scope.picks), "tick {tick}");
            assert_eq!(!Arc::ptr_eq(&scope.picks, &before), changes, "tick {tick}");
            let want: &[u32] = if x < 10.0 { &[1, 2, 3] } else { &[1, 3] };
            assert_eq!(ids(&scope), want, "tick {tick}");
            previous = Some(tw);
        }
        assert_eq!(spares, 2, "a spare is taken only for a scope written anew");
    }

    #[test]
    fn an_entity_leaves_only_beyond_the_hysteresis_and_enters_only_within_the_radius() {
        let mut interest = Interest::new(Some(InterestConfig::radius(10.0)));
        let mut scope = Scope {
            view_point: Some(Vec3::ZERO),
            ..Scope::default()
        };
        let mut at = |x: f32, scope: &mut Scope| {
            let world = world_at(&[(1, x, 0.0)]);
            let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
            let tw = first(&q);
            interest.index(positions(&world), &tw.ids, 0);
            interest.scope(&tw, None, scope, Arc::default);
            scope.visible().next().is_some()
        };
        assert!(!at(10.5, &mut scope), "outside the radius, not yet seen");
        assert!(at(9.5, &mut scope), "inside the radius");
        assert!(
            at(10.5, &mut scope),
            "between radius and outer radius: stays"
        );
        assert!(at(10.9, &mut scope), "still within the hysteresis");
        assert!(!at(11.1, &mut scope), "beyond the outer radius: leaves");
        assert!(
            !at(10.5, &mut scope),
            "between the two again: not re-entered"
        );
    }

    #[test]
    fn rooms_limit_what_a_client_sees_and_the_owned_entity_is_always_seen() {
        let world = world_at(&[(1, 0.0, 0.0), (2, 1.0, 0.0), (3, 2.0, 0.0), (4, 500.0, 0.0)]);
        let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
        let tw = first(&q);
        let mut interest = Interest::new(None);
        interest.add_entity(EntityId(2), RoomId(7));
        interest.add_entity(EntityId(3), RoomId(8));
        interest.index(positions(&world), &tw.ids, 0);
        let mut outsider = Scope::default();
        interest.scope(&tw, None, &mut outsider, Arc::default);
        assert_eq!(ids(&outsider), vec![1, 4], "public entities only");
        let mut member = Scope::default();
        member.rooms.insert(RoomId(7));
        interest.scope(&tw, Some(EntityId(3)), &mut member, Arc::default);
        assert_eq!(
            ids(&member),
            vec![1, 2, 3, 4],
            "its room's entity and its own"
        );

        // With an area of interest, rooms and distance both apply.
        let mut interest = Interest::new(Some(InterestConfig::radius(50.0)));
        interest.add_entity(EntityId(2), RoomId(7));
        interest.index(positions(&world), &tw.ids, 0);
        let mut far = Scope {
            view_point: Some(Vec3::ZERO),
            ..Scope::default()
        };
        interest.scope(&tw, Some(EntityId(4)), &mut far, Arc::default);
        assert_eq!(
            ids(&far),
            vec![1, 3, 4],
            "near public ones, the own far one"
        );
    }

    #[test]
    fn nothing_in_scope_without_a_view_point_and_bad_positions_do_not_panic() {
        let world = world_at(&[(1, f32::NAN, 0.0), (2, f32::INFINITY, 1e30), (3, 0.0, 0.0)]);
        let q = QuantizedWorld::from_world(&world, &QuantizeConfig::default());
        let tw = first(&q);
        let mut interest = Interest::new(Some(InterestConfig::radius(10.0)));
        interest.index(positions(&world), &tw.ids, 0);
        let mut none = Scope::default();
        interest.scope(&tw, None, &mut none, Arc::default);
        assert!(none.visible().next().is_none());
        for view in [Vec3::NAN, Vec3::splat(f32::INFINITY), Vec3::splat(1e38)] {
            let mut s = Scope {
                view_point: Some(view),
                ..Scope::default()
            };
            interest.scope(&tw, None, &mut s, Arc::default);
            assert!(s.visible().next().is_none(), "{view}");
        }
        let mut s = Scope {
            view_point: Some(Vec3::ZERO),
            ..Scope::default()
        };
        interest.scope(&tw, None, &mut s, Arc::default);
        assert_eq!(ids(&s), vec![3]);
    }

    /// A seeded crowd in the shape of the `massive` scene (a third walking, velocities that
    /// vanish, components, spawns and despawns, rooms), seen by clients with generous and
    /// tight budgets over a lossy, late ack stream.
    ///
    /// Returns every part each client was sent, and the senders' totals.
    fn scoped_snapshots_of_a_seeded_crowd() -> (Vec<Vec<u8>>, Vec<crate::snapshot::SenderStats>) {
        use crate::Sequence;
        use crate::snapshot::{SenderConfig, SnapshotSender, Tick};
        use std::time::Duration;

        const HALF_WIDTH_M: f32 = 120.0;
        let quantize = QuantizeConfig {
            position_min: Vec3::new(-128.0, -1.0, -128.0),
            position_max: Vec3::new(128.0, 63.0, 128.0),
            tick_interval: Duration::from_secs(1) / 30,
            ..QuantizeConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(77);
        let mut world = World::new();
        let mut headings: BTreeMap<EntityId, Option<f32>> = BTreeMap::new();
        let mut next_id = 0u32;
        let spawn = |rng: &mut ChaCha8Rng, world: &mut World, id: u32| {
            let transform = Transform {
                position: Vec3::new(
                    rng.random_range(-HALF_WIDTH_M..HALF_WIDTH_M),
                    0.4,
                    rng.random_range(-HALF_WIDTH_M..HALF_WIDTH_M),
                ),
                rotation: glam::Quat::from_rotation_y(rng.random_range(-3.1..3.1)),
                // Most have a velocity (zero at rest); some never do.
                velocity: rng.random_bool(0.9).then_some(Vec3::ZERO),
            };
            let component = id.is_multiple_of(40).then(|| vec![id as u8, 7]);
            world.insert(
                EntityId(id),
                EntityState {
                    transform,
                    component,
                },
            );
        };
        for _ in 0..1500 {
            spawn(&mut rng, &mut world, next_id);
            let walking = rng.random_bool(1.0 / 3.0);
            headings.insert(
                EntityId(next_id),
                walking.then(|| rng.random_range(0.0..std::f32::consts::TAU)),
            );
            next_id += 1;
        }

        let mut interest = Interest::new(Some(InterestConfig::radius(40.0)));
        for id in 0..30 {
            interest.add_entity(EntityId(id * 3), RoomId(1));
        }
        let budgets = [8800, 8800, 2000, 600, 8800, 300];
        let mut clients: Vec<(Scope, SnapshotSender, Option<EntityId>)> = (0..budgets.len())
            .map(|i| {
                let mut scope = Scope::default();
                if i != 5 {
                    scope.view_point = Some(Vec3::new(i as f32 * 30.0 - 70.0, 0.0, 10.0));
                }
                if i == 0 {
                    scope.rooms.insert(RoomId(1));
                }
                let sender = SnapshotSender::new(SenderConfig {
                    quantize,
                    ..SenderConfig::default()
                })
                .unwrap();
                // The last client sees from the entity it owns.
                let owned = (i == 5).then_some(EntityId(10));
                (scope, sender, owned)
            })
            .collect();
        clients[2].1.set_priority_weight(EntityId(5), 3.0);

        let mut out = Vec::new();
        let mut seq = vec![Sequence(0); budgets.len()];
        // Parts in flight: (delivery tick, client, sequence, acked).
        let mut in_flight: Vec<(u32, usize, Sequence, bool)> = Vec::new();
        let dt = 1.0 / 30.0;
        // The server's worlds, as views of which the clients are sent their scopes.
        let mut previous: Option<TickWorld> = None;
        for tick in 1..=45u32 {
            // Walk, stop, start, turn; a few leave and a few arrive.
            let ids: Vec<EntityId> = world.iter().map(|(id, _)| id).collect();
            for id in ids {
                let heading = headings.get_mut(&id).unwrap();
                if rng.random_bool(0.02) {
                    *heading = match heading {
                        Some(_) => None,
                        None => Some(rng.random_range(0.0..std::f32::consts::TAU)),
                    };
                }
                let e = world.get_mut(id).unwrap();
                match *heading {
                    Some(h) => {
                        let v = Vec3::new(h.cos(), 0.0, h.sin()) * 1.4;
                        e.transform.position += v * dt;
                        e.transform.rotation = glam::Quat::from_rotation_y(h);
                        // A walker without a velocity keeps none; one in twenty loses it.
                        if e.transform.velocity.is_some() {
                            e.transform.velocity = rng.random_bool(0.95).then_some(v);
                        }
                    }
                    None => {
                        if let Some(v) = &mut e.transform.velocity {
                            *v = Vec3::ZERO;
                        }
                    }
                }
                if id.0.is_multiple_of(40) && rng.random_bool(0.1) {
                    e.component = Some(vec![tick as u8; 1 + (tick % 5) as usize]);
                }
            }
            for _ in 0..3 {
                let id = EntityId(rng.random_range(20..next_id));
                world.remove(id);
                headings.remove(&id);
                spawn(&mut rng, &mut world, next_id);
                headings.insert(EntityId(next_id), None);
                next_id += 1;
            }

            let q = QuantizedWorld::from_world(&world, &quantize);
            let q = TickWorld::new(q, Tick(tick), previous.as_ref());
            interest.index(positions(&world), &q.ids, 0);
            for (c, (scope, sender, owned)) in clients.iter_mut().enumerate() {
                if c == 4 && tick == 20 {
                    sender.reset_baseline();
                }
                if let Some(v) = &mut scope.view_point {
                    v.x += 0.5 * c as f32;
                }
                let ScopedWorld { world, weights, .. } =
                    interest.scope(&q, *owned, scope, Arc::default);
                let parts = sender
                    .build_weighted(
                        Tick(tick),
                        world,
                        budgets[c],
                        weights.as_ref().map(|w| w as _),
                        None,
                    )
                    .unwrap();
                for (i, part) in parts.into_iter().enumerate() {
                    sender.on_part_sent(Tick(tick), i, seq[c]);
                    let lost = (tick * 7 + c as u32 * 3 + i as u32).is_multiple_of(6);
                    in_flight.push((tick + 2, c, seq[c], !lost));
                    seq[c] = seq[c].next();
                    out.push(part);
                }
            }
            in_flight.retain(|&(due, c, s, acked)| {
                if due > tick {
                    return true;
                }
                clients[c].1.on_delivery(s, acked);
                false
            });
            previous = Some(q);
        }
        let stats = clients.iter().map(|(_, s, _)| s.stats()).collect();
        (out, stats)
    }

    #[test]
    fn scoped_snapshots_of_a_seeded_crowd_keep_their_exact_bytes() {
        let (parts, stats) = scoped_snapshots_of_a_seeded_crowd();
        // The run covers what the encoder can do: full snapshots, deltas, several parts,
        // entities that waited for budget.
        let total = |f: fn(&crate::snapshot::SenderStats) -> u64| stats.iter().map(f).sum::<u64>();
        assert!(total(|s| s.full_snapshots) >= 7);
        assert!(total(|s| s.entities_deferred) > 1000);
        assert!(total(|s| s.despawns_sent) > 20);
        assert!(parts.len() > 45 * 6);
        let mut crc = crc32fast::Hasher::new();
        for p in &parts {
            crc.update(&(p.len() as u32).to_le_bytes());
            crc.update(p);
        }
        let bytes: usize = parts.iter().map(Vec::len).sum();
        // Pinned from the encoder before its speed work, and again when what a snapshot in
        // flight carried came to go first (a change of what waits for budget, not of how
        // anything is written): any other change to these is a change of the wire format.
        assert_eq!(
            (parts.len(), bytes, crc.finalize()),
            (285, 92165, 1756397604)
        );
    }

    #[test]
    fn unusable_interest_configs_are_refused() {
        assert!(InterestConfig::radius(100.0).validate().is_ok());
        for r in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(InterestConfig::radius(r).validate().is_err(), "{r}");
        }
        let mut c = InterestConfig::radius(10.0);
        c.hysteresis_m = -1.0;
        assert!(c.validate().is_err());
        c.hysteresis_m = f32::MAX;
        c.radius_m = f32::MAX;
        assert!(c.validate().is_err());
    }
}
