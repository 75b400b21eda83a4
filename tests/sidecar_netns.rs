//! Sidecar capture end to end, in network namespaces joined by a veth
//! pair, with the real binary and the real iptables rules:
//!
//! ```text
//!  client netns (10.X.Y.1)                      server netns (10.X.Y.2)
//!  curl ─▶ iptables REDIRECT ─▶ meshd :15001 ─▶ meshd echo v1 :8081, v2 :8082
//!  app :7070 ◀─ meshd :15006 ◀─ iptables ◀─────  curl (inbound)
//! ```
//!
//! An unmodified `curl http://10.X.Y.2:8080/` is captured, routed by a
//! VirtualService (weights and a header match) and counted with source
//! and destination labels; `ALLOW_ANY` passes an unknown destination
//! through and `REGISTRY_ONLY` refuses it (502); inbound capture forwards
//! to the app on 127.0.0.1 and reports `reporter="destination"`.
//!
//! It needs root, `ip`, `iptables-restore`, `setpriv` and `curl` (`.ci/run`
//! installs them); where namespaces cannot be made it says so and passes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// meshd's UID and GID: the iptables rules never capture them.
const PROXY_UID: &str = "1337";

/// Two namespaces joined by a veth pair; deleted on drop.
struct Netns {
    client: String,
    server: String,
    client_ip: String,
    server_ip: String,
    /// Processes started in the namespaces, killed on drop.
    children: Vec<Child>,
}

impl Netns {
    /// Makes the namespaces, or `None` (with the reason) where this
    /// machine cannot.
    fn new() -> Option<Netns> {
        for tool in ["ip", "iptables-restore", "setpriv", "curl"] {
            if !run_ok(Command::new("sh").args(["-c", &format!("command -v {tool}")])) {
                eprintln!("skipped: {tool} is not installed");
                return None;
            }
        }
        let id = std::process::id() % 100_000;
        let (client, server) = (format!("meshd-c{id}"), format!("meshd-s{id}"));
        if !run_ok(Command::new("ip").args(["netns", "add", &client])) {
            eprintln!("skipped: cannot create network namespaces (not root, or no CAP_SYS_ADMIN)");
            return None;
        }
        let octet = 1 + id % 250;
        let net = Netns {
            client_ip: format!("10.213.{octet}.1"),
            server_ip: format!("10.213.{octet}.2"),
            client,
            server,
            children: Vec::new(),
        };
        let (vc, vs) = (format!("mc{id}"), format!("ms{id}"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &net.server],
            vec!["link", "add", &vc, "type", "veth", "peer", "name", &vs],
            vec!["link", "set", &vc, "netns", &net.client],
            vec!["link", "set", &vs, "netns", &net.server],
        ];
        for step in steps {
            assert!(run_ok(Command::new("ip").args(&step)), "ip {step:?}");
        }
        let client_cidr = format!("{}/24", net.client_ip);
        let server_cidr = format!("{}/24", net.server_ip);
        for (ns, dev, cidr) in [(&net.client, &vc, &client_cidr), (&net.server, &vs, &server_cidr)] {
            assert!(run_ok(Command::new("ip").args(["-n", ns, "addr", "add", cidr, "dev", dev])));
            assert!(run_ok(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"])));
            assert!(run_ok(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"])));
        }
        Some(net)
    }

    /// `cmd` run in namespace `ns`.
    fn exec(&self, ns: &str, cmd: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).args(cmd);
        command
    }

    /// Starts `cmd` in `ns`, killed when the namespaces go.
    fn spawn(&mut self, ns: &str, cmd: &[&str], env: &[(&str, &str)]) {
        let mut command = self.exec(ns, cmd);
        command.envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::inherit());
        self.children.push(command.spawn().expect("spawn"));
    }

    /// `curl` in `ns`: (status, body).
    fn curl(&self, ns: &str, url: &str, headers: &[&str]) -> (u16, String) {
        let mut cmd = vec!["curl", "-s", "-m", "5", "-w", "\n%{http_code}"];
        for h in headers {
            cmd.extend(["-H", h]);
        }
        cmd.push(url);
        let out = self.exec(ns, &cmd).output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Waits until `url` answers 200 in `ns`.
    fn wait_ok(&self, ns: &str, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.curl(ns, url, &[]).0 != 200 {
            assert!(Instant::now() < deadline, "{url} never answered 200 in {ns}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `bytes` (printf format) over TCP to `ip:port` from `ns` and
    /// returns what came back before the connection closed (5 s at most).
    fn tcp_exchange(&self, ns: &str, ip: &str, port: u16, bytes: &str) -> String {
        let script = format!("exec 3<>/dev/tcp/{ip}/{port} && printf '{bytes}' >&3 && cat <&3");
        let out = self.exec(ns, &["timeout", "5", "bash", "-c", &script]).output().expect("bash");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stop_children(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_children();
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The meshd binary, copied where UID 1337 can run it.
fn meshd_for_proxy_uid(dir: &Path) -> PathBuf {
    let path = dir.join("meshd");
    std::fs::copy(env!("CARGO_BIN_EXE_meshd"), &path).expect("copy meshd");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod meshd");
    path
}

/// The sum of `istio_requests_total` samples whose labels include all of
/// `labels`, read from meshd's admin port in the client namespace.
fn requests(net: &Netns, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = net.curl(&net.client, "http://127.0.0.1:15000/stats/prometheus", &[]);
    text.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn captured_traffic_is_routed_counted_passed_through_and_refused() {
    let Some(mut net) = Netns::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let meshd = meshd_for_proxy_uid(dir.path());
    let meshd = meshd.to_str().expect("path");
    let server_ip = net.server_ip.clone();

    // The server side: two versions of the service, and some other server.
    for (port, name) in [("8081", "v1"), ("8082", "v2"), ("9999", "other")] {
        let listen = format!("{server_ip}:{port}");
        let server = net.server.clone();
        net.spawn(&server, &[meshd, "echo", "--listen", &listen, "--name", name], &[]);
    }
    // The client pod's app (for inbound).
    let client = net.client.clone();
    net.spawn(&client, &[meshd, "echo", "--listen", "127.0.0.1:7070", "--name", "app"], &[]);

    let config = dir.path().join("config.yaml");
    let yaml = format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: server, namespace: default}}
spec:
  hosts: [server.test]
  addresses: [{server_ip}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 8080, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: {server_ip}, ports: {{http: 8081}}, labels: {{app: server, version: v1}}}}
  - {{address: {server_ip}, ports: {{http: 8082}}, labels: {{app: server, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: server, namespace: default}}
spec:
  host: server.test
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: server, namespace: default}}
spec:
  hosts: [server.test]
  http:
  - match: [{{headers: {{x-canary: {{exact: 'yes'}}}}}}]
    route: [{{destination: {{host: server.test, subset: v2}}}}]
  - route:
    - {{destination: {{host: server.test, subset: v1}}, weight: 50}}
    - {{destination: {{host: server.test, subset: v2}}, weight: 50}}
"
    );
    std::fs::write(&config, yaml).expect("write config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod config");
    let config = config.to_str().expect("path").to_owned();

    let rules = net
        .exec(&client, &[meshd, "iptables", "--proxy-uid", PROXY_UID, "--exclude-ports", "15000", "--apply"])
        .status();
    assert!(rules.is_ok_and(|s| s.success()), "meshd iptables --apply");

    let start_proxy = |net: &mut Netns, policy: &str| {
        let client = net.client.clone();
        let setpriv = ["setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"];
        let mut cmd: Vec<&str> = setpriv.to_vec();
        cmd.extend([meshd, "run", "--config", &config, "--outbound", "0.0.0.0:15001", "--inbound", "0.0.0.0:15006"]);
        cmd.extend(["--admin", "127.0.0.1:15000", "--outbound-traffic-policy", policy, "--no-watch"]);
        cmd.extend(["--drain-timeout", "3s"]);
        let env = [("ISTIO_META_WORKLOAD_NAME", "client-app"), ("MESHD_APP", "client"), ("MESHD_LOG", "warn")];
        net.spawn(&client, &cmd, &env);
        net.wait_ok(&client, "http://127.0.0.1:15000/ready");
    };
    start_proxy(&mut net, "ALLOW_ANY");

    // Captured and routed: the header match always takes v2.
    let url = format!("http://{server_ip}:8080/");
    for _ in 0..5 {
        let (status, body) = net.curl(&client, &url, &["x-canary: yes"]);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"name\":\"v2\""), "{body}");
    }
    // The weights split the rest between v1 and v2.
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (status, body) = net.curl(&client, &url, &[]);
        assert_eq!(status, 200, "{body}");
        let name = if body.contains("\"name\":\"v1\"") { "v1" } else { "v2" };
        *seen.entry(name).or_insert(0) += 1;
    }
    assert!(seen.get("v1").is_some_and(|n| *n >= 5) && seen.get("v2").is_some_and(|n| *n >= 5), "{seen:?}");
    let counted = [
        ("reporter", "source"),
        ("source_workload", "client-app"),
        ("source_app", "client"),
        ("destination_service", "server.test"),
        ("destination_version", "v2"),
        ("response_code", "200"),
    ];
    assert!(requests(&net, &counted) >= 5.0, "v2 requests counted with source and destination labels");

    // ALLOW_ANY: an unknown destination is passed through.
    let (status, body) = net.curl(&client, &format!("http://{server_ip}:9999/"), &[]);
    assert_eq!(status, 200);
    assert!(body.contains("\"name\":\"other\""), "{body}");
    assert!(requests(&net, &[("destination_service_name", "PassthroughCluster")]) >= 1.0);

    // Inbound: a client in the server namespace calls the client pod's
    // app port; meshd forwards it to the app on 127.0.0.1.
    let client_ip = net.client_ip.clone();
    let (status, body) = net.curl(&net.server, &format!("http://{client_ip}:7070/"), &[]);
    assert_eq!(status, 200);
    assert!(body.contains("\"name\":\"app\""), "{body}");
    let inbound = [("reporter", "destination"), ("destination_workload", "client-app"), ("response_code", "200")];
    assert!(requests(&net, &inbound) >= 1.0, "inbound counted by the destination");

    // Not HTTP: relayed as TCP to the original destination (the echo
    // server answers the stray bytes with a 400: they reached it).
    let reply = net.tcp_exchange(&client, &server_ip, 9999, "hello\\r\\n\\r\\n");
    assert!(reply.starts_with("HTTP/1.1 400"), "TCP passthrough: {reply:?}");

    // REGISTRY_ONLY: the unknown destination is refused.
    // The proxy is the last process started.
    if let Some(mut proxy) = net.children.pop() {
        let _ = proxy.kill();
        let _ = proxy.wait();
    }
    start_proxy(&mut net, "REGISTRY_ONLY");
    let (status, _) = net.curl(&client, &format!("http://{server_ip}:9999/"), &[]);
    assert_eq!(status, 502, "REGISTRY_ONLY refuses an unknown destination");
    let (status, body) = net.curl(&client, &url, &["x-canary: yes"]);
    assert_eq!((status, body.contains("\"name\":\"v2\"")), (200, true), "known services still work");
    assert_eq!(net.tcp_exchange(&client, &server_ip, 9999, "hello\\r\\n\\r\\n"), "", "TCP refused too");

    // SIGTERM: readiness turns 503 and inbound stops at once; outbound
    // keeps working for the drain timeout, so the app can finish its calls.
    let proxy_pid = net.children.last().map(|c| c.id().to_string()).unwrap_or_default();
    assert!(run_ok(Command::new("kill").args(["-TERM", &proxy_pid])));
    let deadline = Instant::now() + Duration::from_secs(5);
    while net.curl(&client, "http://127.0.0.1:15000/ready", &[]).0 != 503 {
        assert!(Instant::now() < deadline, "/ready never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = net.curl(&net.server, &format!("http://{client_ip}:7070/"), &[]);
    assert_ne!(status, 200, "inbound is drained");
    let (status, body) = net.curl(&client, &url, &["x-canary: yes"]);
    assert_eq!((status, body.contains("\"name\":\"v2\"")), (200, true), "outbound still works while draining");
}
