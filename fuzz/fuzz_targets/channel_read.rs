//! `Channels::read_packet` on a default config, fed a sequence of arbitrary sections with
//! time moving between them: never panics, and the receive queue only holds what the
//! channel limits allow.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use snapsync::channel::{Channels, ChannelsConfig};

/// Splits the input into sections: a u16 little-endian length, then that many bytes.
fn sections(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (len, rest) = data.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
        let (section, rest) = rest.split_at(len);
        data = rest;
        Some(section)
    })
}

fuzz_target!(|data: &[u8]| {
    let base = Instant::now();
    let mut channels = Channels::new(ChannelsConfig::default());
    for (i, section) in sections(data).enumerate() {
        let now = base + Duration::from_millis(10 * i as u64);
        let before = channels.invalid_count();
        let result = channels.read_packet(now, section);
        assert_eq!(
            result.is_err(),
            channels.invalid_count() == before + 1,
            "every rejection counts once"
        );
        while let Some((channel, message)) = channels.receive() {
            assert!(usize::from(channel) < channels.channel_count());
            assert!(message.len() <= snapsync::codec::MAX_DECODE_BYTES);
        }
        channels.handle_timeout(now);
    }
});
