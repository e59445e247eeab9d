//! Message channels (placeholder interface until the channel implementation lands).
#![allow(missing_docs, clippy::new_without_default)] // placeholder, replaced wholesale

use std::time::{Duration, Instant};

use crate::Sequence;

#[derive(Debug, Clone, Default)]
pub struct ChannelsConfig {}

#[derive(Debug, Clone, Copy, Default)]
pub struct ChannelStats {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("channels not available")]
    Unavailable,
}

#[derive(Debug)]
pub struct Channels {}

impl Channels {
    pub fn new(_: ChannelsConfig) -> Self {
        Self {}
    }
    pub fn send(&mut self, _: Instant, _: u8, _: &[u8]) -> Result<(), SendError> {
        Err(SendError::Unavailable)
    }
    pub fn wants_to_send(&self, _: Instant, _: Duration) -> bool {
        false
    }
    pub fn write_packet(
        &mut self,
        _: Instant,
        _: Sequence,
        _: Duration,
        _: &mut Vec<u8>,
        _: usize,
    ) -> usize {
        0
    }
    pub fn on_delivery(&mut self, _: Instant, _: Sequence, _: bool) {}
    pub fn read_packet(&mut self, _: Instant, _: &[u8]) -> Result<(), SendError> {
        Ok(())
    }
    pub fn receive(&mut self) -> Option<(u8, Vec<u8>)> {
        None
    }
    pub fn handle_timeout(&mut self, _: Instant) {}
    pub fn poll_timeout(&self, _: Duration) -> Option<Instant> {
        None
    }
    pub fn stats(&self, _: u8) -> Option<ChannelStats> {
        None
    }
}
