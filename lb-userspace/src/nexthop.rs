//! Next-hop resolution through rtnetlink: the kernel's route to a backend (egress interface and
//! gateway) and the neighbour entry of that gateway (its MAC). The forwarder writes frames
//! itself, so it needs both MACs; the daemon re-resolves them periodically and rewrites backends
//! whose next hop changed.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute},
    },
};

pub use crate::state::{NextHop, Unreachable};

pub struct Resolver {
    handle: Handle,
}

/// How long to wait for ARP/ND to answer a probe before giving up.
const RESOLVE_WAIT: Duration = Duration::from_millis(1500);

impl Resolver {
    /// Open a netlink socket in the current network namespace; must run inside a tokio runtime.
    pub fn new() -> std::io::Result<Resolver> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Resolver { handle })
    }

    /// Resolve the next hop of `addr`. With `on_link`, the backend must be directly reachable
    /// (L2 DSR): a route through a gateway is an error, not a silent misdelivery.
    pub async fn resolve(&self, addr: IpAddr, on_link: bool) -> Result<NextHop, Unreachable> {
        self.resolve_all(&[(addr, on_link)])
            .await
            .pop()
            .unwrap_or_else(|| Err(Unreachable("no answer".into())))
    }

    /// Resolve many next hops with one link dump and one neighbour dump (plus one more per
    /// round while some neighbours are still being resolved): thousands of backends share a
    /// handful of gateways.
    pub async fn resolve_all(
        &self,
        wanted: &[(IpAddr, bool)],
    ) -> Vec<Result<NextHop, Unreachable>> {
        self.resolve_reasons(wanted)
            .await
            .into_iter()
            .map(|r| r.map_err(Unreachable))
            .collect()
    }

    async fn resolve_reasons(&self, wanted: &[(IpAddr, bool)]) -> Vec<Result<NextHop, String>> {
        let links = match self.links().await {
            Ok(l) => l,
            Err(e) => return wanted.iter().map(|_| Err(e.clone())).collect(),
        };
        // Route lookups: (ifindex, neighbour to address) per distinct backend address.
        let mut by_addr: HashMap<IpAddr, Result<(u32, Option<IpAddr>), String>> = HashMap::new();
        for &(addr, _) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = by_addr.entry(addr) {
                slot.insert(self.route(addr).await);
            }
        }
        let mut routes = Vec::with_capacity(wanted.len());
        for &(addr, on_link) in wanted {
            routes.push(match by_addr[&addr].clone() {
                Ok((_, Some(gw))) if on_link => Err(format!(
                    "{addr} is routed via {gw}, but L2 DSR needs backends on a directly connected segment"
                )),
                Ok((ifindex, gw)) => match links.get(&ifindex) {
                    Some(_) => Ok((ifindex, gw.unwrap_or(addr))),
                    None => Err(format!("{addr}: egress interface {ifindex} has no Ethernet address")),
                },
                Err(e) => Err(e),
            });
        }
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        let mut probed = false;
        loop {
            let neigh = match self.neighbours().await {
                Ok(n) => n,
                Err(e) => return wanted.iter().map(|_| Err(e.clone())).collect(),
            };
            let missing: Vec<IpAddr> = routes
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .filter(|(i, via)| !neigh.contains_key(&(*i, *via)))
                .map(|(_, via)| *via)
                .collect();
            if missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return routes
                    .iter()
                    .map(|r| {
                        let (ifindex, via) = r.clone()?;
                        let (ifname, src_mac) = links[&ifindex].clone();
                        let dst_mac = *neigh.get(&(ifindex, via)).ok_or_else(|| {
                            format!(
                                "next hop {via} on {ifname} did not answer ARP/ND within {} ms",
                                RESOLVE_WAIT.as_millis()
                            )
                        })?;
                        Ok(NextHop {
                            ifindex,
                            ifname,
                            src_mac,
                            via,
                            dst_mac,
                        })
                    })
                    .collect();
            }
            if !probed {
                // Make the kernel resolve them: one datagram each to the discard port.
                let unique: std::collections::BTreeSet<IpAddr> = missing.into_iter().collect();
                for ip in unique {
                    probe(ip);
                }
                probed = true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn route(&self, addr: IpAddr) -> Result<(u32, Option<IpAddr>), String> {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, len)
            .map_err(|e| e.to_string())?
            .build();
        let mut routes = self.handle.route().get(msg).execute();
        let route = routes
            .try_next()
            .await
            .map_err(|e| format!("no route to {addr}: {e}"))?
            .ok_or_else(|| format!("no route to {addr}"))?;
        let mut oif = None;
        let mut gw = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(IpAddr::V4(*g)),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => gw = Some(IpAddr::V6(*g)),
                _ => {}
            }
        }
        let oif = oif.ok_or_else(|| format!("the route to {addr} has no output interface"))?;
        Ok((oif, gw))
    }

    /// Every interface with an Ethernet address: ifindex -> (name, MAC).
    async fn links(&self) -> Result<HashMap<u32, (String, [u8; 6])>, String> {
        let mut tries = 0;
        loop {
            match self.links_once().await {
                Err(e) if is_busy(&e) && tries < DUMP_TRIES => tries += 1,
                r => return r.map_err(|e| format!("link table: {e}")),
            }
        }
    }

    async fn links_once(&self) -> Result<HashMap<u32, (String, [u8; 6])>, rtnetlink::Error> {
        let mut out = HashMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await? {
            let mut name = format!("if{}", link.header.index);
            let mut mac = None;
            for a in link.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = n,
                    LinkAttribute::Address(m) if m.len() == 6 => mac = Some(mac6(&m)),
                    _ => {}
                }
            }
            if let Some(m) = mac {
                out.insert(link.header.index, (name, m));
            }
        }
        Ok(out)
    }

    /// Usable neighbour entries: (ifindex, address) -> MAC.
    async fn neighbours(&self) -> Result<HashMap<(u32, IpAddr), [u8; 6]>, String> {
        let mut tries = 0;
        loop {
            match self.neighbours_once().await {
                Err(e) if is_busy(&e) && tries < DUMP_TRIES => tries += 1,
                r => return r.map_err(|e| format!("neighbour table: {e}")),
            }
        }
    }

    async fn neighbours_once(&self) -> Result<HashMap<(u32, IpAddr), [u8; 6]>, rtnetlink::Error> {
        let mut out = HashMap::new();
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(n) = neighbours.try_next().await? {
            if matches!(
                n.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            ) {
                continue;
            }
            let mut dst = None;
            let mut mac = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dst = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        dst = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => mac = Some(mac6(m)),
                    _ => {}
                }
            }
            if let (Some(d), Some(m)) = (dst, mac) {
                out.insert((n.header.ifindex, d), m);
            }
        }
        Ok(out)
    }
}

fn mac6(m: &[u8]) -> [u8; 6] {
    let mut out = [0u8; 6];
    out.copy_from_slice(&m[..6]);
    out
}

/// Trigger ARP/ND for `ip` with one datagram to its discard port.
fn probe(ip: IpAddr) {
    let bind: std::net::SocketAddr = if ip.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    if let Ok(s) = std::net::UdpSocket::bind(bind) {
        let _ = s.send_to(&[0u8], (ip, 9));
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A dump the kernel interrupted because the table changed meanwhile (`NLM_F_DUMP_INTR`, seen
/// as EBUSY) is asked again this many times before it counts as a failure.
const DUMP_TRIES: u32 = 3;

fn is_busy(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EBUSY)
}
