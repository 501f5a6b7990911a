//! `cargo xtask demo`: a load balancer on network namespaces, with real traffic, told as a story.

use std::{collections::BTreeMap, time::Instant};

use tests::topo::{CLIENT, TCP_PORT, Topology, UDP_PORT, VIP, tcp_request, udp_request};

const CONNECTIONS: usize = 300;

fn table(title: &str, seen: &BTreeMap<String, usize>) {
    let total: usize = seen.values().sum();
    println!("  {title}");
    for (name, n) in seen {
        let pct = 100.0 * *n as f64 / total.max(1) as f64;
        println!(
            "    {name:<10} {n:>5}  {pct:>5.1}%  {}",
            "#".repeat((pct / 2.0) as usize)
        );
    }
}

fn traffic(topo: &Topology, tcp: bool) -> BTreeMap<String, usize> {
    topo.client
        .spawn(move || {
            let mut seen = BTreeMap::new();
            for i in 0..CONNECTIONS {
                let r = if tcp {
                    tcp_request(format!("request {i}").as_bytes())
                } else {
                    udp_request(b"ping")
                };
                *seen
                    .entry(r.unwrap_or_else(|e| format!("error: {e}")))
                    .or_insert(0) += 1;
            }
            seen
        })
        .join()
        .expect("client thread")
}

fn main() {
    let started = Instant::now();
    println!("xlb demo: building a client, a load balancer and 3 backends in network namespaces");
    let mut topo = Topology::new(3);
    let _servers = topo.start_servers();
    println!("  client {CLIENT} -> VIP {VIP} tcp/{TCP_PORT} udp/{UDP_PORT} via the LB namespace");
    println!(
        "  xlb_forward attached (driver mode) on the LB's client-facing veth; IPIP to backends"
    );
    for b in &topo.backends {
        println!(
            "  {} at {} (xlb_decap attached, VIP on loopback, answers the client directly)",
            b.name, b.addr
        );
    }

    println!(
        "\n1. {CONNECTIONS} TCP connections and {CONNECTIONS} UDP datagrams from fresh source ports:"
    );
    table("TCP connections per backend", &traffic(&topo, true));
    table("UDP datagrams per backend", &traffic(&topo, false));

    println!("\n2. backend-2 drained (weight 0): its ring slots move, nothing else does");
    topo.set_weight(2, 0);
    table("TCP connections per backend", &traffic(&topo, true));

    println!("\n3. backend-2 restored:");
    topo.set_weight(2, 1);
    table("TCP connections per backend", &traffic(&topo, true));

    println!("\nCounters from the XDP program (per-CPU maps, summed):");
    for (vip_id, label) in [
        (0, format!("{VIP}:{TCP_PORT}/tcp")),
        (1, format!("{VIP}:{UDP_PORT}/udp")),
    ] {
        let s = topo.dp.vip_stats(vip_id).expect("vip stats");
        println!(
            "  VIP {label:<22} packets {:>6}  bytes {:>8}  new flows {:>5}  conntrack hits {:>6}",
            s.packets, s.bytes, s.new_flows, s.conntrack_hits
        );
    }
    for b in &topo.backends {
        let s = topo.dp.backend_stats(b.id).expect("backend stats");
        println!(
            "  {:<10} packets {:>6}  bytes {:>8}  new flows {:>5}",
            b.name, s.packets, s.bytes, s.new_flows
        );
    }
    let reasons = topo.dp.reason_stats().expect("reason stats");
    let passed: Vec<String> = reasons
        .iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(r, c)| format!("{} {}", r.name(), c.packets))
        .collect();
    println!(
        "  passed/dropped by reason: {}",
        if passed.is_empty() {
            "none".into()
        } else {
            passed.join(", ")
        }
    );
    println!(
        "\nCleaning up namespaces and programs. Done in {:.1}s.",
        started.elapsed().as_secs_f64()
    );
}
