//! Scenario tests: each pushes 100 000+ datagrams through a seeded link on virtual time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::*;

const MS: Duration = Duration::from_millis(1);

/// A datagram as it came out of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Out {
    seq: u64,
    pushed_at: Instant,
    out_at: Instant,
}

/// Pushes `n` datagrams of `len` bytes, one every `spacing`, and collects what comes out.
///
/// Time moves like a driver would move it: before each push, every release due by then
/// is polled at exactly its `poll_timeout`, so `out_at` is the release time itself.
fn drive(
    link: &mut Conditioner<u64>,
    t0: Instant,
    n: u64,
    spacing: Duration,
    len: usize,
) -> Vec<Out> {
    let mut pushed_at = HashMap::new();
    let mut out = Vec::with_capacity(n as usize);
    let drain = |link: &mut Conditioner<u64>,
                 until: Option<Instant>,
                 out: &mut Vec<Out>,
                 pushed_at: &HashMap<u64, Instant>| {
        while let Some(at) = link.poll_timeout() {
            if until.is_some_and(|u| at > u) {
                break;
            }
            let seq = link.poll(at).expect("due at its own timeout");
            out.push(Out {
                seq,
                pushed_at: pushed_at[&seq],
                out_at: at,
            });
        }
    };
    for i in 0..n {
        let now = t0 + spacing * u32::try_from(i).unwrap();
        drain(link, Some(now), &mut out, &pushed_at);
        pushed_at.insert(i, now);
        link.push(now, i, len);
    }
    drain(link, None, &mut out, &pushed_at);
    assert!(link.is_idle());
    out
}

fn on() -> ConditionerConfig {
    ConditionerConfig {
        enabled: true,
        ..ConditionerConfig::off()
    }
}

fn lossy(loss_pct: f64, burst_len: f64) -> ConditionerConfig {
    ConditionerConfig {
        loss_pct,
        burst_len,
        ..on()
    }
}

/// Loss in percent, and mean run length of missing sequence numbers, from what came out.
fn measure_loss(out: &[Out], n: u64) -> (f64, f64) {
    let mut got = vec![false; n as usize];
    for o in out {
        got[o.seq as usize] = true;
    }
    let lost = got.iter().filter(|g| !**g).count();
    let mut bursts = 0usize;
    let mut prev = true;
    for &g in &got {
        if !g && prev {
            bursts += 1;
        }
        prev = g;
    }
    let loss_pct = 100.0 * lost as f64 / n as f64;
    (loss_pct, lost as f64 / bursts.max(1) as f64)
}

/// How far a measured share of `n` datagrams, in percent, may sit from `pct` percent: four
/// standard deviations of the sample.
///
/// Each datagram is a trial with probability `p = pct / 100`. Independent trials give the
/// binomial `sigma = sqrt(p * (1 - p) / n)`. Burst loss is a two-state Markov chain (enter the
/// bad state with `enter`, leave it with `leave`) whose states are correlated with lag `k` as
/// `lambda^k`, `lambda = 1 - enter - leave`; summing those correlations widens the variance
/// of the mean by `(1 + lambda) / (1 - lambda)`. At 1 % in bursts of 3 that is a factor 4.9
/// (2.2 in sigma).
fn tolerance_pct(pct: f64, burst_len: f64, n: u64) -> f64 {
    let p = pct / 100.0;
    let mut variance = p * (1.0 - p) / n as f64;
    if burst_len > 1.0 {
        // The same derivation as `LossModel::configure`.
        let leave = 1.0 / burst_len;
        let enter = p * leave / (1.0 - p);
        let lambda = 1.0 - enter - leave;
        variance *= (1.0 + lambda) / (1.0 - lambda);
    }
    4.0 * 100.0 * variance.sqrt()
}

#[test]
fn uniform_loss_matches_configured_rate() {
    const N: u64 = 200_000;
    for (i, target) in [1.0, 5.0, 20.0].into_iter().enumerate() {
        let mut link = Conditioner::new(lossy(target, 0.0), 11 + i as u64).unwrap();
        let out = drive(&mut link, Instant::now(), N, MS, 100);
        let (measured, _) = measure_loss(&out, N);
        let tolerance = tolerance_pct(target, 0.0, N);
        assert!(
            (measured - target).abs() <= tolerance,
            "target {target} % ± {tolerance}, measured {measured} %"
        );
        let stats = link.stats();
        assert_eq!(stats.dropped_loss, N - out.len() as u64);
        assert_eq!(stats.dropped, stats.dropped_loss);
        assert_eq!(stats.passed, out.len() as u64);
    }
}

#[test]
fn burst_loss_matches_configured_rate_and_burst_length() {
    const N: u64 = 300_000;
    for (i, (target, burst)) in [(1.0, 3.0), (5.0, 3.0), (5.0, 5.0), (20.0, 3.0), (20.0, 5.0)]
        .into_iter()
        .enumerate()
    {
        let mut link = Conditioner::new(lossy(target, burst), 21 + i as u64).unwrap();
        let out = drive(&mut link, Instant::now(), N, MS, 100);
        let (measured, mean_burst) = measure_loss(&out, N);
        let tolerance = tolerance_pct(target, burst, N);
        assert!(
            (measured - target).abs() <= tolerance,
            "target {target} % ± {tolerance} burst {burst}: measured {measured} %"
        );
        assert!(
            (mean_burst - burst).abs() <= 0.1 * burst,
            "target burst {burst} at {target} %: measured {mean_burst}"
        );
    }
}

#[test]
fn uniform_loss_has_short_bursts() {
    // Independent 20 % loss gives runs of mean 1 / (1 - 0.2) = 1.25, well below a burst of 3:
    // the burst measurement above tells the two models apart.
    const N: u64 = 100_000;
    let mut link = Conditioner::new(lossy(20.0, 1.0), 5).unwrap();
    let (_, mean_burst) = measure_loss(&drive(&mut link, Instant::now(), N, MS, 100), N);
    assert!((mean_burst - 1.25).abs() < 0.05, "{mean_burst}");
}

#[test]
fn jitter_stays_in_bounds_and_never_reorders() {
    const N: u64 = 100_000;
    let latency = 20 * MS;
    let jitter = 10 * MS;
    let config = ConditionerConfig {
        latency,
        jitter,
        ..on()
    };
    let mut link = Conditioner::new(config, 3).unwrap();
    // Jitter is ten times the spacing, so without the in-order rule most would swap.
    let out = drive(&mut link, Instant::now(), N, MS, 100);
    assert_eq!(out.len() as u64, N);
    let mut total = Duration::ZERO;
    let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.seq, i as u64, "order kept");
        let delay = o.out_at - o.pushed_at;
        assert!(delay >= latency && delay <= latency + jitter, "{delay:?}");
        total += delay;
        min = min.min(delay);
        max = max.max(delay);
    }
    // The jitter is really applied: delays spread over the window (the in-order rule keeps
    // the smallest ones rare, as most datagrams wait behind a slower predecessor).
    assert!(min < latency + jitter / 4, "{min:?}");
    assert!(max > latency + jitter - MS / 10, "{max:?}");
    let mean = total / N as u32;
    assert!(
        mean > latency + jitter / 2,
        "in-order rule pushes the mean up: {mean:?}"
    );
    let stats = link.stats();
    assert_eq!(stats.reordered, 0);
    assert_eq!(stats.delayed, N);
}

#[test]
fn reorder_share_matches_configured_rate() {
    const N: u64 = 100_000;
    // With jitter too: a held datagram is held from its in-order slot, so it is the one
    // overtaken and not the earlier datagrams still waiting behind a slow one.
    for jitter in [Duration::ZERO, 10 * MS] {
        let config = ConditionerConfig {
            latency: 20 * MS,
            jitter,
            reorder_pct: 5.0,
            reorder_window: 50 * MS,
            ..on()
        };
        let mut link = Conditioner::new(config, 4).unwrap();
        let out = drive(&mut link, Instant::now(), N, MS, 100);
        assert_eq!(out.len() as u64, N, "reordering loses nothing");
        // Count independently: datagrams that come out after one pushed later.
        let mut newest = None;
        let mut late = 0u64;
        for o in &out {
            match newest {
                Some(n) if o.seq < n => late += 1,
                _ => newest = Some(o.seq),
            }
        }
        let stats = link.stats();
        assert_eq!(stats.reordered, late);
        // 5 % are held; one held for less than the gap to its successor (~1 ms of 50) is
        // not overtaken, so a little under 5 % come out late.
        let share = 100.0 * late as f64 / N as f64;
        assert!((4.5..=5.3).contains(&share), "jitter {jitter:?}: {share} %");
    }
}

#[test]
fn duplicate_rate_matches_configured_rate() {
    const N: u64 = 100_000;
    let config = ConditionerConfig {
        duplicate_pct: 2.0,
        latency: 5 * MS,
        jitter: 5 * MS,
        ..on()
    };
    let mut link = Conditioner::new(config, 6).unwrap();
    let out = drive(&mut link, Instant::now(), N, MS, 100);
    let stats = link.stats();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    for o in &out {
        *seen.entry(o.seq).or_default() += 1;
    }
    let twice = seen.values().filter(|&&c| c == 2).count() as u64;
    assert!(seen.values().all(|&c| c <= 2));
    assert_eq!(seen.len() as u64, N, "nothing lost");
    assert_eq!(twice, stats.duplicated);
    assert_eq!(out.len() as u64, N + stats.duplicated);
    let share = 100.0 * twice as f64 / N as f64;
    let tolerance = tolerance_pct(2.0, 0.0, N);
    assert!(
        (share - 2.0).abs() <= tolerance,
        "{share} %, 2 % ± {tolerance}"
    );
    // The copy has its own delay but stays in order with the rest.
    assert!(out.windows(2).all(|w| w[0].seq <= w[1].seq));
    assert_eq!(stats.reordered, 0);
}

#[test]
fn bandwidth_cap_delivers_the_cap_under_saturation() {
    const N: u64 = 100_000;
    const LEN: usize = 1200;
    let config = ConditionerConfig {
        bandwidth_kbps: Some(1000),
        ..on()
    };
    let mut link = Conditioner::new(config, 8).unwrap();
    let t0 = Instant::now();
    // 1200 bytes every 4.8 ms is 2000 kbit/s: twice the cap.
    let out = drive(&mut link, t0, N, Duration::from_micros(4800), LEN);
    let stats = link.stats();
    let last = out.last().unwrap().out_at;
    let kbps = (out.len() * LEN * 8) as f64 / (last - t0).as_secs_f64() / 1000.0;
    assert!((kbps - 1000.0).abs() <= 50.0, "{kbps} kbps");
    assert!(stats.dropped_overflow > N / 3, "tail drop: {stats:?}");
    assert_eq!(stats.dropped, stats.dropped_overflow);
    // The queue bound holds: nothing waits longer than the queue takes to drain.
    let drain_time = Duration::from_secs_f64((DEFAULT_QUEUE_LIMIT_BYTES * 8) as f64 / 1e6);
    let worst = out.iter().map(|o| o.out_at - o.pushed_at).max().unwrap();
    assert!(worst <= drain_time + 10 * MS, "{worst:?}");
    assert!(out.windows(2).all(|w| w[0].seq < w[1].seq), "FIFO");
}

#[test]
fn bandwidth_cap_passes_everything_below_the_cap() {
    const N: u64 = 100_000;
    let config = ConditionerConfig {
        bandwidth_kbps: Some(1000),
        ..on()
    };
    let mut link = Conditioner::new(config, 8).unwrap();
    // 1200 bytes every 12 ms is 800 kbit/s.
    let out = drive(&mut link, Instant::now(), N, 12 * MS, 1200);
    assert_eq!(out.len() as u64, N);
    assert!(
        out.iter()
            .all(|o| o.out_at - o.pushed_at <= Duration::from_micros(9600))
    );
}

#[test]
fn loss_change_takes_effect_on_the_next_packet() {
    const N: u64 = 100_000;
    let t0 = Instant::now();
    let mut link = Conditioner::new(on(), 9).unwrap();
    for i in 0..N {
        link.push(t0, i, 100);
        assert_eq!(link.poll(t0), Some(i));
    }
    assert_eq!(link.stats().dropped, 0);
    link.set_config(lossy(100.0, 0.0)).unwrap();
    link.push(t0, N, 100);
    assert_eq!(link.stats().dropped, 1, "the very next packet is lost");
    link.set_config(on()).unwrap();
    link.push(t0, N + 1, 100);
    assert_eq!(link.stats().dropped, 1, "and the next one passes again");

    // 0 % -> 50 %: a loss-free link draws no random numbers, so from the switch on the link
    // must lose exactly the datagrams a link configured at 50 % from the start would lose.
    let mut switched = Conditioner::new(on(), 10).unwrap();
    let mut fresh = Conditioner::new(lossy(50.0, 0.0), 10).unwrap();
    for i in 0..N {
        switched.push(t0, i, 100);
        assert_eq!(switched.poll(t0), Some(i));
    }
    switched.set_config(lossy(50.0, 0.0)).unwrap();
    let mut pattern = (Vec::new(), Vec::new());
    for i in 0..N {
        for (link, lost) in [
            (&mut switched, &mut pattern.0),
            (&mut fresh, &mut pattern.1),
        ] {
            let before = link.stats().dropped;
            link.push(t0, i, 100);
            lost.push(link.stats().dropped > before);
            while link.poll(t0).is_some() {}
        }
    }
    assert_eq!(pattern.0, pattern.1);
    let stats = switched.stats();
    let measured = 100.0 * stats.dropped as f64 / N as f64;
    let tolerance = tolerance_pct(50.0, 0.0, N);
    assert!(
        (measured - 50.0).abs() <= tolerance,
        "{measured} %, 50 % ± {tolerance}"
    );
    assert_eq!(stats.pushed, 2 * N);
}

#[test]
fn same_seed_same_output_different_seed_different() {
    const N: u64 = 100_000;
    let t0 = Instant::now();
    let run = |seed| {
        let mut link = Conditioner::new(ConditionerConfig::preset(Preset::Bad), seed).unwrap();
        let out: Vec<_> = drive(&mut link, t0, N, MS, 1200)
            .into_iter()
            .map(|o| (o.seq, o.out_at))
            .collect();
        (out, link.stats())
    };
    let a = run(42);
    assert_eq!(a, run(42));
    let b = run(43);
    assert_ne!(a.0, b.0);
    let s = a.1;
    assert!(s.dropped > 0 && s.duplicated > 0);
    // The preset holds back 2 % of the datagrams that get through.
    let reordered_pct = 100.0 * s.reordered as f64 / (s.pushed - s.dropped) as f64;
    assert!((1.7..=2.2).contains(&reordered_pct), "{reordered_pct} %");
}

#[test]
fn off_passes_everything_at_once_in_order() {
    const N: u64 = 100_000;
    // Settings with the switch off are refused at construction (see `validate`), so "off"
    // is the off config, and an enabled config whose settings are all neutral.
    for config in [ConditionerConfig::off(), on()] {
        let t0 = Instant::now();
        let mut link = Conditioner::new(config, 1).unwrap();
        for i in 0..N {
            let now = t0 + MS * u32::try_from(i).unwrap();
            link.push(now, i, 1200);
            assert_eq!(link.poll_timeout(), Some(now));
            assert_eq!(link.poll(now), Some(i));
            assert_eq!(link.poll(now), None);
        }
        // Many in a row (below the in-flight limit), polled later: still all, in order.
        const BATCH: u64 = 10_000;
        let later = t0 + MS * u32::try_from(N).unwrap();
        for i in 0..BATCH {
            link.push(later, i, 1200);
        }
        let out: Vec<u64> = std::iter::from_fn(|| link.poll(later)).collect();
        assert_eq!(out, (0..BATCH).collect::<Vec<_>>());
        let stats = link.stats();
        assert_eq!(stats.passed, N + BATCH);
        assert_eq!((stats.dropped, stats.delayed, stats.reordered), (0, 0, 0));
        assert!(link.is_idle());
    }
}

#[test]
fn switching_off_keeps_order_with_datagrams_still_delayed() {
    let t0 = Instant::now();
    let config = ConditionerConfig {
        latency: 50 * MS,
        ..on()
    };
    let mut link = Conditioner::new(config, 1).unwrap();
    link.push(t0, 0, 100);
    link.set_config(ConditionerConfig::off()).unwrap();
    link.push(t0 + MS, 1, 100);
    assert_eq!(
        link.poll(t0 + MS),
        None,
        "must not overtake the delayed one"
    );
    assert_eq!(link.poll_timeout(), Some(t0 + 50 * MS));
    assert_eq!(link.poll(t0 + 50 * MS), Some(0));
    assert_eq!(link.poll(t0 + 50 * MS), Some(1));
    assert!(link.is_idle());
}

#[test]
fn in_flight_limit_bounds_memory() {
    let t0 = Instant::now();
    let config = ConditionerConfig {
        latency: Duration::from_secs(1),
        max_in_flight_packets: 100,
        ..on()
    };
    let mut link = Conditioner::new(config, 1).unwrap();
    for i in 0..100_000 {
        link.push(t0, i, 1200);
    }
    let stats = link.stats();
    assert_eq!(stats.in_flight_packets, 100);
    assert_eq!(stats.in_flight_bytes, 100 * 1200);
    assert_eq!(stats.dropped_overflow, 100_000 - 100);
    let out: Vec<u64> = std::iter::from_fn(|| link.poll(t0 + Duration::from_secs(1))).collect();
    assert_eq!(out, (0..100).collect::<Vec<_>>());
}

#[test]
fn counters_balance_under_the_bad_preset() {
    let t0 = Instant::now();
    let mut link = Conditioner::new(ConditionerConfig::preset(Preset::Bad), 2).unwrap();
    for i in 0..100_000u32 {
        let now = t0 + MS * i;
        link.push(now, u64::from(i), 1200);
        while link.poll(now).is_some() {}
        let s = link.stats();
        assert_eq!(
            s.pushed + s.duplicated,
            s.passed + s.dropped + s.in_flight_packets as u64
        );
    }
    let s = link.stats();
    assert!(s.in_flight_packets > 0 && s.in_flight_bytes == s.in_flight_packets * 1200);
}

#[test]
fn invalid_config_is_refused_and_the_old_one_kept() {
    let mut link = Conditioner::<u64>::new(lossy(5.0, 0.0), 1).unwrap();
    assert_eq!(
        link.set_config(lossy(150.0, 0.0)),
        Err(ConfigError::Loss(150.0))
    );
    assert_eq!(link.config().loss_pct, 5.0);
    assert!(Conditioner::<u64>::new(lossy(-1.0, 0.0), 1).is_err());
}

#[test]
fn absurd_sizes_are_dropped_not_panicked_on() {
    let t0 = Instant::now();
    let config = ConditionerConfig {
        bandwidth_kbps: Some(1),
        queue_limit_bytes: usize::MAX,
        latency: MAX_DELAY,
        jitter: MAX_DELAY,
        duplicate_pct: 100.0,
        reorder_pct: 100.0,
        reorder_window: MAX_DELAY,
        ..on()
    };
    let mut link = Conditioner::new(config, 1).unwrap();
    // The first waits ~2.2 hours for the cap; the second (usize::MAX bytes at 1 kbit/s)
    // would overflow the byte count of the queue, so it is dropped.
    link.push(t0, 0, 1_000_000);
    link.push(t0, 1, usize::MAX);
    let stats = link.stats();
    assert_eq!(stats.dropped_overflow, 1);
    assert_eq!(stats.in_flight_packets, 2, "the first and its copy");
    // Without a cap, sizes that overflow the byte count still pass.
    let mut link = Conditioner::new(on(), 1).unwrap();
    link.push(t0, 0, usize::MAX);
    link.push(t0, 1, usize::MAX);
    assert_eq!(link.poll(t0), Some(0));
    assert_eq!(link.poll(t0), Some(1));
}
