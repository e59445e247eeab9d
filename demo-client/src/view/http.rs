//! The page over HTTP, the live stream over a WebSocket.
//!
//! | route | |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /view.js` | its script |
//! | `GET /stats.json` | the latest figures |
//! | `POST /control` | one console command for every server (`loss 10`, `preset bad`, `conditioner off`) |
//! | `GET /ws` | the stream: a JSON hello, then binary frames and JSON figures |
//!
//! Anything else gets 404 (a wrong method 405, a bad command 400, too many viewers 503).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::future::select_all;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::{ControlError, Hub, VIEWER_QUEUE_MESSAGES, VIEWER_STALL_TIMEOUT, ViewerCounters};

const PAGE_HTML: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("view.js");
/// Longest control command accepted, bytes.
const MAX_CONTROL_BYTES: usize = 256;
/// Longest message a viewer may send (the page sends none; this bounds a hostile one).
const MAX_VIEWER_MESSAGE_BYTES: usize = 4096;
/// Most bytes a viewer's socket may hold in its write buffer before sends wait.
const MAX_VIEWER_WRITE_BUFFER_BYTES: usize = 1 << 20;
/// The kernel's send buffer per connection. Left to itself Linux grows it to megabytes for
/// a reader that is slow: seconds of frames that would reach the page late. Bounded, a
/// slow viewer gets fresh frames with gaps instead (the dropped ones are counted); 256 KiB
/// is a tenth of a second of the heaviest stream (cubes, four streams at 60 Hz).
const VIEWER_SEND_BUFFER_BYTES: usize = 256 * 1024;

/// Serve until the view stops.
pub(crate) async fn serve(listener: tokio::net::TcpListener, hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown.clone();
    let app = router(hub);
    let stopped = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(VIEWER_SEND_BUFFER_BYTES)
        {
            tracing::debug!("view: cannot bound a send buffer: {e}");
        }
    });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::warn!("view: http server: {e}");
    }
}

/// The routes.
pub(crate) fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/view.js", get(script))
        .route("/stats.json", get(stats))
        .route(
            "/control",
            post(control).layer(DefaultBodyLimit::max(MAX_CONTROL_BYTES)),
        )
        .route("/ws", get(ws))
        .fallback(not_found)
        .with_state(hub)
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE_HTML,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE_JS,
    )
        .into_response()
}

async fn stats(State(hub): State<Arc<Hub>>) -> Response {
    let body = hub.stats.borrow().as_str().to_owned();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn control(State(hub): State<Arc<Hub>>, body: String) -> Response {
    match hub.control(&body) {
        Ok(described) => (StatusCode::OK, format!("conditioner: {described}\n")).into_response(),
        Err(e @ ControlError::Refused(_)) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Err(e @ ControlError::Busy) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn ws(State(hub): State<Arc<Hub>>, upgrade: WebSocketUpgrade) -> Response {
    let Some((id, counters)) = hub.viewers.join() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many viewers\n").into_response();
    };
    let hub_on_fail = hub.clone();
    upgrade
        .max_message_size(MAX_VIEWER_MESSAGE_BYTES)
        .max_frame_size(MAX_VIEWER_MESSAGE_BYTES)
        .max_write_buffer_size(MAX_VIEWER_WRITE_BUFFER_BYTES)
        .on_failed_upgrade(move |_| hub_on_fail.viewers.leave(id))
        .on_upgrade(move |socket| async move {
            viewer(&hub, socket, &counters).await;
            hub.viewers.leave(id);
        })
}

/// What woke a viewer's task.
#[derive(Debug)]
enum Wake {
    /// A frame slot changed (its index).
    Frames(usize),
    Stats,
    Stop,
}

/// Feed one viewer until it leaves, stalls for good, or the view stops.
///
/// Frames go through a queue of [`VIEWER_QUEUE_MESSAGES`] to a writer task: when the
/// socket does not keep up, the queue fills and later frames are dropped for this viewer
/// (and counted); nothing waits on it but its own writer.
async fn viewer(hub: &Hub, socket: WebSocket, counters: &Arc<ViewerCounters>) {
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(VIEWER_QUEUE_MESSAGES);
    let sent = counters.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
            sent.sent.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut frames = hub.frames.clone();
    let mut stats = hub.stats.clone();
    let mut shutdown = hub.shutdown.clone();
    let mut last_sent = (0u64, Instant::now());
    let offer = |m: Message, last_sent: &mut (u64, Instant)| -> bool {
        match tx.try_send(m) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                let s = counters.sent.load(Ordering::Relaxed);
                if s != last_sent.0 {
                    *last_sent = (s, Instant::now());
                }
                // A socket that has taken nothing for this long is gone, or as good as.
                last_sent.1.elapsed() < VIEWER_STALL_TIMEOUT
            }
            Err(TrySendError::Closed(_)) => false,
        }
    };
    if !offer(Message::Text(hub.hello.clone()), &mut last_sent) {
        writer.abort();
        return;
    }
    loop {
        let wake = {
            let any_frame = select_all(frames.iter_mut().map(|f| Box::pin(f.changed())));
            tokio::select! {
                m = incoming.next() => match m {
                    // The page sends nothing; anything else is read and let go.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => Wake::Stop,
                    Some(Ok(_)) => continue,
                },
                (r, woke, _) = any_frame => if r.is_ok() { Wake::Frames(woke) } else { Wake::Stop },
                r = stats.changed() => if r.is_ok() { Wake::Stats } else { Wake::Stop },
                _ = shutdown.wait_for(|s| *s) => Wake::Stop,
            }
        };
        let open = match wake {
            Wake::Stop => false,
            Wake::Frames(woke) => {
                let mut open = true;
                for (i, f) in frames.iter_mut().enumerate() {
                    // `changed()` marked the slot that woke us as seen already.
                    if i == woke || f.has_changed().unwrap_or(false) {
                        let bytes = f.borrow_and_update().clone();
                        if !bytes.is_empty() {
                            open &= offer(Message::Binary(bytes), &mut last_sent);
                        }
                    }
                }
                open
            }
            Wake::Stats => {
                let text = format!(
                    "{{\"stats\":{},\"you\":{{\"dropped\":{}}}}}",
                    stats.borrow_and_update().as_str(),
                    counters.dropped.load(Ordering::Relaxed)
                );
                offer(Message::Text(text.into()), &mut last_sent)
            }
        };
        if !open {
            break;
        }
    }
    // The writer may be stuck on a socket that takes nothing: end it rather than wait.
    writer.abort();
}
