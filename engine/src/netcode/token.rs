//! Connect tokens (minted by the backend, 2048 bytes) and challenge tokens (minted by the
//! server, 300 bytes).
//!
//! Private connect token, 1024 bytes, of which the first 1008 are encrypted with
//! XChaCha20-Poly1305 (associated data: version info, protocol id, expire timestamp; nonce: the
//! token's random 24 bytes) and the last 16 are the tag:
//!
//! ```text
//! client id u64 | timeout seconds i32 | address count u32 (1..=32) | addresses |
//! client-to-server key [32] | server-to-client key [32] | user data [256] | zeros
//! ```
//!
//! An address is a type byte (1 = IPv4: four octets, then port u16; 2 = IPv6: eight u16
//! segments, then port u16). Every u16 is little-endian, the IPv6 segments too: they are
//! numbers, not the address's network-order octets.
//!
//! Public connect token, 2048 bytes:
//!
//! ```text
//! version info [13] | protocol id u64 | create timestamp u64 | expire timestamp u64 |
//! nonce [24] | encrypted private token [1024] | timeout seconds i32 | address count u32 |
//! addresses | client-to-server key [32] | server-to-client key [32] | zeros
//! ```
//!
//! Challenge token, 300 bytes, encrypted with ChaCha20-Poly1305 under the server's random key,
//! no associated data, nonce from the challenge sequence: `client id u64 | user data [256] |
//! zeros`, the last 16 bytes the tag.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::crypto;
use super::wire::{Reader, Writer};
use super::{
    CHALLENGE_TOKEN_BYTES, CONNECT_TOKEN_BYTES, CONNECT_TOKEN_PRIVATE_BYTES, KEY_BYTES, Key,
    MAC_BYTES, MAX_SERVER_ADDRESSES, USER_DATA_BYTES, UserData, VERSION_INFO,
};

/// Bytes of the connect token nonce (XChaCha20's extended nonce).
pub const CONNECT_TOKEN_NONCE_BYTES: usize = 24;

const ADDRESS_IPV4: u8 = 1;
const ADDRESS_IPV6: u8 = 2;

/// Why a token was refused, or could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Shorter than its layout, or its fields do not parse.
    #[error("malformed token")]
    Malformed,
    /// Version info other than "NETCODE 1.02".
    #[error("wrong version info")]
    BadVersion,
    /// Server address count outside 1..=32.
    #[error("{0} server addresses (1 to 32 allowed)")]
    AddressCount(usize),
    /// An address type other than 1 (IPv4) or 2 (IPv6).
    #[error("unknown address type {0}")]
    AddressType(u8),
    /// Created after it expires.
    #[error("token created after it expires")]
    CreatedAfterExpiry,
    /// The private part did not decrypt: forged, tampered, or another key or protocol.
    #[error("private token failed to decrypt")]
    DecryptFailed,
}

/// What the backend puts in a connect token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// The game's protocol id; servers of another protocol refuse the token.
    pub protocol_id: u64,
    /// The authenticated client's id, unique per client.
    pub client_id: u64,
    /// The servers the client may try, in order (1 to 32). Each server accepts the token only
    /// if its own public address is in this list.
    pub server_addresses: Vec<SocketAddr>,
    /// Seconds from creation until the token expires (unix time, seconds).
    pub expire_seconds: u64,
    /// Seconds of silence after which either side drops the connection; negative disables
    /// timeouts (for debugging only).
    pub timeout_seconds: i32,
    /// Opaque to netcode; handed to the server application when the client connects.
    pub user_data: UserData,
}

/// The secret part of a connect token, readable only by the backend and the servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateConnectToken {
    /// The client's id.
    pub client_id: u64,
    /// Seconds of silence before a timeout; negative disables.
    pub timeout_seconds: i32,
    /// The servers this token is good for.
    pub server_addresses: Vec<SocketAddr>,
    /// Key for packets from the client to the server.
    pub client_to_server_key: Key,
    /// Key for packets from the server to the client.
    pub server_to_client_key: Key,
    /// Application data for the server.
    pub user_data: UserData,
}

/// A connect token as the client holds it: the public fields plus the encrypted private part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// The game's protocol id.
    pub protocol_id: u64,
    /// Unix time (seconds) when the token was minted.
    pub create_timestamp: u64,
    /// Unix time (seconds) from which servers refuse it.
    pub expire_timestamp: u64,
    /// The XChaCha20 nonce of the private part, random per token.
    pub nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
    /// The encrypted private token (1008 bytes of ciphertext and a 16-byte tag).
    pub private_data: Box<[u8; CONNECT_TOKEN_PRIVATE_BYTES]>,
    /// Seconds of silence before a timeout; negative disables.
    pub timeout_seconds: i32,
    /// The servers to try, in order.
    pub server_addresses: Vec<SocketAddr>,
    /// Key for packets from the client to the server.
    pub client_to_server_key: Key,
    /// Key for packets from the server to the client.
    pub server_to_client_key: Key,
}

/// Mints a connect token: the backend's side of netcode. `unix_secs` is the current unix time
/// in seconds (the library reads no clock); the packet keys and the nonce come from the
/// operating system's randomness.
pub fn generate_connect_token(
    unix_secs: u64,
    settings: &TokenSettings,
    private_key: &Key,
) -> Result<ConnectToken, TokenError> {
    seal_connect_token(
        unix_secs,
        settings,
        private_key,
        rand::random(),
        crypto::generate_key(),
        crypto::generate_key(),
    )
}

/// [`generate_connect_token`] with the nonce and keys given: the same inputs give the same
/// bytes, which the wire-equality tests rely on.
pub(super) fn seal_connect_token(
    unix_secs: u64,
    settings: &TokenSettings,
    private_key: &Key,
    nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
    client_to_server_key: Key,
    server_to_client_key: Key,
) -> Result<ConnectToken, TokenError> {
    check_address_count(settings.server_addresses.len())?;
    let private = PrivateConnectToken {
        client_id: settings.client_id,
        timeout_seconds: settings.timeout_seconds,
        server_addresses: settings.server_addresses.clone(),
        client_to_server_key,
        server_to_client_key,
        user_data: settings.user_data,
    };
    let expire_timestamp = unix_secs.saturating_add(settings.expire_seconds);
    let private_data = private.seal(settings.protocol_id, expire_timestamp, &nonce, private_key)?;
    Ok(ConnectToken {
        protocol_id: settings.protocol_id,
        create_timestamp: unix_secs,
        expire_timestamp,
        nonce,
        private_data,
        timeout_seconds: settings.timeout_seconds,
        server_addresses: private.server_addresses,
        client_to_server_key,
        server_to_client_key,
    })
}

fn check_address_count(count: usize) -> Result<(), TokenError> {
    if (1..=MAX_SERVER_ADDRESSES).contains(&count) {
        Ok(())
    } else {
        Err(TokenError::AddressCount(count))
    }
}

fn write_addresses(w: &mut Writer<'_>, addresses: &[SocketAddr]) {
    // The count fits: callers checked it is at most 32.
    w.u32(addresses.len() as u32);
    for address in addresses {
        match address {
            SocketAddr::V4(a) => {
                w.u8(ADDRESS_IPV4);
                w.bytes(&a.ip().octets());
                w.u16(a.port());
            }
            SocketAddr::V6(a) => {
                w.u8(ADDRESS_IPV6);
                for segment in a.ip().segments() {
                    w.u16(segment);
                }
                w.u16(a.port());
            }
        }
    }
}

fn read_addresses(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, TokenError> {
    let count = r.u32().ok_or(TokenError::Malformed)? as usize;
    check_address_count(count)?;
    let mut addresses = Vec::with_capacity(count);
    for _ in 0..count {
        let address = match r.u8().ok_or(TokenError::Malformed)? {
            ADDRESS_IPV4 => {
                let octets: [u8; 4] = r.array().ok_or(TokenError::Malformed)?;
                let port = r.u16().ok_or(TokenError::Malformed)?;
                SocketAddr::from((Ipv4Addr::from(octets), port))
            }
            ADDRESS_IPV6 => {
                let mut segments = [0u16; 8];
                for s in &mut segments {
                    *s = r.u16().ok_or(TokenError::Malformed)?;
                }
                let port = r.u16().ok_or(TokenError::Malformed)?;
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(segments), port, 0, 0))
            }
            other => return Err(TokenError::AddressType(other)),
        };
        addresses.push(address);
    }
    Ok(addresses)
}

/// The associated data of the private token: version info, protocol id, expire timestamp.
fn private_aad(protocol_id: u64, expire_timestamp: u64) -> [u8; 29] {
    let mut aad = [0u8; 29];
    let mut w = Writer::new(&mut aad);
    w.bytes(&VERSION_INFO);
    w.u64(protocol_id);
    w.u64(expire_timestamp);
    aad
}

impl PrivateConnectToken {
    /// The plaintext layout, zero-padded to 1024 bytes (the tag's 16 bytes left zero).
    pub(super) fn write(&self, buf: &mut [u8; CONNECT_TOKEN_PRIVATE_BYTES]) {
        buf.fill(0);
        let mut w = Writer::new(buf);
        w.u64(self.client_id);
        w.u32(self.timeout_seconds as u32);
        write_addresses(&mut w, &self.server_addresses);
        w.bytes(&self.client_to_server_key);
        w.bytes(&self.server_to_client_key);
        w.bytes(&self.user_data);
    }

    /// Reads the plaintext layout.
    pub(super) fn read(buf: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader::new(buf);
        let client_id = r.u64().ok_or(TokenError::Malformed)?;
        let timeout_seconds = r.u32().ok_or(TokenError::Malformed)? as i32;
        let server_addresses = read_addresses(&mut r)?;
        let client_to_server_key = r.array::<KEY_BYTES>().ok_or(TokenError::Malformed)?;
        let server_to_client_key = r.array::<KEY_BYTES>().ok_or(TokenError::Malformed)?;
        let user_data = r.array::<USER_DATA_BYTES>().ok_or(TokenError::Malformed)?;
        Ok(Self {
            client_id,
            timeout_seconds,
            server_addresses,
            client_to_server_key,
            server_to_client_key,
            user_data,
        })
    }

    /// Writes and encrypts: the 1024 bytes a connect token and a connection request carry.
    pub fn seal(
        &self,
        protocol_id: u64,
        expire_timestamp: u64,
        nonce: &[u8; CONNECT_TOKEN_NONCE_BYTES],
        private_key: &Key,
    ) -> Result<Box<[u8; CONNECT_TOKEN_PRIVATE_BYTES]>, TokenError> {
        check_address_count(self.server_addresses.len())?;
        let mut buf = Box::new([0u8; CONNECT_TOKEN_PRIVATE_BYTES]);
        self.write(&mut buf);
        let aad = private_aad(protocol_id, expire_timestamp);
        // Sealing fails only for messages longer than the cipher's limit, far above 1008 bytes.
        crypto::seal_x(private_key, nonce, &aad, &mut buf[..])
            .map_err(|_| TokenError::Malformed)?;
        Ok(buf)
    }

    /// Decrypts and reads the 1024 encrypted bytes of a token or request.
    pub fn open(
        private_data: &[u8; CONNECT_TOKEN_PRIVATE_BYTES],
        protocol_id: u64,
        expire_timestamp: u64,
        nonce: &[u8; CONNECT_TOKEN_NONCE_BYTES],
        private_key: &Key,
    ) -> Result<Self, TokenError> {
        let mut buf = *private_data;
        let aad = private_aad(protocol_id, expire_timestamp);
        crypto::open_x(private_key, nonce, &aad, &mut buf[..])
            .map_err(|_| TokenError::DecryptFailed)?;
        Self::read(&buf[..CONNECT_TOKEN_PRIVATE_BYTES - MAC_BYTES])
    }
}

impl ConnectToken {
    /// The 2048 bytes the backend sends to the client.
    pub fn to_bytes(&self) -> Box<[u8; CONNECT_TOKEN_BYTES]> {
        let mut buf = Box::new([0u8; CONNECT_TOKEN_BYTES]);
        let mut w = Writer::new(&mut buf[..]);
        w.bytes(&VERSION_INFO);
        w.u64(self.protocol_id);
        w.u64(self.create_timestamp);
        w.u64(self.expire_timestamp);
        w.bytes(&self.nonce);
        w.bytes(&self.private_data[..]);
        w.u32(self.timeout_seconds as u32);
        // A token built in this process has 1 to 32 addresses; one that does not is cut to 32
        // rather than overflowing the layout (and will be refused by servers).
        let n = self.server_addresses.len().min(MAX_SERVER_ADDRESSES);
        write_addresses(&mut w, &self.server_addresses[..n]);
        w.bytes(&self.client_to_server_key);
        w.bytes(&self.server_to_client_key);
        debug_assert!(w.position() <= CONNECT_TOKEN_BYTES);
        buf
    }

    /// Reads a token as the client receives it, with the checks the standard asks of a client:
    /// version, 1 to 32 addresses of known types, created no later than it expires.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() != CONNECT_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let mut r = Reader::new(bytes);
        if r.array::<13>().ok_or(TokenError::Malformed)? != VERSION_INFO {
            return Err(TokenError::BadVersion);
        }
        let protocol_id = r.u64().ok_or(TokenError::Malformed)?;
        let create_timestamp = r.u64().ok_or(TokenError::Malformed)?;
        let expire_timestamp = r.u64().ok_or(TokenError::Malformed)?;
        if create_timestamp > expire_timestamp {
            return Err(TokenError::CreatedAfterExpiry);
        }
        let nonce = r.array().ok_or(TokenError::Malformed)?;
        let private_data = Box::new(r.array().ok_or(TokenError::Malformed)?);
        let timeout_seconds = r.u32().ok_or(TokenError::Malformed)? as i32;
        let server_addresses = read_addresses(&mut r)?;
        let client_to_server_key = r.array().ok_or(TokenError::Malformed)?;
        let server_to_client_key = r.array().ok_or(TokenError::Malformed)?;
        Ok(Self {
            protocol_id,
            create_timestamp,
            expire_timestamp,
            nonce,
            private_data,
            timeout_seconds,
            server_addresses,
            client_to_server_key,
            server_to_client_key,
        })
    }

    /// Decrypts the private part with the key shared by the backend and the servers.
    pub fn open_private(&self, private_key: &Key) -> Result<PrivateConnectToken, TokenError> {
        PrivateConnectToken::open(
            &self.private_data,
            self.protocol_id,
            self.expire_timestamp,
            &self.nonce,
            private_key,
        )
    }
}

/// What the server hands the client in a challenge and expects back in the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChallengeToken {
    pub(super) client_id: u64,
    pub(super) user_data: UserData,
}

impl ChallengeToken {
    pub(super) fn seal(&self, key: &Key, sequence: u64) -> [u8; CHALLENGE_TOKEN_BYTES] {
        let mut buf = [0u8; CHALLENGE_TOKEN_BYTES];
        let mut w = Writer::new(&mut buf);
        w.u64(self.client_id);
        w.bytes(&self.user_data);
        // Sealing 284 bytes cannot exceed the cipher's limit.
        let _ = crypto::seal(key, sequence, &[], &mut buf);
        buf
    }

    pub(super) fn open(
        bytes: &[u8; CHALLENGE_TOKEN_BYTES],
        key: &Key,
        sequence: u64,
    ) -> Option<Self> {
        let mut buf = *bytes;
        crypto::open(key, sequence, &[], &mut buf).ok()?;
        let mut r = Reader::new(&buf);
        Some(Self {
            client_id: r.u64()?,
            user_data: r.array()?,
        })
    }
}
