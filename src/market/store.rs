//! Typed access to sled trees: CBOR values under string keys.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MarketError;

/// A sled tree holding CBOR-encoded `T` values under UTF-8 keys.
#[derive(Clone)]
pub struct Table<T> {
    tree: sled::Tree,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// Opens (creating) tree `name` in `db`.
    pub fn open(db: &sled::Db, name: &str) -> Result<Self, MarketError> {
        Ok(Table {
            tree: db.open_tree(name)?,
            _t: std::marker::PhantomData,
        })
    }

    /// Reads one value. A value that no longer decodes is an error, never silently skipped.
    pub fn get(&self, key: &str) -> Result<Option<T>, MarketError> {
        match self.tree.get(key.as_bytes())? {
            None => Ok(None),
            Some(v) => ciborium::from_reader(v.as_ref())
                .map(Some)
                .map_err(|e| MarketError::Store(format!("corrupt record {key:?}: {e}"))),
        }
    }

    /// Writes one value and flushes it to disk before returning.
    pub fn put(&self, key: &str, value: &T) -> Result<(), MarketError> {
        let mut buf = Vec::new();
        ciborium::into_writer(value, &mut buf).map_err(|e| MarketError::Store(e.to_string()))?;
        self.tree.insert(key.as_bytes(), buf)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Removes one value (flushed).
    pub fn remove(&self, key: &str) -> Result<(), MarketError> {
        self.tree.remove(key.as_bytes())?;
        self.tree.flush()?;
        Ok(())
    }

    /// Every value, in key order.
    pub fn all(&self) -> Result<Vec<(String, T)>, MarketError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let val = ciborium::from_reader(v.as_ref())
                .map_err(|e| MarketError::Store(format!("corrupt record {key:?}: {e}")))?;
            out.push((key, val));
        }
        Ok(out)
    }
}
