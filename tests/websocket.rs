//! WebSocket through meshd over real sockets: the HTTP/1.1 upgrade reaches
//! the upstream, the 101 comes back, and messages flow both ways through
//! the tunnel; the upgrade request is counted with its 101.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket server echoing every text and binary message.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind WebSocket upstream");
    let addr = listener.local_addr().expect("WebSocket upstream address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Scenario: a WebSocket client talks to an echo server through meshd:
/// text and a 256 KiB binary message come back intact, the connection
/// closes cleanly, and `istio_requests_total` counts the upgrade as 101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_meshd() {
    let upstream = websocket_echo().await;
    let mesh = Mesh::with(&simple_service("chat", "chat", upstream)).await;
    let stream = TcpStream::connect(mesh.addr).await.expect("connect to meshd");
    let (mut ws, response) =
        tokio_tungstenite::client_async("ws://chat/socket", stream).await.expect("WebSocket handshake through meshd");
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello through meshd")).await.expect("send text");
    let echoed = tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await.expect("echo in time");
    assert_eq!(echoed.expect("a message").expect("no error"), Message::text("hello through meshd"));

    let big: Vec<u8> = pattern(256 * 1024, 7);
    ws.send(Message::binary(big.clone())).await.expect("send binary");
    let echoed = tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await.expect("echo in time");
    match echoed.expect("a message").expect("no error") {
        Message::Binary(data) => assert_eq!(digest(&data), digest(&big), "the binary message came back intact"),
        other => panic!("expected binary, got {other:?}"),
    }
    ws.close(None).await.expect("close");

    let labels = [("destination_service_name", "chat"), ("response_code", "101")];
    mesh.wait_requests(&labels, 1.0).await;
    // A second upgrade on a new connection works as well: the first one's
    // upstream connection left its pool instead of going back broken.
    let stream = TcpStream::connect(mesh.addr).await.expect("connect to meshd");
    let (mut ws, _) = tokio_tungstenite::client_async("ws://chat/again", stream).await.expect("second handshake");
    ws.send(Message::text("again")).await.expect("send");
    let echoed = tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await.expect("echo in time");
    assert_eq!(echoed.expect("a message").expect("no error"), Message::text("again"));
    mesh.wait_requests(&labels, 2.0).await;
}
