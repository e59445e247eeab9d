//! A minimal bit writer and a bit reader that never panics on short input.
//!
//! Bits are packed least-significant first into bytes, the way Fiedler's bitpacker does: the
//! first bit written is bit 0 of byte 0.

use thiserror::Error;

/// Why reading bits failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BitsError {
    /// The stream ended before the value.
    #[error("bit stream truncated")]
    Truncated,
    /// A varint ran past 32 bits.
    #[error("varint too long")]
    VarintTooLong,
    /// An Exp-Golomb code longer than any value the format can hold.
    #[error("exp-golomb code too long")]
    ExpGolombTooLong,
}

/// Largest order of an Exp-Golomb code (parts send it in 4 bits).
pub(crate) const MAX_EXP_GOLOMB_K: u32 = 15;

/// Largest value an Exp-Golomb code may carry: every coded quantity (a zig-zag delta of
/// 30-bit values, a baseline index, an entity id gap) fits 32 bits.
pub(crate) const MAX_EXP_GOLOMB_VALUE: u64 = u32::MAX as u64;

/// Something bits can be written to: a [`BitWriter`], or a [`BitCounter`] that only measures.
///
/// The snapshot encoder is written once against this trait, so the sender's size estimate
/// and the bytes it sends cannot disagree.
pub(crate) trait BitSink {
    /// Write the low `bits` bits of `value` (`bits` ≤ 32; higher bits of `value` are ignored).
    fn write_bits(&mut self, value: u32, bits: u32);

    /// Write one bit.
    fn write_bool(&mut self, value: bool) {
        self.write_bits(u32::from(value), 1);
    }

    /// Write `value` as groups of `chunk_bits` bits, each followed by a "more" bit.
    ///
    /// Small numbers cost `chunk_bits + 1` bits; the chunk size is chosen per field.
    fn write_varint(&mut self, mut value: u32, chunk_bits: u32) {
        loop {
            self.write_bits(value, chunk_bits);
            value = value.checked_shr(chunk_bits).unwrap_or(0);
            self.write_bool(value != 0);
            if value == 0 {
                break;
            }
        }
    }

    /// Write `value` (≤ [`MAX_EXP_GOLOMB_VALUE`]) as an Exp-Golomb code of order `k`
    /// (≤ [`MAX_EXP_GOLOMB_K`]).
    ///
    /// `x = value + 2^k` has `n` significant bits: `n − 1 − k` zero bits, a one bit, then the
    /// low `n − 1` bits of `x`. Small values cost `k + 1` bits and the cost grows with the
    /// logarithm of the value, so a long tail (a collision, a teleport) stays affordable.
    fn write_exp_golomb(&mut self, value: u64, k: u32) {
        debug_assert!(value <= MAX_EXP_GOLOMB_VALUE && k <= MAX_EXP_GOLOMB_K);
        let x = value + (1u64 << k);
        let n = 64 - x.leading_zeros();
        let zeros = n - 1 - k;
        // The low n − 1 bits of x; the leading one is implied by the prefix.
        let low = x & ((1u64 << (n - 1)) - 1);
        let len = zeros + n;
        if len <= 32 {
            // Most codes are short: the zeros, the one and the low bits in one write.
            self.write_bits((((low << 1) | 1) << zeros) as u32, len);
        } else {
            // n − 1 ≤ 32: value < 2^32 and k ≤ 15, so x < 2^33.
            self.write_bits(0, zeros);
            self.write_bool(true);
            self.write_bits(low as u32, n - 1);
        }
    }
}

/// Values below this have their Exp-Golomb codes in [`SMALL_CODES`].
pub(crate) const SMALL_CODE_VALUES: usize = 64;

/// The Exp-Golomb code of every value below [`SMALL_CODE_VALUES`] at every order, as
/// `code << 8 | length` (the bits as [`BitSink::write_exp_golomb`] writes them, at most 16,
/// first bit lowest). Baseline index gaps are nearly all this small: a client's part writes
/// about 160 of them a tick, and looking them up instead of working each one out made
/// writing them 2.7 times and weighing orders 4.5 times as fast (docs/BENCHMARKS.md).
pub(crate) static SMALL_CODES: [[u32; SMALL_CODE_VALUES]; MAX_EXP_GOLOMB_K as usize + 1] =
    small_codes();

const fn small_codes() -> [[u32; SMALL_CODE_VALUES]; MAX_EXP_GOLOMB_K as usize + 1] {
    let mut table = [[0; SMALL_CODE_VALUES]; MAX_EXP_GOLOMB_K as usize + 1];
    let mut k = 0;
    while k <= MAX_EXP_GOLOMB_K {
        let mut v = 0;
        while v < SMALL_CODE_VALUES {
            // As in `write_exp_golomb`: x has n bits; n − 1 − k zeros, a one, the low n − 1.
            let x = v as u64 + (1u64 << k);
            let n = 64 - x.leading_zeros();
            let zeros = n - 1 - k;
            let low = x & ((1u64 << (n - 1)) - 1);
            let code = ((low << 1) | 1) << zeros;
            table[k as usize][v] = ((code as u32) << 8) | (zeros + n);
            v += 1;
        }
        k += 1;
    }
    table
}

/// Bits [`BitSink::write_exp_golomb`] spends on `value` with order `k`: `k + 1` for values
/// below `2^k`, then two more for every doubling.
pub(crate) fn exp_golomb_bits(value: u64, k: u32) -> usize {
    let x = value + (1u64 << k);
    let n = 64 - x.leading_zeros();
    (2 * n - 1 - k) as usize
}

/// Counts the bits that would be written.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BitCounter {
    /// Bits written so far.
    pub bits: usize,
}

impl BitSink for BitCounter {
    fn write_bits(&mut self, _value: u32, bits: u32) {
        self.bits += bits as usize;
    }

    fn write_exp_golomb(&mut self, value: u64, k: u32) {
        self.bits += exp_golomb_bits(value, k);
    }
}

/// Appends bit fields to a byte vector.
#[derive(Debug, Default, Clone)]
pub(crate) struct BitWriter {
    bytes: Vec<u8>,
    /// Bits not yet in `bytes`, the first in bit 0; always fewer than 64.
    scratch: u64,
    scratch_bits: u32,
}

impl BitWriter {
    /// An empty writer.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// An empty writer in `bytes` (cleared), with room for `capacity` bytes.
    pub(crate) fn in_buffer(mut bytes: Vec<u8>, capacity: usize) -> Self {
        bytes.clear();
        bytes.reserve(capacity);
        Self {
            bytes,
            ..Self::default()
        }
    }

    /// Bits written so far.
    #[cfg(test)]
    pub(crate) fn bit_len(&self) -> usize {
        self.bytes.len() * 8 + self.scratch_bits as usize
    }

    /// Pad with zero bits to a whole byte and return the bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let tail = self.scratch_bits.div_ceil(8) as usize;
        self.bytes
            .extend_from_slice(&self.scratch.to_le_bytes()[..tail]);
        self.bytes
    }

    /// Write the low `bits` bits of `value` (`bits` ≤ 64; the bits above must be zero).
    ///
    /// Eight bytes go to the buffer at once: a push per byte, and later one per four
    /// bytes, showed in encoding profiles.
    fn write_word(&mut self, value: u64, bits: u32) {
        debug_assert!(bits <= 64 && (bits == 64 || value >> bits == 0));
        if bits == 0 {
            return;
        }
        push_word(
            &mut self.bytes,
            (&mut self.scratch, &mut self.scratch_bits),
            value,
            bits,
        );
    }

    /// Write every value of `values` as [`BitSink::write_exp_golomb`] does with order `k`
    /// (≤ [`MAX_EXP_GOLOMB_K`]): the same bits, with the pending word kept in registers
    /// and small values' codes looked up in [`SMALL_CODES`].
    pub(crate) fn write_exp_golomb_run(&mut self, values: &[u32], k: u32) {
        let codes = &SMALL_CODES[k as usize];
        let (mut pending, mut used) = (self.scratch, self.scratch_bits);
        for &v in values {
            let (code, len) = match codes.get(v as usize) {
                Some(&c) => (u64::from(c >> 8), c & 0xff),
                None => {
                    // A long gap: written field by field, from the writer's own state.
                    (self.scratch, self.scratch_bits) = (pending, used);
                    self.write_exp_golomb(u64::from(v), k);
                    (pending, used) = (self.scratch, self.scratch_bits);
                    continue;
                }
            };
            push_word(&mut self.bytes, (&mut pending, &mut used), code, len);
        }
        (self.scratch, self.scratch_bits) = (pending, used);
    }

    /// Append every string `strings` yields (none may have overflowed), one after another,
    /// with the pending word kept in registers: a part's updates are mostly strings encoded
    /// once for every client, appended back to back.
    pub(crate) fn append_run(&mut self, strings: impl Iterator<Item = BitString>) {
        let (mut pending, mut used) = (self.scratch, self.scratch_bits);
        for s in strings {
            debug_assert!(!s.overflowed());
            let mut left = s.bits;
            for &word in &s.words {
                if left == 0 {
                    break;
                }
                // n ≤ 64, and at least 1.
                let n = left.min(64);
                push_word(&mut self.bytes, (&mut pending, &mut used), word, n as u32);
                left -= n;
            }
        }
        (self.scratch, self.scratch_bits) = (pending, used);
    }
}

impl BitSink for BitWriter {
    fn write_bits(&mut self, value: u32, bits: u32) {
        debug_assert!(bits <= 32);
        // Bits of `value` above `bits` are ignored (a u64 shift by 32 is in range).
        let value = u64::from(value) & ((1u64 << bits) - 1);
        self.write_word(value, bits);
    }
}

/// Put the low `bits` bits of `value` (1 to 64; the bits above must be zero) after the
/// `used` bits waiting in `pending` (fewer than 64), moving a full word to `bytes`: the one
/// step of [`BitWriter`], on its fields or on copies a loop keeps in registers.
#[inline(always)]
fn push_word(bytes: &mut Vec<u8>, (pending, used): (&mut u64, &mut u32), value: u64, bits: u32) {
    // Fewer than 64 bits wait: the shift is in range.
    *pending |= value << *used;
    let total = *used + bits;
    if total < 64 {
        *used = total;
    } else {
        bytes.extend_from_slice(&pending.to_le_bytes());
        // What did not fit: the value's top `total − 64` bits (none when nothing was
        // waiting, where the shift would be out of range).
        *pending = value.checked_shr(64 - *used).unwrap_or(0);
        *used = total - 64;
    }
}

/// A short run of bits kept by value: an entity delta encoded once and appended to every
/// part that carries it (see [`BitWriter::append_run`]).
///
/// Bits past [`BitString::CAPACITY_BITS`] are counted but not kept; such a string is
/// [`BitString::overflowed`] and must be encoded again where it is needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BitString {
    words: [u64; BitString::WORDS],
    bits: usize,
}

impl BitString {
    /// Words a string keeps.
    pub(crate) const WORDS: usize = 3;
    /// Bits a string keeps: most entity updates take 30 to 80, spawns up to about 150.
    pub(crate) const CAPACITY_BITS: usize = Self::WORDS * 64;

    /// The string whose first `bits` bits are those of `words` (the rest must be zero).
    pub(crate) fn from_words(words: [u64; Self::WORDS], bits: usize) -> Self {
        debug_assert!(bits <= Self::CAPACITY_BITS);
        Self { words, bits }
    }

    /// The bits kept, the first in the lowest bit of the first word; zero past the end.
    pub(crate) fn words(&self) -> &[u64; Self::WORDS] {
        &self.words
    }

    /// Bits written (kept or not).
    pub(crate) fn len(&self) -> usize {
        self.bits
    }

    /// More bits were written than kept.
    pub(crate) fn overflowed(&self) -> bool {
        self.bits > Self::CAPACITY_BITS
    }

    /// Append this string to `w` (it must not have overflowed): a piece of a part encoded
    /// once and reused, at whatever bit offset the writer is.
    pub(crate) fn write_to(&self, w: &mut BitWriter) {
        w.append_run(std::iter::once(*self));
    }
}

impl BitSink for BitString {
    fn write_bits(&mut self, value: u32, bits: u32) {
        if bits == 0 {
            return;
        }
        let end = self.bits + bits as usize;
        if end <= Self::CAPACITY_BITS {
            let value = if bits == 32 {
                u64::from(value)
            } else {
                u64::from(value) & ((1u64 << bits) - 1)
            };
            let (word, at) = (self.bits / 64, self.bits % 64);
            self.words[word] |= value << at;
            if at + bits as usize > 64 {
                // at > 32 here, so the shift is below 64.
                self.words[word + 1] |= value >> (64 - at);
            }
        }
        self.bits = end;
    }
}

/// Bits [`BitSink::write_varint`] spends on `value`.
#[cfg(test)]
pub(crate) fn varint_bits(value: u32, chunk_bits: u32) -> usize {
    let significant = (32 - value.leading_zeros()).max(1);
    let chunks = significant.div_ceil(chunk_bits);
    (chunks * (chunk_bits + 1)) as usize
}

/// Reads bit fields from a byte slice; every read past the end is an error.
#[derive(Debug, Clone)]
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos_bits: usize,
}

impl<'a> BitReader<'a> {
    /// A reader at the first bit of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos_bits: 0 }
    }

    /// Bits in the whole input.
    pub(crate) fn bit_len(&self) -> usize {
        self.bytes.len() * 8
    }

    /// Bits not yet read (including the final padding).
    pub(crate) fn remaining_bits(&self) -> usize {
        (self.bytes.len() * 8).saturating_sub(self.pos_bits)
    }

    /// Read `bits` bits (≤ 32).
    pub(crate) fn read_bits(&mut self, bits: u32) -> Result<u32, BitsError> {
        debug_assert!(bits <= 32);
        if bits as usize > self.remaining_bits() {
            return Err(BitsError::Truncated);
        }
        let mut value = 0u64;
        let mut got = 0u32;
        while got < bits {
            // In bounds: remaining_bits() covered every bit of this loop above.
            let byte = self.bytes[self.pos_bits / 8];
            let offset = (self.pos_bits % 8) as u32;
            let take = (8 - offset).min(bits - got);
            let chunk = (u64::from(byte) >> offset) & ((1u64 << take) - 1);
            value |= chunk << got;
            got += take;
            self.pos_bits += take as usize;
        }
        Ok(value as u32)
    }

    /// Read one bit.
    pub(crate) fn read_bool(&mut self) -> Result<bool, BitsError> {
        Ok(self.read_bits(1)? == 1)
    }

    /// Read a value written by [`BitSink::write_varint`] with the same `chunk_bits`.
    pub(crate) fn read_varint(&mut self, chunk_bits: u32) -> Result<u32, BitsError> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let chunk = self.read_bits(chunk_bits)?;
            value |= u64::from(chunk) << shift;
            shift += chunk_bits;
            if value > u64::from(u32::MAX) {
                return Err(BitsError::VarintTooLong);
            }
            if !self.read_bool()? {
                return Ok(value as u32);
            }
            if shift >= 32 {
                return Err(BitsError::VarintTooLong);
            }
        }
    }
}

impl BitReader<'_> {
    /// Read a value written by [`BitSink::write_exp_golomb`] with the same `k`.
    ///
    /// A prefix longer than any value up to [`MAX_EXP_GOLOMB_VALUE`] can have is an error,
    /// so at most 33 bits are scanned, whatever the input.
    pub(crate) fn read_exp_golomb(&mut self, k: u32) -> Result<u64, BitsError> {
        debug_assert!(k <= MAX_EXP_GOLOMB_K);
        // The zero prefix, scanned a byte at a time (prefixes are short, but bit-by-bit reads
        // showed in decoding profiles).
        let mut zeros = 0u32;
        loop {
            let left = self.remaining_bits();
            if left == 0 {
                return Err(BitsError::Truncated);
            }
            let offset = self.pos_bits % 8;
            // In bounds: at least one bit is left.
            let byte = u32::from(self.bytes[self.pos_bits / 8]) >> offset;
            let n = (8 - offset).min(left) as u32;
            // A sentinel one past the bits this byte has left caps the count at n.
            let run = (byte | (1 << n)).trailing_zeros();
            zeros += run;
            if zeros + k > 32 {
                return Err(BitsError::ExpGolombTooLong);
            }
            if run < n {
                // The run and the one that ends it.
                self.pos_bits += run as usize + 1;
                break;
            }
            self.pos_bits += n as usize;
        }
        // zeros + k ≤ 32, checked in the loop.
        let low = u64::from(self.read_bits(zeros + k)?);
        let value = ((1u64 << (zeros + k)) | low) - (1u64 << k);
        if value > MAX_EXP_GOLOMB_VALUE {
            return Err(BitsError::ExpGolombTooLong);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_round_trip_across_byte_edges() {
        let mut w = BitWriter::new();
        w.write_bits(0b101, 3);
        w.write_bits(u32::MAX, 32);
        w.write_bool(true);
        w.write_bits(0x1234, 13);
        w.write_varint(300, 4);
        assert_eq!(w.bit_len(), 3 + 32 + 1 + 13 + varint_bits(300, 4));
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        assert_eq!(r.read_bits(3), Ok(0b101));
        assert_eq!(r.read_bits(32), Ok(u32::MAX));
        assert_eq!(r.read_bool(), Ok(true));
        assert_eq!(r.read_bits(13), Ok(0x1234 & 0x1fff));
        assert_eq!(r.read_varint(4), Ok(300));
        assert!(r.remaining_bits() < 8);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let mut r = BitReader::new(&[0xff]);
        assert_eq!(r.read_bits(9), Err(BitsError::Truncated));
        // A failed read consumes nothing.
        assert_eq!(r.read_bits(8), Ok(0xff));
        assert_eq!(r.read_bool(), Err(BitsError::Truncated));
        assert_eq!(
            BitReader::new(&[]).read_varint(7),
            Err(BitsError::Truncated)
        );
    }

    #[test]
    fn endless_varint_is_an_error() {
        let bytes = [0xff; 16];
        assert_eq!(
            BitReader::new(&bytes).read_varint(4),
            Err(BitsError::VarintTooLong)
        );
    }

    #[test]
    fn exp_golomb_extremes_round_trip_for_every_order() {
        for k in 0..=MAX_EXP_GOLOMB_K {
            let edge = 1u64 << k;
            for v in [
                0,
                1,
                edge - 1,
                edge,
                2 * edge - 1,
                2 * edge,
                MAX_EXP_GOLOMB_VALUE,
            ] {
                let mut w = BitWriter::new();
                w.write_exp_golomb(v, k);
                assert_eq!(w.bit_len(), exp_golomb_bits(v, k), "v {v} k {k}");
                let bytes = w.finish();
                assert_eq!(BitReader::new(&bytes).read_exp_golomb(k), Ok(v), "k {k}");
            }
            // Below 2^k a value costs k + 1 bits; the largest at most 65.
            assert_eq!(exp_golomb_bits(0, k), k as usize + 1);
            assert!(exp_golomb_bits(MAX_EXP_GOLOMB_VALUE, k) <= 65);
        }
    }

    #[test]
    fn overlong_exp_golomb_codes_are_errors() {
        // 33 zero bits: no value up to 2^32 - 1 has so long a prefix, whatever the order.
        for k in 0..=MAX_EXP_GOLOMB_K {
            assert_eq!(
                BitReader::new(&[0; 8]).read_exp_golomb(k),
                Err(BitsError::ExpGolombTooLong)
            );
        }
        // A prefix the value does not fit: 32 zeros, the one, then 32 one bits = 2^33 − 2.
        let mut w = BitWriter::new();
        w.write_bits(0, 32);
        w.write_bool(true);
        w.write_bits(u32::MAX, 32);
        let bytes = w.finish();
        assert_eq!(
            BitReader::new(&bytes).read_exp_golomb(0),
            Err(BitsError::ExpGolombTooLong)
        );
        // Cut short anywhere: truncated, never a panic.
        let mut w = BitWriter::new();
        w.write_exp_golomb(123_456_789, 3);
        let bytes = w.finish();
        for len in 0..bytes.len() {
            assert_eq!(
                BitReader::new(&bytes[..len]).read_exp_golomb(3),
                Err(BitsError::Truncated),
                "len {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_fields_round_trip(fields in prop::collection::vec((any::<u32>(), 0u32..=32), 0..40),
                                    varints in prop::collection::vec((any::<u32>(), 1u32..=8), 0..10)) {
            let mut w = BitWriter::new();
            for (v, b) in &fields { w.write_bits(*v, *b); }
            for (v, c) in &varints { w.write_varint(*v, *c); }
            let bytes = w.finish();
            let mut r = BitReader::new(&bytes);
            for (v, b) in &fields {
                let mask = if *b == 32 { u32::MAX } else { (1u32 << b) - 1 };
                prop_assert_eq!(r.read_bits(*b).unwrap(), v & mask);
            }
            for (v, c) in &varints {
                prop_assert_eq!(r.read_varint(*c).unwrap(), *v);
            }
        }

        #[test]
        fn exp_golomb_round_trips_for_every_order(
            codes in prop::collection::vec((any::<u32>(), 0u32..=32, 0u32..=MAX_EXP_GOLOMB_K), 1..40),
        ) {
            let mut w = BitWriter::new();
            let mut want_bits = 0;
            // Shift to spread values over every magnitude, not just the large ones.
            let values: Vec<(u64, u32)> =
                codes.iter().map(|&(v, shift, k)| (u64::from(v.checked_shr(shift).unwrap_or(0)), k)).collect();
            for &(v, k) in &values {
                w.write_exp_golomb(v, k);
                want_bits += exp_golomb_bits(v, k);
            }
            prop_assert_eq!(w.bit_len(), want_bits);
            let bytes = w.finish();
            let mut r = BitReader::new(&bytes);
            for &(v, k) in &values {
                prop_assert_eq!(r.read_exp_golomb(k), Ok(v));
            }
            prop_assert!(r.remaining_bits() < 8);
        }

        #[test]
        fn a_run_of_codes_writes_what_coding_each_value_does(
            lead in 0u32..=63,
            values in prop::collection::vec(
                prop_oneof![0u32..SMALL_CODE_VALUES as u32, 0u32..4096, any::<u32>()],
                0..200,
            ),
            k in 0u32..=MAX_EXP_GOLOMB_K,
        ) {
            let mut each = BitWriter::new();
            let mut run = BitWriter::new();
            for w in [&mut each, &mut run] {
                w.write_bits(u32::MAX, lead.min(32));
                w.write_bits(0b101, lead.saturating_sub(32));
            }
            for &v in &values {
                each.write_exp_golomb(u64::from(v), k);
            }
            run.write_exp_golomb_run(&values, k);
            prop_assert_eq!(run.bit_len(), each.bit_len());
            prop_assert_eq!(run.finish(), each.finish());
        }

        #[test]
        fn a_bit_string_appended_anywhere_writes_what_writing_directly_does(
            lead in prop::collection::vec((any::<u32>(), 0u32..=32), 0..6),
            fields in prop::collection::vec((any::<u32>(), 0u32..=32), 0..12),
        ) {
            // Written directly...
            let mut direct = BitWriter::new();
            for (v, b) in lead.iter().chain(&fields) { direct.write_bits(*v, *b); }
            // ...and the same fields written once into a string, then appended after the lead.
            let mut string = BitString::default();
            for (v, b) in &fields { string.write_bits(*v, *b); }
            let mut appended = BitWriter::new();
            for (v, b) in &lead { appended.write_bits(*v, *b); }
            if string.overflowed() {
                prop_assert!(string.len() > BitString::CAPACITY_BITS);
            } else {
                string.write_to(&mut appended);
                prop_assert_eq!(appended.finish(), direct.finish());
            }
        }

        #[test]
        fn a_run_of_strings_appends_what_writing_their_fields_directly_does(
            lead in 0u32..=63,
            strings in prop::collection::vec(
                prop::collection::vec((any::<u32>(), 0u32..=32), 0..7),
                0..40,
            ),
        ) {
            // Strings of up to 7 × 32 bits: some overflow, and those are left out.
            let kept: Vec<(&Vec<(u32, u32)>, BitString)> = strings
                .iter()
                .map(|fields| {
                    let mut s = BitString::default();
                    for (v, b) in fields {
                        s.write_bits(*v, *b);
                    }
                    (fields, s)
                })
                .filter(|(_, s)| !s.overflowed())
                .collect();
            let mut direct = BitWriter::new();
            let mut run = BitWriter::new();
            for w in [&mut direct, &mut run] {
                w.write_bits(u32::MAX, lead.min(32));
                w.write_bits(0b101, lead.saturating_sub(32));
            }
            for (fields, _) in &kept {
                for (v, b) in *fields {
                    direct.write_bits(*v, *b);
                }
            }
            run.append_run(kept.iter().map(|&(_, s)| s));
            prop_assert_eq!(run.bit_len(), direct.bit_len());
            prop_assert_eq!(run.finish(), direct.finish());
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), widths in prop::collection::vec(0u32..=32, 0..64)) {
            let mut r = BitReader::new(&bytes);
            for b in widths {
                let before = r.remaining_bits();
                match r.read_bits(b) {
                    Ok(_) => prop_assert_eq!(r.remaining_bits(), before - b as usize),
                    Err(_) => prop_assert!((b as usize) > before),
                }
                let _ = r.read_varint(3);
                let _ = r.read_exp_golomb(b % (MAX_EXP_GOLOMB_K + 1));
            }
        }
    }
}
