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
//!   cannot fill the `--max-connections` places.
//! - The request timeout (`--request-timeout`, answered 408) is a layer
//!   of the router, so it bounds the body's arrival too (see `app.rs`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::Service;

/// The connection-level limits (`--max-connections`, `--header-timeout`,
/// `--idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
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

/// Ends a request's count when its handler has answered (or was dropped).
struct InFlight {
    activity: Arc<Activity>,
    opened: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.touch(self.opened);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
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
                    counted.in_flight.fetch_add(1, Ordering::Relaxed);
                    counted.touch(opened);
                    let in_flight = InFlight {
                        activity: Arc::clone(&counted),
                        opened,
                    };
                    let answer = app.clone().call(request);
                    async move {
                        let answer = answer.await;
                        drop(in_flight);
                        answer
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
                        // Idle too long: `GOAWAY` for HTTP/2, close for
                        // HTTP/1; dropped if even that takes a second.
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                        break;
                    }
                }
            }
            drop(permit);
        });
    }
}

/// When to look at an idle connection next: `None` when it has had no
/// request in progress for too long (`header_timeout` before its first
/// request, `idle_timeout` after one) and must be closed.
fn next_check(activity: &Activity, opened: Instant, limits: ConnectionLimits) -> Option<Instant> {
    let now = Instant::now();
    let last_ms = activity.last_ms.load(Ordering::Relaxed);
    let busy = activity.in_flight.load(Ordering::Relaxed) > 0;
    let allowed = if last_ms == 0 && !busy {
        limits.header_timeout
    } else {
        limits.idle_timeout
    };
    if busy {
        // A request is being answered (the request timeout bounds it).
        return Some(now + allowed);
    }
    let deadline = opened + Duration::from_millis(last_ms.saturating_sub(1)) + allowed;
    (deadline > now).then_some(deadline)
}
