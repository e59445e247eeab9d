//! `--agones` against a local stand-in of the Agones SDK sidecar: a small gRPC server (plain
//! HTTP/2, as the sidecar speaks on localhost) that answers every call of the SDK's service
//! with an empty message and records which were made. The real sidecar needs a Kubernetes
//! cluster; this shows the server makes the right calls at the right moments: Ready once,
//! Health pings while it ticks, a player's connect and disconnect, Shutdown at the end.
//! Built only with the feature: `cargo test -p demo-server --features agones --test agones`.
#![cfg(feature = "agones")]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use snapsync::net::ReplicationClient;
use snapsync::replication::ClientConfig;

/// Every gRPC message the stand-in received, as (method path, time), in order.
type Calls = Arc<Mutex<Vec<(String, Instant)>>>;

/// Answer one call: record every request message as it arrives (Health is a stream that
/// stays open), then reply with one empty message and `grpc-status: 0`.
async fn handle(req: Request<Incoming>, calls: Calls) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_string();
    let mut body = req.into_body();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            pending.extend_from_slice(&data);
            // gRPC length-prefixed messages: flag byte, u32 BE length, message.
            while pending.len() >= 5 {
                let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]);
                let total = 5 + len as usize;
                if pending.len() < total {
                    break;
                }
                pending.drain(..total);
                calls.lock().unwrap().push((path.clone(), Instant::now()));
            }
        }
    }
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(Frame::trailers(trailers)),
    ];
    let body: BoxBody = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap())
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Serve the stand-in on 127.0.0.1; returns its port.
async fn stand_in(calls: Calls) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let calls = calls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, calls.clone()));
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_tells_the_sidecar_ready_health_players_and_shutdown() {
    let calls: Calls = Arc::default();
    let port = stand_in(calls.clone()).await;
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_demo-server"))
        .args(["--agones", "--insecure", "--bind", "127.0.0.1:0"])
        .args(["--duration", "6", "--stats-interval", "0"])
        // The sidecar's address, as Agones sets it in the pod.
        .env("AGONES_SDK_GRPC_HOST", "http://127.0.0.1")
        .env("AGONES_SDK_GRPC_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = server.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut addr = None;
    let end = Instant::now() + Duration::from_secs(40);
    loop {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("the server listened and told Ready within 40 s");
        if let Some(rest) = line.split(" listening on ").nth(1) {
            addr = rest.split(',').next().map(|a| a.parse().unwrap());
        }
        if line.contains("Agones told Ready") {
            break;
        }
    }
    let addr: std::net::SocketAddr = addr.expect("the listening line");
    // A player comes and goes.
    let mut c = ReplicationClient::<u8>::join(addr, ClientConfig::default(), None)
        .await
        .expect("join");
    for _ in 0..30 {
        c.drive_until(tokio::time::Instant::now() + Duration::from_millis(16))
            .await
            .unwrap();
        while c.poll_event().is_some() {}
    }
    c.close().await.unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the server outlived its duration");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");

    let calls = calls.lock().unwrap().clone();
    let count = |m: &str| calls.iter().filter(|(p, _)| p.ends_with(m)).count();
    let at = |m: &str| calls.iter().find(|(p, _)| p.ends_with(m)).map(|(_, t)| *t);
    assert!(
        count("/GetGameServer") >= 1,
        "the SDK's connect check: {calls:?}"
    );
    assert_eq!(count("SDK/Ready"), 1, "{calls:?}");
    assert_eq!(count("/Shutdown"), 1, "{calls:?}");
    assert!(at("SDK/Ready") < at("/Shutdown"));
    // A ping every 2 s from the tick loop over about 6 s of ticking.
    let health = count("/Health");
    assert!(
        (2..=5).contains(&health),
        "{health} health pings: {calls:?}"
    );
    assert_eq!(count("/PlayerConnect"), 1, "{calls:?}");
    assert_eq!(count("/PlayerDisconnect"), 1, "{calls:?}");
}
