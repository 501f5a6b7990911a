//! Map ids of VIPs and of backends, and the backends on their way out. Ids are what the kernel
//! sees, so they outlive restarts (saved) and are reused as late as possible: a stale conntrack
//! entry then names a down backend, not someone else's.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use lb_common::{MAX_BACKENDS, MAX_VIPS};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Removal, Vip, VipRef};

/// VIP ids and backend ids (one id per VIP membership, so drain, weight and health are per
/// service, as in ipvsadm). The field shapes are the saved state's: keep them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ids {
    pub vips: Vec<(VipRef, u32)>,
    pub backends: Vec<(VipRef, IpAddr, u32)>,
    /// Next backend id to try: ids are handed out round-robin so a freed id is reused as late
    /// as possible.
    pub cursor: u32,
}

impl Ids {
    pub fn vip_id(&self, v: &VipRef) -> Option<u32> {
        self.vips.iter().find(|(r, _)| r == v).map(|(_, id)| *id)
    }

    pub fn backend_id(&self, v: &VipRef, a: &IpAddr) -> Option<u32> {
        self.backends
            .iter()
            .find(|(r, b, _)| r == v && b == a)
            .map(|(_, _, id)| *id)
    }

    /// (VIP, backend address) -> backend id.
    pub fn by_member(&self) -> HashMap<(VipRef, IpAddr), u32> {
        self.backends
            .iter()
            .map(|(v, a, id)| ((*v, *a), *id))
            .collect()
    }
}

/// A backend removed without `--now`: out of the ring, still serving its tracked flows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Removing {
    pub vip: VipRef,
    pub address: IpAddr,
    pub id: u32,
    pub since_unix_ms: u64,
}

/// Ids for a new configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub ids: Ids,
    pub removing: Vec<Removing>,
    /// Backend ids that leave now (their slots go down once nothing names them).
    pub freed: BTreeSet<u32>,
    /// Backends that started draining with this change.
    pub draining: usize,
}

/// Keep the ids of what stays, free or drain what leaves, allocate ids for what is new.
/// Every failure is listed; none is partial.
pub fn allocate(
    new: &Config,
    ids: &Ids,
    removing: &[Removing],
    removal: Removal,
    now_ms: u64,
) -> Result<Allocation, Vec<String>> {
    let mut ids = ids.clone();
    let mut removing = removing.to_vec();
    let mut errs = Vec::new();
    let new_vips: BTreeSet<VipRef> = new.vips.iter().map(Vip::id).collect();

    ids.vips.retain(|(r, _)| new_vips.contains(r));
    let mut used: BTreeSet<u32> = ids.vips.iter().map(|(_, id)| *id).collect();
    for v in &new.vips {
        if ids.vip_id(&v.id()).is_some() {
            continue;
        }
        match (0..MAX_VIPS).find(|i| !used.contains(i)) {
            Some(id) => {
                used.insert(id);
                ids.vips.push((v.id(), id));
            }
            None => errs.push(format!("{}: no free VIP id", v.id())),
        }
    }

    // Backends that leave: drained first (if their VIP stays) or dropped now.
    let wanted: BTreeSet<(VipRef, IpAddr)> = new
        .vips
        .iter()
        .flat_map(|v| v.backends.iter().map(move |b| (v.id(), b.address)))
        .collect();
    let mut freed = BTreeSet::new();
    let mut draining = 0;
    for (vip, addr, id) in &ids.backends {
        if wanted.contains(&(*vip, *addr)) {
            continue;
        }
        if removal == Removal::Drain && new_vips.contains(vip) {
            if !removing.iter().any(|r| r.id == *id) {
                removing.push(Removing {
                    vip: *vip,
                    address: *addr,
                    id: *id,
                    since_unix_ms: now_ms,
                });
                draining += 1;
            }
        } else {
            freed.insert(*id);
        }
    }
    // A backend added back while draining is simply kept.
    removing.retain(|r| !wanted.contains(&(r.vip, r.address)) && !freed.contains(&r.id));
    ids.backends.retain(|(_, _, id)| !freed.contains(id));
    let mut used: BTreeSet<u32> = ids.backends.iter().map(|(_, _, id)| *id).collect();
    let have: BTreeSet<(VipRef, IpAddr)> = ids.backends.iter().map(|(v, a, _)| (*v, *a)).collect();
    let n = MAX_BACKENDS - 1;
    for v in &new.vips {
        let mut short = 0usize;
        for b in &v.backends {
            if have.contains(&(v.id(), b.address)) {
                continue;
            }
            let found = (0..n)
                .map(|k| (ids.cursor + k) % n + 1)
                .find(|id| !used.contains(id) && !freed.contains(id));
            match found {
                Some(id) => {
                    ids.cursor = id % n;
                    used.insert(id);
                    ids.backends.push((v.id(), b.address, id));
                }
                None => short += 1,
            }
        }
        if short > 0 {
            errs.push(format!(
                "{}: no free backend id for {short} new backend(s): {} ids are in use, draining ones included (they free up when their drains end)",
                v.id(),
                MAX_BACKENDS - 1
            ));
        }
    }
    if errs.is_empty() {
        Ok(Allocation {
            ids,
            removing,
            freed,
            draining,
        })
    } else {
        Err(errs)
    }
}
