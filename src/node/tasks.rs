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

/// File in the data dir that keeps the Argon2id root of the market secret between starts.
pub(super) const TOPIC_CACHE_FILE: &str = "topic.key";

/// The market's keys from `secret`, without the slow Argon2id step when an earlier start
/// kept its root in [`TOPIC_CACHE_FILE`] (mode 0600, beside the node key and the config that
/// holds the secret itself, so it exposes nothing they do not). The file holds a tag of the
/// secret and parameters, then the root; a changed secret does not match the tag and is
/// derived again. Run it off the async runtime: a miss costs an Argon2id run.
pub(super) fn derive_topic(
    data_dir: &DataDir,
    secret: &str,
) -> Result<net::topic::Topic, net::topic::TopicError> {
    use sha2::{Digest as _, Sha256};
    let path = data_dir.root().join(TOPIC_CACHE_FILE);
    let tag: [u8; 32] = {
        let mut h = Sha256::new();
        h.update(b"leasewire/topic-cache/v1");
        h.update(net::topic::ARGON2_M_KIB.to_be_bytes());
        h.update(net::topic::ARGON2_T.to_be_bytes());
        h.update(net::topic::ARGON2_P.to_be_bytes());
        h.update(net::topic::ARGON2_SALT);
        h.update(secret.as_bytes());
        h.finalize().into()
    };
    let is_public = secret == net::topic::DEFAULT_PUBLIC_SECRET;
    if !secret.is_empty()
        && let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == 64
        && bytes[..32] == tag
    {
        let mut root = [0u8; 32];
        root.copy_from_slice(&bytes[32..]);
        return Ok(net::topic::Topic::from_root(root, is_public));
    }
    let topic = net::topic::derive(secret)?;
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&tag);
    bytes.extend_from_slice(topic.root());
    if let Err(e) = crate::fsutil::write_private(&path, &bytes) {
        // Only the next start gets slower.
        tracing::warn!(error = %e, "cannot keep the derived market key");
    }
    Ok(topic)
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

/// Shortest and longest time between two announces of the same provider.
const REANNOUNCE_MIN: Duration = Duration::from_secs(60);
/// See [`REANNOUNCE_MIN`].
const REANNOUNCE_MAX: Duration = Duration::from_secs(600);

/// How often a provider announces itself again: 30 discovery intervals, within
/// [`REANNOUNCE_MIN`]..=[`REANNOUNCE_MAX`] (7.5 minutes at the default 15 s).
pub(super) fn reannounce_every(discovery: Duration) -> Duration {
    (discovery * 30).clamp(REANNOUNCE_MIN, REANNOUNCE_MAX)
}

/// Announces the provider on the DHT at start and then every [`reannounce_every`]: a provider
/// record only says "this peer sells here" (the offer itself travels by the exchange), and it
/// is refreshed so that DHT nodes that joined since, or restarted, learn it. An announce that
/// reached nobody is retried as soon as a DHT peer is routable (the network layer's
/// `announce_pending`), not by announcing more often: hundreds of providers each walking the
/// DHT every few seconds would keep every node busy with the walks of the others.
pub(super) async fn announce_loop(
    p: Provider,
    net: NetClient,
    every: Duration,
    shutdown: CancellationToken,
) {
    let period = reannounce_every(every);
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match net.start_providing().await {
            Ok(()) => tracing::debug!(offer_id = %p.offer().id(), "announced on the DHT"),
            Err(e) => tracing::debug!(error = %e, "DHT announce incomplete; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timer.tick() => {}
        }
    }
}

/// Runs the renter's discovery passes: every `every` (the first one `every` after start), and
/// at once whenever `wake` is notified (a member was met, and its offers were asked for), so
/// discovery starts as soon as the node meets its first peer instead of a full interval later. Notifications during a pass coalesce into one more pass.
pub(super) async fn discovery_loop(
    r: Renter,
    every: Duration,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    // No pass at start: with no member met there is nothing to ask, and a DHT walk started
    // then would race the first member's offers and dial every provider it finds. The first
    // pass comes with the first member met (`wake`), or an interval later.
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reannounces_are_paced_by_the_discovery_interval_within_bounds() {
        assert_eq!(
            reannounce_every(Duration::from_secs(15)),
            Duration::from_secs(450)
        );
        assert_eq!(reannounce_every(Duration::from_secs(1)), REANNOUNCE_MIN);
        assert_eq!(reannounce_every(Duration::from_secs(3600)), REANNOUNCE_MAX);
    }

    #[test]
    fn topic_cache_gives_the_derived_keys_and_follows_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::new(dir.path());
        let fresh = derive_topic(&data_dir, "cluster-a").unwrap();
        assert_eq!(fresh, net::topic::derive("cluster-a").unwrap());
        let path = dir.path().join(TOPIC_CACHE_FILE);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Served from the file: same keys.
        assert_eq!(derive_topic(&data_dir, "cluster-a").unwrap(), fresh);
        // Another secret is derived again, not read from the file.
        let other = derive_topic(&data_dir, "cluster-b").unwrap();
        assert_eq!(other, net::topic::derive("cluster-b").unwrap());
        assert_ne!(other.dht_key, fresh.dht_key);
        // A damaged file is ignored and rewritten.
        std::fs::write(&path, b"junk").unwrap();
        assert_eq!(derive_topic(&data_dir, "cluster-a").unwrap(), fresh);
        assert_eq!(std::fs::read(&path).unwrap().len(), 64);
        // The public market's flag survives the cache.
        let public = net::topic::DEFAULT_PUBLIC_SECRET;
        assert!(derive_topic(&data_dir, public).unwrap().is_public);
        assert!(derive_topic(&data_dir, public).unwrap().is_public);
    }
}
