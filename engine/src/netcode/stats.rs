//! Why datagrams were dropped, counted by reason.

/// Why a datagram from the network was dropped. Nothing from the network panics: every such
/// datagram is one of these, counted in [`DropCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Dropped {
    /// Empty, under 18 bytes for an encrypted packet, or shorter than its sequence and tag.
    #[error("too small")]
    TooSmall,
    /// Longer than any valid packet.
    #[error("too large")]
    TooLarge,
    /// Packet type 7 or above.
    #[error("unknown packet type")]
    UnknownType,
    /// A type this side never receives, or not in its current state.
    #[error("unexpected packet type")]
    UnexpectedType,
    /// Sequence byte count outside 1..=8.
    #[error("bad sequence byte count")]
    BadSequenceBytes,
    /// A connection request of other than 1078 bytes.
    #[error("connection request of the wrong size")]
    BadRequestSize,
    /// Version info other than "NETCODE 1.02".
    #[error("wrong version info")]
    BadVersion,
    /// Another game's protocol id.
    #[error("wrong protocol id")]
    BadProtocolId,
    /// The connect token has expired.
    #[error("expired connect token")]
    TokenExpired,
    /// The private connect token did not decrypt: forged, tampered, or another key.
    #[error("forged connect token")]
    TokenInvalid,
    /// The private connect token decrypted but does not parse.
    #[error("malformed connect token")]
    TokenMalformed,
    /// This server's public address is not in the token.
    #[error("server address not in token")]
    WrongServerAddress,
    /// The token was already used from another address.
    #[error("connect token reused")]
    TokenReused,
    /// The address or the client id is already connected.
    #[error("already connected")]
    AlreadyConnected,
    /// A challenge token this server did not make.
    #[error("forged challenge token")]
    ChallengeInvalid,
    /// A sequence already received, or older than the replay window.
    #[error("replayed sequence")]
    Replayed,
    /// The packet failed its AEAD check.
    #[error("decrypt failed")]
    DecryptFailed,
    /// Decrypted, but of the wrong length for its type.
    #[error("wrong length for its type")]
    BadLength,
    /// A payload over 1200 bytes.
    #[error("payload too large")]
    PayloadTooLarge,
    /// From an address with no connection or handshake in progress.
    #[error("unknown address")]
    UnknownAddress,
    /// No free slot: answered with a connection denied packet.
    #[error("server full")]
    ServerFull,
    /// Too many handshakes in progress to start another.
    #[error("too many handshakes in progress")]
    HandshakesFull,
}

/// How many reasons [`DropCounts`] counts.
pub const DROP_REASONS: usize = 22;

/// Dropped datagrams, one counter per [`Dropped`] reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropCounts {
    /// [`Dropped::TooSmall`].
    pub too_small: u64,
    /// [`Dropped::TooLarge`].
    pub too_large: u64,
    /// [`Dropped::UnknownType`].
    pub unknown_type: u64,
    /// [`Dropped::UnexpectedType`].
    pub unexpected_type: u64,
    /// [`Dropped::BadSequenceBytes`].
    pub bad_sequence_bytes: u64,
    /// [`Dropped::BadRequestSize`].
    pub bad_request_size: u64,
    /// [`Dropped::BadVersion`].
    pub bad_version: u64,
    /// [`Dropped::BadProtocolId`].
    pub bad_protocol_id: u64,
    /// [`Dropped::TokenExpired`].
    pub token_expired: u64,
    /// [`Dropped::TokenInvalid`].
    pub token_invalid: u64,
    /// [`Dropped::TokenMalformed`].
    pub token_malformed: u64,
    /// [`Dropped::WrongServerAddress`].
    pub wrong_server_address: u64,
    /// [`Dropped::TokenReused`].
    pub token_reused: u64,
    /// [`Dropped::AlreadyConnected`].
    pub already_connected: u64,
    /// [`Dropped::ChallengeInvalid`].
    pub challenge_invalid: u64,
    /// [`Dropped::Replayed`].
    pub replayed: u64,
    /// [`Dropped::DecryptFailed`].
    pub decrypt_failed: u64,
    /// [`Dropped::BadLength`].
    pub bad_length: u64,
    /// [`Dropped::PayloadTooLarge`].
    pub payload_too_large: u64,
    /// [`Dropped::UnknownAddress`].
    pub unknown_address: u64,
    /// [`Dropped::ServerFull`].
    pub server_full: u64,
    /// [`Dropped::HandshakesFull`].
    pub handshakes_full: u64,
}

impl DropCounts {
    /// Counts one drop.
    pub fn count(&mut self, reason: Dropped) {
        let counter = match reason {
            Dropped::TooSmall => &mut self.too_small,
            Dropped::TooLarge => &mut self.too_large,
            Dropped::UnknownType => &mut self.unknown_type,
            Dropped::UnexpectedType => &mut self.unexpected_type,
            Dropped::BadSequenceBytes => &mut self.bad_sequence_bytes,
            Dropped::BadRequestSize => &mut self.bad_request_size,
            Dropped::BadVersion => &mut self.bad_version,
            Dropped::BadProtocolId => &mut self.bad_protocol_id,
            Dropped::TokenExpired => &mut self.token_expired,
            Dropped::TokenInvalid => &mut self.token_invalid,
            Dropped::TokenMalformed => &mut self.token_malformed,
            Dropped::WrongServerAddress => &mut self.wrong_server_address,
            Dropped::TokenReused => &mut self.token_reused,
            Dropped::AlreadyConnected => &mut self.already_connected,
            Dropped::ChallengeInvalid => &mut self.challenge_invalid,
            Dropped::Replayed => &mut self.replayed,
            Dropped::DecryptFailed => &mut self.decrypt_failed,
            Dropped::BadLength => &mut self.bad_length,
            Dropped::PayloadTooLarge => &mut self.payload_too_large,
            Dropped::UnknownAddress => &mut self.unknown_address,
            Dropped::ServerFull => &mut self.server_full,
            Dropped::HandshakesFull => &mut self.handshakes_full,
        };
        *counter += 1;
    }

    /// Every count with its reason's name (the field's), in the fields' order: what a
    /// metrics label or a log line shows.
    pub fn by_reason(&self) -> [(&'static str, u64); DROP_REASONS] {
        // Taken apart field by field, so that a new reason cannot be left out.
        let Self {
            too_small,
            too_large,
            unknown_type,
            unexpected_type,
            bad_sequence_bytes,
            bad_request_size,
            bad_version,
            bad_protocol_id,
            token_expired,
            token_invalid,
            token_malformed,
            wrong_server_address,
            token_reused,
            already_connected,
            challenge_invalid,
            replayed,
            decrypt_failed,
            bad_length,
            payload_too_large,
            unknown_address,
            server_full,
            handshakes_full,
        } = *self;
        [
            ("too_small", too_small),
            ("too_large", too_large),
            ("unknown_type", unknown_type),
            ("unexpected_type", unexpected_type),
            ("bad_sequence_bytes", bad_sequence_bytes),
            ("bad_request_size", bad_request_size),
            ("bad_version", bad_version),
            ("bad_protocol_id", bad_protocol_id),
            ("token_expired", token_expired),
            ("token_invalid", token_invalid),
            ("token_malformed", token_malformed),
            ("wrong_server_address", wrong_server_address),
            ("token_reused", token_reused),
            ("already_connected", already_connected),
            ("challenge_invalid", challenge_invalid),
            ("replayed", replayed),
            ("decrypt_failed", decrypt_failed),
            ("bad_length", bad_length),
            ("payload_too_large", payload_too_large),
            ("unknown_address", unknown_address),
            ("server_full", server_full),
            ("handshakes_full", handshakes_full),
        ]
    }

    /// All drops together.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|&(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_named_after_its_own_count_and_the_total_is_their_sum() {
        // A different count in every field: a name paired with another field's count, or a
        // field left out of the total, shows.
        let counts = DropCounts {
            too_small: 1,
            too_large: 2,
            unknown_type: 3,
            unexpected_type: 4,
            bad_sequence_bytes: 5,
            bad_request_size: 6,
            bad_version: 7,
            bad_protocol_id: 8,
            token_expired: 9,
            token_invalid: 10,
            token_malformed: 11,
            wrong_server_address: 12,
            token_reused: 13,
            already_connected: 14,
            challenge_invalid: 15,
            replayed: 16,
            decrypt_failed: 17,
            bad_length: 18,
            payload_too_large: 19,
            unknown_address: 20,
            server_full: 21,
            handshakes_full: 22,
        };
        let named = counts.by_reason();
        let names = [
            "too_small",
            "too_large",
            "unknown_type",
            "unexpected_type",
            "bad_sequence_bytes",
            "bad_request_size",
            "bad_version",
            "bad_protocol_id",
            "token_expired",
            "token_invalid",
            "token_malformed",
            "wrong_server_address",
            "token_reused",
            "already_connected",
            "challenge_invalid",
            "replayed",
            "decrypt_failed",
            "bad_length",
            "payload_too_large",
            "unknown_address",
            "server_full",
            "handshakes_full",
        ];
        for (i, (name, n)) in named.into_iter().enumerate() {
            assert_eq!((name, n), (names[i], i as u64 + 1));
        }
        assert_eq!(counts.total(), (1..=DROP_REASONS as u64).sum::<u64>());
    }
}
