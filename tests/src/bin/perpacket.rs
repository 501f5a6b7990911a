//! Per-packet cost of `xlb_forward` through BPF_PROG_TEST_RUN with the input restored for every
//! iteration: each run is one `repeat = 1` call on the original frame (repeat > 1 would rerun on
//! the already-encapsulated buffer and measure the pass path). The kernel's own per-run duration
//! is used; `xlb_pass` on the same frame is printed as the floor of this method.

use lb_common::prog_names;
use tests::{fixture::pin_to_cpu0, frames::Spec, lb::topology};

const BATCHES: usize = 15;
const PER_BATCH: usize = 2000;

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

fn main() {
    pin_to_cpu0();
    let mut f = topology(1 << 20);
    let measure =
        |f: &mut tests::fixture::Fixture, name: &str, prog: &'static str, frames: &[Vec<u8>]| {
            let mut batches = Vec::new();
            let mut i = 0;
            for _ in 0..BATCHES {
                let mut total = 0u128;
                for _ in 0..PER_BATCH {
                    let out =
                        f.dp.test_run(prog, &frames[i % frames.len()])
                            .expect("test_run");
                    total += out.duration.as_nanos();
                    i += 1;
                }
                batches.push(total as f64 / PER_BATCH as f64);
            }
            let (min, median) = stats(batches);
            println!("{name:<28} min {min:>6.1} ns   median {median:>6.1} ns");
        };
    let established = Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6).build();
    // Track the flow first.
    f.run(
        &Spec::new("192.0.2.1", 40000, "10.0.0.10", 80, 6)
            .syn()
            .build(),
    );
    let non_vip = Spec::new("192.0.2.1", 40000, "10.0.0.99", 80, 6).build();
    let syns: Vec<Vec<u8>> = (0..BATCHES * PER_BATCH)
        .map(|i| {
            Spec::new(
                &format!("198.18.{}.{}", (i >> 8) & 0xff, i & 0xff),
                1024 + (i >> 16) as u16,
                "10.0.0.10",
                80,
                6,
            )
            .syn()
            .build()
        })
        .collect();
    let est6 = Spec::new("2001:db8::1", 40000, "fd00::10", 80, 6).build();
    f.run(
        &Spec::new("2001:db8::1", 40000, "fd00::10", 80, 6)
            .syn()
            .build(),
    );
    println!(
        "xlb_forward per packet (BPF_PROG_TEST_RUN, input restored each run, {BATCHES} x {PER_BATCH} runs)"
    );
    measure(
        &mut f,
        "floor: xlb_pass",
        prog_names::PASS,
        std::slice::from_ref(&non_vip),
    );
    measure(
        &mut f,
        "non_vip_pass",
        prog_names::FORWARD,
        std::slice::from_ref(&non_vip),
    );
    measure(
        &mut f,
        "established (ct hit, IPIP)",
        prog_names::FORWARD,
        std::slice::from_ref(&established),
    );
    measure(
        &mut f,
        "ipv6_established",
        prog_names::FORWARD,
        std::slice::from_ref(&est6),
    );
    measure(
        &mut f,
        "new_flow (SYN, ct insert)",
        prog_names::FORWARD,
        &syns,
    );
}
