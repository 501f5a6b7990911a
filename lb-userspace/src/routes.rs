//! VIP routes in a dedicated kernel table through rtnetlink: what a routing daemon (BIRD's
//! `protocol kernel { kernel table 100; learn; }`) picks up and announces. A route is
//! `VIP/32` (or `/128`) on `lo`, marked with xlb's own route protocol number, so xlb lists,
//! adds and deletes only its own routes and the routing daemon can tell them apart.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
};

use crate::config::Announce;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("interface {0} for the VIP routes does not exist")]
    NoInterface(String),
    #[error("{what} {addr} in table {table}: {source}")]
    Write {
        what: &'static str,
        addr: IpAddr,
        table: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("listing routes: {0}")]
    List(#[source] rtnetlink::Error),
    #[error("opening rtnetlink: {0}")]
    Open(#[source] std::io::Error),
}

/// The kernel's routing tables of the current network namespace.
pub struct KernelRoutes {
    handle: Handle,
}

impl KernelRoutes {
    /// Open a netlink socket in the current network namespace; must run inside a tokio runtime.
    pub fn new() -> Result<KernelRoutes, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Open)?;
        tokio::spawn(conn);
        Ok(KernelRoutes { handle })
    }

    /// The addresses xlb's routes in `a.table` announce.
    pub async fn list(&self, a: &Announce) -> Result<BTreeSet<IpAddr>, RouteError> {
        let mut out = BTreeSet::new();
        let dumps = [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ];
        for msg in dumps {
            let mut routes = self.handle.route().get(msg).execute();
            while let Some(r) = routes.try_next().await.map_err(RouteError::List)? {
                if let Some(addr) = ours(&r, a) {
                    out.insert(addr);
                }
            }
        }
        Ok(out)
    }

    pub async fn add(&self, a: &Announce, addr: IpAddr) -> Result<(), RouteError> {
        let msg = message(a, addr)?;
        // Replace: an existing identical route is not an error.
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|source| RouteError::Write {
                what: "adding",
                addr,
                table: a.table,
                source,
            })
    }

    /// Delete; a route already gone is no error.
    pub async fn del(&self, a: &Announce, addr: IpAddr) -> Result<(), RouteError> {
        let msg = message(a, addr)?;
        match self.handle.route().del(msg).execute().await {
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::ESRCH || e.raw_code() == -libc::ENOENT =>
            {
                Ok(())
            }
            r => r.map_err(|source| RouteError::Write {
                what: "deleting",
                addr,
                table: a.table,
                source,
            }),
        }
    }
}

fn message(a: &Announce, addr: IpAddr) -> Result<RouteMessage, RouteError> {
    let ifindex = crate::daemon::ifindex(&a.interface)
        .ok_or_else(|| RouteError::NoInterface(a.interface.clone()))?;
    let len = if addr.is_ipv4() { 32 } else { 128 };
    let b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(addr, len)
        .expect("an address of its own family and a full-length prefix");
    Ok(b.output_interface(ifindex)
        .table_id(a.table)
        .protocol(RouteProtocol::from(a.protocol))
        .scope(RouteScope::Link)
        .build())
}

/// The address a route announces, when it is one of xlb's in `a.table`.
fn ours(r: &RouteMessage, a: &Announce) -> Option<IpAddr> {
    let table = r
        .attributes
        .iter()
        .find_map(|x| match x {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(r.header.table.into());
    if table != a.table || r.header.protocol != RouteProtocol::from(a.protocol) {
        return None;
    }
    let len = r.header.destination_prefix_length;
    r.attributes
        .iter()
        .find_map(|x| match x {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })
        .filter(|addr| len == if addr.is_ipv4() { 32 } else { 128 })
}
