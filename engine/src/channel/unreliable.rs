//! Unreliable channels: a send queue, duplicate filtering and newest-wins ordering.
//!
//! Every message gets a wrapping id; its fragments share it. Nothing is resent, so the send
//! queue only holds what has not gone out yet.

use std::collections::VecDeque;
use std::time::Instant;

use crate::{Sequence, SequenceBuffer};

use super::ChannelError;
use super::fragment::Reassembler;
use super::reliable::PART_OVERHEAD_BYTES;
use super::wire::{Fragment, Record, SectionWriter, record_bytes};

/// Recent message ids an `Unreliable` receiver remembers to drop duplicates; an id older than
/// this many messages behind the newest is dropped because it cannot be told from a duplicate.
pub(crate) const DEDUP_WINDOW_MESSAGES: usize = 1024;

#[derive(Debug)]
struct QueuedPart {
    id: Sequence,
    fragment: Option<Fragment>,
    payload: Vec<u8>,
    queued_at: Instant,
}

/// The sending half of an unreliable channel.
#[derive(Debug, Default)]
pub(crate) struct UnreliableSender {
    queue: VecDeque<QueuedPart>,
    next_id: Sequence,
    memory_bytes: usize,
}

impl UnreliableSender {
    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory_bytes
    }

    pub(crate) fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn oldest_queued(&self) -> Option<Instant> {
        self.queue.front().map(|p| p.queued_at)
    }

    /// Id for the next message.
    pub(crate) fn next_id(&mut self) -> Sequence {
        let id = self.next_id;
        self.next_id = id.next();
        id
    }

    /// Queue one part; the caller has checked the memory budget.
    pub(crate) fn push(
        &mut self,
        now: Instant,
        id: Sequence,
        fragment: Option<Fragment>,
        payload: &[u8],
    ) {
        self.memory_bytes += payload.len() + PART_OVERHEAD_BYTES;
        self.queue.push_back(QueuedPart {
            id,
            fragment,
            payload: payload.to_vec(),
            queued_at: now,
        });
    }

    /// Write queued parts in order within `limit` bytes; returns bytes and parts written.
    pub(crate) fn write(
        &mut self,
        channel: u8,
        writer: &mut SectionWriter<'_>,
        limit: usize,
    ) -> (usize, u64) {
        let mut bytes = 0;
        let mut parts = 0;
        while let Some(front) = self.queue.front() {
            let len = record_bytes(front.fragment.is_some(), front.payload.len());
            if writer.is_full() || bytes + len > limit {
                break;
            }
            writer.push(&Record {
                channel,
                id: front.id,
                fragment: front.fragment,
                payload: &front.payload,
            });
            bytes += len;
            parts += 1;
            self.memory_bytes -= front.payload.len() + PART_OVERHEAD_BYTES;
            self.queue.pop_front();
        }
        (bytes, parts)
    }
}

/// The receiving half of an unreliable channel.
#[derive(Debug)]
pub(crate) struct UnreliableReceiver {
    sequenced: bool,
    /// `Unreliable`: ids already delivered.
    seen: SequenceBuffer<()>,
    /// `UnreliableSequenced`: the newest id delivered.
    newest: Option<Sequence>,
    pub(crate) reassembler: Reassembler,
}

impl UnreliableReceiver {
    pub(crate) fn new(sequenced: bool, reassembler: Reassembler) -> Self {
        Self {
            sequenced,
            seen: SequenceBuffer::new(if sequenced { 1 } else { DEDUP_WINDOW_MESSAGES }),
            newest: None,
            reassembler,
        }
    }

    fn is_stale(&self, id: Sequence) -> bool {
        if self.sequenced {
            self.newest.is_some_and(|n| !id.is_newer_than(n))
        } else {
            let too_old = self
                .seen
                .newest()
                .is_some_and(|n| n.distance(id) >= DEDUP_WINDOW_MESSAGES as i32);
            too_old || self.seen.contains(id)
        }
    }

    /// Accept one validated record; a message that is new goes to `deliver`.
    pub(crate) fn on_record(
        &mut self,
        now: Instant,
        record: &Record<'_>,
        deliver: &mut impl FnMut(Vec<u8>),
    ) -> Result<(), ChannelError> {
        if self.is_stale(record.id) {
            return Ok(());
        }
        let message = match record.fragment {
            None => record.payload.to_vec(),
            Some(f) => match self.reassembler.add(now, record.id, f, record.payload)? {
                Some(message) => message,
                None => return Ok(()),
            },
        };
        if self.sequenced {
            self.newest = Some(record.id);
            self.reassembler.discard_not_newer_than(record.id);
        } else {
            // is_stale checked the id is within reach of the buffer, so this insert succeeds.
            self.seen.insert(record.id, ());
        }
        deliver(message);
        Ok(())
    }
}
