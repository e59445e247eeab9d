//! Against netcode-official (the netcode reference in Rust, a dev-dependency): each side's
//! client connects to the other's server over real UDP on 127.0.0.1, tokens minted by either
//! are accepted by the other, and every datagram it sends is byte-equal to what this module
//! writes from the same keys, nonce, sequence and timestamps.
//!
//! Time is virtual on both sides (each takes it as an argument); only the datagrams are real,
//! so a run of several token timeouts takes about a second.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::packet::{self, Request};
use super::token::seal_connect_token;
use super::*;

const PROTOCOL_ID: u64 = 0x5a5a_0102_0304_0506;
const PRIVATE_KEY: Key = [0x42; 32];
/// The token's timeout: the runs below last several times longer.
const TIMEOUT_SECONDS: i32 = 2;
const STEP_SECONDS: f64 = 0.01;
/// Virtual seconds of payload exchange after connecting: past the timeout, so keep-alives and
/// payloads must be what keeps both sides connected.
const EXCHANGE_SECONDS: f64 = 5.0;
/// Bounds every loop (15 virtual seconds; about as many real milliseconds).
const MAX_STEPS: usize = 1500;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    socket
}

fn receive_all(socket: &UdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => out.push((from, buf[..n].to_vec())),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
            Err(e) => panic!("receive failed: {e}"),
        }
    }
}

/// Decrypts each datagram with `key` and writes it again with this module's encoder and the
/// same sequence: the bytes must be equal. Returns the packet kinds seen.
fn assert_wire_equal(datagrams: &[Vec<u8>], token: &ConnectToken, key: &Key) -> BTreeSet<String> {
    let request = Request {
        protocol_id: token.protocol_id,
        expire_timestamp: token.expire_timestamp,
        nonce: token.nonce,
        private_data: *token.private_data,
    }
    .write();
    let mut kinds = BTreeSet::new();
    for d in datagrams {
        if d[0] == 0 {
            assert_eq!(d, &request, "connection request");
            kinds.insert("Request".to_string());
            continue;
        }
        let header = packet::peek(d).unwrap();
        let mut scratch = [0u8; MAX_PACKET_BYTES];
        let (sequence, p) = packet::open(d, header, PROTOCOL_ID, key, None, &mut scratch).unwrap();
        let mut ours = [0u8; MAX_PACKET_BYTES];
        let len = packet::write(&p, sequence, PROTOCOL_ID, key, &mut ours).unwrap();
        assert_eq!(
            &ours[..len],
            &d[..],
            "{:?} with sequence {sequence}",
            header.kind
        );
        kinds.insert(format!("{:?}", header.kind));
    }
    kinds
}

#[test]
fn netcode_official_client_connects_to_our_server() {
    let socket = socket();
    let address = socket.local_addr().unwrap();
    let start = Instant::now();
    let config = ServerConfig::new(PROTOCOL_ID, PRIVATE_KEY, address).with_max_clients(4);
    let mut server = Server::new(config, start).unwrap();
    let user_data = [9u8; USER_DATA_BYTES];
    // Minted by the other implementation, accepted here.
    let token_bytes = netcode::generate_connect_token(
        &[address],
        &[address],
        30,
        TIMEOUT_SECONDS,
        77,
        PROTOCOL_ID,
        &PRIVATE_KEY,
        &user_data,
    )
    .unwrap();
    let token = ConnectToken::from_bytes(&token_bytes).unwrap();
    let mut client = netcode::Client::new("127.0.0.1:0".parse().unwrap(), 0.0).unwrap();
    client.connect(&token_bytes).unwrap();

    let mut from_client = Vec::new();
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let (mut connected, mut disconnected) = (None, false);
    let (mut to_server, mut to_client) = (0, 0);
    for i in 0..MAX_STEPS {
        let t = i as f64 * STEP_SECONDS;
        let now = start + Duration::from_secs_f64(t);
        client.update(t);
        let exchanging = connected.is_some_and(|(_, at)| t < at + EXCHANGE_SECONDS);
        if exchanging && client.state() == netcode::ClientState::Connected && i % 10 == 0 {
            client.send_packet(&[i as u8; 100]).unwrap();
        }
        while let Some((payload, _)) = client.receive_packet() {
            assert_eq!(payload, vec![0xab; 1200]);
            to_client += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
        for (from, d) in receive_all(&socket) {
            server.handle_datagram(now, unix_now(), from, &d);
            from_client.push(d);
        }
        server.handle_timeout(now);
        while let Some(event) = server.poll_event() {
            match event {
                ServerEvent::ClientConnected {
                    client,
                    client_id,
                    user_data: data,
                    ..
                } => {
                    assert_eq!((client_id, data[0]), (77, 9));
                    connected = Some((client, t));
                }
                ServerEvent::Payload { payload, .. } => {
                    assert_eq!(payload.len(), 100);
                    to_server += 1;
                }
                ServerEvent::ClientDisconnected { reason, .. } => {
                    assert_eq!(reason, DisconnectReason::ClientDisconnected);
                    disconnected = true;
                }
            }
        }
        if let Some((c, at)) = connected
            && !disconnected
        {
            if t < at + EXCHANGE_SECONDS && i % 10 == 5 {
                server.send_payload(now, c, &[0xab; 1200]).unwrap();
            }
            if t >= at + EXCHANGE_SECONDS && client.state() == netcode::ClientState::Connected {
                client.disconnect();
            }
        }
        while let Some(tx) = server.poll_transmit(now, &mut buf) {
            socket.send_to(&buf[..tx.len], tx.destination).unwrap();
        }
        if disconnected {
            break;
        }
    }
    assert!(
        disconnected,
        "the other client's disconnect reached our server"
    );
    assert!(
        to_server >= 45 && to_client >= 45,
        "{to_server} {to_client}"
    );
    let dropped = server.stats().dropped;
    assert_eq!(
        dropped.decrypt_failed + dropped.replayed + dropped.token_invalid,
        0,
        "{dropped:?}"
    );
    let kinds = assert_wire_equal(&from_client, &token, &token.client_to_server_key);
    for kind in ["Request", "Response", "KeepAlive", "Payload", "Disconnect"] {
        assert!(kinds.contains(kind), "{kinds:?}");
    }
}

#[test]
fn our_client_connects_to_netcode_official_server() {
    let mut server = netcode::Server::new(
        "127.0.0.1:0".parse().unwrap(),
        PROTOCOL_ID,
        &PRIVATE_KEY,
        0.0,
    )
    .unwrap();
    server.start(1).unwrap();
    let address = server.address();
    let settings = |client_id| TokenSettings {
        protocol_id: PROTOCOL_ID,
        client_id,
        server_addresses: vec![address],
        expire_seconds: 30,
        timeout_seconds: TIMEOUT_SECONDS,
        user_data: [client_id as u8; USER_DATA_BYTES],
    };
    // Minted here, accepted there.
    let token = generate_connect_token(unix_now(), &settings(88), &PRIVATE_KEY).unwrap();
    let late_token = generate_connect_token(unix_now(), &settings(89), &PRIVATE_KEY).unwrap();
    let start = Instant::now();
    let (socket, late_socket) = (self::socket(), self::socket());
    let mut client = Client::new(start, &token.to_bytes()[..]).unwrap();
    let mut late: Option<Client> = None;

    let (mut from_server, mut from_server_late) = (Vec::new(), Vec::new());
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let (mut connected, mut disconnected) = (None, false);
    let (mut to_server, mut to_client) = (0, 0);
    for i in 0..MAX_STEPS {
        let t = i as f64 * STEP_SECONDS;
        let now = start + Duration::from_secs_f64(t);
        server.update(t);
        while let Some(event) = server.next_event() {
            match event {
                netcode::ServerEvent::ClientConnected { client_index } => {
                    assert_eq!(server.client_id(client_index), 88);
                    assert_eq!(server.client_user_data(client_index), Some(&[88; 256]));
                    connected = Some((client_index, t));
                }
                netcode::ServerEvent::ClientDisconnected { reason, .. } => {
                    assert_eq!(reason, netcode::DisconnectReason::ClientDisconnect);
                    disconnected = true;
                }
            }
        }
        if let Some((index, at)) = connected {
            while server.receive_packet(index).is_some() {
                to_server += 1;
            }
            if t < at + EXCHANGE_SECONDS && i % 10 == 5 && server.client_connected(index) {
                server.send_packet(index, &[0xcd; 1200]).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(1));
        for (from, d) in receive_all(&socket) {
            client.handle_datagram(now, from, &d);
            from_server.push(d);
        }
        client.handle_timeout(now);
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::Connected { max_clients, .. } => assert_eq!(max_clients, 1),
                ClientEvent::Payload { payload, .. } => {
                    assert_eq!(payload, vec![0xcd; 1200]);
                    to_client += 1;
                }
                ClientEvent::Disconnected { state } => assert_eq!(state, ClientState::Disconnected),
            }
        }
        if let Some((_, at)) = connected {
            if t < at + EXCHANGE_SECONDS && i % 10 == 0 {
                client.send_payload(now, &[i as u8; 100]).unwrap();
            }
            // A second client while the one slot is taken: denied.
            if late.is_none() {
                late = Some(Client::with_token(now, late_token.clone()));
            }
            if t >= at + EXCHANGE_SECONDS && client.is_connected() {
                client.disconnect(now);
            }
        }
        while let Some(tx) = client.poll_transmit(now, &mut buf) {
            assert_eq!(tx.destination, address);
            socket.send_to(&buf[..tx.len], tx.destination).unwrap();
        }
        if let Some(late) = &mut late {
            for (from, d) in receive_all(&late_socket) {
                late.handle_datagram(now, from, &d);
                from_server_late.push(d);
            }
            while let Some(tx) = late.poll_transmit(now, &mut buf) {
                late_socket.send_to(&buf[..tx.len], tx.destination).unwrap();
            }
        }
        if disconnected {
            break;
        }
    }
    assert!(disconnected, "our disconnect reached the other server");
    assert!(
        to_server >= 45 && to_client >= 45,
        "{to_server} {to_client}"
    );
    assert_eq!(late.map(|c| c.state()), Some(ClientState::ConnectionDenied));
    assert_eq!(client.stats().dropped.total(), 0, "{:?}", client.stats());
    let kinds = assert_wire_equal(&from_server, &token, &token.server_to_client_key);
    for kind in ["Challenge", "KeepAlive", "Payload"] {
        assert!(kinds.contains(kind), "{kinds:?}");
    }
    let late_token = &late_token;
    let kinds = assert_wire_equal(
        &from_server_late,
        late_token,
        &late_token.server_to_client_key,
    );
    assert!(kinds.contains("Denied"), "{kinds:?}");
}

#[test]
fn connect_token_bytes_equal_netcode_official() {
    let addresses: Vec<SocketAddr> = [
        "127.0.0.1:40000",
        "[::1]:40001",
        "[2001:db8:85a3::8a2e:370:7334]:5",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let user_data: UserData = std::array::from_fn(|i| (i * 7) as u8);
    let theirs = netcode::generate_connect_token(
        &addresses,
        &addresses,
        45,
        7,
        0x0102_0304_0506_0708,
        PROTOCOL_ID,
        &PRIVATE_KEY,
        &user_data,
    )
    .unwrap();
    // Read it here, then write it again from the same inputs: its timestamps, nonce and keys.
    let token = ConnectToken::from_bytes(&theirs).unwrap();
    let private = token.open_private(&PRIVATE_KEY).unwrap();
    assert_eq!(private.server_addresses, addresses);
    assert_eq!(private.user_data, user_data);
    let settings = TokenSettings {
        protocol_id: PROTOCOL_ID,
        client_id: private.client_id,
        server_addresses: private.server_addresses.clone(),
        expire_seconds: token.expire_timestamp - token.create_timestamp,
        timeout_seconds: private.timeout_seconds,
        user_data,
    };
    let ours = seal_connect_token(
        token.create_timestamp,
        &settings,
        &PRIVATE_KEY,
        token.nonce,
        private.client_to_server_key,
        private.server_to_client_key,
    )
    .unwrap();
    assert_eq!(
        ours.private_data, token.private_data,
        "encrypted private token"
    );
    assert_eq!(&ours.to_bytes()[..], &theirs[..], "whole connect token");
}
