//! Storage behind a small trait: the market sees typed [`Table`]s (CBOR values under string
//! keys) with get / put / remove / all, compare-and-swap and atomic batches. sled implements the
//! byte-level [`Tree`] and [`Store`] traits; another engine only has to implement those two.
//!
//! Durability: a write is flushed to disk before the call returns, so nobody is told of it
//! before it would survive a crash. The async writers run the flush on Tokio's blocking pool,
//! never on a runtime worker, and no market lock is held by the table while it waits.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MarketError;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The engine failed (I/O, corruption it detected).
    #[error("storage engine: {0}")]
    Backend(String),
    /// A stored value does not decode.
    #[error("corrupt record {key:?}: {reason}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// Decoder's message.
        reason: String,
    },
    /// A value could not be encoded.
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// The blocking flush task did not complete.
    #[error("flush task: {0}")]
    Task(String),
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl From<StoreError> for MarketError {
    fn from(e: StoreError) -> Self {
        MarketError::Store(e.to_string())
    }
}

/// One write of a batch: `Some(value)` puts, `None` removes.
pub type RawOp = (Vec<u8>, Option<Vec<u8>>);

/// One stored entry: key and value bytes.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// An ordered byte-level key-value tree. Writes are visible at once and durable after
/// [`Tree::flush_blocking`].
pub trait Tree: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry, in key order.
    fn scan(&self) -> Result<Vec<RawEntry>, StoreError>;
    /// Sets `key` to `new` only if it currently holds `expected` (`None`: absent). Returns
    /// whether it swapped.
    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError>;
    /// Applies every write at once, or none.
    fn apply_batch(&self, ops: Vec<RawOp>) -> Result<(), StoreError>;
    /// Makes every write made so far durable. Blocks on the disk: async code calls
    /// [`flush`] instead.
    fn flush_blocking(&self) -> Result<(), StoreError>;
}

/// Opens named trees.
pub trait Store: Send + Sync + 'static {
    /// Opens (creating) tree `name`.
    fn open_tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError>;
}

impl Tree for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }

    fn scan(&self) -> Result<Vec<RawEntry>, StoreError> {
        self.iter()
            .map(|item| {
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(StoreError::from)
            })
            .collect()
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        Ok(sled::Tree::compare_and_swap(self, key, expected, new)?.is_ok())
    }

    fn apply_batch(&self, ops: Vec<RawOp>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        Ok(sled::Tree::apply_batch(self, batch)?)
    }

    fn flush_blocking(&self) -> Result<(), StoreError> {
        sled::Tree::flush(self)?;
        Ok(())
    }
}

impl Store for sled::Db {
    fn open_tree(&self, name: &str) -> Result<Arc<dyn Tree>, StoreError> {
        Ok(Arc::new(sled::Db::open_tree(self, name)?))
    }
}

/// How long [`flush`] waits for the disk before it reports the flush as failed. A stalled
/// disk then fails the write that waited (and whatever lock its caller holds is let go)
/// instead of hanging it; the flush itself may still finish later.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Flushes `tree` on Tokio's blocking pool, so no runtime worker waits on the disk, and waits
/// at most [`FLUSH_TIMEOUT`].
pub async fn flush(tree: &Arc<dyn Tree>) -> Result<(), StoreError> {
    flush_within(tree, FLUSH_TIMEOUT).await
}

async fn flush_within(tree: &Arc<dyn Tree>, limit: std::time::Duration) -> Result<(), StoreError> {
    let tree = tree.clone();
    let task = tokio::task::spawn_blocking(move || tree.flush_blocking());
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => Err(StoreError::Task(e.to_string())),
        Err(_) => Err(StoreError::Task(format!(
            "the disk did not finish a flush within {} ms",
            limit.as_millis()
        ))),
    }
}

/// A value read together with the exact bytes it was stored as, for compare-and-swap.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The decoded value.
    pub value: T,
    raw: Vec<u8>,
}

/// A tree holding CBOR-encoded `T` values under UTF-8 keys.
pub struct Table<T> {
    tree: Arc<dyn Tree>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Table {
            tree: self.tree.clone(),
            _t: std::marker::PhantomData,
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    ciborium::into_writer(value, &mut buf).map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(buf)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    ciborium::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// Opens (creating) tree `name` of `store`.
    pub fn open(store: &dyn Store, name: &str) -> Result<Self, StoreError> {
        Ok(Table {
            tree: store.open_tree(name)?,
            _t: std::marker::PhantomData,
        })
    }

    /// Reads one value. A value that no longer decodes is an error, never silently skipped.
    pub fn get(&self, key: &str) -> Result<Option<T>, StoreError> {
        Ok(self.get_versioned(key)?.map(|v| v.value))
    }

    /// Reads one value with the bytes it is stored as, for [`Table::compare_and_swap`].
    pub fn get_versioned(&self, key: &str) -> Result<Option<Versioned<T>>, StoreError> {
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(raw) => Ok(Some(Versioned {
                value: decode(key, &raw)?,
                raw,
            })),
        }
    }

    /// Every value, in key order.
    pub fn all(&self) -> Result<Vec<(String, T)>, StoreError> {
        self.tree
            .scan()?
            .into_iter()
            .map(|(k, v)| {
                let key = String::from_utf8_lossy(&k).into_owned();
                let val = decode(&key, &v)?;
                Ok((key, val))
            })
            .collect()
    }

    /// Writes one value; durable when it returns.
    pub async fn put(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.batch(vec![(key.to_owned(), Some(value))]).await
    }

    /// Removes one value; durable when it returns.
    pub async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.batch(vec![(key.to_owned(), None)]).await
    }

    /// Applies every put (`Some`) and removal (`None`) at once, or none; durable when it
    /// returns.
    pub async fn batch(&self, ops: Vec<(String, Option<&T>)>) -> Result<(), StoreError> {
        self.tree.apply_batch(encode_ops(ops)?)?;
        flush(&self.tree).await
    }

    /// Sets `key` to `new` only if it still holds `expected` (as read by
    /// [`Table::get_versioned`]; `None`: absent). Returns whether it swapped; a swap is durable
    /// when it returns.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&Versioned<T>>,
        new: Option<&T>,
    ) -> Result<bool, StoreError> {
        let new = new.map(encode).transpose()?;
        let swapped =
            self.tree
                .compare_and_swap(key.as_bytes(), expected.map(|v| v.raw.as_slice()), new)?;
        if swapped {
            flush(&self.tree).await?;
        }
        Ok(swapped)
    }

    /// Read-modify-write without a lock: `f` sees the current value and returns the new one
    /// (`None` removes), retried until no concurrent writer got in between. Returns what was
    /// written. Durable when it returns.
    pub async fn update<F>(&self, key: &str, mut f: F) -> Result<Option<T>, MarketError>
    where
        F: FnMut(Option<&T>) -> Result<Option<T>, MarketError>,
    {
        loop {
            let current = self.get_versioned(key)?;
            let new = f(current.as_ref().map(|v| &v.value))?;
            if self
                .compare_and_swap(key, current.as_ref(), new.as_ref())
                .await?
            {
                return Ok(new);
            }
        }
    }

    /// [`Table::update`] for synchronous callers: blocks the calling thread on the flush. Only
    /// for short paths that hold no lock and are not run in a loop.
    pub fn update_blocking<F>(&self, key: &str, mut f: F) -> Result<Option<T>, MarketError>
    where
        F: FnMut(Option<&T>) -> Result<Option<T>, MarketError>,
    {
        loop {
            let current = self.get_versioned(key)?;
            let new = f(current.as_ref().map(|v| &v.value))?;
            let raw = new.as_ref().map(encode).transpose()?;
            if self.tree.compare_and_swap(
                key.as_bytes(),
                current.as_ref().map(|v| v.raw.as_slice()),
                raw,
            )? {
                self.tree.flush_blocking()?;
                return Ok(new);
            }
        }
    }

    /// [`Table::put`] for synchronous callers: blocks the calling thread on the flush. Only
    /// for paths that run once (construction) or are not on a runtime worker.
    pub fn put_blocking(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.tree
            .apply_batch(encode_ops(vec![(key.to_owned(), Some(value))])?)?;
        self.tree.flush_blocking()
    }
}

fn encode_ops<T: Serialize>(ops: Vec<(String, Option<&T>)>) -> Result<Vec<RawOp>, StoreError> {
    ops.into_iter()
        .map(|(k, v)| Ok((k.into_bytes(), v.map(encode).transpose()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree whose flush blocks until released, as on a stalled disk.
    struct StalledTree {
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Tree for StalledTree {
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn scan(&self) -> Result<Vec<RawEntry>, StoreError> {
            Ok(Vec::new())
        }
        fn compare_and_swap(
            &self,
            _: &[u8],
            _: Option<&[u8]>,
            _: Option<Vec<u8>>,
        ) -> Result<bool, StoreError> {
            Ok(true)
        }
        fn apply_batch(&self, _: Vec<RawOp>) -> Result<(), StoreError> {
            Ok(())
        }
        fn flush_blocking(&self) -> Result<(), StoreError> {
            let _ = self.release.lock().unwrap().recv();
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stalled_flush_is_an_error_not_a_hang() {
        let (tx, rx) = std::sync::mpsc::channel();
        let tree: Arc<dyn Tree> = Arc::new(StalledTree {
            release: std::sync::Mutex::new(rx),
        });
        // The flush never finishes before it is released, so the short limit always expires:
        // the outcome does not depend on timing.
        let e = flush_within(&tree, std::time::Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("did not finish a flush"), "{e}");
        // Let the blocked flush thread end.
        tx.send(()).unwrap();
    }

    fn table(dir: &std::path::Path) -> Table<u32> {
        let db = sled::open(dir).unwrap();
        Table::open(&db, "t").unwrap()
    }

    #[tokio::test]
    async fn put_get_remove_all_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        t.put("a", &1).await.unwrap();
        t.batch(vec![("b".into(), Some(&2)), ("a".into(), None)])
            .await
            .unwrap();
        assert_eq!(t.get("a").unwrap(), None);
        assert_eq!(t.all().unwrap(), vec![("b".to_owned(), 2)]);
        t.remove("b").await.unwrap();
        assert!(t.all().unwrap().is_empty());
    }

    #[tokio::test]
    async fn compare_and_swap_lets_exactly_one_writer_win() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        assert!(t.compare_and_swap("k", None, Some(&1)).await.unwrap());
        assert!(!t.compare_and_swap("k", None, Some(&9)).await.unwrap());
        let seen = t.get_versioned("k").unwrap().unwrap();
        assert!(
            t.compare_and_swap("k", Some(&seen), Some(&2))
                .await
                .unwrap()
        );
        // The same (now stale) version no longer matches.
        assert!(
            !t.compare_and_swap("k", Some(&seen), Some(&3))
                .await
                .unwrap()
        );
        assert_eq!(t.get("k").unwrap(), Some(2));
    }

    #[tokio::test]
    async fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                t.update("n", |v| Ok(Some(v.copied().unwrap_or(0) + 1)))
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(t.get("n").unwrap(), Some(16));
    }

    #[test]
    fn writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        table(dir.path()).put_blocking("k", &7).unwrap();
        assert_eq!(table(dir.path()).get("k").unwrap(), Some(7));
    }
}
