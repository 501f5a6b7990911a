//! Expected output frames, built with etherparse from the input and the chosen backend: the
//! independent statement of what each forwarding mode must emit, byte for byte.

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, UdpHeader};
use lb_common::{
    Backend, FAMILY_V6, FWD_GUE, FWD_IPIP, FWD_L2, FlowKey, LbConfig, decision::encap_entropy,
};

/// The inner IP datagram of `frame` (L3 header at `l3`), without Ethernet padding.
pub fn datagram(frame: &[u8], l3: usize) -> &[u8] {
    let len = if frame[l3] >> 4 == 4 {
        u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]) as usize
    } else {
        40 + u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]) as usize
    };
    &frame[l3..l3 + len]
}

fn tos(inner: &[u8]) -> u8 {
    if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    }
}

fn df(inner: &[u8]) -> bool {
    inner[0] >> 4 == 6 || inner[6] & 0x40 != 0
}

/// L2 of the output: new MACs, the input's VLAN tags, the innermost ethertype replaced.
fn l2(frame: &[u8], l3: usize, dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(l3);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&src);
    out.extend_from_slice(&frame[12..l3 - 2]);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out
}

/// What `xlb_forward` must emit for `frame` sent to `backend` with `fwd_mode`.
pub fn forwarded(
    frame: &[u8],
    l3: usize,
    key: &FlowKey,
    backend: &Backend,
    fwd_mode: u8,
    cfg: &LbConfig,
) -> Vec<u8> {
    let inner = datagram(frame, l3);
    let lb_mac: [u8; 6] = frame[0..6].try_into().expect("mac");
    let src_mac = if backend.src_mac == [0; 6] {
        lb_mac
    } else {
        backend.src_mac
    };
    let inner_v6 = inner[0] >> 4 == 6;
    if fwd_mode == FWD_L2 {
        let mut out = l2(
            frame,
            l3,
            backend.dst_mac,
            src_mac,
            if inner_v6 { 0x86dd } else { 0x0800 },
        );
        out.extend_from_slice(&frame[l3..]);
        return out;
    }
    assert!(fwd_mode == FWD_IPIP || fwd_mode == FWD_GUE);
    let e = encap_entropy(key);
    let gue = fwd_mode == FWD_GUE;
    let proto = if gue {
        IpNumber::UDP
    } else if inner_v6 {
        IpNumber::IPV6
    } else {
        IpNumber::IPV4
    };
    let payload_len = inner.len() + if gue { 8 } else { 0 };
    let mut out;
    if backend.family == FAMILY_V6 {
        out = l2(frame, l3, backend.dst_mac, src_mac, 0x86dd);
        let mut src = cfg.encap_src_v6.0;
        src[3] = (src[3] & !cfg.encap_src_v6_mask) | (e & cfg.encap_src_v6_mask);
        let h = Ipv6Header {
            traffic_class: tos(inner),
            flow_label: Ipv6FlowLabel::try_new(e & 0xfffff).expect("label"),
            payload_length: payload_len as u16,
            next_header: proto,
            hop_limit: 64,
            source: lb_common::Addr(src).to_bytes(),
            destination: backend.addr.to_bytes(),
        };
        h.write(&mut out).expect("v6 header");
    } else {
        out = l2(frame, l3, backend.dst_mac, src_mac, 0x0800);
        let src = (cfg.encap_src_v4 & !cfg.encap_src_v4_mask) | (e & cfg.encap_src_v4_mask);
        let mut h = Ipv4Header::new(
            payload_len as u16,
            64,
            proto,
            src.to_ne_bytes(),
            backend.addr.0[0].to_ne_bytes(),
        )
        .expect("v4 header");
        h.dont_fragment = df(inner);
        h.dscp = etherparse::IpDscp::try_new(tos(inner) >> 2).expect("dscp");
        h.ecn = etherparse::IpEcn::try_new(tos(inner) & 3).expect("ecn");
        h.header_checksum = h.calc_header_checksum();
        h.write(&mut out).expect("v4 header");
    }
    if gue {
        let u = UdpHeader {
            source_port: 0xc000 | (e & 0x3fff) as u16,
            destination_port: u16::from_be(cfg.gue_port_be),
            length: payload_len as u16,
            checksum: 0,
        };
        out.extend_from_slice(&u.to_bytes());
    }
    out.extend_from_slice(&frame[l3..]);
    out
}
