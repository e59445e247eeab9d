//! Packet capture: every datagram a driver sends or receives on its UDP socket, written as a
//! pcap file Wireshark and tshark open (with `scripts/wireshark/snapsync.lua` they decode it).
//!
//! Datagrams are recorded at the socket, after the outbound link conditioner and before the
//! inbound one: as the wire carries them. Each is wrapped in a synthetic IPv4 (or IPv6) and
//! UDP header with the real addresses and ports, so the capture reads like one taken on the
//! interface (link type RAW). The UDP checksum is left at 0 ("none", valid for IPv4).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

/// A pcap file being written.
pub struct PcapCapture {
    /// Unbuffered: each packet reaches the file at once, so the capture of a process that
    /// is killed holds everything it sent (two small writes a packet, at game packet rates).
    writer: PcapWriter<File>,
    frame: Vec<u8>,
    packets: u64,
}

impl std::fmt::Debug for PcapCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PcapCapture {{ packets: {} }}", self.packets)
    }
}

impl PcapCapture {
    /// Create (or truncate) the pcap file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        let header = PcapHeader {
            datalink: DataLink::RAW,
            ..PcapHeader::default()
        };
        let writer = PcapWriter::with_header(file, header).map_err(io::Error::other)?;
        Ok(Self {
            writer,
            frame: Vec::with_capacity(2048),
            packets: 0,
        })
    }

    /// Packets written so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Record one datagram from `from` to `to`. A write error is returned and the capture
    /// stops mattering; the game never depends on it.
    pub fn record(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
        udp_frame(&mut self.frame, from, to, payload);
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        // Frames are at most a 40-byte header plus a datagram under 64 KiB.
        let len = u32::try_from(self.frame.len()).unwrap_or(u32::MAX);
        self.writer
            .write_packet(&PcapPacket::new(ts, len, &self.frame))
            .map_err(io::Error::other)?;
        self.packets += 1;
        Ok(())
    }
}

/// An IPv4 or IPv6 + UDP frame carrying `payload`, in `out` (cleared first).
fn udp_frame(out: &mut Vec<u8>, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    out.clear();
    let udp_len = (8 + payload.len()).min(usize::from(u16::MAX)) as u16;
    match (from, to) {
        (SocketAddr::V4(f), SocketAddr::V4(t)) => {
            let total = (20 + usize::from(udp_len)).min(usize::from(u16::MAX)) as u16;
            let mut ip = [0u8; 20];
            ip[0] = 0x45; // version 4, 5 words of header
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[8] = 64; // TTL
            ip[9] = 17; // UDP
            ip[12..16].copy_from_slice(&f.ip().octets());
            ip[16..20].copy_from_slice(&t.ip().octets());
            let sum = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&ip);
        }
        _ => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                SocketAddr::V6(a) => *a.ip(),
            };
            out.push(0x60); // version 6
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(&udp_len.to_be_bytes());
            out.push(17); // next header: UDP
            out.push(64); // hop limit
            out.extend_from_slice(&v6(from).octets());
            out.extend_from_slice(&v6(to).octets());
        }
    }
    out.extend_from_slice(&from.port().to_be_bytes());
    out.extend_from_slice(&to.port().to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // no UDP checksum
    out.extend_from_slice(payload);
}

fn ipv4_checksum(header: &[u8; 20]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_reads_back_as_ip_and_udp_with_the_datagrams() {
        let dir = std::env::temp_dir().join(format!("snapsync-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        {
            let mut c = PcapCapture::create(&path).unwrap();
            c.record(a, b, b"hello").unwrap();
            c.record(b, a, &[1, 2, 3]).unwrap();
            assert_eq!(c.packets(), 2);
        }
        let mut r =
            pcap_file::pcap::PcapReader::new(std::io::BufReader::new(File::open(&path).unwrap()))
                .unwrap();
        assert_eq!(r.header().datalink, DataLink::RAW);
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.data.len(), 20 + 8 + 5);
        assert_eq!(p.data[0] >> 4, 4);
        assert_eq!(
            ipv4_checksum(p.data[..20].try_into().unwrap()),
            0,
            "valid header sum"
        );
        assert_eq!(&p.data[20..22], &5000u16.to_be_bytes());
        assert_eq!(&p.data[22..24], &7777u16.to_be_bytes());
        assert_eq!(&p.data[28..], b"hello");
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(&p.data[28..], &[1, 2, 3]);
        assert!(r.next_packet().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
