//! Connection-level limits of the reference server, against the built
//! binary over real sockets: a client trickling its headers is cut off
//! after `--header-timeout`, a body that never finishes is answered 408
//! after `--request-timeout`, connections past `--max-connections`
//! are closed as soon as they are accepted, and a connection that sends
//! nothing (or only the HTTP/2 preface), or stays idle after its requests,
//! is closed after `--header-timeout` / `--idle-timeout`.
#![cfg(all(
    feature = "axum",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis",
    feature = "tonic"
))]

mod e2e_support;

use e2e_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes):
/// what it sent, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    let (running, _) = spawn_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--header-timeout",
        "1s",
    ])
    .await;
    let mut stream = TcpStream::connect(running.addr).await.expect("connects");
    stream
        .write_all(b"GET /contact-sessions/current HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("writes");
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the connection is still open after 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408() {
    let (running, _) = spawn_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--request-timeout",
        "1s",
    ])
    .await;
    let mut stream = TcpStream::connect(running.addr).await.expect("connects");
    stream
        .write_all(
            b"POST /contact-sessions HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":",
        )
        .await
        .expect("writes");
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(received.starts_with("HTTP/1.1 408"), "{received:?}");
    assert!(received.contains("request_timeout"), "{received:?}");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let (running, _) = spawn_binary(&[
        "--addr",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--max-connections",
        "2",
    ])
    .await;
    let api = Api::new(running.addr);
    // Two idle connections hold both places.
    let _first = TcpStream::connect(running.addr).await.expect("connects");
    let _second = TcpStream::connect(running.addr).await.expect("connects");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(running.addr).await.expect("accepted");
    let (_, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed, "a third connection is closed");
    drop((_first, _second));
    // Once they are gone, requests are served again.
    let mut served = false;
    for _ in 0..50 {
        let request = api
            .http
            .get(format!("{}/contact-sessions/current", api.base));
        if let Ok(response) = request.send().await {
            assert_eq!(response.status(), 401);
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the server serves again once connections close");
}

/// A server with one-second connection timeouts.
async fn impatient_server(extra: &[&str]) -> RunningBinary {
    let mut args = vec![
        "--addr",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--header-timeout",
        "1s",
        "--idle-timeout",
        "1s",
    ];
    args.extend_from_slice(extra);
    spawn_binary(&args).await.0
}

/// Asserts `stream` is closed by the server within 5 s, and not before
/// 0.9 s after `since` (an instant taken before whatever the server's
/// timeout runs from, so the lower bound holds however late this task
/// runs); returns what the server sent.
async fn assert_closed_after_a_second(stream: &mut TcpStream, since: std::time::Instant) -> String {
    let (received, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
    assert!(closed, "still open 5 s later; received {received:?}");
    let after = since.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );
    received
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let running = impatient_server(&[]).await;
    let connecting = std::time::Instant::now();
    let mut stream = TcpStream::connect(running.addr).await.expect("connects");
    let received = assert_closed_after_a_second(&mut stream, connecting).await;
    assert_eq!(received, "");
}

#[tokio::test]
async fn an_http2_preface_alone_does_not_keep_a_place() {
    let running = impatient_server(&[]).await;
    let connecting = std::time::Instant::now();
    let mut stream = TcpStream::connect(running.addr).await.expect("connects");
    // The preface and an empty SETTINGS frame, then silence.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&preface).await.expect("writes");
    assert_closed_after_a_second(&mut stream, connecting).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let running = impatient_server(&[]).await;
    let mut stream = TcpStream::connect(running.addr).await.expect("connects");
    // Two requests on one connection, 300 ms apart (within the timeout).
    let request = b"GET /contact-sessions/current HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut answered = String::new();
    let mut last_sent = std::time::Instant::now();
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        last_sent = std::time::Instant::now();
        stream.write_all(request).await.expect("writes");
        let mut buffer = [0u8; 4096];
        let read = stream.read(&mut buffer).await.expect("an answer");
        answered = String::from_utf8_lossy(&buffer[..read]).into_owned();
        assert!(
            answered.starts_with("HTTP/1.1 401"),
            "round {round}: {answered:?}"
        );
    }
    let received = assert_closed_after_a_second(&mut stream, last_sent).await;
    assert_eq!(received, "", "after {answered:?}");
}

#[tokio::test]
async fn a_request_in_progress_is_not_cut_by_the_idle_timeout() {
    // The body never finishes: the request timeout (2 s) answers it, not
    // the idle timeout (1 s), since a request is in progress.
    let running = impatient_server(&["--request-timeout", "2s"]).await;
    let mut stream = TcpStream::connect(running.addr).await.expect("connects");
    let started = std::time::Instant::now();
    stream
        .write_all(
            b"POST /contact-sessions HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":",
        )
        .await
        .expect("writes");
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(6)).await;
    assert!(received.starts_with("HTTP/1.1 408"), "{received:?}");
    assert!(started.elapsed() >= Duration::from_millis(1800));
}
