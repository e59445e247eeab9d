//! The backend of the secure-mode targets: one key, protocol id and unix time, and the
//! connect tokens minted with them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::netcode::{self, Key, TokenSettings, generate_connect_token};

pub(super) const KEY: Key = [0x42; 32];
pub(super) const PROTOCOL_ID: u64 = 0x5EC0_F022;
/// The unix time every server is told it is; tokens are minted at it.
pub(super) const UNIX: u64 = 1_800_000_000;

/// The netcode server of `netcode_token` and `netcode_packet`.
pub const NETCODE_SERVER_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40_000));
/// Where those targets' requests and client come from.
pub(super) const NETCODE_CLIENT_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 50_000));

/// A connect token from this backend for `client_id`, naming only `server`, as its 2048 bytes.
pub fn connect_token(client_id: u64, server: SocketAddr) -> Vec<u8> {
    let settings = TokenSettings {
        protocol_id: PROTOCOL_ID,
        client_id,
        server_addresses: vec![server],
        expire_seconds: 600,
        timeout_seconds: 5,
        user_data: [0; netcode::USER_DATA_BYTES],
    };
    generate_connect_token(UNIX, &settings, &KEY)
        .expect("one address")
        .to_bytes()
        .to_vec()
}
