//! Splitting messages into parts and reassembling unreliable ones.
//!
//! A message no larger than the channel's part payload travels as one record; a larger one is
//! cut into `n` fragments of exactly the part payload (the last one shorter). Because both ends
//! share the configuration, the receiver knows every fragment's exact length from its index and
//! rejects anything else, and it never allocates for a message before its fragment count has
//! been checked against the channel's limit.
//!
//! Unreliable fragments amplify loss: a message of `n` fragments arrives only when all of them
//! do, with probability `(1 - p)^n` at packet loss `p` (4 fragments at 10 % loss: 66 %).

use std::time::{Duration, Instant};

use crate::Sequence;

use super::ChannelError;
use super::config::Limits;
use super::wire::Fragment;

/// Cut `message` into parts of `part_payload` bytes; `None` marks an unfragmented message.
pub(crate) fn split(
    message: &[u8],
    part_payload: usize,
) -> impl Iterator<Item = (Option<Fragment>, &[u8])> {
    let single = message.len() <= part_payload;
    // Config limits keep the part count far below u16::MAX.
    let count = message.len().div_ceil(part_payload) as u16;
    let chunks: Box<dyn Iterator<Item = &[u8]>> = if single {
        Box::new(std::iter::once(message))
    } else {
        Box::new(message.chunks(part_payload))
    };
    chunks.enumerate().map(move |(i, chunk)| {
        let fragment = (!single).then_some(Fragment {
            index: i as u16,
            count,
        });
        (fragment, chunk)
    })
}

/// Check a received record's size and fragment fields against the channel's limits.
pub(crate) fn validate(
    limits: &Limits,
    fragment: Option<Fragment>,
    len: usize,
) -> Result<(), ChannelError> {
    let part = limits.part_payload_bytes;
    let Some(f) = fragment else {
        if len > part {
            return Err(ChannelError::PartTooLarge { len, max: part });
        }
        return Ok(());
    };
    let count = usize::from(f.count);
    if count < 2 || count > limits.max_parts {
        return Err(ChannelError::FragmentCount {
            count: f.count,
            max: limits.max_parts,
        });
    }
    if f.index >= f.count {
        return Err(ChannelError::FragmentIndex {
            index: f.index,
            count: f.count,
        });
    }
    // Every fragment but the last is exactly one part; the message as a whole must be longer
    // than one part (else it would not be fragmented) and within the message limit.
    let last = usize::from(f.index) + 1 == count;
    let length_ok = if last {
        let total = (count - 1) * part + len;
        len >= 1 && len <= part && total <= limits.max_message_bytes
    } else {
        len == part
    };
    if !length_ok {
        return Err(ChannelError::FragmentLength);
    }
    Ok(())
}

#[derive(Debug)]
struct Assembly {
    id: Sequence,
    parts: Vec<Option<Vec<u8>>>,
    received: usize,
    started: Instant,
}

/// Incomplete unreliable messages of one channel, capped in number and age.
#[derive(Debug)]
pub(crate) struct Reassembler {
    assemblies: Vec<Assembly>,
    max: usize,
    timeout: Duration,
    /// Incomplete messages dropped by eviction or timeout.
    pub(crate) dropped: u64,
}

impl Reassembler {
    pub(crate) fn new(max: usize, timeout: Duration) -> Self {
        Self {
            assemblies: Vec::new(),
            max,
            timeout,
            dropped: 0,
        }
    }

    /// Bytes held by incomplete messages.
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        self.assemblies
            .iter()
            .flat_map(|a| a.parts.iter().flatten())
            .map(Vec::len)
            .sum()
    }

    /// Add a validated fragment; returns the message when it is complete.
    pub(crate) fn add(
        &mut self,
        now: Instant,
        id: Sequence,
        fragment: Fragment,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, ChannelError> {
        let count = usize::from(fragment.count);
        let pos = match self.assemblies.iter().position(|a| a.id == id) {
            Some(pos) => pos,
            None => {
                if self.assemblies.len() >= self.max {
                    // Evict the oldest: a stalled message must not block newer ones.
                    // Indices come from the range of the vector itself.
                    if let Some(oldest) =
                        (0..self.assemblies.len()).min_by_key(|&i| self.assemblies[i].started)
                    {
                        self.assemblies.swap_remove(oldest);
                        self.dropped += 1;
                    }
                }
                // `count` was validated against the channel's fragment limit (<= 16).
                self.assemblies.push(Assembly {
                    id,
                    parts: vec![None; count],
                    received: 0,
                    started: now,
                });
                self.assemblies.len() - 1
            }
        };
        // `pos` was just found or just pushed.
        let assembly = &mut self.assemblies[pos];
        if assembly.parts.len() != count {
            return Err(ChannelError::ConflictingFragment);
        }
        let Some(slot) = assembly.parts.get_mut(usize::from(fragment.index)) else {
            // Unreachable after validation (index < count == parts.len()), but stays an error.
            return Err(ChannelError::FragmentIndex {
                index: fragment.index,
                count: fragment.count,
            });
        };
        match slot {
            Some(existing) if existing.as_slice() == payload => return Ok(None),
            Some(_) => return Err(ChannelError::ConflictingFragment),
            None => {
                *slot = Some(payload.to_vec());
                assembly.received += 1;
            }
        }
        if assembly.received < count {
            return Ok(None);
        }
        let assembly = self.assemblies.swap_remove(pos);
        Ok(Some(
            assembly.parts.into_iter().flatten().flatten().collect(),
        ))
    }

    /// Forget incomplete messages not newer than `newest` (newest-wins could never deliver them).
    pub(crate) fn discard_not_newer_than(&mut self, newest: Sequence) {
        let before = self.assemblies.len();
        self.assemblies.retain(|a| a.id.is_newer_than(newest));
        self.dropped += (before - self.assemblies.len()) as u64;
    }

    /// Drop incomplete messages older than the timeout.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let timeout = self.timeout;
        let before = self.assemblies.len();
        self.assemblies
            .retain(|a| now.saturating_duration_since(a.started) < timeout);
        self.dropped += (before - self.assemblies.len()) as u64;
    }

    /// When the oldest incomplete message expires.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.assemblies
            .iter()
            .map(|a| a.started + self.timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::config::{ChannelConfig, ChannelKind, ChannelsConfig};

    fn limits(kind: ChannelKind) -> Limits {
        let cfg = ChannelsConfig {
            channels: vec![ChannelConfig::new(kind)],
            ..ChannelsConfig::default()
        };
        cfg.limits().unwrap()[0]
    }

    #[test]
    fn split_sizes_and_indices() {
        let msg: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let parts: Vec<_> = split(&msg, 300).collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[3].1.len(), 100);
        assert_eq!(parts[2].0, Some(Fragment { index: 2, count: 4 }));
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.1.to_vec()).collect();
        assert_eq!(joined, msg);
        let single: Vec<_> = split(&msg[..300], 300).collect();
        assert_eq!(single, vec![(None, &msg[..300])]);
        assert_eq!(split(&[], 300).count(), 1);
    }

    #[test]
    fn validate_rejects_bad_fragments() {
        let l = limits(ChannelKind::Unreliable);
        let part = l.part_payload_bytes;
        let f = |index, count| Some(Fragment { index, count });
        assert!(validate(&l, None, part).is_ok());
        assert!(validate(&l, None, part + 1).is_err());
        assert!(validate(&l, f(0, 2), part).is_ok());
        assert!(validate(&l, f(1, 2), 1).is_ok());
        assert!(matches!(
            validate(&l, f(2, 2), 1),
            Err(ChannelError::FragmentIndex { .. })
        ));
        assert!(matches!(
            validate(&l, f(0, 1), part),
            Err(ChannelError::FragmentCount { .. })
        ));
        assert!(matches!(
            validate(&l, f(0, u16::MAX), part),
            Err(ChannelError::FragmentCount { .. })
        ));
        assert_eq!(validate(&l, f(0, 2), 5), Err(ChannelError::FragmentLength));
        assert_eq!(validate(&l, f(1, 2), 0), Err(ChannelError::FragmentLength));
        // The last fragment may not push the message over its limit.
        let count = l.max_parts as u16;
        let over = l.max_message_bytes - (l.max_parts - 1) * part + 1;
        assert_eq!(
            validate(&l, f(count - 1, count), over),
            Err(ChannelError::FragmentLength)
        );
    }

    #[test]
    fn reassembly_caps_and_expires() {
        let base = Instant::now();
        let mut r = Reassembler::new(2, Duration::from_secs(1));
        let frag = |index| Fragment { index, count: 3 };
        assert_eq!(r.add(base, Sequence(1), frag(0), b"a"), Ok(None));
        assert_eq!(r.add(base, Sequence(2), frag(0), b"b"), Ok(None));
        // A third message evicts the oldest.
        let later = base + Duration::from_millis(10);
        assert_eq!(r.add(later, Sequence(3), frag(0), b"c"), Ok(None));
        assert_eq!(r.dropped, 1);
        assert_eq!(r.poll_timeout(), Some(base + Duration::from_secs(1)));
        r.handle_timeout(base + Duration::from_secs(1));
        assert_eq!(r.held_bytes(), 1);
        assert_eq!(r.add(later, Sequence(3), frag(0), b"c"), Ok(None));
        assert_eq!(
            r.add(later, Sequence(3), frag(0), b"X"),
            Err(ChannelError::ConflictingFragment)
        );
        assert_eq!(
            r.add(later, Sequence(3), Fragment { index: 1, count: 4 }, b"X"),
            Err(ChannelError::ConflictingFragment)
        );
        assert_eq!(r.add(later, Sequence(3), frag(2), b"e"), Ok(None));
        assert_eq!(
            r.add(later, Sequence(3), frag(1), b"d"),
            Ok(Some(b"cde".to_vec()))
        );
        assert_eq!(r.held_bytes(), 0);
    }
}
