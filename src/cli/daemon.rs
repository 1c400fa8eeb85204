//! `leasewire daemon`: logging set-up, then a node ([`leasewire::node::Node`]) and its control
//! API in the foreground until SIGINT/SIGTERM.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use leasewire::config::Config;
use leasewire::control::{self, NodeControl};
use leasewire::datadir::DataDir;
use leasewire::node::{Backends, DaemonLock, Node};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, fmt};

/// Filter of the debug log: everything at debug, except transport internals whose debug
/// output (every HTTP/2 frame, every sled flush) would drown the node's own events.
const FILE_FILTER: &str = "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,\
                           sled=info,multistream_select=info,yamux=info,libp2p_noise=info";

pub(super) fn run(data_dir: &Path) -> anyhow::Result<()> {
    if !data_dir.is_dir() {
        bail!(
            "data dir {} does not exist; run `leasewire --data-dir {} init --role provider|renter` first",
            data_dir.display(),
            data_dir.display()
        );
    }
    // Keep the guard until the daemon returns: dropping it flushes the file writer.
    let _guard = init_tracing(data_dir)?;
    // tonic's tls-ring and libp2p can both pull a rustls provider in; with two present rustls
    // refuses to pick one, so pick ring explicitly. An error only means one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("leasewire")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(run_daemon(data_dir));
    if let Err(e) = &result {
        // Recorded in debug.log only: `run` prints the same error on stderr as `error: …`.
        tracing::debug!(error = %e, "daemon stopped with an error");
    }
    result
}

/// How the node of one run of [`run_node`] ended.
enum Ended {
    /// A signal, or the control API failed: the daemon stops.
    Stop(anyhow::Result<()>),
    /// The store refuses writes though the disk has room again: start the node again, which
    /// opens the database afresh.
    Reopen,
}

/// How often the daemon asks whether the provider's store needs reopening.
const REOPEN_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the node again at most this often after a reopen.
const REOPEN_MIN_GAP: std::time::Duration = std::time::Duration::from_secs(30);

/// Secures and locks the data dir, and runs the node and its control API until a signal (or a
/// failing control API). When the provider finds its store refusing every write although the
/// disk has room again (sled stays failed after an `ENOSPC` until it is reopened), the node is
/// stopped and started again in this process, so it recovers by itself without a supervisor.
async fn run_daemon(data_dir: &Path) -> anyhow::Result<()> {
    let dir = DataDir::new(data_dir);
    // Before anything in it is read or written: only its owner may enter it.
    if let leasewire::datadir::Secured::Tightened(mode) = dir.secure()? {
        tracing::warn!(
            data_dir = %data_dir.display(),
            "data dir was mode {mode:03o}; tightened to 0700 (it holds the node key and database)"
        );
    }
    let mut restarts = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        match run_node(&dir, restarts > 0).await? {
            Ended::Stop(r) => return r,
            Ended::Reopen => {
                restarts += 1;
                tracing::warn!(
                    restarts,
                    "the store refused writes after the disk was full; restarting the node to reopen it"
                );
                // A store that fails again at once is not restarted in a tight loop.
                tokio::time::sleep_until(started + REOPEN_MIN_GAP).await;
            }
        }
    }
}

/// One run of the node: start, serve, and stop on a signal or for a reopen. `again`: this is
/// a restart, and the previous run's handles may take a moment to let go of the data dir.
async fn run_node(dir: &DataDir, again: bool) -> anyhow::Result<Ended> {
    let mut attempt = 0;
    let node = loop {
        attempt += 1;
        let started = async {
            let lock = DaemonLock::acquire(dir)?;
            let cfg = Config::load(&dir.config_file())?;
            let backends = Backends::from_config(&cfg, dir).await?;
            anyhow::Ok(Node::start(lock, cfg, backends).await?)
        };
        match started.await {
            Ok(node) => break node,
            Err(e) if again && attempt < 10 => {
                tracing::warn!(error = %e, attempt, "restart failed; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            }
            Err(e) => return Err(e),
        }
    };

    let handler = Arc::new(NodeControl::new(&node));
    let socket = dir.control_socket();
    let mut control = {
        let stop = node.shutdown_token();
        let socket = socket.clone();
        tokio::spawn(async move { control::serve(&socket, handler, stop).await })
    };
    tracing::info!(socket = %socket.display(), "control API listening; daemon ready");

    let provider = node.provider().cloned();
    let reopen = async move {
        loop {
            tokio::time::sleep(REOPEN_CHECK).await;
            if provider.as_ref().is_some_and(|p| p.store_needs_reopen()) {
                return;
            }
        }
    };
    let ended = tokio::select! {
        r = wait_for_signal() => Ended::Stop(r),
        r = &mut control => Ended::Stop(match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::from(e).context("control API")),
            Err(e) => Err(anyhow::anyhow!("control API task failed: {e}")),
        }),
        () = reopen => Ended::Reopen,
    };
    let stopped = node.shutdown().await;
    if !control.is_finished() {
        // The node's shutdown cancelled the server's token; it removes its socket and ends.
        if let Err(e) = control.await {
            tracing::warn!(error = %e, "control API task failed");
        }
    }
    match ended {
        Ended::Stop(outcome) => {
            outcome?;
            stopped?;
            Ok(Ended::Stop(Ok(())))
        }
        Ended::Reopen => {
            // Its last writes (node_stopped) fail on the failed store; the restart is the fix.
            if let Err(e) = stopped {
                tracing::warn!(error = %e, "node stopped with an error before the reopen");
            }
            Ok(Ended::Reopen)
        }
    }
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// Info and above (or `RUST_LOG`) to stderr; debug and above to `D/debug.log` (mode 0600: it
/// names peers, leases and payment hashes).
fn init_tracing(data_dir: &Path) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let path = DataDir::new(data_dir).debug_log();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (writer, guard) = tracing_appender::non_blocking(file);

    // libp2p-kad warns "Failed to trigger bootstrap: No known peers" on every bootstrap tick
    // of a node that is the first of its network; that is normal here, not worth a warning.
    let stderr_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,libp2p_kad::behaviour=error"));
    tracing_subscriber::registry()
        .with(
            fmt::layer()
                // Colour only on a terminal: logs redirected to files stay plain text.
                .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
                .with_writer(io::stderr)
                .with_filter(stderr_filter),
        )
        .with(
            fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(EnvFilter::new(FILE_FILTER)),
        )
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(guard)
}
