//! The server's figures, published through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! The protocol core keeps its own counters (every `stats()` of this crate); a
//! [`ServerMetrics`] copies them into the facade when the application asks, once per tick or
//! per second, so the core stays free of global state and an application that installs no
//! recorder pays nothing. Names and units follow Prometheus conventions: counters end in
//! `_total`, durations are `_seconds`, sizes `_bytes`.
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `snapsync_connections` | gauge | clients connected |
//! | `snapsync_accepting` | gauge | 1 while new clients are accepted, 0 while draining |
//! | `snapsync_handshakes_total{outcome}` | counter | `accepted`, `denied`, `challenged` |
//! | `snapsync_packets_total{direction}`, `snapsync_bytes_total{direction}` | counter | `in`, `out` |
//! | `snapsync_invalid_packets_total{reason}` | counter | `malformed`, `wrong_salt`, `unknown_peer`, `replay`, `cookie`, `other`, `secure` |
//! | `snapsync_secure_dropped_total{reason}` | counter | secure mode only: the datagrams in `invalid_packets_total{reason="secure"}` by netcode's reason (`token_reused`, `token_expired`, `decrypt_failed`, `replayed`, `handshakes_full`, … every field of [`DropCounts`](crate::netcode::DropCounts)) |
//! | `snapsync_rtt_seconds`, `snapsync_jitter_seconds`, `snapsync_loss_ratio` | histogram | one sample per connected client per call |
//! | `snapsync_snapshots_total`, `snapsync_full_snapshots_total`, `snapsync_snapshot_parts_total`, `snapsync_snapshot_bytes_total` | counter | what the snapshot senders built |
//! | `snapsync_reliable_resends_total`, `snapsync_backpressure_total` | counter | reliable channel parts resent; messages refused by a full send queue |
//! | `snapsync_invalid_inputs_total` | counter | input packets that did not decode |
//! | `snapsync_scoped_snapshots_total`, `snapsync_scope_scans_total` | counter | snapshots built from a client's own scope; of those, scopes worked out by a scan instead of kept by the entities near their edge (their ratio is what scopes cost) |
//! | `snapsync_shared_snapshots_total`, `snapsync_entities_shared_total`, `snapsync_deltas_encoded_up_front_total` | counter | what encoding once for many clients saved: snapshots sent as built for another client, entity deltas a client found encoded by another, deltas encoded at the start of a tick for the baselines most clients hold |
//! | `snapsync_conditioner_total{event}` | counter | the link conditioner's `dropped`, `duplicated`, `reordered` (both directions) |
//! | `snapsync_socket_send_errors_total` | counter | datagrams the socket refused |

use std::collections::BTreeMap;

use ::metrics::{counter, gauge, histogram};

use crate::connection::ClientId;
use crate::net::ReplicationServer;
use crate::replication;

/// Copies a replication server's figures into the `metrics` facade; keeps what it needs to
/// make per-client counters monotonic when clients leave.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Per connected client: (resends, backpressure) last seen.
    clients: BTreeMap<ClientId, (u64, u64)>,
    /// Those of clients that have left.
    departed: (u64, u64),
}

impl ServerMetrics {
    /// A recorder with nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publish everything `net` knows now.
    pub fn record(&mut self, net: &ReplicationServer) {
        self.record_server(net.endpoint());
        let (inbound, outbound) = net.conditioners();
        let (i, o) = (inbound.stats(), outbound.stats());
        for (event, v) in [
            ("dropped", i.dropped + o.dropped),
            ("duplicated", i.duplicated + o.duplicated),
            ("reordered", i.reordered + o.reordered),
        ] {
            counter!("snapsync_conditioner_total", "event" => event).absolute(v);
        }
        counter!("snapsync_socket_send_errors_total").absolute(net.socket_stats().send_errors);
    }

    /// Publish what a replication server knows now: everything but the driver's
    /// conditioners and socket (for a server driven by the application's own I/O).
    pub fn record_server(&mut self, server: &replication::Server) {
        let conn = server.connection();
        let s = conn.stats();
        gauge!("snapsync_connections").set(server.clients().count() as f64);
        gauge!("snapsync_accepting").set(if conn.is_accepting() { 1.0 } else { 0.0 });

        let (challenged, denied) = match conn.secure_stats() {
            Some(n) => (n.challenges_sent, s.connections_denied + n.denied_sent),
            None => (s.challenges_sent, s.connections_denied),
        };
        for (outcome, v) in [
            ("accepted", s.connections_accepted),
            ("denied", denied),
            ("challenged", challenged),
        ] {
            counter!("snapsync_handshakes_total", "outcome" => outcome).absolute(v);
        }
        counter!("snapsync_packets_total", "direction" => "in").absolute(s.packets_in);
        counter!("snapsync_packets_total", "direction" => "out").absolute(s.packets_out);
        counter!("snapsync_bytes_total", "direction" => "in").absolute(s.bytes_in);
        counter!("snapsync_bytes_total", "direction" => "out").absolute(s.bytes_out);
        for (reason, v) in [
            ("malformed", s.invalid_malformed),
            ("wrong_salt", s.invalid_wrong_salt),
            ("unknown_peer", s.invalid_unknown_peer),
            ("replay", s.invalid_replay),
            ("cookie", s.invalid_cookie),
            ("other", s.invalid_other),
            ("secure", s.invalid_secure),
        ] {
            counter!("snapsync_invalid_packets_total", "reason" => reason).absolute(v);
        }
        if let Some(secure) = conn.secure_stats() {
            for (reason, v) in secure.dropped.by_reason() {
                counter!("snapsync_secure_dropped_total", "reason" => reason).absolute(v);
            }
        }

        let mut now_seen = BTreeMap::new();
        for id in server.clients() {
            if let Some(link) = conn.connection_stats(id) {
                if let Some(rtt) = link.rtt {
                    histogram!("snapsync_rtt_seconds").record(rtt.as_secs_f64());
                }
                histogram!("snapsync_jitter_seconds").record(link.jitter.as_secs_f64());
                histogram!("snapsync_loss_ratio").record(link.link.loss_pct() / 100.0);
            }
            let mut resent = 0;
            let mut backpressure = 0;
            for channel in 0..=u8::MAX {
                let Some(c) = conn.channel_stats(id, channel) else {
                    break;
                };
                resent += c.resent;
                backpressure += c.backpressure;
            }
            now_seen.insert(id, (resent, backpressure));
        }
        for (id, (r, b)) in &self.clients {
            if !now_seen.contains_key(id) {
                self.departed.0 += r;
                self.departed.1 += b;
            }
        }
        self.clients = now_seen;
        let (r, b) = self
            .clients
            .values()
            .fold(self.departed, |(r, b), (cr, cb)| (r + cr, b + cb));
        counter!("snapsync_reliable_resends_total").absolute(r);
        counter!("snapsync_backpressure_total").absolute(b);

        let snaps = server.snapshot_totals();
        counter!("snapsync_snapshots_total").absolute(snaps.snapshots);
        counter!("snapsync_full_snapshots_total").absolute(snaps.full_snapshots);
        counter!("snapsync_snapshot_parts_total").absolute(snaps.parts);
        counter!("snapsync_snapshot_bytes_total").absolute(snaps.bytes);
        let replication = server.stats();
        counter!("snapsync_invalid_inputs_total").absolute(replication.invalid_input_frames);
        counter!("snapsync_scoped_snapshots_total").absolute(replication.scoped_snapshots);
        counter!("snapsync_scope_scans_total").absolute(replication.scope_scans);
        counter!("snapsync_shared_snapshots_total").absolute(replication.shared_snapshots);
        counter!("snapsync_entities_shared_total").absolute(snaps.entities_shared);
        counter!("snapsync_deltas_encoded_up_front_total")
            .absolute(replication.deltas_encoded_up_front);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::connection::{SecureServerConfig, Security};
    use crate::netcode::{self, TokenSettings, generate_connect_token};

    /// Each counter `f` published: name, labels as `key=value`, value.
    fn counters(f: impl FnOnce()) -> BTreeMap<(String, Vec<String>), u64> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, f);
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(v) => {
                    let k = key.key();
                    let labels = k.labels().map(|l| format!("{}={}", l.key(), l.value()));
                    Some(((k.name().to_string(), labels.collect()), v))
                }
                _ => None,
            })
            .collect()
    }

    fn series(name: &str, label: Option<&str>) -> (String, Vec<String>) {
        (
            name.to_string(),
            label.into_iter().map(String::from).collect(),
        )
    }

    #[test]
    fn a_secure_servers_drops_are_published_by_reason_and_a_plain_ones_not() {
        let unix = 1_800_000_000;
        let key = [3; 32];
        let addr: SocketAddr = "127.0.0.1:7777".parse().unwrap();
        let now = Instant::now();
        let mut config = replication::ServerConfig::default();
        config.server.security = Security::Secure(SecureServerConfig {
            netcode: netcode::ServerConfig::new(42, key, addr),
            unix_secs_at_start: unix,
        });
        let mut server = replication::Server::new(config, now).unwrap();
        // Three reasons, each a different number of times: too short, of no known type, and
        // a valid request's token used again from a second address.
        let settings = TokenSettings {
            protocol_id: 42,
            client_id: 1,
            server_addresses: vec![addr],
            expire_seconds: 60,
            timeout_seconds: 5,
            user_data: [0; netcode::USER_DATA_BYTES],
        };
        let token = generate_connect_token(unix, &settings, &key).unwrap();
        let mut client = netcode::Client::new(now, &token.to_bytes()[..]).unwrap();
        let mut buf = [0u8; netcode::MAX_PACKET_BYTES];
        let t = client.poll_transmit(now, &mut buf).unwrap();
        let request = &buf[..t.len];
        let stranger = |n: u16| SocketAddr::from(([127, 0, 0, 9], 40_000 + n));
        for n in 0..3 {
            server.handle_datagram(now, stranger(n), &[]);
        }
        for n in 0..2 {
            server.handle_datagram(now, stranger(n), &[0x17; 40]);
        }
        server.handle_datagram(now, stranger(10), request);
        server.handle_datagram(now, stranger(11), request);

        let published = counters(|| ServerMetrics::new().record_server(&server));
        let secure = |reason: &str| {
            published
                .get(&series(
                    "snapsync_secure_dropped_total",
                    Some(&format!("reason={reason}")),
                ))
                .copied()
        };
        assert_eq!(secure("too_small"), Some(3));
        assert_eq!(secure("unknown_type"), Some(2));
        assert_eq!(secure("token_reused"), Some(1));
        // Every reason is a series, the others at zero.
        let dropped = server.connection().secure_stats().unwrap().dropped;
        for (reason, n) in dropped.by_reason() {
            let want = match reason {
                "too_small" => 3,
                "unknown_type" => 2,
                "token_reused" => 1,
                _ => 0,
            };
            assert_eq!(n, want, "{reason}");
            assert_eq!(secure(reason), Some(want), "{reason}");
        }
        assert_eq!(
            published.get(&series(
                "snapsync_invalid_packets_total",
                Some("reason=secure")
            )),
            Some(&6)
        );
        for name in [
            "snapsync_shared_snapshots_total",
            "snapsync_entities_shared_total",
            "snapsync_deltas_encoded_up_front_total",
        ] {
            assert_eq!(published.get(&series(name, None)), Some(&0), "{name}");
        }

        let plain = replication::Server::new(replication::ServerConfig::default(), now).unwrap();
        let published = counters(|| ServerMetrics::new().record_server(&plain));
        assert!(
            published
                .keys()
                .all(|(name, _)| name != "snapsync_secure_dropped_total")
        );
        assert!(published.contains_key(&series("snapsync_scope_scans_total", None)));
    }
}
