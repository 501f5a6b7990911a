//! The sync datagram: a fixed binary layout (every field at a known offset, network byte
//! order) closed by an HMAC-SHA256 tag over everything before it. A datagram whose tag does not
//! verify is never parsed further.
//!
//! ```text
//! magic "XLBS" | version 1 | kind | vips u8 | records u16 | boot u64 | seq u64 | ack u64 | unix_ms u64
//! vips    x (family u8, address 16, port u16, proto u8, digest u64)      28 bytes each
//! records x (vip index u8, src port u16, src 16, backend 16)             35 bytes each
//! tag     HMAC-SHA256                                                    32 bytes
//! ```

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use bytes::{Buf, BufMut};
use ring::hmac;

use crate::config::{Protocol, VipRef};

const MAGIC: &[u8; 4] = b"XLBS";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 1 + 1 + 2 + 8 * 4;
const VIP_LEN: usize = 1 + 16 + 2 + 1 + 8;
const RECORD_LEN: usize = 1 + 2 + 16 + 16;
const TAG: usize = 32;
/// Datagrams stay under a 1500-byte MTU with IPv6 and UDP headers.
pub const MAX_DATAGRAM: usize = 1400;
/// Records per datagram when they all belong to one VIP.
pub const RECORDS_PER_DATAGRAM: usize = (MAX_DATAGRAM - HEADER - VIP_LEN - TAG) / RECORD_LEN;
/// Shortest key accepted: as long as the tag.
pub const MIN_KEY: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Divergent flows (possibly none: a heartbeat carrying the ack).
    Flows = 0,
    /// "I (re)started: send me your divergent flows."
    ResyncRequest = 1,
    /// The last datagram of an answer to a resync request.
    ResyncDone = 2,
    /// Received your flows up to `ack`.
    Ack = 3,
}

/// One divergent flow: the client's flow to `vip` is tracked on `backend` (by address: ids
/// differ between nodes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowRecord {
    pub vip: VipRef,
    pub src: IpAddr,
    pub src_port: u16,
    pub backend: IpAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    /// Random per daemon start: a restarted sender's sequence starts again.
    pub boot: u64,
    pub seq: u64,
    /// Highest sequence number received from the addressee's current boot (0: none).
    pub ack: u64,
    /// Sender's wall clock: datagrams older than the freshness window are refused.
    pub unix_ms: u64,
    /// The config digest of every VIP the records name.
    pub digests: BTreeMap<VipRef, u64>,
    pub records: Vec<FlowRecord>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than a header and a tag ({0} bytes)")]
    Short(usize),
    #[error("authentication failed (another key, or altered)")]
    BadTag,
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

impl WireError {
    /// The label counted in `xlb_sync_refused_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Short(_) | WireError::Malformed(_) => "malformed",
            WireError::BadTag => "bad_tag",
        }
    }
}

/// The fleet's shared key.
#[derive(Clone)]
pub struct Key(hmac::Key);

impl Key {
    /// Refuses keys shorter than [`MIN_KEY`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Key, String> {
        if bytes.len() < MIN_KEY {
            return Err(format!(
                "the key has {} bytes; at least {MIN_KEY} are needed (head -c 32 /dev/urandom > FILE)",
                bytes.len()
            ));
        }
        Ok(Key(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }
}

/// An address in 16 bytes (IPv4 in the first four, the rest zero).
fn put_addr(b: &mut impl BufMut, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            b.put_slice(&v4.octets());
            b.put_bytes(0, 12);
        }
        IpAddr::V6(v6) => b.put_slice(&v6.octets()),
    }
}

fn get_addr(b: &mut impl Buf, v6: bool) -> IpAddr {
    let mut o = [0u8; 16];
    b.copy_to_slice(&mut o);
    if v6 {
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
    }
}

impl Message {
    pub fn new(kind: Kind, boot: u64, seq: u64, ack: u64, unix_ms: u64) -> Message {
        Message {
            kind,
            boot,
            seq,
            ack,
            unix_ms,
            digests: BTreeMap::new(),
            records: Vec::new(),
        }
    }

    /// The datagram, tag included. Records must name VIPs in `digests` (at most 255 of them).
    pub fn encode(&self, key: &Key) -> Vec<u8> {
        let index: BTreeMap<VipRef, u8> = self
            .digests
            .keys()
            .enumerate()
            .map(|(i, v)| (*v, i as u8))
            .collect();
        let mut b = Vec::with_capacity(
            HEADER + VIP_LEN * self.digests.len() + RECORD_LEN * self.records.len() + TAG,
        );
        b.put_slice(MAGIC);
        b.put_u8(VERSION);
        b.put_u8(self.kind as u8);
        b.put_u8(self.digests.len() as u8);
        b.put_u16(self.records.len() as u16);
        for x in [self.boot, self.seq, self.ack, self.unix_ms] {
            b.put_u64(x);
        }
        for (v, d) in &self.digests {
            b.put_u8(u8::from(v.address.is_ipv6()));
            put_addr(&mut b, &v.address);
            b.put_u16(v.port);
            b.put_u8(v.protocol.number());
            b.put_u64(*d);
        }
        for r in &self.records {
            b.put_u8(index[&r.vip]);
            b.put_u16(r.src_port);
            put_addr(&mut b, &r.src);
            put_addr(&mut b, &r.backend);
        }
        let tag = hmac::sign(&key.0, &b);
        b.extend_from_slice(tag.as_ref());
        b
    }

    /// Verify the tag, then parse. Nothing of an unauthenticated datagram is looked at.
    pub fn decode(d: &[u8], key: &Key) -> Result<Message, WireError> {
        if d.len() < HEADER + TAG {
            return Err(WireError::Short(d.len()));
        }
        let (body, tag) = d.split_at(d.len() - TAG);
        hmac::verify(&key.0, body, tag).map_err(|_| WireError::BadTag)?;
        // The length is checked against the counts before anything is read: the reads below
        // cannot run past the body.
        let mut r = body;
        let mut magic = [0u8; 4];
        r.copy_to_slice(&mut magic);
        if &magic != MAGIC || r.get_u8() != VERSION {
            return Err(WireError::Malformed("magic or version"));
        }
        let kind = match r.get_u8() {
            0 => Kind::Flows,
            1 => Kind::ResyncRequest,
            2 => Kind::ResyncDone,
            3 => Kind::Ack,
            _ => return Err(WireError::Malformed("kind")),
        };
        let n_vips = r.get_u8() as usize;
        let n_records = r.get_u16() as usize;
        if body.len() != HEADER + n_vips * VIP_LEN + n_records * RECORD_LEN {
            return Err(WireError::Malformed("length"));
        }
        let (boot, seq, ack, unix_ms) = (r.get_u64(), r.get_u64(), r.get_u64(), r.get_u64());
        let mut m = Message::new(kind, boot, seq, ack, unix_ms);
        let mut vips = Vec::with_capacity(n_vips);
        for _ in 0..n_vips {
            let family = r.get_u8();
            if family > 1 {
                return Err(WireError::Malformed("family"));
            }
            let address = get_addr(&mut r, family == 1);
            let port = r.get_u16();
            let protocol = match r.get_u8() {
                lb_common::PROTO_TCP => Protocol::Tcp,
                lb_common::PROTO_UDP => Protocol::Udp,
                _ => return Err(WireError::Malformed("protocol")),
            };
            let vip = VipRef {
                address,
                port,
                protocol,
            };
            m.digests.insert(vip, r.get_u64());
            vips.push(vip);
        }
        for _ in 0..n_records {
            let vip = *vips
                .get(r.get_u8() as usize)
                .ok_or(WireError::Malformed("VIP index"))?;
            let v6 = vip.address.is_ipv6();
            let src_port = r.get_u16();
            let src = get_addr(&mut r, v6);
            let backend = get_addr(&mut r, v6);
            m.records.push(FlowRecord {
                vip,
                src,
                src_port,
                backend,
            });
        }
        Ok(m)
    }
}

/// Split `records` into messages of at most [`MAX_DATAGRAM`] bytes, each with the digests of
/// the VIPs its records name. No records: one message (a heartbeat, a resync answer's end).
pub fn pack(
    template: &Message,
    digests: &BTreeMap<VipRef, u64>,
    records: &[FlowRecord],
) -> Vec<Message> {
    let mut out = Vec::new();
    let mut m = template.clone();
    let mut size = HEADER + TAG;
    for r in records {
        let grow = RECORD_LEN
            + if m.digests.contains_key(&r.vip) {
                0
            } else {
                VIP_LEN
            };
        if size + grow > MAX_DATAGRAM || (m.digests.len() == 255 && grow > RECORD_LEN) {
            out.push(std::mem::replace(&mut m, template.clone()));
            size = HEADER + TAG;
        }
        if let std::collections::btree_map::Entry::Vacant(e) = m.digests.entry(r.vip) {
            e.insert(digests.get(&r.vip).copied().unwrap_or(0));
            size += VIP_LEN;
        }
        m.records.push(*r);
        size += RECORD_LEN;
    }
    out.push(m);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::new(&[b; 32]).expect("key")
    }

    fn vip(s: &str) -> VipRef {
        s.parse().expect("vip")
    }

    fn sample() -> (BTreeMap<VipRef, u64>, Vec<FlowRecord>) {
        let v4 = vip("10.100.0.1:80/tcp");
        let v6 = vip("[2001:db8::1]:53/udp");
        let digests = BTreeMap::from([(v4, 0x1122_3344_5566_7788), (v6, 42)]);
        let records = (0..100u16)
            .map(|i| {
                if i % 3 == 0 {
                    FlowRecord {
                        vip: v6,
                        src: format!("2001:db8:1::{i:x}").parse().expect("v6"),
                        src_port: 40000 + i,
                        backend: "2001:db8:2::9".parse().expect("v6"),
                    }
                } else {
                    FlowRecord {
                        vip: v4,
                        src: IpAddr::V4(Ipv4Addr::new(10, 0, 1, i as u8)),
                        src_port: 30000 + i,
                        backend: "10.0.2.101".parse().expect("v4"),
                    }
                }
            })
            .collect();
        (digests, records)
    }

    #[test]
    fn records_round_trip_in_datagrams_that_fit_an_mtu() {
        let (digests, records) = sample();
        let t = Message::new(Kind::Flows, 7, 0, 3, 1_000);
        let packed = pack(&t, &digests, &records);
        assert!(packed.len() >= 3, "{} datagrams", packed.len());
        let mut back = Vec::new();
        for m in &packed {
            let d = m.encode(&key(1));
            assert!(d.len() <= MAX_DATAGRAM, "{} bytes", d.len());
            let got = Message::decode(&d, &key(1)).expect("decodes");
            assert_eq!(&got, m);
            for r in &got.records {
                assert_eq!(got.digests[&r.vip], digests[&r.vip]);
            }
            back.extend(got.records);
        }
        assert_eq!(back, records);
        // A datagram holds RECORDS_PER_DATAGRAM flows of one VIP (what the docs' figures use).
        let v4: Vec<FlowRecord> = records
            .iter()
            .filter(|r| r.src.is_ipv4())
            .copied()
            .collect();
        let full = &v4[..RECORDS_PER_DATAGRAM];
        let one = pack(&t, &digests, full);
        assert_eq!((one.len(), RECORDS_PER_DATAGRAM), (1, 37));
        assert!(one[0].encode(&key(1)).len() <= MAX_DATAGRAM);
        assert_eq!(pack(&t, &digests, &v4[..RECORDS_PER_DATAGRAM + 1]).len(), 2);
        let empty = pack(&t, &digests, &[]);
        assert_eq!(empty.len(), 1);
        assert_eq!(
            Message::decode(&empty[0].encode(&key(1)), &key(1)).expect("heartbeat"),
            t
        );
    }

    #[test]
    fn another_key_a_flipped_bit_or_a_cut_datagram_is_refused() {
        let (digests, records) = sample();
        let m = &pack(&Message::new(Kind::Flows, 1, 1, 0, 5), &digests, &records)[0];
        let d = m.encode(&key(1));
        assert_eq!(Message::decode(&d, &key(2)), Err(WireError::BadTag));
        for i in [0, 5, 9, 40, d.len() / 2, d.len() - 1] {
            let mut x = d.clone();
            x[i] ^= 0x10;
            assert_eq!(
                Message::decode(&x, &key(1)),
                Err(WireError::BadTag),
                "byte {i}"
            );
        }
        assert_eq!(
            Message::decode(&d[..d.len() - 1], &key(1)),
            Err(WireError::BadTag)
        );
        assert_eq!(
            Message::decode(&d[..20], &key(1)),
            Err(WireError::Short(20))
        );
        assert!(Key::new(&[0u8; 31]).is_err());
    }

    #[test]
    fn an_authentic_but_inconsistent_datagram_is_malformed() {
        let k = key(3);
        let mut m = Message::new(Kind::Flows, 1, 1, 0, 5);
        m.digests.insert(vip("10.100.0.1:80/tcp"), 1);
        let mut body = m.encode(&k);
        body.truncate(body.len() - TAG);
        body[8] = 1; // one record announced, none present
        let tag = hmac::sign(&k.0, &body);
        body.extend_from_slice(tag.as_ref());
        assert_eq!(
            Message::decode(&body, &k),
            Err(WireError::Malformed("length"))
        );
    }
}
