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
//! | `snapsync_rtt_seconds`, `snapsync_jitter_seconds`, `snapsync_loss_ratio` | histogram | one sample per connected client per call |
//! | `snapsync_snapshots_total`, `snapsync_full_snapshots_total`, `snapsync_snapshot_parts_total`, `snapsync_snapshot_bytes_total` | counter | what the snapshot senders built |
//! | `snapsync_reliable_resends_total`, `snapsync_backpressure_total` | counter | reliable channel parts resent; messages refused by a full send queue |
//! | `snapsync_invalid_inputs_total` | counter | input packets that did not decode |
//! | `snapsync_scoped_snapshots_total`, `snapsync_scope_scans_total` | counter | snapshots built from a client's own scope; of those, scopes worked out by a scan instead of kept by the entities near their edge (their ratio is what scopes cost) |
//! | `snapsync_conditioner_total{event}` | counter | the link conditioner's `dropped`, `duplicated`, `reordered` (both directions) |
//! | `snapsync_socket_send_errors_total` | counter | datagrams the socket refused |

use std::collections::BTreeMap;

use ::metrics::{counter, gauge, histogram};

use crate::connection::ClientId;
use crate::net::ReplicationServer;

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
        let server = net.endpoint();
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
}
