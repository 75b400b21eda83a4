//! HTTP/1.1 `Upgrade` (WebSocket and any other protocol): the request goes
//! upstream with its `Connection: upgrade` and `Upgrade` headers (which
//! hop-by-hop stripping would remove), and when the upstream answers 101
//! the response goes back with its own, and both sockets are joined: bytes
//! are copied both ways until both sides are done. The request is counted
//! in the request metrics with its 101.
//!
//! The upstream connection leaves its pool for good: the tunnel owns it.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::upstream::PooledConn;

/// An upgrade the client asked for.
pub struct Upgrade {
    /// Resolves to the client's socket once the 101 has been sent.
    pub downstream: OnUpgrade,
    /// The `Upgrade` header (`websocket`, …).
    pub protocol: HeaderValue,
}

static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// The upgrade `req` asks for: HTTP/1.1 with `Upgrade` and a `Connection`
/// header naming `upgrade`.
pub fn requested<B>(req: &mut Request<B>) -> Option<Box<Upgrade>> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    if !names_upgrade(req.headers()) {
        return None;
    }
    Some(Box::new(Upgrade { downstream: hyper::upgrade::on(req), protocol }))
}

/// Puts the upgrade headers back on a message whose hop-by-hop headers
/// were removed.
pub fn restore_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, UPGRADE_TOKEN.clone());
    headers.insert(header::UPGRADE, protocol);
}

/// Joins the client's and the upstream's sockets once both upgrades have
/// completed. `conn` (the upstream connection's pool handle) is held until
/// then and dropped, never returned to its pool.
pub fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade, conn: PooledConn) {
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(downstream, upstream) {
            Ok(both) => both,
            Err(error) => {
                debug!(%error, "upgrade did not complete");
                return;
            }
        };
        drop(conn);
        let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
            debug!(%error, "upgraded connection ended with an error");
        }
    });
}

fn names_upgrade(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.to_str().is_ok_and(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")))
    })
}
