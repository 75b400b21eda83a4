//! `meshd demo`: two echo upstreams (v1, v2) and the proxy on the demo
//! configuration, with curl lines to try.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tracing::error;

use crate::server::{Options, RunningServer};

/// The demo's embedded configuration, used when `config/demo/` is not there
/// (the binary run outside the repository).
const EMBEDDED: &str = include_str!("../config/demo/reviews.yaml");

/// Upstream addresses the demo configuration points at.
const UPSTREAMS: [(&str, &str); 2] = [("reviews-v1", "127.0.0.1:18081"), ("reviews-v2", "127.0.0.1:18082")];
const LISTEN: &str = "127.0.0.1:15001";
const ADMIN: &str = "127.0.0.1:15000";

/// Runs the demo until SIGTERM or Ctrl-C.
pub async fn run(config: PathBuf, namespace: String) -> ExitCode {
    let (config, _tempdir) = match config_dir(config) {
        Ok(found) => found,
        Err(e) => {
            error!("cannot prepare the demo configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (name, addr) in UPSTREAMS {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tokio::spawn(async move { crate::echo::serve(listener, name).await });
            }
            Err(e) => {
                error!("cannot start the {name} upstream on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let options = Options {
        config: vec![config],
        listen: vec![addr(LISTEN)],
        admin: addr(ADMIN),
        namespace,
        drain_timeout: Duration::from_secs(5),
        watch: true,
        workers: 1,
        tcp: Vec::new(),
        gateway_bind: std::net::Ipv4Addr::LOCALHOST.into(),
        credentials_dir: None,
        mesh_cert_dir: None,
        sidecar: Default::default(),
        access_log: crate::proxy::access_log::Format::Off,
        limits: Default::default(),
        admin_allow_mutations: false,
    };
    let server = match RunningServer::start(options).await {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "\nmeshd demo is running. Try:\n\
         \n  curl -s -H 'Host: reviews.default.svc.cluster.local' http://{LISTEN}/   # 80 % v1, 20 % v2\
         \n  curl -s -H 'Host: reviews' -H 'end-user: jason' http://{LISTEN}/        # always v2\
         \n  curl -s -H 'Host: nowhere' -o /dev/null -w '%{{http_code}}\\n' http://{LISTEN}/  # 404 (NR)\
         \n  curl -s http://{ADMIN}/stats/prometheus | grep istio_requests_total\
         \n  curl -s http://{ADMIN}/config_dump\
         \n\nEdit config/demo/reviews.yaml and the table is swapped live. Ctrl-C stops.\n"
    );
    crate::signals::drive(server).await;
    ExitCode::SUCCESS
}

fn config_dir(config: PathBuf) -> std::io::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if config.is_dir() {
        return Ok((config, None));
    }
    let dir = tempfile::Builder::new().prefix("meshd-demo").tempdir()?;
    std::fs::write(dir.path().join("reviews.yaml"), EMBEDDED)?;
    Ok((dir.path().to_path_buf(), Some(dir)))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}
