//! Control-plane figures on namespaces: time for one `xlb` command that rebuilds and swaps a
//! 65537-slot ring of 1000 backends, and the daemon's resident memory with 100 VIPs x 100
//! backends. Prints a table (or JSON with --json).

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use tests::{lab::Lab, netns::Netns};

/// A segment behind the LB holding `n` backend addresses with static neighbour entries, so
/// thousands of next hops resolve without thousands of hosts.
fn backend_segment(lab: &Lab, peer: &Netns, n: usize) -> Vec<String> {
    tests::netns::veth(&lab.net.lb, "bk", peer, "bkp");
    lab.net
        .lb
        .ip(&["addr", "add", "10.200.0.1/16", "dev", "bk"]);
    // Permanent entries are exempt from neighbour garbage collection and its thresholds.
    let mut batch = String::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let a = format!("10.200.{}.{}", 1 + i / 250, 1 + i % 250);
        let _ = writeln!(
            batch,
            "neigh replace {a} lladdr 02:00:00:00:{:02x}:{:02x} dev bk nud permanent",
            i / 256,
            i % 256
        );
        addrs.push(a);
    }
    let file = lab.file("neigh.batch", &batch);
    lab.net.lb.ip(&["-batch", &file]);
    addrs
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let json = std::env::args().any(|a| a == "--json");
    let mut lab = Lab::new(0);
    let peer = Netns::new("bkpeer");
    let addrs = backend_segment(&lab, &peer, 1000);

    // 1. One VIP, 1000 backends, M = 65537: time `xlb backend set-weight` end to end.
    let mut cfg =
        lab.base_config() + "\n[[vip]]\naddress = \"10.100.0.1\"\nport = 80\nprotocol = \"tcp\"\n";
    for a in &addrs {
        cfg += &format!("\n[[vip.backend]]\naddress = \"{a}\"\n");
    }
    let t = Instant::now();
    lab.start(&cfg);
    let start_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut cli_ms = Vec::new();
    let mut apply_us = Vec::new();
    for (round, addr) in addrs.iter().enumerate().take(7) {
        let w = (2 + round % 2).to_string();
        let t = Instant::now();
        let out = lab.ok(&["backend", "set-weight", "10.100.0.1:80/tcp", addr, &w]);
        cli_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let us: f64 = out
            .split(" in ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        assert!(out.contains("1 ring swap(s)"), "{out}");
        apply_us.push(us);
    }
    cli_ms.sort_by(f64::total_cmp);
    apply_us.sort_by(f64::total_cmp);
    let pid = lab.daemon_pid().expect("daemon");
    let rss_1000 = rss_kib(pid);
    lab.stop(libc::SIGTERM);

    // 2. 100 VIPs x 100 backends (one pool of 100 hosts behind every VIP).
    let mut cfg = lab.base_config();
    for v in 0..100 {
        cfg += &format!(
            "\n[[vip]]\naddress = \"10.100.1.{}\"\nport = 80\nprotocol = \"tcp\"\n",
            v + 1
        );
        for a in &addrs[..100] {
            cfg += &format!("\n[[vip.backend]]\naddress = \"{a}\"\n");
        }
    }
    let path = lab.file("big.toml", &cfg);
    lab.start(&lab.base_config());
    let t = Instant::now();
    lab.ok(&["apply", "-f", &path]);
    let apply_10k_ms = t.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_secs(2));
    let pid = lab.daemon_pid().expect("daemon");
    let rss_10k = rss_kib(pid);
    lab.stop(libc::SIGTERM);
    drop(peer);

    let med = |v: &[f64]| v[v.len() / 2];
    if json {
        println!(
            "{{\"ring_swap_1000_backends\":{{\"cli_ms_median\":{:.2},\"apply_us_median\":{:.0}}},\"daemon_start_1000_backends_ms\":{start_ms:.0},\"apply_100x100_ms\":{apply_10k_ms:.0},\"rss_kib_1000_backends\":{rss_1000},\"rss_kib_100x100\":{rss_10k}}}",
            med(&cli_ms),
            med(&apply_us)
        );
    } else {
        println!("control plane (daemon in a namespace; medians of 7)");
        println!(
            "  set-weight -> ring swap, 1000 backends, M=65537: {:.1} ms end to end (CLI), {:.1} ms inside the daemon",
            med(&cli_ms),
            med(&apply_us) / 1e3
        );
        println!(
            "  daemon start with 1000 backends (load, resolve, build, attach): {start_ms:.0} ms"
        );
        println!("  apply 100 VIPs x 100 backends from empty: {apply_10k_ms:.0} ms");
        println!(
            "  daemon RSS: {rss_1000} KiB with 1 VIP x 1000 backends, {rss_10k} KiB with 100 VIPs x 100 backends"
        );
    }
}
