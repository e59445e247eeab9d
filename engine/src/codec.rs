//! The one place that calls bincode.
//!
//! Application types (messages, snapshot components) cross the wire as serde values encoded
//! with bincode 2.0.1 in its standard configuration (little-endian, variable-length integers)
//! with a decode size limit: a string claiming more than [`MAX_DECODE_BYTES`] is refused as
//! [`CodecError::TooLarge`] before anything is allocated for it. A sequence (`Vec<T>`) is read
//! element by element through serde, so the limit never sees its length; a hostile one makes
//! serde reserve at most 1 MiB (its cautious preallocation cap), whatever it claims, before the
//! decode fails on the missing elements. Both are measured in `tests/decode_allocation.rs`.
//! Swapping the serializer is a change to this file only.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest string one decode accepts, in bytes (the largest reliable message).
pub const MAX_DECODE_BYTES: usize = 256 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be serialized.
    #[error("encode failed: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The bytes claim a value larger than [`MAX_DECODE_BYTES`]; refused before allocating it.
    #[error("decoded value would exceed {MAX_DECODE_BYTES} bytes")]
    TooLarge,
    /// Bytes were left over after the value.
    #[error("decode left {0} trailing bytes")]
    TrailingBytes(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Serialize `value` to a new byte vector.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Serialize `value`, appending to `out`: written straight into its memory, so a caller
/// that keeps `out` from one value to the next allocates nothing once it is large enough.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// Deserialize exactly one value that fills all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

/// Deserialize one value from the front of `bytes`; returns it and how many bytes it used.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::decode_from_slice(bytes, config()).map_err(decode_error)
}

/// Deserialize exactly one value that fills all of `bytes`, borrowing from them where its
/// type does (`&[u8]`, `&str`) instead of copying: the same bytes as [`decode`] reads.
pub fn decode_borrowed<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    let (value, used) =
        bincode::serde::borrow_decode_from_slice(bytes, config()).map_err(decode_error)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

fn decode_error(e: bincode::error::DecodeError) -> CodecError {
    match e {
        bincode::error::DecodeError::LimitExceeded => CodecError::TooLarge,
        e => CodecError::Decode(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Chat {
        from: u32,
        text: String,
    }

    #[test]
    fn round_trip() {
        let c = Chat {
            from: 7,
            text: "gg".into(),
        };
        let bytes = encode(&c).unwrap();
        assert_eq!(decode::<Chat>(&bytes).unwrap(), c);
    }

    #[test]
    fn huge_length_prefix_is_refused_by_the_limit() {
        // A String claiming 10 million bytes (varint 0xFC + u32), and one claiming 2^62
        // (0xFD + u64): refused by the size limit before the bytes are read.
        let mut bytes = vec![0xFC];
        bytes.extend_from_slice(&(10_000_000u32).to_le_bytes());
        assert!(matches!(
            decode::<String>(&bytes),
            Err(CodecError::TooLarge)
        ));
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
        assert!(matches!(
            decode::<String>(&bytes),
            Err(CodecError::TooLarge)
        ));
        // A sequence is read element by element through serde, so the limit never sees its
        // length: it fails at the end of the input instead. How much either allocates is
        // measured in tests/decode_allocation.rs, which needs a global allocator of its own.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(
            decode::<Vec<u8>>(&bytes),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&5u32).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u32>(&bytes),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
