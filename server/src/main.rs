use clap::Parser;
use longbow_server::{memlock, Config};
use tracing_subscriber::EnvFilter;

// Every DoPut batch is a large, short-lived allocation; glibc serves those
// with fresh mmaps whose pages the kernel must zero on first touch.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("LONGBOW_LOG_LEVEL {:?}: {e}", config.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    if let Err(message) = memlock::raise() {
        eprintln!("longbow: {message}");
        std::process::exit(2);
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
