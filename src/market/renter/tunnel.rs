//! Applying a lease to the tunnel and writing its wg-quick file.

use super::*;

impl Renter {
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

    /// Configures the tunnel for `lease` on `iface` and writes its wg-quick file.
    pub(super) async fn apply_tunnel(
        &self,
        lease: &Lease,
        iface: &str,
    ) -> Result<PathBuf, MarketError> {
        let i = &self.inner;
        let addresses = lease_addresses(lease)?;
        let spec = InterfaceSpec {
            name: iface.to_owned(),
            private_key: i.wg_private,
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
        let peer = PeerSpec {
            public_key: lease.provider_wg_pubkey,
            endpoint: Some(lease.endpoint.clone()),
            allowed_ips: vec![
                "0.0.0.0/0".parse().expect("valid"),
                "::/0".parse().expect("valid"),
            ],
            persistent_keepalive: (i.keepalive > 0).then_some(i.keepalive),
        };
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

/// The addresses a lease puts on the renter's interface: the leased IPv4 prefix's first
/// address as a /32, and the first host address (`::1`) of the IPv6 prefix as a /128.
pub(super) fn lease_addresses(lease: &Lease) -> Result<Vec<IpNet>, MarketError> {
    let mut addresses = Vec::new();
    if let Some(v4) = &lease.ipv4 {
        let net: ipnet::Ipv4Net = v4
            .parse()
            .map_err(|_| MarketError::Store(format!("bad prefix {v4}")))?;
        addresses.push(IpNet::V4(
            ipnet::Ipv4Net::new(net.network(), 32).expect("/32 to be valid"),
        ));
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
