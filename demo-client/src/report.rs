//! What the clients measured: per client, aggregated, as JSON (keys are a contract) and
//! as a table.

use demo_server::metrics::{
    DistanceHistogram, DistancePercentiles, DurationHistogram, Percentiles,
};
use serde::Serialize;

/// One client's measurements.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientReport {
    /// Connected at all.
    pub(crate) connected: bool,
    /// Newer snapshots received.
    pub(crate) snapshots_received: u64,
    /// Time between arrivals of a newer snapshot.
    pub(crate) update_gap: DurationHistogram,
    /// Age of the newest state held, at each frame.
    pub(crate) staleness: DurationHistogram,
    /// Round-trip time samples (UDP transports).
    pub(crate) rtt: DurationHistogram,
    /// Packet loss seen by the connection, percent.
    pub(crate) loss_pct: f64,
    /// Incoming kbit/s including IP headers.
    pub(crate) kbps_in: f64,
    /// Outgoing kbit/s including IP headers.
    pub(crate) kbps_out: f64,
    /// Times the connection ended before the run did.
    pub(crate) disconnects: u64,
    /// Why it ended early.
    pub(crate) disconnect_reason: Option<String>,
    /// Interpolation underruns.
    pub(crate) underruns: u64,
    /// Frames rendered past the newest state.
    pub(crate) extrapolated_frames: u64,
    /// Parts rejected (undecodable or missing baseline).
    pub(crate) parts_rejected: u64,
    /// Parts older than one applied.
    pub(crate) late_parts: u64,
    /// Inputs the engine refused to queue.
    pub(crate) inputs_refused: u64,
    /// Seconds played.
    pub(crate) duration_s: f64,
    /// From an input to the first frame whose drawn own entity reflects it.
    pub(crate) input_latency: DurationHistogram,
    /// Reconciliations of the predicted entity that moved it past the threshold.
    pub(crate) corrections: u64,
    /// Size of each such jump, before smoothing.
    pub(crate) correction_m: DistanceHistogram,
    /// The server ended the session (its `--duration`, `quit`, Ctrl-C).
    pub(crate) server_closed: bool,
    /// The transport this client played over.
    pub(crate) transport_in_use: Option<String>,
}

/// The JSON shape of a client (or the aggregate).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ClientJson {
    /// Connected.
    pub(crate) connected: bool,
    /// Newer snapshots received.
    pub(crate) snapshots_received: u64,
    /// Update gap percentiles, ms.
    pub(crate) update_gap_ms: Percentiles,
    /// Staleness percentiles, ms.
    pub(crate) staleness_ms: Percentiles,
    /// RTT percentiles, ms.
    pub(crate) rtt_ms: Percentiles,
    /// Loss percent.
    pub(crate) loss_pct: f64,
    /// kbit/s in.
    pub(crate) kbps_in: f64,
    /// kbit/s out.
    pub(crate) kbps_out: f64,
    /// Early disconnects.
    pub(crate) disconnects: u64,
    /// Interpolation underruns.
    pub(crate) underruns: u64,
    /// Frames extrapolated.
    pub(crate) extrapolated_frames: u64,
    /// Parts rejected.
    pub(crate) parts_rejected: u64,
    /// Late parts.
    pub(crate) late_parts: u64,
    /// Snapshots per second received.
    pub(crate) snapshots_per_s: f64,
    /// Why the connection ended early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) disconnect_reason: Option<String>,
    /// Input latency percentiles, ms.
    pub(crate) input_latency_ms: Percentiles,
    /// Prediction corrections.
    pub(crate) corrections: u64,
    /// Correction sizes, metres.
    pub(crate) correction_m: DistancePercentiles,
    /// The server ended the session.
    pub(crate) server_closed: bool,
    /// Transport used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transport_in_use: Option<String>,
}

impl ClientReport {
    /// The JSON form.
    pub(crate) fn to_json(&self) -> ClientJson {
        ClientJson {
            connected: self.connected,
            snapshots_received: self.snapshots_received,
            update_gap_ms: self.update_gap.percentiles(),
            staleness_ms: self.staleness.percentiles(),
            rtt_ms: self.rtt.percentiles(),
            loss_pct: self.loss_pct,
            kbps_in: self.kbps_in,
            kbps_out: self.kbps_out,
            disconnects: self.disconnects,
            underruns: self.underruns,
            extrapolated_frames: self.extrapolated_frames,
            parts_rejected: self.parts_rejected,
            late_parts: self.late_parts,
            snapshots_per_s: self.snapshots_received as f64 / self.duration_s.max(1e-9),
            disconnect_reason: self.disconnect_reason.clone(),
            input_latency_ms: self.input_latency.percentiles(),
            corrections: self.corrections,
            correction_m: self.correction_m.percentiles(),
            server_closed: self.server_closed,
            transport_in_use: self.transport_in_use.clone(),
        }
    }
}

/// Fold clients together: histograms merged, counters summed, rates averaged per client.
pub(crate) fn aggregate(clients: &[ClientReport]) -> ClientReport {
    let mut a = ClientReport {
        connected: !clients.is_empty() && clients.iter().all(|c| c.connected),
        ..ClientReport::default()
    };
    let n = clients.len().max(1) as f64;
    for c in clients {
        a.snapshots_received += c.snapshots_received;
        a.update_gap.merge(&c.update_gap);
        a.staleness.merge(&c.staleness);
        a.rtt.merge(&c.rtt);
        a.loss_pct += c.loss_pct / n;
        a.kbps_in += c.kbps_in / n;
        a.kbps_out += c.kbps_out / n;
        a.disconnects += c.disconnects;
        a.underruns += c.underruns;
        a.extrapolated_frames += c.extrapolated_frames;
        a.parts_rejected += c.parts_rejected;
        a.late_parts += c.late_parts;
        a.inputs_refused += c.inputs_refused;
        a.duration_s += c.duration_s / n;
        a.input_latency.merge(&c.input_latency);
        a.corrections += c.corrections;
        a.correction_m.merge(&c.correction_m);
        a.server_closed |= c.server_closed;
        // One name when every client used the same transport; "mixed" when some fell back.
        a.transport_in_use = match (&a.transport_in_use, &c.transport_in_use) {
            (None, t) => t.clone(),
            (Some(a), Some(t)) if a != t => Some("mixed".into()),
            (a, _) => a.clone(),
        };
    }
    // Per-client rate in the aggregate: total snapshots over clients.
    a.duration_s *= n;
    a
}

/// The whole client-side summary.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    /// Transport name.
    pub(crate) transport: String,
    /// Seconds per client.
    pub(crate) duration_s: f64,
    /// Per client.
    pub(crate) clients: Vec<ClientJson>,
    /// All clients together (kbps and loss are per-client means).
    pub(crate) aggregate: ClientJson,
}

/// Build the summary.
pub(crate) fn summary(transport: &str, duration_s: f64, clients: &[ClientReport]) -> Summary {
    Summary {
        transport: transport.to_string(),
        duration_s,
        clients: clients.iter().map(ClientReport::to_json).collect(),
        aggregate: aggregate(clients).to_json(),
    }
}

fn pct4(p: &Percentiles) -> String {
    format!(
        "{:>6.1} {:>6.1} {:>6.1} {:>7.1}",
        p.p50, p.p95, p.p99, p.max
    )
}

/// A fixed-width table: one row per (label, client report).
pub(crate) fn table(rows: &[(String, ClientReport)]) -> String {
    let mut s = format!(
        "{:<14} {:>6} | {:^29} | {:^29} | {:>8} {:>6} {:>9}\n",
        "", "", "update gap ms", "staleness ms", "", "", ""
    );
    s += &format!(
        "{:<14} {:>6} | {:>6} {:>6} {:>6} {:>7} | {:>6} {:>6} {:>6} {:>7} | {:>8} {:>6} {:>9}\n",
        "",
        "snaps/s",
        "p50",
        "p95",
        "p99",
        "max",
        "p50",
        "p95",
        "p99",
        "max",
        "kbps in",
        "loss%",
        "underruns"
    );
    for (label, r) in rows {
        let j = r.to_json();
        s += &format!(
            "{:<14} {:>7.1} | {} | {} | {:>8.1} {:>6.1} {:>9}\n",
            label,
            j.snapshots_per_s,
            pct4(&j.update_gap_ms),
            pct4(&j.staleness_ms),
            j.kbps_in,
            j.loss_pct,
            j.underruns
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn aggregate_merges_histograms_and_averages_rates() {
        let mut a = ClientReport {
            connected: true,
            kbps_in: 100.0,
            snapshots_received: 10,
            duration_s: 1.0,
            ..ClientReport::default()
        };
        a.update_gap.record(Duration::from_millis(10));
        let mut b = a.clone();
        b.kbps_in = 300.0;
        b.update_gap.record(Duration::from_millis(50));
        let agg = aggregate(&[a, b]);
        assert!(agg.connected);
        assert_eq!(agg.update_gap.count(), 3);
        assert!((agg.kbps_in - 200.0).abs() < 1e-9);
        assert_eq!(agg.snapshots_received, 20);
        let json = serde_json::to_value(summary("udp", 1.0, &[agg])).unwrap();
        for key in [
            "connected",
            "snapshots_received",
            "update_gap_ms",
            "staleness_ms",
            "rtt_ms",
            "loss_pct",
            "kbps_in",
            "kbps_out",
            "disconnects",
            "input_latency_ms",
            "corrections",
            "correction_m",
        ] {
            assert!(json["aggregate"].get(key).is_some(), "missing {key}");
            assert!(json["clients"][0].get(key).is_some(), "missing {key}");
        }
        assert!(json["aggregate"]["update_gap_ms"].get("p95").is_some());
    }

    #[test]
    fn the_aggregate_names_one_transport_or_says_mixed() {
        let on = |t: &str| ClientReport {
            transport_in_use: Some(t.into()),
            ..ClientReport::default()
        };
        let name = |clients: &[ClientReport]| aggregate(clients).transport_in_use;
        assert_eq!(name(&[on("udp"), on("udp")]), Some("udp".into()));
        assert_eq!(
            name(&[on("websocket"), ClientReport::default()]),
            Some("websocket".into()),
            "a client that never connected does not count"
        );
        assert_eq!(name(&[on("udp"), on("websocket")]), Some("mixed".into()));
        assert_eq!(
            name(&[on("udp"), on("websocket"), on("udp")]),
            Some("mixed".into())
        );
    }
}
