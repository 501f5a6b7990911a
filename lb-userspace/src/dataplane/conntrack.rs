//! Conntrack is two maps: IPv4 flows in `CONNTRACK_V4` under 16-byte keys (`FlowKey4`), IPv6
//! flows in `CONNTRACK` under the full `FlowKey`. Everything above this module names a flow by
//! its `FlowKey`; only here is it narrowed to the map that holds it.
//!
//! Pins of a build before `CONNTRACK_V4` hold IPv4 flows in `CONNTRACK`. Adopting them, the
//! daemon copies those into `CONNTRACK_V4` before its forwarder replaces the old one (so the
//! new program finds them) and again after each replacement (the flows the old program started
//! in between). The copies stay in `CONNTRACK` for the old program until it is gone; nothing
//! reads them afterwards and, never touched again, they are the first the LRU evicts.

use std::{
    borrow::{Borrow, BorrowMut},
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, FlowKey4, FlowState, map_names as names};

use super::{Dataplane, DataplaneError, ring_map};

/// `BPF_NOEXIST`: a copied entry never replaces one the new forwarder wrote or stamped.
const BPF_NOEXIST: u64 = 1;

type Table<T, K> = BpfHashMap<T, K, FlowState>;

fn entry<T: Borrow<MapData>, K: aya::Pod>(
    m: &Table<T, K>,
    key: &K,
) -> Result<Option<FlowState>, MapError> {
    match m.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove<T: BorrowMut<MapData>, K: aya::Pod>(
    m: &mut Table<T, K>,
    key: &K,
) -> Result<(), MapError> {
    match m.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

fn data<'a>(map: &'a Map, name: &'static str) -> Result<&'a MapData, DataplaneError> {
    match map {
        Map::LruHashMap(d) => Ok(d),
        _ => Err(DataplaneError::MissingMap(name)),
    }
}

impl Dataplane {
    /// The conntrack entry of one flow (shared by every CPU).
    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowState>, DataplaneError> {
        Ok(if key.family == FAMILY_V4 {
            entry(
                &Table::try_from(self.map(names::CONNTRACK_V4)?)?,
                &FlowKey4::of(key),
            )?
        } else {
            entry(&Table::try_from(self.map(names::CONNTRACK)?)?, key)?
        })
    }

    /// Write one conntrack entry (replay, sync, tests).
    pub fn set_flow(&mut self, key: &FlowKey, state: &FlowState) -> Result<(), DataplaneError> {
        if key.family == FAMILY_V4 {
            let mut m: Table<_, FlowKey4> = Table::try_from(self.map_mut(names::CONNTRACK_V4)?)?;
            m.insert(FlowKey4::of(key), state, 0)?;
        } else {
            let mut m: Table<_, FlowKey> = Table::try_from(self.map_mut(names::CONNTRACK)?)?;
            m.insert(key, state, 0)?;
        }
        Ok(())
    }

    /// Remove one conntrack entry; absent is fine.
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<(), DataplaneError> {
        if key.family == FAMILY_V4 {
            remove(
                &mut Table::try_from(self.map_mut(names::CONNTRACK_V4)?)?,
                &FlowKey4::of(key),
            )?;
        } else {
            remove(&mut Table::try_from(self.map_mut(names::CONNTRACK)?)?, key)?;
        }
        Ok(())
    }

    /// Every entry of one conntrack map, in batches.
    fn entries<K: aya::Pod + Default>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, FlowState)>, DataplaneError> {
        ring_map::dump(data(self.map(name)?, name)?, 4096)
    }

    /// Remove every entry of one conntrack map.
    fn clear<K: aya::Pod + Default>(&mut self, name: &'static str) -> Result<(), DataplaneError> {
        let all = self.entries::<K>(name)?;
        let mut m: Table<_, K> = Table::try_from(self.map_mut(name)?)?;
        for (k, _) in all {
            remove(&mut m, &k)?;
        }
        Ok(())
    }

    /// Every tracked flow of both families, in batches.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowState)>, DataplaneError> {
        let v4 = self.entries::<FlowKey4>(names::CONNTRACK_V4)?;
        let v6 = self.entries::<FlowKey>(names::CONNTRACK)?;
        Ok(v4
            .into_iter()
            .map(|(k, s)| (k.widen(), s))
            // IPv4 entries here are an earlier build's, already copied (see the module's text).
            .chain(v6.into_iter().filter(|(k, _)| k.family == FAMILY_V6))
            .collect())
    }

    /// Remove every conntrack entry (tests; `xlb flows flush`).
    pub fn flush_conntrack(&mut self) -> Result<(), DataplaneError> {
        self.clear::<FlowKey>(names::CONNTRACK)?;
        self.clear::<FlowKey4>(names::CONNTRACK_V4)
    }

    /// IPv4 flows conntrack holds at most (an adopted map keeps the size it was created with).
    pub fn conntrack_capacity(&self) -> Result<u32, DataplaneError> {
        self.capacity(names::CONNTRACK_V4)
    }

    /// IPv6 flows conntrack holds at most.
    pub fn conntrack_capacity_v6(&self) -> Result<u32, DataplaneError> {
        self.capacity(names::CONNTRACK)
    }

    fn capacity(&self, name: &'static str) -> Result<u32, DataplaneError> {
        Ok(data(self.map(name)?, name)?.info()?.max_entries())
    }

    /// Copy the IPv4 flows an earlier build keeps in `CONNTRACK` into `CONNTRACK_V4`, where
    /// this build's forwarder looks them up. Returns how many were copied.
    pub(super) fn carry_v4_flows(&mut self) -> Result<usize, DataplaneError> {
        let old = self.entries::<FlowKey>(names::CONNTRACK)?;
        let mut m: Table<_, FlowKey4> = Table::try_from(self.map_mut(names::CONNTRACK_V4)?)?;
        let mut copied = 0;
        for (k, s) in old.iter().filter(|(k, _)| k.family == FAMILY_V4) {
            match m.insert(FlowKey4::of(k), s, BPF_NOEXIST) {
                Ok(()) => copied += 1,
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(copied)
    }
}

/// Read access to a daemon's pinned conntrack (replay copies live entries from it).
pub struct PinnedConntrack {
    /// Absent in pins of a build before it: IPv4 flows are then in `v6`.
    v4: Option<Table<MapData, FlowKey4>>,
    v6: Table<MapData, FlowKey>,
}

impl PinnedConntrack {
    pub fn open(pin_dir: &Path) -> Result<Self, DataplaneError> {
        let open = |name: &str| -> Result<Map, DataplaneError> {
            Ok(Map::LruHashMap(MapData::from_pin(pin_dir.join(name))?))
        };
        let v4 = if pin_dir.join(names::CONNTRACK_V4).exists() {
            Some(Table::try_from(open(names::CONNTRACK_V4)?)?)
        } else {
            None
        };
        Ok(PinnedConntrack {
            v4,
            v6: Table::try_from(open(names::CONNTRACK)?)?,
        })
    }

    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowState>, DataplaneError> {
        Ok(match &self.v4 {
            Some(v4) if key.family == FAMILY_V4 => entry(v4, &FlowKey4::of(key))?,
            _ => entry(&self.v6, key)?,
        })
    }
}
