//! Connect tokens from arbitrary bytes. `ConnectToken::from_bytes` on the bytes (and on them
//! zero-padded to a token's 2048, so the parser behind the length check is reached), then
//! `open_private` with a fixed key; and the bytes sealed for real as a private token's
//! plaintext, so the parser behind the decryption is reached too. The same private parts go
//! to a netcode `Server` as connection requests, with the raw bytes as a datagram of their
//! own. Never panics; whatever parses writes back to the same token, and only what was
//! sealed under the key opens; every request is either answered with one challenge no larger
//! than itself, or dropped and counted once (a disconnect from a stranger counts as a late
//! goodbye).
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use libfuzzer_sys::fuzz_target;
use snapsync::netcode::{
    self, CONNECT_TOKEN_BYTES, CONNECT_TOKEN_NONCE_BYTES, CONNECT_TOKEN_PRIVATE_BYTES,
    ConnectToken, Key, MAC_BYTES, PrivateConnectToken, Server, ServerConfig,
};

const KEY: Key = [0x42; 32];
const PROTOCOL_ID: u64 = 0x5EC0_F022;
const UNIX: u64 = 1_800_000_000;
const EXPIRE: u64 = UNIX + 60;
const NONCE: [u8; CONNECT_TOKEN_NONCE_BYTES] = [9; CONNECT_TOKEN_NONCE_BYTES];

/// The private token's plaintext (1008 bytes), sealed under `KEY` as a backend would.
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

fuzz_target!(|data: &[u8]| {
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

    let server_addr: SocketAddr = "10.0.0.1:40000".parse().expect("literal");
    let from: SocketAddr = "10.0.0.2:50000".parse().expect("literal");
    let now = Instant::now();
    let config = ServerConfig::new(PROTOCOL_ID, KEY, server_addr);
    let mut server = Server::new(config, now).expect("a valid config");
    let sealed = request(&private);
    let datagrams = [data, &sealed[..]];
    let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
    for (i, d) in datagrams.iter().enumerate() {
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
});
