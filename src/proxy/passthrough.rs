//! TLS passthrough (Gateway servers with `tls.mode: PASSTHROUGH`, spec
//! §1.17): the server name of a connection's ClientHello, read without
//! terminating TLS, as Envoy's `tls_inspector` listener filter does.
//!
//! The ClientHello is never consumed: the bytes are peeked (`MSG_PEEK`),
//! parsed by rustls' [`Acceptor`] (fed from the peeked slice; nothing is
//! ever written back), and left in the socket, so that once
//! [`tcp`](super::tcp) has chosen a route by the name they are relayed to
//! the upstream with the rest of the stream, which completes the
//! handshake with the client itself.
//!
//! A ClientHello may span several TCP segments (a post-quantum key share
//! alone is over 1 KB), so peeking repeats until rustls has a whole one.
//! A peek returns what is buffered even when nothing new has arrived, so
//! each peek runs inside [`TcpStream::try_io`]: a peek that finds no new
//! byte reports `WouldBlock`, which clears the socket's readiness, and the
//! next [`TcpStream::ready`] waits for the next arrival (tokio's readiness
//! is edge-triggered, and a peek inside `try_io` cannot miss an arrival
//! between the peek and the clearing). A peer's FIN stays ready once
//! seen: no new byte after it means none will come. The peeks go through a
//! duplicate of the socket's descriptor: std's `peek` on it is the one
//! safe, synchronous peek at hand.
//!
//! Bytes that are not a TLS ClientHello, a ClientHello over
//! [`MAX_CLIENT_HELLO`] (Envoy's `tls_inspector` limit), a connection that
//! closes first, or one that has sent no whole ClientHello within
//! [`CLIENT_HELLO_TIMEOUT`] end the connection.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rustls::server::Acceptor;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The largest ClientHello read (Envoy's `tls_inspector` limit).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// How long a client has to send its ClientHello (Envoy's listener filter
/// timeout is 15 s; meshd's TLS handshake timeout is 10 s).
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The first peek's buffer, doubled while the ClientHello is longer.
const FIRST_PEEK: usize = 4 * 1024;

/// Why a connection's ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientHelloError {
    #[error("not a TLS ClientHello: {0}")]
    NotTls(rustls::Error),
    #[error("the ClientHello is larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    #[error("the connection closed before a whole ClientHello")]
    Closed,
    #[error("no whole ClientHello within {CLIENT_HELLO_TIMEOUT:?}")]
    Timeout,
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// What the bytes peeked so far hold.
enum Parsed {
    /// A whole ClientHello, with its server name if it has one.
    Hello(Option<String>),
    /// The start of one: peek more.
    Partial,
}

/// The server name (SNI) of the ClientHello `stream` starts with, `None`
/// when it names none; the bytes stay unread in the socket.
pub async fn server_name(stream: &TcpStream) -> Result<Option<String>, ClientHelloError> {
    tokio::time::timeout(CLIENT_HELLO_TIMEOUT, peek_hello(stream)).await.map_err(|_| ClientHelloError::Timeout)?
}

async fn peek_hello(stream: &TcpStream) -> Result<Option<String>, ClientHelloError> {
    let peeker = std::net::TcpStream::from(stream.as_fd().try_clone_to_owned()?);
    let mut buf = vec![0; FIRST_PEEK];
    let mut seen = 0;
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        let peeked = stream.try_io(Interest::READABLE, || match peeker.peek(&mut buf)? {
            // Nothing new since the last peek: wait for the next arrival.
            n if n == seen && n != 0 && n < buf.len() => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        });
        let n = match peeked {
            Ok(0) => return Err(ClientHelloError::Closed),
            Ok(n) => n,
            // The client's FIN came after its last byte, and stays ready
            // (tokio never clears it): nothing more will arrive.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => {
                return Err(ClientHelloError::Closed)
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error.into()),
        };
        seen = n;
        match parse(&buf[..n])? {
            Parsed::Hello(name) => return Ok(name),
            Parsed::Partial if n < buf.len() => {}
            Parsed::Partial if buf.len() < MAX_CLIENT_HELLO => buf.resize((buf.len() * 2).min(MAX_CLIENT_HELLO), 0),
            Parsed::Partial => return Err(ClientHelloError::TooLarge),
        }
    }
}

/// Parses the start of a connection's bytes as a ClientHello.
fn parse(mut bytes: &[u8]) -> Result<Parsed, ClientHelloError> {
    let mut acceptor = Acceptor::default();
    // rustls takes at most a record's worth at a time: feed it and ask
    // after each, so bytes after the ClientHello (TLS 1.3 early data) are
    // never needed.
    while !bytes.is_empty() {
        if acceptor.read_tls(&mut bytes)? == 0 {
            break;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => return Ok(Parsed::Hello(accepted.client_hello().server_name().map(str::to_owned))),
            Ok(None) => {}
            Err((error, _alert)) => return Err(ClientHelloError::NotTls(error)),
        }
    }
    Ok(Parsed::Partial)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// The bytes of a rustls client's ClientHello naming `sni`.
    fn client_hello(sni: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        let mut client = ClientConnection::new(Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        client.write_tls(&mut hello).expect("ClientHello");
        hello
    }

    #[test]
    fn parses_whole_partial_and_foreign_bytes() {
        let hello = client_hello("a.example.com");
        assert!(matches!(parse(&hello), Ok(Parsed::Hello(Some(name))) if name == "a.example.com"));
        assert!(matches!(parse(&hello[..hello.len() - 1]), Ok(Parsed::Partial)));
        assert!(matches!(parse(&hello[..3]), Ok(Parsed::Partial)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Err(ClientHelloError::NotTls(_))));
    }

    /// Scenario: a ClientHello arriving in two pieces is read whole once
    /// the second arrives, and its bytes are still there to read.
    #[tokio::test]
    async fn peeks_a_client_hello_sent_in_pieces_without_consuming_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hello = client_hello("b.example.com");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(&hello[..10]).await.expect("first piece");
        let mut peeking = tokio::spawn(async move {
            let name = server_name(&server).await;
            (name, server)
        });
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut peeking).await;
        assert!(waited.is_err(), "a partial ClientHello must wait for the rest");
        client.write_all(&hello[10..]).await.expect("second piece");
        let (name, mut server) =
            tokio::time::timeout(Duration::from_secs(5), peeking).await.expect("read in time").expect("task");
        assert_eq!(name.expect("a ClientHello").as_deref(), Some("b.example.com"));
        let mut read = vec![0; hello.len()];
        server.read_exact(&mut read).await.expect("the ClientHello is still unread");
        assert_eq!(read, hello);
    }

    #[tokio::test]
    async fn a_connection_closed_early_is_no_client_hello() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hello = client_hello("c.example.com");
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(&hello[..20]).await.expect("a piece");
        });
        let (server, _) = listener.accept().await.expect("accept");
        client.await.expect("client");
        assert!(matches!(server_name(&server).await, Err(ClientHelloError::Closed)));
    }
}
