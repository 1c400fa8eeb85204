//! Locks per key (a lease, a payment hash): work on one lease never waits behind another's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// One async mutex per key, made on first use and dropped once nobody holds or waits for it.
#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl KeyedLocks {
    fn entry(&self, key: &str) -> Arc<AsyncMutex<()>> {
        let mut map = self.map.lock().expect("keyed locks map not poisoned");
        // Entries only the map refers to are free: drop them so the map stays small.
        map.retain(|_, m| Arc::strong_count(m) > 1);
        map.entry(key.to_owned()).or_default().clone()
    }

    /// Waits for the lock of `key`.
    pub(crate) async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// The lock of `key` if nobody holds it now.
    pub(crate) fn try_lock(&self, key: &str) -> Option<OwnedMutexGuard<()>> {
        self.entry(key).try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_independent_and_exclusive() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none(), "a is held");
        assert!(locks.try_lock("b").is_some(), "b does not wait for a");
        drop(a);
        assert!(locks.try_lock("a").is_some());
    }
}
