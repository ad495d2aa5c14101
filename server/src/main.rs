use clap::Parser;
use longbow_server::{memlock, nofile, Config};
use tracing_subscriber::EnvFilter;

// Every DoPut batch is a large, short-lived allocation; glibc serves those
// with fresh mmaps whose pages the kernel must zero on first touch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (the same index in mimalloc 2 and 3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before returning it to the kernel.
/// Its default (10 ms, x10 for arenas) hands memory back between two
/// batches, and the kernel then zeroes fresh pages for the next: page
/// zeroing was 40 % of the server's CPU during ingest (docs/benchmarks.md).
/// Batch bodies, the bulk of it, are now reused through the engine's body
/// pool (`engine/src/wal/body_pool.rs`), so a short delay is enough for the
/// rest. Measured (one producer writing 1 GiB under a 256 MiB limit, RSS
/// peak, MB/s): 10 ms 539-557 MiB at 447-455 MB/s; 100 ms 583-587 MiB at
/// 703-711 MB/s; 1 s 655-675 MiB at 451-665 MB/s; without a limit 100 ms
/// was within the noise of 1 s. mimalloc purges only when some thread
/// allocates or frees, so a thread of its own calls `mi_collect` once per
/// second: an idle server gives the memory back (the short soak's RSS 20 s
/// after its load, with a 1 s delay: 452 MiB without it, 289 with it).
/// `MIMALLOC_PURGE_DELAY` in the environment overrides the delay.
const ALLOCATOR_PURGE_DELAY_MS: std::ffi::c_long = 100;

/// How often the purge thread collects.
const ALLOCATOR_COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    // The offline tools (`longbow wal …`, `longbow snapshot …`) parse their
    // own arguments, before the server's parser and without its flags or
    // LONGBOW_* variables.
    if let Some(code) = longbow_server::tools::dispatch(&std::env::args_os().collect::<Vec<_>>()) {
        std::process::exit(code.into());
    }
    // SAFETY: a plain option setter; mimalloc reads the option at each purge.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) };
    }
    std::thread::Builder::new().name("allocator-purge".into()).spawn(|| loop {
        std::thread::sleep(ALLOCATOR_COLLECT_EVERY);
        // SAFETY: collects this thread's heap and purges what other
        // threads freed longer ago than the delay.
        unsafe { libmimalloc_sys::mi_collect(false) };
    })?;
    let config = Config::parse();
    // The Delta kernel logs every table snapshot it builds at info: quiet
    // unless asked for by name.
    let level = if config.log_level.contains("kernel") || config.log_level.contains("delta") {
        config.log_level.clone()
    } else {
        format!("{},buoyant_kernel=warn,deltalake_core=warn", config.log_level)
    };
    let filter =
        EnvFilter::try_new(&level).map_err(|e| anyhow::anyhow!("LONGBOW_LOG_LEVEL {:?}: {e}", config.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    if let Err(message) = memlock::raise() {
        eprintln!("longbow: {message}");
        std::process::exit(2);
    }
    match nofile::raise() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "RLIMIT_NOFILE (open descriptors: connections, files)"),
        Err(e) => tracing::warn!(error = e, "RLIMIT_NOFILE"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("longbow-gateway").build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // IMPORTANT: install the handlers now, not when the future is first
        // polled: the server is reachable before that, and an early SIGTERM
        // would otherwise kill it without sealing the WAL.
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        };
        if let Err(e) = longbow_server::run(config, shutdown).await {
            eprintln!("longbow: {e}");
            std::process::exit(1);
        }
        Ok(())
    })
}
