//! Scenario tests: guarantees under a lossy link, big messages, backpressure, bad input,
//! fairness between channels.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::sim::{Link, LinkModel};
use super::wire::{Fragment, Record, SectionWriter};
use super::*;

const STEP: Duration = Duration::from_millis(10);
const RO: u8 = 0;
const US: u8 = 1;
const UN: u8 = 2;
const RU: u8 = 3;

/// A message whose bytes encode its channel, index and length, so corruption is visible.
fn message(channel: u8, index: u32, len: usize) -> Vec<u8> {
    let mut m = vec![channel];
    m.extend_from_slice(&index.to_le_bytes());
    m.extend((0..len.saturating_sub(5)).map(|i| (i as u32 ^ index).wrapping_mul(31) as u8));
    m
}

/// Index of a message built by [`message`], checking that its bytes are exactly as sent.
fn index_of(channel: u8, bytes: &[u8]) -> u32 {
    assert!(bytes.len() >= 5, "message too short");
    assert_eq!(bytes[0], channel, "message on the wrong channel");
    let index = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    assert_eq!(
        bytes,
        message(channel, index, bytes.len()),
        "message corrupted"
    );
    index
}

fn section(records: &[Record<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = SectionWriter::new(&mut out);
    for r in records {
        w.push(r);
    }
    w.finish();
    out
}

fn record(channel: u8, id: u16, fragment: Option<(u16, u16)>, payload: &[u8]) -> Record<'_> {
    Record {
        channel,
        id: Sequence(id),
        fragment: fragment.map(|(index, count)| Fragment { index, count }),
        payload,
    }
}

fn part_bytes() -> usize {
    ChannelsConfig::default().limits().unwrap()[0].part_payload_bytes
}

/// Messages per channel in [`run_all_kinds`].
const MESSAGES: u32 = 40;

/// Sends [`MESSAGES`] messages on each of the four kinds over `model` and checks every kind's promise;
/// returns the indices the plain unreliable channel delivered, in delivery order.
fn run_all_kinds(
    seed: u64,
    model: LinkModel,
    small_window: bool,
) -> Result<Vec<u32>, TestCaseError> {
    let mut config = ChannelsConfig::default();
    if small_window {
        // A window of a few messages, so the sender keeps hitting its edge.
        for ch in [RO, RU] {
            let c = &mut config.channels[usize::from(ch)];
            c.send_window_messages = 8;
            c.max_message_bytes = 2048;
        }
    }
    let mut link = Link::new(config, model, seed);
    // The sender only knows an estimate, which may be well off the real round trip.
    link.rtt = Duration::from_millis(60);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut sent = [0u32; 4];
    let mut got: [Vec<u32>; 4] = Default::default();
    for _ in 0..3000 {
        for ch in [RO, US, UN, RU] {
            if sent[usize::from(ch)] < MESSAGES && rng.random_bool(0.5) {
                // Up to 3 parts, so reliable and unreliable fragments both occur.
                let len = rng.random_range(5..=800);
                let m = message(ch, sent[usize::from(ch)], len);
                link.sender.send(link.now, ch, &m).unwrap();
                sent[usize::from(ch)] += 1;
            }
        }
        link.step(STEP);
        for (ch, bytes) in link.drain() {
            got[usize::from(ch)].push(index_of(ch, &bytes));
        }
        let reliable_done = got[usize::from(RO)].len() == MESSAGES as usize
            && got[usize::from(RU)].len() == MESSAGES as usize;
        if sent.iter().all(|&n| n == MESSAGES) && reliable_done && link.idle() {
            break;
        }
    }
    let all: Vec<u32> = (0..MESSAGES).collect();
    prop_assert_eq!(&got[usize::from(RO)], &all, "reliable ordered");
    let mut ru = got[usize::from(RU)].clone();
    ru.sort_unstable();
    prop_assert_eq!(&ru, &all, "reliable unordered");
    let us = &got[usize::from(US)];
    prop_assert!(
        us.windows(2).all(|w| w[0] < w[1]),
        "sequenced went backwards: {:?}",
        us
    );
    let un = &got[usize::from(UN)];
    prop_assert_eq!(
        un.iter().collect::<HashSet<_>>().len(),
        un.len(),
        "duplicate"
    );
    prop_assert!(un.iter().chain(us).all(|&i| i < MESSAGES));
    prop_assert_eq!(link.receiver.invalid_count(), 0);
    // Everything acked: the sender holds nothing any more.
    for ch in [RO, RU] {
        let stats = link.sender.stats(ch).unwrap();
        prop_assert_eq!(stats.queue_len, 0);
        prop_assert_eq!(stats.memory_bytes, 0);
    }
    Ok(un.clone())
}

fn link_model(
    loss: f64,
    duplicate: f64,
    reorder: f64,
    jitter_ms: u64,
    ack_delay_ms: u64,
) -> LinkModel {
    LinkModel {
        loss,
        duplicate,
        reorder,
        jitter: Duration::from_millis(jitter_ms),
        // Beyond the resend interval, acks come too late and copies cross on the link.
        ack_delay: Duration::from_millis(ack_delay_ms),
        ..LinkModel::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every kind keeps its promise over a link with loss, duplicates, reordering and jitter.
    #[test]
    fn kinds_keep_their_guarantees_over_a_bad_link(
        seed: u64,
        loss in 0.0f64..0.5,
        duplicate in 0.0f64..0.2,
        reorder in 0.0f64..0.3,
        jitter_ms in 0u64..40,
        ack_delay_ms in 0u64..250,
        small_window: bool,
    ) {
        let model = link_model(loss, duplicate, reorder, jitter_ms, ack_delay_ms);
        run_all_kinds(seed, model, small_window)?;
    }

    /// With nothing lost or duplicated (delays and reordering still vary), the plain
    /// unreliable channel delivers every message, each once.
    #[test]
    fn unreliable_delivers_everything_on_a_clean_link(
        seed: u64,
        reorder in 0.0f64..0.3,
        jitter_ms in 0u64..40,
        ack_delay_ms in 0u64..250,
        small_window: bool,
    ) {
        let model = link_model(0.0, 0.0, reorder, jitter_ms, ack_delay_ms);
        let mut un = run_all_kinds(seed, model, small_window)?;
        un.sort_unstable();
        prop_assert_eq!(un, (0..MESSAGES).collect::<Vec<_>>());
    }
}

#[test]
fn quarter_megabyte_message_survives_twenty_percent_loss() {
    let model = LinkModel {
        loss: 0.2,
        jitter: Duration::from_millis(10),
        ..LinkModel::default()
    };
    let mut link = Link::new(ChannelsConfig::default(), model, 7);
    link.packets_per_step = 8;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let big: Vec<u8> = (0..DEFAULT_MAX_RELIABLE_MESSAGE_BYTES)
        .map(|_| rng.random())
        .collect();
    link.sender.send(link.now, RO, &big).unwrap();
    let mut received = Vec::new();
    for _ in 0..3000 {
        link.step(STEP);
        received.extend(link.drain());
        if !received.is_empty() && link.idle() {
            break;
        }
    }
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, RO);
    assert!(received[0].1 == big, "message corrupted");
    let stats = link.sender.stats(RO).unwrap();
    assert!(stats.resent > 0, "20 % loss must cost resends");
    assert_eq!(stats.memory_bytes, 0);
    assert_eq!(link.receiver.stats(RO).unwrap().received, 1);
}

/// Send, stepping the link while the channel reports backpressure.
fn send_waiting(link: &mut Link, channel: u8, message: &[u8]) {
    loop {
        match link.sender.send(link.now, channel, message) {
            Ok(()) => return,
            Err(SendError::Backpressure) => link.step(STEP),
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn unordered_big_messages_behind_small_ones_fit_the_window() {
    // A fragmented message queued behind unacked small ones must wait until all its parts
    // fit the receiver's window; the link simulator fails the test on any rejected section.
    let model = LinkModel {
        loss: 0.1,
        reorder: 0.1,
        jitter: Duration::from_millis(20),
        ..LinkModel::default()
    };
    let mut link = Link::new(ChannelsConfig::default(), model, 11);
    link.packets_per_step = 8;
    let mut expected = Vec::new();
    for i in 0..6u32 {
        for k in 0..50 {
            send_waiting(&mut link, RU, &message(RU, i * 100 + k, 20));
            expected.push(i * 100 + k);
        }
        send_waiting(&mut link, RU, &message(RU, i * 100 + 99, 200 * 1024));
        expected.push(i * 100 + 99);
    }
    let mut got = Vec::new();
    for _ in 0..5000 {
        link.step(STEP);
        got.extend(link.drain().into_iter().map(|(ch, m)| index_of(ch, &m)));
        if got.len() == expected.len() && link.idle() {
            break;
        }
    }
    got.sort_unstable();
    assert_eq!(got, expected);
    assert_eq!(link.receiver.invalid_count(), 0);
}

#[test]
fn reliable_ids_wrap_around() {
    // More than 65536 parts on both reliable kinds, with loss, so ids wrap.
    let model = LinkModel {
        loss: 0.05,
        duplicate: 0.05,
        ..LinkModel::default()
    };
    let mut link = Link::new(ChannelsConfig::default(), model, 5);
    link.packets_per_step = 16;
    const MESSAGES: u32 = 70_000;
    let mut sent = [0u32; 2];
    let mut got: [Vec<u32>; 2] = Default::default();
    for _ in 0..20_000 {
        for (k, ch) in [RO, RU].into_iter().enumerate() {
            while sent[k] < MESSAGES
                && link
                    .sender
                    .send(link.now, ch, &message(ch, sent[k], 5))
                    .is_ok()
            {
                sent[k] += 1;
            }
        }
        link.step(STEP);
        for (ch, m) in link.drain() {
            got[usize::from(ch == RU)].push(index_of(ch, &m));
        }
        if got.iter().all(|g| g.len() == MESSAGES as usize) {
            break;
        }
    }
    let all: Vec<u32> = (0..MESSAGES).collect();
    assert!(got[0] == all, "ordered lost order across the wrap");
    got[1].sort_unstable();
    assert!(got[1] == all, "unordered lost messages across the wrap");
}

#[test]
fn memory_stays_bounded_when_the_peer_stops_acking() {
    let config = ChannelsConfig::default();
    let max_ro = config.channels[0].max_memory_bytes;
    let max_un = config.channels[2].max_memory_bytes;
    let model = LinkModel {
        loss: 1.0,
        ..LinkModel::default()
    };
    let mut link = Link::new(config, model, 3);
    let mut backpressure = [0u32; 2];
    let mut i = 0;
    for _ in 0..1000 {
        // The application keeps trying; every packet is lost.
        // Ten reliable messages per step, and one unreliable one (which the link could carry).
        for (k, ch, per_step) in [(0, RO, 10), (1, UN, 1)] {
            for _ in 0..per_step {
                match link.sender.send(link.now, ch, &message(ch, i, 1000)) {
                    Ok(()) => i += 1,
                    Err(SendError::Backpressure) => backpressure[k] += 1,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
        link.step(STEP);
        let ro = link.sender.stats(RO).unwrap();
        assert!(ro.memory_bytes <= max_ro, "{} > {max_ro}", ro.memory_bytes);
        let un = link.sender.stats(UN).unwrap();
        assert!(un.memory_bytes <= max_un);
    }
    assert!(
        backpressure[0] > 0,
        "reliable sender never saw backpressure"
    );
    let ro = link.sender.stats(RO).unwrap();
    assert_eq!(ro.backpressure, u64::from(backpressure[0]));
    assert!(
        ro.memory_bytes > max_ro / 2,
        "queue should be near its budget"
    );
    assert!(ro.resent > 0);
    assert_eq!(ro.oldest_unacked_age, Some(STEP * 1000));
    // Unreliable messages leave the queue when written, lost or not.
    assert_eq!(backpressure[1], 0);
    assert!(link.drain().is_empty());
}

#[test]
fn unreliable_queue_is_bounded_when_nothing_is_written() {
    let mut ch = Channels::new(ChannelsConfig::default());
    let now = Instant::now();
    let mut accepted = 0;
    while ch.send(now, UN, &[0; 1000]).is_ok() {
        accepted += 1;
        assert!(accepted < 1000, "no backpressure");
    }
    let stats = ch.stats(UN).unwrap();
    assert!(stats.memory_bytes <= DEFAULT_UNRELIABLE_MEMORY_BYTES);
    // Each 1000-byte message is 4 parts.
    assert_eq!(stats.queue_len, accepted * 4);
    assert!(matches!(
        ch.send(now, UN, &[0; 1000]),
        Err(SendError::Backpressure)
    ));
}

#[test]
fn a_flood_on_one_channel_does_not_starve_another() {
    let now = Instant::now();
    let mut tx = Channels::new(ChannelsConfig::default());
    let mut rx = Channels::new(ChannelsConfig::default());
    let rtt = Duration::from_millis(50);
    // Reliable flood of fragmented messages and an unreliable flood of small ones.
    while tx.send(now, RO, &[7; 5000]).is_ok() {}
    while tx.send(now, UN, &[9; 100]).is_ok() {}
    for packet in 0..200u16 {
        let t = now + STEP * u32::from(packet);
        tx.send(t, US, &message(US, u32::from(packet), 40)).unwrap();
        let mut buf = Vec::new();
        let n = tx.write_packet(
            t,
            Sequence(packet),
            rtt,
            &mut buf,
            DEFAULT_MTU_PAYLOAD_BYTES,
        );
        assert!(n <= DEFAULT_MTU_PAYLOAD_BYTES);
        assert!(
            n >= DEFAULT_MTU_PAYLOAD_BYTES - part_bytes(),
            "packet not filled"
        );
        tx.on_delivery(t, Sequence(packet), true);
        rx.read_packet(t, &buf).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| rx.receive()).collect();
        let sequenced: Vec<_> = got.iter().filter(|(c, _)| *c == US).collect();
        assert_eq!(
            sequenced.len(),
            1,
            "packet {packet} carried no sequenced message"
        );
        assert_eq!(index_of(US, &sequenced[0].1), u32::from(packet));
    }
    // Both floods still moved.
    assert!(rx.stats(RO).unwrap().received > 10);
    assert!(rx.stats(UN).unwrap().received > 100);
}

#[test]
fn ordered_holds_back_and_unordered_does_not() {
    let now = Instant::now();
    let mut rx = Channels::new(ChannelsConfig::default());
    rx.read_packet(
        now,
        &section(&[record(RO, 1, None, b"second"), record(RU, 1, None, b"b")]),
    )
    .unwrap();
    assert_eq!(rx.receive(), Some((RU, b"b".to_vec())));
    assert_eq!(rx.receive(), None);
    rx.read_packet(
        now,
        &section(&[record(RO, 0, None, b"first"), record(RU, 0, None, b"a")]),
    )
    .unwrap();
    assert_eq!(rx.receive(), Some((RO, b"first".to_vec())));
    assert_eq!(rx.receive(), Some((RO, b"second".to_vec())));
    assert_eq!(rx.receive(), Some((RU, b"a".to_vec())));
    // Resends of delivered ids are dropped silently.
    rx.read_packet(
        now,
        &section(&[record(RO, 0, None, b"first"), record(RU, 1, None, b"b")]),
    )
    .unwrap();
    assert_eq!(rx.receive(), None);
    assert_eq!(rx.invalid_count(), 0);
}

#[test]
fn sequenced_drops_older_and_unreliable_drops_duplicates() {
    let now = Instant::now();
    let mut rx = Channels::new(ChannelsConfig::default());
    let s = section(&[record(US, 5, None, b"new"), record(UN, 9, None, b"x")]);
    rx.read_packet(now, &s).unwrap();
    rx.read_packet(now, &s).unwrap();
    rx.read_packet(now, &section(&[record(US, 4, None, b"old")]))
        .unwrap();
    let got: Vec<_> = std::iter::from_fn(|| rx.receive()).collect();
    assert_eq!(got, vec![(US, b"new".to_vec()), (UN, b"x".to_vec())]);
    // Ids keep counting up across the u16 wrap: 30000, 60000, then 1 (= 65537).
    for (id, m) in [(30000, b"a"), (60000, b"b"), (1, b"c")] {
        rx.read_packet(now, &section(&[record(US, id, None, m)]))
            .unwrap();
        assert_eq!(rx.receive(), Some((US, m.to_vec())));
    }
    rx.read_packet(now, &section(&[record(US, 60001, None, b"d")]))
        .unwrap();
    assert_eq!(rx.receive(), None);
}

#[test]
fn unreliable_reassembly_times_out() {
    let now = Instant::now();
    let part = part_bytes();
    let mut rx = Channels::new(ChannelsConfig::default());
    let first = vec![1u8; part];
    rx.read_packet(now, &section(&[record(UN, 3, Some((0, 2)), &first)]))
        .unwrap();
    assert_eq!(
        rx.poll_timeout(Duration::ZERO),
        Some(now + DEFAULT_REASSEMBLY_TIMEOUT)
    );
    let later = now + DEFAULT_REASSEMBLY_TIMEOUT;
    rx.handle_timeout(later);
    assert_eq!(rx.stats(UN).unwrap().reassemblies_dropped, 1);
    assert_eq!(rx.poll_timeout(Duration::ZERO), None);
    // The missing half alone completes nothing.
    rx.read_packet(later, &section(&[record(UN, 3, Some((1, 2)), b"z")]))
        .unwrap();
    assert_eq!(rx.receive(), None);
    // Both halves in time do.
    rx.read_packet(later, &section(&[record(UN, 3, Some((0, 2)), &first)]))
        .unwrap();
    let mut whole = first.clone();
    whole.push(b'z');
    assert_eq!(rx.receive(), Some((UN, whole)));
}

/// Feed `bytes` and check it is rejected, counted, and delivers nothing.
fn assert_rejected(rx: &mut Channels, bytes: &[u8]) -> ChannelError {
    let before = rx.invalid_count();
    let err = rx.read_packet(Instant::now(), bytes).unwrap_err();
    assert_eq!(rx.invalid_count(), before + 1);
    assert_eq!(rx.receive(), None, "delivered something from {err}");
    err
}

#[test]
fn bad_sections_are_rejected_and_counted() {
    let part = part_bytes();
    let full = vec![0u8; part];
    let mut rx = Channels::new(ChannelsConfig::default());

    // Every strict prefix of a valid section is truncated.
    let valid = section(&[
        record(RO, 0, None, b"hello"),
        record(UN, 0, Some((0, 2)), &full),
        record(US, 0, None, b""),
    ]);
    for cut in 1..valid.len() {
        assert_eq!(
            assert_rejected(&mut rx, &valid[..cut]),
            ChannelError::Truncated
        );
    }
    // Fragment index >= count, absurd counts, wrong lengths, huge sizes.
    let cases: Vec<(Vec<u8>, ChannelError)> = vec![
        (
            section(&[record(UN, 1, Some((2, 2)), b"x")]),
            ChannelError::FragmentIndex { index: 2, count: 2 },
        ),
        (
            section(&[record(UN, 1, Some((0, 0)), &full)]),
            ChannelError::FragmentCount { count: 0, max: 15 },
        ),
        (
            section(&[record(UN, 1, Some((0, 1)), &full)]),
            ChannelError::FragmentCount { count: 1, max: 15 },
        ),
        (
            section(&[record(RO, 1, Some((0, u16::MAX)), &full)]),
            ChannelError::FragmentCount {
                count: u16::MAX,
                max: 908,
            },
        ),
        (
            section(&[record(UN, 1, Some((0, 3)), b"short")]),
            ChannelError::FragmentLength,
        ),
        (
            section(&[record(RO, 1, None, &vec![0; part + 1])]),
            ChannelError::PartTooLarge {
                len: part + 1,
                max: part,
            },
        ),
        (
            section(&[record(9, 0, None, b"x")]),
            ChannelError::UnknownChannel(9),
        ),
        (
            section(&[
                record(UN, 1, Some((0, 2)), &full),
                record(UN, 1, Some((0, 2)), &full),
            ]),
            ChannelError::DuplicateRecord,
        ),
        (vec![0], ChannelError::EmptySection),
        (vec![1, 0, 0x02, 0, 0, 0, 0], ChannelError::ReservedFlags(2)),
        (vec![1, 0, 0, 0, 0, 0, 0, 0], ChannelError::TrailingBytes(1)),
        // Claims 65535 payload bytes and carries 3.
        (
            vec![1, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3],
            ChannelError::Truncated,
        ),
        // Claims the largest fragment count (an allocation of 65535 slots if trusted).
        (
            vec![1, 0, 1, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF, 0, 0],
            ChannelError::FragmentCount {
                count: u16::MAX,
                max: 908,
            },
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(assert_rejected(&mut rx, &bytes), expected);
    }
    let invalid_before = rx.invalid_count();

    // Overlapping data: the same fragment with different bytes, a message whose id is reused.
    let a = section(&[record(UN, 7, Some((0, 2)), &full)]);
    rx.read_packet(Instant::now(), &a).unwrap();
    let other = vec![1u8; part];
    let b = section(&[record(UN, 7, Some((0, 2)), &other)]);
    assert_eq!(
        assert_rejected(&mut rx, &b),
        ChannelError::ConflictingFragment
    );
    let c = section(&[record(UN, 7, Some((1, 3)), &full)]);
    assert_eq!(
        assert_rejected(&mut rx, &c),
        ChannelError::ConflictingFragment
    );
    rx.read_packet(Instant::now(), &section(&[record(RU, 2, None, b"one")]))
        .unwrap();
    assert_eq!(rx.receive(), Some((RU, b"one".to_vec())));
    let d = section(&[record(RU, 2, None, b"two")]);
    // Delivered already; only the id is remembered, so it is dropped as a duplicate.
    rx.read_packet(Instant::now(), &d).unwrap();
    assert_eq!(rx.receive(), None);
    rx.read_packet(Instant::now(), &section(&[record(RO, 5, None, b"five")]))
        .unwrap();
    let e = section(&[record(RO, 5, None, b"FIVE")]);
    assert_eq!(
        assert_rejected(&mut rx, &e),
        ChannelError::ConflictingFragment
    );
    // Reliable ids beyond the window, and an unordered fragment whose message cannot fit it.
    let f = section(&[record(RO, 5000, None, b"far")]);
    assert_eq!(assert_rejected(&mut rx, &f), ChannelError::OutsideWindow);
    let g = section(&[record(RU, 1020, Some((0, 10)), &full)]);
    assert_eq!(assert_rejected(&mut rx, &g), ChannelError::OutsideWindow);
    assert_eq!(rx.invalid_count(), invalid_before + 5);
    assert!(rx.stats(UN).unwrap().dropped_invalid >= 2);
}

#[test]
fn broken_fragment_numbering_on_ordered_channel_delivers_nothing() {
    let part = part_bytes();
    let full = vec![3u8; part];
    let mut rx = Channels::new(ChannelsConfig::default());
    // Id 0 starts a 3-part message, id 1 claims to start another one.
    rx.read_packet(
        Instant::now(),
        &section(&[record(RO, 0, Some((0, 3)), &full)]),
    )
    .unwrap();
    let s = section(&[
        record(RO, 1, Some((0, 2)), &full),
        record(RO, 2, Some((1, 2)), b"e"),
    ]);
    // The second message is well-formed and completes; the first is abandoned and counted.
    assert_eq!(
        assert_rejected_keep(&mut rx, &s),
        ChannelError::ConflictingFragment
    );
    let mut second = full.clone();
    second.push(b'e');
    assert_eq!(rx.receive(), Some((RO, second)));
    assert_eq!(rx.receive(), None);
}

#[test]
fn fragment_bombs_hold_bounded_memory() {
    let part = part_bytes();
    let full = vec![5u8; part];
    let config = ChannelsConfig::default();
    let window = config.channels[usize::from(RU)].send_window_messages;
    let unreliable_max = config.max_reassemblies * DEFAULT_MAX_UNRELIABLE_MESSAGE_BYTES;
    let reliable_max = 2 * window * part;
    let mut rx = Channels::new(config);
    let now = Instant::now();
    // First fragments of never-completed messages, on every id, on all four channels.
    for id in 0..=u16::MAX {
        let t = now + Duration::from_micros(u64::from(id));
        for ch in [RO, US, UN, RU] {
            let count = if ch == UN || ch == US { 15 } else { 900 };
            let s = section(&[record(ch, id, Some((0, count)), &full)]);
            let _ = rx.read_packet(t, &s);
        }
        assert!(rx.receive_held_bytes() <= unreliable_max * 2 + reliable_max);
    }
    assert_eq!(rx.receive(), None);
    let held = rx.receive_held_bytes();
    assert!(held <= unreliable_max * 2 + reliable_max, "{held}");
    rx.handle_timeout(now + Duration::from_secs(5));
    // Only the reliable windows still hold parts; they wait for the rest of their messages.
    assert!(rx.receive_held_bytes() <= reliable_max);
    assert!(rx.stats(UN).unwrap().reassemblies_dropped > 60_000);
}

fn assert_rejected_keep(rx: &mut Channels, bytes: &[u8]) -> ChannelError {
    let before = rx.invalid_count();
    let err = rx.read_packet(Instant::now(), bytes).unwrap_err();
    assert_eq!(rx.invalid_count(), before + 1);
    err
}

#[test]
fn send_refuses_unknown_channels_and_oversized_messages() {
    let now = Instant::now();
    let mut tx = Channels::new(ChannelsConfig::default());
    assert!(matches!(
        tx.send(now, 4, b"x"),
        Err(SendError::UnknownChannel(4))
    ));
    let big = vec![0; DEFAULT_MAX_UNRELIABLE_MESSAGE_BYTES + 1];
    assert!(matches!(
        tx.send(now, UN, &big),
        Err(SendError::TooLarge { .. })
    ));
    assert!(tx.send(now, RO, &big).is_ok());
    assert!(tx.stats(4).is_none());
    assert_eq!(tx.stats(RO).unwrap().sent, 1);
}

#[test]
fn serde_messages_round_trip() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Command {
        Spawn { id: u32, x: f32 },
        Chat(String),
    }
    let now = Instant::now();
    let mut tx = Channels::new(ChannelsConfig::default());
    let mut rx = Channels::new(ChannelsConfig::default());
    tx.send_serde(now, RO, &Command::Spawn { id: 3, x: 1.5 })
        .unwrap();
    tx.send_serde(now, RO, &Command::Chat("gg".into())).unwrap();
    let mut buf = Vec::new();
    tx.write_packet(now, Sequence(0), Duration::ZERO, &mut buf, 1200);
    rx.read_packet(now, &buf).unwrap();
    let a = rx.receive_serde::<Command>().unwrap().unwrap();
    assert_eq!(a, (RO, Command::Spawn { id: 3, x: 1.5 }));
    let b = rx.receive_serde::<Command>().unwrap().unwrap();
    assert_eq!(b, (RO, Command::Chat("gg".into())));
    assert!(rx.receive_serde::<Command>().is_none());
}

#[test]
fn nothing_to_send_writes_nothing() {
    let now = Instant::now();
    let mut tx = Channels::new(ChannelsConfig::default());
    let mut buf = vec![1, 2, 3];
    assert_eq!(
        tx.write_packet(now, Sequence(0), Duration::ZERO, &mut buf, 1200),
        0
    );
    assert_eq!(buf, vec![1, 2, 3]);
    assert!(!tx.wants_to_send(now, Duration::ZERO));
    assert_eq!(tx.poll_timeout(Duration::ZERO), None);
    // A budget too small for any record also writes nothing, and the message stays queued.
    tx.send(now, RO, b"hello").unwrap();
    assert_eq!(
        tx.write_packet(now, Sequence(1), Duration::ZERO, &mut buf, 8),
        0
    );
    assert_eq!(buf, vec![1, 2, 3]);
    assert_eq!(tx.poll_timeout(Duration::ZERO), Some(now));
    assert!(tx.write_packet(now, Sequence(2), Duration::ZERO, &mut buf, 12) > 0);
    let mut rx = Channels::new(ChannelsConfig::default());
    rx.read_packet(now, &buf[3..]).unwrap();
    assert_eq!(rx.receive(), Some((RO, b"hello".to_vec())));
}

#[test]
fn resend_interval_follows_rtt_with_a_floor() {
    let now = Instant::now();
    let mut tx = Channels::new(ChannelsConfig::default());
    tx.send(now, RO, b"x").unwrap();
    let mut buf = Vec::new();
    let fast = Duration::from_millis(20);
    tx.write_packet(now, Sequence(0), fast, &mut buf, 1200);
    assert_eq!(
        tx.poll_timeout(fast),
        Some(now + DEFAULT_MIN_RESEND_INTERVAL)
    );
    let slow = Duration::from_millis(300);
    assert_eq!(tx.poll_timeout(slow), Some(now + slow));
    assert!(!tx.wants_to_send(now + Duration::from_millis(299), slow));
    assert!(tx.wants_to_send(now + slow, slow));
    // A loss report makes it due at once, whatever the RTT.
    let t = now + Duration::from_millis(50);
    tx.on_delivery(t, Sequence(0), false);
    assert!(tx.wants_to_send(t, slow));
    tx.write_packet(t, Sequence(1), slow, &mut buf, 1200);
    assert_eq!(tx.stats(RO).unwrap().resent, 1);
    tx.on_delivery(t, Sequence(1), true);
    assert_eq!(tx.stats(RO).unwrap().queue_len, 0);
    assert!(!tx.wants_to_send(t + slow, slow));
}

#[test]
fn invalid_configurations_are_refused() {
    assert!(Channels::try_new(ChannelsConfig::default()).is_ok());
    let mut c = ChannelsConfig::default();
    c.channels[0].send_window_messages = 100;
    assert_eq!(
        Channels::try_new(c).unwrap_err(),
        ConfigError::TooManyFragments(0)
    );
    let mut c = ChannelsConfig::default();
    c.channels[2].max_message_bytes = 17 * 1200;
    assert_eq!(
        Channels::try_new(c).unwrap_err(),
        ConfigError::TooManyFragments(2)
    );
    let mut c = ChannelsConfig::default();
    c.channels[1].max_memory_bytes = 100;
    assert_eq!(Channels::try_new(c).unwrap_err(), ConfigError::Memory(1));
    let mut c = ChannelsConfig::default();
    c.channels.clear();
    assert_eq!(
        Channels::try_new(c).unwrap_err(),
        ConfigError::ChannelCount(0)
    );
    let mut c = ChannelsConfig::default();
    c.channels[3].packet_budget_bytes = 5;
    assert_eq!(
        Channels::try_new(c).unwrap_err(),
        ConfigError::PacketBudget(3)
    );
}

/// Plausible-looking but arbitrary records: channel, flags, id, index, count, len, body.
fn arbitrary_section() -> impl Strategy<Value = Vec<u8>> {
    let rec = (
        0u8..6,
        0u8..3,
        any::<u16>(),
        0u16..20,
        0u16..20,
        0usize..400,
        any::<u8>(),
    );
    (
        1usize..8,
        prop::collection::vec(rec, 1..8),
        any::<bool>(),
        0usize..8,
    )
        .prop_map(|(count, recs, truncate, cut)| {
            let mut out = vec![count as u8];
            for (channel, flags, id, index, total, len, fill) in recs {
                out.extend_from_slice(&[channel, flags]);
                out.extend_from_slice(&(id % 64).to_le_bytes());
                if flags & 1 != 0 {
                    out.extend_from_slice(&index.to_le_bytes());
                    out.extend_from_slice(&total.to_le_bytes());
                }
                out.extend_from_slice(&(len as u16).to_le_bytes());
                out.extend(std::iter::repeat_n(fill, len));
            }
            if truncate {
                out.truncate(out.len().saturating_sub(cut));
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes never panic, and every rejection is counted.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut rx = Channels::new(ChannelsConfig::default());
        let result = rx.read_packet(Instant::now(), &bytes);
        prop_assert_eq!(rx.invalid_count(), u64::from(result.is_err()));
        let delivered: usize = std::iter::from_fn(|| rx.receive()).map(|(_, m)| m.len()).sum();
        prop_assert!(delivered <= bytes.len());
    }

    /// Structured garbage, several sections in a row: no panic, receiver memory bounded.
    #[test]
    fn structured_garbage_never_panics(sections in prop::collection::vec(arbitrary_section(), 1..6)) {
        let mut rx = Channels::new(ChannelsConfig::default());
        let mut errors = 0;
        let mut input = 0;
        for s in &sections {
            input += s.len();
            if rx.read_packet(Instant::now(), s).is_err() {
                errors += 1;
            }
        }
        prop_assert_eq!(rx.invalid_count(), errors);
        let delivered: usize = std::iter::from_fn(|| rx.receive()).map(|(_, m)| m.len()).sum();
        prop_assert!(delivered <= input);
    }
}

#[test]
fn unreliable_fragments_reassemble_across_the_id_wrap() {
    // Two-fragment messages with ids 65534, 65535, 0 and 1 on both unreliable kinds, their
    // fragments interleaved and late, as loss and reordering would leave them.
    let part = part_bytes();
    let body = |id: u16| -> Vec<u8> {
        (0..part + 10)
            .map(|i| (i as u16).wrapping_mul(7) as u8 ^ id as u8)
            .collect()
    };
    let now = Instant::now();
    let mut rx = Channels::new(ChannelsConfig::default());
    let feed = |rx: &mut Channels, channel: u8, id: u16, index: u16| {
        let b = body(id);
        let piece = if index == 0 { &b[..part] } else { &b[part..] };
        let s = section(&[record(channel, id, Some((index, 2)), piece)]);
        assert_eq!(rx.read_packet(now, &s), Ok(()));
        std::iter::from_fn(|| rx.receive())
            .map(|(ch, m)| {
                assert_eq!(ch, channel);
                [65534u16, 65535, 0, 1]
                    .into_iter()
                    .find(|&id| body(id) == m)
                    .expect("a message intact")
            })
            .collect::<Vec<_>>()
    };
    let order = [
        (65535, 0),
        (0, 0),
        (65534, 0),
        (0, 1),
        (65535, 1),
        (1, 0),
        (65534, 1),
        (1, 1),
    ];
    // Unreliable: every message, as each completes, older ids after newer ones included.
    let got: Vec<u16> = order
        .iter()
        .flat_map(|&(id, index)| feed(&mut rx, UN, id, index))
        .collect();
    assert_eq!(got, vec![0, 65535, 65534, 1]);
    // Copies of delivered messages on either side of the wrap are duplicates.
    for (id, index) in [(65535, 0), (65535, 1), (0, 0), (0, 1)] {
        assert_eq!(feed(&mut rx, UN, id, index), Vec::<u16>::new());
    }
    // Sequenced: 0 is newer than 65535, so once 0 is delivered the older ids never are.
    let got: Vec<u16> = order
        .iter()
        .flat_map(|&(id, index)| feed(&mut rx, US, id, index))
        .collect();
    assert_eq!(got, vec![0, 1]);
    // A late complete copy of 65535 is still older than 1.
    for index in [0, 1] {
        assert_eq!(feed(&mut rx, US, 65535, index), Vec::<u16>::new());
    }
    assert_eq!(rx.invalid_count(), 0);
}

/// A packet written for every snapshot, due or not, gets the same channel section whether
/// the sender asks its channels or knows from its remembered timeout that none has anything
/// due: the same bytes in every packet over a lossy link, the same messages delivered.
#[test]
fn an_idle_sender_writes_what_asking_every_channel_would() {
    for seed in 0..6u64 {
        let model = LinkModel {
            loss: 0.2,
            reorder: 0.1,
            ..LinkModel::default()
        };
        let run = |remember: bool| {
            let mut link = Link::new(ChannelsConfig::default(), model, seed);
            link.eager = true;
            link.remember = remember;
            link.packets_per_step = 1;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut got = Vec::new();
            for step in 0..1500u32 {
                // Messages now and then, on every kind, with quiet spells between.
                if step % 200 < 60 && rng.random_bool(0.2) {
                    let ch = [RO, US, UN, RU][rng.random_range(0..4)];
                    let len = rng.random_range(5..=1500);
                    link.sender
                        .send(link.now, ch, &message(ch, step, len))
                        .unwrap();
                }
                link.step(STEP);
                got.extend(link.drain());
            }
            (link.writes, got)
        };
        let (asked, asked_got) = run(false);
        let (remembered, remembered_got) = run(true);
        assert_eq!(asked.len(), remembered.len());
        for (i, (a, b)) in asked.iter().zip(&remembered).enumerate() {
            assert_eq!(a, b, "seed {seed}: packet {i} differs");
        }
        assert_eq!(asked_got, remembered_got, "seed {seed}");
        let empty = asked.iter().filter(|w| w.is_empty()).count();
        assert!(
            empty > asked.len() / 4 && empty < asked.len(),
            "seed {seed}: {empty} of {} writes empty",
            asked.len()
        );
    }
}
