//! The namespace harness itself: guards really create and really remove what they manage.

use std::{net::UdpSocket, process::Command, time::Duration};

use tests::netns::{Netns, veth};

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn namespace_and_veth_are_removed_on_drop_and_on_panic() {
    let (a_name, b_name);
    {
        let a = Netns::new("a");
        let b = Netns::new("b");
        veth(&a, "va", &b, "vb");
        a.ip(&["addr", "add", "192.0.2.1/24", "dev", "va"]);
        b.ip(&["addr", "add", "192.0.2.2/24", "dev", "vb"]);
        // A real datagram across the pair proves the wiring.
        let server = b.spawn(|| {
            let sock = UdpSocket::bind("192.0.2.2:9000").expect("bind in b");
            sock.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 16];
            let (n, _) = sock.recv_from(&mut buf).expect("datagram from a");
            buf[..n].to_vec()
        });
        a.spawn(|| {
            let sock = UdpSocket::bind("192.0.2.1:0").expect("bind in a");
            // Retried: the first datagram may wait for ARP.
            for _ in 0..50 {
                sock.send_to(b"hello", "192.0.2.2:9000").expect("send");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert_eq!(server.join().expect("server thread"), b"hello");
        a_name = a.name.clone();
        b_name = b.name.clone();
        assert!(netns_exists(&a_name) && netns_exists(&b_name));
    }
    assert!(
        !netns_exists(&a_name) && !netns_exists(&b_name),
        "namespaces leaked"
    );

    let leaked = std::panic::catch_unwind(|| {
        let ns = Netns::new("panic");
        let name = ns.name.clone();
        std::panic::panic_any(name);
    })
    .expect_err("the closure panics");
    let name = leaked
        .downcast_ref::<String>()
        .expect("panic payload is the name");
    assert!(!netns_exists(name), "namespace {name} survived a panic");
}
