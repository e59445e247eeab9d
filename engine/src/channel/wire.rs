//! The channel section of a packet, byte by byte.
//!
//! ```text
//! section  := (nothing)                      no messages
//!           | count:u8 (1..=255) record{count}
//! record   := channel:u8 flags:u8 id:u16le [index:u16le total:u16le] len:u16le payload[len]
//! flags    := bit 0 FRAGMENT (index and total present); bits 1..=7 reserved, must be 0
//! ```
//!
//! The leading count makes the section self-delimiting; the reader still insists that the
//! bytes it is given end exactly after the last record. All integers are little-endian.
//! `id` is the channel's message id: reliable channels number every part (each fragment has
//! its own id, consecutive within a message); unreliable channels number messages (all
//! fragments of a message share its id).

use crate::Sequence;

use super::ChannelError;

/// Bytes before the first record: the record count.
pub(crate) const SECTION_HEADER_BYTES: usize = 1;
/// Record header of an unfragmented message: channel, flags, id, len.
pub(crate) const MESSAGE_HEADER_BYTES: usize = 6;
/// Record header of a fragment: channel, flags, id, index, total, len.
pub(crate) const FRAGMENT_HEADER_BYTES: usize = 10;
/// Most records one section can count.
pub(crate) const MAX_RECORDS_PER_SECTION: usize = 255;

const FLAG_FRAGMENT: u8 = 0x01;

/// Position of a fragment within its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Fragment {
    pub(crate) index: u16,
    pub(crate) count: u16,
}

/// One message or fragment as it appears in a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) channel: u8,
    pub(crate) id: Sequence,
    pub(crate) fragment: Option<Fragment>,
    pub(crate) payload: &'a [u8],
}

/// Encoded size of a record with a payload of `payload_len` bytes.
pub(crate) fn record_bytes(fragment: bool, payload_len: usize) -> usize {
    payload_len
        + if fragment {
            FRAGMENT_HEADER_BYTES
        } else {
            MESSAGE_HEADER_BYTES
        }
}

/// Appends records to a packet and fills in the count when finished.
#[derive(Debug)]
pub(crate) struct SectionWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    count: usize,
}

impl<'a> SectionWriter<'a> {
    /// Start a section at the end of `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        out.push(0);
        Self {
            out,
            start,
            count: 0,
        }
    }

    /// True when the section cannot count another record.
    pub(crate) fn is_full(&self) -> bool {
        self.count >= MAX_RECORDS_PER_SECTION
    }

    /// Append one record; the caller has checked the budget and [`Self::is_full`].
    pub(crate) fn push(&mut self, record: &Record<'_>) {
        debug_assert!(!self.is_full());
        debug_assert!(record.payload.len() <= usize::from(u16::MAX));
        self.out.push(record.channel);
        self.out.push(if record.fragment.is_some() {
            FLAG_FRAGMENT
        } else {
            0
        });
        self.out.extend_from_slice(&record.id.0.to_le_bytes());
        if let Some(f) = record.fragment {
            self.out.extend_from_slice(&f.index.to_le_bytes());
            self.out.extend_from_slice(&f.count.to_le_bytes());
        }
        // Payloads are bounded by the MTU, which config checks against u16::MAX.
        self.out
            .extend_from_slice(&(record.payload.len() as u16).to_le_bytes());
        self.out.extend_from_slice(record.payload);
        self.count += 1;
    }

    /// Finish the section: fill in the count, or remove it all when no record was written.
    /// Returns the bytes the section occupies.
    pub(crate) fn finish(self) -> usize {
        if self.count == 0 {
            self.out.truncate(self.start);
            return 0;
        }
        // `start` was pushed in `new`, so the index exists; count is capped at 255 by `is_full`.
        self.out[self.start] = self.count as u8;
        self.out.len() - self.start
    }
}

/// Reads little-endian fields from untrusted bytes without ever indexing past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChannelError> {
        if self.bytes.len() < n {
            return Err(ChannelError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, ChannelError> {
        // `take(1)` returned exactly one byte.
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ChannelError> {
        // `take(2)` returned exactly two bytes.
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// Split a section into records, checking only its syntax (limits are checked per channel).
pub(crate) fn parse_section(bytes: &[u8]) -> Result<Vec<Record<'_>>, ChannelError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut cur = Cursor { bytes };
    let count = usize::from(cur.u8()?);
    if count == 0 {
        return Err(ChannelError::EmptySection);
    }
    // At most 255 entries, whatever the bytes say.
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let channel = cur.u8()?;
        let flags = cur.u8()?;
        if flags & !FLAG_FRAGMENT != 0 {
            return Err(ChannelError::ReservedFlags(flags));
        }
        let id = Sequence(cur.u16()?);
        let fragment = if flags & FLAG_FRAGMENT != 0 {
            let index = cur.u16()?;
            let count = cur.u16()?;
            Some(Fragment { index, count })
        } else {
            None
        };
        let len = usize::from(cur.u16()?);
        let payload = cur.take(len)?;
        records.push(Record {
            channel,
            id,
            fragment,
            payload,
        });
    }
    if !cur.bytes.is_empty() {
        return Err(ChannelError::TrailingBytes(cur.bytes.len()));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_writer_leaves_no_bytes() {
        let mut out = vec![9, 9];
        let w = SectionWriter::new(&mut out);
        assert_eq!(w.finish(), 0);
        assert_eq!(out, vec![9, 9]);
        assert!(parse_section(&[]).unwrap().is_empty());
    }

    #[test]
    fn records_round_trip_byte_exact() {
        let mut out = Vec::new();
        let mut w = SectionWriter::new(&mut out);
        w.push(&Record {
            channel: 2,
            id: Sequence(0x0102),
            fragment: None,
            payload: b"hi",
        });
        w.push(&Record {
            channel: 0,
            id: Sequence(7),
            fragment: Some(Fragment { index: 1, count: 3 }),
            payload: b"x",
        });
        assert_eq!(w.finish(), out.len());
        assert_eq!(
            out,
            vec![
                2, // count
                2, 0, 0x02, 0x01, 2, 0, b'h', b'i', // message record
                0, 1, 7, 0, 1, 0, 3, 0, 1, 0, b'x', // fragment record
            ]
        );
        let recs = parse_section(&out).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].payload, b"hi");
        assert_eq!(recs[1].fragment, Some(Fragment { index: 1, count: 3 }));
        assert_eq!(
            record_bytes(false, 2) + record_bytes(true, 1) + 1,
            out.len()
        );
    }

    #[test]
    fn malformed_sections_are_rejected() {
        assert_eq!(parse_section(&[0]), Err(ChannelError::EmptySection));
        assert_eq!(parse_section(&[1, 0, 0]), Err(ChannelError::Truncated));
        assert_eq!(
            parse_section(&[1, 0, 0x80, 0, 0, 0, 0]),
            Err(ChannelError::ReservedFlags(0x80))
        );
        // Claims 0xFFFF payload bytes but has 1.
        assert_eq!(
            parse_section(&[1, 0, 0, 0, 0, 0xFF, 0xFF, 1]),
            Err(ChannelError::Truncated)
        );
        assert_eq!(
            parse_section(&[1, 0, 0, 0, 0, 0, 0, 5]),
            Err(ChannelError::TrailingBytes(1))
        );
    }
}
