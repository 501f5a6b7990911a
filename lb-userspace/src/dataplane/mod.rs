//! Loading the XDP object and typed access to its maps.
//!
//! Write order matters to packets in flight: backends before ring slots that name them, a ring
//! before the VIP that uses it is published, and VIPs unpublished before their ring or backends go.

mod attach;
mod conntrack;
mod error;
mod maps;
pub mod pin;
mod ring_map;

use std::{collections::HashMap, os::fd::AsFd as _, path::PathBuf};

pub use attach::{AttachMode, Attached};
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, DevMap, HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray,
        RingBuf,
    },
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
pub use conntrack::PinnedConntrack;
pub use error::{AdoptError, DataplaneError};
use lb_common::{
    Backend, LbConfig, VipKey, VipMeta, VipSlot,
    capture::{CaptureConfig, CaptureCounters},
    map_names as names, prog_names,
    stats::{BackendStats, Counter, REASON_COUNT, Reason, VipStats},
};
pub use pin::PinState;

use crate::EBPF_OBJECT;

/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Conntrack capacity (entries) of a fresh IPv4 map; an adopted map keeps its size.
    pub conntrack_entries: u32,
    /// The same for IPv6 (`None`: `conntrack_entries`).
    pub conntrack_entries_v6: Option<u32>,
    /// Pin the maps here (bpffs) and adopt those already pinned; `None`: private maps that go
    /// away with this process.
    pub pin_dir: Option<PathBuf>,
    /// Use the forwarding tables the daemon pinned in this directory (read only: the forwarder
    /// never writes them) and private maps for everything it writes: conntrack, counters,
    /// capture. What `xlb replay` runs packets through. Exclusive with `pin_dir`.
    pub share_tables_from: Option<PathBuf>,
    /// Programs to load (default: all); the others stay unloaded.
    pub programs: &'static [&'static str],
}

/// The maps `share_tables_from` shares: what the forwarder reads and never writes.
pub const READ_ONLY_TABLES: &[&str] = &[
    names::VIPS,
    names::VIP_BY_ID,
    names::RINGS,
    names::BACKENDS,
    names::TX_PORTS,
    names::VIP_FILTER,
];

/// Shared tables an older daemon may not have pinned: without them the forwarder finds every
/// VIP through `VIPS` (the same answers, a little slower).
const OPTIONAL_SHARED: &[&str] = &[names::VIP_BY_ID];

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            conntrack_entries: lb_common::CONNTRACK_DEFAULT_ENTRIES,
            conntrack_entries_v6: None,
            pin_dir: None,
            share_tables_from: None,
            programs: lb_common::prog_names::ALL,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    pin_state: PinState,
    /// Links this process holds, by interface (pinned or not).
    links: HashMap<String, (&'static str, aya::programs::xdp::XdpLinkId)>,
    /// Rings built and filled ahead (off the daemon's owner thread), by the address of their
    /// table: a ring write then only swaps one in.
    ready_rings: HashMap<usize, MapData>,
    /// The forwarder's tail-call slot for `xlb_capture`. Held open: the kernel empties a
    /// program array when its last user reference goes.
    _capture_prog: Option<ProgramArray<MapData>>,
    /// `xlb_probe` on the egress of each interface the forwarder is attached to (not pinned:
    /// probes run only with a daemon).
    probe_links: HashMap<String, aya::programs::tc::SchedClassifierLinkId>,
    /// The adopted pins kept IPv4 flows in `CONNTRACK`: copied again after each forwarder swap.
    carry_v4: bool,
}

/// A ring filled ahead of its swap (`Dataplane::prefill_ring`).
pub struct ReadyRing {
    table: usize,
    map: MapData,
}

/// Sum a per-CPU value over CPUs.
trait Accumulate: Default + Copy {
    fn add(&mut self, other: &Self);
}

impl Accumulate for Counter {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

impl Accumulate for VipStats {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.conntrack_hits += o.conntrack_hits;
        self.conntrack_misses += o.conntrack_misses;
        self.failovers += o.failovers;
        self.expired += o.expired;
        self.deferred += o.deferred;
    }
}

impl Accumulate for BackendStats {
    fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
    }
}

/// Copy the redirect ports of the devmap pinned at `from` into the loaded object's `TX_PORTS`.
fn copy_tx_ports(from: &std::path::Path, ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let old: DevMap<MapData> = DevMap::try_from(aya::maps::Map::DevMap(MapData::from_pin(from)?))?;
    let map = ebpf
        .map_mut(names::TX_PORTS)
        .ok_or(DataplaneError::MissingMap(names::TX_PORTS))?;
    let mut new: DevMap<_> = DevMap::try_from(map)?;
    for (slot, v) in old.iter().enumerate() {
        // Empty slots read as errors (ENOENT).
        if let Ok(v) = v {
            new.set(slot as u32, v.if_index, None, 0)?;
        }
    }
    Ok(())
}

impl Dataplane {
    /// Load (and verify) every program of the embedded object and create its maps.
    pub fn load(opts: &LoadOptions) -> Result<Self, DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::EmptyObject);
        }
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(
            names::CONNTRACK,
            opts.conntrack_entries_v6.unwrap_or(opts.conntrack_entries),
        );
        loader.map_max_entries(names::CONNTRACK_V4, opts.conntrack_entries);
        let mut pin_state = PinState::Fresh;
        // A `TX_PORTS` of an earlier build whose entries go into this build's new one.
        let mut old_tx_ports = None;
        // Adopted pins whose IPv4 flows are in `CONNTRACK` (see `conntrack`).
        let mut carry_v4 = false;
        if let Some(dir) = &opts.pin_dir {
            pin::ensure_dir(dir)?;
            pin_state = pin::check(dir)?;
            carry_v4 = pin_state == PinState::Adopted && !dir.join(names::CONNTRACK_V4).exists();
            old_tx_ports = pin::set_aside_tx_ports(dir)?;
            for &name in names::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        if let Some(dir) = &opts.share_tables_from {
            if pin::check(dir)? != PinState::Adopted {
                return Err(DataplaneError::NothingPinned(dir.display().to_string()));
            }
            for &name in READ_ONLY_TABLES {
                let path = dir.join(name);
                // An earlier build's devmap cannot serve this build's programs: a private copy.
                if name == names::TX_PORTS && !pin::tx_ports_fit(dir) {
                    old_tx_ports = Some(path);
                    continue;
                }
                // The loader pins a map it creates at a missing path: never in the live directory.
                if !path.exists() {
                    if OPTIONAL_SHARED.contains(&name) {
                        continue;
                    }
                    return Err(DataplaneError::NothingPinned(path.display().to_string()));
                }
                loader.map_pin_path(name, path);
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        if let Some(old) = &old_tx_ports {
            copy_tx_ports(old, &mut ebpf)?;
        }
        if let Some(dir) = &opts.pin_dir {
            pin::stamp(dir)?;
            pin::finish_tx_ports(dir, old_tx_ports.as_deref())?;
        }
        for name in names::ALL {
            if ebpf.map(name).is_none() {
                return Err(DataplaneError::MissingMap(name));
            }
        }
        // The forwarder tail-calls the capture program: one does not go without the other.
        let forward = opts.programs.contains(&prog_names::FORWARD);
        let capture = forward && !opts.programs.contains(&prog_names::CAPTURE);
        for &name in opts
            .programs
            .iter()
            .chain(capture.then_some(&prog_names::CAPTURE))
        {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram(name))?
                .try_into()?;
            prog.load().map_err(|source| DataplaneError::Verifier {
                program: name,
                source,
            })?;
        }
        if forward {
            let probe: &mut SchedClassifier = ebpf
                .program_mut(prog_names::PROBE)
                .ok_or(DataplaneError::MissingProgram(prog_names::PROBE))?
                .try_into()?;
            probe.load().map_err(|source| DataplaneError::Verifier {
                program: prog_names::PROBE,
                source,
            })?;
        }
        let mut capture_prog = None;
        if forward {
            let map = ebpf
                .take_map(names::CAPTURE_PROG)
                .ok_or(DataplaneError::MissingMap(names::CAPTURE_PROG))?;
            let mut slots: ProgramArray<_> = ProgramArray::try_from(map)?;
            let prog: &Xdp = ebpf
                .program(prog_names::CAPTURE)
                .ok_or(DataplaneError::MissingProgram(prog_names::CAPTURE))?
                .try_into()?;
            slots.set(0, prog.fd()?, 0)?;
            capture_prog = Some(slots);
        }
        let mut dp = Dataplane {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            pin_state,
            links: HashMap::new(),
            ready_rings: HashMap::new(),
            _capture_prog: capture_prog,
            probe_links: HashMap::new(),
            carry_v4,
        };
        // Adopted maps of a build before `VIP_BY_ID` (or a slot table out of step after a
        // crash between the two writes): rebuild the slots from what `VIPS` publishes.
        if pin_state == PinState::Adopted {
            dp.sync_vip_slots()?;
            dp.sync_tx_ifindex()?;
        }
        if carry_v4 {
            let n = dp.carry_v4_flows()?;
            tracing::info!("copied {n} IPv4 flows of the earlier build's conntrack");
        }
        Ok(dp)
    }

    /// Make `VIP_BY_ID` say what `VIPS` publishes, slot by slot.
    fn sync_vip_slots(&mut self) -> Result<(), DataplaneError> {
        let mut want = vec![VipSlot::default(); lb_common::MAX_VIPS as usize];
        for (key, meta) in self.vips()? {
            if VipSlot::carries(&key)
                && let Some(s) = want.get_mut(meta.vip_id as usize)
            {
                *s = VipSlot { key, meta };
            }
        }
        let mut a: Array<_, VipSlot> = Array::try_from(self.map_mut(names::VIP_BY_ID)?)?;
        for (id, slot) in want.iter().enumerate() {
            if a.get(&(id as u32), 0)? != *slot {
                a.set(id as u32, slot, 0)?;
            }
        }
        Ok(())
    }

    /// Whether the maps were adopted from an earlier daemon.
    pub fn pin_state(&self) -> PinState {
        self.pin_state
    }

    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pin_dir.as_deref()
    }

    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp, DataplaneError> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()?)
    }

    /// What the kernel reports of a loaded program of any kind.
    pub fn program_info(
        &self,
        name: &'static str,
    ) -> Result<aya::programs::ProgramInfo, DataplaneError> {
        let prog = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram(name))?;
        Ok(prog.info()?)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap(name))
    }

    /// Any map of the object by name (for tools such as the generator and the benchmark).
    pub fn map_mut_by_name(
        &mut self,
        name: &'static str,
    ) -> Result<&mut aya::maps::Map, DataplaneError> {
        self.map_mut(name)
    }

    pub fn map_by_name(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.map(name)
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf.map(name).ok_or(DataplaneError::MissingMap(name))
    }

    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<(), DataplaneError> {
        let mut a: Array<_, LbConfig> = Array::try_from(self.map_mut(names::CONFIG)?)?;
        Ok(a.set(0, cfg, 0)?)
    }

    /// Publish a VIP: its slot by id first, then the key packets look it up by (a packet that
    /// finds the key can also find the slot).
    pub fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        let m: BpfHashMap<_, VipKey, VipMeta> = BpfHashMap::try_from(self.map(names::VIPS)?)?;
        let old = m.get(key, 0).ok();
        if VipSlot::carries(key) {
            let mut a: Array<_, VipSlot> = Array::try_from(self.map_mut(names::VIP_BY_ID)?)?;
            a.set(
                meta.vip_id,
                VipSlot {
                    key: *key,
                    meta: *meta,
                },
                0,
            )?;
            // The key moved to another id: its old slot no longer publishes it.
            if let Some(o) = old.filter(|o| o.vip_id != meta.vip_id)
                && a.get(&o.vip_id, 0)?.key == *key
            {
                a.set(o.vip_id, VipSlot::default(), 0)?;
            }
        }
        let mut m: BpfHashMap<_, VipKey, VipMeta> =
            BpfHashMap::try_from(self.map_mut(names::VIPS)?)?;
        Ok(m.insert(key, meta, 0)?)
    }

    /// Unpublish a VIP: the key first, then its slot (unless the id already names another VIP).
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<_, VipKey, VipMeta> =
            BpfHashMap::try_from(self.map_mut(names::VIPS)?)?;
        let old = m.get(key, 0).ok();
        m.remove(key)?;
        if let Some(meta) = old
            && VipSlot::carries(key)
        {
            let mut a: Array<_, VipSlot> = Array::try_from(self.map_mut(names::VIP_BY_ID)?)?;
            if a.get(&meta.vip_id, 0)?.key == *key {
                a.set(meta.vip_id, VipSlot::default(), 0)?;
            }
        }
        Ok(())
    }

    /// Write the words of the VIP address filter that differ from `old` (every word when `old`
    /// is not a whole filter: after a start, the pinned one is unknown). Returns the writes.
    pub fn set_vip_filter(&mut self, words: &[u32], old: &[u32]) -> Result<usize, DataplaneError> {
        let mut a: Array<_, u32> = Array::try_from(self.map_mut(names::VIP_FILTER)?)?;
        let mut n = 0;
        for (i, w) in words.iter().enumerate() {
            if old.len() != words.len() || old[i] != *w {
                a.set(i as u32, w, 0)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Set the clock conntrack stamps flows with (`CLOCK`).
    pub fn set_clock(&mut self, ns: u64) -> Result<(), DataplaneError> {
        let mut a: Array<_, u64> = Array::try_from(self.map_mut(names::CLOCK)?)?;
        Ok(a.set(0, ns, 0)?)
    }

    /// Publish the capture filter (before `CFG_F_CAPTURE` is set).
    pub fn set_capture(&mut self, c: &CaptureConfig) -> Result<(), DataplaneError> {
        let mut a: Array<_, CaptureConfig> = Array::try_from(self.map_mut(names::CAPTURE)?)?;
        Ok(a.set(0, c, 0)?)
    }

    /// Capture counters summed over CPUs.
    pub fn capture_counters(&self) -> Result<CaptureCounters, DataplaneError> {
        let a: PerCpuArray<_, CaptureCounters> =
            PerCpuArray::try_from(self.map(names::CAPTURE_STATS)?)?;
        let mut sum = CaptureCounters::default();
        for v in a.get(&0, 0)?.iter() {
            sum.matched += v.matched;
            sum.lost += v.lost;
        }
        Ok(sum)
    }

    /// This instance's capture ring (replay reads its own; `xlb capture` opens the pin).
    pub fn capture_ring(&mut self) -> Result<RingBuf<&mut MapData>, DataplaneError> {
        Ok(RingBuf::try_from(self.map_mut(names::CAPTURE_RING)?)?)
    }

    /// Every VIP with its metadata.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, DataplaneError> {
        let m: BpfHashMap<_, VipKey, VipMeta> = BpfHashMap::try_from(self.map(names::VIPS)?)?;
        Ok(m.iter().collect::<Result<_, _>>()?)
    }

    /// Every non-empty entry of the BACKENDS array.
    pub fn backends(&self) -> Result<Vec<(u32, Backend)>, DataplaneError> {
        let a: Array<_, Backend> = Array::try_from(self.map(names::BACKENDS)?)?;
        let mut out = Vec::new();
        for (id, b) in a.iter().enumerate() {
            let b = b?;
            if b != Backend::default() {
                out.push((id as u32, b));
            }
        }
        Ok(out)
    }

    pub fn set_backend(&mut self, id: u32, b: &Backend) -> Result<(), DataplaneError> {
        let mut a: Array<_, Backend> = Array::try_from(self.map_mut(names::BACKENDS)?)?;
        Ok(a.set(id, b, 0)?)
    }

    /// Publish a complete ring for `vip_id`: a new inner array is filled (one batch syscall),
    /// then swapped in with one map update, so packets see the old ring or
    /// the new one and never a mix.
    pub fn set_ring(&mut self, vip_id: u32, table: &[u32]) -> Result<(), DataplaneError> {
        let ready = self.ready_rings.remove(&(table.as_ptr() as usize));
        let inner = match ready {
            Some(m) => m,
            None => Self::filled_ring(table)?,
        };
        let mut rings: ArrayOfMaps<_, MapData> =
            ArrayOfMaps::try_from(self.map_mut(names::RINGS)?)?;
        rings.set(vip_id, &inner, 0)?;
        Ok(())
    }

    /// A new inner array holding `table`.
    fn filled_ring(table: &[u32]) -> Result<MapData, DataplaneError> {
        let len =
            u32::try_from(table.len()).map_err(|_| DataplaneError::RingTooLarge(table.len()))?;
        let obj = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_ARRAY,
            4,
            4,
            len,
            lb_common::BPF_F_INNER_MAP,
        );
        let inner = MapData::create(obj, "xlb_ring", None)?;
        ring_map::write(&inner, table)?;
        Ok(inner)
    }

    /// Build and fill a ring for `table` now, on any thread; `set_ring` of the same table (the
    /// same allocation) then only swaps it in, once it is handed over with `ready`.
    pub fn prefill_ring(table: &[u32]) -> Result<ReadyRing, DataplaneError> {
        Ok(ReadyRing {
            table: table.as_ptr() as usize,
            map: Self::filled_ring(table)?,
        })
    }

    /// Rings filled ahead for the writes that follow; `unready` drops those not used.
    pub fn ready(&mut self, rings: Vec<ReadyRing>) {
        for r in rings {
            self.ready_rings.insert(r.table, r.map);
        }
    }

    pub fn unready(&mut self) {
        self.ready_rings.clear();
    }

    /// Drop the ring of `vip_id` (the kernel frees it once no packet holds it).
    pub fn clear_ring(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        let aya::maps::Map::ArrayOfMaps(data) = self.map(names::RINGS)? else {
            return Err(DataplaneError::MissingMap(names::RINGS));
        };
        ring_map::delete(data, vip_id)
    }

    /// Read back the ring currently published for `vip_id`.
    pub fn ring(&self, vip_id: u32) -> Result<Vec<u32>, DataplaneError> {
        let rings: ArrayOfMaps<_, MapData> = ArrayOfMaps::try_from(self.map(names::RINGS)?)?;
        let inner = rings.get(&vip_id, 0)?;
        let len = inner.info()?.max_entries() as usize;
        ring_map::read(&inner, len)
    }

    /// One slot of the ring published for `vip_id`.
    pub fn ring_entry(&self, vip_id: u32, slot: u32) -> Result<u32, DataplaneError> {
        let rings: ArrayOfMaps<_, Array<MapData, u32>> =
            ArrayOfMaps::try_from(self.map(names::RINGS)?)?;
        Ok(rings.get(&vip_id, 0)?.get(&slot, 0)?)
    }

    pub fn set_tx_port(&mut self, slot: u32, ifindex: u32) -> Result<(), DataplaneError> {
        let mut a: Array<_, u32> = Array::try_from(self.map_mut(names::TX_IFINDEX)?)?;
        a.set(slot, ifindex, 0)?;
        let mut d: DevMap<_> = DevMap::try_from(self.map_mut(names::TX_PORTS)?)?;
        Ok(d.set(slot, ifindex, None, 0)?)
    }

    /// `TX_IFINDEX` from `TX_PORTS` (adopted pins of a build before it).
    fn sync_tx_ifindex(&mut self) -> Result<(), DataplaneError> {
        let d: DevMap<_> = DevMap::try_from(self.map(names::TX_PORTS)?)?;
        let ports: Vec<(u32, u32)> = d
            .iter()
            .enumerate()
            .filter_map(|(slot, v)| v.ok().map(|v| (slot as u32, v.if_index)))
            .collect();
        let mut a: Array<_, u32> = Array::try_from(self.map_mut(names::TX_IFINDEX)?)?;
        for (slot, ifindex) in ports {
            a.set(slot, ifindex, 0)?;
        }
        Ok(())
    }

    /// Tunnel endpoint addresses the decap program accepts (value: GUE port, 0 = default).
    pub fn set_decap_addr(
        &mut self,
        addr: &lb_common::Addr,
        gue_port: u16,
    ) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<_, lb_common::Addr, u32> =
            BpfHashMap::try_from(self.map_mut(names::DECAP_ADDRS)?)?;
        Ok(m.insert(addr, gue_port as u32, 0)?)
    }

    /// The tunnel endpoint addresses the decap program accepts, with their GUE ports.
    pub fn decap_addrs(&self) -> Result<Vec<(lb_common::Addr, u32)>, DataplaneError> {
        let m: BpfHashMap<_, lb_common::Addr, u32> =
            BpfHashMap::try_from(self.map(names::DECAP_ADDRS)?)?;
        Ok(m.iter().collect::<Result<_, _>>()?)
    }

    pub fn remove_decap_addr(&mut self, addr: &lb_common::Addr) -> Result<(), DataplaneError> {
        let mut m: BpfHashMap<_, lb_common::Addr, u32> =
            BpfHashMap::try_from(self.map_mut(names::DECAP_ADDRS)?)?;
        Ok(m.remove(addr)?)
    }

    fn sum<V: aya::Pod + Accumulate>(
        &self,
        map: &'static str,
        index: u32,
    ) -> Result<V, DataplaneError> {
        let a: PerCpuArray<_, V> = PerCpuArray::try_from(self.map(map)?)?;
        let mut total = V::default();
        for v in a.get(&index, 0)?.iter() {
            total.add(v);
        }
        Ok(total)
    }

    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats, DataplaneError> {
        self.sum(names::VIP_STATS, vip_id)
    }

    pub fn backend_stats(&self, backend_id: u32) -> Result<BackendStats, DataplaneError> {
        self.sum(names::BACKEND_STATS, backend_id)
    }

    pub fn reason_stats(&self) -> Result<HashMap<Reason, Counter>, DataplaneError> {
        let mut out = HashMap::new();
        for r in Reason::ALL {
            out.insert(r, self.sum::<Counter>(names::REASON_STATS, r as u32)?);
        }
        debug_assert_eq!(out.len(), REASON_COUNT as usize);
        Ok(out)
    }

    /// Packets counted and dropped by `xlb_sink`.
    pub fn sink_stats(&self) -> Result<Counter, DataplaneError> {
        self.sum(names::SINK_STATS, 0)
    }

    pub fn decap_stats(&self, index: u32) -> Result<Counter, DataplaneError> {
        self.sum(names::DECAP_STATS, index)
    }

    /// Run `program` once on `frame` through BPF_PROG_TEST_RUN; returns the action and the output.
    pub fn test_run(
        &mut self,
        program: &'static str,
        frame: &[u8],
    ) -> Result<TestOutput, DataplaneError> {
        let prog = self.program(program)?;
        // Room for the largest head growth (encapsulation, ICMP replies) beyond the input.
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = prog
            .test_run(opts)
            .map_err(|source| DataplaneError::TestRun { source })?;
        out.truncate(r.data_size_out as usize);
        Ok(TestOutput {
            action: r.return_value,
            frame: out,
            duration: r.duration,
        })
    }

    /// The raw program fd, for benchmarks that drive BPF_PROG_TEST_RUN themselves.
    pub fn program_fd(
        &mut self,
        program: &'static str,
    ) -> Result<std::os::fd::RawFd, DataplaneError> {
        use std::os::fd::AsRawFd as _;
        Ok(self.program(program)?.fd()?.as_fd().as_raw_fd())
    }
}

#[derive(Debug)]
pub struct TestOutput {
    pub action: u32,
    pub frame: Vec<u8>,
    pub duration: std::time::Duration,
}

impl From<ProgramError> for DataplaneError {
    fn from(source: ProgramError) -> Self {
        DataplaneError::Program { source }
    }
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the clock of `bpf_ktime_get_coarse_ns`, and the base of the
/// `CLOCK` the daemon writes for conntrack stamps.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
