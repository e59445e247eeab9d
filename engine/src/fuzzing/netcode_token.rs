//! The `netcode_token` target.

use std::time::Instant;

// Sealed with the cipher itself, as another backend would, rather than with the engine's own
// sealing: a plaintext that opens then shows the engine's associated data is the standard's,
// not merely the same as its own.
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

use super::backend::{KEY, NETCODE_CLIENT_ADDR, NETCODE_SERVER_ADDR, PROTOCOL_ID, UNIX};
use crate::netcode::{
    self, CONNECT_TOKEN_BYTES, CONNECT_TOKEN_NONCE_BYTES, CONNECT_TOKEN_PRIVATE_BYTES,
    ConnectToken, MAC_BYTES, PrivateConnectToken, Server, ServerConfig, ServerStats,
};

const EXPIRE: u64 = UNIX + 60;
const NONCE: [u8; CONNECT_TOKEN_NONCE_BYTES] = [9; CONNECT_TOKEN_NONCE_BYTES];

/// The private token's plaintext (up to 1008 bytes), sealed under `KEY` as a backend would.
fn seal_private(plain: &[u8]) -> [u8; CONNECT_TOKEN_PRIVATE_BYTES] {
    let mut buf = [0u8; CONNECT_TOKEN_PRIVATE_BYTES];
    let n = plain.len().min(CONNECT_TOKEN_PRIVATE_BYTES - MAC_BYTES);
    buf[..n].copy_from_slice(&plain[..n]);
    let mut aad = netcode::VERSION_INFO.to_vec();
    aad.extend_from_slice(&PROTOCOL_ID.to_le_bytes());
    aad.extend_from_slice(&EXPIRE.to_le_bytes());
    let (message, mac) = buf
        .split_last_chunk_mut::<MAC_BYTES>()
        .expect("the private token is longer than its tag");
    let tag = XChaCha20Poly1305::new(&KEY.into())
        .encrypt_inout_detached(&NONCE.into(), &aad, message.into())
        .expect("1008 bytes are within the cipher's limit");
    mac.copy_from_slice(&tag);
    buf
}

/// A connection request carrying `private`.
fn request(private: &[u8; CONNECT_TOKEN_PRIVATE_BYTES]) -> Vec<u8> {
    let mut r = vec![0u8];
    r.extend_from_slice(&netcode::VERSION_INFO);
    r.extend_from_slice(&PROTOCOL_ID.to_le_bytes());
    r.extend_from_slice(&EXPIRE.to_le_bytes());
    r.extend_from_slice(&NONCE);
    r.extend_from_slice(private);
    r
}

/// Connect tokens from arbitrary bytes. `ConnectToken::from_bytes` on the bytes (and on them
/// zero-padded to a token's 2048, so the parser behind the length check is reached), then
/// `open_private` with a fixed key; and the bytes sealed for real as a private token's
/// plaintext, so the parser behind the decryption is reached too. The same private part goes
/// to a netcode `Server` as a connection request, with the raw bytes as a datagram of their
/// own. Whatever parses writes back to the same token, and what opens seals back to the same
/// bytes; every request is either answered with one challenge no larger than itself, or
/// dropped and counted once (a disconnect from a stranger counts as a late goodbye).
pub fn netcode_token(data: &[u8]) {
    netcode_token_stats(data);
}

/// [`netcode_token`], returning the server's counters: a twin fed a valid plaintext checks
/// that its request was answered, so the accepting path is known to be reached.
pub fn netcode_token_stats(data: &[u8]) -> ServerStats {
    let mut padded = data.to_vec();
    padded.resize(CONNECT_TOKEN_BYTES, 0);
    for bytes in [data, &padded[..]] {
        if let Ok(token) = ConnectToken::from_bytes(bytes) {
            assert_eq!(
                ConnectToken::from_bytes(&token.to_bytes()[..]),
                Ok(token.clone())
            );
            // Only what the key's holder sealed opens: sealing what opened gives back the
            // same bytes.
            if let Ok(p) = token.open_private(&KEY) {
                let sealed = p.seal(
                    token.protocol_id,
                    token.expire_timestamp,
                    &token.nonce,
                    &KEY,
                );
                assert_eq!(sealed.as_ref(), Ok(&token.private_data));
            }
        }
    }
    let private = seal_private(data);
    if let Ok(p) = PrivateConnectToken::open(&private, PROTOCOL_ID, EXPIRE, &NONCE, &KEY) {
        let again = p
            .seal(PROTOCOL_ID, EXPIRE, &NONCE, &KEY)
            .expect("a token that parsed has 1 to 32 addresses");
        assert_eq!(
            PrivateConnectToken::open(&again, PROTOCOL_ID, EXPIRE, &NONCE, &KEY),
            Ok(p)
        );
    }

    let from = NETCODE_CLIENT_ADDR;
    let now = Instant::now();
    let config = ServerConfig::new(PROTOCOL_ID, KEY, NETCODE_SERVER_ADDR);
    let mut server = Server::new(config, now).expect("a valid config");
    let sealed = request(&private);
    let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
    for (i, d) in [data, &sealed[..]].iter().enumerate() {
        server.handle_datagram(now, UNIX, from, d);
        let s = server.stats();
        assert_eq!(s.packets_in, i as u64 + 1);
        // A disconnect from an address with no connection is a late goodbye, not a drop.
        let answered = s.challenges_sent + s.late_disconnects;
        assert_eq!(s.dropped.total() + answered, i as u64 + 1, "{s:?}");
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            assert_eq!(t.destination, from);
            assert!(
                t.len <= d.len(),
                "{} byte reply to {} bytes",
                t.len,
                d.len()
            );
        }
    }
    assert_eq!(server.client_count(), 0);
    server.stats()
}
