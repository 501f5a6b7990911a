//! `xlb status`, `stats`, `flows`, `explain`: what the daemon and the forwarder are doing.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Result, anyhow};

use super::output::{OutputArg, human, print_json, table};
use crate::{
    api::{Client, StatsView, StatusView},
    config::{Protocol, VipRef},
};

pub fn status(client: &Client, o: OutputArg) -> Result<()> {
    let s = client.status()?;
    if o.json() {
        return print_json(&s);
    }
    print!("{}", render_status(&s));
    Ok(())
}

fn render_status(s: &StatusView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    line(format!(
        "xlb {} up {}s, pins {}",
        s.version, s.uptime_secs, s.pin_dir
    ));
    line(format!(
        "data plane: {}; forwarder program id {}",
        if s.adopted {
            "maps adopted from the previous daemon (hitless restart)"
        } else {
            "maps created by this daemon"
        },
        s.forward_program_id
    ));
    for i in &s.interfaces {
        let note = if i.ifindex == 0 {
            " (INTERFACE GONE: attached again when it returns)"
        } else if i.mode != i.requested {
            " (FALLBACK from native)"
        } else {
            ""
        };
        line(format!("  interface {}: {} XDP{note}", i.name, i.mode));
    }
    if s.interfaces_lost > 0 {
        line(format!(
            "  interfaces deleted or re-created under the forwarder: {}",
            s.interfaces_lost
        ));
    }
    if s.interfaces.is_empty() {
        line("  no interfaces attached".into());
    }
    let mut backends = format!(
        "VIPs {}, backends {} (up {}, health down {}, drained {}, removing {}, next hop unresolved {}); {} health transitions",
        s.vips,
        s.backends,
        s.backends_up,
        s.backends_down,
        s.backends_drained,
        s.backends_removing,
        s.backends_unresolved,
        s.health_transitions
    );
    if s.nexthop_losses > 0 {
        let _ = write!(backends, ", {} next hops lost", s.nexthop_losses);
    }
    line(backends);
    if !s.below_quorum.is_empty() {
        line(format!("below quorum: {}", s.below_quorum.join(", ")));
    }
    if let Some(c) = &s.capture {
        line(format!("capture running: {c}"));
    }
    if let Some(a) = &s.announce {
        let mut head = format!(
            "announce (table {}, proto {}): {} announced, {} withdrawn since start",
            a.table, a.protocol, a.announces, a.withdraws
        );
        if a.node_drained {
            head += "; NODE DRAINED (`xlb undrain-node`)";
        }
        if a.hold_left_secs > 0 {
            let _ = write!(head, "; holding {} s more after start", a.hold_left_secs);
        }
        line(head);
        for x in &a.addresses {
            let state = match (x.announced, x.wanted) {
                (true, true) => "announced".to_string(),
                (false, false) => format!("not announced: {}", x.reason.as_deref().unwrap_or("-")),
                (false, true) => "announcing (route write pending)".to_string(),
                (true, false) => "withdrawing (route write pending)".to_string(),
            };
            line(format!(
                "  {} ({}): {state}, {} s",
                x.address,
                x.vips.join(", "),
                x.since_secs
            ));
        }
        if let Some(e) = &a.last_error {
            line(format!("  route writes failing: {e}"));
        }
    }
    if let Some(y) = &s.sync {
        line(format!(
            "sync on {}: resync {}; {} divergent flow(s) (scan {:.1} ms); sent {} record(s) ({} bytes), received {}, {} written",
            y.listen,
            y.resync,
            y.divergent_flows,
            y.last_scan_us as f64 / 1000.0,
            y.records_sent,
            y.bytes_sent,
            y.records_received,
            y.flows_written
        ));
        if !y.refused.is_empty() {
            let r: Vec<String> = y.refused.iter().map(|(k, v)| format!("{k} {v}")).collect();
            line(format!("  refused: {}", r.join(", ")));
        }
        for p in &y.peers {
            let heard = p.last_heard_ms.map_or("never heard".to_string(), |ms| {
                format!("heard {:.1} s ago", ms as f64 / 1000.0)
            });
            let lag = p
                .lag_ms
                .map_or(String::new(), |ms| format!(", lag {ms:.1} ms"));
            let mut l = format!(
                "  peer {}: {}, {heard}, {} unsynced{lag}, {} record(s) received, {} written",
                p.address,
                if p.up { "up" } else { "DOWN" },
                p.unsynced,
                p.records_received,
                p.flows_written
            );
            if !p.config_mismatch.is_empty() {
                l += &format!(
                    "; CONFIG DIFFERS for {} (its flows refused)",
                    p.config_mismatch.join(", ")
                );
            }
            line(l);
        }
    }
    line(format!(
        "conntrack {} flows ({} IPv4 of at most {}, {} IPv6 of at most {}; one entry per flow, shared by every CPU), {} evicted; {} applies, {} ring rebuilds",
        s.conntrack_entries,
        s.conntrack_entries.saturating_sub(s.conntrack_entries_v6),
        s.conntrack_capacity,
        s.conntrack_entries_v6,
        s.conntrack_capacity_v6,
        s.conntrack_evictions,
        s.applies,
        s.ring_rebuilds
    ));
    if s.changes_pending > 0 {
        line(format!(
            "{} change(s) not yet in the maps (being planned)",
            s.changes_pending
        ));
    }
    out
}

fn render_stats(s: &StatsView) -> String {
    let mut out = String::new();
    let vips = s
        .vips
        .iter()
        .map(|v| {
            vec![
                v.vip.clone(),
                v.packets.to_string(),
                v.bytes.to_string(),
                human(v.pps),
                human(v.bps),
                v.new_flows.to_string(),
                v.conntrack_hits.to_string(),
                v.conntrack_misses.to_string(),
                v.failovers.to_string(),
                v.expired.to_string(),
                v.deferred.to_string(),
            ]
        })
        .collect();
    out += &table(
        &[
            "VIP",
            "PACKETS",
            "BYTES",
            "PPS",
            "BPS",
            "NEW-FLOWS",
            "CT-HITS",
            "CT-MISSES",
            "FAILOVERS",
            "EXPIRED",
            "DEFERRED",
        ],
        vips,
    );
    out.push('\n');
    let backends = s
        .backends
        .iter()
        .map(|b| {
            vec![
                b.vip.clone(),
                b.address.clone(),
                b.packets.to_string(),
                b.bytes.to_string(),
                human(b.pps),
                human(b.bps),
                b.new_flows.to_string(),
            ]
        })
        .collect();
    out += &table(
        &[
            "VIP",
            "BACKEND",
            "PACKETS",
            "BYTES",
            "PPS",
            "BPS",
            "NEW-FLOWS",
        ],
        backends,
    );
    out.push('\n');
    let reasons = s
        .reasons
        .iter()
        .filter(|r| r.packets > 0)
        .map(|r| vec![r.reason.clone(), r.packets.to_string(), r.bytes.to_string()])
        .collect();
    out += &table(&["PASS/DROP REASON", "PACKETS", "BYTES"], reasons);
    out
}

pub fn stats(client: &Client, o: OutputArg, watch: Option<u64>) -> Result<()> {
    loop {
        let s = client.stats()?;
        if o.json() {
            print_json(&s)?;
        } else {
            if watch.is_some() {
                // Clear the screen between refreshes, like `watch`.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render_stats(&s));
        }
        match watch {
            Some(secs) => std::thread::sleep(Duration::from_secs(secs.max(1))),
            None => return Ok(()),
        }
    }
}

pub fn flows(client: &Client, vip: Option<VipRef>, limit: usize, o: OutputArg) -> Result<()> {
    let f = client.flows(vip, limit)?;
    if o.json() {
        return print_json(&f);
    }
    let rows = f
        .flows
        .into_iter()
        .map(|f| {
            vec![
                f.src,
                f.dst,
                f.protocol,
                f.backend,
                f.idle_ms.to_string(),
                if f.idle_timeout_secs == 0 {
                    "-".to_string()
                } else if f.expired {
                    format!("{} (expired)", f.idle_timeout_secs)
                } else {
                    f.idle_timeout_secs.to_string()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["SOURCE", "VIP", "PROTO", "BACKEND", "IDLE-MS", "TIMEOUT-S"],
            rows
        )
    );
    if f.truncated {
        println!("(more flows than --limit {limit})");
    }
    Ok(())
}

pub fn explain(client: &Client, src: SocketAddr, dst: &str, syn: bool, o: OutputArg) -> Result<()> {
    let (sock, proto) = dst
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{dst:?}: expected ADDRESS:PORT/PROTOCOL"))?;
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        p => return Err(anyhow!("{dst:?}: protocol {p:?} is not tcp or udp")),
    };
    let dst: SocketAddr = sock
        .parse()
        .map_err(|_| anyhow!("{sock:?} is not ADDRESS:PORT"))?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(anyhow!(
            "{src} and {dst} are of different address families: give a client address of the VIP's family"
        ));
    }
    let e = client.explain(src, dst, protocol, syn)?;
    if o.json() {
        return print_json(&e);
    }
    println!("{}", e.flow);
    match (&e.vip, e.verdict.as_str()) {
        (None, _) => println!(
            "  not a VIP: passed to the kernel ({})",
            e.reason.unwrap_or_default()
        ),
        (Some(vip), "forward") => {
            println!("  VIP {vip} (hash {})", e.hash.unwrap_or_default());
            let backend = e.backend.unwrap_or_else(|| "?".into());
            let id = e.backend_id.unwrap_or(0);
            match e.how.as_deref() {
                Some("tracked") => println!(
                    "  -> backend {backend} (id {id}): tracked flow (its one conntrack entry, used by every CPU)"
                ),
                Some("expired") => println!(
                    "  -> backend {backend} (id {id}): its entry was idle past the timeout; a new flow at ring slot {} of {}",
                    e.slot.unwrap_or(0),
                    e.ring_size.unwrap_or(0)
                ),
                Some("failover") => println!(
                    "  -> backend {backend} (id {id}): its tracked backend is down; re-picked at ring slot {} of {}",
                    e.slot.unwrap_or(0),
                    e.ring_size.unwrap_or(0)
                ),
                _ => println!(
                    "  -> backend {backend} (id {id}): ring slot {} of {} (no conntrack entry)",
                    e.slot.unwrap_or(0),
                    e.ring_size.unwrap_or(0)
                ),
            }
        }
        (Some(vip), verdict) => {
            println!("  VIP {vip}: {verdict} ({})", e.reason.unwrap_or_default())
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IfaceView;

    fn view() -> StatusView {
        let iface = |name: &str, ifindex| IfaceView {
            name: name.into(),
            requested: "native".into(),
            mode: "native".into(),
            ifindex,
        };
        StatusView {
            adopted: true,
            forward_program_id: 77,
            interfaces: vec![iface("eth0", 2), iface("eth1", 0)],
            backends: 3,
            backends_up: 2,
            backends_unresolved: 1,
            interfaces_lost: 1,
            nexthop_losses: 1,
            conntrack_capacity: 1000,
            conntrack_capacity_v6: 100,
            conntrack_entries: 5,
            conntrack_entries_v6: 1,
            ..StatusView::sample()
        }
    }

    #[test]
    fn the_status_table_says_how_the_data_plane_came_to_be_and_what_is_missing() {
        let text = render_status(&view());
        assert!(
            text.contains("data plane: maps adopted from the previous daemon (hitless restart); forwarder program id 77"),
            "{text}"
        );
        assert!(text.contains("interface eth0: native XDP\n"), "{text}");
        assert!(
            text.contains("interface eth1: native XDP (INTERFACE GONE"),
            "{text}"
        );
        assert!(text.contains("re-created under the forwarder: 1"), "{text}");
        assert!(text.contains("next hop unresolved 1"), "{text}");
        assert!(text.contains("1 next hops lost"), "{text}");
        assert!(
            text.contains(
                "conntrack 5 flows (4 IPv4 of at most 1000, 1 IPv6 of at most 100; one entry per flow, shared by every CPU)"
            ),
            "{text}"
        );
        let mut fresh = view();
        fresh.adopted = false;
        assert!(render_status(&fresh).contains("maps created by this daemon"));
    }
}
