//! `worknode serve`: one member, wired to its worknodes.
//!
//! The network worknode (class high) runs the tokio runtime: the etcd gRPC API, the peer
//! listener and the peer writers; runtime threads inherit its pinning. The Raft worknode
//! (class critical) runs the Raft loop on its own core. Both pin per the core plan when
//! `[cores] pin = "auto"` (best effort on small hosts); SIGTERM or SIGINT shuts down
//! cleanly: the API stops accepting, the Raft loop finishes its turn, the log is synced.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use worknode_cores::telemetry::{AlertThresholds, Sampler, Telemetry, WatchedThread};
use worknode_cores::{
    live_host, spawn_worknode, CoreAuthority, CoreGrant, CorePlan, CpuSet, PinOptions,
    WorknodeClass, WorknodeSpec,
};
use worknode_raft::member::{open_member, MemberSpec};
use worknode_raft::transport::{serve_peers, AcceptFailures, ACCEPT_BACKOFF};

use crate::admin::AdminService;
use crate::config::{Pinning, ServerConfig};
use crate::kv_routes::KvRoutes;
use crate::metrics::{serve_metrics, MetricsSource};
use crate::service::{ClusterService, MaintenanceService, Shared};
use crate::{adminpb, pb};

/// How often the member samples its CPUs and threads (`worknode.Admin/Telemetry`).
const TELEMETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Why a member stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The core plan is invalid for this host.
    #[error("core plan: {0}")]
    Plan(#[from] worknode_cores::PlanError),
    /// The member's storage could not open.
    #[error("{0}")]
    Open(#[from] worknode_raft::member::OpenError),
    /// A listener could not bind.
    #[error("cannot listen on {address} ({what}): {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A worknode thread could not start.
    #[error("{0}")]
    Pin(#[from] worknode_cores::PinError),
    /// The gRPC server failed.
    #[error("client API: {0}")]
    Api(#[from] tonic::transport::Error),
    /// The Raft loop failed (a disk error: the process must stop).
    #[error("raft loop: {0}")]
    Raft(#[from] worknode_raft::StoreError),
    /// A thread panicked.
    #[error("the {0} worknode panicked")]
    Panicked(&'static str),
    /// TLS material that does not load.
    #[error("{0}")]
    Tls(#[from] worknode_raft::tls::TlsError),
    /// The runtime could not start.
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
    /// The telemetry sampler thread could not start.
    #[error("telemetry sampler: {0}")]
    Sampler(std::io::Error),
}

/// How a member's storage is opened at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartOptions {
    /// Accept a damaged log tail even where it may hold acknowledged writes.
    pub recover_tail: bool,
    /// Wipe the log and snapshot (keeping term and vote) and catch up from the cluster.
    pub rejoin: bool,
}

/// Runs the member until SIGTERM/SIGINT.
pub fn serve(config: ServerConfig, start: StartOptions) -> Result<(), ServeError> {
    let authority = match config.cores.pin {
        Pinning::Off => None,
        Pinning::Auto => {
            let (_, host) = live_host();
            let plan = CorePlan::build(&host, &config.cores.plan_config())?;
            for placement in plan.placements() {
                tracing::info!(worknode = %placement.worknode, class = %placement.class, cpus = %placement.cpus, "core plan");
            }
            for warning in plan.warnings() {
                tracing::warn!("core plan: {warning}");
            }
            Some(Arc::new(CoreAuthority::new(plan)))
        }
    };
    let grant = |name: &str| -> Option<CoreGrant> { authority.as_ref()?.grant(name).ok() };
    let options = PinOptions { best_effort: true, ..PinOptions::default() };
    let net = WorknodeSpec::new("net", WorknodeClass::High);
    let net_grant = grant("net");
    let threads = config
        .net_threads
        .unwrap_or_else(|| net_grant.as_ref().map_or(1, |grant| grant.cpus().len().max(1)));
    let authority_for_raft = authority.clone();
    let worknode = spawn_worknode(&net, net_grant, &options, move || {
        run(config, threads, start, authority_for_raft)
    })?;
    for warning in &worknode.report().warnings {
        tracing::warn!("{warning}");
    }
    worknode.join().map_err(|_| ServeError::Panicked("net"))?
}

/// The net worknode's runtime: with one thread, a current-thread runtime on the worknode's
/// own thread (a multi-thread runtime runs its tasks on worker threads of its own and
/// wakes another worker for each task it hands over, a thread wake-up on every
/// request's path); with more, that many workers, each inheriting the worknode's CPUs.
fn run(
    config: ServerConfig,
    threads: usize,
    start: StartOptions,
    authority: Option<Arc<CoreAuthority>>,
) -> Result<(), ServeError> {
    tracing::debug!(threads, "net runtime");
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("net")
            .enable_all()
            .build()
    }
    .map_err(ServeError::Runtime)?;
    runtime.block_on(run_async(config, start, authority))
}

async fn bind(
    address: std::net::SocketAddr,
    what: &'static str,
) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address).await.map_err(|source| ServeError::Bind { address, what, source })
}

/// Peer and client TLS as configured (loaded now: a file that does not load stops the
/// start, naming it); warns when peers talk across the network without TLS.
fn tls_material(
    config: &ServerConfig,
) -> Result<(Option<worknode_raft::tls::PeerTls>, Option<tokio_rustls::TlsAcceptor>), ServeError> {
    if config.allow_insecure_peers && config.insecure_peers() {
        tracing::warn!("allow_insecure_peers: peer connections are not authenticated; anyone who reaches a peer port can speak as a member");
    }
    let peer_tls = match &config.peer_tls {
        Some(tls) => Some(worknode_raft::tls::PeerTls::new(config.cluster_id(), &tls.files())?),
        None => None,
    };
    let client_tls = match &config.tls {
        Some(tls) => {
            Some(tokio_rustls::TlsAcceptor::from(worknode_raft::tls::server_config(&tls.files())?))
        }
        None => None,
    };
    Ok((peer_tls, client_tls))
}

async fn run_async(
    config: ServerConfig,
    start: StartOptions,
    authority: Option<Arc<CoreAuthority>>,
) -> Result<(), ServeError> {
    let me = config.me().clone();
    let cluster_id = config.cluster_id();
    // Bind first: a taken port is the most common start-up mistake.
    let peer_listener = bind(me.peer, "peer").await?;
    let client_listener = bind(me.client, "client").await?;
    let metrics_listener = match me.metrics {
        Some(address) => Some(bind(address, "metrics").await?),
        None => None,
    };
    let (peer_tls, client_tls) = tls_material(&config)?;
    let spec = MemberSpec {
        cluster_id,
        peers: config.members.iter().map(|m| (m.id, m.peer)).collect(),
        data_dir: config.data_dir.clone(),
        recover_tail: start.recover_tail,
        rejoin: start.rejoin,
        node: worknode_raft::NodeConfig { cores: authority.clone(), ..config.node_config() },
        agreement: config.agreement(),
        peer_tls: peer_tls.clone(),
    };
    let member = open_member(&spec)?;
    if let Some(note) = &member.recovery_note {
        tracing::warn!("{note}");
    }
    let voters: Vec<u64> = config.members.iter().map(|m| m.id).collect();
    tokio::spawn(serve_peers(
        peer_listener,
        cluster_id,
        worknode_raft::validate::PeerRules::new(me.id, &voters).with_agreement(config.agreement()),
        peer_tls,
        member.handle.clone(),
        member.stats.clone(),
        member.blocked.clone(),
    ));
    let raft = WorknodeSpec::new("raft", WorknodeClass::Critical);
    let raft_grant = authority.as_ref().and_then(|a| a.grant("raft").ok());
    let node = member.node;
    let handle = member.handle.clone();
    let raft_thread = spawn_worknode(
        &raft,
        raft_grant,
        &PinOptions { best_effort: true, ..PinOptions::default() },
        move || fail_stop_unless_stopping(&handle, node),
    )?;
    let mut telemetry = Telemetry::new(AlertThresholds::default());
    let report = raft_thread.report();
    telemetry.watch(WatchedThread {
        worknode: "raft".into(),
        tid: report.thread_id,
        class: WorknodeClass::Critical,
        cpus: if report.pinned { report.effective.clone() } else { CpuSet::default() },
    });
    telemetry.watch_all_threads();
    let telemetry = Arc::new(Mutex::new(telemetry));
    let sampler =
        Sampler::start(telemetry.clone(), TELEMETRY_INTERVAL, None).map_err(ServeError::Sampler)?;
    tracing::info!(
        member = me.id,
        name = %me.name,
        client = %me.client,
        peer = %me.peer,
        raft_cpus = %raft_thread.report().effective,
        "worknode member serving"
    );
    let shared = shared_state(&config, member.handle.clone(), cluster_id);
    let metrics = MetricsSource {
        node: member.handle.clone(),
        transport: member.stats.clone(),
        log: member.log_stats.clone(),
        telemetry: telemetry.clone(),
        watch: shared.watch_stats.clone(),
    };
    if let Some(listener) = metrics_listener {
        tokio::spawn(serve_metrics(listener, metrics.clone()));
        tracing::info!(address = ?me.metrics, "serving Prometheus metrics at /metrics");
    }
    if let Ok(mode) = config.auto_compaction() {
        crate::compactor::start(shared.clone(), mode);
    }
    let admin = AdminService {
        shared: shared.clone(),
        blocked: member.blocked.clone(),
        allow_fault_injection: config.allow_fault_injection,
        admin: config.admin.clone(),
        rotation: config.rotation_config().ok(),
        telemetry,
        rotation_cache: Arc::default(),
    };
    let api = ApiParts { shared, admin, metrics, listener: client_listener, tls: client_tls };
    let result = serve_api(api, authority).await?;
    tracing::info!("shutting down: stopping the raft loop");
    drop(sampler);
    member.handle.stop();
    let raft_result = raft_thread.join().map_err(|_| ServeError::Panicked("raft"))?;
    drop(member.data_dir);
    result?;
    raft_result?;
    Ok(())
}

/// What every service of this member shares, from its config.
fn shared_state(
    config: &ServerConfig,
    node: worknode_raft::NodeHandle,
    cluster_id: u64,
) -> Arc<Shared> {
    Arc::new(Shared {
        node,
        cluster_id,
        member_id: config.member_id,
        members: config.members.clone(),
        request_timeout: config.request_timeout(),
        session: rand::random(),
        sequence: AtomicU64::new(1),
        quota_bytes: config.quota_bytes(),
        watch_progress_interval: config.watch_progress_interval(),
        watch_stats: Arc::default(),
        lease_ttl_min: config.lease_ttl_min(),
        data_dir: config.data_dir.clone(),
        election_timeout: Duration::from_millis(
            config.tick_ms.saturating_mul(config.election_ticks as u64),
        ),
    })
}

/// What the client API serves with.
struct ApiParts {
    shared: Arc<Shared>,
    admin: AdminService,
    /// Also served at `/metrics` on the client port, as etcd does.
    metrics: MetricsSource,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Runs the etcd gRPC API on a worknode of its own ("api"), with a runtime of its own:
/// encoding a large response, or many clients at once, then never delays a peer message
/// on the "net" worknode's runtime. Returns when it stops (SIGTERM or SIGINT).
async fn serve_api(
    api: ApiParts,
    authority: Option<Arc<CoreAuthority>>,
) -> Result<Result<(), ServeError>, ServeError> {
    let ApiParts { shared, admin, metrics, listener, tls } = api;
    // One watch service (one hub) for gRPC and the JSON gateway.
    let watch = crate::watch::WatchService::new(shared.clone());
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(KvRoutes::new(shared.clone()))
        .add_service(pb::maintenance_server::MaintenanceServer::new(MaintenanceService(
            shared.clone(),
        )))
        .add_service(pb::watch_server::WatchServer::new(watch.clone()))
        .add_service(pb::lease_server::LeaseServer::new(crate::lease::LeaseService(shared.clone())))
        .add_service(pb::cluster_server::ClusterServer::new(ClusterService(shared.clone())))
        .add_service(crate::health::healthpb::health_server::HealthServer::new(
            crate::health::HealthService(shared.clone()),
        ))
        .add_service(crate::v3lockpb::lock_server::LockServer::new(
            crate::concurrency::LockService(shared.clone()),
        ))
        .add_service(crate::v3electionpb::election_server::ElectionServer::new(
            crate::concurrency::ElectionService(shared.clone()),
        ))
        .add_service(adminpb::admin_server::AdminServer::new(admin));
    // etcd's HTTP endpoints beside gRPC on one port: HTTP/1.1 is accepted, and paths no
    // gRPC service claims go to the HTTP routes.
    let routes = grpc
        .routes()
        .into_axum_router()
        .merge(crate::gateway::json_routes(shared.clone(), watch))
        .merge(crate::health::http_routes(shared, Some(metrics)))
        .fallback(crate::health::fallback);
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(routes));
    let listener = listener.into_std().map_err(ServeError::Runtime)?;
    let grant = authority.as_ref().and_then(|a| a.grant("api").ok());
    let spec = WorknodeSpec::new("api", WorknodeClass::Normal);
    let options = PinOptions { best_effort: true, ..PinOptions::default() };
    let thread = spawn_worknode(&spec, grant, &options, move || {
        serve_clients(router, listener, tls, authority)
    })?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|_| ServeError::Panicked("api"))?
        .map_err(|_| ServeError::Panicked("api"))
}

/// Niceness of the threads that serve large reads (ranges of unknown size, digests): on
/// a busy host the Raft loop, the peer connections and small requests come first.
const LARGE_READ_NICE: i32 = 10;

/// The "api" worknode: the etcd gRPC API on a current-thread runtime of its own, until
/// SIGTERM or SIGINT. Its blocking pool, where large reads are served, runs on the plan's
/// housekeeping CPUs at a lower priority.
fn serve_clients(
    router: tonic::transport::server::Router,
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    authority: Option<Arc<CoreAuthority>>,
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("large-reads")
        .on_thread_start(move || {
            if let Err(error) =
                worknode_cores::make_current_background(authority.as_deref(), LARGE_READ_NICE)
            {
                tracing::debug!("large reads stay at the api worknode's priority: {error}");
            }
        })
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).map_err(ServeError::Runtime)?;
        let incoming = incoming_nodelay(listener);
        use tokio_stream::StreamExt as _;
        match tls {
            None => {
                let incoming = incoming.map(client_connection);
                router.serve_with_incoming_shutdown(incoming, shutdown_signal()).await?;
            }
            Some(acceptor) => {
                let incoming =
                    crate::tls_listener::incoming(incoming, acceptor).map(client_connection);
                router.serve_with_incoming_shutdown(incoming, shutdown_signal()).await?;
            }
        }
        Ok(())
    })
}

/// An accepted client connection as the servers see it: writes gathered into one per turn
/// (`write_coalescing`), and the scheme taken off the `:authority` that etcd 3.4's clients
/// send (`h2_authority`).
fn client_connection<T>(
    accepted: std::io::Result<T>,
) -> std::io::Result<crate::h2_authority::AuthorityShim<crate::write_coalescing::Coalesced<T>>> {
    crate::h2_authority::wrap(accepted.map(crate::write_coalescing::Coalesced::new))
}

/// Exit status of a member whose Raft loop ended without being asked to (EX_SOFTWARE).
pub const FAIL_STOP_EXIT_CODE: i32 = 70;

/// Runs the Raft loop; if it ends without [`worknode_raft::NodeHandle::stop`] — a panic, a
/// disk error, ENOSPC, a corrupt log — the member cannot go on: the process logs why and
/// exits with [`FAIL_STOP_EXIT_CODE`] at once, so its supervisor (systemd, Kubernetes)
/// restarts it. Lingering would answer every client "server stopped" while its metrics
/// still said it led.
fn fail_stop_unless_stopping(
    handle: &worknode_raft::NodeHandle,
    node: worknode_raft::member::MemberNode,
) -> Result<(), ServeError> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.run()));
    let reason = match outcome {
        Ok(Ok(())) if handle.stopping() => return Ok(()),
        Ok(Ok(())) => "it returned without being asked to stop".to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            format!("panicked: {message}")
        }
    };
    tracing::error!(
        "the Raft loop ended ({reason}); this member cannot go on and exits with status {FAIL_STOP_EXIT_CODE} for its supervisor to restart it"
    );
    std::process::exit(FAIL_STOP_EXIT_CODE);
}

/// Accepted client connections with TCP_NODELAY: responses must not wait for Nagle's
/// algorithm and the client's delayed ACK (a 40 ms stall per small response). A failed
/// accept (at the open-files limit) pauses the listener and is logged once a second: the
/// server would otherwise retry at once and spin a core.
fn incoming_nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    let address = listener.local_addr().ok();
    let failures = Arc::new(Mutex::new(AcceptFailures::default()));
    TcpListenerStream::new(listener).then(move |accepted| {
        let failures = Arc::clone(&failures);
        async move {
            match &accepted {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                }
                Err(error) => {
                    failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .note("client", error, address);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
            accepted
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the process can still be stopped by SIGKILL.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = interrupt.recv() => tracing::info!("SIGINT"),
    }
}
