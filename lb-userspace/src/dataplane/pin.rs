//! Pinned state under bpffs: what lets a restarted daemon re-adopt the maps and links of the one
//! before it, so forwarding never stops. Adoption is refused when the pinned maps were made by a
//! build whose layout differs; silently reinterpreting old bytes would corrupt every flow.

use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, MapInfo};
use lb_common::{LAYOUT_VERSION, map_names as names};

use super::error::{AdoptError, DataplaneError};
use crate::EBPF_OBJECT;

/// Name of the stamp map that records which layout the pinned maps have.
pub const STAMP: &str = "XLB_LAYOUT";
/// Marks a pin directory whose `TX_PORTS` serves multi-buffer (`xdp.frags`) programs. The
/// kernel lets one devmap serve programs of one kind only, so the `TX_PORTS` of a build before
/// jumbo frames cannot be handed to this build's forwarder: it gets a new one, filled from the
/// old (`set_aside_tx_ports`).
pub const FRAGS_STAMP: &str = "XLB_FRAGS";
/// Where an old `TX_PORTS` waits while its entries are copied into the new one.
const TX_PORTS_ASIDE: &str = "TX_PORTS_PRE_FRAGS";

/// Sub-directory of the pin directory that holds one pinned XDP link per interface.
pub const LINKS: &str = "links";

/// Flags the kernel or loader add on its own (devmaps become `BPF_F_RDONLY_PROG`).
const KERNEL_FLAGS: u32 = 1 << 7;

/// What the pin directory held before this load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinState {
    /// Nothing pinned: maps are created empty.
    Fresh,
    /// Maps from an earlier daemon of the same layout: they are reused as they are.
    Adopted,
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> DataplaneError {
    DataplaneError::Pin {
        op,
        path: path.display().to_string(),
        source,
    }
}

/// Check every pinned map in `dir` against this build's object; no map is touched.
pub fn check(dir: &Path) -> Result<PinState, DataplaneError> {
    let obj =
        aya_obj::Object::parse(EBPF_OBJECT).map_err(|e| DataplaneError::Parse(e.to_string()))?;
    let d = dir.display().to_string();
    let mut any = false;
    for &name in names::ALL {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        any = true;
        let info = MapInfo::from_pin(&path)?;
        let def = obj.maps.get(name).ok_or(DataplaneError::MissingMap(name))?;
        let mut checks = vec![
            ("key size", info.key_size(), def.key_size()),
            ("value size", info.value_size(), def.value_size()),
            (
                "flags",
                info.map_flags() & !KERNEL_FLAGS,
                def.map_flags() & !KERNEL_FLAGS,
            ),
        ];
        // Conntrack capacity is an operator setting; the pinned size wins until a cold start.
        if name != names::CONNTRACK && name != names::CONNTRACK_V4 {
            checks.push(("capacity", info.max_entries(), def.max_entries()));
        }
        for (what, found, expected) in checks {
            if found != expected {
                return Err(AdoptError::Shape {
                    dir: d,
                    map: name,
                    what,
                    found,
                    expected,
                }
                .into());
            }
        }
    }
    let stamp = dir.join(STAMP);
    if stamp.exists() {
        let data = MapData::from_pin(&stamp)?;
        let a: Array<MapData, u32> = Array::try_from(aya::maps::Map::Array(data))?;
        let found = a.get(&0, 0)?;
        if found != LAYOUT_VERSION {
            return Err(AdoptError::Version {
                dir: d,
                found,
                expected: LAYOUT_VERSION,
            }
            .into());
        }
        Ok(PinState::Adopted)
    } else if any {
        Err(AdoptError::Unstamped {
            dir: d,
            path: stamp.display().to_string(),
        }
        .into())
    } else {
        Ok(PinState::Fresh)
    }
}

/// Record this build's layout beside freshly pinned maps.
pub fn stamp(dir: &Path) -> Result<(), DataplaneError> {
    let path = dir.join(STAMP);
    if path.exists() {
        return Ok(());
    }
    let mut a: Array<MapData, u32> = Array::create(1, 0)?;
    a.set(0, LAYOUT_VERSION, 0)?;
    a.pin(&path)
        .map_err(|e| io("pin", &path, std::io::Error::other(e)))?;
    Ok(())
}

/// Whether `dir`'s pinned `TX_PORTS` (if any) can serve this build's programs.
pub fn tx_ports_fit(dir: &Path) -> bool {
    dir.join(FRAGS_STAMP).exists() || !dir.join(names::TX_PORTS).exists()
}

/// Before a load into `dir`: move a `TX_PORTS` made for programs without `frags` aside, so the
/// loader creates and pins a new one. Returns the old map's pin to copy entries from (also the
/// one an interrupted earlier attempt left). Packets keep flowing through the old map, which
/// the running program holds, until the new program replaces it.
pub fn set_aside_tx_ports(dir: &Path) -> Result<Option<PathBuf>, DataplaneError> {
    let (live, aside) = (dir.join(names::TX_PORTS), dir.join(TX_PORTS_ASIDE));
    if dir.join(FRAGS_STAMP).exists() {
        return Ok(None);
    }
    if live.exists() {
        if aside.exists() {
            std::fs::remove_file(&aside).map_err(|e| io("unpin", &aside, e))?;
        }
        std::fs::rename(&live, &aside).map_err(|e| io("move aside", &live, e))?;
    }
    Ok(aside.exists().then_some(aside))
}

/// After the load: the old `TX_PORTS` is copied; drop its pin and mark the directory.
pub fn finish_tx_ports(dir: &Path, aside: Option<&Path>) -> Result<(), DataplaneError> {
    if let Some(p) = aside {
        std::fs::remove_file(p).map_err(|e| io("unpin", p, e))?;
    }
    let path = dir.join(FRAGS_STAMP);
    if path.exists() {
        return Ok(());
    }
    let a: Array<MapData, u32> = Array::create(1, 0)?;
    a.pin(&path)
        .map_err(|e| io("pin", &path, std::io::Error::other(e)))?;
    Ok(())
}

/// Path of the pinned link of `iface`.
pub fn link_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(LINKS).join(iface)
}

pub fn ensure_dir(dir: &Path) -> Result<(), DataplaneError> {
    std::fs::create_dir_all(dir.join(LINKS)).map_err(|e| io("create", dir, e))
}

/// Remove every pin in `dir`: links first (their programs detach once no fd holds them), then
/// maps. Returns the interfaces whose links were removed.
pub fn remove_all(dir: &Path) -> Result<Vec<String>, DataplaneError> {
    let mut ifaces = Vec::new();
    if !dir.exists() {
        return Ok(ifaces);
    }
    let links = dir.join(LINKS);
    if let Ok(entries) = std::fs::read_dir(&links) {
        for e in entries.flatten() {
            std::fs::remove_file(e.path()).map_err(|err| io("unpin", &e.path(), err))?;
            ifaces.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    std::fs::remove_dir_all(dir).map_err(|e| io("remove", dir, e))?;
    ifaces.sort();
    Ok(ifaces)
}

/// `BPF_FS_MAGIC`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` (or its nearest existing ancestor) lives on a bpf filesystem.
fn on_bpffs(path: &Path) -> bool {
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.exists() {
            let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: statfs fills the struct it is given; the path is NUL-terminated.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
                return false;
            }
            #[allow(clippy::unnecessary_cast, reason = "f_type's width differs by libc")]
            return st.f_type as i64 == BPF_FS_MAGIC;
        }
        p = dir.parent();
    }
    false
}

/// Pins need bpffs under `dir`: say what to do when it is not mounted there.
pub fn require_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    if on_bpffs(dir) {
        return Ok(());
    }
    Err(DataplaneError::NoBpffs(dir.display().to_string()))
}

/// The lock a daemon holds on its pin directory while it runs (flock on the directory
/// itself): a second daemon, or `xlb detach`, sees it taken.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File, DataplaneError> {
    use std::os::fd::AsRawFd as _;
    ensure_dir(dir)?;
    let f = std::fs::File::open(dir).map_err(|e| io("open", dir, e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DataplaneError::PinDirHeld(dir.display().to_string()));
    }
    Ok(f)
}

/// Whether a running daemon holds `dir`.
pub fn dir_held(dir: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    let Ok(f) = std::fs::File::open(dir) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; released when `f` closes.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}
