//! What `codec::decode` allocates for hostile length prefixes, and what a borrowed decode saves
//! on a list of byte strings, measured with a counting global allocator. A global allocator
//! serves the whole test binary, hence a file of its own, and its counters are process-wide,
//! hence one test function: no other test runs beside it.

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;

use snapsync::codec::{self, CodecError, MAX_DECODE_BYTES};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Serde's cap on what a sequence's visitor reserves from a length hint
/// (`serde::__private::size_hint::cautious`): a hostile length can make a `Vec` reserve this
/// much, never more, before the decode fails on the missing elements.
const SERDE_MAX_PREALLOC_BYTES: usize = 1024 * 1024;

/// Allocation noise allowed beside a refused decode: error values, and the test harness's own
/// thread, which the process-wide counters also see.
const SMALL_BYTES: usize = 4 * 1024;

/// Runs `f` and returns its result with the bytes allocated meanwhile (reallocations that grew
/// a block included).
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let region = Region::new(GLOBAL);
    let out = f();
    let change = region.change();
    let grown = usize::try_from(change.bytes_reallocated).unwrap_or(0);
    (out, change.bytes_allocated + grown)
}

/// A length prefix in bincode's varint: 0xFC + u32, or 0xFD + u64.
fn prefix(len: u64) -> Vec<u8> {
    match u32::try_from(len) {
        Ok(l) => [&[0xFC][..], &l.to_le_bytes()].concat(),
        Err(_) => [&[0xFD][..], &len.to_le_bytes()].concat(),
    }
}

/// A game message's shape: a number, then a string.
#[derive(Debug, serde::Deserialize)]
struct Chat {
    _from: u32,
    _text: String,
}

#[test]
fn hostile_length_prefixes_allocate_nothing_large() {
    // The control: a legitimate large value does show its size, so the bounds below are
    // measured, not vacuous.
    let big = codec::encode(&vec![7u8; 200 * 1024]).unwrap();
    let (decoded, bytes) = allocated_by(|| codec::decode::<Vec<u8>>(&big));
    assert_eq!(decoded.unwrap().len(), 200 * 1024);
    assert!(
        bytes >= 200 * 1024,
        "a 200 KiB decode allocated {bytes} bytes"
    );

    // Strings: the size limit refuses the length before anything is reserved.
    for claim in [
        MAX_DECODE_BYTES as u64 + 1,
        10_000_000,
        u64::from(u32::MAX),
        u64::MAX / 4,
    ] {
        let mut string = prefix(claim);
        string.extend_from_slice(b"short");
        let (result, bytes) = allocated_by(|| codec::decode::<String>(&string));
        assert!(
            matches!(result, Err(CodecError::TooLarge)),
            "{claim}: {result:?}"
        );
        assert!(
            bytes < SMALL_BYTES,
            "a {claim}-byte string allocated {bytes}"
        );
        // Inside a struct, as a game message carries it.
        let message = [&[5][..], &string].concat();
        let (result, bytes) = allocated_by(|| codec::decode::<Chat>(&message));
        assert!(
            matches!(result, Err(CodecError::TooLarge)),
            "{claim}: {result:?}"
        );
        assert!(
            bytes < SMALL_BYTES,
            "a {claim}-byte string allocated {bytes}"
        );
    }

    // Sequences bypass the limit (serde reads them element by element), so a hostile length
    // reserves up to serde's cap, whatever it claims, and the decode then fails on the
    // missing elements.
    for claim in [10_000_000, u64::MAX / 2] {
        let sequence = prefix(claim);
        let (result, bytes) = allocated_by(|| codec::decode::<Vec<u8>>(&sequence));
        assert!(matches!(result, Err(CodecError::Decode(_))), "{result:?}");
        assert!(
            bytes <= SERDE_MAX_PREALLOC_BYTES + SMALL_BYTES,
            "a {claim}-element Vec<u8> allocated {bytes}"
        );
        let (result, bytes) = allocated_by(|| codec::decode::<Vec<u64>>(&sequence));
        assert!(matches!(result, Err(CodecError::Decode(_))), "{result:?}");
        assert!(
            bytes <= SERDE_MAX_PREALLOC_BYTES + SMALL_BYTES,
            "a {claim}-element Vec<u64> allocated {bytes}"
        );
    }

    // A list of byte strings (the shape of a client's input frame, each input resent until
    // acknowledged): decoded borrowed, the strings stay in the datagram and only the list
    // is allocated; decoded owned, each string is one allocation more.
    let inputs: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 24]).collect();
    let frame = codec::encode(&(false, 7u32, &inputs)).unwrap();
    let (owned, owned_allocs) = allocations_by(|| {
        codec::decode::<(bool, u32, Vec<Vec<u8>>)>(&frame).map(|(_, _, v)| v.len())
    });
    let (borrowed, borrowed_allocs) = allocations_by(|| {
        codec::decode_borrowed::<(bool, u32, Vec<&[u8]>)>(&frame).map(|(_, _, v)| v.len())
    });
    assert_eq!((owned.unwrap(), borrowed.unwrap()), (16, 16));
    assert!(owned_allocs >= 17, "owned: {owned_allocs} allocations");
    assert!(
        borrowed_allocs <= 2,
        "borrowed: {borrowed_allocs} allocations"
    );
}

/// Runs `f` and returns its result with the number of allocations made meanwhile.
fn allocations_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let region = Region::new(GLOBAL);
    let out = f();
    (out, region.change().allocations)
}
