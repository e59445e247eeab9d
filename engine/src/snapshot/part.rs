//! The wire format of one snapshot part: a header, then the entities it changes relative to
//! the baseline, each field coded as a small delta.
//!
//! A part decodes on its own against its baseline; parts of one tick carry disjoint entities.
//! Decoding never trusts a count: every count is checked against the bits left and the
//! baseline's size before anything is read or allocated.
//!
//! Indices and deltas are Exp-Golomb codes whose order `k` the encoder picks per part and per
//! field, and sends in 4 bits: the same code then fits a part of resting jitter, a part of
//! bodies thrown about, and a full snapshot of absolute values. Choices that hold for a whole
//! section (which fields change at all, the two most common sets of changed fields, whether
//! velocities appear or vanish, whether positions are predicted) are sent once per section
//! instead of as bits on every entity.
//!
//! Layout (a bit stream, least-significant bit first; `varint(c)` = groups of c bits, low
//! group first, each followed by a 1-bit "more" flag; `eg(k)` = Exp-Golomb code of order k:
//! for `x = value + 2^k` of n significant bits, n − 1 − k zero bits, a one bit, then the low
//! n − 1 bits of x; `zz` = zig-zag, 0, −1, 1, −2, … ↦ 0, 1, 2, 3, …):
//!
//! ```text
//! tick                      32
//! has_baseline               1
//!   tick - baseline - 1      varint(7)            only if has_baseline
//! part_index                 8
//! part_count - 1             8
//! update_count               varint(7)
//!   index_k 4, entity code                        only if update_count > 0
//!   update_count × baseline-index gap eg(index_k) (first: the index itself,
//!                                                 then index − previous − 1)
//!   update_count × entity delta vs its baseline entity, in index order
//! despawn_count              varint(7)
//!   index_k 4                                     only if despawn_count > 0
//!   despawn_count × baseline-index gap eg(index_k)
//! spawn_count                varint(7)
//!   id_k 4, entity code                           only if spawn_count > 0
//!   spawn_count × (id gap eg(id_k), entity delta vs the all-zero entity)
//! zero padding to the byte   0..=7 (8 or more left over is an error)
//!
//! entity code (one per section that has entities):
//!   fields 4                 which fields change in some entity of the section: bit 0
//!                            position, 1 rotation, 2 velocity, 3 component; F = how many
//!   common 2 × F             the two most frequent sets of changed fields, each as F bits
//!                            (one per field of `fields`, lowest field first)
//!   if velocity in fields:   toggles 1 (1: some velocity appears or vanishes),
//!                            velocity_k 3 × 4
//!   if position in fields:   predicted 1 (only when the part has a baseline),
//!                            position_k 3 × 4
//!   if rotation in fields:   rotation_k 4
//!
//! entity delta:
//!   changed fields           nothing if F = 0; else 1 = common[0], or 0 then 1 = common[1],
//!                            or 0 0 then the set as F bits
//!   velocity, if changed:    present 1 (only if toggles, else present), then per axis
//!                            eg(velocity_k[axis]) of zz(new − reference); the reference is
//!                            the old velocity, or mid-range (zero) without one
//!   position, if changed:    per axis eg(position_k[axis]) of zz(new − reference); the
//!                            reference is the old position, or, if predicted and the entity
//!                            has an old or new velocity, the old position moved over
//!                            (tick − baseline) ticks by the mean of the old and the new
//!                            velocity (the one there is if only one is)
//!   rotation, if changed:    same_largest 1, then 3 × eg(rotation_k) of zz(new − old) for
//!                            the smallest three; or 0, then largest 2 + 3 × rotation_bits
//!   component, if changed:   present 1, then length varint(7) + bytes × 8
//! ```

use super::SnapshotError;
use super::bits::{
    BitCounter, BitReader, BitSink, BitString, BitWriter, MAX_EXP_GOLOMB_K, SMALL_CODE_VALUES,
    SMALL_CODES, exp_golomb_bits,
};
use super::quantize::{Limits, QuantizedRotation, QuantizedTransform};
use super::world::{Change, EntityId, QuantizedEntity, QuantizedWorld, Tick};

/// Most parts one snapshot may be split into (the index travels in 8 bits).
pub const MAX_PARTS_PER_SNAPSHOT: usize = 256;

/// Bits a part's header, section counts and padding can take at most.
///
/// tick 32 + baseline flag 1 + offset varint ≤ 16 + index 8 + count 8 = 65; three counts
/// varint ≤ 16 each (a part holds fewer than 2^14 entries) = 48; padding 7. The parameters
/// of each section are charged to its first entry ([`SECTION_CODE_BITS`]), so that a part
/// of one kind of entry pays for one section only.
pub(crate) const PART_OVERHEAD_BITS: usize = 120;

/// Bits of a section's parameters at most: its index or id order 4 + entity code ≤ 42
/// (fields 4, common 8, toggles 1, velocity_k 12, predicted 1, position_k 12, rotation_k 4).
pub(crate) const SECTION_CODE_BITS: usize = 46;

/// Most bits an index or id can cost a part, with the section parameters the first entry of
/// a section brings: an order-0 code of the largest value takes 65.
pub(crate) const MAX_INDEX_BITS: usize = SECTION_CODE_BITS + 65;

/// Varint chunk for counts and the baseline offset: 7 bits, so any count a part can hold
/// (< 2^14) fits in two chunks.
const COUNT_CHUNK_BITS: u32 = 7;
/// Bits of every Exp-Golomb order sent in a part (0..=15).
const K_BITS: u32 = 4;
/// Varint chunk for a component's byte length.
const LENGTH_CHUNK_BITS: u32 = 7;

/// Exp-Golomb orders the sender's size estimates assume. The encoder picks each order per
/// part among candidates that include these, so a part never comes out larger than the
/// estimate. They are typical of bodies in motion a few ticks after their baseline: ~10 %
/// of entities changed (index gaps of a few), residuals of a few steps.
const DEFAULT_INDEX_K: u32 = 2;
/// Spawned ids usually follow one another.
const DEFAULT_ID_K: u32 = 0;
const DEFAULT_UPDATE_K: FieldKs = FieldKs {
    position: [3; 3],
    velocity: [3; 3],
    rotation: 3,
};
/// Spawns are coded against the all-zero entity: positions are absolute values (up to 20
/// bits and more), velocities near mid-range, rotations mostly of another largest component.
const DEFAULT_SPAWN_K: FieldKs = FieldKs {
    position: [MAX_EXP_GOLOMB_K; 3],
    velocity: [6; 3],
    rotation: 8,
};

/// Field bits of a set of changed fields, in wire order (lowest bit first).
const POSITION: u8 = 1;
const ROTATION: u8 = 2;
const VELOCITY: u8 = 4;
const COMPONENT: u8 = 8;
const ALL_FIELDS: u8 = POSITION | ROTATION | VELOCITY | COMPONENT;
/// The sets of changed fields the estimates assume most common: a body sliding (position
/// and velocity) and a body tumbling as well.
const DEFAULT_COMMON: [u8; 2] = [POSITION | VELOCITY, POSITION | ROTATION | VELOCITY];

/// The fixed fields at the front of every part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PartHeader {
    pub(crate) tick: Tick,
    pub(crate) baseline: Option<Tick>,
    pub(crate) index: u16,
    pub(crate) count: u16,
}

impl PartHeader {
    /// Ticks between the baseline and this snapshot (0 without a baseline).
    pub(crate) fn ticks_since_baseline(&self) -> u32 {
        self.baseline.map_or(0, |b| self.tick.0.saturating_sub(b.0))
    }
}

/// Bits of decoded snapshot parts, by what they code: where a part's bits go.
///
/// Counted by [`SnapshotReceiver`](super::SnapshotReceiver) over every part it decoded
/// without error (see `SnapshotReceiver::field_bits`). The fields sum to the parts' bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldBits {
    /// Parts counted.
    pub parts: u64,
    /// Updated and spawned entities decoded.
    pub entities: u64,
    /// The part header, section counts, per-part code parameters and the final padding.
    pub part_headers: u64,
    /// Baseline indices of updates and despawns, and ids of spawns.
    pub index_gaps: u64,
    /// Per-entity bits saying which fields changed.
    pub flags: u64,
    /// Positions (with their prediction choice, if any).
    pub position: u64,
    /// Rotations.
    pub rotation: u64,
    /// Velocities (with their presence bit).
    pub velocity: u64,
    /// Application components (presence, length and bytes).
    pub component: u64,
}

impl FieldBits {
    /// Every bit counted.
    pub fn total(&self) -> u64 {
        self.part_headers
            + self.index_gaps
            + self.flags
            + self.position
            + self.rotation
            + self.velocity
            + self.component
    }

    /// Add `other`'s counts to these.
    pub fn add(&mut self, other: &FieldBits) {
        self.parts += other.parts;
        self.entities += other.entities;
        self.part_headers += other.part_headers;
        self.index_gaps += other.index_gaps;
        self.flags += other.flags;
        self.position += other.position;
        self.rotation += other.rotation;
        self.velocity += other.velocity;
        self.component += other.component;
    }
}

/// Counts the bits a reader consumed since the last call.
struct Meter(usize);

impl Meter {
    fn new(r: &BitReader<'_>) -> Self {
        Meter(r.remaining_bits())
    }

    /// Bits read since the last call (or since `new`).
    fn take(&mut self, r: &BitReader<'_>) -> u64 {
        let now = r.remaining_bits();
        let used = self.0 - now;
        self.0 = now;
        used as u64
    }
}

/// Exp-Golomb orders of one section's deltas, per field and axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FieldKs {
    position: [u32; 3],
    velocity: [u32; 3],
    rotation: u32,
}

/// How one section's entities are coded: chosen by the encoder, sent once per section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntityCode {
    /// Fields that change in some entity of the section; the others cost nothing.
    fields: u8,
    /// The two most frequent sets of changed fields (subsets of `fields`).
    common: [u8; 2],
    /// Some velocity appears or vanishes: each changed velocity carries a presence bit.
    toggles: bool,
    /// Positions are coded against the velocity prediction (only with a baseline).
    predicted: bool,
    ks: FieldKs,
}

impl EntityCode {
    /// The code the sender's size estimates assume for entities `ticks` after their base
    /// (0: spawns). Every choice is the costliest the encoder can fall back to.
    fn estimate(ticks: u32) -> Self {
        Self {
            fields: ALL_FIELDS,
            common: DEFAULT_COMMON,
            toggles: true,
            predicted: ticks > 0,
            ks: if ticks > 0 {
                DEFAULT_UPDATE_K
            } else {
                DEFAULT_SPAWN_K
            },
        }
    }
}

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    // Exp-Golomb values are at most u32::MAX, so the cast is exact.
    let z = z as i64;
    (z >> 1) ^ -(z & 1)
}

/// Zig-zag of the difference of two values below 2^30 (so below 2^31, an Exp-Golomb value).
fn delta(cur: u32, reference: u32) -> u32 {
    // Below 2^31, as above: the cast is exact.
    zigzag(i64::from(cur) - i64::from(reference)) as u32
}

/// The order that codes `values` in the fewest bits, among a window around the order their
/// mean suggests and `default` (so the result is never worse than `default`); ties go to the
/// smaller order. Returns the order and the bits `values` take with it.
fn best_k(values: &[u32], default: u32) -> (u32, usize) {
    if values.is_empty() {
        return (default, 0);
    }
    let sum: u64 = values.iter().map(|&v| u64::from(v)).sum();
    let mean = sum / values.len() as u64;
    // An order near log2(mean) is near the best for geometric-like tails.
    let guess = 64 - mean.leading_zeros();
    let low = guess.saturating_sub(2);
    let high = (guess + 1).min(MAX_EXP_GOLOMB_K);
    // The default first, then the window (at most four orders) in increasing order, all
    // counted in one pass over the values, which a section repeats for each field and axis;
    // spare slots count the default again and are never read.
    let mut ks = [default; 5];
    let mut n = 1;
    for k in (low..=high).filter(|&k| k != default) {
        ks[n] = k;
        n += 1;
    }
    let costs = order_costs(values, &ks);
    let mut best = (default, costs[0]);
    for (&k, &c) in ks.iter().zip(&costs).take(n).skip(1) {
        if c < best.1 || (c == best.1 && k < best.0) {
            best = (k, c);
        }
    }
    best
}

/// Up to this many values, [`order_costs`] weighs each one at each order instead of counting
/// them first.
const DIRECT_COST_VALUES: usize = 128;

/// The bits `values` take with the Exp-Golomb code of each order in `ks` (all at most
/// [`MAX_EXP_GOLOMB_K`]).
///
/// Values below [`SMALL_CODE_VALUES`] (nearly every baseline index gap, most residuals) are
/// weighed with the code lengths in [`SMALL_CODES`]: one by one in a short list, else
/// counted by value first; larger ones are weighed one by one. Four sets of counts take
/// every fourth value in turn: an increment of one counter waits for the one before it, and
/// neighbouring values often share their counter.
fn order_costs(values: &[u32], ks: &[u32; 5]) -> [usize; 5] {
    let mut costs = [0usize; 5];
    if values.len() <= DIRECT_COST_VALUES {
        // A part's few dozen gaps: looking each value up at each order is cheaper than
        // clearing and summing the counts (a kilobyte, for every list of every part):
        // measured about half the time at 16 to 64 values, the same near 150.
        let rows = ks.map(|k| &SMALL_CODES[k as usize]);
        for &v in values {
            let v = v as usize;
            if v < SMALL_CODE_VALUES {
                for (cost, row) in costs.iter_mut().zip(&rows) {
                    *cost += (row[v] & 0xff) as usize;
                }
            } else {
                for (cost, &k) in costs.iter_mut().zip(ks) {
                    *cost += exp_golomb_bits(v as u64, k);
                }
            }
        }
        return costs;
    }
    let mut counts = [[0u32; SMALL_CODE_VALUES]; 4];
    let mut count = |counts: &mut [u32; SMALL_CODE_VALUES], v: u32| match counts.get_mut(v as usize)
    {
        Some(n) => *n += 1,
        None => {
            for (cost, &k) in costs.iter_mut().zip(ks) {
                *cost += exp_golomb_bits(u64::from(v), k);
            }
        }
    };
    let mut quads = values.chunks_exact(4);
    for quad in &mut quads {
        for (counts, &v) in counts.iter_mut().zip(quad) {
            count(counts, v);
        }
    }
    for &v in quads.remainder() {
        count(&mut counts[0], v);
    }
    let total: [u32; SMALL_CODE_VALUES] =
        std::array::from_fn(|v| counts.iter().map(|c| c[v]).sum());
    for (cost, &k) in costs.iter_mut().zip(ks) {
        let codes = &SMALL_CODES[k as usize];
        *cost += total
            .iter()
            .zip(codes)
            .map(|(&n, &code)| n as usize * (code & 0xff) as usize)
            .sum::<usize>();
    }
    costs
}

/// Which fields of `cur` differ from `base`.
fn changed_fields(base: &QuantizedEntity, cur: &QuantizedEntity) -> u8 {
    let (bt, ct) = (&base.transform, &cur.transform);
    let mut set = 0;
    if ct.position != bt.position {
        set |= POSITION;
    }
    if ct.rotation != bt.rotation {
        set |= ROTATION;
    }
    if ct.velocity != bt.velocity {
        set |= VELOCITY;
    }
    if cur.component != base.component {
        set |= COMPONENT;
    }
    set
}

/// `set` (a subset of `fields`) as one bit per field of `fields`, lowest first.
fn pack_fields(set: u8, fields: u8) -> u32 {
    let (mut out, mut bit) = (0u32, 0);
    for f in [POSITION, ROTATION, VELOCITY, COMPONENT] {
        if fields & f != 0 {
            out |= u32::from(set & f != 0) << bit;
            bit += 1;
        }
    }
    out
}

/// The inverse of [`pack_fields`]: any value gives a subset of `fields`.
fn unpack_fields(packed: u32, fields: u8) -> u8 {
    let (mut set, mut bit) = (0u8, 0);
    for f in [POSITION, ROTATION, VELOCITY, COMPONENT] {
        if fields & f != 0 {
            if (packed >> bit) & 1 == 1 {
                set |= f;
            }
            bit += 1;
        }
    }
    set
}

fn velocity_mid(lim: &Limits) -> [u32; 3] {
    [lim.velocity_steps / 2; 3]
}

/// The base a spawned entity is coded against (both sides use the same one).
pub(crate) fn spawn_base() -> QuantizedEntity {
    QuantizedEntity::default()
}

/// What a changed position is coded against: the old position, or, when `predicted` and a
/// velocity is known, where the body went if it moved at the mean of its old and new
/// velocity. That mean is the true mean speed under constant acceleration (friction,
/// gravity, a steady push); the old velocity alone misses by half the speed change.
fn position_reference(
    base: &QuantizedTransform,
    velocity: Option<[u32; 3]>,
    ticks: u32,
    predicted: bool,
    lim: &Limits,
) -> [u32; 3] {
    if !predicted || ticks == 0 {
        return base.position;
    }
    match (base.velocity, velocity) {
        (Some(old), Some(new)) => lim.predict(base.position, old, new, ticks),
        (Some(v), None) | (None, Some(v)) => lim.predict(base.position, v, v, ticks),
        (None, None) => base.position,
    }
}

/// One changed entity measured against its base once: which fields changed, and every
/// residual a section's code may send for it.
///
/// The sender's size estimate, the choice of a section's code and the writing of the entity
/// all need the same residuals, and the position prediction behind them is the costliest
/// step of the encoder: measured once, it is computed once per entity, and the three cannot
/// disagree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EntityDelta {
    /// Which fields changed.
    set: u8,
    /// A velocity appears or vanishes (only with a changed velocity).
    toggles: bool,
    /// The new state has a velocity.
    has_velocity: bool,
    /// zz(new − reference) of the new velocity per axis (with a changed velocity).
    velocity: [u32; 3],
    /// zz(new − reference) of a changed position per axis: against the old position [0]
    /// and against the velocity prediction [1] (the same without ticks since the base).
    position: [[u32; 3]; 2],
    /// A changed rotation keeps its largest component: `rotation` holds zz(new − old) of the
    /// smallest three; otherwise the new smallest three as they are.
    same_largest: bool,
    /// The new rotation's largest component.
    largest: u8,
    rotation: [u32; 3],
}

impl EntityDelta {
    /// Nothing changed: the two states were equal.
    pub(crate) fn is_empty(&self) -> bool {
        self.set == 0
    }

    /// `cur` measured against `base`, `ticks` after it (0 for spawns, against
    /// [`spawn_base`]).
    pub(crate) fn new(
        base: &QuantizedEntity,
        cur: &QuantizedEntity,
        ticks: u32,
        lim: &Limits,
    ) -> Self {
        let (bt, ct) = (&base.transform, &cur.transform);
        let set = changed_fields(base, cur);
        let mut d = EntityDelta {
            set,
            has_velocity: ct.velocity.is_some(),
            ..EntityDelta::default()
        };
        if set & VELOCITY != 0 {
            d.toggles = bt.velocity.is_some() != ct.velocity.is_some();
            if let Some(v) = ct.velocity {
                let reference = bt.velocity.unwrap_or_else(|| velocity_mid(lim));
                d.velocity = std::array::from_fn(|axis| delta(v[axis], reference[axis]));
            }
        }
        if set & POSITION != 0 {
            let plain = std::array::from_fn(|axis| delta(ct.position[axis], bt.position[axis]));
            let reference = position_reference(bt, ct.velocity, ticks, true, lim);
            d.position = [
                plain,
                std::array::from_fn(|axis| delta(ct.position[axis], reference[axis])),
            ];
        }
        if set & ROTATION != 0 {
            d.same_largest = ct.rotation.largest == bt.rotation.largest;
            d.largest = ct.rotation.largest;
            d.rotation = std::array::from_fn(|i| {
                let c = u32::from(ct.rotation.smallest[i]);
                if d.same_largest {
                    delta(c, u32::from(bt.rotation.smallest[i]))
                } else {
                    c
                }
            });
        }
        d
    }
}

/// Code the entity `delta` measures (whose new state is `cur`) with the section's `code`.
/// Its changed fields must lie in `code.fields`, and a velocity may appear or vanish only
/// with `code.toggles`.
fn write_entity<W: BitSink>(
    w: &mut W,
    d: &EntityDelta,
    cur: &QuantizedEntity,
    lim: &Limits,
    code: &EntityCode,
) {
    let set = d.set;
    debug_assert_eq!(set & !code.fields, 0);
    let f = code.fields.count_ones();
    if f > 0 {
        w.write_bool(set == code.common[0]);
        if set != code.common[0] {
            w.write_bool(set == code.common[1]);
            if set != code.common[1] {
                w.write_bits(pack_fields(set, code.fields), f);
            }
        }
    }

    if set & VELOCITY != 0 {
        if code.toggles {
            w.write_bool(d.has_velocity);
        }
        if d.has_velocity {
            for axis in 0..3 {
                w.write_exp_golomb(u64::from(d.velocity[axis]), code.ks.velocity[axis]);
            }
        }
    }

    if set & POSITION != 0 {
        let residuals = &d.position[usize::from(code.predicted)];
        for (&r, &k) in residuals.iter().zip(&code.ks.position) {
            w.write_exp_golomb(u64::from(r), k);
        }
    }

    if set & ROTATION != 0 {
        w.write_bool(d.same_largest);
        if d.same_largest {
            for r in d.rotation {
                w.write_exp_golomb(u64::from(r), code.ks.rotation);
            }
        } else {
            w.write_bits(u32::from(d.largest), 2);
            for r in d.rotation {
                w.write_bits(r, lim.rotation_bits);
            }
        }
    }

    if set & COMPONENT != 0 {
        w.write_bool(cur.component.is_some());
        if let Some(bytes) = &cur.component {
            // Lengths beyond u32 cannot occur: the sender never sends an entity larger than
            // a part.
            w.write_varint(bytes.len() as u32, LENGTH_CHUNK_BITS);
            for b in bytes.iter() {
                w.write_bits(u32::from(*b), 8);
            }
        }
    }
}

/// `base + delta`, which must lie in `0..=max`.
fn apply_delta(base: u32, z: u64, max: u32) -> Result<u32, SnapshotError> {
    let v = i64::from(base) + unzigzag(z);
    if !(0..=i64::from(max)).contains(&v) {
        return Err(SnapshotError::ValueOutOfRange);
    }
    // In 0..=max, a u32, as checked above.
    Ok(v as u32)
}

/// Read an entity coded by [`write_entity`] against the same `base`, `ticks` and `code`,
/// adding its bits to `tally`.
fn read_entity(
    r: &mut BitReader<'_>,
    base: &QuantizedEntity,
    ticks: u32,
    lim: &Limits,
    code: &EntityCode,
    tally: &mut FieldBits,
) -> Result<QuantizedEntity, SnapshotError> {
    let mut e = base.clone();
    let bt = &base.transform;
    let mut m = Meter::new(r);
    tally.entities += 1;

    let f = code.fields.count_ones();
    let set = if f == 0 {
        0
    } else if r.read_bool()? {
        code.common[0]
    } else if r.read_bool()? {
        code.common[1]
    } else {
        unpack_fields(r.read_bits(f)?, code.fields)
    };
    tally.flags += m.take(r);

    if set & VELOCITY != 0 {
        let present = !code.toggles || r.read_bool()?;
        e.transform.velocity = if present {
            let reference = match bt.velocity {
                Some(v) => v,
                None if code.toggles => velocity_mid(lim),
                None => {
                    return Err(SnapshotError::BadHeader(
                        "velocity appears in a section without presence bits",
                    ));
                }
            };
            let mut v = [0u32; 3];
            for axis in 0..3 {
                let z = r.read_exp_golomb(code.ks.velocity[axis])?;
                v[axis] = apply_delta(reference[axis], z, lim.velocity_steps)?;
            }
            Some(v)
        } else {
            None
        };
        tally.velocity += m.take(r);
    }

    if set & POSITION != 0 {
        let reference = position_reference(bt, e.transform.velocity, ticks, code.predicted, lim);
        for (axis, base) in reference.iter().enumerate() {
            let z = r.read_exp_golomb(code.ks.position[axis])?;
            e.transform.position[axis] = apply_delta(*base, z, lim.position_steps[axis])?;
        }
        tally.position += m.take(r);
    }

    if set & ROTATION != 0 {
        let same = r.read_bool()?;
        let mut rot = QuantizedRotation {
            largest: bt.rotation.largest,
            smallest: [0; 3],
        };
        if !same {
            // Two bits: always a valid index 0..=3.
            rot.largest = r.read_bits(2)? as u8;
        }
        for i in 0..3 {
            let v = if same {
                let z = r.read_exp_golomb(code.ks.rotation)?;
                apply_delta(u32::from(bt.rotation.smallest[i]), z, lim.rotation_max)?
            } else {
                let v = r.read_bits(lim.rotation_bits)?;
                if v > lim.rotation_max {
                    return Err(SnapshotError::ValueOutOfRange);
                }
                v
            };
            // At most rotation_max (< 2^15), checked above.
            rot.smallest[i] = v as u16;
        }
        e.transform.rotation = rot;
        tally.rotation += m.take(r);
    }

    if set & COMPONENT != 0 {
        e.component = if r.read_bool()? {
            let len = r.read_varint(LENGTH_CHUNK_BITS)? as usize;
            if len > r.remaining_bits() / 8 {
                return Err(SnapshotError::CountTooLarge);
            }
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                // 8-bit read: always fits a u8.
                bytes.push(r.read_bits(8)? as u8);
            }
            Some(bytes.into())
        } else {
            None
        };
        tally.component += m.take(r);
    }
    Ok(e)
}

/// Bits of one entity as the sender's estimate counts it: coded with [`EntityCode::estimate`],
/// never fewer than the part it goes into will spend on it.
#[cfg(test)]
pub(crate) fn entity_bits(
    base: &QuantizedEntity,
    cur: &QuantizedEntity,
    ticks: u32,
    lim: &Limits,
) -> usize {
    delta_bits(&EntityDelta::new(base, cur, ticks, lim), cur, ticks, lim)
}

/// [`entity_bits`] of the entity `d` measures, whose new state is `cur`.
pub(crate) fn delta_bits(
    d: &EntityDelta,
    cur: &QuantizedEntity,
    ticks: u32,
    lim: &Limits,
) -> usize {
    let mut c = BitCounter::default();
    write_entity(&mut c, d, cur, lim, &EntityCode::estimate(ticks));
    c.bits
}

/// What the packer charges for the entity `d` measures (new state `cur`), `ticks` after its
/// base, in a section whose shared code is `shared`: the sender's estimate, which bounds
/// the section's own code, and, when `shared` covers the entity, the bits `shared` writes
/// it in, since a part whose every entity it covers is written with it. (A long delta no
/// slot keeps can take more bits with a code chosen for small changes than the estimate
/// allows.)
pub(crate) fn charged_bits(
    d: &EntityDelta,
    cur: &QuantizedEntity,
    ticks: u32,
    lim: &Limits,
    shared: Option<&EntityCode>,
) -> usize {
    let estimate = delta_bits(d, cur, ticks, lim);
    match shared {
        Some(code) if code_covers(code, d) => {
            let mut c = BitCounter::default();
            write_entity(&mut c, d, cur, lim, code);
            estimate.max(c.bits)
        }
        _ => estimate,
    }
}

/// Bits of a gap between baseline indices as the sender's estimate counts it.
pub(crate) fn index_gap_bits(gap: usize) -> usize {
    // Baseline indices are below the entity count, far below u32::MAX.
    exp_golomb_bits(gap as u64, DEFAULT_INDEX_K)
}

/// Bits of a gap between spawned ids as the sender's estimate counts it.
pub(crate) fn id_gap_bits(gap: u32) -> usize {
    exp_golomb_bits(u64::from(gap), DEFAULT_ID_K)
}

/// Buffers the encoder fills for every section, kept from part to part and tick to tick so
/// that encoding allocates nothing once they have grown.
#[derive(Clone, Debug, Default)]
pub(crate) struct EncodeScratch {
    velocity: [Vec<u32>; 3],
    /// Position residuals against the old position [0] and against the prediction [1].
    position: [[Vec<u32>; 3]; 2],
    rotation: Vec<u32>,
    gaps: Vec<u32>,
    /// The order of the update section's gaps.
    index_k: u32,
}

/// Choose the code of a section: the fields, common sets and orders that spend the fewest
/// bits on the entities `deltas` measure; never more than [`EntityCode::estimate`] would.
pub(crate) fn choose_code(
    deltas: impl Iterator<Item = EntityDelta>,
    ticks: u32,
    scratch: &mut EncodeScratch,
) -> EntityCode {
    let defaults = EntityCode::estimate(ticks).ks;
    let mut counts = [0u32; 16];
    let mut toggles = false;
    let EncodeScratch {
        velocity,
        position,
        rotation,
        ..
    } = scratch;
    velocity.iter_mut().for_each(Vec::clear);
    position.iter_mut().flatten().for_each(Vec::clear);
    rotation.clear();
    for d in deltas {
        let set = d.set;
        counts[usize::from(set)] += 1;
        if set & VELOCITY != 0 {
            toggles |= d.toggles;
            if d.has_velocity {
                for (values, &v) in velocity.iter_mut().zip(&d.velocity) {
                    values.push(v);
                }
            }
        }
        if set & POSITION != 0 {
            for (residuals, mode) in position.iter_mut().zip(&d.position) {
                for (values, &v) in residuals.iter_mut().zip(mode) {
                    values.push(v);
                }
            }
        }
        if set & ROTATION != 0 && d.same_largest {
            rotation.extend_from_slice(&d.rotation);
        }
    }

    let fields = (0..16u8)
        .filter(|&s| counts[usize::from(s)] > 0)
        .fold(0, |a, s| a | s);
    // The two most frequent sets (ties: the smaller set), which minimises the flag bits.
    // Every key differs, so the order is the same whatever the sort.
    let mut ranked: [u8; 16] = std::array::from_fn(|s| s as u8);
    ranked.sort_unstable_by_key(|&s| (std::cmp::Reverse(counts[usize::from(s)]), s));
    // The best order per axis, and the bits all axes take with them.
    let ks_of = |values: &[Vec<u32>; 3], default: [u32; 3]| -> ([u32; 3], usize) {
        let best: [(u32, usize); 3] =
            std::array::from_fn(|axis| best_k(&values[axis], default[axis]));
        (best.map(|b| b.0), best.iter().map(|b| b.1).sum())
    };
    let (plain_ks, plain_cost) = ks_of(&position[0], defaults.position);
    let mut predicted = false;
    let mut position_ks = plain_ks;
    if ticks > 0 {
        let (predicted_ks, predicted_cost) = ks_of(&position[1], defaults.position);
        if predicted_cost <= plain_cost {
            predicted = true;
            position_ks = predicted_ks;
        }
    }
    EntityCode {
        fields,
        common: [ranked[0] & fields, ranked[1] & fields],
        toggles,
        predicted,
        ks: FieldKs {
            position: position_ks,
            velocity: ks_of(velocity, defaults.velocity).0,
            rotation: best_k(rotation, defaults.rotation).0,
        },
    }
}

fn write_code<W: BitSink>(w: &mut W, code: &EntityCode, ticks: u32) {
    w.write_bits(u32::from(code.fields), 4);
    let f = code.fields.count_ones();
    for set in code.common {
        w.write_bits(pack_fields(set, code.fields), f);
    }
    if code.fields & VELOCITY != 0 {
        w.write_bool(code.toggles);
        for k in code.ks.velocity {
            w.write_bits(k, K_BITS);
        }
    }
    if code.fields & POSITION != 0 {
        if ticks > 0 {
            w.write_bool(code.predicted);
        }
        for k in code.ks.position {
            w.write_bits(k, K_BITS);
        }
    }
    if code.fields & ROTATION != 0 {
        w.write_bits(code.ks.rotation, K_BITS);
    }
}

fn read_code(r: &mut BitReader<'_>, ticks: u32) -> Result<EntityCode, SnapshotError> {
    // A 4-bit read: always a set of the four fields.
    let fields = r.read_bits(4)? as u8;
    let f = fields.count_ones();
    let mut code = EntityCode {
        fields,
        common: [0; 2],
        toggles: false,
        predicted: false,
        ks: FieldKs {
            position: [0; 3],
            velocity: [0; 3],
            rotation: 0,
        },
    };
    for set in &mut code.common {
        *set = unpack_fields(r.read_bits(f)?, fields);
    }
    // Every order is a 4-bit read, so within 0..=MAX_EXP_GOLOMB_K.
    if fields & VELOCITY != 0 {
        code.toggles = r.read_bool()?;
        for k in &mut code.ks.velocity {
            *k = r.read_bits(K_BITS)?;
        }
    }
    if fields & POSITION != 0 {
        code.predicted = ticks > 0 && r.read_bool()?;
        for k in &mut code.ks.position {
            *k = r.read_bits(K_BITS)?;
        }
    }
    if fields & ROTATION != 0 {
        code.ks.rotation = r.read_bits(K_BITS)?;
    }
    Ok(code)
}

fn write_header<W: BitSink>(w: &mut W, h: &PartHeader) {
    w.write_bits(h.tick.0, 32);
    w.write_bool(h.baseline.is_some());
    if let Some(b) = h.baseline {
        // The sender only uses baselines older than the tick, so the offset is ≥ 1.
        w.write_varint(h.tick.0.wrapping_sub(b.0).wrapping_sub(1), COUNT_CHUNK_BITS);
    }
    w.write_bits(u32::from(h.index), 8);
    w.write_bits(u32::from(h.count).wrapping_sub(1), 8);
}

/// Read and check the header at the front of a part.
pub(crate) fn read_header(r: &mut BitReader<'_>) -> Result<PartHeader, SnapshotError> {
    let tick = Tick(r.read_bits(32)?);
    let baseline = if r.read_bool()? {
        let offset = u64::from(r.read_varint(COUNT_CHUNK_BITS)?) + 1;
        if offset > u64::from(tick.0) {
            return Err(SnapshotError::BadHeader("baseline before tick zero"));
        }
        // offset ≤ tick (a u32), so both the cast and the subtraction are exact.
        Some(Tick(tick.0 - offset as u32))
    } else {
        None
    };
    // 8-bit reads, so both fit a u16; count is stored minus one.
    let index = r.read_bits(8)? as u16;
    let count = r.read_bits(8)? as u16 + 1;
    if index >= count {
        return Err(SnapshotError::BadHeader("part index beyond part count"));
    }
    Ok(PartHeader {
        tick,
        baseline,
        index,
        count,
    })
}

/// Fill `gaps` with the gaps between increasing `indices`: the first index itself, then
/// index − previous − 1.
fn index_gaps(gaps: &mut Vec<u32>, indices: impl Iterator<Item = usize>) {
    gaps.clear();
    let mut prev: Option<usize> = None;
    gaps.extend(indices.map(|i| {
        let gap = match prev {
            Some(p) => i - p - 1,
            None => i,
        };
        prev = Some(i);
        // Baseline indices and ids fit 32 bits.
        gap as u32
    }));
}

/// Write the order that suits `gaps` best, and return it.
fn write_gaps<W: BitSink>(w: &mut W, gaps: &[u32], default_k: u32) -> u32 {
    let k = best_k(gaps, default_k).0;
    w.write_bits(k, K_BITS);
    k
}

/// How a part writes an entity: from the delta this client measured and the entity's new
/// state, or by appending the string its section's shared code wrote once for every client
/// that holds the same base.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Coded<'a> {
    Own {
        delta: &'a EntityDelta,
        cur: &'a QuantizedEntity,
    },
    Shared(&'a BitString),
}

/// The entity `d` measures (new state `cur`) written with `code`, to be appended as is to
/// every part that codes its section with `code` (which must cover it, see
/// [`code_covers`]).
pub(crate) fn shared_bits(
    d: &EntityDelta,
    cur: &QuantizedEntity,
    lim: &Limits,
    code: &EntityCode,
) -> BitString {
    let mut b = BitString::default();
    write_entity(&mut b, d, cur, lim, code);
    b
}

/// `code` can write the entity `d` measures: its changed fields lie in the code's fields,
/// and a velocity appears or vanishes only if the code has presence bits.
pub(crate) fn code_covers(code: &EntityCode, d: &EntityDelta) -> bool {
    d.set & !code.fields == 0 && (code.toggles || !(d.set & VELOCITY != 0 && d.toggles))
}

/// Write a section's code, gaps and entities: with `shared` when given (appending the bits
/// written once for all clients), else with the section's own best code. The caller
/// guarantees that `shared` covers every entity the client measured itself
/// ([`code_covers`]), and that without it every entity is measured: it checks its own
/// lists, where a check here would read every entity a second time. Updates (`id_k`
/// `None`) write every gap (`scratch.gaps`, order `scratch.index_k`) before the entities;
/// spawns write each id gap, of order `id_k`, before its entity.
fn write_section<'a>(
    w: &mut BitWriter,
    entities: impl Iterator<Item = Coded<'a>> + Clone,
    shared: Option<&EntityCode>,
    ticks: u32,
    lim: &Limits,
    scratch: &mut EncodeScratch,
    id_k: Option<u32>,
) {
    debug_assert!(entities.clone().all(|e| match e {
        Coded::Own { delta, .. } => shared.is_none_or(|c| code_covers(c, delta)),
        Coded::Shared(_) => shared.is_some(),
    }));
    let code = match shared {
        Some(c) => *c,
        None => {
            let deltas = entities.clone().filter_map(|e| match e {
                Coded::Own { delta, .. } => Some(*delta),
                Coded::Shared(_) => None,
            });
            choose_code(deltas, ticks, scratch)
        }
    };
    write_code(w, &code, ticks);
    if id_k.is_none() {
        // Updates: every gap before the entities, then the entities, each run of shared
        // strings appended at once.
        w.write_exp_golomb_run(&scratch.gaps, scratch.index_k);
        let mut rest = entities.peekable();
        loop {
            w.append_run(std::iter::from_fn(|| match rest.peek() {
                Some(&Coded::Shared(bits)) => {
                    rest.next();
                    Some(*bits)
                }
                _ => None,
            }));
            let Some(Coded::Own { delta, cur }) = rest.next() else {
                return;
            };
            write_entity(w, delta, cur, lim, &code);
        }
    }
    for (n, e) in entities.enumerate() {
        if let Some(k) = id_k {
            w.write_exp_golomb(u64::from(scratch.gaps[n]), k);
        }
        match e {
            Coded::Shared(bits) => bits.write_to(w),
            Coded::Own { delta, cur } => write_entity(w, delta, cur, lim, &code),
        }
    }
}

/// Encode one part: `updates` by increasing baseline index, `despawns` (baseline indices)
/// increasing, `spawns` by increasing id, none of them in the baseline; `keys` are the
/// updates' indices and the spawns' ids, in the same orders (a second pass that made each
/// entity ready to write only to read its key cost 1.5 % of the scoped tick's
/// instructions). The caller
/// guarantees the content is sorted and valid for the header's baseline, and that every
/// delta was measured `header.ticks_since_baseline()` ticks after its base (spawns: 0).
#[allow(clippy::too_many_arguments)] // The shared codes of scoped clients ride along.
pub(crate) fn encode_part<'a>(
    w: &mut BitWriter,
    header: &PartHeader,
    updates: impl ExactSizeIterator<Item = Coded<'a>> + Clone,
    despawns: &[usize],
    spawns: impl ExactSizeIterator<Item = Coded<'a>> + Clone,
    keys: [impl Iterator<Item = usize>; 2],
    lim: &Limits,
    scratch: &mut EncodeScratch,
    shared: [Option<&EntityCode>; 2],
) {
    write_header(w, header);
    let ticks = header.ticks_since_baseline();
    let [update_keys, spawn_keys] = keys;

    // Part counts stay below 2^14 (a part is at most a few thousand bits).
    w.write_varint(updates.len() as u32, COUNT_CHUNK_BITS);
    if updates.len() > 0 {
        index_gaps(&mut scratch.gaps, update_keys);
        scratch.index_k = write_gaps(w, &scratch.gaps, DEFAULT_INDEX_K);
        write_section(w, updates, shared[0], ticks, lim, scratch, None);
    }

    w.write_varint(despawns.len() as u32, COUNT_CHUNK_BITS);
    if !despawns.is_empty() {
        index_gaps(&mut scratch.gaps, despawns.iter().copied());
        let k = write_gaps(w, &scratch.gaps, DEFAULT_INDEX_K);
        w.write_exp_golomb_run(&scratch.gaps, k);
    }

    w.write_varint(spawns.len() as u32, COUNT_CHUNK_BITS);
    if spawns.len() > 0 {
        index_gaps(&mut scratch.gaps, spawn_keys);
        let k = write_gaps(w, &scratch.gaps, DEFAULT_ID_K);
        write_section(w, spawns, shared[1], 0, lim, scratch, Some(k));
    }
}

fn read_count(r: &mut BitReader<'_>, limit: usize) -> Result<usize, SnapshotError> {
    let n = r.read_varint(COUNT_CHUNK_BITS)? as usize;
    // Every entry takes at least one bit, so a count above the bits left is a lie.
    if n > r.remaining_bits() || n > limit {
        return Err(SnapshotError::CountTooLarge);
    }
    Ok(n)
}

fn read_index_list(
    r: &mut BitReader<'_>,
    n: usize,
    len: usize,
    k: u32,
    out: &mut Vec<usize>,
) -> Result<(), SnapshotError> {
    // n was checked against the baseline size and the bits left.
    out.clear();
    out.reserve(n);
    let mut next = 0u64;
    for _ in 0..n {
        let i = next + r.read_exp_golomb(k)?;
        if i >= len as u64 {
            return Err(SnapshotError::IndexOutOfRange);
        }
        // Below len, a usize.
        out.push(i as usize);
        next = i + 1;
    }
    Ok(())
}

/// Lists [`decode_body_into`] reads indices into, kept by a receiver from part to part so
/// that a warm receiver allocates nothing to decode one.
#[derive(Clone, Debug, Default)]
pub(crate) struct DecodeScratch {
    updates: Vec<usize>,
    despawns: Vec<usize>,
}

/// [`decode_body_into`] with lists of its own (tests).
#[cfg(test)]
pub(crate) fn decode_body(
    r: &mut BitReader<'_>,
    header: &PartHeader,
    baseline: &QuantizedWorld,
    lim: &Limits,
    tally: &mut FieldBits,
) -> Result<Vec<Change>, SnapshotError> {
    let mut changes = Vec::new();
    decode_body_into(
        r,
        header,
        baseline,
        lim,
        tally,
        &mut DecodeScratch::default(),
        &mut changes,
    )?;
    Ok(changes)
}

/// Decode the body of a part (after [`read_header`]) against `baseline` into `changes`
/// (cleared first), adding where its bits went to `tally` (only once the whole part
/// decoded).
///
/// The changes come sorted by id, each id once. On error `changes` holds no meaning, and
/// nothing else outside `scratch` was touched.
pub(crate) fn decode_body_into(
    r: &mut BitReader<'_>,
    header: &PartHeader,
    baseline: &QuantizedWorld,
    lim: &Limits,
    tally: &mut FieldBits,
    scratch: &mut DecodeScratch,
    changes: &mut Vec<Change>,
) -> Result<(), SnapshotError> {
    let base = baseline.entities();
    let ticks = header.ticks_since_baseline();
    changes.clear();
    let mut t = FieldBits {
        parts: 1,
        part_headers: (r.bit_len() - r.remaining_bits()) as u64,
        ..FieldBits::default()
    };
    let mut m = Meter::new(r);

    let n = read_count(r, base.len())?;
    if n > 0 {
        let k = r.read_bits(K_BITS)?;
        let code = read_code(r, ticks)?;
        t.part_headers += m.take(r);
        read_index_list(r, n, base.len(), k, &mut scratch.updates)?;
        t.index_gaps += m.take(r);
        changes.reserve(n);
        for &i in &scratch.updates {
            // i < base.len(), checked while reading the indices.
            let (id, b) = &base[i];
            changes.push((*id, Some(read_entity(r, b, ticks, lim, &code, &mut t)?)));
        }
        m = Meter::new(r);
    }
    let updates = changes.len();

    let n = read_count(r, base.len())?;
    scratch.despawns.clear();
    if n > 0 {
        let k = r.read_bits(K_BITS)?;
        t.part_headers += m.take(r);
        read_index_list(r, n, base.len(), k, &mut scratch.despawns)?;
        t.index_gaps += m.take(r);
    }

    let n = read_count(r, usize::MAX)?;
    if n > 0 {
        let k = r.read_bits(K_BITS)?;
        let code = read_code(r, 0)?;
        t.part_headers += m.take(r);
        let spawn_base = spawn_base();
        let mut next = 0u64;
        for _ in 0..n {
            let id = next + r.read_exp_golomb(k)?;
            t.index_gaps += m.take(r);
            let id = u32::try_from(id).map_err(|_| SnapshotError::IndexOutOfRange)?;
            let id = EntityId(id);
            if baseline.index_of(id).is_some() {
                return Err(SnapshotError::SpawnExists);
            }
            changes.push((
                id,
                Some(read_entity(r, &spawn_base, 0, lim, &code, &mut t)?),
            ));
            m = Meter::new(r);
            next = u64::from(id.0) + 1;
        }
    }
    t.part_headers += m.take(r);

    if r.remaining_bits() >= 8 {
        return Err(SnapshotError::TrailingBytes);
    }
    t.part_headers += r.remaining_bits() as u64;

    // Updates and despawns are both increasing baseline indices: merge to find overlap.
    let mut d = scratch.despawns.iter().peekable();
    for (id, _) in &changes[..updates] {
        while d.peek().is_some_and(|&&i| base[i].0 < *id) {
            d.next();
        }
        if d.peek().is_some_and(|&&i| base[i].0 == *id) {
            return Err(SnapshotError::Conflict);
        }
    }

    // Despawn indices are below base.len(), checked while reading.
    changes.extend(scratch.despawns.iter().map(|&i| (base[i].0, None)));
    // Each id is there once: updates and despawns are increasing indices into the
    // baseline and share none (checked just above), spawns are increasing ids none of
    // which the baseline holds. So an unstable sort, which needs no memory of its own,
    // gives the one order there is.
    changes.sort_unstable_by_key(|(id, _)| *id);
    tally.add(&t);
    Ok(())
}

#[cfg(test)]
mod order_tests {
    use proptest::prelude::*;

    use super::*;

    /// Values as residuals come: mostly small, some of every length, runs of ones.
    fn value() -> impl Strategy<Value = u32> {
        prop_oneof![
            0u32..16,
            0u32..1024,
            (0u32..=32).prop_map(|b| if b == 0 { 0 } else { u32::MAX >> (32 - b) }),
            (1u32..=32, any::<u32>()).prop_map(|(b, r)| (r | 1 << 31) >> (32 - b)),
            any::<u32>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Weighing short lists value by value, and counting the small values of long ones,
        /// gives the bits that coding each one does, at every order, and so the same order
        /// for every list.
        #[test]
        fn order_costs_are_the_coded_bits(
            values in proptest::collection::vec(value(), 0..300),
            ks in proptest::array::uniform5(0u32..=MAX_EXP_GOLOMB_K),
        ) {
            let coded: Vec<usize> = ks
                .iter()
                .map(|&k| values.iter().map(|&v| exp_golomb_bits(u64::from(v), k)).sum())
                .collect();
            prop_assert_eq!(order_costs(&values, &ks).to_vec(), coded);
        }
    }
}
