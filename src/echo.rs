//! `meshd echo`: a tiny, fast upstream that answers every request with its
//! name, so the demo, the tests and the benchmarks need nothing else.
//!
//! The answer is a ~100-byte JSON object
//! `{"name":…,"method":…,"path":…,"host":…}` with an `x-echo-name` header.
//! Two query parameters make it a test double: `status=N` answers with
//! status N, `delay_ms=N` waits N ms before answering.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

/// Serves `listener` forever, answering as `name`.
pub async fn serve(listener: TcpListener, name: &str) {
    let name: Arc<str> = Arc::from(name);
    let header = HeaderValue::from_str(&name).unwrap_or_else(|_| HeaderValue::from_static("echo"));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (name, header) = (name.clone(), header.clone());
        let service = service_fn(move |req| answer(name.clone(), header.clone(), req));
        tokio::spawn(async move {
            if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%error, "echo connection ended with an error");
            }
        });
    }
}

async fn answer(
    name: Arc<str>,
    header: HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut status = StatusCode::OK;
    if let Some(query) = req.uri().query() {
        for (key, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match (key, value.parse::<u64>()) {
                ("status", Ok(code)) => {
                    status = u16::try_from(code).ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(status)
                }
                ("delay_ms", Ok(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
                _ => {}
            }
        }
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let body = serde_json::json!({
        "name": &*name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "host": host,
    })
    .to_string();
    // Read (and discard) the request body so the connection can be reused.
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-echo-name", header);
    Ok(response)
}
