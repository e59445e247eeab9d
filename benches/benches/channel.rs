//! Message channels: packing many small messages into packets, and reading them back.
//!
//! Run: `cargo bench -p benches --bench channel`. Each iteration queues a batch of small
//! messages (16 or 64 bytes, 64 or 512 of them) on one channel, writes packets of the
//! default 1200-byte budget until nothing is due, acks every packet, and feeds the packets
//! to a receiving side that hands the messages out again.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use snapsync::Sequence;
use snapsync::channel::{Channels, ChannelsConfig};

/// Channel 0 of the default config is reliable-ordered, 2 is unreliable.
const CHANNELS: [(u8, &str); 2] = [(0, "reliable_ordered"), (2, "unreliable")];
const MESSAGE_BYTES: [usize; 2] = [16, 64];
const MESSAGES: [usize; 2] = [64, 512];
const PACKET_BUDGET_BYTES: usize = 1200;
const RTT: Duration = Duration::from_millis(50);

/// Send-queue memory per channel: room for the largest batch (the unreliable default is
/// sized for a few messages per tick, not 512 at once).
const QUEUE_MEMORY_BYTES: usize = 1 << 20;

fn config() -> ChannelsConfig {
    let mut c = ChannelsConfig::default();
    for ch in &mut c.channels {
        ch.max_memory_bytes = QUEUE_MEMORY_BYTES;
    }
    c
}

struct Pair {
    sender: Channels,
    receiver: Channels,
    seq: Sequence,
    now: Instant,
    packet: Vec<u8>,
    packets: Vec<Vec<u8>>,
}

impl Pair {
    fn new() -> Self {
        Self {
            sender: Channels::new(config()),
            receiver: Channels::new(config()),
            seq: Sequence(0),
            now: Instant::now(),
            packet: Vec::with_capacity(PACKET_BUDGET_BYTES),
            packets: Vec::new(),
        }
    }

    /// Queue `messages` and write them into packets; returns the packet count.
    fn pack(&mut self, channel: u8, message: &[u8], messages: usize) -> usize {
        self.now += Duration::from_millis(1);
        for _ in 0..messages {
            // The queue is drained every iteration, so it never hits its memory budget.
            self.sender
                .send(self.now, channel, message)
                .expect("queue has room");
        }
        self.packets.clear();
        loop {
            self.packet.clear();
            let n = self.sender.write_packet(
                self.now,
                self.seq,
                RTT,
                &mut self.packet,
                PACKET_BUDGET_BYTES,
            );
            // Every packet is acked, so reliable parts leave the resend queue.
            self.sender.on_delivery(self.now, self.seq, true);
            self.seq = self.seq.next();
            if n == 0 {
                break;
            }
            self.packets.push(self.packet.clone());
        }
        self.packets.len()
    }

    /// Read the packed packets on the other side; returns the messages handed out.
    fn unpack(&mut self) -> usize {
        for p in &self.packets {
            // Written by `Channels` with the same config, so it parses.
            self.receiver
                .read_packet(self.now, p)
                .expect("packets from the same config parse");
        }
        let mut n = 0;
        while let Some(m) = self.receiver.receive() {
            black_box(m);
            n += 1;
        }
        n
    }
}

fn channels(c: &mut Criterion) {
    let mut group = c.benchmark_group("channels");
    for (channel, kind) in CHANNELS {
        for size in MESSAGE_BYTES {
            for count in MESSAGES {
                let message = vec![0x5Au8; size];
                let id = format!("{kind}/{count}x{size}B");
                group.throughput(Throughput::Elements(count as u64));
                let mut pair = Pair::new();
                group.bench_function(BenchmarkId::new("pack", &id), |b| {
                    b.iter(|| black_box(pair.pack(channel, &message, count)));
                });
                let mut pair = Pair::new();
                assert!(pair.pack(channel, &message, count) > 0);
                assert_eq!(pair.unpack(), count, "every message comes back");
                group.bench_function(BenchmarkId::new("pack_and_read", &id), |b| {
                    b.iter(|| {
                        pair.pack(channel, &message, count);
                        black_box(pair.unpack())
                    });
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = channels
}
criterion_main!(benches);
