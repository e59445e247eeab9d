//! The wire format of one snapshot part: a header, then the entities it changes relative to
//! the baseline, each field coded as a small delta where that is cheaper.
//!
//! A part decodes on its own against its baseline; parts of one tick carry disjoint entities.
//! Decoding never trusts a count: every count is checked against the bits left and the
//! baseline's size before anything is read or allocated.
//!
//! Layout (a bit stream, least-significant bit first; `varint(k)` = groups of k bits, low
//! group first, each followed by a 1-bit "more" flag):
//!
//! ```text
//! tick                      32
//! has_baseline               1
//!   tick - baseline - 1      varint(7)            only if has_baseline
//! part_index                 8
//! part_count - 1             8
//! update_count               varint(7)
//!   mode                     1                    only if update_count > 0
//!   mode 0: update_count × baseline-index gap     varint(4) (first: the index itself,
//!                                                 then index − previous − 1)
//!   mode 1: first index varint(4), span − update_count varint(7), span changed-bits
//!   update_count × entity delta vs its baseline entity, in index order
//! despawn_count              varint(7)
//!   despawn_count × baseline-index gap            varint(4)
//! spawn_count                varint(7)
//!   spawn_count × (id gap varint(6), entity delta vs the all-zero entity)
//! zero padding to the byte   0..=7 (8 or more left over is an error)
//!
//! entity delta:
//!   position changed 1, then
//!     predicted 1          only if the base has a velocity and the part a baseline: the
//!                          reference is the base position moved by the base velocity over
//!                          (tick − baseline) ticks of `tick_interval`, else the base position
//!     per axis: class 2 (0 same as reference, 1 zig-zag 6, 2 zig-zag 11,
//!                        3 absolute position_bits)
//!   rotation changed 1, then small 1: 3 × zig-zag 6 (same largest component)
//!                           or: largest 2 + 3 × rotation_bits
//!   velocity changed 1, then present 1, then per axis: class 2 (zig-zag 4 / 8 / absolute
//!                       velocity_bits), against the old velocity or zero
//!   component changed 1, then present 1, then length varint(7) + bytes × 8
//! ```

use super::SnapshotError;
use super::bits::{BitCounter, BitReader, BitSink, varint_bits};
use super::quantize::{Limits, QuantizedRotation, QuantizedTransform};
use super::world::{Change, EntityId, QuantizedEntity, QuantizedWorld, Tick};

/// Most parts one snapshot may be split into (the index travels in 8 bits).
pub const MAX_PARTS_PER_SNAPSHOT: usize = 256;

/// Bits a part header and its three section counts can take at most, plus byte padding.
///
/// tick 32 + baseline flag 1 + offset varint ≤ 16 + index 8 + count 8 + three counts
/// varint ≤ 16 each + mode flag 1 + padding 7 = 121; rounded up.
pub(crate) const PART_OVERHEAD_BITS: usize = 128;

/// Varint chunk for counts and the baseline offset: 7 bits, so any count a part can hold
/// (< 2^14) fits in two chunks.
const COUNT_CHUNK_BITS: u32 = 7;
/// Varint chunk for gaps between baseline indices: with ~10 % changed, gaps are mostly < 16.
pub(crate) const INDEX_GAP_CHUNK_BITS: u32 = 4;
/// Varint chunk for gaps between spawned ids.
pub(crate) const ID_GAP_CHUNK_BITS: u32 = 6;
/// Varint chunk for a component's byte length.
const LENGTH_CHUNK_BITS: u32 = 7;
/// Zig-zag widths of the two small position-delta classes, in bits (±32 and ±1024 steps:
/// a resting jitter, and ~2 m, what a fast body covers over several ticks of ack delay).
const POSITION_DELTA_BITS: [u32; 2] = [6, 11];
/// Zig-zag widths of the two small velocity-delta classes, in bits.
const VELOCITY_DELTA_BITS: [u32; 2] = [4, 8];
/// Zig-zag width of a small rotation-component delta, in bits.
const ROTATION_DELTA_BITS: u32 = 6;

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

/// What one part carries, as the sender chose it.
#[derive(Debug, Default)]
pub(crate) struct PartContent<'a> {
    /// Changed entities: (index in the baseline, new state), increasing index.
    pub(crate) updates: Vec<(usize, &'a QuantizedEntity)>,
    /// Removed entities: indices in the baseline, increasing.
    pub(crate) despawns: Vec<usize>,
    /// New entities: (id, state), increasing id, none of them in the baseline.
    pub(crate) spawns: Vec<(EntityId, &'a QuantizedEntity)>,
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

fn zigzag(d: i64) -> u64 {
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u32) -> i64 {
    let z = i64::from(z);
    (z >> 1) ^ -(z & 1)
}

fn fits(d: i64, bits: u32) -> bool {
    zigzag(d) < (1u64 << bits)
}

/// Per axis: 2-bit class (0 same, 1/2 small zig-zag delta, 3 absolute), then the payload.
fn write_axes<W: BitSink>(
    w: &mut W,
    base: [u32; 3],
    cur: [u32; 3],
    widths: [u32; 2],
    abs_bits: [u32; 3],
) {
    for axis in 0..3 {
        let d = i64::from(cur[axis]) - i64::from(base[axis]);
        if d == 0 {
            w.write_bits(0, 2);
        } else if fits(d, widths[0]) {
            w.write_bits(1, 2);
            w.write_bits(zigzag(d) as u32, widths[0]);
        } else if fits(d, widths[1]) {
            w.write_bits(2, 2);
            w.write_bits(zigzag(d) as u32, widths[1]);
        } else {
            w.write_bits(3, 2);
            w.write_bits(cur[axis], abs_bits[axis]);
        }
    }
}

fn read_axes(
    r: &mut BitReader<'_>,
    base: [u32; 3],
    widths: [u32; 2],
    abs_bits: [u32; 3],
    max: [u32; 3],
) -> Result<[u32; 3], SnapshotError> {
    let mut out = base;
    for axis in 0..3 {
        let v = match r.read_bits(2)? {
            0 => i64::from(base[axis]),
            1 => i64::from(base[axis]) + unzigzag(r.read_bits(widths[0])?),
            2 => i64::from(base[axis]) + unzigzag(r.read_bits(widths[1])?),
            _ => i64::from(r.read_bits(abs_bits[axis])?),
        };
        if !(0..=i64::from(max[axis])).contains(&v) {
            return Err(SnapshotError::ValueOutOfRange);
        }
        // Checked to lie in 0..=max (a u32) just above.
        out[axis] = v as u32;
    }
    Ok(out)
}

fn velocity_mid(lim: &Limits) -> [u32; 3] {
    [lim.velocity_steps / 2; 3]
}

/// The base a spawned entity is coded against (both sides use the same one).
pub(crate) fn spawn_base() -> QuantizedEntity {
    QuantizedEntity::default()
}

/// Code `cur` relative to `base`: four field flags, each followed by its payload when set.
///
/// `ticks` is how many ticks the snapshot is newer than the baseline (0 for spawns). When
/// the base has a velocity and `ticks > 0`, the position carries one more bit: whether it is
/// coded against the base position moved by that velocity (cheaper for bodies in flight).
pub(crate) fn write_entity<W: BitSink>(
    w: &mut W,
    base: &QuantizedEntity,
    cur: &QuantizedEntity,
    ticks: u32,
    lim: &Limits,
) {
    let (bt, ct) = (&base.transform, &cur.transform);

    w.write_bool(ct.position != bt.position);
    if ct.position != bt.position {
        let mut reference = bt.position;
        if let Some(predicted) = prediction(bt, ticks, lim) {
            let cost = |r: [u32; 3]| {
                let mut c = BitCounter::default();
                write_axes(
                    &mut c,
                    r,
                    ct.position,
                    POSITION_DELTA_BITS,
                    lim.position_bits,
                );
                c.bits
            };
            let use_prediction = cost(predicted) < cost(bt.position);
            w.write_bool(use_prediction);
            if use_prediction {
                reference = predicted;
            }
        }
        write_axes(
            w,
            reference,
            ct.position,
            POSITION_DELTA_BITS,
            lim.position_bits,
        );
    }

    w.write_bool(ct.rotation != bt.rotation);
    if ct.rotation != bt.rotation {
        let small = ct.rotation.largest == bt.rotation.largest
            && (0..3).all(|i| {
                let d = i64::from(ct.rotation.smallest[i]) - i64::from(bt.rotation.smallest[i]);
                fits(d, ROTATION_DELTA_BITS)
            });
        w.write_bool(small);
        for i in 0..3 {
            if small {
                let d = i64::from(ct.rotation.smallest[i]) - i64::from(bt.rotation.smallest[i]);
                w.write_bits(zigzag(d) as u32, ROTATION_DELTA_BITS);
            } else {
                if i == 0 {
                    w.write_bits(u32::from(ct.rotation.largest), 2);
                }
                w.write_bits(u32::from(ct.rotation.smallest[i]), lim.rotation_bits);
            }
        }
    }

    w.write_bool(ct.velocity != bt.velocity);
    if ct.velocity != bt.velocity {
        w.write_bool(ct.velocity.is_some());
        if let Some(v) = ct.velocity {
            let b = bt.velocity.unwrap_or_else(|| velocity_mid(lim));
            write_axes(w, b, v, VELOCITY_DELTA_BITS, [lim.velocity_bits; 3]);
        }
    }

    w.write_bool(cur.component != base.component);
    if cur.component != base.component {
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

/// Where the base is heading: its position moved by its velocity over `ticks`.
fn prediction(base: &QuantizedTransform, ticks: u32, lim: &Limits) -> Option<[u32; 3]> {
    match base.velocity {
        Some(v) if ticks > 0 => Some(lim.predict(base.position, v, ticks)),
        _ => None,
    }
}

/// Read an entity coded by [`write_entity`] against the same `base` and `ticks`.
pub(crate) fn read_entity(
    r: &mut BitReader<'_>,
    base: &QuantizedEntity,
    ticks: u32,
    lim: &Limits,
    tally: &mut FieldBits,
) -> Result<QuantizedEntity, SnapshotError> {
    let mut e = base.clone();
    let mut m = Meter::new(r);
    tally.entities += 1;

    let changed = r.read_bool()?;
    tally.flags += m.take(r);
    if changed {
        let mut reference = base.transform.position;
        if let Some(predicted) = prediction(&base.transform, ticks, lim)
            && r.read_bool()?
        {
            reference = predicted;
        }
        e.transform.position = read_axes(
            r,
            reference,
            POSITION_DELTA_BITS,
            lim.position_bits,
            lim.position_steps,
        )?;
    }
    tally.position += m.take(r);

    let changed = r.read_bool()?;
    tally.flags += m.take(r);
    if changed {
        let max = i64::from(lim.rotation_max);
        let small = r.read_bool()?;
        let mut rot = QuantizedRotation {
            largest: base.transform.rotation.largest,
            smallest: [0; 3],
        };
        for i in 0..3 {
            let v = if small {
                i64::from(base.transform.rotation.smallest[i])
                    + unzigzag(r.read_bits(ROTATION_DELTA_BITS)?)
            } else {
                if i == 0 {
                    // Two bits: always a valid index 0..=3.
                    rot.largest = r.read_bits(2)? as u8;
                }
                i64::from(r.read_bits(lim.rotation_bits)?)
            };
            if !(0..=max).contains(&v) {
                return Err(SnapshotError::ValueOutOfRange);
            }
            // In 0..=rotation_max (< 2^15) as checked above.
            rot.smallest[i] = v as u16;
        }
        e.transform.rotation = rot;
    }
    tally.rotation += m.take(r);

    let changed = r.read_bool()?;
    tally.flags += m.take(r);
    if changed {
        e.transform.velocity = if r.read_bool()? {
            let b = base.transform.velocity.unwrap_or_else(|| velocity_mid(lim));
            let steps = lim.velocity_steps;
            Some(read_axes(
                r,
                b,
                VELOCITY_DELTA_BITS,
                [lim.velocity_bits; 3],
                [steps; 3],
            )?)
        } else {
            None
        };
    }
    tally.velocity += m.take(r);

    let changed = r.read_bool()?;
    tally.flags += m.take(r);
    if changed {
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
    }
    tally.component += m.take(r);
    Ok(e)
}

/// Bits of one entity as [`write_entity`] would write it.
pub(crate) fn entity_bits(
    base: &QuantizedEntity,
    cur: &QuantizedEntity,
    ticks: u32,
    lim: &Limits,
) -> usize {
    let mut c = BitCounter::default();
    write_entity(&mut c, base, cur, ticks, lim);
    c.bits
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

fn write_index_list<W: BitSink>(w: &mut W, indices: &[usize]) {
    let mut prev: Option<usize> = None;
    for &i in indices {
        let gap = match prev {
            Some(p) => i - p - 1,
            None => i,
        };
        // Baseline indices are below the entity count, far below u32::MAX.
        w.write_varint(gap as u32, INDEX_GAP_CHUNK_BITS);
        prev = Some(i);
    }
}

fn index_list_bits(indices: &[usize]) -> usize {
    let mut c = BitCounter::default();
    write_index_list(&mut c, indices);
    c.bits
}

fn index_mask_bits(indices: &[usize]) -> usize {
    match (indices.first(), indices.last()) {
        (Some(&first), Some(&last)) => {
            let span = last - first + 1;
            varint_bits(first as u32, INDEX_GAP_CHUNK_BITS)
                + varint_bits((span - indices.len()) as u32, COUNT_CHUNK_BITS)
                + span
        }
        _ => 0,
    }
}

/// Encode one part. The caller guarantees the content is sorted and valid for `baseline`.
pub(crate) fn encode_part<W: BitSink>(
    w: &mut W,
    header: &PartHeader,
    baseline: &QuantizedWorld,
    content: &PartContent<'_>,
    lim: &Limits,
) {
    write_header(w, header);
    let base = baseline.entities();
    let ticks = header.ticks_since_baseline();

    // Part counts stay below 2^14 (a part is at most a few thousand bits).
    w.write_varint(content.updates.len() as u32, COUNT_CHUNK_BITS);
    if !content.updates.is_empty() {
        let indices: Vec<usize> = content.updates.iter().map(|(i, _)| *i).collect();
        let use_mask = index_mask_bits(&indices) < index_list_bits(&indices);
        w.write_bool(use_mask);
        if use_mask {
            // Non-empty, checked above.
            let first = indices[0];
            let last = indices[indices.len() - 1];
            let span = last - first + 1;
            w.write_varint(first as u32, INDEX_GAP_CHUNK_BITS);
            w.write_varint((span - indices.len()) as u32, COUNT_CHUNK_BITS);
            let mut next = indices.iter().peekable();
            for i in first..=last {
                let hit = next.peek() == Some(&&i);
                if hit {
                    next.next();
                }
                w.write_bool(hit);
            }
        } else {
            write_index_list(w, &indices);
        }
        for (i, e) in &content.updates {
            // The sender takes indices from this baseline.
            write_entity(w, &base[*i].1, e, ticks, lim);
        }
    }

    w.write_varint(content.despawns.len() as u32, COUNT_CHUNK_BITS);
    write_index_list(w, &content.despawns);

    w.write_varint(content.spawns.len() as u32, COUNT_CHUNK_BITS);
    let spawn_base = spawn_base();
    let mut prev: Option<EntityId> = None;
    for (id, e) in &content.spawns {
        let gap = match prev {
            Some(p) => id.0 - p.0 - 1,
            None => id.0,
        };
        w.write_varint(gap, ID_GAP_CHUNK_BITS);
        write_entity(w, &spawn_base, e, 0, lim);
        prev = Some(*id);
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
) -> Result<Vec<usize>, SnapshotError> {
    // n was checked against the baseline size and the bits left.
    let mut out = Vec::with_capacity(n);
    let mut next = 0u64;
    for _ in 0..n {
        let i = next + u64::from(r.read_varint(INDEX_GAP_CHUNK_BITS)?);
        if i >= len as u64 {
            return Err(SnapshotError::IndexOutOfRange);
        }
        // Below len, a usize.
        out.push(i as usize);
        next = i + 1;
    }
    Ok(out)
}

/// Decode the body of a part (after [`read_header`]) against `baseline`, adding where its
/// bits went to `tally` (only once the whole part decoded).
///
/// Returns the changes sorted by id. On error nothing outside the return value was touched.
pub(crate) fn decode_body(
    r: &mut BitReader<'_>,
    header: &PartHeader,
    baseline: &QuantizedWorld,
    lim: &Limits,
    tally: &mut FieldBits,
) -> Result<Vec<Change>, SnapshotError> {
    let base = baseline.entities();
    let ticks = header.ticks_since_baseline();
    let mut changes: Vec<Change> = Vec::new();
    let mut t = FieldBits {
        parts: 1,
        part_headers: (r.bit_len() - r.remaining_bits()) as u64,
        ..FieldBits::default()
    };
    let mut m = Meter::new(r);

    let n = read_count(r, base.len())?;
    let mut updates = Vec::new();
    if n > 0 {
        let use_mask = r.read_bool()?;
        t.part_headers += m.take(r);
        let indices = if use_mask {
            let first = u64::from(r.read_varint(INDEX_GAP_CHUNK_BITS)?);
            let extra = u64::from(r.read_varint(COUNT_CHUNK_BITS)?);
            let span = n as u64 + extra;
            if first + span > base.len() as u64 {
                return Err(SnapshotError::IndexOutOfRange);
            }
            if span > r.remaining_bits() as u64 {
                return Err(SnapshotError::CountTooLarge);
            }
            let mut out = Vec::with_capacity(n);
            for i in first..first + span {
                if r.read_bool()? {
                    // Below base.len() (checked above), a usize.
                    out.push(i as usize);
                }
            }
            if out.len() != n {
                return Err(SnapshotError::BadHeader("changed-bit count mismatch"));
            }
            out
        } else {
            read_index_list(r, n, base.len())?
        };
        t.index_gaps += m.take(r);
        for i in indices {
            // i < base.len(), checked while reading the indices.
            let (id, b) = &base[i];
            updates.push((*id, Some(read_entity(r, b, ticks, lim, &mut t)?)));
        }
        m = Meter::new(r);
    }

    let n = read_count(r, base.len())?;
    t.part_headers += m.take(r);
    let despawns = read_index_list(r, n, base.len())?;
    t.index_gaps += m.take(r);

    let n = read_count(r, usize::MAX)?;
    t.part_headers += m.take(r);
    let spawn_base = spawn_base();
    let mut spawns = Vec::with_capacity(n);
    let mut next = 0u64;
    for _ in 0..n {
        let id = next + u64::from(r.read_varint(ID_GAP_CHUNK_BITS)?);
        t.index_gaps += m.take(r);
        let id = u32::try_from(id).map_err(|_| SnapshotError::IndexOutOfRange)?;
        let id = EntityId(id);
        if baseline.index_of(id).is_some() {
            return Err(SnapshotError::SpawnExists);
        }
        spawns.push((id, Some(read_entity(r, &spawn_base, 0, lim, &mut t)?)));
        m = Meter::new(r);
        next = u64::from(id.0) + 1;
    }

    if r.remaining_bits() >= 8 {
        return Err(SnapshotError::TrailingBytes);
    }
    t.part_headers += r.remaining_bits() as u64;

    // Updates and despawns are both increasing baseline indices: merge to find overlap.
    let mut d = despawns.iter().peekable();
    for (id, _) in &updates {
        while d.peek().is_some_and(|&&i| base[i].0 < *id) {
            d.next();
        }
        if d.peek().is_some_and(|&&i| base[i].0 == *id) {
            return Err(SnapshotError::Conflict);
        }
    }

    changes.reserve(updates.len() + despawns.len() + spawns.len());
    changes.extend(updates);
    // Despawn indices are below base.len(), checked while reading.
    changes.extend(despawns.iter().map(|&i| (base[i].0, None)));
    changes.extend(spawns);
    super::world::normalize_changes(&mut changes);
    tally.add(&t);
    Ok(changes)
}
