//! The one place that calls bincode.
//!
//! Application types (messages, snapshot components) cross the wire as serde values encoded
//! with bincode 2.0.1 in its standard configuration (little-endian, variable-length integers)
//! with a decode size limit, so a hostile length prefix can never make the decoder allocate
//! more than [`MAX_DECODE_BYTES`]. Swapping the serializer is a change to this file only.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Upper bound on what one decode may allocate, in bytes (the largest reliable message).
pub const MAX_DECODE_BYTES: usize = 256 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be serialized.
    #[error("encode failed: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type, or exceed the size limit.
    #[error("decode failed: {0}")]
    Decode(String),
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

/// Serialize `value`, appending to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let bytes = encode(value)?;
    out.extend_from_slice(&bytes);
    Ok(())
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
    bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))
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
    fn huge_length_prefix_is_rejected_without_allocating() {
        // A Vec<u8> claiming u64::MAX/2 elements: varint 0xFD + 8 bytes.
        let mut bytes = vec![0xFD];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        let mut bytes = vec![0xFC];
        bytes.extend_from_slice(&(10_000_000u32).to_le_bytes());
        assert!(decode::<String>(&bytes).is_err());
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
