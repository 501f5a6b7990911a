//! Frames built with etherparse, an implementation independent of the XDP parser under test.

use std::net::IpAddr;

use etherparse::{IpHeaders, Ipv4Header, Ipv4Options, Ipv6Header, PacketBuilder, VlanId};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Debug)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub syn: bool,
    /// TCP RST (with ACK).
    pub rst: bool,
    pub payload: usize,
    /// 0, 1 or 2 VLAN tags.
    pub vlans: u8,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ipv4_options: Vec<u8>,
    pub df: bool,
}

impl Spec {
    pub fn new(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> Spec {
        Spec {
            src: src.parse().expect("src address"),
            dst: dst.parse().expect("dst address"),
            sport,
            dport,
            proto,
            syn: false,
            rst: false,
            payload: 16,
            vlans: 0,
            ipv4_options: Vec::new(),
            df: true,
        }
    }
    pub fn syn(mut self) -> Spec {
        self.syn = true;
        self
    }
    /// The same flow's reset.
    pub fn rst(&self) -> Spec {
        Spec {
            syn: false,
            rst: true,
            ..self.clone()
        }
    }
    /// The same flow's next packet (no SYN).
    pub fn ack(&self) -> Spec {
        Spec {
            syn: false,
            ..self.clone()
        }
    }
    pub fn payload(mut self, n: usize) -> Spec {
        self.payload = n;
        self
    }
    pub fn vlans(mut self, n: u8) -> Spec {
        self.vlans = n;
        self
    }
    pub fn options(mut self, o: &[u8]) -> Spec {
        self.ipv4_options = o.to_vec();
        self
    }
    pub fn df(mut self, df: bool) -> Spec {
        self.df = df;
        self
    }

    pub fn ip_headers(&self) -> IpHeaders {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, 64, self.proto.into(), s.octets(), d.octets())
                    .expect("ipv4 header");
                h.dont_fragment = self.df;
                h.options = Ipv4Options::try_from(&self.ipv4_options[..]).expect("ipv4 options");
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
                Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: 0,
                    next_header: self.proto.into(),
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                },
                Default::default(),
            ),
            _ => panic!("mixed address families in one packet"),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        let payload = vec![0xabu8; self.payload];
        let mut out = Vec::new();
        let ip = self.ip_headers();
        macro_rules! finish {
            ($step:expr) => {{
                let step = $step.ip(ip);
                if self.proto == 6 {
                    let mut t = step.tcp(self.sport, self.dport, 1000, 64240);
                    if self.syn {
                        t = t.syn();
                    } else {
                        t = t.ack(1);
                    }
                    if self.rst {
                        t = t.rst();
                    }
                    t.write(&mut out, &payload).expect("write tcp frame");
                } else {
                    step.udp(self.sport, self.dport)
                        .write(&mut out, &payload)
                        .expect("write udp frame");
                }
            }};
        }
        match self.vlans {
            0 => finish!(eth),
            1 => finish!(eth.single_vlan(VlanId::try_new(100).expect("vlan id"))),
            _ => finish!(eth.double_vlan(
                VlanId::try_new(200).expect("vlan id"),
                VlanId::try_new(100).expect("vlan id")
            )),
        }
        out
    }
}

/// Offset of the L3 header for a number of VLAN tags.
pub fn l3_offset(vlans: u8) -> usize {
    14 + 4 * vlans as usize
}
