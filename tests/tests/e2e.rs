//! End to end on namespaces: real TCP and UDP sockets through the XDP forwarder and the decap
//! program, with the backends answering the client directly.

use std::collections::HashMap;

use tests::topo::{Topology, tcp_request, udp_request};

#[test]
fn tcp_and_udp_reach_every_backend_and_drain_moves_only_new_flows() {
    let mut topo = Topology::new(3);
    let _servers = topo.start_servers();

    // A large TCP request (full-size segments, IPIP on top) must arrive intact.
    let big = vec![b'x'; 8000];
    let run = |topo: &Topology, n: usize, tcp: bool| -> HashMap<String, usize> {
        topo.client
            .spawn(move || {
                let mut seen = HashMap::new();
                for _ in 0..n {
                    let who = if tcp {
                        tcp_request(b"hello")
                    } else {
                        udp_request(b"hello")
                    };
                    *seen
                        .entry(who.expect("request through the LB"))
                        .or_insert(0) += 1;
                }
                seen
            })
            .join()
            .expect("client thread")
    };
    let tcp = run(&topo, 150, true);
    let udp = run(&topo, 150, false);
    for seen in [&tcp, &udp] {
        assert_eq!(seen.len(), 3, "every backend answers: {seen:?}");
        assert!(
            seen.values().all(|&c| c >= 20),
            "roughly even spread: {seen:?}"
        );
    }
    let big_ok = topo
        .client
        .spawn(move || tcp_request(&big))
        .join()
        .expect("thread");
    assert!(
        big_ok.is_ok(),
        "full-size segments through IPIP: {big_ok:?}"
    );

    // Drain backend 2: no new flows reach it.
    topo.set_weight(2, 0);
    let after = run(&topo, 120, true);
    assert!(
        !after.contains_key("backend-2"),
        "drained backend got new connections: {after:?}"
    );
    assert_eq!(after.len(), 2);

    let vip = topo.dp.vip_stats(0).expect("stats");
    assert!(vip.new_flows >= 270, "{vip:?}");
}

/// A 9000-byte MTU end to end: client -> LB (`xlb_forward` in multi-buffer mode) -> IPIP over
/// 9100-byte links -> backend (`xlb_decap`) -> sockets on the VIP. TCP's full-size segments and
/// 8,000-byte UDP datagrams (each frame larger than a page, so in several XDP buffers) arrive
/// whole, on every backend.
#[test]
fn jumbo_frames_cross_the_load_balancer_whole() {
    use tests::topo::Mtus;
    let topo = Topology::with_mtus(
        2,
        Mtus {
            client: 9000,
            backend: 9100,
        },
    );
    let _servers = topo.start_servers();
    let seen = topo
        .client
        .spawn(|| {
            let mut seen = HashMap::new();
            for i in 0..40 {
                // 64 KiB of request: seven or eight 8,948-byte segments each.
                let who = if i % 2 == 0 {
                    tcp_request(&vec![b'j'; 64 * 1024])
                } else {
                    udp_request(&vec![b'u'; 8000])
                };
                *seen.entry(who.expect("jumbo request")).or_insert(0) += 1;
            }
            seen
        })
        .join()
        .expect("client thread");
    assert_eq!(seen.len(), 2, "both backends answered: {seen:?}");
    let (mut packets, mut bytes) = (0, 0);
    for vip_id in [0, 1] {
        let s = topo.dp.vip_stats(vip_id).expect("stats");
        packets += s.packets;
        bytes += s.bytes;
    }
    // 20 requests of 64 KiB in ~8,948-byte segments and 20 datagrams of 8,028: the forwarder
    // saw frames far larger than a page, not a stream cut to 1,500 bytes.
    assert!(
        packets > 0 && bytes / packets > 4096,
        "{bytes} bytes in {packets} packets"
    );
}
