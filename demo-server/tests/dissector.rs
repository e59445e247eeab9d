//! The Wireshark dissector (scripts/wireshark/snapsync.lua) read by Debian's tshark on a
//! capture the demo made, on snapshot parts the engine encoded from known entities, and on
//! truncated and malformed packets. Needs tshark: `.ci/run` installs it and runs this.
//! Every wait is bounded.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapsync::Sequence;
use snapsync::net::{PcapCapture, ReplicationClient};
use snapsync::packet::{ConnectedHeader, MAX_PACKET_BYTES, PROTOCOL_ID, Packet};
use snapsync::replication::ClientConfig;
use snapsync::snapshot::{
    EntityId, QuantizedEntity, QuantizedRotation, QuantizedTransform, QuantizedWorld, SenderConfig,
    SnapshotSender, Tick,
};

fn dissector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/wireshark/snapsync.lua")
}

/// tshark's field table for `pcap`, decoding `port` as snapsync: one row per frame.
fn tshark(pcap: &Path, port: u16, fields: &[&str]) -> Vec<Vec<String>> {
    tshark_with(pcap, port, &[], fields)
}

/// [`tshark`] with dissector preferences, `NAME:VALUE` each.
fn tshark_with(pcap: &Path, port: u16, prefs: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-X")
        .arg(format!("lua_script:{}", dissector().display()))
        .arg("-r")
        .arg(pcap)
        .args(["-d", &format!("udp.port=={port},snapsync"), "-T", "fields"]);
    for p in prefs {
        cmd.args(["-o", &format!("snapsync.{p}")]);
    }
    // A Lua error while dissecting is not on stderr: Wireshark shows it in the frame.
    for f in fields.iter().chain(&["_ws.lua.error"]) {
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
        .map(|l| {
            let mut row: Vec<String> = l.split('\t').map(str::to_string).collect();
            assert_eq!(row.len(), fields.len() + 1, "row {l:?}");
            let lua_error = row.pop().unwrap_or_default();
            assert!(lua_error.is_empty(), "the dissector raised an error: {l}");
            row
        })
        .collect()
}

/// The values of one field in a row, in tree order (tshark joins repeats with commas).
fn values(cell: &str) -> Vec<&str> {
    if cell.is_empty() {
        Vec::new()
    } else {
        cell.split(',').collect()
    }
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
            "snapsync.update_count",
            "snapsync.snap.update.index",
            "snapsync.snap.despawn_count",
            "snapsync.snap.despawn.index",
            "snapsync.snap.spawn_count",
            "snapsync.snap.spawn.id",
            "snapsync.malformed",
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
    // Flagged by the dissector itself: other dissectors add notes of their own to the
    // expert messages (UDP notes a possible traceroute when either port is one of
    // traceroute's, 33434 and up, which the system may pick for the demo's sockets).
    let flagged: Vec<&Vec<String>> = rows.iter().filter(|r| !r[13].is_empty()).collect();
    assert!(flagged.is_empty(), "real traffic flagged: {flagged:?}");
    // Every snapshot part decodes to its end (the spawn count comes last), with as many
    // indices and ids as its counts say.
    let parts: Vec<&&Vec<String>> = from_server.iter().filter(|r| !r[4].is_empty()).collect();
    let (mut updates, mut spawns) = (0, 0);
    for r in &parts {
        assert!(!r[11].is_empty(), "part not decoded to its spawns: {r:?}");
        for (count, list) in [(7, 8), (9, 10), (11, 12)] {
            let n: usize = r[count].parse().unwrap();
            assert_eq!(
                values(&r[list]).len(),
                n,
                "entries of column {count}: {r:?}"
            );
        }
        updates += values(&r[8]).len();
        spawns += values(&r[12]).len();
    }
    assert!(
        updates > 0 && spawns > 0,
        "the arena spawns and moves bodies: {updates} updates, {spawns} spawns"
    );

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

/// A quantized entity: position steps, rotation (largest, smallest three), velocity steps,
/// component bytes.
fn entity(
    position: [u32; 3],
    rotation: (u8, [u16; 3]),
    velocity: Option<[u32; 3]>,
    component: Option<&[u8]>,
) -> QuantizedEntity {
    QuantizedEntity {
        transform: QuantizedTransform {
            position,
            rotation: QuantizedRotation {
                largest: rotation.0,
                smallest: rotation.1,
            },
            velocity,
        },
        component: component.map(Arc::from),
    }
}

const SERVER: &str = "127.0.0.1:7777";
const CLIENT: &str = "127.0.0.1:40000";

/// A server's payload packet carrying `part` as its datagram, behind the replication
/// prefix `prefix` (docs/PROTOCOL.md sections 1, 4 and 7).
fn part_packet(sequence: u16, prefix: u8, part: &[u8]) -> Vec<u8> {
    let datagram_len = u16::try_from(part.len() + 1).unwrap();
    let mut payload = vec![1];
    payload.extend_from_slice(&datagram_len.to_le_bytes());
    payload.push(prefix);
    payload.extend_from_slice(part);
    let packet = Packet::Payload {
        header: ConnectedHeader {
            salt: 0x5eed,
            sequence: Sequence(sequence),
            ack: Sequence(0),
            ack_bits: 0,
            ack_delay: 0,
        },
        payload: &payload,
    };
    let mut out = vec![0; MAX_PACKET_BYTES];
    let len = packet.encode(&mut out).expect("a part fits a packet");
    out.truncate(len);
    out
}

fn write_pcap(path: &Path, packets: &[Vec<u8>]) {
    let mut w = PcapCapture::create(path).unwrap();
    for p in packets {
        w.record(SERVER.parse().unwrap(), CLIENT.parse().unwrap(), p)
            .unwrap();
    }
}

/// `expected` as tshark prints a repeated field.
fn joined<T: ToString>(expected: impl IntoIterator<Item = T>) -> String {
    expected
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks one tshark row against expected cells, by field name.
struct Row<'a> {
    fields: &'a [&'a str],
    row: &'a [String],
}

impl Row<'_> {
    fn get(&self, field: &str) -> &str {
        let i = self.fields.iter().position(|f| *f == field).unwrap();
        &self.row[i]
    }

    fn expect(&self, field: &str, expected: impl AsRef<str>) {
        assert_eq!(self.get(field), expected.as_ref(), "{field}");
    }
}

const ENTITY_FIELDS: &[&str] = &[
    "_ws.expert.message",
    "snapsync.tick",
    "snapsync.baseline",
    "snapsync.input_ack",
    "snapsync.update_count",
    "snapsync.snap.update.index",
    "snapsync.snap.despawn_count",
    "snapsync.snap.despawn.index",
    "snapsync.snap.spawn_count",
    "snapsync.snap.spawn.id",
    "snapsync.snap.entity.changed",
    "snapsync.snap.entity.vel_present",
    "snapsync.snap.entity.vel_x",
    "snapsync.snap.entity.vel_y",
    "snapsync.snap.entity.vel_z",
    "snapsync.snap.entity.vel_x_mps",
    "snapsync.snap.entity.dvel_x",
    "snapsync.snap.entity.dvel_y",
    "snapsync.snap.entity.dvel_z",
    "snapsync.snap.entity.pos_x",
    "snapsync.snap.entity.pos_y",
    "snapsync.snap.entity.pos_z",
    "snapsync.snap.entity.pos_x_m",
    "snapsync.snap.entity.pos_z_m",
    "snapsync.snap.entity.dpos_x",
    "snapsync.snap.entity.dpos_y",
    "snapsync.snap.entity.dpos_z",
    "snapsync.snap.entity.rot_same",
    "snapsync.snap.entity.rot_largest",
    "snapsync.snap.entity.rot_0",
    "snapsync.snap.entity.rot_1",
    "snapsync.snap.entity.rot_2",
    "snapsync.snap.entity.drot_0",
    "snapsync.snap.entity.drot_1",
    "snapsync.snap.entity.drot_2",
    "snapsync.snap.entity.comp_present",
    "snapsync.snap.entity.comp_len",
    "snapsync.snap.entity.comp",
    "snapsync.snap.padding",
];

#[test]
#[ignore = "needs Debian's tshark: .ci/run installs it and runs it"]
fn tshark_reads_the_entities_the_engine_encoded() {
    let dir = std::env::temp_dir().join(format!("snapsync-entities-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Default quantization (the dissector's default preferences): position steps of
    // 1/512 m from -512 m (262144 = 0 m), velocity steps of 1/32 m/s from -32 (1024 = 0),
    // rotation components 0..=510.
    let full: Vec<(u32, QuantizedEntity)> = vec![
        (
            3,
            entity(
                [262_656, 262_144, 261_120],
                (3, [255, 255, 255]),
                Some([1030, 1024, 992]),
                Some(&[1, 2, 3]),
            ),
        ),
        // Largest component x, as the all-zero entity's: coded with same_largest.
        (
            4,
            entity([0, 524_288, 12_345], (0, [10, 20, 30]), None, None),
        ),
        (
            9,
            entity(
                [100, 200, 300],
                (2, [0, 510, 255]),
                Some([0, 2048, 1024]),
                Some(&[0xab; 20]),
            ),
        ),
        (1000, entity([262_144; 3], (3, [255; 3]), None, Some(&[]))),
        (
            70_000,
            entity([1, 2, 3], (1, [1, 2, 3]), Some([1024; 3]), None),
        ),
    ];
    let world = |entities: &[(u32, QuantizedEntity)]| {
        QuantizedWorld::from_entities(entities.iter().map(|(id, e)| (EntityId(*id), e.clone())))
    };
    let mut sender = SnapshotSender::new(SenderConfig::default()).unwrap();
    let full_parts = sender.build(Tick(10), &world(&full), 4000).unwrap();
    assert_eq!(full_parts.len(), 1, "a small world fits one part");
    sender.on_part_sent(Tick(10), 0, Sequence(1));
    sender.on_delivery(Sequence(1), true);
    assert_eq!(sender.acked_baseline().map(|(t, _)| t), Some(Tick(10)));

    // Three ticks on, against tick 10: baseline indices 0..=4 are ids 3, 4, 9, 1000, 70000.
    let mut next = full.clone();
    // Index 0: only the velocity changes (+4 steps on x).
    next[0].1.transform.velocity = Some([1034, 1024, 992]);
    // Index 1: moved without a velocity, so coded against the old position.
    next[1].1.transform.position = [5, 524_281, 12_345];
    // Index 2: its velocity vanishes; its rotation turns with the same largest component.
    next[2].1.transform.velocity = None;
    next[2].1.transform.rotation.smallest = [3, 505, 255];
    // Index 4: a new component.
    next[4].1.component = Some(Arc::from(&[9u8, 9][..]));
    // Index 3 (id 1000) leaves; id 5 arrives.
    next.remove(3);
    next.insert(1, (5, entity([7, 8, 9], (3, [255; 3]), None, None)));
    let delta_parts = sender.build(Tick(13), &world(&next), 4000).unwrap();
    assert_eq!(delta_parts.len(), 1);

    let pcap = dir.join("entities.pcap");
    // Prefix 5 = zigzag(2) + 1: the input two ticks before the part's tick.
    write_pcap(
        &pcap,
        &[
            part_packet(1, 5, &full_parts[0]),
            part_packet(2, 0, &delta_parts[0]),
        ],
    );
    let rows = tshark(&pcap, 7777, ENTITY_FIELDS);
    assert_eq!(rows.len(), 2);

    let r = Row {
        fields: ENTITY_FIELDS,
        row: &rows[0],
    };
    r.expect("_ws.expert.message", "");
    r.expect("snapsync.tick", "10");
    r.expect("snapsync.baseline", "");
    r.expect("snapsync.input_ack", "8");
    r.expect("snapsync.update_count", "0");
    r.expect("snapsync.snap.despawn_count", "0");
    r.expect("snapsync.snap.spawn_count", "5");
    r.expect(
        "snapsync.snap.spawn.id",
        joined(full.iter().map(|(id, _)| id)),
    );
    let t = |e: &QuantizedEntity| e.transform;
    for (axis, name) in ["x", "y", "z"].iter().enumerate() {
        let pos = full.iter().map(|(_, e)| t(e).position[axis]);
        r.expect(&format!("snapsync.snap.entity.pos_{name}"), joined(pos));
        let vel = full.iter().filter_map(|(_, e)| t(e).velocity);
        r.expect(
            &format!("snapsync.snap.entity.vel_{name}"),
            joined(vel.map(|v| v[axis])),
        );
        let smallest = full.iter().map(|(_, e)| t(e).rotation.smallest[axis]);
        r.expect(
            &format!("snapsync.snap.entity.rot_{axis}"),
            joined(smallest),
        );
    }
    let metres = |field: &str| -> Vec<f64> {
        values(r.get(field))
            .iter()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert_eq!(
        metres("snapsync.snap.entity.pos_x_m"),
        [1.0, -512.0, -511.8046875, 0.0, -511.998046875]
    );
    assert_eq!(metres("snapsync.snap.entity.pos_z_m")[0], -2.0);
    assert_eq!(
        metres("snapsync.snap.entity.vel_x_mps"),
        [0.1875, -32.0, 0.0]
    );
    r.expect(
        "snapsync.snap.entity.rot_largest",
        joined(full.iter().map(|(_, e)| t(e).rotation.largest)),
    );
    // Only id 4 keeps the all-zero entity's largest component.
    r.expect("snapsync.snap.entity.rot_same", "0,1,0,0,0");
    r.expect("snapsync.snap.entity.vel_present", "1,1,1");
    r.expect("snapsync.snap.entity.comp_present", "1,1,1");
    r.expect("snapsync.snap.entity.comp_len", "3,20,0");
    r.expect(
        "snapsync.snap.entity.comp",
        format!("010203,{}", "ab".repeat(20)),
    );
    // Changed fields: position 1, rotation 2, velocity 4, component 8.
    r.expect("snapsync.snap.entity.changed", "0x0f,0x03,0x0f,0x0b,0x07");
    for field in [
        "update.index",
        "entity.dpos_x",
        "entity.dvel_x",
        "entity.drot_0",
    ] {
        r.expect(&format!("snapsync.snap.{field}"), "");
    }

    let r = Row {
        fields: ENTITY_FIELDS,
        row: &rows[1],
    };
    r.expect("_ws.expert.message", "");
    r.expect("snapsync.tick", "13");
    r.expect("snapsync.baseline", "10");
    r.expect("snapsync.input_ack", "");
    r.expect("snapsync.update_count", "4");
    r.expect("snapsync.snap.update.index", "0,1,2,4");
    r.expect("snapsync.snap.despawn_count", "1");
    r.expect("snapsync.snap.despawn.index", "3");
    r.expect("snapsync.snap.spawn_count", "1");
    r.expect("snapsync.snap.spawn.id", "5");
    r.expect("snapsync.snap.entity.changed", "0x04,0x01,0x06,0x08,0x03");
    // Index 2's velocity vanishing sets the section's presence bits.
    r.expect("snapsync.snap.entity.vel_present", "1,0");
    r.expect("snapsync.snap.entity.dvel_x", "4");
    r.expect("snapsync.snap.entity.dvel_y", "0");
    r.expect("snapsync.snap.entity.dvel_z", "0");
    r.expect("snapsync.snap.entity.dpos_x", "5");
    r.expect("snapsync.snap.entity.dpos_y", "-7");
    r.expect("snapsync.snap.entity.dpos_z", "0");
    r.expect("snapsync.snap.entity.rot_same", "1,0");
    r.expect("snapsync.snap.entity.drot_0", "3");
    r.expect("snapsync.snap.entity.drot_1", "-5");
    r.expect("snapsync.snap.entity.drot_2", "0");
    r.expect("snapsync.snap.entity.comp_len", "2");
    r.expect("snapsync.snap.entity.comp", "0909");
    // The spawn, in absolute values.
    r.expect("snapsync.snap.entity.pos_x", "7");
    r.expect("snapsync.snap.entity.pos_y", "8");
    r.expect("snapsync.snap.entity.pos_z", "9");
    r.expect("snapsync.snap.entity.rot_largest", "3");
    r.expect("snapsync.snap.entity.rot_0", "255");

    // Metres come from the preferences: a box from the origin moves every spawn.
    let rows = tshark_with(
        &pcap,
        7777,
        &["position_min:0,0,0", "position_resolution:0.5"],
        &["snapsync.snap.entity.pos_x_m"],
    );
    assert_eq!(rows[0][0], "131328,0,50,131072,0.5");

    // Cut anywhere inside its entities, a part is flagged malformed, never a Lua error; so
    // is one with a whole byte after its last entity.
    // (A cut is caught by whichever check meets the missing bits first: a read, or a count
    // or length checked against the bits left.)
    let mut broken: Vec<(Vec<u8>, &str)> = Vec::new();
    for part in [&full_parts[0], &delta_parts[0]] {
        // Byte 9 is past the header and the update count.
        for cut in 9..part.len() {
            broken.push((part[..cut].to_vec(), ""));
        }
        let mut longer = part.clone();
        longer.push(0);
        broken.push((longer, "after the last entity"));
    }
    broken.extend(crafted_parts());
    let bad = dir.join("malformed.pcap");
    let packets: Vec<Vec<u8>> = broken.iter().map(|(p, _)| part_packet(3, 0, p)).collect();
    write_pcap(&bad, &packets);
    let rows = tshark(&bad, 7777, &["_ws.expert.message", "snapsync.tick"]);
    assert_eq!(rows.len(), broken.len());
    for (i, (row, (part, why))) in rows.iter().zip(&broken).enumerate() {
        assert!(
            row[0].contains("snapshot part malformed") && row[0].contains(why),
            "packet {i} ({} bytes), want {why:?}: {row:?}",
            part.len()
        );
        assert!(!row[1].is_empty(), "the header still decodes: {row:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bits least-significant first, as the snapshot codec writes them.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    len: usize,
}

impl Bits {
    fn put(mut self, value: u64, bits: u32) -> Self {
        for i in 0..bits {
            if self.len.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if (value >> i) & 1 == 1 {
                // Pushed just above whenever a new byte starts.
                *self.bytes.last_mut().unwrap() |= 1 << (self.len % 8);
            }
            self.len += 1;
        }
        self
    }

    /// A 7-bit varint of one group (values below 128).
    fn count(self, n: u64) -> Self {
        assert!(n < 128);
        self.put(n, 7).put(0, 1)
    }

    /// Exp-Golomb of order k.
    fn eg(self, value: u64, k: u32) -> Self {
        let x = value + (1 << k);
        let n = 64 - x.leading_zeros();
        self.put(0, n - 1 - k).put(1, 1).put(x, n - 1)
    }

    /// A header: tick 20, no baseline, part 1 of 1.
    fn full_header() -> Self {
        Bits::default().put(20, 32).put(0, 1).put(0, 8).put(0, 8)
    }
}

/// Parts whose every bit is there but that break a rule of the format, with the reason the
/// dissector must give.
fn crafted_parts() -> Vec<(Vec<u8>, &'static str)> {
    vec![
        (
            Bits::full_header().count(0).count(0).count(100).bytes,
            "more than the",
        ),
        (
            // One spawn, id order 0, an entity code without fields, then 40 zero bits.
            Bits::full_header()
                .count(0)
                .count(0)
                .count(1)
                .put(0, 4)
                .put(0, 4)
                .put(0, 40)
                .bytes,
            "prefix too long",
        ),
        (
            Bits::full_header().count(1).put(0, 40).bytes,
            "updates in a full snapshot",
        ),
        (
            // Two spawns of order 15: ids u32::MAX, then u32::MAX + 1.
            Bits::full_header()
                .count(0)
                .count(0)
                .count(2)
                .put(15, 4)
                .put(0, 4)
                .eg(u64::from(u32::MAX), 15)
                .eg(0, 15)
                .bytes,
            "beyond 32 bits",
        ),
    ]
}
