//! Parsing, validation and the CLI edit rules.

use super::*;

const GOOD: &str = r#"
[forwarding]
encap_source_v4 = "10.0.0.1"

[[interface]]
name = "eth0"

[[vip]]
address = "10.100.0.1"
port = 80
protocol = "tcp"
hash = "src-ip"

[[vip.backend]]
address = "10.0.1.1"
weight = 2

[[vip.backend]]
address = "10.0.1.2"
drain = true
"#;

#[test]
fn parses_and_round_trips() {
    let c = Config::parse(GOOD).expect("valid");
    assert_eq!(c.vips[0].hash, HashMode::SrcIp);
    assert_eq!(c.vips[0].backends[1].weight, 1);
    assert!(c.vips[0].backends[1].drain);
    assert_eq!(c.interfaces[0].mode, AttachMode::Native);
    let again = Config::parse(&c.to_toml()).expect("export parses");
    assert_eq!(again, c);
}

#[test]
fn reports_every_error_with_its_place() {
    let bad = GOOD.replace("weight = 2", "weight = 70000").replace(
        "[[vip.backend]]\naddress = \"10.0.1.2\"",
        "[[vip.backend]]\naddress = \"10.0.1.1\"",
    ) + "\n[daemon]\nring_size = 65536\nconntrack_entries_v6 = 0\n";
    let e = Config::parse(&bad).expect_err("invalid");
    let text = e.to_string();
    assert_eq!(e.0.len(), 4, "{text}");
    assert!(
        text.contains("daemon.conntrack_entries_v6: 0 is outside 1..=67108864"),
        "{text}"
    );
    assert!(
        text.contains("daemon.ring_size: 65536 must be a prime"),
        "{text}"
    );
    assert!(
        text.contains("vip[0] 10.100.0.1:80/tcp backend[0] 10.0.1.1: weight 70000"),
        "{text}"
    );
    assert!(text.contains("backend[1] 10.0.1.1: listed twice"), "{text}");
}

#[test]
fn syntax_and_unknown_keys_point_at_the_line() {
    let e = Config::parse(
        "[[vip]]\naddress = \"10.0.0.1\"\nport = 80\nprotocol = \"tcp\"\nwieght = 3\n",
    )
    .expect_err("unknown key");
    let text = e.to_string();
    assert!(text.contains("line 5") && text.contains("wieght"), "{text}");
    let e = Config::parse("[[vip]]\naddress = 10.0.0.1\n").expect_err("syntax");
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn health_checks_parse_inherit_and_validate() {
    let text = GOOD.replace(
        "hash = \"src-ip\"\n",
        "hash = \"src-ip\"\n\n[vip.health]\ntype = \"http\"\npath = \"/healthz\"\nstatus = \"200-299\"\n",
    );
    let c = Config::parse(&text).expect("valid");
    let v = &c.vips[0];
    let h = v.check_for(&v.backends[0]).expect("inherited");
    assert_eq!(
        (h.kind, h.interval_ms, h.rise, h.fall),
        (ProbeKind::Http, 2000, 2, 3)
    );
    assert_eq!(h.status_range(), Ok((200, 299)));
    assert_eq!(Config::parse(&c.to_toml()).expect("round trip"), c);

    let bad = text.replace(
        "status = \"200-299\"",
        "status = \"299-200\"\ntimeout_ms = 5000",
    ) + "\n[[vip]]\naddress = \"10.100.0.2\"\nport = 0\nprotocol = \"udp\"\n[vip.health]\ntype = \"udp\"\nvia = \"vip\"\n";
    let e = Config::parse(&bad).expect_err("invalid").to_string();
    assert!(e.contains("status \"299-200\": empty range"), "{e}");
    assert!(
        e.contains("timeout_ms 5000 must be at least 10 and at most interval_ms"),
        "{e}"
    );
    assert!(
        e.contains("vip[1] 10.100.0.2:0/udp health: a wildcard VIP's health check needs a port"),
        "{e}"
    );
    assert!(e.contains("a udp health check needs a payload"), "{e}");
    assert!(
        e.contains("via = \"vip\" probes over TCP: type tcp, http or https"),
        "{e}"
    );

    let bad = GOOD.replace(
        "hash = \"src-ip\"\n",
        "hash = \"src-ip\"\nquorum = 3\non_quorum_loss = \"fallback\"\nfallback = [\"10.9.9.9\"]\n",
    );
    let e = Config::parse(&bad).expect_err("invalid").to_string();
    assert!(
        e.contains("quorum must be between 1 and the number of backends (2)"),
        "{e}"
    );
    assert!(
        e.contains("fallback 10.9.9.9 is not one of this VIP's backends"),
        "{e}"
    );
}

#[test]
fn encapsulation_needs_a_source() {
    let e =
        Config::parse(&GOOD.replace("encap_source_v4 = \"10.0.0.1\"", "")).expect_err("no source");
    assert!(
        e.to_string().contains("needs forwarding.encap_source_v4"),
        "{e}"
    );
}

#[test]
fn vip_refs_parse_and_print() {
    for s in ["10.0.0.1:80/tcp", "[2001:db8::1]:443/udp", "10.0.0.1:0/tcp"] {
        let r: VipRef = s.parse().expect(s);
        assert_eq!(r.to_string(), s);
    }
    for s in [
        "10.0.0.1:80",
        "10.0.0.1/tcp",
        "10.0.0.1:80/sctp",
        "host:80/tcp",
    ] {
        assert!(s.parse::<VipRef>().is_err(), "{s}");
    }
}

#[test]
fn the_example_config_is_valid() {
    let c = Config::parse(include_str!("../../../dist/xlb.toml")).expect("dist/xlb.toml");
    assert_eq!(c.vips.len(), 2);
}

fn edited() -> Config {
    Config::parse(GOOD).expect("valid")
}

fn vip0() -> VipRef {
    "10.100.0.1:80/tcp".parse().expect("vip")
}

fn addr(s: &str) -> std::net::IpAddr {
    s.parse().expect("address")
}

#[test]
fn adding_a_vip_twice_is_refused_and_changes_nothing() {
    let c = edited();
    let e = c
        .apply_change(Change::VipAdd(Vip::new(vip0())))
        .expect_err("exists");
    assert_eq!(e, ChangeError::VipExists(vip0()));
    assert!(e.to_string().contains("remove it first"), "{e}");
    let (n, removal) = c
        .apply_change(Change::VipAdd(Vip::new(
            "10.100.0.9:443/tcp".parse().expect("vip"),
        )))
        .expect("added");
    assert_eq!((n.vips.len(), removal), (2, Removal::Drain));
}

#[test]
fn edits_of_a_missing_vip_or_backend_name_it() {
    let c = edited();
    let other: VipRef = "10.9.9.9:80/tcp".parse().expect("vip");
    for change in [
        Change::VipRemove(other),
        Change::BackendAdd {
            vip: other,
            backend: c.vips[0].backends[0].clone(),
        },
        Change::BackendSet {
            vip: other,
            address: addr("10.0.1.1"),
            weight: Some(2),
            drain: None,
        },
    ] {
        let e = c.apply_change(change).expect_err("no such VIP");
        assert_eq!(e.to_string(), "no VIP 10.9.9.9:80/tcp (see `xlb vip list`)");
    }
    let e = c
        .apply_change(Change::BackendRemove {
            vip: vip0(),
            address: addr("10.0.1.9"),
            now: false,
        })
        .expect_err("no such backend");
    assert_eq!(e.to_string(), "10.100.0.1:80/tcp has no backend 10.0.1.9");
}

#[test]
fn a_backend_is_added_once() {
    let c = edited();
    let b = c.vips[0].backends[0].clone();
    let e = c
        .apply_change(Change::BackendAdd {
            vip: vip0(),
            backend: b,
        })
        .expect_err("duplicate");
    assert!(matches!(e, ChangeError::BackendExists { .. }), "{e}");
}

#[test]
fn remove_drains_unless_now() {
    let c = edited();
    let rm = |now| Change::BackendRemove {
        vip: vip0(),
        address: addr("10.0.1.1"),
        now,
    };
    let (n, removal) = c.apply_change(rm(false)).expect("removed");
    assert_eq!(removal, Removal::Drain);
    assert_eq!(n.vips[0].backends.len(), 1);
    assert_eq!(c.apply_change(rm(true)).expect("removed").1, Removal::Now);
}

#[test]
fn removing_the_last_backend_leaves_an_empty_vip() {
    let c = edited();
    let (c, _) = c
        .apply_change(Change::BackendRemove {
            vip: vip0(),
            address: addr("10.0.1.1"),
            now: false,
        })
        .expect("first");
    let (c, _) = c
        .apply_change(Change::BackendRemove {
            vip: vip0(),
            address: addr("10.0.1.2"),
            now: false,
        })
        .expect("last");
    assert!(c.vips[0].backends.is_empty());
}

#[test]
fn weight_and_drain_edits_are_validated_like_a_file() {
    let c = edited();
    let set = |weight, drain| Change::BackendSet {
        vip: vip0(),
        address: addr("10.0.1.2"),
        weight,
        drain,
    };
    let (n, _) = c.apply_change(set(Some(7), Some(false))).expect("set");
    let b = &n.vips[0].backends[1];
    assert_eq!((b.weight, b.drain), (7, false));
    let (n, _) = n.apply_change(set(None, Some(true))).expect("drain");
    assert_eq!(n.vips[0].backends[1].weight, 7, "untouched");
    let e = c
        .apply_change(set(Some(70000), None))
        .expect_err("too heavy");
    assert!(e.to_string().contains("weight 70000 exceeds 65535"), "{e}");
}

#[test]
fn an_applied_document_keeps_the_running_daemon_section_unless_it_has_one() {
    let mut running = edited();
    running.daemon.drain_idle_secs = 9;
    let without = GOOD;
    assert_eq!(
        Config::parse_apply(without, &running)
            .expect("valid")
            .daemon
            .drain_idle_secs,
        9
    );
    let with = format!("[daemon]\ndrain_idle_secs = 4\n{GOOD}");
    assert_eq!(
        Config::parse_apply(&with, &running)
            .expect("valid")
            .daemon
            .drain_idle_secs,
        4
    );
    assert!(Config::parse_apply("[[vip]]\nport = 1\n", &running).is_err());
}

#[test]
fn vip_keys_carry_wire_order_ports_and_the_family() {
    let k = vip0().key();
    assert_eq!(k.port_be, 80u16.to_be());
    assert_eq!(k.proto, lb_common::PROTO_TCP);
    assert_eq!(k.family, lb_common::FAMILY_V4);
    let v6: VipRef = "[2001:db8::1]:443/udp".parse().expect("vip");
    assert_eq!(v6.key().family, lb_common::FAMILY_V6);
}

#[test]
fn a_probe_host_cannot_carry_headers() {
    let with_host = |host: &str| {
        GOOD.replace(
            "hash = \"src-ip\"\n",
            &format!("hash = \"src-ip\"\n\n[vip.health]\ntype = \"http\"\nhost = {host:?}\n"),
        )
    };
    Config::parse(&with_host("www.example.com")).expect("a host name");
    Config::parse(&with_host("[2001:db8::1]:8080")).expect("an address and port");
    for bad in ["a\r\nX-Injected: 1", "a b", "", "a/b"] {
        let e = Config::parse(&with_host(bad)).expect_err(bad).to_string();
        assert!(
            e.contains("host must be a host name or address"),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn pin_dirs_are_what_bpffs_accepts() {
    for good in [
        "/sys/fs/bpf/xlb",
        "/sys/fs/bpf/xlb/node_a",
        "/sys/fs/bpf/xlb-2",
    ] {
        assert_eq!(check_pin_dir(std::path::Path::new(good)), Ok(()), "{good}");
    }
    for (bad, why) in [
        ("/sys/fs/bpf/xlb.v2", "dot"),
        ("/sys/fs/bpf/../..", ". or .."),
        ("/sys/fs/bpf/xlb/../../etc", ". or .."),
        ("/sys/fs/bpf", "not bpffs itself"),
        ("/tmp/xlb", "not under /sys/fs/bpf"),
        ("sys/fs/bpf/xlb", "absolute"),
    ] {
        let e = check_pin_dir(std::path::Path::new(bad)).expect_err(bad);
        assert!(e.contains(why), "{bad}: {e}");
    }
    let text = GOOD.to_string() + "\n[daemon]\npin_dir = \"/sys/fs/bpf/xlb.test\"\n";
    let e = Config::parse(&text)
        .expect_err("dotted pin_dir")
        .to_string();
    assert!(
        e.contains("daemon.pin_dir: /sys/fs/bpf/xlb.test: bpffs refuses names with a dot"),
        "{e}"
    );
}

#[test]
fn a_huge_value_is_not_echoed_whole() {
    let huge = "x".repeat(1 << 20);
    let e = Config::parse(&format!("[forwarding]\nencap_source_v4 = \"{huge}\"\n"))
        .expect_err("not an address")
        .to_string();
    assert!(e.len() < 1000, "{} bytes of error", e.len());
    assert!(e.contains("more bytes)"), "{e}");
}

#[test]
fn an_apply_that_empties_or_detaches_needs_force() {
    let running = edited();
    let empty = Config::parse_apply("", &running).expect("an empty document parses");
    let e = running.check_apply(&empty).expect_err("removes everything");
    let text = e.to_string();
    assert!(text.contains("removes every VIP (1)"), "{text}");
    assert!(text.contains("detaches the forwarder from eth0"), "{text}");
    let mut fewer = running.clone();
    fewer.vips[0].backends.pop();
    assert_eq!(running.check_apply(&fewer), Ok(()));
    let mut other_iface = running.clone();
    other_iface.interfaces[0].name = "eth1".into();
    let text = running
        .check_apply(&other_iface)
        .expect_err("eth0 goes")
        .to_string();
    assert!(text.contains("detaches the forwarder from eth0"), "{text}");
    assert!(!text.contains("every VIP"), "{text}");
    // Nothing to lose from an empty daemon.
    assert_eq!(empty.check_apply(&running), Ok(()));
}

#[test]
fn the_cli_spells_protocols_as_the_file_does() {
    for s in ["10.0.0.1:80/TCP", "10.0.0.1:80/Udp"] {
        let e = s.parse::<VipRef>().expect_err(s);
        assert!(e.contains("lowercase"), "{e}");
    }
}

#[test]
fn the_example_announce_section_is_valid_and_the_defaults() {
    let text = include_str!("../../../dist/xlb.toml");
    let uncommented: String = text
        .lines()
        .map(|l| {
            let t = l.strip_prefix("# ").unwrap_or(l);
            if t.starts_with("[announce]")
                || ["table", "protocol", "interface", "min_up_secs", "hold_secs"]
                    .iter()
                    .any(|k| t.starts_with(&format!("{k} =")))
            {
                t
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(&uncommented).expect("announce example");
    assert_eq!(c.announce, Some(Announce::default()));
    assert!(Config::parse(text).expect("example").announce.is_none());
}

#[test]
fn announce_settings_that_would_touch_the_kernels_routes_are_refused() {
    for (bad, says) in [
        ("table = 254", "announce.table: 254"),
        ("table = 0", "announce.table: 0"),
        ("protocol = 2", "announce.protocol: 2"),
        ("protocol = 12", "BIRD's own"),
        ("interface = \"\"", "announce.interface"),
        ("interface = \"a/b\"", "announce.interface"),
        ("min_up_secs = 3601", "announce.min_up_secs: 3601"),
        ("hold_secs = 99999", "announce.hold_secs"),
    ] {
        let text = format!("{GOOD}\n[announce]\n{bad}\n");
        let e = Config::parse(&text).expect_err(bad).to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
    let ok = Config::parse(&format!(
        "{GOOD}\n[announce]\ntable = 200\nprotocol = 250\n"
    ))
    .expect("valid");
    let a = ok.announce.expect("announce");
    assert_eq!(
        (a.table, a.protocol, a.interface.as_str()),
        (200, 250, "lo")
    );
}

#[test]
fn withdraw_on_quorum_loss_needs_announce_and_a_quorum() {
    let vip = GOOD.replace(
        "hash = \"src-ip\"",
        "hash = \"src-ip\"\non_quorum_loss = \"withdraw\"",
    );
    let e = Config::parse(&vip)
        .expect_err("no announce, no quorum")
        .to_string();
    assert!(e.contains("needs an [announce] section"), "{e}");
    assert!(e.contains("needs a quorum"), "{e}");
    let with_quorum = vip.replace("hash = \"src-ip\"", "hash = \"src-ip\"\nquorum = 1");
    let ok = Config::parse(&format!("{with_quorum}\n[announce]\n")).expect("valid");
    assert_eq!(ok.vips[0].on_quorum_loss, QuorumLoss::Withdraw);
}

#[test]
fn an_apply_without_announce_keeps_the_running_announcements() {
    let running = Config::parse(&format!("{GOOD}\n[announce]\nmin_up_secs = 9\n")).expect("valid");
    let applied = Config::parse_apply(GOOD, &running).expect("apply");
    assert_eq!(applied.announce.expect("kept").min_up_secs, 9);
    let changed = Config::parse_apply(&format!("{GOOD}\n[announce]\nhold_secs = 1\n"), &running)
        .expect("apply");
    let a = changed.announce.expect("new");
    assert_eq!((a.min_up_secs, a.hold_secs), (5, 1));
}

#[test]
fn sync_settings_are_checked_and_kept_by_an_apply_without_them() {
    let good = "\n[sync]\nlisten = \"10.0.0.31:4790\"\npeers = [\"10.0.0.32:4790\"]\nkey_file = \"/etc/xlb/sync.key\"\n";
    let c = Config::parse(&format!("{GOOD}{good}")).expect("valid");
    let s = c.sync.clone().expect("sync");
    assert_eq!((s.refresh_secs, s.resync_timeout_ms), (5, 2000));
    assert_eq!(
        Config::parse_apply(GOOD, &c).expect("apply").sync,
        Some(s),
        "kept"
    );
    for (bad, says) in [
        ("listen = \"nowhere\"", "sync.listen"),
        ("listen = \"0.0.0.0:4790\"", "must name this node's address"),
        ("peers = []", "at least one peer"),
        ("peers = [\"10.0.0.31:4790\"]", "own listen address"),
        ("refresh_secs = 0", "sync.refresh_secs"),
        ("resync_timeout_ms = 10", "sync.resync_timeout_ms"),
    ] {
        let key = bad.split(' ').next().expect("key");
        let text: String = good
            .lines()
            .filter(|l| !l.starts_with(key))
            .chain([bad])
            .collect::<Vec<_>>()
            .join("\n");
        let e = Config::parse(&format!("{GOOD}{text}\n"))
            .expect_err(bad)
            .to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
