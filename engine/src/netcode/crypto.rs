//! The two AEADs netcode names, from RustCrypto's `chacha20poly1305`: XChaCha20-Poly1305 for
//! the private connect token, ChaCha20-Poly1305 (IETF, 96-bit nonce) for challenge tokens and
//! packets. The tag check (constant time) is the AEAD's own.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag, XChaCha20Poly1305};

use super::{KEY_BYTES, Key, MAC_BYTES};

/// A decryption that failed its tag check (or a buffer too short to hold a tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AeadError;

/// A fresh 32-byte key from the operating system's randomness (through `rand`'s thread RNG,
/// which is seeded and reseeded from the OS).
pub fn generate_key() -> Key {
    rand::random::<[u8; KEY_BYTES]>()
}

/// The 96-bit nonce netcode builds from a 64-bit sequence: four zero bytes, then the sequence
/// little-endian.
pub(super) fn sequence_nonce(sequence: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&sequence.to_le_bytes());
    nonce
}

/// Encrypts `buf[..len - 16]` in place and writes the tag into its last 16 bytes.
pub(super) fn seal(key: &Key, sequence: u64, aad: &[u8], buf: &mut [u8]) -> Result<(), AeadError> {
    let (message, mac) = buf.split_last_chunk_mut::<MAC_BYTES>().ok_or(AeadError)?;
    let nonce = sequence_nonce(sequence);
    let tag = ChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(&nonce.into(), aad, message.into())
        .map_err(|_| AeadError)?;
    mac.copy_from_slice(&tag);
    Ok(())
}

/// Checks the tag in the last 16 bytes of `buf` and decrypts the rest in place.
pub(super) fn open(key: &Key, sequence: u64, aad: &[u8], buf: &mut [u8]) -> Result<(), AeadError> {
    let (message, mac) = buf.split_last_chunk_mut::<MAC_BYTES>().ok_or(AeadError)?;
    let nonce = sequence_nonce(sequence);
    ChaCha20Poly1305::new(key.into())
        .decrypt_inout_detached(&nonce.into(), aad, message.into(), &Tag::from(*mac))
        .map_err(|_| AeadError)
}

/// [`seal`] with XChaCha20-Poly1305 and a 24-byte nonce.
pub(super) fn seal_x(
    key: &Key,
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadError> {
    let (message, mac) = buf.split_last_chunk_mut::<MAC_BYTES>().ok_or(AeadError)?;
    let tag = XChaCha20Poly1305::new(key.into())
        .encrypt_inout_detached(nonce.into(), aad, message.into())
        .map_err(|_| AeadError)?;
    mac.copy_from_slice(&tag);
    Ok(())
}

/// [`open`] with XChaCha20-Poly1305 and a 24-byte nonce.
pub(super) fn open_x(
    key: &Key,
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<(), AeadError> {
    let (message, mac) = buf.split_last_chunk_mut::<MAC_BYTES>().ok_or(AeadError)?;
    XChaCha20Poly1305::new(key.into())
        .decrypt_inout_detached(nonce.into(), aad, message.into(), &Tag::from(*mac))
        .map_err(|_| AeadError)
}
