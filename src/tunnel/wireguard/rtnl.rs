//! The rtnetlink half of the WireGuard backend: links, addresses, routes and rules, spoken
//! natively over a netlink socket (no `ip` child processes).
//!
//! Every [`Rtnl`] opens its own netlink socket, so it acts in the network namespace of the
//! thread that created it. The backend creates one per operation, which keeps it correct when
//! the process (or a test) runs inside a namespace.
//!
//! Routes and rules this backend installs carry the routing protocol number [`RT_PROTO`]. That
//! mark is how [`Rtnl::our_routes`] and [`Rtnl::our_rules`] tell them apart from routes the
//! kernel or the operator added, so they can be reconciled and removed without any state kept
//! in memory (a restarted daemon still cleans up what the previous run installed).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{
    Handle, IpVersion, LinkUnspec, LinkWireguard, RouteMessageBuilder, RuleAddRequest,
};

use crate::tunnel::TunnelError;

/// Routing protocol number stamped on every route and rule this backend installs
/// (`ip route show proto 167`). Chosen outside the numbers iproute2 names in `rt_protos`.
pub(crate) const RT_PROTO: u8 = 167;

/// Linux's main routing table.
pub(crate) const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

const EEXIST: i32 = libc::EEXIST;
const ENOENT: i32 = libc::ENOENT;
const ENODEV: i32 = libc::ENODEV;
const ESRCH: i32 = libc::ESRCH;

/// The errno carried by a netlink error reply, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn backend_err(context: impl std::fmt::Display, e: rtnetlink::Error) -> TunnelError {
    TunnelError::Backend(format!("{context}: {e}"))
}

/// Whether a route or rule dump entry was installed by this backend.
fn is_ours(protocol: RouteProtocol) -> bool {
    protocol == RouteProtocol::Other(RT_PROTO)
}

/// A netlink connection bound to the calling thread's network namespace.
pub(crate) struct Rtnl {
    handle: Handle,
    // Dropping the handle ends the connection task; aborting on drop also covers the case where
    // the task holds the last reference.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One route installed by this backend: (table, destination) plus the message to delete it.
pub(crate) struct OurRoute {
    pub table: u32,
    pub dst: IpNet,
    msg: RouteMessage,
}

/// One rule installed by this backend: (table, source prefix) plus the message to delete it.
pub(crate) struct OurRule {
    pub table: u32,
    pub src: IpNet,
    msg: RuleMessage,
}

impl Rtnl {
    /// Opens a netlink socket in the current namespace and spawns its connection task.
    ///
    /// Errors: [`TunnelError::Io`] if the socket cannot be opened.
    pub(crate) fn connect() -> Result<Self, TunnelError> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| TunnelError::io("opening a netlink socket", e))?;
        let task = tokio::spawn(conn);
        Ok(Rtnl { handle, task })
    }

    /// The index of link `name`, or `None` when there is no such link.
    pub(crate) async fn link_index(&self, name: &str) -> Result<Option<u32>, TunnelError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(backend_err(format_args!("looking up link {name}"), e)),
        }
    }

    /// Creates a kernel WireGuard link named `name`; returns `false` when a link of that name
    /// already existed (left alone; its kind is not checked).
    ///
    /// Errors: [`TunnelError::Backend`], e.g. `EOPNOTSUPP` when the kernel has no WireGuard.
    pub(crate) async fn add_wireguard_link(&self, name: &str) -> Result<bool, TunnelError> {
        match self
            .handle
            .link()
            .add(LinkWireguard::new(name).build())
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
            Err(e) => Err(backend_err(
                format_args!("creating WireGuard link {name}"),
                e,
            )),
        }
    }

    /// Deletes link `index`; an already-deleted link is Ok.
    pub(crate) async fn delete_link(&self, index: u32) -> Result<(), TunnelError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
            Err(e) => Err(backend_err(format_args!("deleting link #{index}"), e)),
        }
    }

    /// Sets link `index` administratively up (no-op if it already is).
    pub(crate) async fn set_up(&self, index: u32) -> Result<(), TunnelError> {
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| backend_err(format_args!("bringing link #{index} up"), e))
    }

    /// The addresses on link `index`, excluding IPv6 link-local ones (the kernel manages those).
    pub(crate) async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, TunnelError> {
        Ok(self
            .address_messages(index)
            .await?
            .into_iter()
            .map(|(net, _)| net)
            .collect())
    }

    async fn address_messages(
        &self,
        index: u32,
    ) -> Result<Vec<(IpNet, AddressMessage)>, TunnelError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| backend_err(format_args!("listing addresses of link #{index}"), e))?;
        let mut out = Vec::new();
        for msg in msgs {
            // The dump filter is applied in user space by rtnetlink; check again anyway.
            if msg.header.index != index {
                continue;
            }
            if let Some(net) = address_of(&msg)
                && !is_link_local(net.addr())
            {
                out.push((net, msg));
            }
        }
        Ok(out)
    }

    /// Makes the addresses of link `index` exactly `want` (link-local IPv6 aside): removes
    /// the others first, then adds the missing ones. Returns whether anything changed.
    pub(crate) async fn sync_addresses(
        &self,
        index: u32,
        want: &[IpNet],
    ) -> Result<bool, TunnelError> {
        let have = self.address_messages(index).await?;
        let mut changed = false;
        for (net, msg) in have.iter() {
            if !want.contains(net) {
                tracing::debug!(%net, index, "removing address");
                match self.handle.address().del(msg.clone()).execute().await {
                    Ok(()) => changed = true,
                    Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                    Err(e) => return Err(backend_err(format_args!("removing address {net}"), e)),
                }
            }
        }
        for net in want {
            if have.iter().any(|(n, _)| n == net) {
                continue;
            }
            tracing::debug!(%net, index, "adding address");
            match self
                .handle
                .address()
                .add(index, net.addr(), net.prefix_len())
                .execute()
                .await
            {
                Ok(()) => changed = true,
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(e) => return Err(backend_err(format_args!("adding address {net}"), e)),
            }
        }
        Ok(changed)
    }

    /// Routes through link `index` that carry [`RT_PROTO`], in all tables, both families.
    pub(crate) async fn our_routes(&self, index: u32) -> Result<Vec<OurRoute>, TunnelError> {
        let mut out = Vec::new();
        for family in [IpVersion::V4, IpVersion::V6] {
            let query = match family {
                IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| backend_err("listing routes", e))?;
            for msg in msgs {
                if !is_ours(msg.header.protocol) {
                    continue;
                }
                let oif = msg.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if oif != Some(index) {
                    continue;
                }
                if let Some(dst) = route_destination(&msg) {
                    out.push(OurRoute {
                        table: route_table(&msg),
                        dst,
                        msg,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Adds route `dst dev #index table T proto RT_PROTO`; an existing identical route is Ok.
    pub(crate) async fn add_route(
        &self,
        index: u32,
        table: u32,
        dst: IpNet,
    ) -> Result<(), TunnelError> {
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| TunnelError::InvalidSpec(format!("route to {dst}: {e}")))?;
        let msg = builder
            .output_interface(index)
            .table_id(table)
            .protocol(RouteProtocol::Other(RT_PROTO))
            .build();
        match self.handle.route().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => {
                // Same destination already routed in this table (by us, the kernel's prefix
                // route of an interface address, or the operator): keep theirs.
                tracing::debug!(%dst, table, "route already present");
                Ok(())
            }
            Err(e) => Err(backend_err(
                format_args!("adding route {dst} table {table}"),
                e,
            )),
        }
    }

    /// Deletes a route returned by [`Rtnl::our_routes`]; an already-gone route is Ok.
    pub(crate) async fn delete_route(&self, route: OurRoute) -> Result<(), TunnelError> {
        let OurRoute { table, dst, msg } = route;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ESRCH | ENOENT | ENODEV)) => Ok(()),
            Err(e) => Err(backend_err(
                format_args!("deleting route {dst} table {table}"),
                e,
            )),
        }
    }

    /// Policy rules that carry [`RT_PROTO`], both families.
    pub(crate) async fn our_rules(&self) -> Result<Vec<OurRule>, TunnelError> {
        let mut out = Vec::new();
        for family in [IpVersion::V4, IpVersion::V6] {
            let msgs: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(family)
                .execute()
                .try_collect()
                .await
                .map_err(|e| backend_err("listing rules", e))?;
            for msg in msgs {
                let ours = msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Protocol(p) if is_ours(*p)));
                if !ours {
                    continue;
                }
                if let Some(src) = rule_source(&msg) {
                    out.push(OurRule {
                        table: rule_table(&msg),
                        src,
                        msg,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Adds rule `from <src> lookup <table> proto RT_PROTO`; an identical rule is Ok.
    pub(crate) async fn add_rule(&self, src: IpNet, table: u32) -> Result<(), TunnelError> {
        let result = match src {
            IpNet::V4(n) => {
                let req = self.handle.rule().add().v4();
                execute_rule(req.source_prefix(n.addr(), n.prefix_len()), table).await
            }
            IpNet::V6(n) => {
                let req = self.handle.rule().add().v6();
                execute_rule(req.source_prefix(n.addr(), n.prefix_len()), table).await
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(backend_err(
                format_args!("adding rule from {src} lookup {table}"),
                e,
            )),
        }
    }

    /// Deletes a rule returned by [`Rtnl::our_rules`]; an already-gone rule is Ok.
    pub(crate) async fn delete_rule(&self, rule: OurRule) -> Result<(), TunnelError> {
        let OurRule { table, src, msg } = rule;
        match self.handle.rule().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENOENT | ESRCH)) => Ok(()),
            Err(e) => Err(backend_err(
                format_args!("deleting rule from {src} lookup {table}"),
                e,
            )),
        }
    }
}

/// Sends a rule-add request pointing at `table`, marked with [`RT_PROTO`].
async fn execute_rule<T>(req: RuleAddRequest<T>, table: u32) -> Result<(), rtnetlink::Error> {
    let mut req = req.table_id(table).action(RuleAction::ToTable);
    req.message_mut()
        .attributes
        .push(RuleAttribute::Protocol(RouteProtocol::Other(RT_PROTO)));
    req.execute().await
}

/// The address of an address dump entry. IPv4 point-to-point links report the peer address
/// as `IFA_ADDRESS` and our own as `IFA_LOCAL`, so `IFA_LOCAL` wins when present.
fn address_of(msg: &AddressMessage) -> Option<IpNet> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    IpNet::new(addr, msg.header.prefix_len).ok()
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(_) => false,
    }
}

fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn route_destination(msg: &RouteMessage) -> Option<IpNet> {
    let len = msg.header.destination_prefix_length;
    let addr = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    // A default route has no destination attribute at all.
    let addr = match (addr, msg.header.address_family) {
        (Some(a), _) => a,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    IpNet::new(addr, len).ok()
}

fn rule_table(msg: &RuleMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

fn rule_source(msg: &RuleMessage) -> Option<IpNet> {
    let src = msg.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(ip) => Some(*ip),
        _ => None,
    })?;
    IpNet::new(src, msg.header.src_len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn default_routes_decode_without_destination() {
        let mut v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(51820)
            .build();
        assert_eq!(route_destination(&v4), Some(net("0.0.0.0/0")));
        assert_eq!(route_table(&v4), 51820);
        v4.header.table = 100;
        v4.attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        assert_eq!(route_table(&v4), 100);

        let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
        assert_eq!(route_destination(&v6), Some(net("::/0")));
        assert_eq!(route_table(&v6), MAIN_TABLE);

        let host = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix("198.51.100.2".parse().unwrap(), 32)
            .unwrap()
            .build();
        assert_eq!(route_destination(&host), Some(net("198.51.100.2/32")));
    }

    #[test]
    fn point_to_point_addresses_use_the_local_attribute() {
        let mut msg = AddressMessage::default();
        msg.header.prefix_len = 32;
        msg.attributes
            .push(AddressAttribute::Address("192.0.2.99".parse().unwrap()));
        msg.attributes
            .push(AddressAttribute::Local("198.51.100.2".parse().unwrap()));
        assert_eq!(address_of(&msg), Some(net("198.51.100.2/32")));
        msg.attributes.remove(1);
        assert_eq!(address_of(&msg), Some(net("192.0.2.99/32")));
    }

    #[test]
    fn link_local_is_recognised() {
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()));
        assert!(!is_link_local("2001:db8::1".parse().unwrap()));
        assert!(!is_link_local("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn errno_is_read_from_netlink_errors() {
        assert_eq!(errno(&rtnetlink::Error::RequestFailed), None);
    }
}
