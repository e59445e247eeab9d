//! The packet layer: connected-header encode / decode, and the `AckTracker` work every
//! packet costs (number it on send, record it on receive, build ack fields, apply acks).
//!
//! Run: `cargo bench -p benches --bench packet`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use snapsync::Sequence;
use snapsync::packet::{AckTracker, ConnectedHeader, MAX_PACKET_BYTES, Packet, RttEstimator};

/// Payload sizes swept: a keep-alive, an input, a typical snapshot part near the MTU.
const PAYLOAD_BYTES: [usize; 3] = [0, 64, 1100];
/// Packets per measured iteration of the ack benches.
const BATCH_PACKETS: u64 = 1000;

fn header(seq: u16) -> ConnectedHeader {
    ConnectedHeader {
        salt: 0x5eed_1234,
        sequence: Sequence(seq),
        ack: Sequence(seq.wrapping_sub(3)),
        ack_bits: 0xffff_fff7,
        ack_delay: 40,
    }
}

fn header_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("packet_header");
    for size in PAYLOAD_BYTES {
        let payload = vec![0xA5u8; size];
        let packet = Packet::Payload {
            header: header(1000),
            payload: &payload,
        };
        let mut out = vec![0u8; MAX_PACKET_BYTES];
        // A payload of at most 1100 bytes fits the packet.
        let len = packet.encode(&mut out).expect("fits MAX_PACKET_BYTES");
        let datagram = out[..len].to_vec();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &packet, |b, p| {
            b.iter(|| black_box(p.encode(black_box(&mut out))));
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &datagram, |b, d| {
            b.iter(|| black_box(Packet::decode(black_box(d)).is_ok()));
        });
    }
    group.finish();
}

fn ack_tracker(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack_tracker");
    group.throughput(Throughput::Elements(BATCH_PACKETS));
    // One side sends, the other receives every packet and acks each with its ack fields:
    // the whole per-packet bookkeeping of a steady connection.
    let mut sender = AckTracker::new();
    let mut receiver = AckTracker::new();
    let mut rtt = RttEstimator::default();
    let mut now = Instant::now();
    group.bench_function("send_receive_ack", |b| {
        b.iter(|| {
            for _ in 0..BATCH_PACKETS {
                now += Duration::from_micros(500);
                let seq = sender.on_send(now, 0);
                black_box(receiver.on_receive(now, seq));
                let (ack, bits, delay) = receiver.ack_fields(now);
                sender.on_ack(now, ack, bits, delay, &mut rtt);
                while let Some(n) = sender.poll_notice() {
                    black_box(n);
                }
            }
        });
    });
    // Acks that arrive only every 8th packet, with gaps: the ack-bits path does the work.
    let mut sender = AckTracker::new();
    let mut receiver = AckTracker::new();
    group.bench_function("sparse_acks_with_loss", |b| {
        b.iter(|| {
            for i in 0..BATCH_PACKETS {
                now += Duration::from_micros(500);
                let seq = sender.on_send(now, 0);
                if i % 10 != 3 {
                    receiver.on_receive(now, seq);
                }
                if i % 8 == 7 {
                    let (ack, bits, delay) = receiver.ack_fields(now);
                    sender.on_ack(now, ack, bits, delay, &mut rtt);
                }
                sender.handle_timeout(now, Duration::from_secs(1), &rtt);
                while let Some(n) = sender.poll_notice() {
                    black_box(n);
                }
            }
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = header_codec, ack_tracker
}
criterion_main!(benches);
