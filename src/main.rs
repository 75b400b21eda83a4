//! The `meshd` command line. Everything else lives in the library.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::error;

use meshd::config::{self, resources::Duration as IstioDuration, Sources};
use meshd::proxy::access_log;
use meshd::server::{ListenAddr, Options, RunningServer, SidecarOptions};
use meshd::sidecar::iptables::{self, CaptureRules, Family};

#[derive(Parser)]
#[command(name = "meshd", version, about = "An L7 proxy data plane that reads Istio networking YAML")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of `RunArgs` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run(RunArgs),
    /// Check configuration files; exit 0 when valid, 1 when not.
    Validate(ValidateArgs),
    /// Run a tiny upstream that answers with its name.
    Echo(EchoArgs),
    /// Run two echo upstreams and the proxy on config/demo/.
    Demo(DemoArgs),
    /// Print (or apply) the iptables NAT rules that send a pod's TCP
    /// traffic through meshd's capture listeners (istio-iptables' job).
    Iptables(IptablesArgs),
    /// Wait until the admin API answers GET /ready with 200.
    WaitReady(WaitReadyArgs),
}

#[derive(Args)]
struct RunArgs {
    /// YAML file or directory (repeatable, or comma-separated in the env var).
    #[arg(long, required = true, env = "MESHD_CONFIG", value_delimiter = ',')]
    config: Vec<PathBuf>,
    /// Proxy listen address (repeatable): ADDR for HTTP, or tcp://ADDR=HOST
    /// for a TCP listener that routes by HOST's `tcp` routes [default:
    /// 127.0.0.1:15001, none with capture listeners].
    #[arg(long, env = "MESHD_LISTEN", value_delimiter = ',')]
    listen: Vec<ListenAddr>,
    #[command(flatten)]
    sidecar: SidecarArgs,
    #[command(flatten)]
    limits: LimitArgs,
    /// Admin listen address (loopback by default).
    #[arg(long, env = "MESHD_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Enable the admin API's POST /reload (as SIGHUP) and POST /drain (as
    /// SIGTERM); without it they answer 403.
    #[arg(long, env = "MESHD_ADMIN_ALLOW_MUTATIONS")]
    admin_allow_mutations: bool,
    #[command(flatten)]
    common: CommonArgs,
    /// How long SIGTERM waits for in-flight requests (e.g. 5s, 500ms).
    #[arg(long, env = "MESHD_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Do not watch the configuration files (SIGHUP still reloads).
    #[arg(long, env = "MESHD_NO_WATCH")]
    no_watch: bool,
    /// Worker threads, each with its own runtime and SO_REUSEPORT listener
    /// sockets (default: available cores, at most 2, as a sidecar).
    #[arg(long, env = "MESHD_WORKERS")]
    workers: Option<usize>,
    /// Address the ports of Gateway resources listen on.
    #[arg(long, env = "MESHD_GATEWAY_BIND_ADDRESS", default_value = "0.0.0.0")]
    gateway_bind_address: std::net::IpAddr,
    /// Directory of Gateway credentials: NAME/tls.crt, NAME/tls.key,
    /// NAME/ca.crt for `credentialName: NAME`.
    #[arg(long, env = "MESHD_CREDENTIALS_DIR")]
    credentials_dir: Option<PathBuf>,
    /// Directory of the workload's mesh certificates for ISTIO_MUTUAL
    /// (cert-chain.pem, key.pem, root-cert.pem, as Istio mounts them).
    #[arg(long, env = "MESHD_MESH_CERT_DIR")]
    mesh_cert_dir: Option<PathBuf>,
    /// Access log on stdout, one line per request (and per TCP
    /// connection): Envoy's text format or JSON, with Istio's fields.
    #[arg(long, env = "MESHD_ACCESS_LOG", value_enum, default_value_t = AccessLog::Off)]
    access_log: AccessLog,
}

/// Downstream limits and timeouts (README: Hostile input and limits).
#[derive(Args)]
struct LimitArgs {
    /// Largest request body in bytes, declared by Content-Length or
    /// counted as it streams (413 past it) [default: unlimited].
    #[arg(long, env = "MESHD_MAX_REQUEST_BODY")]
    max_request_body: Option<u64>,
    /// Downstream connections open at once; more are accepted and closed
    /// [default: unlimited].
    #[arg(long, env = "MESHD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// How long an HTTP/1 client has to send a request head (also the
    /// keep-alive idle time between requests); 0 turns it off.
    #[arg(long, env = "MESHD_REQUEST_HEADERS_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    request_headers_timeout: Duration,
    /// How long a connection may move no bytes before it is closed; 0
    /// turns it off.
    #[arg(long, env = "MESHD_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// How long a request body may send nothing while meshd waits for it
    /// (408 past it); 0 disables it.
    #[arg(long, env = "MESHD_REQUEST_BODY_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    request_body_timeout: Duration,
}

#[derive(Args)]
struct SidecarArgs {
    /// Sidecar mode: outbound capture on 0.0.0.0:15001, inbound capture on
    /// 0.0.0.0:15006, stats on 0.0.0.0:15090, readiness on 0.0.0.0:15021,
    /// the pod's labels from /etc/podinfo/labels, and no --listen unless
    /// given.
    #[arg(long, env = "MESHD_SIDECAR")]
    sidecar: bool,
    /// Outbound capture listener (connections iptables redirected from the
    /// app).
    #[arg(long, env = "MESHD_OUTBOUND")]
    outbound: Option<SocketAddr>,
    /// Inbound capture listener (connections iptables redirected to the
    /// app).
    #[arg(long, env = "MESHD_INBOUND")]
    inbound: Option<SocketAddr>,
    /// Where outbound traffic to an unknown destination goes.
    #[arg(long, env = "MESHD_OUTBOUND_TRAFFIC_POLICY", value_enum, default_value_t = TrafficPolicy::AllowAny)]
    outbound_traffic_policy: TrafficPolicy,
    /// Listener serving /stats/prometheus alone.
    #[arg(long, env = "MESHD_STATS")]
    stats: Option<SocketAddr>,
    /// Listener serving /healthz/ready alone.
    #[arg(long, env = "MESHD_READINESS")]
    readiness: Option<SocketAddr>,
    /// The pod's labels (a downward-API file of key="value" lines).
    #[arg(long, env = "MESHD_POD_LABELS")]
    pod_labels: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TrafficPolicy {
    #[value(name = "ALLOW_ANY")]
    AllowAny,
    #[value(name = "REGISTRY_ONLY")]
    RegistryOnly,
}

#[derive(Args)]
struct IptablesArgs {
    /// UID meshd runs as: its own traffic is never captured.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// GID meshd runs as [default: the UID].
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Inbound ports to capture: '*' for all, or a comma-separated list.
    #[arg(long, default_value = "*")]
    inbound_ports: String,
    /// Inbound ports never captured (comma-separated).
    #[arg(long, alias = "inbound-exclude-ports", default_value = "")]
    exclude_ports: String,
    /// Outbound destination ports never captured (comma-separated).
    #[arg(long, default_value = "")]
    outbound_exclude_ports: String,
    /// Outbound destination CIDRs never captured (comma-separated).
    #[arg(long, value_delimiter = ',')]
    outbound_exclude_cidrs: Vec<ipnet::IpNet>,
    /// meshd's outbound capture port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// meshd's inbound capture port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Also the IPv6 rules (ip6tables).
    #[arg(long)]
    ipv6: bool,
    /// Install the rules (iptables-restore) instead of printing them.
    #[arg(long)]
    apply: bool,
}

#[derive(Args)]
struct WaitReadyArgs {
    /// meshd's admin address.
    #[arg(long, env = "MESHD_ADMIN", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// How long to wait.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
struct CommonArgs {
    /// Namespace of resources without metadata.namespace, and of the proxy
    /// (default: $POD_NAMESPACE, else "default").
    #[arg(long, env = "MESHD_NAMESPACE")]
    namespace: Option<String>,
    /// Log format.
    #[arg(long, env = "MESHD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "MESHD_LOG", default_value = "info")]
    log: String,
}

#[derive(Args)]
struct ValidateArgs {
    /// YAML files or directories.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[arg(long, env = "MESHD_NAMESPACE")]
    namespace: Option<String>,
}

#[derive(Args)]
struct EchoArgs {
    #[arg(long, env = "MESHD_ECHO_LISTEN", default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    #[arg(long, env = "MESHD_ECHO_NAME", default_value = "echo")]
    name: String,
    #[arg(long, env = "MESHD_WORKERS", default_value_t = 1)]
    workers: usize,
}

#[derive(Args)]
struct DemoArgs {
    /// Demo configuration directory.
    #[arg(long, default_value = "config/demo")]
    config: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccessLog {
    Text,
    Json,
    Off,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate(args),
        Command::Run(args) => {
            tune_allocator();
            init_logs(&args.common);
            let workers = args.workers.unwrap_or_else(default_workers).max(1);
            // One runtime thread here: with one worker it serves the
            // listeners too; with more, each worker runs its own and this
            // one keeps the admin API, reloads and signals.
            block_on(1, run(args, workers))
        }
        Command::Echo(args) => {
            let workers = args.workers;
            block_on(workers, echo(args))
        }
        Command::Demo(args) => {
            init_logs(&args.common);
            block_on(default_workers(), meshd::demo::run(args.config, namespace(&args.common.namespace)))
        }
        Command::Iptables(args) => iptables(args),
        Command::WaitReady(args) => block_on(1, async move {
            if meshd::sidecar::wait_ready::wait_ready(args.admin, args.timeout).await {
                ExitCode::SUCCESS
            } else {
                eprintln!("meshd wait-ready: {} not ready within {:?}", args.admin, args.timeout);
                ExitCode::FAILURE
            }
        }),
    }
}

fn iptables(args: IptablesArgs) -> ExitCode {
    let ports = |text: &str| iptables::parse_ports(text).map(Option::unwrap_or_default);
    let parsed = (|| {
        Ok::<_, String>(CaptureRules {
            proxy_uid: args.proxy_uid,
            proxy_gid: args.proxy_gid.unwrap_or(args.proxy_uid),
            outbound_port: args.outbound_port,
            inbound_port: args.inbound_port,
            inbound_ports: iptables::parse_ports(&args.inbound_ports)?,
            inbound_exclude_ports: ports(&args.exclude_ports)?,
            outbound_exclude_ports: ports(&args.outbound_exclude_ports)?,
            outbound_exclude_cidrs: args.outbound_exclude_cidrs,
        })
    })();
    let rules = match parsed {
        Ok(rules) => rules,
        Err(e) => {
            eprintln!("meshd iptables: {e}");
            return ExitCode::FAILURE;
        }
    };
    let families: &[Family] = if args.ipv6 { &[Family::V4, Family::V6] } else { &[Family::V4] };
    for family in families {
        if !args.apply {
            print!("{}", rules.script(*family));
            continue;
        }
        if let Err(e) = rules.apply(*family) {
            eprintln!("meshd iptables: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// The glibc malloc setting `meshd run` starts with.
///
/// glibc serves blocks of 128 KiB and more with `mmap`, but each time such
/// a block is freed it raises that threshold to the block's size (up to 32
/// MiB). A proxy frees big blocks routinely (a scrape's text, a config
/// file, a reload's tables), after which they come from the heap and stay
/// resident: with 1,000 services, one scrape took the process from 29 to
/// 40 MB for good, and reloads to 65 MB. A fixed threshold keeps them on
/// `mmap`, returned to the system when freed (47 MB after reloads, the old
/// and new tables briefly coexisting).
///
/// The setting is read only at process start, so meshd re-executes itself
/// once with `GLIBC_TUNABLES` set (same PID, same arguments). When
/// `GLIBC_TUNABLES` is already set, the user's settings are left alone. On
/// other C libraries, or if exec fails, meshd runs as it is.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        const TUNABLES: &str = "glibc.malloc.mmap_threshold=131072";
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut args = std::env::args_os();
        let Some(arg0) = args.next() else { return };
        // `exec` returns only when it failed; meshd then runs untuned.
        let _failed = std::process::Command::new(exe).arg0(arg0).args(args).env("GLIBC_TUNABLES", TUNABLES).exec();
    }
}

async fn run(args: RunArgs, workers: usize) -> ExitCode {
    let (mut listen, mut tcp) = (Vec::new(), Vec::new());
    for addr in args.listen {
        match addr {
            ListenAddr::Http(addr) => listen.push(addr),
            ListenAddr::Tcp(tcp_listen) => tcp.push(tcp_listen),
        }
    }
    let sidecar = sidecar_options(&args.sidecar);
    let capturing = sidecar.outbound.is_some() || sidecar.inbound.is_some();
    if listen.is_empty() && tcp.is_empty() && !capturing {
        listen.push(SocketAddr::from(([127, 0, 0, 1], 15001)));
    }
    let options = Options {
        sidecar,
        config: args.config,
        listen,
        tcp,
        gateway_bind: args.gateway_bind_address,
        credentials_dir: args.credentials_dir,
        mesh_cert_dir: args.mesh_cert_dir,
        admin: args.admin,
        admin_allow_mutations: args.admin_allow_mutations,
        namespace: namespace(&args.common.namespace),
        drain_timeout: args.drain_timeout,
        watch: !args.no_watch,
        workers,
        access_log: match args.access_log {
            AccessLog::Text => access_log::Format::Text,
            AccessLog::Json => access_log::Format::Json,
            AccessLog::Off => access_log::Format::Off,
        },
        limits: meshd::proxy::limits::Limits {
            max_request_body: args.limits.max_request_body,
            max_connections: args.limits.max_connections,
            request_headers_timeout: args.limits.request_headers_timeout,
            idle_timeout: args.limits.idle_timeout,
            request_body_timeout: args.limits.request_body_timeout,
        },
    };
    match RunningServer::start(options).await {
        Ok(server) => {
            meshd::signals::drive(server).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The sidecar listeners: `--sidecar`'s defaults, each overridden by its
/// own flag.
fn sidecar_options(args: &SidecarArgs) -> SidecarOptions {
    let on = |port: u16| args.sidecar.then(|| SocketAddr::from(([0, 0, 0, 0], port)));
    let labels = PathBuf::from("/etc/podinfo/labels");
    SidecarOptions {
        outbound: args.outbound.or_else(|| on(15001)),
        inbound: args.inbound.or_else(|| on(15006)),
        registry_only: matches!(args.outbound_traffic_policy, TrafficPolicy::RegistryOnly),
        stats: args.stats.or_else(|| on(15090)),
        readiness: args.readiness.or_else(|| on(15021)),
        pod_labels: args.pod_labels.clone().or_else(|| (args.sidecar && labels.exists()).then_some(labels)),
    }
}

fn validate(args: ValidateArgs) -> ExitCode {
    let sources = Sources { paths: args.paths, namespace: namespace(&args.namespace) };
    let problems = match config::load_and_validate(&sources) {
        Ok((config, mut warnings)) => {
            warnings.extend(config::keys::world_readable(&config, &Default::default()));
            warnings
        }
        Err(refused) => refused.problems,
    };
    for problem in &problems {
        println!("{problem}");
    }
    let errors = problems.iter().filter(|p| p.is_error()).count();
    eprintln!("{} error(s), {} warning(s)", errors, problems.len() - errors);
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn echo(args: EchoArgs) -> ExitCode {
    match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => {
            meshd::echo::serve(listener, &args.name).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshd echo: cannot listen on {}: {e}", args.listen);
            ExitCode::FAILURE
        }
    }
}

fn block_on(workers: usize, main: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let runtime = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("meshd: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(2)
}

fn namespace(flag: &Option<String>) -> String {
    flag.clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    IstioDuration::parse(text).map(|d| d.as_std()).map_err(|e| e.to_string())
}

fn init_logs(common: &CommonArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&common.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match common.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
