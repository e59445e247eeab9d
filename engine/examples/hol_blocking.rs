//! The cost of head-of-line blocking, measured through the whole stack in virtual time:
//! 60 messages/s on a reliable-ordered channel and on an unreliable-sequenced one, over a
//! link with 5% loss and 50 ms one-way latency. Prints delivery-delay percentiles. The client
//! sends a small input every tick, as a game client does (its packets carry the acks).
//!
//! Run: `cargo run --release -p snapsync --example hol_blocking`

use std::time::Duration;

use snapsync::conditioner::ConditionerConfig;
use snapsync::sim::Sim;
use snapsync::{ClientConfig, Event, ServerConfig};

const RELIABLE_ORDERED: u8 = 0;
const UNRELIABLE_SEQUENCED: u8 = 1;

/// A figure from the environment (to try other links), or the default.
fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

fn main() {
    let seconds = 120u64;
    let mut delays: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut sent = 0u64;
    for seed in 1..=5u64 {
        let mut sim = Sim::new(ServerConfig::default(), seed);
        sim.add_client(ClientConfig::default());
        assert!(sim.run_until_cond(Duration::from_secs(2), |s| {
            s.clients[0].client.is_connected()
        }));
        sim.set_all_links(ConditionerConfig {
            loss_pct: env_f64("HOL_LOSS", 5.0),
            latency: Duration::from_secs_f64(env_f64("HOL_LATENCY_MS", 50.0) / 1000.0),
            enabled: true,
            ..ConditionerConfig::off()
        });
        let id = sim.server.clients().next().expect("connected");
        let start = sim.now;
        let period = Duration::from_micros(16_667);
        for n in 0..seconds * 60 {
            let now = sim.now;
            let stamp = (now - start).as_micros() as u64;
            for ch in [RELIABLE_ORDERED, UNRELIABLE_SEQUENCED] {
                let mut msg = stamp.to_le_bytes().to_vec();
                msg.extend_from_slice(&n.to_le_bytes());
                msg.resize(env_f64("HOL_SIZE", 16.0) as usize, 0);
                sim.server
                    .send_message(now, id, ch, &msg)
                    .expect("queue has room");
            }
            sent += 1;
            // The client's input for this frame; acks ride on it.
            if std::env::var("HOL_RELIABLE_INPUT").is_ok() {
                let _ = sim.clients[0].client.send_message(now, 0, &n.to_le_bytes());
            } else {
                let _ = sim.clients[0].client.send_datagram(now, &n.to_le_bytes());
            }
            sim.run_for(period);
            let now_us = (sim.now - start).as_micros() as u64;
            for e in sim.clients[0].events.drain(..) {
                if let Event::Message {
                    channel, payload, ..
                } = e
                {
                    let stamp = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                    // Arrival is known to the resolution of the step, as a client frame would.
                    let ms = (now_us - stamp) as f64 / 1000.0;
                    delays[usize::from(channel == UNRELIABLE_SEQUENCED)].push(ms);
                }
            }
        }
    }
    println!(
        "60 messages/s, {}% loss, {} ms one-way latency, {seconds} s x 5 seeds per channel",
        env_f64("HOL_LOSS", 5.0),
        env_f64("HOL_LATENCY_MS", 50.0)
    );
    println!("| channel | delivered | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut p99 = [0.0; 2];
    for (i, name) in ["ReliableOrdered", "UnreliableSequenced"]
        .iter()
        .enumerate()
    {
        let d = &mut delays[i];
        d.sort_by(f64::total_cmp);
        p99[i] = percentile(d, 0.99);
        println!(
            "| {name} | {:.1}% | {:.1} | {:.1} | {:.1} | {:.1} |",
            d.len() as f64 * 100.0 / sent as f64,
            percentile(d, 0.50),
            percentile(d, 0.95),
            p99[i],
            d.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "p99 delay ratio ReliableOrdered / UnreliableSequenced: {:.1}x",
        p99[0] / p99[1]
    );
}
