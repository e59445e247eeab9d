//! Throughput of the link conditioner: push + poll of 1200-byte datagrams.
//!
//! Run: `cargo bench -p benches --bench conditioner`. Each iteration pushes a batch of
//! datagrams 100 µs apart on virtual time and polls out whatever is due, the way the driver
//! does. Buffers are recycled so the numbers show the conditioner, not the allocator.

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use snapsync::conditioner::{Conditioner, ConditionerConfig, Preset};

/// Datagrams per measured iteration.
const BATCH_PACKETS: u64 = 1000;
/// Size of every datagram, a typical snapshot near the MTU.
const DATAGRAM_BYTES: usize = 1200;
/// Virtual time between two pushes: 10 000 datagrams/s.
const PUSH_INTERVAL: Duration = Duration::from_micros(100);

type Datagram = (SocketAddr, Vec<u8>);

fn bench_case(c: &mut Criterion, name: &str, config: ConditionerConfig) {
    let mut group = c.benchmark_group("conditioner");
    group.throughput(Throughput::Elements(BATCH_PACKETS));
    let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 7777));
    let mut link: Conditioner<Datagram> = Conditioner::new(config, 1).expect("valid config");
    let mut pool: Vec<Vec<u8>> = (0..64).map(|_| vec![0xA5; DATAGRAM_BYTES]).collect();
    let mut now = Instant::now();
    group.bench_function(name, |b| {
        b.iter(|| {
            for _ in 0..BATCH_PACKETS {
                now += PUSH_INTERVAL;
                let buf = pool.pop().unwrap_or_else(|| vec![0xA5; DATAGRAM_BYTES]);
                link.push(now, (from, buf), DATAGRAM_BYTES);
                while let Some((addr, buf)) = link.poll(now) {
                    black_box(addr);
                    pool.push(black_box(buf));
                }
            }
        });
    });
    group.finish();
    let stats = link.stats();
    // Shows the work was real: the loss and bad cases must drop, the off case must not.
    println!("{name}: {stats:?}");
}

/// The same loop through a bare `VecDeque`: the floor the `off` case is measured against.
fn bench_baseline(c: &mut Criterion) {
    let mut group = c.benchmark_group("conditioner");
    group.throughput(Throughput::Elements(BATCH_PACKETS));
    let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 7777));
    let mut queue: VecDeque<Datagram> = VecDeque::new();
    let mut pool: Vec<Vec<u8>> = (0..64).map(|_| vec![0xA5; DATAGRAM_BYTES]).collect();
    group.bench_function("baseline_vecdeque", |b| {
        b.iter(|| {
            for _ in 0..BATCH_PACKETS {
                let buf = pool.pop().unwrap_or_else(|| vec![0xA5; DATAGRAM_BYTES]);
                queue.push_back(black_box((from, buf)));
                while let Some((addr, buf)) = queue.pop_front() {
                    black_box(addr);
                    pool.push(black_box(buf));
                }
            }
        });
    });
    group.finish();
}

fn conditioner(c: &mut Criterion) {
    bench_baseline(c);
    bench_case(c, "off", ConditionerConfig::off());
    bench_case(
        c,
        "loss_5pct",
        ConditionerConfig {
            enabled: true,
            loss_pct: 5.0,
            ..ConditionerConfig::off()
        },
    );
    bench_case(c, "bad_preset", ConditionerConfig::preset(Preset::Bad));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = conditioner
}
criterion_main!(benches);
