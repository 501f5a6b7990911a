//! The header walk that turns a frame into a `Parsed` summary. Offsets are kept provably small
//! (VLAN depth, IHL, a bounded IPv6 extension walk) so every access (`access`) verifies.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Addr, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
    decision::{PKT_ECHO, PKT_FRAGMENT, PKT_ICMP_ERROR, PKT_NORMAL, PKT_RESET, Packet},
    stats::Reason,
};

use crate::{
    access::{frame_holds, read},
    hdr::*,
    verdict::Verdict,
};

/// IPv6 extension headers walked before giving up (hop-by-hop, routing, fragment, dest-opts).
const MAX_EXT_HDRS: usize = 4;

pub struct Parsed {
    pub pkt: Packet,
    /// Offset of the IP header (14, 18 or 22).
    pub l3_off: usize,
    /// IP datagram length from its header (excludes Ethernet padding).
    pub l3_len: usize,
    /// IPv4 DF bit (always true for IPv6, which routers never fragment).
    pub df: bool,
    /// DSCP/ECN, copied to the outer header.
    pub tos: u8,
    /// IPv4 (the key's family, held apart from the key so the verifier knows it on every
    /// path: the key's byte is written together with its neighbours).
    pub v4: bool,
}

/// Ethernet and up to two VLAN tags: the offset of the L3 header and its ethertype.
#[inline(always)]
pub fn l2(ctx: &XdpContext) -> Result<(usize, u16), Verdict> {
    let eth: EthHdr = read(ctx, 0)?;
    let mut proto = eth.proto_be;
    let mut off = size_of::<EthHdr>();
    if proto == ETH_P_8021Q_BE || proto == ETH_P_8021AD_BE {
        proto = read::<u16>(ctx, off + 2)?;
        off += 4;
        if proto == ETH_P_8021Q_BE || proto == ETH_P_8021AD_BE {
            proto = read::<u16>(ctx, off + 2)?;
            off += 4;
        }
    }
    Ok((off, proto))
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Verdict> {
    let (l3_off, proto) = l2(ctx)?;
    let v4 = proto == ETH_P_IPV4_BE;
    let l3_len = if v4 {
        u16::from_be(read::<u16>(ctx, l3_off + 2)?) as usize
    } else if proto == ETH_P_IPV6_BE {
        size_of::<Ipv6Hdr>() + u16::from_be(read::<u16>(ctx, l3_off + 4)?) as usize
    } else {
        return Err(Verdict::pass(Reason::PassNotIp));
    };
    // The datagram must lie within the frame. Checked before any other header field is read:
    // the helper call for a multi-buffer frame then keeps nothing else live across it (each
    // value held over a call costs the established path a spill).
    if !frame_holds(ctx, l3_off + l3_len) {
        return Err(Verdict::drop(Reason::DropMalformed));
    }
    if v4 {
        parse_v4(ctx, l3_off, l3_len)
    } else {
        parse_v6(ctx, l3_off, l3_len)
    }
}

#[inline(always)]
fn ports(ctx: &XdpContext, off: usize) -> Result<(u16, u16), Verdict> {
    let p: [u16; 2] = read(ctx, off)?;
    Ok((p[0], p[1]))
}

/// `v`, hidden from LLVM: knowing that a header ends within the datagram, and the datagram
/// within the frame, it would drop the packet reads' own bounds checks, which the verifier
/// (6.18) needs to see.
#[inline(always)]
pub fn opaque(v: usize) -> usize {
    // SAFETY: a volatile read of a local.
    unsafe { core::ptr::read_volatile(&v) }
}

/// Set the key's ports by writing its last 8 bytes (ports, protocol, family, padding) in one
/// 64-bit store. The kernel hashes and compares the key in 32- and 64-bit loads, and a load
/// that spans several narrower stores is not forwarded from them: the CPU waits for those
/// stores to retire. LLVM keeps the word where the key stays in memory; where it rebuilds the
/// key from registers it may store the fields one by one again (14 interleaved runs with and
/// without: 1 to 4 ns per packet).
#[inline(always)]
fn set_ports(key: &mut FlowKey, sport_be: u16, dport_be: u16) {
    const TAIL: usize = core::mem::offset_of!(FlowKey, src_port_be);
    const { assert!(TAIL == 32 && size_of::<FlowKey>() == 40 && core::mem::align_of::<FlowKey>() == 8) };
    let tail = sport_be as u64
        | (dport_be as u64) << 16
        | (key.proto as u64) << 32
        | (key.family as u64) << 40;
    // SAFETY: bytes 32..40 of the 8-aligned FlowKey are src_port_be, dst_port_be, proto,
    // family and padding, which this little-endian word holds in that order.
    unsafe {
        (key as *mut FlowKey)
            .cast::<u8>()
            .add(TAIL)
            .cast::<u64>()
            .write(tail)
    }
}

/// Ports (and for TCP the SYN flag) of the TCP or UDP header at `off`; `key.proto` says which.
/// The header must lie within the datagram (`end`, from its IP header), not merely within the
/// frame: bytes past the datagram are padding or garbage, never a flow.
#[inline(always)]
fn transport(
    ctx: &XdpContext,
    off: usize,
    end: usize,
    mut key: FlowKey,
) -> Result<Packet, Verdict> {
    let len = if key.proto == PROTO_TCP { 20 } else { 8 };
    if off + len > opaque(end) {
        return Err(Verdict::drop(Reason::DropMalformed));
    }
    let mut syn = false;
    let mut kind = PKT_NORMAL;
    if key.proto == PROTO_TCP {
        let tcp: TcpHead = read(ctx, off)?;
        set_ports(&mut key, tcp.sport_be, tcp.dport_be);
        syn = tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if tcp.flags & TCP_RST != 0 {
            kind = PKT_RESET;
        }
    } else {
        let udp: UdpHdr = read(ctx, off)?;
        set_ports(&mut key, udp.sport_be, udp.dport_be);
    }
    Ok(Packet { key, kind, syn })
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3_off: usize, tot_len: usize) -> Result<Parsed, Verdict> {
    let ip: Ipv4Hdr = read(ctx, l3_off)?;
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < size_of::<Ipv4Hdr>() || tot_len < ihl {
        return Err(Verdict::drop(Reason::DropMalformed));
    }
    let frag = u16::from_be(ip.frag_be);
    let key = FlowKey {
        src: Addr::v4(ip.src),
        dst: Addr::v4(ip.dst),
        proto: ip.proto,
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    let mut out = Parsed {
        pkt: Packet::default(),
        l3_off,
        l3_len: tot_len,
        df: frag & 0x4000 != 0,
        tos: ip.tos,
        v4: true,
    };
    // MF set or a non-zero offset: ports are absent (later fragments) or must be ignored.
    if frag & 0x3fff != 0 {
        if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
            return Err(Verdict::pass(Reason::PassProto));
        }
        out.pkt = Packet {
            key,
            kind: PKT_FRAGMENT,
            syn: false,
        };
        return Ok(out);
    }
    let l4 = l3_off + ihl;
    let end = l3_off + tot_len;
    match ip.proto {
        PROTO_TCP | PROTO_UDP => out.pkt = transport(ctx, l4, end, key)?,
        PROTO_ICMP => {
            if l4 + size_of::<IcmpHdr>() > opaque(end) {
                return Err(Verdict::drop(Reason::DropMalformed));
            }
            let icmp: IcmpHdr = read(ctx, l4)?;
            if icmp.kind == ICMP_ECHO_REQUEST && icmp.code == 0 {
                out.pkt = Packet {
                    key,
                    kind: PKT_ECHO,
                    syn: false,
                };
                return Ok(out);
            }
            // Destination unreachable (incl. fragmentation needed) and time exceeded quote the
            // offending packet: route them to the backend that owns that flow.
            if icmp.kind != 3 && icmp.kind != 11 {
                return Err(Verdict::pass(Reason::PassIcmp));
            }
            out.pkt = Packet {
                key: inner_v4(ctx, l4 + size_of::<IcmpHdr>())?,
                kind: PKT_ICMP_ERROR,
                syn: false,
            };
        }
        _ => return Err(Verdict::pass(Reason::PassProto)),
    }
    Ok(out)
}

/// The quoted IPv4 packet of an ICMP error, flipped to the client -> VIP direction.
#[inline(always)]
fn inner_v4(ctx: &XdpContext, off: usize) -> Result<FlowKey, Verdict> {
    let ip: Ipv4Hdr = read(ctx, off)?;
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4
        || ihl < size_of::<Ipv4Hdr>()
        || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP)
    {
        return Err(Verdict::pass(Reason::PassIcmp));
    }
    let (sport, dport) = ports(ctx, off + ihl)?;
    Ok(FlowKey {
        src: Addr::v4(ip.dst),
        dst: Addr::v4(ip.src),
        src_port_be: dport,
        dst_port_be: sport,
        proto: ip.proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    })
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3_off: usize, l3_len: usize) -> Result<Parsed, Verdict> {
    let ip: Ipv6Hdr = read(ctx, l3_off)?;
    if ip.vtcfl[0] >> 4 != 6 {
        return Err(Verdict::drop(Reason::DropMalformed));
    }
    let mut key = FlowKey {
        src: Addr(ip.src),
        dst: Addr(ip.dst),
        family: FAMILY_V6,
        ..FlowKey::default()
    };
    let tos = (ip.vtcfl[0] << 4) | (ip.vtcfl[1] >> 4);
    let mut out = Parsed {
        pkt: Packet::default(),
        l3_off,
        l3_len,
        df: true,
        tos,
        v4: false,
    };

    let mut next = ip.next;
    let mut off = l3_off + size_of::<Ipv6Hdr>();
    let mut fragment = false;
    for _ in 0..MAX_EXT_HDRS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units after the first 8.
            0 | 43 | 60 => {
                let h: [u8; 2] = read(ctx, off)?;
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            44 => {
                let h: [u8; 4] = read(ctx, off)?;
                next = h[0];
                // Offset (13 bits) or M flag: any fragment, first or later.
                if (h[2] as u16) << 8 | (h[3] as u16 & 0xf9) != 0 {
                    fragment = true;
                }
                off += 8;
            }
            _ => break,
        }
    }
    key.proto = next;
    if fragment {
        if next != PROTO_TCP && next != PROTO_UDP {
            return Err(Verdict::pass(Reason::PassProto));
        }
        out.pkt = Packet {
            key,
            kind: PKT_FRAGMENT,
            syn: false,
        };
        return Ok(out);
    }
    let end = l3_off + l3_len;
    match next {
        PROTO_TCP | PROTO_UDP => out.pkt = transport(ctx, off, end, key)?,
        PROTO_ICMPV6 => {
            if off + size_of::<IcmpHdr>() > opaque(end) {
                return Err(Verdict::drop(Reason::DropMalformed));
            }
            let icmp: IcmpHdr = read(ctx, off)?;
            // Echo right after the fixed header only: the answer rewrites it in place there.
            if icmp.kind == ICMPV6_ECHO_REQUEST
                && icmp.code == 0
                && off == l3_off + size_of::<Ipv6Hdr>()
            {
                out.pkt = Packet {
                    key,
                    kind: PKT_ECHO,
                    syn: false,
                };
                return Ok(out);
            }
            // Destination unreachable, packet too big, time exceeded.
            if icmp.kind == 0 || icmp.kind > 3 {
                return Err(Verdict::pass(Reason::PassIcmp));
            }
            out.pkt = Packet {
                key: inner_v6(ctx, off + size_of::<IcmpHdr>())?,
                kind: PKT_ICMP_ERROR,
                syn: false,
            };
        }
        0 | 43 | 44 | 60 => return Err(Verdict::pass(Reason::PassExtHeaders)),
        _ => return Err(Verdict::pass(Reason::PassProto)),
    }
    Ok(out)
}

#[inline(always)]
fn inner_v6(ctx: &XdpContext, off: usize) -> Result<FlowKey, Verdict> {
    let ip: Ipv6Hdr = read(ctx, off)?;
    if ip.next != PROTO_TCP && ip.next != PROTO_UDP {
        return Err(Verdict::pass(Reason::PassIcmp));
    }
    let (sport, dport) = ports(ctx, off + size_of::<Ipv6Hdr>())?;
    Ok(FlowKey {
        src: Addr(ip.dst),
        dst: Addr(ip.src),
        src_port_be: dport,
        dst_port_be: sport,
        proto: ip.next,
        family: FAMILY_V6,
        _pad: [0; 2],
    })
}
