//! The accept loop: HTTP/1 and HTTP/2 (prior knowledge) on one listener,
//! with the connection-level limits a server facing the internet needs
//! (SPEC §5: no client can hold the server's resources without bound).
//!
//! - At most `--max-connections` connections at once; one more is closed
//!   as soon as it is accepted.
//! - A request's headers must arrive within `--header-timeout` (a client
//!   trickling a header line every few seconds is cut off), and so must a
//!   new connection's first request: a client that connects and sends
//!   nothing, or only the HTTP/2 preface, does not keep its place.
//! - A connection with no request in progress for `--idle-timeout` is
//!   closed (HTTP/1 keep-alive and idle HTTP/2 alike), so idle sockets
//!   cannot fill the `--max-connections` places. A request is in progress
//!   until its answer's body is sent: closing waits for it (`GOAWAY`
//!   first for HTTP/2), up to `--request-timeout`.
//! - A connection whose requests neither start nor finish for
//!   `--request-timeout` + `--idle-timeout` is cut: handlers end within
//!   the request timeout, so that is a client not reading its answers.
//! - The request timeout (`--request-timeout`, answered 408) is a layer
//!   of the router, so it bounds the body's arrival too (see `app.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::Service;

/// The connection-level limits (`--max-connections`, `--header-timeout`,
/// `--idle-timeout`, and `--request-timeout` for the answers in progress).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

/// What a connection's watchdog reads: requests in progress, and when the
/// last one started or ended (milliseconds since the connection opened,
/// plus one; 0 until the first request).
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self, opened: Instant) {
        let ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_ms.fetch_max(ms + 1, Ordering::Relaxed);
    }
}

/// Ends a request's count when its answer's body is sent or dropped (or
/// its handler was dropped before answering).
struct InFlight {
    activity: Arc<Activity>,
    opened: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch(self.opened);
        // Release: a watchdog that sees the count fall also sees the touch.
        self.activity.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// An answer's body that keeps its request counted in progress until it
/// is sent whole or dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait, retry.
                    eprintln!("widget_server: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // Over the cap: close it at once rather than queue it.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let opened = Instant::now();
            let activity = Arc::new(Activity::default());
            let counted = Arc::clone(&activity);
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(remote));
                    counted.in_flight.fetch_add(1, Ordering::AcqRel);
                    counted.touch(opened);
                    let in_flight = InFlight {
                        activity: Arc::clone(&counted),
                        opened,
                    };
                    let answer = app.clone().call(request);
                    async move {
                        let response = answer.await?;
                        Ok::<_, Infallible>(response.map(|body| {
                            Body::new(Tracked {
                                body,
                                _in_flight: in_flight,
                            })
                        }))
                    }
                });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let mut deadline = opened + limits.header_timeout;
            loop {
                tokio::select! {
                    // A connection that fails (reset, timed out) only ends
                    // itself.
                    _ = connection.as_mut() => break,
                    () = tokio::time::sleep_until(deadline) => {}
                }
                match next_check(&activity, opened, limits) {
                    Some(next) => deadline = next,
                    None => {
                        // `GOAWAY` for HTTP/2, close for HTTP/1, after the
                        // answers in progress (a stream that raced the
                        // `GOAWAY` too), for at most the request timeout;
                        // then the connection is dropped.
                        connection.as_mut().graceful_shutdown();
                        let closing = Instant::now();
                        loop {
                            tokio::select! {
                                _ = connection.as_mut() => break,
                                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                            }
                            // A client that does not answer the shutdown
                            // (HTTP/2's PING) gets a second; one still
                            // receiving answers, the request timeout.
                            let waited = closing.elapsed();
                            let busy = activity.in_flight.load(Ordering::Acquire) > 0;
                            if waited >= limits.request_timeout
                                || (!busy && waited >= Duration::from_secs(1))
                            {
                                break;
                            }
                        }
                        break;
                    }
                }
            }
            drop(permit);
        });
    }
}

/// When to look at a connection next: `None` when it must be closed,
/// having had no request in progress for too long (`header_timeout`
/// before its first request, `idle_timeout` after one), or requests in
/// progress that neither started nor ended for `request_timeout` +
/// `idle_timeout` (answers nobody reads).
fn next_check(activity: &Activity, opened: Instant, limits: ConnectionLimits) -> Option<Instant> {
    // The count first (Acquire, paired with the Release that lowers it):
    // seen at zero, the last touch read after it is the one that ended it.
    let busy = activity.in_flight.load(Ordering::Acquire) > 0;
    let last_ms = activity.last_ms.load(Ordering::Acquire);
    let allowed = match (busy, last_ms) {
        (true, _) => limits.request_timeout + limits.idle_timeout,
        (false, 0) => limits.header_timeout,
        (false, _) => limits.idle_timeout,
    };
    let deadline = opened + Duration::from_millis(last_ms.saturating_sub(1)) + allowed;
    (deadline > Instant::now()).then_some(deadline)
}
