//! Criterion benchmark of the Maglev table build (`cargo bench -p lb-common --bench maglev`).
//! `xlb bench` reports the same builds as medians; this gives criterion's statistics and
//! regression tracking.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb_common::{
    Addr, FAMILY_V4,
    maglev::{self, MaglevBackend},
};

fn members(n: u32) -> Vec<MaglevBackend> {
    (1..=n)
        .map(|id| MaglevBackend {
            family: FAMILY_V4,
            addr: Addr::v4(u32::from_ne_bytes([10, 3, (id >> 8) as u8, id as u8])),
            weight: 1 + id % 3,
            id,
        })
        .collect()
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev_build_m65537");
    g.sample_size(20);
    for n in [10u32, 100, 1000, 4096] {
        let m = members(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &m, |b, m| {
            b.iter(|| maglev::build(m, 65537, 1).expect("valid backends"))
        });
    }
    g.finish();
}

criterion_group!(benches, build);
criterion_main!(benches);
