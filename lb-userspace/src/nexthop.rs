//! Next-hop resolution through rtnetlink: the kernel's route to a backend (egress interface and
//! gateway) and the neighbour entry of that gateway (its MAC). The forwarder writes frames
//! itself, so it needs both MACs; the daemon re-resolves them periodically and rewrites backends
//! whose next hop changed.

use std::{net::IpAddr, time::Duration};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, RouteMessageBuilder,
    packet_route::{
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute},
    },
};

/// Where frames to one backend go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    pub ifname: String,
    /// The egress interface's own MAC (source of rewritten frames).
    pub src_mac: [u8; 6],
    /// The neighbour frames are addressed to: the backend itself or the gateway towards it.
    pub via: IpAddr,
    pub dst_mac: [u8; 6],
}

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
    pub async fn resolve(&self, addr: IpAddr, on_link: bool) -> Result<NextHop, String> {
        let (ifindex, gateway) = self.route(addr).await?;
        if on_link && let Some(gw) = gateway {
            return Err(format!(
                "{addr} is routed via {gw}, but L2 DSR needs backends on a directly connected segment"
            ));
        }
        let via = gateway.unwrap_or(addr);
        let (ifname, src_mac) = self.link(ifindex).await?;
        if let Some(mac) = self.neighbour(ifindex, via).await? {
            return Ok(NextHop {
                ifindex,
                ifname,
                src_mac,
                via,
                dst_mac: mac,
            });
        }
        // No entry yet: make the kernel resolve it by sending it a datagram (the discard port),
        // then poll the neighbour table.
        probe(via);
        let deadline = tokio::time::Instant::now() + RESOLVE_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(mac) = self.neighbour(ifindex, via).await? {
                return Ok(NextHop {
                    ifindex,
                    ifname,
                    src_mac,
                    via,
                    dst_mac: mac,
                });
            }
        }
        Err(format!(
            "next hop {via} on {ifname} did not answer ARP/ND within {} ms",
            RESOLVE_WAIT.as_millis()
        ))
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

    async fn link(&self, ifindex: u32) -> Result<(String, [u8; 6]), String> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let link = links
            .try_next()
            .await
            .map_err(|e| format!("interface {ifindex}: {e}"))?
            .ok_or_else(|| format!("interface {ifindex} vanished"))?;
        let mut name = format!("if{ifindex}");
        let mut mac = None;
        for a in link.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n,
                LinkAttribute::Address(m) if m.len() == 6 => mac = Some(mac6(&m)),
                _ => {}
            }
        }
        let mac = mac.ok_or_else(|| format!("{name} has no Ethernet address"))?;
        Ok((name, mac))
    }

    async fn neighbour(&self, ifindex: u32, ip: IpAddr) -> Result<Option<[u8; 6]>, String> {
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(n) = neighbours
            .try_next()
            .await
            .map_err(|e| format!("neighbour table: {e}"))?
        {
            if n.header.ifindex != ifindex
                || matches!(
                    n.header.state,
                    NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
                )
            {
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
            if dst == Some(ip)
                && let Some(m) = mac
            {
                return Ok(Some(m));
            }
        }
        Ok(None)
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
