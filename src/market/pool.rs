//! The provider's address pools. Allocations live in the tree `pool` (CIDR text -> lease id),
//! taken by compare-and-swap and flushed before a prefix is promised to anyone, so a crash
//! never hands the same prefix out twice.
//!
//! Prefixes of different sizes come from the same pools. A compare-and-swap on the exact key
//! cannot stop a /30 from overlapping a /32 inside it, so allocation is serialised within the
//! process (one lock per pool) and every candidate is checked against the current
//! allocations. A candidate is also refused when it includes an excluded address (the
//! provider's own addresses, its endpoint) or, for on-link IPv4 pools, the pool's network or
//! broadcast address.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::MarketError;
use super::sizes::Family;
use super::store::{self, Store, Tree};

/// Which addresses of the pools are never leased.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolRules {
    /// Addresses inside the pools that are the provider's own (and its endpoint's).
    pub excluded: Vec<IpAddr>,
    /// The IPv4 pools are on-link: their network and broadcast addresses are never leased.
    pub ipv4_on_link: bool,
}

/// IPv4 and IPv6 pools with their allocations.
#[derive(Clone)]
pub struct Pool {
    v4: Vec<IpNet>,
    v6: Vec<IpNet>,
    rules: PoolRules,
    tree: Arc<dyn Tree>,
    /// Held from the overlap check until the allocation is durable.
    alloc: Arc<tokio::sync::Mutex<()>>,
}

/// An address as a number, with the bit width of its family.
fn bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// The start of the `len`-bit block holding `addr` (a `width`-bit address).
fn block_of(addr: u128, width: u8, len: u8) -> u128 {
    let host = u32::from(width - len.min(width));
    if host >= 128 {
        0
    } else {
        addr & !((1u128 << host) - 1)
    }
}

fn net_at(start: u128, width: u8, len: u8) -> IpNet {
    let addr = if width == 32 {
        IpAddr::V4(std::net::Ipv4Addr::from(start as u32))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(start))
    };
    IpNet::new(addr, len).expect("a prefix length within the family's width")
}

impl Pool {
    /// Opens the pool over the configured prefixes (CIDR text) under `rules`.
    ///
    /// # Errors
    /// A pool that is not a CIDR of its family, or the store.
    pub fn open(
        db: &dyn Store,
        v4: &[String],
        v6: &[String],
        rules: PoolRules,
    ) -> Result<Pool, MarketError> {
        let v4 = v4
            .iter()
            .map(|p| {
                p.parse::<Ipv4Net>()
                    .map(|n| IpNet::V4(n.trunc()))
                    .map_err(|_| MarketError::Invalid(format!("bad IPv4 pool {p:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let v6 = v6
            .iter()
            .map(|p| {
                p.parse::<Ipv6Net>()
                    .map(|n| IpNet::V6(n.trunc()))
                    .map_err(|_| MarketError::Invalid(format!("bad IPv6 pool {p:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pool {
            v4,
            v6,
            rules,
            tree: db.open_tree("pool")?,
            alloc: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    fn pools(&self, family: Family) -> &[IpNet] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Starts of the `len` blocks of `family` that must not be leased: those overlapping an
    /// allocation, holding an excluded address, or (on-link IPv4) a pool's network or
    /// broadcast address.
    fn blocked(&self, family: Family, len: u8) -> Result<HashSet<u128>, MarketError> {
        let width = if family == Family::V4 { 32 } else { 128 };
        let mut out = HashSet::new();
        for (k, _) in self.tree.scan()? {
            let Ok(net) = String::from_utf8_lossy(&k).parse::<IpNet>() else {
                tracing::warn!(key = %String::from_utf8_lossy(&k), "pool entry that is not a prefix");
                continue;
            };
            let (start, w) = bits(net.network());
            if w != width {
                continue;
            }
            if net.prefix_len() >= len {
                out.insert(block_of(start, width, len));
            } else {
                // An allocation larger than the block covers 2^(len - its len) blocks; lease
                // sizes keep that at most 256 (a /56 seen in /64 blocks).
                let step = 1u128 << u32::from(width - len);
                let count = 1u128 << u32::from(len - net.prefix_len()).min(16);
                for i in 0..count {
                    out.insert(start + i * step);
                }
            }
        }
        for a in &self.rules.excluded {
            let (addr, w) = bits(*a);
            if w == width {
                out.insert(block_of(addr, width, len));
            }
        }
        if family == Family::V4 && self.rules.ipv4_on_link {
            for p in &self.v4 {
                out.insert(block_of(bits(p.network()).0, width, len));
                out.insert(block_of(bits(p.broadcast()).0, width, len));
            }
        }
        Ok(out)
    }

    /// Allocates a free, allowed prefix of `family` and length `len` to `lease_id`; `None`
    /// when none is left. The allocation is durable before this returns.
    ///
    /// # Errors
    /// The store.
    pub async fn allocate(
        &self,
        family: Family,
        len: u8,
        lease_id: &str,
    ) -> Result<Option<IpNet>, MarketError> {
        let _serial = self.alloc.lock().await;
        let mut blocked = self.blocked(family, len)?;
        for pool in self.pools(family) {
            if pool.prefix_len() > len {
                continue;
            }
            let (start, width) = bits(pool.network());
            let step = 1u128 << u32::from(width - len);
            let count = 1u128
                .checked_shl(u32::from(len - pool.prefix_len()))
                .unwrap_or(u128::MAX);
            let mut i = 0u128;
            while i < count {
                let b = start + i * step;
                i += 1;
                if blocked.contains(&b) {
                    continue;
                }
                let net = net_at(b, width, len);
                let taken = self.tree.compare_and_swap(
                    net.to_string().as_bytes(),
                    None,
                    Some(lease_id.as_bytes().to_vec()),
                )?;
                if taken {
                    store::flush(&self.tree).await?;
                    return Ok(Some(net));
                }
                blocked.insert(b);
            }
        }
        Ok(None)
    }

    /// Returns a prefix to the pool, only if it is held by `lease_id`.
    ///
    /// # Errors
    /// The store.
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
    ///
    /// # Errors
    /// The store.
    pub fn holder(&self, prefix: &str) -> Result<Option<String>, MarketError> {
        Ok(self
            .tree
            .get(prefix.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Free, allowed prefixes of `family` and length `len` (not overlapping an allocation, an
    /// excluded address or an on-link pool's network or broadcast address), saturating at
    /// `u32::MAX`. A tree that cannot be read counts as full: nothing is offered that might
    /// not be there.
    pub fn available(&self, family: Family, len: u8) -> u32 {
        let blocked = match self.blocked(family, len) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the address pool; offering nothing");
                return 0;
            }
        };
        let mut free = 0u128;
        for pool in self.pools(family) {
            if pool.prefix_len() > len {
                continue;
            }
            let total = 1u128
                .checked_shl(u32::from(len - pool.prefix_len()))
                .unwrap_or(u128::MAX);
            let width = bits(pool.network()).1;
            let taken = blocked
                .iter()
                .filter(|b| pool.contains(&net_at(**b, width, len)))
                .count() as u128;
            free = free.saturating_add(total.saturating_sub(taken));
        }
        u32::try_from(free).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(db: &sled::Db, v4: &[&str], rules: PoolRules) -> Pool {
        let v4: Vec<String> = v4.iter().map(|s| s.to_string()).collect();
        Pool::open(db, &v4, &["2001:db8:100::/62".into()], rules).unwrap()
    }

    fn temp_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (dir, db)
    }

    fn pool(db: &sled::Db) -> Pool {
        open(db, &["198.51.100.0/30"], PoolRules::default())
    }

    async fn take(p: &Pool, len: u8, id: &str) -> Option<String> {
        p.allocate(Family::V4, len, id)
            .await
            .unwrap()
            .map(|n| n.to_string())
    }

    #[tokio::test]
    async fn allocates_distinct_prefixes_until_exhausted() {
        let (_dir, db) = temp_db();
        let p = pool(&db);
        assert_eq!(p.available(Family::V4, 32), 4);
        assert_eq!(p.available(Family::V6, 64), 4);
        let mut got = Vec::new();
        for i in 0..4 {
            got.push(take(&p, 32, &format!("lease{i}")).await.unwrap());
        }
        got.dedup();
        assert_eq!(got.len(), 4);
        assert_eq!(
            got[0], "198.51.100.0/32",
            "routed pool: every address usable"
        );
        assert_eq!(take(&p, 32, "lease9").await, None);
        let v6 = p.allocate(Family::V6, 64, "lease0").await.unwrap().unwrap();
        assert_eq!(v6.to_string(), "2001:db8:100::/64");
        assert_eq!(p.available(Family::V4, 32), 0);
        assert_eq!(p.available(Family::V6, 64), 3);
        assert_eq!(p.available(Family::V6, 63), 1);
    }

    #[tokio::test]
    async fn mixed_sizes_never_overlap() {
        let (_dir, db) = temp_db();
        let p = open(&db, &["198.51.100.0/28"], PoolRules::default());
        assert_eq!(p.available(Family::V4, 30), 4);
        assert_eq!(take(&p, 32, "a").await.as_deref(), Some("198.51.100.0/32"));
        // The /30 holding .0 is taken in part: the first /30 is .4.
        assert_eq!(p.available(Family::V4, 30), 3);
        assert_eq!(p.available(Family::V4, 32), 15);
        assert_eq!(take(&p, 30, "b").await.as_deref(), Some("198.51.100.4/30"));
        assert_eq!(take(&p, 29, "c").await.as_deref(), Some("198.51.100.8/29"));
        assert_eq!(p.available(Family::V4, 32), 3);
        assert_eq!(p.available(Family::V4, 30), 0);
        assert_eq!(take(&p, 30, "d").await, None, "no whole /30 is free");
        assert_eq!(take(&p, 28, "d").await, None);
        let mut singles = Vec::new();
        while let Some(n) = take(&p, 32, "e").await {
            singles.push(n);
        }
        assert_eq!(
            singles,
            ["198.51.100.1/32", "198.51.100.2/32", "198.51.100.3/32"]
        );
        // Concurrent allocations of two sizes still never overlap.
        let (_dir, db) = temp_db();
        let p = open(&db, &["198.51.100.0/28"], PoolRules::default());
        let mut tasks = Vec::new();
        for i in 0..12 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let len = if i % 2 == 0 { 30 } else { 32 };
                p.allocate(Family::V4, len, &format!("l{i}")).await.unwrap()
            }));
        }
        let mut got: Vec<IpNet> = Vec::new();
        for t in tasks {
            if let Some(n) = t.await.unwrap() {
                got.push(n);
            }
        }
        for (i, a) in got.iter().enumerate() {
            for b in &got[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} overlaps {b}");
            }
        }
    }

    #[tokio::test]
    async fn excluded_addresses_are_never_leased() {
        let (_dir, db) = temp_db();
        let rules = PoolRules {
            excluded: vec![
                "198.51.100.1".parse().unwrap(),
                "2001:db8:100::1".parse().unwrap(),
            ],
            ipv4_on_link: false,
        };
        let p = open(&db, &["198.51.100.0/29"], rules);
        assert_eq!(p.available(Family::V4, 32), 7);
        assert_eq!(p.available(Family::V4, 30), 1, "the /30 holding .1 is out");
        assert_eq!(p.available(Family::V6, 64), 3);
        assert_eq!(take(&p, 30, "a").await.as_deref(), Some("198.51.100.4/30"));
        assert_eq!(take(&p, 32, "b").await.as_deref(), Some("198.51.100.0/32"));
        assert_eq!(take(&p, 32, "c").await.as_deref(), Some("198.51.100.2/32"));
        let v6 = p.allocate(Family::V6, 64, "a").await.unwrap().unwrap();
        assert_eq!(v6.to_string(), "2001:db8:100:1::/64");
    }

    #[tokio::test]
    async fn on_link_pools_keep_network_and_broadcast() {
        let (_dir, db) = temp_db();
        let rules = PoolRules {
            excluded: Vec::new(),
            ipv4_on_link: true,
        };
        let p = open(&db, &["198.51.100.0/28"], rules);
        assert_eq!(p.available(Family::V4, 32), 14);
        assert_eq!(p.available(Family::V4, 30), 2, "not the first or last /30");
        assert_eq!(p.available(Family::V4, 28), 0);
        assert_eq!(take(&p, 32, "a").await.as_deref(), Some("198.51.100.1/32"));
        assert_eq!(take(&p, 30, "b").await.as_deref(), Some("198.51.100.4/30"));
        assert_eq!(take(&p, 30, "c").await.as_deref(), Some("198.51.100.8/30"));
        assert_eq!(take(&p, 30, "d").await, None);
        let mut rest = Vec::new();
        while let Some(n) = take(&p, 32, "e").await {
            rest.push(n);
        }
        assert_eq!(
            rest,
            [
                "198.51.100.2/32",
                "198.51.100.3/32",
                "198.51.100.12/32",
                "198.51.100.13/32",
                "198.51.100.14/32"
            ],
            "never .0 or .15"
        );
    }

    #[tokio::test]
    async fn released_prefixes_count_again_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let p = pool(&db);
            let a = take(&p, 32, "A").await.unwrap();
            p.release(&a, "B").await.unwrap();
            assert_eq!(p.holder(&a).unwrap().as_deref(), Some("A"));
            assert_eq!(p.available(Family::V4, 32), 3);
        }
        let db = sled::open(dir.path()).unwrap();
        let p = pool(&db);
        assert_eq!(p.holder("198.51.100.0/32").unwrap().as_deref(), Some("A"));
        assert_eq!(p.available(Family::V4, 30), 0, "the allocation survived");
        assert_eq!(take(&p, 32, "C").await.as_deref(), Some("198.51.100.1/32"));
        p.release("198.51.100.0/32", "A").await.unwrap();
        assert_eq!(p.available(Family::V4, 32), 3);
        assert_eq!(take(&p, 32, "D").await.as_deref(), Some("198.51.100.0/32"));
        p.release("198.51.100.0/32", "D").await.unwrap();
        p.release("198.51.100.1/32", "C").await.unwrap();
        assert_eq!(p.available(Family::V4, 30), 1);
        assert_eq!(take(&p, 30, "E").await.as_deref(), Some("198.51.100.0/30"));
    }
}
