//! Applying a lease to the tunnel and writing its wg-quick file.

use super::*;

/// Directory (under the wg-quick directory) holding each lease's WireGuard private key.
const KEY_DIR: &str = "keys";

impl Renter {
    /// Where the WireGuard private key of the rent `key_id` (its request id) is kept.
    fn lease_key_path(&self, key_id: &str) -> Result<PathBuf, MarketError> {
        // Ids are ours (random hex), but the name comes back from storage: never a path.
        if key_id.is_empty() || !key_id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(MarketError::Store(format!(
                "bad WireGuard key id {key_id:?}"
            )));
        }
        Ok(self
            .inner
            .conf_dir
            .join(KEY_DIR)
            .join(format!("{key_id}.key")))
    }

    /// Makes and stores (mode 0600, never replacing a file) a fresh WireGuard key pair for
    /// the rent `key_id`. Each lease has its own pair, so the provider has one peer per lease
    /// and suspending, releasing or renewing one lease never touches another's peer.
    pub(super) fn new_lease_key(&self, key_id: &str) -> Result<WgKeyPair, MarketError> {
        let path = self.lease_key_path(key_id)?;
        let pair = WgKeyPair::generate().map_err(|e| MarketError::Store(e.to_string()))?;
        crate::fsutil::create_private(&path, format!("{}\n", pair.private.to_base64()).as_bytes())
            .map_err(|e| MarketError::Store(format!("cannot write {}: {e}", path.display())))?;
        Ok(pair)
    }

    /// The WireGuard private key the renter uses for `lease`: its own (rent `key_id`), or the
    /// node's key for a lease made before per-lease keys. Checked against the lease's key.
    pub(super) fn lease_private_key(
        &self,
        key_id: Option<&str>,
        lease: &Lease,
    ) -> Result<WgKey, MarketError> {
        let i = &self.inner;
        let Some(key_id) = key_id else {
            return Ok(i.wg_private);
        };
        let path = self.lease_key_path(key_id)?;
        if !path.exists() {
            return Err(MarketError::Store(format!(
                "the WireGuard key of lease {} is missing ({})",
                lease.lease_id,
                path.display()
            )));
        }
        let pair =
            WgKeyPair::load_or_create(&path).map_err(|e| MarketError::Store(e.to_string()))?;
        if pair.public != lease.renter_wg_pubkey {
            return Err(MarketError::Store(format!(
                "{} does not hold the key of lease {}",
                path.display(),
                lease.lease_id
            )));
        }
        Ok(pair.private)
    }

    /// Deletes the WireGuard key of a rental that is over (released or expired).
    pub(super) fn forget_lease_key(&self, rental: &Rental) {
        let Some(id) = &rental.wg_key_id else {
            return;
        };
        match self.lease_key_path(id).map(std::fs::remove_file) {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, key_id = %id, "cannot remove a lease's WireGuard key")
            }
            Err(e) => tracing::warn!(error = %e, "cannot remove a lease's WireGuard key"),
        }
    }

    /// Picks an interface name no unreleased rental uses and no lease being applied right now
    /// has claimed. The claim lasts until the returned guard is dropped (after the rental is
    /// stored), so two rentals completing at once never share an interface.
    pub(super) fn claim_iface(&self) -> Result<IfaceClaim, MarketError> {
        let mut used: Vec<String> = self
            .inner
            .rentals
            .all()?
            .into_iter()
            .filter(|(_, r)| r.state != LeaseState::Released)
            .map(|(_, r)| r.iface)
            .collect();
        let mut claims = self
            .inner
            .iface_claims
            .lock()
            .expect("interface claims not poisoned");
        used.extend(claims.iter().cloned());
        let base = &self.inner.iface;
        let name = if !used.contains(base) {
            base.clone()
        } else {
            (1..100)
                .map(|n| format!("{}{n}", base.trim_end_matches(|c: char| c.is_ascii_digit())))
                .find(|n| !used.contains(n) && n.len() <= 15)
                .ok_or_else(|| MarketError::Invalid("no free interface name".into()))?
        };
        claims.insert(name.clone());
        Ok(IfaceClaim {
            name,
            renter: self.clone(),
        })
    }

    /// The policy-routing table of `iface`: each renter interface needs its own, or two leases
    /// would share one default route and remove each other's `ip rule`s. The base interface
    /// uses [`POLICY_TABLE`]; `<base-without-digits>N` (from [`Self::free_iface`]) uses
    /// `POLICY_TABLE + N`.
    pub(super) fn policy_table(&self, iface: &str) -> u32 {
        let base = &self.inner.iface;
        if iface == base {
            return POLICY_TABLE;
        }
        let stem = base.trim_end_matches(|c: char| c.is_ascii_digit());
        iface
            .strip_prefix(stem)
            .and_then(|n| n.parse::<u32>().ok())
            .map(|n| POLICY_TABLE + n)
            .unwrap_or(POLICY_TABLE)
    }

    /// Configures the tunnel for `lease` on `iface` with the lease's own WireGuard key (from
    /// rent `key_id`, see [`Self::lease_private_key`]) and writes its wg-quick file.
    pub(super) async fn apply_tunnel(
        &self,
        lease: &Lease,
        iface: &str,
        key_id: Option<&str>,
    ) -> Result<PathBuf, MarketError> {
        let i = &self.inner;
        let addresses = lease_addresses(lease)?;
        let private_key = self.lease_private_key(key_id, lease)?;
        let spec = InterfaceSpec {
            name: iface.to_owned(),
            private_key,
            listen_port: None,
            addresses,
            policy: if i.cfg.full_tunnel {
                RoutingPolicy::FullTunnel
            } else {
                RoutingPolicy::SourceOnly {
                    table: self.policy_table(iface),
                }
            },
        };
        let peer = self.provider_peer(lease, lease.endpoint.clone());
        i.tunnel.ensure_interface(&spec).await?;
        i.tunnel.add_peer(iface, &peer).await?;
        let path = i.conf_dir.join(format!("{iface}.conf"));
        crate::fsutil::write_private(
            &path,
            render_wg_quick(&spec, std::slice::from_ref(&peer)).as_bytes(),
        )
        .map_err(|e| MarketError::Store(format!("cannot write {}: {e}", path.display())))?;
        if let Some(dir) = &i.etc_wireguard {
            link_into(dir, iface, &path);
        }
        Ok(path)
    }

    /// The tunnel peer of `lease`'s provider, reached at `endpoint` (the lease's, or the
    /// address it last resolved to).
    pub(super) fn provider_peer(&self, lease: &Lease, endpoint: String) -> PeerSpec {
        PeerSpec {
            public_key: lease.provider_wg_pubkey,
            endpoint: Some(endpoint),
            allowed_ips: vec![
                "0.0.0.0/0".parse().expect("valid"),
                "::/0".parse().expect("valid"),
            ],
            persistent_keepalive: (self.inner.keepalive > 0).then_some(self.inner.keepalive),
        }
    }

    /// Removes everything the daemon set up for a rental: the interface (with its addresses,
    /// routes and rules), the wg-quick file and its /etc/wireguard link.
    pub(super) async fn teardown_tunnel(&self, rental: &Rental) -> Result<(), MarketError> {
        let i = &self.inner;
        i.tunnel.remove_interface(&rental.iface).await?;
        if let Some(dir) = &i.etc_wireguard {
            unlink_from(dir, &rental.iface, &rental.conf_path);
        }
        match std::fs::remove_file(&rental.conf_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(MarketError::Store(format!(
                    "cannot remove {}: {e}",
                    rental.conf_path.display()
                )));
            }
        }
        Ok(())
    }
}

/// An interface name held for a lease being applied; released on drop.
pub(super) struct IfaceClaim {
    pub(super) name: String,
    renter: Renter,
}

impl Drop for IfaceClaim {
    fn drop(&mut self) {
        self.renter
            .inner
            .iface_claims
            .lock()
            .expect("interface claims not poisoned")
            .remove(&self.name);
    }
}

/// The addresses a lease puts on the renter's interface: every address of the leased IPv4
/// prefix, each as a /32 (a /30 gives four), and the first host address (`::1`) of the IPv6
/// prefix as a /128.
///
/// Each IPv4 address is its own /32 rather than one address with the prefix length: with a
/// prefix length the kernel would own only that one address (the others would not answer),
/// and the source policy rules are per address, so every address also routes its replies back
/// into the tunnel. The provider routes the whole prefix to this peer (its allowed IPs), so
/// the network and broadcast addresses of the prefix are ordinary addresses here. A renter
/// that routes part of the prefix on to a LAN removes those addresses from the interface
/// (docs/OPERATIONS.md). IPv6 prefixes (/56../64) are far too large for that: the provider
/// routes the whole prefix to the peer, and `::1` is configured so the host has an address.
pub(super) fn lease_addresses(lease: &Lease) -> Result<Vec<IpNet>, MarketError> {
    let mut addresses = Vec::new();
    if let Some(v4) = &lease.ipv4 {
        let net: ipnet::Ipv4Net = v4
            .parse()
            .map_err(|_| MarketError::Store(format!("bad prefix {v4}")))?;
        // Lease sizes stop at /28: at most 16 addresses.
        if net.prefix_len() < 28 {
            return Err(MarketError::Store(format!(
                "IPv4 lease {v4} larger than a /28"
            )));
        }
        for a in ipnet::Ipv4AddrRange::new(net.network(), net.broadcast()) {
            addresses.push(IpNet::V4(
                ipnet::Ipv4Net::new(a, 32).expect("/32 to be valid"),
            ));
        }
    }
    if let Some(v6) = &lease.ipv6 {
        let net: ipnet::Ipv6Net = v6
            .parse()
            .map_err(|_| MarketError::Store(format!("bad prefix {v6}")))?;
        // The first host address of the prefix (::1), not the subnet-router anycast address.
        let first = std::net::Ipv6Addr::from(u128::from(net.network()) + 1);
        addresses.push(IpNet::V6(
            ipnet::Ipv6Net::new(first, 128).expect("/128 to be valid"),
        ));
    }
    Ok(addresses)
}

/// Links `dir/<iface>.conf` to our wg-quick file so `wg-quick up <iface>` finds it. An existing
/// file that is not our link is left alone (and logged): it belongs to the operator.
fn link_into(dir: &Path, iface: &str, target: &Path) {
    let link = dir.join(format!("{iface}.conf"));
    match std::fs::read_link(&link) {
        Ok(existing) if existing == target => return,
        Ok(_) => {
            // A stale link of ours from an earlier lease on this interface name.
            let _ = std::fs::remove_file(&link);
        }
        Err(_) if link.exists() => {
            tracing::warn!(path = %link.display(), "not linking the wg-quick file: a file of that name exists");
            return;
        }
        Err(_) => {}
    }
    if let Err(e) = std::os::unix::fs::symlink(target, &link) {
        tracing::warn!(path = %link.display(), error = %e, "cannot link the wg-quick file");
    }
}

/// Removes `dir/<iface>.conf` only if it is our link to `target`.
fn unlink_from(dir: &Path, iface: &str, target: &Path) {
    let link = dir.join(format!("{iface}.conf"));
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        let _ = std::fs::remove_file(&link);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ipv4: Option<&str>, ipv6: Option<&str>) -> Lease {
        Lease {
            lease_id: String::new(),
            provider: String::new(),
            renter: String::new(),
            offer_id: String::new(),
            renter_wg_pubkey: WgKey([1; 32]),
            provider_wg_pubkey: WgKey([2; 32]),
            endpoint: String::new(),
            ipv4: ipv4.map(str::to_owned),
            ipv6: ipv6.map(str::to_owned),
            allowed_ips: Vec::new(),
            terms: crate::config::ProviderConfig::default().terms,
            credit_sat: 0,
            activated_at: 0,
            paid_until: 0,
            payment_hash: String::new(),
            revision: 1,
        }
    }

    fn shown(l: &Lease) -> Vec<String> {
        lease_addresses(l)
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[test]
    fn every_ipv4_address_of_the_lease_is_configured() {
        assert_eq!(
            shown(&lease(Some("198.51.100.4/30"), Some("2001:db8:100:2::/64"))),
            [
                "198.51.100.4/32",
                "198.51.100.5/32",
                "198.51.100.6/32",
                "198.51.100.7/32",
                "2001:db8:100:2::1/128"
            ]
        );
        assert_eq!(
            shown(&lease(Some("198.51.100.9/32"), None)),
            ["198.51.100.9/32"]
        );
        assert_eq!(shown(&lease(Some("198.51.100.16/28"), None)).len(), 16);
        assert_eq!(
            shown(&lease(None, Some("2001:db8:200::/56"))),
            ["2001:db8:200::1/128"]
        );
        // Larger than any lease size: refused rather than hundreds of addresses.
        assert!(lease_addresses(&lease(Some("198.51.100.0/24"), None)).is_err());
        assert!(lease_addresses(&lease(Some("nope"), None)).is_err());
    }
}
