//! Entity deltas encoded once per tick for every scoped client that needs them.
//!
//! Clients with their own scope each get their own snapshot, but at low loss most of them
//! hold a baseline of the same age, and an entity's encoded delta depends only on its
//! baseline state, its new state, the baseline's age in ticks and the section's code. A
//! client whose baseline is a view of the server's world of a tick holds that world's state
//! of every entity it holds, the same as every other such client. So per tick and per
//! baseline age one code is fixed from the whole world (a sample of its changes), and each
//! entity's delta under that code is encoded by the first such client that needs it and
//! appended as bits by the rest, which never read the entity's states.
//!
//! The code depends on the world alone and the bits are a function of their inputs, so who
//! fills the cache first changes nothing in the output: one thread or several, the same
//! bytes go out.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::bits::BitString;
use super::part::{self, EncodeScratch, EntityCode, EntityDelta};
use super::quantize::Limits;
use super::world::{QuantizedEntity, QuantizedWorld, Tick, TickWorld};

/// Every this many entities of the world, one measures the changes a shared code is chosen
/// from: a few hundred changes of the massive scene describe it as well as all of them.
const CODE_SAMPLE_STRIDE: usize = 8;

/// One entity's delta under its section's shared code.
#[derive(Debug)]
pub(crate) struct SharedDelta {
    pub(crate) delta: EntityDelta,
    /// Bits of the sender's estimate ([`part::delta_bits`]).
    pub(crate) estimate_bits: usize,
    /// The delta written with the shared code.
    pub(crate) bits: BitString,
}

impl SharedDelta {
    /// What the packer must charge: never below what either code spends.
    pub(crate) fn payload_bits(&self) -> usize {
        self.estimate_bits.max(self.bits.len())
    }
}

/// The shared code for deltas `ticks` after their baseline (0: spawns), and the deltas
/// encoded with it so far, by the entity's index in the tick's world.
#[derive(Debug)]
pub(crate) struct SharedSection {
    pub(crate) ticks: u32,
    pub(crate) code: EntityCode,
    slots: Slots,
}

/// One slot per entity of the tick's world, and which of them were filled, so that emptying
/// them for the next tick touches those alone (a few thousand of 10,000, each two cache
/// lines), not every slot.
#[derive(Debug, Default)]
struct Slots {
    slots: Vec<OnceLock<SharedDelta>>,
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
                        slot.take();
                    }
                }
            }
        } else {
            self.slots.clear();
            self.slots.resize_with(len, OnceLock::new);
            self.filled.clear();
            self.filled
                .resize_with(len.div_ceil(64), AtomicU64::default);
        }
    }

    fn mark(&self, index: usize) {
        if let Some(word) = self.filled.get(index / 64) {
            word.fetch_or(1 << (index % 64), Ordering::Relaxed);
        }
    }
}

impl SharedSection {
    /// The delta of the entity at `index` of the tick's world against its state in the
    /// world of the section's baseline tick (or against the spawn base, for spawns),
    /// encoding it from `states` (base, new) when no client did yet.
    pub(crate) fn delta<'a>(
        &self,
        index: usize,
        states: impl FnOnce() -> (&'a QuantizedEntity, &'a QuantizedEntity),
        lim: &Limits,
    ) -> Option<SharedLookup<'_>> {
        let slot = self.slots.slots.get(index)?;
        if let Some(d) = slot.get() {
            return Some(SharedLookup::Hit(d));
        }
        let (base, cur) = states();
        // Another thread may fill the slot meanwhile, with the same delta (a function of
        // the same states): then that one is used.
        Some(match slot.set(self.encode(base, cur, lim)) {
            Ok(()) => {
                self.slots.mark(index);
                SharedLookup::Kept(slot.get()?)
            }
            Err(_) => SharedLookup::Hit(slot.get()?),
        })
    }

    /// The delta of the entity at `index`, once some client looked it up.
    pub(crate) fn get(&self, index: usize) -> Option<&SharedDelta> {
        self.slots.slots.get(index)?.get()
    }

    fn encode(&self, base: &QuantizedEntity, cur: &QuantizedEntity, lim: &Limits) -> SharedDelta {
        let delta = EntityDelta::new(base, cur, self.ticks, lim);
        SharedDelta {
            estimate_bits: part::delta_bits(&delta, cur, self.ticks, lim),
            bits: part::shared_bits(&delta, cur, lim, &self.code),
            delta,
        }
    }
}

/// A delta from a [`SharedSection`]: encoded by another client, or by this one and kept for
/// the others.
#[derive(Debug)]
pub(crate) enum SharedLookup<'a> {
    Hit(&'a SharedDelta),
    Kept(&'a SharedDelta),
}

impl<'a> SharedLookup<'a> {
    pub(crate) fn get(&self) -> &'a SharedDelta {
        match self {
            SharedLookup::Hit(d) | SharedLookup::Kept(d) => d,
        }
    }
}

/// The shared codes and deltas of one tick's world.
#[derive(Debug, Default)]
pub(crate) struct SharedDeltas {
    tick: Tick,
    sections: Vec<SharedSection>,
}

impl SharedDeltas {
    /// Start `tick`'s world: a section per age in `ticks` (0: spawns) whose world then is in
    /// `history`, with its code chosen from a sample of the changes since.
    pub(crate) fn prepare(
        &mut self,
        tick: Tick,
        world: &QuantizedWorld,
        history: &[TickWorld],
        ticks: &[u32],
        lim: &Limits,
        scratch: &mut EncodeScratch,
    ) {
        self.tick = tick;
        let mut old = std::mem::take(&mut self.sections);
        self.sections.clear();
        let cur = world.entities();
        let spawn_base = part::spawn_base();
        let mut deltas: Vec<EntityDelta> = Vec::new();
        for &k in ticks {
            deltas.clear();
            if k == 0 {
                deltas.extend(
                    cur.iter()
                        .step_by(CODE_SAMPLE_STRIDE)
                        .map(|(_, e)| EntityDelta::new(&spawn_base, e, 0, lim)),
                );
            } else {
                let Some(then) = history.iter().find(|h| h.tick.0 + k == tick.0) else {
                    continue;
                };
                for (id, e) in cur.iter().step_by(CODE_SAMPLE_STRIDE) {
                    if let Some(b) = then.world.get(*id)
                        && b != e
                    {
                        deltas.push(EntityDelta::new(b, e, k, lim));
                    }
                }
            }
            if deltas.is_empty() {
                continue;
            }
            let code = part::choose_code(deltas.iter(), k, scratch);
            // Reuse a section's slots from an earlier tick.
            let mut slots = old.pop().map(|s| s.slots).unwrap_or_default();
            slots.reset(cur.len());
            self.sections.push(SharedSection {
                ticks: k,
                code,
                slots,
            });
        }
        old.clear();
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
