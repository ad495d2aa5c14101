//! The Longbow gateway: a tokio runtime serving Arrow Flight (tonic) and
//! Prometheus metrics (axum) in front of the glommio shards of
//! `longbow-engine`.
//!
//! # Layout
//! - [`run`]: start here: the testable entry that `main.rs` calls.
//! - [`config`]: CLI flags and their `LONGBOW_*` environment variables.
//! - [`flight`]: the Flight service; `do_put.rs` holds the ingest path.
//! - [`error`]: the single engine-error → gRPC status mapping.
//! - [`metrics`]: the `/metrics` endpoint; [`memlock`]: RLIMIT_MEMLOCK;
//!   [`nofile`]: RLIMIT_NOFILE.
//! - [`transport`]: what a client can make the Flight port hold: the
//!   connection limit, idle connections, no buffer for message bytes that
//!   have not arrived, tonic's client-error statuses corrected.
//! - [`tls`]: optional TLS (and mutual TLS) on the Flight port; metrics stay
//!   plain HTTP.
//! - [`tools`]: the offline `longbow wal verify|dump` and `longbow snapshot
//!   ls`, which `main.rs` runs instead of the server when the first argument
//!   names one.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod error;
pub mod flight;
pub mod memlock;
pub mod metrics;
pub mod nofile;
pub mod sql;
pub mod tls;
pub mod tools;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use longbow_engine::metrics::StatusLabel;
use longbow_engine::{Engine, EngineMetrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use config::Config;

/// A shard that is poisoned (a failed fsync: writes refused until a
/// restart), exits or panics no longer serves its datasets: say so on the
/// health service as soon as the engine reports it, so that probes restart
/// the pod.
async fn report_shards_down(
    mut shards: tokio::sync::watch::Receiver<longbow_engine::health::Health>,
    health: tonic_health::server::HealthReporter,
) {
    let down: Vec<String> = match shards.wait_for(|h| !h.serving()).await {
        Ok(h) => h.down.iter().map(|(k, why)| format!("shard {k} {why}")).collect(),
        Err(_) => return,
    };
    tracing::error!(shards = ?down, "reporting NOT_SERVING; restart to recover");
    health.set_not_serving::<FlightServiceServer<flight::LongbowFlight>>().await;
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}

/// Re-reads the reloadable settings from the config file on every SIGHUP,
/// and whenever its content changes (a mounted ConfigMap edited: no restart,
/// no signal needed). A bad file is logged and ignored: the settings in
/// force stay.
async fn reload_on_sighup(
    engine: Engine,
    base: longbow_engine::engine::Settings,
    file: Option<std::path::PathBuf>,
    reloads: Family<StatusLabel, Counter>,
    mut hup: tokio::signal::unix::Signal,
    poll_every: Duration,
) {
    let read = |f: &std::path::Path| std::fs::read(f).ok();
    let mut seen = file.as_deref().and_then(read);
    // Zero turns the watcher off (an interval of a year is never reached).
    let watching = !poll_every.is_zero();
    let mut poll = tokio::time::interval(if watching { poll_every } else { Duration::from_secs(365 * 86_400) });
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            signal = hup.recv() => match signal {
                Some(()) => "SIGHUP",
                None => return,
            },
            _ = poll.tick() => {
                let Some(f) = file.as_ref().filter(|_| watching) else { continue };
                let now = read(f);
                if now.is_none() || now == seen {
                    continue; // unchanged, or mid-swap: look again next time
                }
                "config file changed"
            }
        };
        let Some(file) = &file else {
            tracing::warn!("SIGHUP: no LONGBOW_CONFIG file is set; the environment cannot change, nothing to reload");
            reloads.get_or_create(&StatusLabel { status: "error" }).inc();
            continue;
        };
        seen = read(file);
        let old = engine.settings();
        match config::apply_file(base, file) {
            Ok(new) => match engine.reconfigure(new).await {
                Ok(()) => {
                    tracing::info!(
                        trigger = why,
                        old_max_memory = old.max_memory,
                        new_max_memory = new.max_memory,
                        old_snapshot_interval = ?old.snapshot_interval,
                        new_snapshot_interval = ?new.snapshot_interval,
                        "{why}: settings reloaded"
                    );
                    reloads.get_or_create(&StatusLabel { status: "ok" }).inc();
                }
                Err(e) => {
                    tracing::error!(trigger = why, error = %e, "{why}: applying settings failed");
                    reloads.get_or_create(&StatusLabel { status: "error" }).inc();
                }
            },
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "{why}: config file rejected; the settings in force stay");
                reloads.get_or_create(&StatusLabel { status: "error" }).inc();
            }
        }
    }
}

/// Test builds only: `LONGBOW_FAULT_FSYNC_FAIL_AFTER=n` (every WAL fsync
/// after the n-th fails), `LONGBOW_FAULT_WAL_WRITE_FAIL=after:times`,
/// `LONGBOW_FAULT_WAL_CREATE_FAIL=after:times` (on the WAL's storage seam)
/// and `LONGBOW_FAULT_SNAPSHOT_FAIL=after:times` (on the cold tier's object
/// store; a local snapshot path only): succeed `after` times, then fail
/// `times` times with EIO (`io::faulty`).
#[cfg(feature = "fault-injection")]
fn arm_faults_from_env(config: &mut longbow_engine::EngineConfig) {
    use longbow_engine::io::faulty::{FaultPlan, FaultyObjectStore, FaultyStorage};
    let parse = |var: &str| -> Option<(u64, u64)> {
        let v = std::env::var(var).ok()?;
        let parsed = v.split_once(':').and_then(|(a, t)| Some((a.parse().ok()?, t.parse().ok()?)));
        if parsed.is_none() {
            tracing::error!(var, value = v, "fault injection: expected after:times; ignored");
        }
        parsed
    };
    let plan = FaultPlan {
        fsync: std::env::var("LONGBOW_FAULT_FSYNC_FAIL_AFTER").ok().and_then(|v| v.parse().ok()).map(|n| (n, u64::MAX)),
        write: parse("LONGBOW_FAULT_WAL_WRITE_FAIL"),
        create: parse("LONGBOW_FAULT_WAL_CREATE_FAIL"),
    };
    if let Some(arm) = parse("LONGBOW_FAULT_SNAPSHOT_FAIL") {
        match longbow_engine::snapshot::Location::parse(&config.snapshot_path) {
            Ok(longbow_engine::snapshot::Location::Local(_)) => {
                tracing::warn!(?arm, "fault injection armed: snapshot uploads");
                let local = std::sync::Arc::new(object_store::local::LocalFileSystem::new());
                config.snapshot_store = Some(std::sync::Arc::new(FaultyObjectStore::new(local, arm)));
            }
            _ => tracing::error!("LONGBOW_FAULT_SNAPSHOT_FAIL applies to a local snapshot path; ignored"),
        }
    }
    if plan.fsync.is_some() || plan.write.is_some() || plan.create.is_some() {
        tracing::warn!(?plan, "fault injection armed on the WAL's storage");
        config.storage = std::sync::Arc::new(FaultyStorage::new(config.storage.clone(), plan));
    }
}

/// Logs the transport limits, and warns when descriptors would run out
/// before the connection limit applies.
fn log_transport_limits(limits: &transport::TransportConfig) {
    tracing::info!(
        max_connections = limits.max_connections,
        max_concurrent_streams = limits.max_concurrent_streams,
        keepalive_interval = ?limits.keepalive_interval,
        keepalive_timeout = ?limits.keepalive_timeout,
        idle_timeout = ?limits.idle_timeout,
        max_header_list_bytes = limits.max_header_list_bytes,
        "Flight transport limits"
    );
    // WAL segments, snapshot files being read, io_uring and the metrics
    // port need descriptors too.
    const OTHER_DESCRIPTORS: u64 = 256;
    match nofile::limits() {
        Ok((soft, _)) if soft < limits.max_connections as u64 + OTHER_DESCRIPTORS => tracing::warn!(
            rlimit_nofile = soft,
            max_connections = limits.max_connections,
            "RLIMIT_NOFILE leaves too few descriptors for LONGBOW_MAX_CONNECTIONS: new connections will fail \
             (EMFILE) before the limit applies; raise the hard limit (`ulimit -n`, systemd LimitNOFILE, docker \
             --ulimit nofile) or lower LONGBOW_MAX_CONNECTIONS"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = e, "RLIMIT_NOFILE"),
    }
}

/// HTTP/2 flow-control window per stream and per connection. The 64 KiB
/// default caps one stream at a window per round trip, far below disk speed.
pub const HTTP2_WINDOW_BYTES: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Engine(#[from] longbow_engine::Error),
    #[error("binding {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("flight server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("engine task: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("config file: {0}")]
    Config(String),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("installing the SIGHUP handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Starts the engine and serves until `shutdown` resolves, then stops
/// accepting, drains in-flight requests (up to the configured timeout),
/// seals every WAL and returns.
pub async fn run(mut config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    // Checked before the WAL replay, which can take minutes.
    let tls = tls::load(&config.tls())?;
    match &tls {
        Some(t) => tracing::info!(
            cert = ?config.tls_cert,
            key = ?config.tls_key,
            chain = t.chain_len,
            client_auth = t.client_auth,
            "TLS on for Flight and health; metrics stay plain HTTP"
        ),
        None => tracing::info!("TLS off: Flight and health are plaintext (set LONGBOW_TLS_CERT and LONGBOW_TLS_KEY)"),
    }
    let base = config::reloadable(&config);
    if let Some(file) = &config.config_file {
        let s = config::apply_file(base, file).map_err(ServerError::Config)?;
        config.max_memory = bytesize::ByteSize(s.max_memory);
        config.snapshot_interval = s.snapshot_interval;
    }
    let mut engine_config = config.engine();
    #[cfg(feature = "fault-injection")]
    {
        arm_faults_from_env(&mut engine_config);
    }
    let cluster = cluster::Cluster::new(config.node_id, &config.peers).map_err(ServerError::Cluster)?;
    let peer_tls = match (cluster.tls(), &tls) {
        (true, _) => Some(tls::peer_client(&config.tls(), config.peer_ca.as_deref())?),
        (false, Some(_)) if !cluster.peers.is_empty() => {
            return Err(ServerError::Cluster(
                "this node serves TLS, and LONGBOW_PEERS names plaintext grpc:// URLs; name the nodes grpc+tls://"
                    .into(),
            ))
        }
        (false, _) => None,
    };
    if !cluster.peers.is_empty() {
        // Nodes may share one snapshot store: each loads its own tables.
        let owner = cluster.clone();
        engine_config.owns = Some(longbow_engine::Owns(Arc::new(move |d: &str| owner.owns(d))));
    }
    tracing::info!(data = %engine_config.data_path.display(), shards = engine_config.shards, "starting engine");
    let metrics = EngineMetrics::default();
    let engine = {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || Engine::start(engine_config, metrics)).await??
    };
    let stats = engine.recovery_stats();
    tracing::info!(
        segments = stats.iter().map(|s| s.segments).sum::<u64>(),
        bytes = stats.iter().map(|s| s.bytes_read).sum::<u64>(),
        torn_tails = stats.iter().map(|s| s.torn_tails).sum::<u64>(),
        seconds = stats.iter().map(|s| s.seconds).fold(0.0, f64::max),
        "WAL replayed"
    );

    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let reloads = Family::<StatusLabel, Counter>::default();
    registry.register("longbow_config_reloads", "SIGHUP reloads of the config file by outcome", reloads.clone());
    let gateway_metrics = metrics::GatewayMetrics::default();
    gateway_metrics.register(&mut registry);
    let process_metrics = metrics::ProcessMetrics::default();
    process_metrics.register(&mut registry);
    let transport_metrics = transport::TransportMetrics::default();
    transport_metrics.register(&mut registry);
    let registry = Arc::new(registry);
    // Registered before the server is reachable: SIGHUP's default action
    // would terminate the process.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(ServerError::Signal)?;
    tokio::spawn(reload_on_sighup(
        engine.clone(),
        base,
        config.config_file.clone(),
        reloads,
        hup,
        config.config_poll_interval,
    ));

    let flight_listener = TcpListener::bind(config.listen_addr)
        .await
        .map_err(|source| ServerError::Bind { addr: config.listen_addr, source })?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|source| ServerError::Bind { addr: config.metrics_addr, source })?;
    let flight_addr =
        flight_listener.local_addr().map_err(|source| ServerError::Bind { addr: config.listen_addr, source })?;
    let metrics_addr =
        metrics_listener.local_addr().map_err(|source| ServerError::Bind { addr: config.metrics_addr, source })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let metrics_server = tokio::spawn({
        let stopped = stopped.clone();
        let health = metrics::Health {
            shards: engine.health(),
            snapshot_failing: metrics.snapshot_failing.clone(),
            shard_count: engine.shard_count() as u32,
        };
        async move {
            axum::serve(metrics_listener, metrics::router(registry, process_metrics, health))
                .with_graceful_shutdown(stopped())
                .await
        }
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    let max_message = config.max_message_size.as_u64() as usize;
    let inflight = config.max_inflight.map_or((16u64 << 20) * engine.shard_count() as u64, |b| b.as_u64());
    let admission = Arc::new(flight::do_put::Admission::new(inflight, config.backpressure_timeout));
    // IMPORTANT: apart from `admission` (flight::LongbowFlight::forward_put).
    let forwarding = Arc::new(flight::do_put::Admission::new(inflight, config.backpressure_timeout));
    let shared_store = !cluster.peers.is_empty()
        && !matches!(
            longbow_engine::snapshot::Location::parse(&config.snapshot_path),
            Ok(longbow_engine::snapshot::Location::Local(_))
        );
    let mut foreign = Vec::new();
    if !cluster.peers.is_empty() {
        tracing::info!(node = cluster.node, peers = ?cluster.peers, "one of several nodes: datasets are owned by a rendezvous hash of their names");
        let held = engine.list().await?;
        foreign = held.iter().filter(|d| !cluster.owns(&d.name)).map(|d| d.name.clone()).collect();
        // IMPORTANT: a handover goes through the snapshot table, which the
        // new owner must be able to read: one object store for all nodes.
        if !foreign.is_empty() && !shared_store {
            let _ = engine.shutdown().await;
            return Err(ServerError::Cluster(format!(
                "this node (node id {}) holds data of {} dataset(s) that another node owns under LONGBOW_PEERS ({}): \
                 the node list changed, and handing datasets over needs LONGBOW_SNAPSHOT_PATH on an object store \
                 that every node shares; start with the previous LONGBOW_PEERS",
                cluster.node,
                foreign.len(),
                foreign.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let peers = Arc::new(
        cluster::Peers::new(cluster, config.auth_token.as_deref(), max_message, peer_tls)
            .map_err(ServerError::Cluster)?,
    );
    let planner = sql::SqlEngine::new(engine.clone(), config.query_memory.as_u64(), peers.clone())
        .map_err(|e| ServerError::Config(format!("SQL engine: {}", e.message())))?;
    let handovers = (!foreign.is_empty()).then(|| {
        tracing::info!(
            datasets = foreign.len(),
            "the node list changed: handing the datasets other nodes own now over to them"
        );
        tokio::spawn(cluster::hand_over(
            engine.clone(),
            peers.clone(),
            foreign,
            gateway_metrics.handovers_pending.clone(),
        ))
    });
    let flight = FlightServiceServer::new(flight::LongbowFlight::new(
        engine.clone(),
        gateway_metrics,
        admission,
        forwarding,
        planner,
        peers,
    ))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    // The health service stays outside the check so probes need no token.
    let flight =
        tonic::service::interceptor::InterceptedService::new(flight, auth::interceptor(config.auth_token.clone()));
    health.set_serving::<FlightServiceServer<flight::LongbowFlight>>().await;
    let shards_down = tokio::spawn(report_shards_down(engine.health(), health.clone()));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.config)?;
    }
    let limits = config.transport();
    log_transport_limits(&limits);
    let flight_server = tokio::spawn({
        let stopped = stopped.clone();
        let incoming = transport::Incoming::new(flight_listener, &limits, transport_metrics);
        builder
            .initial_stream_window_size(HTTP2_WINDOW_BYTES)
            .initial_connection_window_size(HTTP2_WINDOW_BYTES)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_bytes)
            .http2_keepalive_interval(limits.keepalive_interval)
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .layer(transport::Layer::new(limits.max_message_bytes))
            .add_service(health_service)
            .add_service(flight)
            .serve_with_incoming_shutdown(incoming, stopped())
    });

    // Tests and scripts read this line to find the ports.
    println!("longbow ready flight={flight_addr} metrics={metrics_addr}");
    tracing::info!(%flight_addr, %metrics_addr, "serving");

    shutdown.await;
    // Shards stopping from here on are the shutdown, not a failure.
    shards_down.abort();
    tracing::info!("shutting down: no new requests; draining in-flight ones");
    health.set_not_serving::<FlightServiceServer<flight::LongbowFlight>>().await;
    let _ = stop_tx.send(true);
    let drain = Duration::from_secs(config.shutdown_timeout_secs);
    match tokio::time::timeout(drain, flight_server).await {
        Ok(r) => r??,
        Err(_) => tracing::warn!(
            seconds = drain.as_secs(),
            "in-flight requests still open after the drain timeout; closing them"
        ),
    }
    if let Some(h) = handovers {
        h.abort();
    }
    if shared_store {
        // A node that stops may not come back (the cluster shrinks): its
        // WAL tail goes to the shared tables, where the next owner finds it.
        match tokio::time::timeout(drain, engine.snapshot(None)).await {
            Ok(Ok(r)) => tracing::info!(rows = r.rows_written, "snapshot at shutdown written"),
            Ok(Err(e)) => tracing::warn!(error = %e, "snapshot at shutdown failed; the WAL keeps the rows"),
            Err(_) => {
                tracing::warn!("snapshot at shutdown did not finish in the drain timeout; the WAL keeps the rows")
            }
        }
    }
    // Queued writes are committed before each shard seals its WAL and stops.
    let closing = engine.clone();
    tokio::task::spawn_blocking(move || futures::executor::block_on(closing.shutdown())).await??;
    metrics_server.abort();
    tracing::info!("WAL sealed; shutdown complete");
    Ok(())
}
