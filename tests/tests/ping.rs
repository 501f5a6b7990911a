//! VIPs that answer ping: the system `ping` from the client namespace, answered by the
//! forwarder in XDP (the LB's kernel never sees the requests), and not answered once the VIP's
//! `ping` is turned off.

use std::process::{Command, Output};

use tests::{
    lab::Lab,
    topo::{TCP_PORT, VIP, VIP6},
};

fn config(lab: &Lab, ping: bool) -> String {
    let mut c = lab.base_config();
    for addr in [VIP.to_string(), VIP6.to_string()] {
        c += &format!(
            "\n[[vip]]\naddress = \"{addr}\"\nport = {TCP_PORT}\nprotocol = \"tcp\"\nping = {ping}\n"
        );
        for b in &lab.net.backends {
            let a = if addr.contains(':') {
                b.addr6.to_string()
            } else {
                b.addr.to_string()
            };
            c += &format!("\n[[vip.backend]]\naddress = \"{a}\"\n");
        }
    }
    c
}

fn ping(lab: &Lab, addr: &str, count: &str) -> Output {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.net.client.name,
            "ping",
            "-n",
            "-c",
            count,
        ])
        .args(["-i", "0.2", "-W", "1", addr])
        .output()
        .expect("run ping")
}

fn answered(lab: &Lab) -> u64 {
    lab.json(&["stats"])["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .find(|r| r["reason"] == "tx_echo")
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

#[test]
fn the_system_ping_is_answered_by_a_vip_that_answers_ping_only() {
    let mut lab = Lab::new(1);
    // XDP_TX into a veth reaches its peer only through an XDP program there (GRO alone delays
    // the answers until the next packet).
    let mut pass = xlb::dataplane::Dataplane::load(&xlb::dataplane::LoadOptions {
        conntrack_entries: 64,
        ..Default::default()
    })
    .expect("load");
    {
        let _in = lab.net.client.enter();
        pass.attach(
            lb_common::prog_names::PASS,
            "c0",
            xlb::dataplane::AttachMode::Native,
            None,
        )
        .expect("xlb_pass on the client's end");
    }
    lab.start(&config(&lab, true));
    for addr in [VIP.to_string(), VIP6.to_string()] {
        let out = ping(&lab, &addr, "3");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ping {addr}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("3 received"), "{text}");
        eprintln!("{addr}: {}", text.lines().last().unwrap_or_default());
    }
    assert_eq!(answered(&lab), 6, "every request answered by the forwarder");

    lab.ok(&["apply", "-f", &lab.file("off.toml", &config(&lab, false))]);
    for addr in [VIP.to_string(), VIP6.to_string()] {
        let out = ping(&lab, &addr, "2");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success(),
            "ping {addr} answered with ping off: {text}"
        );
        assert!(!text.contains(" 2 received"), "{text}");
    }
    assert_eq!(answered(&lab), 6, "nothing answered with ping off");
}
