//! The `packet_decode` target.

use crate::packet::{MAX_PACKET_BYTES, Packet};

/// `Packet::decode` on arbitrary bytes: whatever decodes re-encodes to the same length and
/// decodes to the same value.
pub fn packet_decode(data: &[u8]) {
    let Ok(packet) = Packet::decode(data) else {
        return;
    };
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let len = packet
        .encode(&mut buf)
        .expect("a decoded packet fits the maximum size");
    assert_eq!(len, data.len(), "re-encoding keeps the length");
    let again = Packet::decode(&buf[..len]).expect("a re-encoded packet decodes");
    assert_eq!(again, packet);
}
