//! `demo-client compare`: every transport under the same conditions, one table, a CSV and
//! an SVG of the update-gap distributions.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use demo_server::cli::Transport;
use demo_server::scene::SceneKind;
use demo_server::server::{self, Control, ServerOptions, ServerSecurity};
use demo_server::tokens::TokenMint;
use plotters::prelude::*;
use snapsync::conditioner::ConditionerConfig;
use tokio::sync::{mpsc, oneshot};

use crate::report::{ClientReport, aggregate, table};
use crate::session::{self, SessionOptions, TokenSource};

/// What one comparison runs.
#[derive(Debug, Clone)]
pub(crate) struct CompareOptions {
    /// Link simulation, applied once per direction (at the server).
    pub(crate) conditioner: ConditionerConfig,
    /// Ticks (and snapshots) per second.
    pub(crate) tick_rate: f64,
    /// Clients per transport.
    pub(crate) clients: usize,
    /// Seconds per transport.
    pub(crate) duration: Duration,
    /// Where to write compare.csv, compare.json and update_gap.svg.
    pub(crate) out: std::path::PathBuf,
    /// Scene.
    pub(crate) scene: SceneKind,
    /// Seed.
    pub(crate) seed: u64,
    /// Transports to run, in order.
    pub(crate) transports: Vec<Transport>,
    /// Secure mode (tokens minted in-process with a fresh key) or plain.
    pub(crate) secure: bool,
}

/// One transport's result.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Transport.
    pub(crate) transport: Transport,
    /// Whether the conditioner applied (TCP cannot be conditioned in-process).
    pub(crate) conditioned: bool,
    /// All clients together.
    pub(crate) report: ClientReport,
    /// Each client.
    pub(crate) clients: Vec<ClientReport>,
}

/// Run every transport and return the rows.
pub(crate) async fn run(opts: &CompareOptions) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for &transport in &opts.transports {
        // The kernel's TCP cannot be conditioned from inside the process: it runs on a clean
        // loopback as the control (scripts/netlab.sh drops real packets for it).
        let conditioned = transport != Transport::Tcp;
        let conditioner = if conditioned {
            opts.conditioner.clone()
        } else {
            ConditionerConfig::off()
        };
        eprintln!(
            "compare: {transport} for {} s with {} clients{}",
            opts.duration.as_secs_f64(),
            opts.clients,
            if conditioned {
                ""
            } else {
                " (no simulated loss: kernel TCP, the control)"
            }
        );
        let key = snapsync::netcode::generate_key();
        let security = if opts.secure {
            ServerSecurity::Secure { key, http: None }
        } else {
            ServerSecurity::Insecure
        };
        let (ctl_tx, ctl_rx) = mpsc::channel(4);
        let (ready_tx, ready_rx) = oneshot::channel();
        let server_opts = ServerOptions {
            bind: "127.0.0.1:0".parse().expect("literal address"),
            tick_rate: opts.tick_rate,
            send_rate: opts.tick_rate,
            scene: opts.scene,
            transport,
            duration: None,
            stats_interval: None,
            // Once per direction: the server's side conditions what it sends and receives.
            conditioner,
            seed: opts.seed,
            quiet: true,
            security,
            // Its clients never fall back (see below): nothing to listen for.
            websocket: false,
            ..ServerOptions::default()
        };
        let server = tokio::spawn(server::run(server_opts, ctl_rx, Some(ready_tx)));
        let addr = ready_rx
            .await
            .map_err(|_| format!("{transport} server failed to start"))?;
        let token = opts
            .secure
            .then(|| TokenSource::Mint(std::sync::Arc::new(TokenMint::new(key, addr))));
        let mut sessions = Vec::new();
        for i in 0..opts.clients {
            let s = SessionOptions {
                server: addr,
                transport,
                duration: opts.duration,
                frame_rate: opts.tick_rate,
                conditioner: ConditionerConfig::off(),
                seed: opts.seed.wrapping_add(i as u64 + 1),
                stats_interval: None,
                label: format!("{transport}#{i}"),
                interp: None,
                predict: true,
                token: token.clone(),
                pcap: None,
                // The comparison measures the transport it names: no fallback to another.
                fallback: None,
            };
            sessions.push(tokio::spawn(session::run(s)));
        }
        let mut reports = Vec::new();
        for s in sessions {
            match s.await {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(e)) => return Err(format!("{transport}: {e}")),
                Err(e) => return Err(format!("{transport}: client task failed: {e}")),
            }
        }
        let _ = ctl_tx.send(Control::Shutdown).await;
        match server.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{transport} server: {e}")),
            Err(e) => return Err(format!("{transport} server task failed: {e}")),
        }
        rows.push(Row {
            transport,
            conditioned,
            report: aggregate(&reports),
            clients: reports,
        });
    }
    Ok(rows)
}

/// The printed table.
pub(crate) fn render_table(rows: &[Row]) -> String {
    let labeled: Vec<(String, ClientReport)> = rows
        .iter()
        .map(|r| {
            let label = if r.conditioned {
                r.transport.to_string()
            } else {
                format!("{} (clean)", r.transport)
            };
            (label, r.report.clone())
        })
        .collect();
    table(&labeled)
}

/// compare.csv: one row per transport.
pub(crate) fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "transport,conditioned,snapshots_per_s,gap_p50_ms,gap_p95_ms,gap_p99_ms,gap_max_ms,stale_p50_ms,stale_p95_ms,stale_p99_ms,stale_max_ms,kbps_in,kbps_out,loss_pct,underruns,disconnects\n",
    );
    for r in rows {
        let j = r.report.to_json();
        let g = j.update_gap_ms;
        let st = j.staleness_ms;
        let _ = writeln!(
            s,
            "{},{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.1},{:.1},{:.2},{},{}",
            r.transport,
            r.conditioned,
            j.snapshots_per_s,
            g.p50,
            g.p95,
            g.p99,
            g.max,
            st.p50,
            st.p95,
            st.p99,
            st.max,
            j.kbps_in,
            j.kbps_out,
            j.loss_pct,
            j.underruns,
            j.disconnects
        );
    }
    s
}

/// update_gap.svg: the cumulative distribution of update gaps per transport.
pub(crate) fn plot(rows: &[Row], path: &Path, title: &str) -> Result<(), String> {
    let x_max = rows
        .iter()
        .map(|r| r.report.update_gap.quantile_ms(0.999))
        .fold(50.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("update gap (ms): time between arrivals of a newer snapshot")
        .y_desc("share of updates")
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    for (i, r) in rows.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mut points = vec![(0.0, 0.0)];
        points.extend(r.report.update_gap.cdf_points());
        let p99 = r.report.update_gap.quantile_ms(0.99);
        let label = format!(
            "{}{} (p99 {:.0} ms)",
            r.transport,
            if r.conditioned { "" } else { ", clean link" },
            p99
        );
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
