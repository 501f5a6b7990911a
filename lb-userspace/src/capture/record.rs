//! Capture records: decoding what the forwarder put on the ring, naming VIPs, and the one-line
//! and pcapng-comment forms of a record that `xlb capture` and `xlb replay` print.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use lb_common::{
    FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, VipKey, VipMeta,
    capture::{CAPTURE_NO_VIP, CaptureHeader, outcome_name},
    map_names,
};
use serde::Serialize;

use crate::config::{Protocol, VipRef};

/// One record: the header and the frame bytes it carried.
#[derive(Clone, Debug)]
pub struct Record {
    pub hdr: CaptureHeader,
    pub data: Vec<u8>,
}

impl Record {
    /// Decode one ring item; `None` if it is shorter than its header says (never from a
    /// well-formed ring, but the reader does not trust it).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let n = size_of::<CaptureHeader>();
        if bytes.len() < n {
            return None;
        }
        // SAFETY: CaptureHeader is Pod (integers only) and `bytes` holds at least its size;
        // read_unaligned because ring items are only 8-aligned by contract, not by type.
        let hdr: CaptureHeader = unsafe { bytes.as_ptr().cast::<CaptureHeader>().read_unaligned() };
        let data = bytes.get(n..n + hdr.caplen as usize)?.to_vec();
        Some(Record { hdr, data })
    }
}

/// Turns the forwarder's CLOCK_MONOTONIC stamps into wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Realtime minus monotonic, in ns.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Clock {
        let read = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid timespec out-pointer for a clock that always exists.
            unsafe { libc::clock_gettime(id, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        Clock {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC),
        }
    }

    /// Time since the Unix epoch of a `bpf_ktime_get_ns` stamp.
    pub fn wall(&self, ktime_ns: u64) -> Duration {
        let ns = (ktime_ns as i128 + self.offset_ns).max(0);
        Duration::from_nanos(ns as u64)
    }
}

/// VIP ids to names, read from a VIPS map (the daemon's pin, or the replay's shared one).
#[derive(Clone, Debug, Default)]
pub struct Names {
    vips: HashMap<u32, String>,
}

impl Names {
    pub fn from_vips(vips: impl IntoIterator<Item = (VipKey, VipMeta)>) -> Names {
        let vips = vips
            .into_iter()
            .filter_map(|(k, m)| {
                let r = VipRef {
                    address: k.addr.to_ip(k.family),
                    port: u16::from_be(k.port_be),
                    protocol: Protocol::from_number(k.proto)?,
                };
                Some((m.vip_id, r.to_string()))
            })
            .collect();
        Names { vips }
    }

    pub fn from_pins(pin_dir: &Path) -> Result<Names, super::Error> {
        let path = pin_dir.join(map_names::VIPS);
        let what = path.display();
        let err = |e| super::Error::map(&what, e);
        let data = MapData::from_pin(&path).map_err(err)?;
        let m: BpfHashMap<MapData, VipKey, VipMeta> =
            BpfHashMap::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)?;
        let vips: Vec<_> = m.iter().filter_map(Result::ok).collect();
        Ok(Names::from_vips(vips))
    }

    pub fn vip(&self, id: u32) -> Option<String> {
        if id == CAPTURE_NO_VIP {
            return None;
        }
        Some(
            self.vips
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("vip#{id}")),
        )
    }
}

pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

/// `src:port > dst:port proto` of a parsed flow.
pub fn flow_text(k: &FlowKey) -> String {
    let sock = |a: &lb_common::Addr, port_be: u16| {
        SocketAddr::new(a.to_ip(k.family), u16::from_be(port_be))
    };
    let proto = match k.proto {
        PROTO_TCP => "tcp".to_string(),
        PROTO_UDP => "udp".to_string(),
        PROTO_ICMP => "icmp".to_string(),
        PROTO_ICMPV6 => "icmp6".to_string(),
        p => format!("proto {p}"),
    };
    format!(
        "{} > {} {proto}",
        sock(&k.src, k.src_port_be),
        sock(&k.dst, k.dst_port_be)
    )
}

/// A record in operator terms (also the JSON form of `-o json`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub action: &'static str,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// Frame length as it left the forwarder.
    pub len: u32,
    pub caplen: u32,
    pub cpu: u32,
    pub ifindex: u32,
    pub rx_queue: u32,
}

impl Summary {
    pub fn of(h: &CaptureHeader, names: &Names, clock: &Clock) -> Summary {
        Summary {
            time: clock.wall(h.ktime_ns).as_secs_f64(),
            action: action_name(h.action),
            outcome: outcome_name(h.outcome),
            vip: names.vip(h.vip_id),
            backend: (h.backend_family != 0).then(|| h.backend.to_ip(h.backend_family)),
            backend_id: (h.backend_id != 0).then_some(h.backend_id),
            flow: (h.parsed != 0).then(|| flow_text(&h.key)),
            len: h.len,
            caplen: h.caplen,
            cpu: h.cpu,
            ifindex: h.ifindex,
            rx_queue: h.rx_queue,
        }
    }

    /// `key=value` words (the pcapng comment, and the tail of a printed line).
    pub fn comment(&self) -> String {
        let mut s = format!("xlb action={} outcome={}", self.action, self.outcome);
        if let Some(v) = &self.vip {
            s += &format!(" vip={v}");
        }
        if let (Some(b), Some(id)) = (self.backend, self.backend_id) {
            s += &format!(" backend={b} backend_id={id}");
        }
        s += &format!(
            " cpu={} ifindex={} rx_queue={}",
            self.cpu, self.ifindex, self.rx_queue
        );
        s
    }

    /// One line for a terminal: time, verdict, where it went, the flow.
    pub fn line(&self) -> String {
        let secs = self.time.rem_euclid(86_400.0);
        let (h, m, s) = (
            (secs / 3600.0) as u32,
            ((secs % 3600.0) / 60.0) as u32,
            secs % 60.0,
        );
        let to = match (self.backend, &self.vip) {
            (Some(b), Some(v)) => format!("{v} -> {b}"),
            (None, Some(v)) => v.clone(),
            _ => "-".into(),
        };
        format!(
            "{h:02}:{m:02}:{s:09.6} {:<8} {:<16} {to}  {}  len {} cpu {}",
            self.action,
            self.outcome,
            self.flow.as_deref().unwrap_or("(not parsed)"),
            self.len,
            self.cpu
        )
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{Addr, FAMILY_V4, capture::CAPTURE_FORWARD};

    use super::*;

    #[test]
    fn records_decode_and_read_as_operators_expect() {
        let key = FlowKey {
            src: Addr::from("10.0.9.1".parse::<IpAddr>().expect("ip")),
            dst: Addr::from("10.100.0.1".parse::<IpAddr>().expect("ip")),
            src_port_be: 40000u16.to_be(),
            dst_port_be: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        let hdr = CaptureHeader {
            key,
            backend: Addr::from("10.0.2.2".parse::<IpAddr>().expect("ip")),
            backend_family: FAMILY_V4,
            backend_id: 5,
            vip_id: 3,
            action: 3,
            outcome: CAPTURE_FORWARD,
            parsed: 1,
            len: 94,
            caplen: 4,
            ..Default::default()
        };
        let mut bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&hdr).cast::<u8>(),
                size_of::<CaptureHeader>(),
            )
        }
        .to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0]);
        let r = Record::decode(&bytes).expect("decodes");
        assert_eq!(r.data, [1, 2, 3, 4]);
        assert!(Record::decode(&bytes[..size_of::<CaptureHeader>() + 2]).is_none());

        let names = Names::from_vips([(
            VipKey {
                addr: key.dst,
                port_be: 80u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
            },
            VipMeta {
                vip_id: 3,
                ..Default::default()
            },
        )]);
        let s = Summary::of(&r.hdr, &names, &Clock::now());
        assert_eq!(
            s.comment(),
            "xlb action=tx outcome=forward vip=10.100.0.1:80/tcp backend=10.0.2.2 backend_id=5 cpu=0 ifindex=0 rx_queue=0"
        );
        assert!(
            s.line().contains(
                "tx       forward          10.100.0.1:80/tcp -> 10.0.2.2  10.0.9.1:40000 > 10.100.0.1:80 tcp  len 94"
            ),
            "{}",
            s.line()
        );
        assert_eq!(names.vip(9).as_deref(), Some("vip#9"));
        assert_eq!(names.vip(CAPTURE_NO_VIP), None);
    }
}
