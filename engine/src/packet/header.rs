//! Wire format of every packet: a CRC32 that folds in the protocol id, a kind byte, and the
//! kind's fields. See docs/PROTOCOL.md for the byte-by-byte layout.

use crate::Sequence;

/// Protocol identifier and version, folded into every packet's CRC32 but never sent.
///
/// Traffic from another protocol, or another version of this one, fails the check and is
/// dropped before any field is read. Bump the low byte on every wire-format change.
pub const PROTOCOL_ID: u64 = 0x534E_4150_5359_4E01; // "SNAPSYN" + version 1

/// Largest datagram either side sends or accepts, in bytes (fits a 1500-byte Ethernet MTU
/// with IPv6 and UDP headers to spare).
pub const MAX_PACKET_BYTES: usize = 1400;

/// Exact size of a connection request and challenge response, in bytes.
///
/// Both are padded to this size so that no reply to an address that has not completed the
/// handshake is ever larger than what that address sent (no amplification), and so that a
/// path which cannot carry full-size datagrams fails at connect time rather than mid-game.
pub const HANDSHAKE_PACKET_BYTES: usize = 1200;

const CRC_BYTES: usize = 4;
/// Bytes of a connected packet's header: crc, kind, salt, seq, ack, ack bits, ack delay.
const CONNECTED_HEADER_BYTES: usize = CRC_BYTES + 1 + 4 + 2 + 2 + 4 + 2;

/// The kind byte that follows the CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketKind {
    /// Client → server: please let me in.
    ConnectionRequest = 1,
    /// Server → client: echo this cookie to prove you own your address.
    Challenge = 2,
    /// Client → server: the echoed cookie.
    ChallengeResponse = 3,
    /// Server → client: you are in, with this id and session salt.
    Accepted = 4,
    /// Server → client: you are not let in, for this reason.
    Denied = 5,
    /// Either way, once connected: acks plus a payload (empty for a keep-alive).
    Payload = 6,
    /// Either way, once connected: the sender is leaving.
    Disconnect = 7,
}

impl PacketKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::ConnectionRequest,
            2 => Self::Challenge,
            3 => Self::ChallengeResponse,
            4 => Self::Accepted,
            5 => Self::Denied,
            6 => Self::Payload,
            7 => Self::Disconnect,
            _ => return None,
        })
    }
}

/// Why the server refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Every client slot is taken.
    ServerFull,
    /// The server is shutting down.
    ShuttingDown,
    /// A reason code this version does not know.
    Other(u8),
}

impl DenyReason {
    fn to_u8(self) -> u8 {
        match self {
            Self::ServerFull => 1,
            Self::ShuttingDown => 2,
            Self::Other(b) => b,
        }
    }
    fn from_u8(b: u8) -> Self {
        match b {
            1 => Self::ServerFull,
            2 => Self::ShuttingDown,
            b => Self::Other(b),
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServerFull => write!(f, "server full"),
            Self::ShuttingDown => write!(f, "server shutting down"),
            Self::Other(b) => write!(f, "denied (code {b})"),
        }
    }
}

/// Reason byte carried by a `Disconnect` packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReasonCode {
    /// The application asked to disconnect.
    Requested,
    /// The server is shutting down.
    ServerShutdown,
    /// The server kicked this client.
    Kicked,
    /// A code this version does not know.
    Other(u8),
}

impl DisconnectReasonCode {
    fn to_u8(self) -> u8 {
        match self {
            Self::Requested => 1,
            Self::ServerShutdown => 2,
            Self::Kicked => 3,
            Self::Other(b) => b,
        }
    }
    fn from_u8(b: u8) -> Self {
        match b {
            1 => Self::Requested,
            2 => Self::ServerShutdown,
            3 => Self::Kicked,
            b => Self::Other(b),
        }
    }
}

/// Header of a packet sent on an established connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectedHeader {
    /// Session salt agreed in the handshake; a packet with the wrong one is dropped.
    pub salt: u32,
    /// This packet's sequence number.
    pub sequence: Sequence,
    /// The newest sequence the sender has received from its peer.
    pub ack: Sequence,
    /// Bit `i` set: the sender also received `ack - 1 - i`.
    pub ack_bits: u32,
    /// How long the sender held `ack` before sending this packet, in units of
    /// [`ACK_DELAY_UNIT_MICROS`](Self::ACK_DELAY_UNIT_MICROS); lets the peer subtract it from RTT samples.
    pub ack_delay: u16,
}

impl ConnectedHeader {
    /// Resolution of `ack_delay`, in microseconds (u16 of these spans 3.2 s).
    pub const ACK_DELAY_UNIT_MICROS: u64 = 50;

    /// The header's fields after the CRC and the kind byte, as they go on the wire.
    fn fields(&self) -> [u8; CONNECTED_HEADER_BYTES - CRC_BYTES - 1] {
        let mut f = [0; CONNECTED_HEADER_BYTES - CRC_BYTES - 1];
        f[0..4].copy_from_slice(&self.salt.to_le_bytes());
        f[4..6].copy_from_slice(&self.sequence.0.to_le_bytes());
        f[6..8].copy_from_slice(&self.ack.0.to_le_bytes());
        f[8..12].copy_from_slice(&self.ack_bits.to_le_bytes());
        f[12..14].copy_from_slice(&self.ack_delay.to_le_bytes());
        f
    }

    /// Finish a payload packet built in place: `packet` is
    /// [`Packet::CONNECTED_HEADER_BYTES`] of room followed by the payload; this writes the
    /// header and the CRC over them. The bytes are those [`Packet::encode`] writes for
    /// [`Packet::Payload`] with this header and payload, without copying the payload into a
    /// packet of its own. `false` (and nothing written) when `packet` is shorter than the
    /// header or longer than [`MAX_PACKET_BYTES`].
    pub fn seal_payload_packet(&self, packet: &mut [u8]) -> bool {
        if packet.len() < CONNECTED_HEADER_BYTES || packet.len() > MAX_PACKET_BYTES {
            return false;
        }
        packet[CRC_BYTES] = PacketKind::Payload as u8;
        packet[CRC_BYTES + 1..CONNECTED_HEADER_BYTES].copy_from_slice(&self.fields());
        let c = crc(&packet[CRC_BYTES..]);
        packet[..CRC_BYTES].copy_from_slice(&c.to_le_bytes());
        true
    }
}

/// A decoded packet. Borrowed payloads point into the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Client → server connection request (padded to [`HANDSHAKE_PACKET_BYTES`]).
    ConnectionRequest {
        /// Random per connection attempt; echoed in every handshake reply.
        client_nonce: u64,
    },
    /// Server → client stateless challenge.
    Challenge {
        /// The client's nonce, echoed.
        client_nonce: u64,
        /// Server time the cookie was made, in ms since the server started.
        timestamp_ms: u64,
        /// Keyed hash over address, nonce and timestamp.
        mac: u64,
    },
    /// Client → server echo of the challenge (padded to [`HANDSHAKE_PACKET_BYTES`]).
    ChallengeResponse {
        /// The client's nonce.
        client_nonce: u64,
        /// Echoed from the challenge.
        timestamp_ms: u64,
        /// Echoed from the challenge.
        mac: u64,
    },
    /// Server → client: connected.
    Accepted {
        /// The client's nonce, echoed.
        client_nonce: u64,
        /// Id of this client on the server.
        client_id: u32,
        /// Session salt every later packet carries.
        salt: u32,
    },
    /// Server → client: refused.
    Denied {
        /// The client's nonce, echoed.
        client_nonce: u64,
        /// Why.
        reason: DenyReason,
    },
    /// Connected traffic: acks and payload.
    Payload {
        /// Sequence, acks and salt.
        header: ConnectedHeader,
        /// The body; empty for a keep-alive.
        payload: &'a [u8],
    },
    /// The sender is leaving.
    Disconnect {
        /// Session salt.
        salt: u32,
        /// Why.
        reason: DisconnectReasonCode,
    },
}

/// Why a datagram was not a valid packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than the smallest packet or than its kind requires.
    #[error("truncated packet")]
    Truncated,
    /// Larger than [`MAX_PACKET_BYTES`].
    #[error("oversized packet")]
    Oversized,
    /// CRC mismatch: corrupt, or another protocol or version.
    #[error("wrong protocol id or corrupt packet")]
    BadCrc,
    /// Unknown kind byte.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// A handshake packet that is not exactly [`HANDSHAKE_PACKET_BYTES`] long.
    #[error("handshake packet has wrong size")]
    BadHandshakeSize,
    /// Bytes after the last field of a fixed-size kind.
    #[error("trailing bytes after the packet")]
    TrailingBytes,
}

fn crc(body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&PROTOCOL_ID.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Little-endian field reader over a checked slice; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], HeaderError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(HeaderError::Truncated)?;
        self.buf = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, HeaderError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, HeaderError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, HeaderError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, HeaderError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

impl<'a> Packet<'a> {
    /// The kind of this packet.
    pub fn kind(&self) -> PacketKind {
        match self {
            Self::ConnectionRequest { .. } => PacketKind::ConnectionRequest,
            Self::Challenge { .. } => PacketKind::Challenge,
            Self::ChallengeResponse { .. } => PacketKind::ChallengeResponse,
            Self::Accepted { .. } => PacketKind::Accepted,
            Self::Denied { .. } => PacketKind::Denied,
            Self::Payload { .. } => PacketKind::Payload,
            Self::Disconnect { .. } => PacketKind::Disconnect,
        }
    }

    /// Bytes this packet takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::ConnectionRequest { .. } | Self::ChallengeResponse { .. } => {
                HANDSHAKE_PACKET_BYTES
            }
            Self::Challenge { .. } => CRC_BYTES + 1 + 24,
            Self::Accepted { .. } => CRC_BYTES + 1 + 16,
            Self::Denied { .. } => CRC_BYTES + 1 + 9,
            Self::Payload { payload, .. } => CONNECTED_HEADER_BYTES + payload.len(),
            Self::Disconnect { .. } => CRC_BYTES + 1 + 5,
        }
    }

    /// Bytes a connected packet's header takes before its payload.
    pub const CONNECTED_HEADER_BYTES: usize = CONNECTED_HEADER_BYTES;

    /// Write this packet to the start of `out` and return its length; `None` when `out` is
    /// too small or the packet would exceed [`MAX_PACKET_BYTES`].
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.encoded_len();
        if len > MAX_PACKET_BYTES || len > out.len() {
            return None;
        }
        let buf = &mut out[..len];
        buf.fill(0);
        buf[CRC_BYTES] = self.kind() as u8;
        let mut at = CRC_BYTES + 1;
        let mut put = |bytes: &[u8]| {
            buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        match *self {
            Self::ConnectionRequest { client_nonce } => put(&client_nonce.to_le_bytes()),
            Self::Challenge {
                client_nonce,
                timestamp_ms,
                mac,
            }
            | Self::ChallengeResponse {
                client_nonce,
                timestamp_ms,
                mac,
            } => {
                put(&client_nonce.to_le_bytes());
                put(&timestamp_ms.to_le_bytes());
                put(&mac.to_le_bytes());
            }
            Self::Accepted {
                client_nonce,
                client_id,
                salt,
            } => {
                put(&client_nonce.to_le_bytes());
                put(&client_id.to_le_bytes());
                put(&salt.to_le_bytes());
            }
            Self::Denied {
                client_nonce,
                reason,
            } => {
                put(&client_nonce.to_le_bytes());
                put(&[reason.to_u8()]);
            }
            Self::Payload { header, payload } => {
                put(&header.fields());
                put(payload);
            }
            Self::Disconnect { salt, reason } => {
                put(&salt.to_le_bytes());
                put(&[reason.to_u8()]);
            }
        }
        let c = crc(&buf[CRC_BYTES..]);
        buf[..CRC_BYTES].copy_from_slice(&c.to_le_bytes());
        Some(len)
    }

    /// Parse and verify one datagram. Never panics, whatever the bytes.
    pub fn decode(datagram: &'a [u8]) -> Result<Self, HeaderError> {
        if datagram.len() > MAX_PACKET_BYTES {
            return Err(HeaderError::Oversized);
        }
        let Some((crc_bytes, body)) = datagram.split_first_chunk::<CRC_BYTES>() else {
            return Err(HeaderError::Truncated);
        };
        if body.is_empty() {
            return Err(HeaderError::Truncated);
        }
        if u32::from_le_bytes(*crc_bytes) != crc(body) {
            return Err(HeaderError::BadCrc);
        }
        let mut r = Reader { buf: body };
        let kind_byte = r.u8()?;
        let kind = PacketKind::from_u8(kind_byte).ok_or(HeaderError::UnknownKind(kind_byte))?;
        let handshake_sized = datagram.len() == HANDSHAKE_PACKET_BYTES;
        let packet = match kind {
            PacketKind::ConnectionRequest => {
                if !handshake_sized {
                    return Err(HeaderError::BadHandshakeSize);
                }
                Self::ConnectionRequest {
                    client_nonce: r.u64()?,
                }
            }
            PacketKind::Challenge | PacketKind::ChallengeResponse => {
                if kind == PacketKind::ChallengeResponse && !handshake_sized {
                    return Err(HeaderError::BadHandshakeSize);
                }
                let (client_nonce, timestamp_ms, mac) = (r.u64()?, r.u64()?, r.u64()?);
                if kind == PacketKind::Challenge {
                    Self::Challenge {
                        client_nonce,
                        timestamp_ms,
                        mac,
                    }
                } else {
                    Self::ChallengeResponse {
                        client_nonce,
                        timestamp_ms,
                        mac,
                    }
                }
            }
            PacketKind::Accepted => Self::Accepted {
                client_nonce: r.u64()?,
                client_id: r.u32()?,
                salt: r.u32()?,
            },
            PacketKind::Denied => Self::Denied {
                client_nonce: r.u64()?,
                reason: DenyReason::from_u8(r.u8()?),
            },
            PacketKind::Payload => {
                let header = ConnectedHeader {
                    salt: r.u32()?,
                    sequence: Sequence(r.u16()?),
                    ack: Sequence(r.u16()?),
                    ack_bits: r.u32()?,
                    ack_delay: r.u16()?,
                };
                Self::Payload {
                    header,
                    payload: r.buf,
                }
            }
            PacketKind::Disconnect => Self::Disconnect {
                salt: r.u32()?,
                reason: DisconnectReasonCode::from_u8(r.u8()?),
            },
        };
        // One encoding per packet: the server-to-client kinds and Disconnect have a fixed
        // size (handshake requests are padded, payloads run to the end).
        let fixed_size = matches!(
            kind,
            PacketKind::Challenge
                | PacketKind::Accepted
                | PacketKind::Denied
                | PacketKind::Disconnect
        );
        if fixed_size && !r.buf.is_empty() {
            return Err(HeaderError::TrailingBytes);
        }
        Ok(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(p: Packet<'_>) {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let n = p.encode(&mut buf).unwrap();
        assert_eq!(n, p.encoded_len());
        assert_eq!(Packet::decode(&buf[..n]).unwrap(), p);
    }

    #[test]
    fn every_kind_round_trips() {
        round_trip(Packet::ConnectionRequest { client_nonce: 42 });
        round_trip(Packet::Challenge {
            client_nonce: 1,
            timestamp_ms: 2,
            mac: 3,
        });
        round_trip(Packet::ChallengeResponse {
            client_nonce: 1,
            timestamp_ms: 2,
            mac: 3,
        });
        round_trip(Packet::Accepted {
            client_nonce: 9,
            client_id: 7,
            salt: 0xdead_beef,
        });
        round_trip(Packet::Denied {
            client_nonce: 9,
            reason: DenyReason::ServerFull,
        });
        round_trip(Packet::Payload {
            header: ConnectedHeader {
                salt: 5,
                sequence: Sequence(65535),
                ack: Sequence(3),
                ack_bits: 0x8000_0001,
                ack_delay: 77,
            },
            payload: b"hello",
        });
        round_trip(Packet::Disconnect {
            salt: 5,
            reason: DisconnectReasonCode::Kicked,
        });
    }

    #[test]
    fn handshake_replies_are_never_larger_than_requests() {
        let challenge = Packet::Challenge {
            client_nonce: 0,
            timestamp_ms: 0,
            mac: 0,
        };
        let accepted = Packet::Accepted {
            client_nonce: 0,
            client_id: 0,
            salt: 0,
        };
        let denied = Packet::Denied {
            client_nonce: 0,
            reason: DenyReason::ServerFull,
        };
        for reply in [challenge, accepted, denied] {
            assert!(reply.encoded_len() <= HANDSHAKE_PACKET_BYTES);
        }
        assert_eq!(
            Packet::ConnectionRequest { client_nonce: 0 }.encoded_len(),
            HANDSHAKE_PACKET_BYTES
        );
    }

    #[test]
    fn foreign_protocol_fails_crc() {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let n = Packet::Disconnect {
            salt: 1,
            reason: DisconnectReasonCode::Requested,
        }
        .encode(&mut buf)
        .unwrap();
        // Same body, CRC computed without our protocol id: as another protocol would send it.
        let foreign = crc32fast::hash(&buf[CRC_BYTES..n]);
        buf[..CRC_BYTES].copy_from_slice(&foreign.to_le_bytes());
        assert_eq!(Packet::decode(&buf[..n]), Err(HeaderError::BadCrc));
    }

    #[test]
    fn short_handshake_is_rejected() {
        let mut buf = [0u8; MAX_PACKET_BYTES];
        let n = Packet::ConnectionRequest { client_nonce: 1 }
            .encode(&mut buf)
            .unwrap();
        // Re-sign a truncated request so the CRC is right and only the size is wrong.
        let short = 64;
        let c = crc(&buf[CRC_BYTES..short]);
        buf[..CRC_BYTES].copy_from_slice(&c.to_le_bytes());
        assert_eq!(
            Packet::decode(&buf[..short]),
            Err(HeaderError::BadHandshakeSize)
        );
        assert!(n > short);
    }

    /// `datagram[..len]` with its CRC recomputed, so the decode gets past the checksum.
    fn resigned(datagram: &[u8], len: usize) -> Vec<u8> {
        let mut d = datagram[..len].to_vec();
        if len > CRC_BYTES {
            let c = crc(&d[CRC_BYTES..]);
            d[..CRC_BYTES].copy_from_slice(&c.to_le_bytes());
        }
        d
    }

    #[test]
    fn every_truncation_of_a_valid_packet_is_rejected_by_its_parser() {
        let header = ConnectedHeader {
            salt: 1,
            sequence: Sequence(2),
            ack: Sequence(3),
            ack_bits: 4,
            ack_delay: 5,
        };
        let packets = [
            Packet::ConnectionRequest { client_nonce: 1 },
            Packet::Challenge {
                client_nonce: 1,
                timestamp_ms: 2,
                mac: 3,
            },
            Packet::ChallengeResponse {
                client_nonce: 1,
                timestamp_ms: 2,
                mac: 3,
            },
            Packet::Accepted {
                client_nonce: 1,
                client_id: 2,
                salt: 3,
            },
            Packet::Denied {
                client_nonce: 1,
                reason: DenyReason::ServerFull,
            },
            Packet::Payload {
                header,
                payload: &[9; 40],
            },
            Packet::Disconnect {
                salt: 1,
                reason: DisconnectReasonCode::Requested,
            },
        ];
        let mut buf = [0u8; MAX_PACKET_BYTES];
        for p in packets {
            let n = p.encode(&mut buf).unwrap();
            for len in 0..n {
                let d = resigned(&buf, len);
                let got = Packet::decode(&d);
                let want = match p.kind() {
                    // No CRC, or no kind byte after it.
                    _ if len <= CRC_BYTES => Err(HeaderError::Truncated),
                    PacketKind::ConnectionRequest | PacketKind::ChallengeResponse => {
                        Err(HeaderError::BadHandshakeSize)
                    }
                    // A payload cut after its header is a valid packet with a shorter payload:
                    // only the CRC could tell, and it was recomputed.
                    PacketKind::Payload if len >= CONNECTED_HEADER_BYTES => Ok(Packet::Payload {
                        header,
                        payload: &d[CONNECTED_HEADER_BYTES..],
                    }),
                    _ => Err(HeaderError::Truncated),
                };
                assert_eq!(got, want, "{:?} cut to {len} of {n} bytes", p.kind());
            }
        }
    }

    #[test]
    fn oversized_is_rejected() {
        let big = vec![0u8; MAX_PACKET_BYTES + 1];
        assert_eq!(Packet::decode(&big), Err(HeaderError::Oversized));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn a_payload_packet_sealed_in_place_is_the_one_encoded(
            salt in any::<u32>(),
            seq in any::<u16>(),
            ack in any::<u16>(),
            ack_bits in any::<u32>(),
            ack_delay in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..MAX_PACKET_BYTES + 8),
        ) {
            let header = ConnectedHeader {
                salt,
                sequence: Sequence(seq),
                ack: Sequence(ack),
                ack_bits,
                ack_delay,
            };
            let packet = Packet::Payload { header, payload: &payload };
            let mut encoded = vec![0u8; MAX_PACKET_BYTES + 64];
            let len = packet.encode(&mut encoded);
            // Built in place: junk where the header goes, then the payload.
            let mut in_place = vec![0xA5u8; CONNECTED_HEADER_BYTES];
            in_place.extend_from_slice(&payload);
            let sealed = header.seal_payload_packet(&mut in_place);
            prop_assert_eq!(sealed, len.is_some());
            if let Some(len) = len {
                prop_assert_eq!(&in_place[..], &encoded[..len]);
                prop_assert_eq!(Packet::decode(&in_place), Ok(packet));
            }
        }

        #[test]
        fn random_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Packet::decode(&bytes);
        }

        #[test]
        fn signed_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 1..1300)) {
            // A valid CRC over random content reaches the field parsers.
            let mut d = crc(&body).to_le_bytes().to_vec();
            d.extend_from_slice(&body);
            let _ = Packet::decode(&d);
        }
    }
}
