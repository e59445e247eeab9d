//! Batched UDP in the driver, on real loopback sockets, bounded in time and count: what a
//! flush sends arrives whole and in order at every peer, coalesced receives are split, and
//! oversized datagrams are still counted. The assertions are about what arrives, never about
//! how fast; where a check needs GSO or GRO, it runs only when the kernel offers them.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// The endpoints' clock; tokio's `Instant` is the one the tests wait with.
type StdInstant = std::time::Instant;

/// Longest any test here waits for its datagrams; only a hang reaches it.
const LOOPBACK_LIMIT: Duration = Duration::from_secs(20);

/// An endpoint that sends what the test queues and keeps everything it is handed.
#[derive(Debug, Default)]
struct Recorder {
    outgoing: VecDeque<(SocketAddr, Vec<u8>)>,
    received: Vec<(SocketAddr, Vec<u8>)>,
}

impl Endpoint for Recorder {
    type Event = ();
    fn handle_datagram(&mut self, _now: StdInstant, from: SocketAddr, datagram: &[u8]) {
        self.received.push((from, datagram.to_vec()));
    }
    fn handle_timeout(&mut self, _now: StdInstant) {}
    fn poll_transmit(&mut self, _now: StdInstant, buf: &mut [u8]) -> Option<Transmit> {
        let (destination, bytes) = self.outgoing.pop_front()?;
        buf[..bytes.len()].copy_from_slice(&bytes);
        Some(Transmit {
            destination,
            len: bytes.len(),
        })
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<StdInstant> {
        None
    }
}

async fn recorder() -> Driver<Recorder> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    Driver::new(socket, Recorder::default(), 3)
}

/// Drive every receiver until each holds `want` datagrams, or until the limit.
async fn receive_all(peers: &mut [Driver<Recorder>], want: usize) {
    let end = Instant::now() + LOOPBACK_LIMIT;
    while Instant::now() < end && peers.iter().any(|p| p.endpoint().received.len() < want) {
        for p in peers.iter_mut() {
            p.drive_until(Instant::now() + Duration::from_millis(2))
                .await
                .unwrap();
        }
    }
}

/// A datagram that names its peer and place, and whose size varies with both: runs of equal
/// sizes, shorter ones that end a GSO run, the largest packet, and an empty one.
fn datagram(peer: usize, i: usize) -> Vec<u8> {
    let len = match (peer + i) % 9 {
        0 => 300,
        4 => MAX_PACKET_BYTES,
        7 if i == 3 => 0,
        _ => 1100,
    };
    let mut d: Vec<u8> = (0..len).map(|k| (k * 7 + peer * 13 + i) as u8).collect();
    if len >= 2 {
        d[0] = peer as u8;
        d[1] = i as u8;
    }
    d
}

/// The datagrams in a pcap file, as (destination port, payload), in file order.
fn captured(path: &std::path::Path) -> Vec<(u16, Vec<u8>)> {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut r = pcap_file::pcap::PcapReader::new(file).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        // IPv4 (20 bytes) then UDP: the destination port, then the payload.
        let port = u16::from_be_bytes([p.data[22], p.data[23]]);
        out.push((port, p.data[28..].to_vec()));
    }
    out
}

#[tokio::test(flavor = "current_thread")]
async fn a_flush_to_many_peers_arrives_whole_and_in_order_at_each_and_is_captured() {
    const PEERS: usize = 12;
    const PER_PEER: usize = 25;
    let mut sender = recorder().await;
    let dir = std::env::temp_dir().join(format!("snapsync-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pcap = dir.join("sender.pcap");
    sender.capture_to(&pcap).unwrap();
    let mut peers = Vec::new();
    for _ in 0..PEERS {
        peers.push(recorder().await);
    }
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.local_addr().unwrap()).collect();
    // Let the runtime see the new socket writable first: a send tokio believes would block
    // is dropped, as a full socket buffer's would be.
    sender
        .drive_until(Instant::now() + Duration::from_millis(1))
        .await
        .unwrap();
    // Interleaved, as a server's round robin over its clients hands them out: one flush of
    // 300 datagrams, several batches, every peer's datagrams apart from each other.
    for i in 0..PER_PEER {
        for (peer, &to) in addrs.iter().enumerate() {
            sender
                .endpoint_mut()
                .outgoing
                .push_back((to, datagram(peer, i)));
        }
    }
    sender.flush();
    let total = (PEERS * PER_PEER) as u64;
    let stats = sender.socket_stats();
    assert_eq!((stats.sent, stats.send_errors), (total, 0), "{stats:?}");
    assert!(stats.send_calls <= total, "{stats:?}");
    if sender.udp_offloads().gso_segments > 1 {
        // A batch holds about five of each peer's datagrams, and the sizes break some runs:
        // fewer than half as many calls as datagrams, however the runs fall.
        assert!(
            stats.send_calls < total / 2,
            "runs to one peer leave in one call: {stats:?}"
        );
    }

    receive_all(&mut peers, PER_PEER).await;
    let from = sender.local_addr().unwrap();
    for (peer, p) in peers.iter().enumerate() {
        let want: Vec<(SocketAddr, Vec<u8>)> =
            (0..PER_PEER).map(|i| (from, datagram(peer, i))).collect();
        assert_eq!(p.endpoint().received, want, "peer {peer}");
        let s = p.socket_stats();
        assert_eq!((s.received, s.oversized), (PER_PEER as u64, 0), "{s:?}");
    }

    // The capture holds every datagram as it left: per peer, all of them, in order.
    assert_eq!(sender.captured_packets(), Some(total));
    drop(sender);
    let packets = captured(&pcap);
    assert_eq!(packets.len() as u64, total);
    for (peer, to) in addrs.iter().enumerate() {
        let got: Vec<Vec<u8>> = packets
            .iter()
            .filter(|(port, _)| *port == to.port())
            .map(|(_, d)| d.clone())
            .collect();
        let want: Vec<Vec<u8>> = (0..PER_PEER).map(|i| datagram(peer, i)).collect();
        assert_eq!(got, want, "captured for peer {peer}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A socket outside the driver that sends with GSO where the kernel has it.
struct GsoSender {
    socket: std::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl GsoSender {
    fn new() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let state = quinn_udp::UdpSocketState::new((&socket).into()).unwrap();
        Self { socket, state }
    }

    /// Send `datagrams` (equal sizes, the last may be shorter) to `to` in one call where GSO
    /// is there, else one by one. Returns whether it was one call.
    fn send(&self, to: SocketAddr, datagrams: &[Vec<u8>]) -> bool {
        let segment = datagrams[0].len();
        let gso = self.state.max_gso_segments() >= datagrams.len();
        let send = |contents: &[u8], segment_size| {
            let t = quinn_udp::Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size,
                src_ip: None,
            };
            self.state.try_send((&self.socket).into(), &t).unwrap();
        };
        if gso {
            send(&datagrams.concat(), Some(segment));
        } else {
            for d in datagrams {
                send(d, None);
            }
        }
        gso
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_coalesced_receive_is_split_into_its_datagrams_whole_and_in_order() {
    let mut rx = [recorder().await];
    let to = rx[0].local_addr().unwrap();
    let tx = GsoSender::new();
    // Two runs: 12 of 1000 bytes and a short last one; then 5 of 200.
    let first: Vec<Vec<u8>> = (0..13u8)
        .map(|i| vec![i; if i == 12 { 437 } else { 1000 }])
        .collect();
    let second: Vec<Vec<u8>> = (0..5u8).map(|i| vec![0x80 | i; 200]).collect();
    let gso = tx.send(to, &first) & tx.send(to, &second);
    receive_all(&mut rx, first.len() + second.len()).await;

    let from = tx.socket.local_addr().unwrap();
    let want: Vec<(SocketAddr, Vec<u8>)> = first
        .iter()
        .chain(&second)
        .map(|d| (from, d.clone()))
        .collect();
    assert_eq!(rx[0].endpoint().received, want);
    let s = rx[0].socket_stats();
    assert_eq!((s.received, s.oversized), (want.len() as u64, 0), "{s:?}");
    if gso && rx[0].udp_offloads().gro_segments > 1 {
        // Loopback hands a GSO send to a GRO socket as the one buffer it was sent as.
        assert!(s.recv_calls < s.received, "coalesced: {s:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn oversized_datagrams_are_counted_whether_alone_or_coalesced() {
    let mut rx = [recorder().await];
    let to = rx[0].local_addr().unwrap();
    let plain = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sizes = [
        100,
        MAX_PACKET_BYTES + 1,
        9000,
        MAX_PACKET_BYTES,
        65_000,
        12,
    ];
    for n in sizes {
        plain.send_to(&vec![0x5A; n], to).await.unwrap();
    }
    // Three 1500-byte datagrams in one GSO send: each is oversized on its own.
    let tx = GsoSender::new();
    tx.send(to, &vec![vec![0xC3; 1500]; 3]);
    let total = sizes.len() + 3;
    receive_all(&mut rx, total).await;

    let s = rx[0].socket_stats();
    let oversized = sizes.iter().filter(|&&n| n > MAX_PACKET_BYTES).count() + 3;
    assert_eq!(s.received, total as u64, "{s:?}");
    assert_eq!(s.oversized, oversized as u64, "{s:?}");
    let got = &rx[0].endpoint().received;
    assert_eq!(got.len(), total);
    // The valid ones arrive whole; the coalesced oversized ones one by one, not merged.
    let lens: Vec<usize> = got.iter().map(|(_, d)| d.len()).collect();
    assert_eq!(lens.iter().filter(|&&n| n == 100).count(), 1);
    assert_eq!(lens.iter().filter(|&&n| n == MAX_PACKET_BYTES).count(), 1);
    assert_eq!(lens.iter().filter(|&&n| n == 12).count(), 1);
    assert_eq!(lens.iter().filter(|&&n| n == 1500).count(), 3, "{lens:?}");
}
