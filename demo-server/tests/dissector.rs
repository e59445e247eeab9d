//! The Wireshark dissector (scripts/wireshark/snapsync.lua) read by Debian's tshark on a
//! capture the demo made, and on truncated packets. Needs tshark: `.ci/run` installs it and
//! runs this. Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use snapsync::net::{PcapCapture, ReplicationClient};
use snapsync::packet::{MAX_PACKET_BYTES, PROTOCOL_ID};
use snapsync::replication::ClientConfig;

fn dissector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/wireshark/snapsync.lua")
}

/// tshark's field table for `pcap`, decoding `port` as snapsync: one row per frame.
fn tshark(pcap: &Path, port: u16, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-X")
        .arg(format!("lua_script:{}", dissector().display()))
        .arg("-r")
        .arg(pcap)
        .args(["-d", &format!("udp.port=={port},snapsync"), "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .expect("tshark on the PATH (apt-get install tshark)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark failed: {err}");
    assert!(!err.contains("Lua"), "the dissector raised an error: {err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

#[test]
#[ignore = "needs Debian's tshark: .ci/run installs it and runs it"]
fn tshark_decodes_a_demo_capture_and_flags_truncated_packets() {
    let dir = std::env::temp_dir().join(format!("snapsync-dissector-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("server.pcap");
    let mut server = Command::new(env!("CARGO_BIN_EXE_demo-server"))
        .args(["--insecure", "--bind", "127.0.0.1:0", "--duration", "4"])
        .args(["--stats-interval", "0", "--pcap"])
        .arg(&capture)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains(" listening on "))
        .expect("the listening line");
    // Read the server's other lines to its end: with the pipe closed, its next line (the
    // websocket one, printed right after) would fail, and the server with it.
    std::thread::spawn(move || lines.map_while(Result::ok).count());
    let addr: SocketAddr = line
        .split(" listening on ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ReplicationClient::<u8>::join(addr, ClientConfig::default(), None)
            .await
            .expect("join");
        for _ in 0..60 {
            c.drive_until(tokio::time::Instant::now() + Duration::from_millis(16))
                .await
                .unwrap();
            while c.poll_event().is_some() {}
            let now = c.now();
            let e = c.endpoint_mut();
            for _ in 0..e.inputs_due(now) {
                let _ = e.send_input(now, 7);
            }
            c.flush();
        }
        c.close().await.unwrap();
    });
    let end = Instant::now() + Duration::from_secs(20);
    while server.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "server outlived its duration");
        std::thread::sleep(Duration::from_millis(50));
    }

    let rows = tshark(
        &capture,
        addr.port(),
        &[
            "udp.srcport",
            "snapsync.kind",
            "snapsync.sequence",
            "snapsync.ack",
            "snapsync.tick",
            "snapsync.input_count",
            "_ws.expert.message",
        ],
    );
    let kinds: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    for kind in ["1", "2", "3", "4", "6", "7"] {
        assert!(kinds.contains(&kind), "no packet of kind {kind}: {kinds:?}");
    }
    let from_server: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[0] == addr.port().to_string() && r[1] == "6")
        .collect();
    let ticks: Vec<u32> = from_server
        .iter()
        .filter_map(|r| r[4].parse().ok())
        .collect();
    assert!(ticks.len() > 30, "snapshot ticks decoded: {}", ticks.len());
    // The parts of one tick share it (a full snapshot can take two datagrams).
    assert!(
        ticks.windows(2).all(|w| w[0] <= w[1]),
        "ticks grow: {ticks:?}"
    );
    let seqs: Vec<u32> = from_server
        .iter()
        .filter_map(|r| r[2].parse().ok())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "sequences count up: {seqs:?}"
    );
    assert!(from_server.iter().all(|r| !r[3].is_empty()), "acks decoded");
    let inputs = rows
        .iter()
        .filter(|r| r[0] != addr.port().to_string() && !r[5].is_empty())
        .count();
    assert!(inputs > 30, "input frames decoded: {inputs}");
    let flagged: Vec<&Vec<String>> = rows.iter().filter(|r| !r[6].is_empty()).collect();
    assert!(flagged.is_empty(), "real traffic flagged: {flagged:?}");

    // Truncations of a real payload packet, each with its CRC made right again, so the
    // dissector's length checks (not the checksum) must catch them; and one with a wrong CRC.
    let original = std::fs::read(&capture).unwrap();
    let payload = longest_payload(&original, addr.port());
    assert!(payload.len() > 40, "a payload packet with a snapshot part");
    let truncated = dir.join("truncated.pcap");
    let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let cuts = [5, 12, 19 + 2, 19 + 10, payload.len() - 1];
    {
        let mut w = PcapCapture::create(&truncated).unwrap();
        for &n in &cuts {
            w.record(addr, from, &with_crc(&payload[..n])).unwrap();
        }
        w.record(addr, from, &payload[..payload.len() - 1]).unwrap();
    }
    let rows = tshark(&truncated, addr.port(), &["_ws.expert.message"]);
    assert_eq!(rows.len(), cuts.len() + 1);
    for (row, n) in rows.iter().zip(cuts.iter().map(Some).chain([None])) {
        let msg = &row[0];
        assert!(!msg.is_empty(), "truncation to {n:?} bytes not flagged");
        match n {
            Some(_) => assert!(msg.contains("truncated"), "{msg}"),
            None => assert!(msg.contains("CRC"), "{msg}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CRC-32 of docs/PROTOCOL.md section 1 written into bytes 0..4.
fn with_crc(packet: &[u8]) -> Vec<u8> {
    let mut p = packet.to_vec();
    let mut h = crc32fast::Hasher::new();
    h.update(&PROTOCOL_ID.to_le_bytes());
    h.update(&p[4..]);
    p[..4].copy_from_slice(&h.finalize().to_le_bytes());
    p
}

/// The longest datagram the server sent in a pcap (IPv4 frames, 28 bytes of headers).
fn longest_payload(pcap: &[u8], server_port: u16) -> Vec<u8> {
    let mut r = pcap_file::pcap::PcapReader::new(pcap).unwrap();
    let mut best = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        let d = &p.data;
        if d.len() > 28
            && u16::from_be_bytes([d[20], d[21]]) == server_port
            && d[28 + 4] == 6
            && d.len() - 28 > best.len()
            && d.len() - 28 <= MAX_PACKET_BYTES
        {
            best = d[28..].to_vec();
        }
    }
    best
}
