//! `Packet::decode` on arbitrary bytes: never panics, and whatever decodes re-encodes to a
//! packet that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapsync::packet::{MAX_PACKET_BYTES, Packet};

fuzz_target!(|data: &[u8]| {
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
});
