//! A gRPC echo service (tonic, written by hand: no protoc) served over
//! HTTP/2 by a real hyper server, plain (h2c) or TLS; and a tonic client
//! for it.
//!
//! `test.Echo/Say` (unary) answers with the message, the `:authority` and
//! HTTP version it was called with, or fails with `fail_with`.
//! `test.Echo/Count` (server streaming) sends `count` replies, then ends
//! with OK, or with `fail_with` and a trailer `x-detail: <message>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// Replies `Count` sends.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// A gRPC status code to fail with (0: succeed).
    #[prost(int32, tag = "3")]
    pub fail_with: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub authority: String,
    #[prost(string, tag = "3")]
    pub version: String,
}

/// A running echo server.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    /// Calls received, of either method.
    pub calls: Arc<AtomicU32>,
}

/// Serves the echo service on `127.0.0.1:0`, over TLS when `tls` is set
/// (offering ALPN `h2`). `unavailable_first` calls fail with UNAVAILABLE
/// before the service answers normally.
pub async fn serve(tls: Option<Arc<rustls::ServerConfig>>, unavailable_first: u32) -> GrpcUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let calls = counter.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    handle(req, n < unavailable_first)
                });
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(config) => {
                        let Ok(stream) = TlsAcceptor::from(config).accept(stream).await else { return };
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    GrpcUpstream { addr, calls }
}

async fn handle(
    req: http::Request<Incoming>,
    unavailable: bool,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    let version = format!("{:?}", req.version());
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
    let response = match req.uri().path() {
        "/test.Echo/Say" => {
            let say = tower::service_fn(move |call: tonic::Request<EchoRequest>| {
                let (authority, version) = (authority.clone(), version.clone());
                async move {
                    let ask = call.into_inner();
                    if unavailable {
                        return Err(Status::unavailable("not yet"));
                    }
                    if ask.fail_with != 0 {
                        return Err(Status::new(Code::from(ask.fail_with), format!("failed: {}", ask.message)));
                    }
                    Ok(tonic::Response::new(EchoReply { message: ask.message, authority, version }))
                }
            });
            grpc.unary(say, req).await
        }
        "/test.Echo/Count" => {
            let count = tower::service_fn(move |call: tonic::Request<EchoRequest>| {
                let (authority, version) = (authority.clone(), version.clone());
                async move {
                    let ask = call.into_inner();
                    let mut items: Vec<Result<EchoReply, Status>> = (0..ask.count)
                        .map(|i| {
                            let message = format!("{} {i}", ask.message);
                            Ok(EchoReply { message, authority: authority.clone(), version: version.clone() })
                        })
                        .collect();
                    if ask.fail_with != 0 {
                        let mut status = Status::new(Code::from(ask.fail_with), "stream failed");
                        if let Ok(value) = MetadataValue::try_from(ask.message.as_str()) {
                            status.metadata_mut().insert("x-detail", value);
                        }
                        items.push(Err(status));
                    }
                    Ok::<_, Status>(tonic::Response::new(futures_util::stream::iter(items)))
                }
            });
            grpc.server_streaming(count, req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    };
    Ok(response)
}

/// A tonic client calling through `addr` with `:authority` `authority`;
/// over TLS (trusting `ca_pem`, checking the name `authority`) when
/// `ca_pem` is set.
pub async fn client(addr: SocketAddr, authority: &str, ca_pem: Option<&str>) -> tonic::client::Grpc<Channel> {
    let scheme = if ca_pem.is_some() { "https" } else { "http" };
    let origin: http::Uri = format!("{scheme}://{authority}").parse().expect("origin");
    let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}")).expect("endpoint").origin(origin);
    if let Some(pem) = ca_pem {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem))
            .domain_name(authority);
        endpoint = endpoint.tls_config(tls).expect("tls config");
    }
    tonic::client::Grpc::new(endpoint.connect_lazy())
}

pub fn ask(message: &str, count: u32, fail_with: Code) -> EchoRequest {
    EchoRequest { message: message.into(), count, fail_with: fail_with as i32 }
}

/// Calls `Say`.
pub async fn say(grpc: &mut tonic::client::Grpc<Channel>, ask: EchoRequest) -> Result<EchoReply, Status> {
    grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let codec = ProstCodec::<EchoRequest, EchoReply>::default();
    let path = PathAndQuery::from_static("/test.Echo/Say");
    grpc.unary(tonic::Request::new(ask), path, codec).await.map(tonic::Response::into_inner)
}

/// Calls `Count` and reads the stream to its end: the replies, and the
/// final status (with its trailers) if it was not OK.
pub async fn count(grpc: &mut tonic::client::Grpc<Channel>, ask: EchoRequest) -> (Vec<EchoReply>, Result<(), Status>) {
    if let Err(e) = grpc.ready().await {
        return (Vec::new(), Err(Status::unknown(e.to_string())));
    }
    let codec = ProstCodec::<EchoRequest, EchoReply>::default();
    let path = PathAndQuery::from_static("/test.Echo/Count");
    let mut stream = match grpc.server_streaming(tonic::Request::new(ask), path, codec).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut replies = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(reply)) => replies.push(reply),
            Ok(None) => return (replies, Ok(())),
            Err(status) => return (replies, Err(status)),
        }
    }
}
