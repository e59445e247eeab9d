//! A seeded lossy link between a sending and a receiving [`Channels`], for tests.
//!
//! The test plays the packet layer: it numbers packets, drops, duplicates, delays and reorders
//! them through a seeded model, and gives the sender exactly one delivery notice per packet:
//! acked (after an ack delay) if at least one copy reached the receiver, lost after a timeout
//! otherwise. Time is virtual.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Channels, ChannelsConfig};
use crate::Sequence;

/// How the simulated link treats packets from sender to receiver.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinkModel {
    /// Probability that a packet is lost.
    pub(super) loss: f64,
    /// Probability that a delivered packet arrives twice.
    pub(super) duplicate: f64,
    /// Probability that a copy is held back by an extra `2 * latency`.
    pub(super) reorder: f64,
    pub(super) latency: Duration,
    /// Uniform extra delay in `0..jitter` per copy.
    pub(super) jitter: Duration,
    /// Delay between first arrival and the acked notice.
    pub(super) ack_delay: Duration,
    /// Delay between sending and the lost notice.
    pub(super) loss_timeout: Duration,
}

impl Default for LinkModel {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            latency: Duration::from_millis(30),
            jitter: Duration::ZERO,
            ack_delay: Duration::from_millis(30),
            loss_timeout: Duration::from_millis(200),
        }
    }
}

#[derive(Debug)]
enum Event {
    Arrive(Vec<u8>),
    Notice(Sequence, bool),
}

/// Sender and receiver joined by a [`LinkModel`], stepped in virtual time.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) sender: Channels,
    pub(super) receiver: Channels,
    pub(super) model: LinkModel,
    pub(super) now: Instant,
    /// RTT the test reports to the sender.
    pub(super) rtt: Duration,
    /// Budget of each packet's channel section.
    pub(super) budget: usize,
    /// Packets the sender may write per step.
    pub(super) packets_per_step: usize,
    pub(super) packets_sent: u64,
    /// Write a packet in every slot of a step, due or not, as a game that sends a snapshot
    /// each tick does (each write's section is logged in `writes`).
    pub(super) eager: bool,
    /// Let both sides remember their timeouts between steps (as a server's connection table
    /// does), so that writes may find the sender idle without asking its channels.
    pub(super) remember: bool,
    pub(super) writes: Vec<Vec<u8>>,
    rng: ChaCha8Rng,
    events: BTreeMap<(Instant, u64), Event>,
    next_event: u64,
    next_seq: Sequence,
}

impl Link {
    pub(super) fn new(config: ChannelsConfig, model: LinkModel, seed: u64) -> Self {
        let budget = config.mtu_payload_bytes;
        Self {
            sender: Channels::new(config.clone()),
            receiver: Channels::new(config),
            model,
            now: Instant::now(),
            rtt: model.latency * 2 + model.ack_delay,
            budget,
            packets_per_step: 4,
            packets_sent: 0,
            eager: false,
            remember: true,
            writes: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            events: BTreeMap::new(),
            next_event: 0,
            next_seq: Sequence(0),
        }
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.events.insert((at, self.next_event), event);
        self.next_event += 1;
    }

    /// Send what the sender wants to, advance time by `dt`, and deliver what became due.
    pub(super) fn step(&mut self, dt: Duration) {
        for _ in 0..self.packets_per_step {
            if !self.eager && !self.sender.wants_to_send(self.now, self.rtt) {
                break;
            }
            self.send_one();
            self.check_remembered_timeouts();
        }
        self.now += dt;
        while let Some(entry) = self.events.first_entry() {
            let (at, _) = *entry.key();
            if at > self.now {
                break;
            }
            match entry.remove() {
                Event::Arrive(bytes) => {
                    let result = self.receiver.read_packet(at, &bytes);
                    assert_eq!(result, Ok(()), "receiver rejected a conforming section");
                }
                Event::Notice(seq, acked) => self.sender.on_delivery(at, seq, acked),
            }
            self.check_remembered_timeouts();
        }
        self.sender.handle_timeout(self.now);
        self.receiver.handle_timeout(self.now);
        self.check_remembered_timeouts();
    }

    /// Each side's timeout, remembered since the last check, is what it would work out
    /// afresh after whatever happened in between, whatever the round trip; then each side
    /// remembers it again, as a server's connection table does.
    fn check_remembered_timeouts(&mut self) {
        for side in [&mut self.sender, &mut self.receiver] {
            for rtt in [
                self.rtt,
                Duration::from_millis(5),
                Duration::from_millis(400),
            ] {
                let fresh = side.work_out_timeout(side.resend_interval(rtt));
                assert_eq!(side.poll_timeout(rtt), fresh, "a stale remembered timeout");
            }
            if self.remember {
                side.remember_timeout(self.rtt);
            }
        }
    }

    /// Write and transmit one packet; returns its section size (0: nothing sent).
    pub(super) fn send_one(&mut self) -> usize {
        let mut bytes = Vec::new();
        let seq = self.next_seq;
        let n = self
            .sender
            .write_packet(self.now, seq, self.rtt, &mut bytes, self.budget);
        assert_eq!(n, bytes.len());
        if self.eager {
            self.writes.push(bytes.clone());
        }
        if n == 0 {
            return 0;
        }
        self.next_seq = seq.next();
        self.packets_sent += 1;
        let m = self.model;
        let copies = if self.rng.random_bool(m.loss) {
            0
        } else if self.rng.random_bool(m.duplicate) {
            2
        } else {
            1
        };
        let mut first_arrival: Option<Instant> = None;
        for _ in 0..copies {
            let mut delay = m.latency + m.jitter.mul_f64(self.rng.random::<f64>());
            if self.rng.random_bool(m.reorder) {
                delay += m.latency * 2;
            }
            let at = self.now + delay;
            first_arrival = Some(first_arrival.map_or(at, |t| t.min(at)));
            self.schedule(at, Event::Arrive(bytes.clone()));
        }
        match first_arrival {
            Some(at) => self.schedule(at + m.ack_delay, Event::Notice(seq, true)),
            None => self.schedule(self.now + m.loss_timeout, Event::Notice(seq, false)),
        }
        n
    }

    /// Everything the receiver has delivered so far.
    pub(super) fn drain(&mut self) -> Vec<(u8, Vec<u8>)> {
        std::iter::from_fn(|| self.receiver.receive()).collect()
    }

    /// True when no packet or notice is in flight.
    pub(super) fn idle(&self) -> bool {
        self.events.is_empty()
    }
}
