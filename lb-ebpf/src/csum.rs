//! Checksum helpers, isolated from the header logic.

use aya_ebpf::helpers::bpf_csum_diff;

use crate::hdr::Ipv4Hdr;

#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Header checksum of an IPv4 header built on the stack (its `csum` field must be zero).
#[inline(always)]
pub fn ipv4(h: &Ipv4Hdr) -> u16 {
    // SAFETY: Ipv4Hdr is 20 bytes of plain integers: ten u16 words.
    let words: [u16; 10] = unsafe { core::mem::transmute(*h) };
    let mut sum = 0u64;
    for w in words {
        sum += w as u64;
    }
    fold(sum)
}

/// One's-complement sum of `len` bytes at `ptr` (packet or stack memory), added to `seed`.
/// `len` must be a multiple of 4 and the memory must be checked by the caller.
#[inline(always)]
pub unsafe fn partial(ptr: *mut u8, len: u32, seed: u32) -> u64 {
    // SAFETY: forwarded to the caller's contract; the helper reads `len` bytes.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ptr as *mut u32, len, seed) };
    r as u64 & 0xffff_ffff
}

/// The checksum `csum` after one 16-bit word of what it covers changed from `old` to `new`
/// (RFC 1624, eqn. 3). Words as they lie in memory: the sum does not depend on byte order.
#[inline(always)]
pub fn replace16(csum: u16, old: u16, new: u16) -> u16 {
    fold(!csum as u64 + !old as u64 + new as u64)
}
