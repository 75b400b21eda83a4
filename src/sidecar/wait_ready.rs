//! `meshd wait-ready`: blocks until meshd's admin API answers `GET /ready`
//! with 200, for images that still hold the app back until the proxy is
//! ready (Istio's `pilot-agent wait` in a `postStart` hook).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How often readiness is asked.
const PERIOD: Duration = Duration::from_millis(200);

/// Waits until `GET http://admin/ready` answers 200; `false` if `timeout`
/// passes first.
pub async fn wait_ready(admin: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout_at(deadline, ready(admin));
        match attempt.await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        if Instant::now() + PERIOD > deadline {
            return false;
        }
        tokio::time::sleep(PERIOD).await;
    }
}

/// One `GET /ready`.
async fn ready(admin: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect(admin).await else { return false };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return false;
    };
    tokio::spawn(conn);
    let Ok(req) = Request::get("/ready").header(http::header::HOST, admin.to_string()).body(Empty::<Bytes>::new())
    else {
        return false;
    };
    matches!(send.send_request(req).await, Ok(response) if response.status() == StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    #[tokio::test]
    async fn nothing_listening_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert!(!wait_ready(addr, Duration::from_millis(300)).await);
    }
}
