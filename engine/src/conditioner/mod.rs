//! Link conditioner (placeholder with the final interface until the real one lands).
#![allow(missing_docs)] // placeholder, replaced wholesale

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct ConditionerConfig {
    pub loss_pct: f64,
    pub latency: Duration,
    pub enabled: bool,
}

impl ConditionerConfig {
    pub fn off() -> Self {
        Self {
            loss_pct: 0.0,
            latency: Duration::ZERO,
            enabled: false,
        }
    }
}

#[derive(Debug)]
pub struct Conditioner<P> {
    config: ConditionerConfig,
    rng: ChaCha8Rng,
    queue: VecDeque<(Instant, P)>,
}

impl<P: Clone> Conditioner<P> {
    pub fn new(config: ConditionerConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: VecDeque::new(),
        }
    }
    pub fn set_config(&mut self, config: ConditionerConfig) {
        self.config = config;
    }
    pub fn push(&mut self, now: Instant, packet: P, _len: usize) {
        if self.config.enabled && self.rng.random::<f64>() * 100.0 < self.config.loss_pct {
            return;
        }
        let lat = if self.config.enabled {
            self.config.latency
        } else {
            Duration::ZERO
        };
        self.queue.push_back((now + lat, packet));
    }
    pub fn poll(&mut self, now: Instant) -> Option<P> {
        if self.queue.front()?.0 <= now {
            self.queue.pop_front().map(|(_, p)| p)
        } else {
            None
        }
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }
}
