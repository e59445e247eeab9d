//! The seven packets: the plain connection request, and the six encrypted ones.
//!
//! Connection request (type 0, not encrypted, exactly 1078 bytes):
//!
//! ```text
//! 0u8 | version info [13] | protocol id u64 | expire timestamp u64 | nonce [24] |
//! encrypted private connect token [1024]
//! ```
//!
//! Every other packet:
//!
//! ```text
//! prefix u8 = type | (sequence byte count << 4) | sequence, 1 to 8 bytes, low byte first |
//! ChaCha20-Poly1305 ciphertext of the body | tag [16]
//! ```
//!
//! The sequence is written with its high zero bytes left out (at least one byte). The nonce is
//! four zero bytes then the sequence as u64, and the associated data is version info, protocol
//! id and the prefix byte, so neither the type nor the sequence can be changed in flight.
//! Bodies: denied and disconnect empty; challenge and response `challenge sequence u64 |
//! challenge token [300]`; keep-alive `client index u32 | max clients u32`; payload 1 to 1200
//! bytes.

use super::crypto;
use super::replay::ReplayWindow;
use super::stats::Dropped;
use super::token::CONNECT_TOKEN_NONCE_BYTES;
use super::wire::{Reader, Writer};
use super::{
    CHALLENGE_TOKEN_BYTES, CONNECT_TOKEN_PRIVATE_BYTES, CONNECTION_REQUEST_BYTES, Key, MAC_BYTES,
    MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES, MIN_ENCRYPTED_PACKET_BYTES, VERSION_INFO,
};

/// The packet types, as the low four bits of the prefix byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PacketType {
    Request = 0,
    Denied = 1,
    Challenge = 2,
    Response = 3,
    KeepAlive = 4,
    Payload = 5,
    Disconnect = 6,
}

impl PacketType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Request,
            1 => Self::Denied,
            2 => Self::Challenge,
            3 => Self::Response,
            4 => Self::KeepAlive,
            5 => Self::Payload,
            6 => Self::Disconnect,
            _ => return None,
        })
    }

    /// The types replay protection applies to: those of an established connection.
    fn replay_protected(self) -> bool {
        matches!(self, Self::KeepAlive | Self::Payload | Self::Disconnect)
    }
}

/// An encrypted packet's body, decrypted (or to encrypt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Packet<'a> {
    Denied,
    Challenge {
        sequence: u64,
        token: &'a [u8; CHALLENGE_TOKEN_BYTES],
    },
    Response {
        sequence: u64,
        token: &'a [u8; CHALLENGE_TOKEN_BYTES],
    },
    KeepAlive {
        client_index: u32,
        max_clients: u32,
    },
    Payload(&'a [u8]),
    Disconnect,
}

impl Packet<'_> {
    fn kind(&self) -> PacketType {
        match self {
            Self::Denied => PacketType::Denied,
            Self::Challenge { .. } => PacketType::Challenge,
            Self::Response { .. } => PacketType::Response,
            Self::KeepAlive { .. } => PacketType::KeepAlive,
            Self::Payload(_) => PacketType::Payload,
            Self::Disconnect => PacketType::Disconnect,
        }
    }
}

/// The plain fields of a connection request.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) protocol_id: u64,
    pub(super) expire_timestamp: u64,
    pub(super) nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
    pub(super) private_data: [u8; CONNECT_TOKEN_PRIVATE_BYTES],
}

impl Request {
    pub(super) fn write(&self) -> Vec<u8> {
        let mut buf = vec![0u8; CONNECTION_REQUEST_BYTES];
        let mut w = Writer::new(&mut buf);
        w.u8(PacketType::Request as u8);
        w.bytes(&VERSION_INFO);
        w.u64(self.protocol_id);
        w.u64(self.expire_timestamp);
        w.bytes(&self.nonce);
        w.bytes(&self.private_data);
        buf
    }

    /// Reads a request, checking size, version and protocol id in the standard's order (the
    /// rest needs the unix time and the private key: the server's job).
    pub(super) fn read(datagram: &[u8], protocol_id: u64) -> Result<Self, Dropped> {
        if datagram.len() != CONNECTION_REQUEST_BYTES {
            return Err(Dropped::BadRequestSize);
        }
        let mut r = Reader::new(&datagram[1..]);
        if r.array::<13>().ok_or(Dropped::BadRequestSize)? != VERSION_INFO {
            return Err(Dropped::BadVersion);
        }
        let request = Self {
            protocol_id: r.u64().ok_or(Dropped::BadRequestSize)?,
            expire_timestamp: r.u64().ok_or(Dropped::BadRequestSize)?,
            nonce: r.array().ok_or(Dropped::BadRequestSize)?,
            private_data: r.array().ok_or(Dropped::BadRequestSize)?,
        };
        if request.protocol_id != protocol_id {
            return Err(Dropped::BadProtocolId);
        }
        Ok(request)
    }

    /// The tag of the private token: what identifies a token in the server's history.
    pub(super) fn token_mac(&self) -> [u8; MAC_BYTES] {
        let mut mac = [0u8; MAC_BYTES];
        mac.copy_from_slice(&self.private_data[CONNECT_TOKEN_PRIVATE_BYTES - MAC_BYTES..]);
        mac
    }
}

fn sequence_bytes(sequence: u64) -> usize {
    let significant = (64 - sequence.leading_zeros() as usize).div_ceil(8);
    significant.max(1)
}

fn aad(protocol_id: u64, prefix: u8) -> [u8; 22] {
    let mut aad = [0u8; 22];
    let mut w = Writer::new(&mut aad);
    w.bytes(&VERSION_INFO);
    w.u64(protocol_id);
    w.u8(prefix);
    aad
}

/// Writes and encrypts `packet` into `out`, returning its length; `None` if `out` is too small.
/// Payload size is the sender's check (so tests can build an oversized one).
pub(super) fn write(
    packet: &Packet<'_>,
    sequence: u64,
    protocol_id: u64,
    key: &Key,
    out: &mut [u8],
) -> Option<usize> {
    let n = sequence_bytes(sequence);
    let prefix = packet.kind() as u8 | ((n as u8) << 4);
    let body_len = match packet {
        Packet::Denied | Packet::Disconnect => 0,
        Packet::Challenge { .. } | Packet::Response { .. } => 8 + CHALLENGE_TOKEN_BYTES,
        Packet::KeepAlive { .. } => 8,
        Packet::Payload(p) => p.len(),
    };
    let len = 1 + n + body_len + MAC_BYTES;
    if out.len() < len {
        return None;
    }
    let mut w = Writer::new(&mut out[..len]);
    w.u8(prefix);
    w.bytes(&sequence.to_le_bytes()[..n]);
    match packet {
        Packet::Denied | Packet::Disconnect => {}
        Packet::Challenge { sequence, token } | Packet::Response { sequence, token } => {
            w.u64(*sequence);
            w.bytes(&token[..]);
        }
        Packet::KeepAlive {
            client_index,
            max_clients,
        } => {
            w.u32(*client_index);
            w.u32(*max_clients);
        }
        Packet::Payload(p) => w.bytes(p),
    }
    // Sealing fails only past the cipher's length limit, far above a datagram.
    crypto::seal(
        key,
        sequence,
        &aad(protocol_id, prefix),
        &mut out[1 + n..len],
    )
    .ok()?;
    Some(len)
}

/// The clear header of an encrypted packet, checked in the standard's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: PacketType,
    prefix: u8,
    sequence_bytes: usize,
}

/// The first checks on an encrypted packet: size, type, sequence byte count. The caller then
/// decides whether it accepts the type and which key to open it with.
pub(super) fn peek(datagram: &[u8]) -> Result<Header, Dropped> {
    if datagram.len() < MIN_ENCRYPTED_PACKET_BYTES {
        return Err(Dropped::TooSmall);
    }
    if datagram.len() > MAX_PACKET_BYTES {
        return Err(Dropped::TooLarge);
    }
    let prefix = datagram[0];
    let kind = PacketType::from_u8(prefix & 0x0f).ok_or(Dropped::UnknownType)?;
    let sequence_bytes = (prefix >> 4) as usize;
    if !(1..=8).contains(&sequence_bytes) {
        return Err(Dropped::BadSequenceBytes);
    }
    if datagram.len() < 1 + sequence_bytes + MAC_BYTES {
        return Err(Dropped::TooSmall);
    }
    Ok(Header {
        kind,
        prefix,
        sequence_bytes,
    })
}

/// Replay check (for connection packets), decryption, window advance, body parse: the rest of
/// the standard's reading order. The body is decrypted into `scratch`, which the returned
/// packet borrows.
pub(super) fn open<'s>(
    datagram: &[u8],
    header: Header,
    protocol_id: u64,
    key: &Key,
    replay: Option<&mut ReplayWindow>,
    scratch: &'s mut [u8; MAX_PACKET_BYTES],
) -> Result<(u64, Packet<'s>), Dropped> {
    let n = header.sequence_bytes;
    let mut seq = [0u8; 8];
    seq[..n].copy_from_slice(&datagram[1..1 + n]);
    let sequence = u64::from_le_bytes(seq);
    let replay = if header.kind.replay_protected() {
        replay
    } else {
        None
    };
    if let Some(window) = &replay
        && window.already_received(sequence)
    {
        return Err(Dropped::Replayed);
    }
    let sealed = &datagram[1 + n..];
    let buf = &mut scratch[..sealed.len()];
    buf.copy_from_slice(sealed);
    crypto::open(key, sequence, &aad(protocol_id, header.prefix), buf)
        .map_err(|_| Dropped::DecryptFailed)?;
    if let Some(window) = replay {
        window.advance(sequence);
    }
    let body = &scratch[..sealed.len() - MAC_BYTES];
    let packet = match header.kind {
        PacketType::Request => return Err(Dropped::UnexpectedType),
        PacketType::Denied if body.is_empty() => Packet::Denied,
        PacketType::Disconnect if body.is_empty() => Packet::Disconnect,
        PacketType::Challenge | PacketType::Response if body.len() == 8 + CHALLENGE_TOKEN_BYTES => {
            let mut r = Reader::new(body);
            let sequence = r.u64().ok_or(Dropped::BadLength)?;
            let token = r
                .bytes(CHALLENGE_TOKEN_BYTES)
                .and_then(|t| t.try_into().ok())
                .ok_or(Dropped::BadLength)?;
            if header.kind == PacketType::Challenge {
                Packet::Challenge { sequence, token }
            } else {
                Packet::Response { sequence, token }
            }
        }
        PacketType::KeepAlive if body.len() == 8 => {
            let mut r = Reader::new(body);
            Packet::KeepAlive {
                client_index: r.u32().ok_or(Dropped::BadLength)?,
                max_clients: r.u32().ok_or(Dropped::BadLength)?,
            }
        }
        PacketType::Payload if body.len() > MAX_PAYLOAD_BYTES => {
            return Err(Dropped::PayloadTooLarge);
        }
        PacketType::Payload if !body.is_empty() => Packet::Payload(body),
        _ => return Err(Dropped::BadLength),
    };
    Ok((sequence, packet))
}
