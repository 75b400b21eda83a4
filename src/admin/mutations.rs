//! The admin API's only state-changing pages, off unless asked for.
//!
//! | path | answer |
//! |---|---|
//! | `POST /reload` | 202: reloads the configuration, as SIGHUP does |
//! | `POST /drain` | 202: starts the drain SIGTERM starts (`/ready` 503, listeners stop accepting, then meshd exits) |
//!
//! Both answer 403 and change nothing unless meshd runs with
//! `--admin-allow-mutations` (`MESHD_ADMIN_ALLOW_MUTATIONS`): the admin port
//! is a read-only window by default, so anything that can reach it (a
//! misconfigured bind, a pod on the host network) can look but not act.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokio::sync::{watch, Notify};
use tracing::info;

use super::{text, AdminState};

/// The handles `POST /reload` and `POST /drain` pull, present only with
/// `--admin-allow-mutations`.
pub struct Mutations {
    /// Wakes the reload task (SIGHUP's path).
    pub reload: Arc<Notify>,
    /// `true` starts the drain (SIGTERM's path).
    pub drain: watch::Sender<bool>,
}

/// A state-changing page the admin API knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    Reload,
    Drain,
}

// === impl Mutation ===

impl Mutation {
    /// The mutation `path` names, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/reload" => Some(Mutation::Reload),
            "/drain" => Some(Mutation::Drain),
            _ => None,
        }
    }
}

/// Answers a `POST` to a mutation's page: 403 when mutations are off.
pub fn apply(state: &AdminState, mutation: Mutation) -> http::Response<Full<Bytes>> {
    let Some(mutations) = &state.mutations else {
        return text(
            StatusCode::FORBIDDEN,
            "admin mutations are disabled; start meshd with --admin-allow-mutations to enable POST /reload and POST /drain\n",
        );
    };
    match mutation {
        Mutation::Reload => {
            info!("admin POST /reload: reloading configuration");
            mutations.reload.notify_one();
            text(StatusCode::ACCEPTED, "reloading\n")
        }
        Mutation::Drain => {
            info!("admin POST /drain: draining");
            state.begin_drain(&mutations.drain);
            text(StatusCode::ACCEPTED, "draining\n")
        }
    }
}
