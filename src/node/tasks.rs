//! The node's long-running helpers: periodic work, DHT announcements, and the secret lookup
//! at start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

use super::NodeError;
use crate::audit::{AuditKind, AuditLog};
use crate::config::Config;
use crate::datadir::DataDir;
use crate::market::provider::Provider;
use crate::market::renter::Renter;
use crate::net::{self, NetClient};

/// Appends an entry and waits until it is durable; a failure is logged, not returned, since
/// the event being recorded has already happened.
pub(super) async fn log_audit(audit: &AuditLog, kind: AuditKind, payload: serde_json::Value) {
    if let Err(e) = audit.append_async(kind, &payload).await {
        tracing::error!(error = %e, ?kind, "audit append failed");
    }
}

pub(super) fn read_secret(data_dir: &DataDir, cfg: &Config) -> Result<String, NodeError> {
    if let Some(file) = &cfg.node.secret_file {
        let path = data_dir.resolve(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            NodeError::Other(format!(
                "cannot read node.secret_file {}: {e}",
                path.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or("").trim().to_owned();
        if line.is_empty() {
            return Err(NodeError::Other(format!("{} is empty", path.display())));
        }
        return Ok(line);
    }
    if cfg.node.secret.is_empty() {
        Ok(net::topic::DEFAULT_PUBLIC_SECRET.to_owned())
    } else {
        Ok(cfg.node.secret.clone())
    }
}

/// Runs `f` every `every` until cancelled.
pub(super) async fn periodic<F, Fut>(every: Duration, shutdown: CancellationToken, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => f().await,
        }
    }
}

/// Announces the provider on the DHT at start, whenever its offer changes, and periodically
/// (records expire, and peers that joined later must be able to find it).
pub(super) async fn announce_loop(
    p: Provider,
    net: NetClient,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut changes = p.subscribe_offer();
    let mut timer = tokio::time::interval(every.max(Duration::from_secs(5)) * 3);
    loop {
        match net.start_providing().await {
            Ok(()) => tracing::debug!(offer_id = %p.offer().id(), "announced on the DHT"),
            Err(e) => tracing::debug!(error = %e, "DHT announce incomplete; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => {}
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

/// Runs the renter's discovery passes: every `every`, and at once whenever `wake` is notified
/// (a member was met), so discovery starts as soon as the node meets its first peer instead of
/// a full interval later. Notifications during a pass coalesce into one more pass.
pub(super) async fn discovery_loop(
    r: Renter,
    every: Duration,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut timer = tokio::time::interval(every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => {}
            _ = wake.notified() => {}
        }
        let pass = tokio::select! {
            _ = shutdown.cancelled() => return,
            pass = r.discover() => pass,
        };
        match pass {
            Ok(n) => tracing::debug!(offers = n, "discovery pass"),
            Err(e) => tracing::debug!(error = %e, "discovery pass failed"),
        }
    }
}
