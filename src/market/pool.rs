//! The provider's address pools. Allocations live in the tree `pool` (CIDR text -> lease id),
//! taken by compare-and-swap and flushed before a prefix is promised to anyone, so a crash
//! never hands the same prefix out twice.

use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::MarketError;
use super::store::{self, Store, Tree};

/// IPv4 and IPv6 pools with their allocations.
#[derive(Clone)]
pub struct Pool {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
    v4_len: u8,
    v6_len: u8,
    tree: Arc<dyn Tree>,
}

impl Pool {
    /// Opens the pool over the configured prefixes; `v4_len`/`v6_len` are the lease sizes.
    pub fn open(
        db: &dyn Store,
        v4: &[String],
        v6: &[String],
        v4_len: u8,
        v6_len: u8,
    ) -> Result<Pool, MarketError> {
        let v4 = v4
            .iter()
            .map(|p| {
                p.parse::<Ipv4Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| MarketError::Invalid(format!("bad IPv4 pool {p:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let v6 = v6
            .iter()
            .map(|p| {
                p.parse::<Ipv6Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| MarketError::Invalid(format!("bad IPv6 pool {p:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            v4,
            v6,
            v4_len,
            v6_len,
            tree: db.open_tree("pool")?,
        })
    }

    /// Lease sizes: (IPv4 prefix length, IPv6 prefix length).
    pub fn sizes(&self) -> (u8, u8) {
        (self.v4_len, self.v6_len)
    }

    fn take(&self, net: IpNet, lease_id: &str) -> Result<bool, MarketError> {
        let key = net.to_string();
        Ok(self
            .tree
            .compare_and_swap(key.as_bytes(), None, Some(lease_id.as_bytes().to_vec()))?)
    }

    /// Allocates a free IPv4 prefix of the lease size to `lease_id`; `None` when exhausted.
    pub async fn allocate_v4(&self, lease_id: &str) -> Result<Option<Ipv4Net>, MarketError> {
        for pool in &self.v4 {
            let Ok(subnets) = pool.subnets(self.v4_len) else {
                continue;
            };
            for net in subnets {
                if self.take(IpNet::V4(net), lease_id)? {
                    store::flush(&self.tree).await?;
                    return Ok(Some(net));
                }
            }
        }
        Ok(None)
    }

    /// Allocates a free IPv6 prefix of the lease size to `lease_id`; `None` when exhausted.
    pub async fn allocate_v6(&self, lease_id: &str) -> Result<Option<Ipv6Net>, MarketError> {
        for pool in &self.v6 {
            let Ok(subnets) = pool.subnets(self.v6_len) else {
                continue;
            };
            for net in subnets {
                if self.take(IpNet::V6(net), lease_id)? {
                    store::flush(&self.tree).await?;
                    return Ok(Some(net));
                }
            }
        }
        Ok(None)
    }

    /// Returns a prefix to the pool, only if it is held by `lease_id`.
    pub async fn release(&self, prefix: &str, lease_id: &str) -> Result<(), MarketError> {
        if self
            .tree
            .compare_and_swap(prefix.as_bytes(), Some(lease_id.as_bytes()), None)?
        {
            store::flush(&self.tree).await?;
        }
        Ok(())
    }

    /// Which lease holds `prefix`, if any.
    pub fn holder(&self, prefix: &str) -> Result<Option<String>, MarketError> {
        Ok(self
            .tree
            .get(prefix.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Free prefixes of the lease size: (IPv4, IPv6), saturating at `u32::MAX`. A tree that
    /// cannot be read counts as full: nothing is offered that might not be there.
    pub fn available(&self) -> (u32, u32) {
        let total = |bits: u32| -> u64 { 1u64.checked_shl(bits).unwrap_or(u64::MAX) };
        let v4_total: u64 = self
            .v4
            .iter()
            .filter(|p| p.prefix_len() <= self.v4_len)
            .map(|p| total(u32::from(self.v4_len - p.prefix_len())))
            .fold(0u64, u64::saturating_add);
        let v6_total: u64 = self
            .v6
            .iter()
            .filter(|p| p.prefix_len() <= self.v6_len)
            .map(|p| total(u32::from(self.v6_len - p.prefix_len())))
            .fold(0u64, u64::saturating_add);
        let (mut v4_used, mut v6_used) = (0u64, 0u64);
        let Ok(entries) = self.tree.scan() else {
            tracing::error!("cannot read the address pool; offering nothing");
            return (0, 0);
        };
        for (k, _) in entries {
            if k.contains(&b':') {
                v6_used += 1;
            } else {
                v4_used += 1;
            }
        }
        let clamp = |t: u64, u: u64| t.saturating_sub(u).min(u32::MAX as u64) as u32;
        (clamp(v4_total, v4_used), clamp(v6_total, v6_used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(db: &sled::Db) -> Pool {
        Pool::open(
            db,
            &["198.51.100.0/30".into()],
            &["2001:db8:100::/62".into()],
            32,
            64,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn allocates_distinct_prefixes_until_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let p = pool(&db);
        assert_eq!(p.available(), (4, 4));
        let mut got = Vec::new();
        for i in 0..4 {
            got.push(p.allocate_v4(&format!("lease{i}")).await.unwrap().unwrap());
        }
        got.dedup();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].to_string(), "198.51.100.0/32");
        assert_eq!(p.allocate_v4("lease9").await.unwrap(), None);
        let v6 = p.allocate_v6("lease0").await.unwrap().unwrap();
        assert_eq!(v6.to_string(), "2001:db8:100::/64");
        assert_eq!(p.available(), (0, 3));
    }

    #[tokio::test]
    async fn release_only_by_holder_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let p = pool(&db);
            let a = p.allocate_v4("A").await.unwrap().unwrap().to_string();
            p.release(&a, "B").await.unwrap();
            assert_eq!(p.holder(&a).unwrap().as_deref(), Some("A"));
        }
        let db = sled::open(dir.path()).unwrap();
        let p = pool(&db);
        assert_eq!(p.holder("198.51.100.0/32").unwrap().as_deref(), Some("A"));
        assert_eq!(
            p.allocate_v4("C").await.unwrap().unwrap().to_string(),
            "198.51.100.1/32"
        );
        p.release("198.51.100.0/32", "A").await.unwrap();
        assert_eq!(
            p.allocate_v4("D").await.unwrap().unwrap().to_string(),
            "198.51.100.0/32"
        );
    }
}
