//! Whole-map reads and writes with `BPF_MAP_{UPDATE,LOOKUP}_BATCH`: one syscall per ring
//! instead of one per slot (65537 single updates took ~70 ms; a batch takes a few), and
//! conntrack dumps in batches of thousands of entries instead of two syscalls per entry.
//! aya 0.14 has no batch API, hence the raw syscall.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::MapData;

use super::DataplaneError;

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix for batch commands, and the
    // buffers it points at outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn err(op: &'static str, source: std::io::Error) -> DataplaneError {
    DataplaneError::Pin {
        op,
        path: "ring".into(),
        source,
    }
}

pub fn write(map: &MapData, table: &[u32]) -> Result<(), DataplaneError> {
    let keys: Vec<u32> = (0..table.len() as u32).collect();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: table.as_ptr() as u64,
        count: table.len() as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| err("batch update", e))?;
    if attr.count as usize != table.len() {
        return Err(err(
            "batch update",
            std::io::Error::other(format!("{} of {} slots written", attr.count, table.len())),
        ));
    }
    Ok(())
}

pub fn read(map: &MapData, len: usize) -> Result<Vec<u32>, DataplaneError> {
    let mut keys = vec![0u32; len];
    let mut values = vec![0u32; len];
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        out_batch: &mut out_batch as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: len as u32,
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(()) => {}
        // ENOENT: the batch reached the end of the map (all entries returned).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(err("batch lookup", e)),
    }
    let mut out = vec![0u32; len];
    for i in 0..attr.count as usize {
        if let Some(slot) = out.get_mut(keys[i] as usize) {
            *slot = values[i];
        }
    }
    Ok(out)
}

/// Every (key, value) of a hash map, `chunk` entries per syscall. Entries inserted or removed
/// meanwhile may or may not be seen (a snapshot per batch, as any dump of a live map).
pub fn dump<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &MapData,
    chunk: usize,
) -> Result<Vec<(K, V)>, DataplaneError> {
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut out = Vec::new();
    let mut keys = vec![K::default(); chunk];
    let mut values = vec![V::default(); chunk];
    // The batch token: opaque to userspace; a key's size is always enough.
    let mut token_in = [0u64; 8];
    let mut token_out = [0u64; 8];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        let done = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(err("batch lookup", e)),
        };
        let n = (attr.count as usize).min(chunk);
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// Delete element `index` of an array of maps (aya 0.14 has no delete for it). A missing entry
/// is not an error.
pub fn delete(map: &MapData, index: u32) -> Result<(), DataplaneError> {
    /// The `map_elem` member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = ElemAttr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: a fully initialised bpf_attr prefix for BPF_MAP_DELETE_ELEM; `index` outlives it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            std::ptr::from_mut(&mut attr),
            std::mem::size_of::<ElemAttr>() as u32,
        )
    };
    match rc {
        0 => Ok(()),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                Ok(())
            } else {
                Err(err("delete ring", e))
            }
        }
    }
}
